//! Metrics of the service's own, exported by the host on `/metrics` as
//! `shoal_guest_<service>:<name>` (the host adds the `service` label itself).
//!
//! ```no_run
//! shoal_sdk::metrics::counter_add("orders_total", &[("status", "ok")], 1.0).ok();
//! shoal_sdk::metrics::histogram_observe("basket_value_eur", &[], 42.5).ok();
//! ```

use crate::bindings::shoal::platform::metrics as wit;

pub use wit::MetricError;

fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Add `value` (non-negative) to counter `name`.
pub fn counter_add(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), MetricError> {
    wit::counter_add(name, &owned(labels), value)
}

/// Set gauge `name` to `value`.
pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), MetricError> {
    wit::gauge_set(name, &owned(labels), value)
}

/// Record `value` (base units, e.g. seconds) in histogram `name`.
pub fn histogram_observe(
    name: &str,
    labels: &[(&str, &str)],
    value: f64,
) -> Result<(), MetricError> {
    wit::histogram_observe(name, &owned(labels), value)
}

impl MetricError {
    /// A short, stable name of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            MetricError::InvalidName(_) => "invalid-name",
            MetricError::InvalidValue(_) => "invalid-value",
            MetricError::LabelMismatch(_) => "label-mismatch",
            MetricError::TooManySeries => "too-many-series",
        }
    }
}
