//! What each service uses of the host, as no Wasm host reports it: CPU time spent in
//! its guest code, instances created, and the peak linear memory of its instances.
//! Kept as Prometheus series (`shoal_guest_cpu_seconds_total`,
//! `shoal_instances_created_total`, `shoal_instance_memory_peak_bytes`) and read back
//! for `shoal show`, `shoal top` and the dashboard.

use prometheus::{Counter, Histogram, IntCounter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Metrics;

/// One service's meter; every version of the service adds to the same series.
#[derive(Debug, Default)]
pub struct ServiceMeter {
    series: Option<Series>,
    /// The largest peak of any instance so far, in bytes.
    peak_max: AtomicU64,
}

#[derive(Debug)]
struct Series {
    cpu: Counter,
    instances: IntCounter,
    memory_peak: Histogram,
}

/// A meter's readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// CPU time spent in the service's guest code, in seconds.
    pub cpu_seconds: f64,
    /// Instances created.
    pub instances_created: u64,
    /// The largest linear memory any of its instances reached, in bytes.
    pub memory_peak_bytes: u64,
}

impl ServiceMeter {
    /// The meter of `service` (nothing is recorded when metrics are off).
    pub fn new(metrics: &Metrics, service: &str) -> Self {
        let series = metrics.enabled().then(|| Series {
            cpu: metrics.guest_cpu.with_label_values(&[service]),
            instances: metrics.instances_created.with_label_values(&[service]),
            memory_peak: metrics.instance_memory_peak.with_label_values(&[service]),
        });
        Self {
            series,
            peak_max: AtomicU64::new(0),
        }
    }

    /// The guest ran on a thread for `spent` of CPU time.
    pub fn add_cpu(&self, spent: Duration) {
        if let Some(series) = &self.series {
            series.cpu.inc_by(spent.as_secs_f64());
        }
    }

    /// An instance was created.
    pub fn instance_created(&self) {
        if let Some(series) = &self.series {
            series.instances.inc();
        }
    }

    /// An instance ended, having held at most `peak_bytes` of linear memory.
    pub fn instance_ended(&self, peak_bytes: usize) {
        if let Some(series) = &self.series {
            series.memory_peak.observe(peak_bytes as f64);
            self.peak_max
                .fetch_max(peak_bytes as u64, Ordering::Relaxed);
        }
    }

    /// What the service has used so far.
    pub fn usage(&self) -> Usage {
        match &self.series {
            Some(series) => Usage {
                cpu_seconds: series.cpu.get(),
                instances_created: series.instances.get(),
                memory_peak_bytes: self.peak_max.load(Ordering::Relaxed),
            },
            None => Usage::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_a_service_share_its_series() {
        let metrics = Metrics::new(true).expect("metrics");
        let first = ServiceMeter::new(&metrics, "a");
        first.add_cpu(Duration::from_millis(250));
        first.instance_created();
        first.instance_ended(2 << 20);
        let second = ServiceMeter::new(&metrics, "a");
        second.add_cpu(Duration::from_millis(250));
        second.instance_created();
        assert_eq!(second.usage().instances_created, 2);
        assert!((second.usage().cpu_seconds - 0.5).abs() < 1e-9);
        assert_eq!(first.usage().memory_peak_bytes, 2 << 20);
        let text = metrics.render();
        assert!(
            text.contains("shoal_guest_cpu_seconds_total{service=\"a\"} 0.5"),
            "{text}"
        );
        assert!(text.contains("shoal_instances_created_total{service=\"a\"} 2"));
        let off = Metrics::new(false).expect("metrics");
        let idle = ServiceMeter::new(&off, "a");
        idle.add_cpu(Duration::from_secs(1));
        assert_eq!(idle.usage(), Usage::default());
    }
}
