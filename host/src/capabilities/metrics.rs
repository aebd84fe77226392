//! `shoal:platform/metrics`: a service's own counters, gauges and histograms,
//! namespaced and bounded by the host.

use wasmtime::component::{HasData, Linker};

use super::{PlatformView, traced_fallible};
use crate::bindings::metrics::{self, Host, MetricError};
use crate::policy::redact::Redactor;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::{GuestKind, GuestMetricError};

/// What a metrics call sees: the host's metrics and the recording service.
pub struct MetricsView<'a> {
    /// Where guest series live.
    pub metrics: &'a Metrics,
    /// The service whose namespace the series go to.
    pub service: &'a str,
    /// Masks secret values in label values.
    pub redactor: &'a Redactor,
    /// A replay's metrics are not recorded.
    pub replaying: bool,
}

struct HasMetrics;

impl HasData for HasMetrics {
    type Data<'a> = MetricsView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    metrics::add_to_linker::<T, HasMetrics>(linker, |state| {
        let ctx = state.platform().ctx;
        MetricsView {
            metrics: &ctx.platform.telemetry.metrics,
            service: &ctx.service.name,
            redactor: ctx.platform.secrets.redactor(),
            replaying: ctx.replaying(),
        }
    })
}

fn to_wit(error: GuestMetricError) -> MetricError {
    match error {
        GuestMetricError::InvalidName(text) => MetricError::InvalidName(text),
        GuestMetricError::InvalidValue(text) => MetricError::InvalidValue(text),
        GuestMetricError::LabelMismatch(text) => MetricError::LabelMismatch(text),
        GuestMetricError::TooManySeries => MetricError::TooManySeries,
    }
}

impl MetricsView<'_> {
    async fn record(
        &self,
        call: &'static str,
        kind: GuestKind,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> wasmtime::Result<Result<(), MetricError>> {
        if self.replaying {
            return Ok(Ok(()));
        }
        traced_fallible(call, self.service, async {
            // A label value is text the guest chose: it may hold a secret.
            let labels: Vec<(String, String)> = labels
                .iter()
                .map(|(key, value)| (key.clone(), self.redactor.redact(value).into_owned()))
                .collect();
            let name = self.redactor.redact(name);
            Ok(self
                .metrics
                .guest_record(self.service, kind, &name, &labels, value)
                .map_err(to_wit))
        })
        .await
    }
}

impl Host for MetricsView<'_> {
    async fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<Result<(), MetricError>> {
        self.record(
            "metrics.counter-add",
            GuestKind::Counter,
            &name,
            &labels,
            value,
        )
        .await
    }

    async fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<Result<(), MetricError>> {
        self.record("metrics.gauge-set", GuestKind::Gauge, &name, &labels, value)
            .await
    }

    async fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<Result<(), MetricError>> {
        self.record(
            "metrics.histogram-observe",
            GuestKind::Histogram,
            &name,
            &labels,
            value,
        )
        .await
    }
}
