//! `shoal:platform/metrics`: a service's own counters, gauges and histograms,
//! namespaced and bounded by the host.

use crate::bindings::metrics::{Host, MetricError};
use crate::runtime::GuestState;
use crate::telemetry::metrics::{GuestKind, GuestMetricError};

fn to_wit(error: GuestMetricError) -> MetricError {
    match error {
        GuestMetricError::InvalidName(text) => MetricError::InvalidName(text),
        GuestMetricError::InvalidValue(text) => MetricError::InvalidValue(text),
        GuestMetricError::LabelMismatch(text) => MetricError::LabelMismatch(text),
        GuestMetricError::TooManySeries => MetricError::TooManySeries,
    }
}

impl GuestState {
    fn record(
        &self,
        kind: GuestKind,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), MetricError> {
        self.platform
            .telemetry
            .metrics
            .guest_record(&self.service.name, kind, name, labels, value)
            .map_err(to_wit)
    }
}

impl Host for GuestState {
    async fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> Result<(), MetricError> {
        self.record(GuestKind::Counter, &name, &labels, value)
    }

    async fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> Result<(), MetricError> {
        self.record(GuestKind::Gauge, &name, &labels, value)
    }

    async fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> Result<(), MetricError> {
        self.record(GuestKind::Histogram, &name, &labels, value)
    }
}
