//! Prometheus metrics. Host families are registered once at start-up (no registration
//! on first use, so no race); guest metrics are created on first use under a lock,
//! namespaced per service and bounded.

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use thiserror::Error;

/// Metrics a service may define.
pub const MAX_GUEST_METRICS: usize = 100;
/// Label sets one guest metric may have.
pub const MAX_GUEST_SERIES: usize = 1_000;
/// Guest series all services together may have: the exposition's size stays bounded
/// however many services define metrics.
pub const MAX_GUEST_SERIES_HOST: usize = 50_000;
/// Labels one guest metric may have.
const MAX_GUEST_LABELS: usize = 10;

/// Buckets of instance memory peaks: 64 KiB (one page) to 4 GiB, by fours.
const MEMORY_BUCKETS: &[f64] = &[
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Buckets for request and call durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The host's metric families.
pub struct Metrics {
    enabled: bool,
    registry: Registry,
    /// `shoal_requests_total{service,version,method,status_class}`
    pub requests: IntCounterVec,
    /// `shoal_request_duration_seconds{service,version,method,status_class}`
    pub request_duration: HistogramVec,
    /// `shoal_errors_total{service,kind}`
    pub errors: IntCounterVec,
    /// `shoal_outbound_calls_total{caller,target,outcome}`
    pub calls: IntCounterVec,
    /// `shoal_outbound_call_duration_seconds{caller,target,outcome}`
    pub call_duration: HistogramVec,
    /// `shoal_circuit_breaker_state{caller,target}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `shoal_rpc_server_duration_seconds{service,version,rpc_system,rpc_service,
    /// rpc_method,rpc_grpc_status_code}`: gRPC calls a service served (OpenTelemetry's
    /// `rpc.server.duration`); its `_count` counts calls per status code.
    pub rpc_server_duration: HistogramVec,
    /// `shoal_rpc_client_duration_seconds{caller,target,rpc_system,rpc_service,
    /// rpc_method,rpc_grpc_status_code}`: gRPC calls made through the caller.
    pub rpc_client_duration: HistogramVec,
    /// The gRPC method names admitted as label values, per serving service.
    pub rpc_methods: LabelBudget,
    /// The gRPC `service/method` names admitted as label values, per caller.
    pub rpc_client_methods: LabelBudget,
    /// `shoal_in_flight_requests{service}`
    pub in_flight: IntGaugeVec,
    /// `shoal_store_commits_total{service, outcome}`: store writes and transactions.
    pub store_commits: IntCounterVec,
    /// `shoal_events_published_total{service}`: events committed to an outbox.
    pub events_published: IntCounterVec,
    /// `shoal_event_deliveries_total{subscriber, outcome}`: delivery attempts.
    pub event_deliveries: IntCounterVec,
    /// `shoal_outbox_lag_seconds`: from publish to the event's move onto the bus.
    pub outbox_lag: prometheus::Histogram,
    /// `shoal_event_delivery_lag_seconds{subscriber}`: from publish to acknowledgement.
    pub delivery_lag: HistogramVec,
    /// `shoal_guest_log_lines_dropped_total{service}`: over the service's log budget.
    pub guest_log_dropped: IntCounterVec,
    /// `shoal_log_lines_dropped_total`: lines the host's log writer could not keep up with.
    pub log_lines_dropped: IntCounter,
    /// `shoal_event_bus_bytes`: bytes of events the bus holds (waiting, scheduled,
    /// dead), against `--max-bus-mb`.
    pub bus_bytes: IntGauge,
    /// `shoal_memory_reserved_bytes`: linear memory live instances hold.
    pub memory_reserved: IntGauge,
    /// `shoal_memory_budget_bytes`: what they may hold together.
    pub memory_budget: IntGauge,
    /// `shoal_queued_requests{service}`
    pub queued: IntGaugeVec,
    /// `shoal_instantiation_duration_seconds{service}`
    pub instantiation: HistogramVec,
    /// `shoal_compile_duration_seconds{service}`
    pub compile: HistogramVec,
    /// `shoal_deploys_total{outcome}`
    pub deploys: IntCounterVec,
    /// `shoal_cluster_hosts{state}`: in a cluster, hosts up, draining and down.
    pub cluster_hosts: IntGaugeVec,
    /// `shoal_cluster_placements`: in a cluster, replicas placed on all hosts.
    pub cluster_placements: IntGauge,
    /// `shoal_cluster_leader`: 1 while this host places replicas for the cluster.
    pub cluster_leader: IntGauge,
    /// CPU time in each service's guest code.
    pub guest_cpu: prometheus::CounterVec,
    /// Instances created per service.
    pub instances_created: IntCounterVec,
    /// Peak linear memory of each ended instance, per service.
    pub instance_memory_peak: HistogramVec,
    guests: Mutex<BTreeMap<(String, String), GuestFamily>>,
    /// Series of every guest family together.
    guest_series_total: std::sync::atomic::AtomicUsize,
    /// In a cluster, the `host` label every series carries.
    host: std::sync::OnceLock<String>,
}

/// Why a guest metric operation was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum GuestMetricError {
    /// Bad name, or a name already used by another kind of metric.
    #[error("invalid metric name: {0}")]
    InvalidName(String),
    /// Bad value.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// Labels differ from the metric's first use, or are invalid.
    #[error("label mismatch: {0}")]
    LabelMismatch(String),
    /// Too many series or metrics.
    #[error("too many series")]
    TooManySeries,
}

/// The kind of a guest metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// Only goes up.
    Counter,
    /// Set to any value.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

enum GuestCollector {
    Counter(prometheus::CounterVec),
    Gauge(prometheus::GaugeVec),
    Histogram(HistogramVec),
}

struct GuestFamily {
    kind: GuestKind,
    label_names: Vec<String>,
    series: HashSet<Vec<String>>,
    collector: GuestCollector,
}

fn family_collector(collector: &GuestCollector) -> Box<dyn Collector> {
    match collector {
        GuestCollector::Counter(c) => Box::new(c.clone()),
        GuestCollector::Gauge(g) => Box::new(g.clone()),
        GuestCollector::Histogram(h) => Box::new(h.clone()),
    }
}

impl Metrics {
    /// Register every host family. With `enabled` false, recording is skipped.
    pub fn new(enabled: bool) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let labels_request = &["service", "version", "method", "status_class"];
        let histogram = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec())
        };
        let metrics = Self {
            enabled,
            requests: IntCounterVec::new(
                Opts::new(
                    "shoal_requests_total",
                    "Requests served, by service, version, method and status class.",
                ),
                labels_request,
            )?,
            request_duration: HistogramVec::new(
                histogram(
                    "shoal_request_duration_seconds",
                    "Time from admission to the end of the response body.",
                ),
                labels_request,
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "shoal_errors_total",
                    "Failed requests by service and kind (trap, timeout, memory, stack, overload, ...).",
                ),
                &["service", "kind"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "shoal_outbound_calls_total",
                    "Outbound calls by caller, target and outcome.",
                ),
                &["caller", "target", "outcome"],
            )?,
            rpc_server_duration: HistogramVec::new(
                histogram(
                    "shoal_rpc_server_duration_seconds",
                    "gRPC calls served: time to the end of the response, by method and status code.",
                ),
                &[
                    "service",
                    "version",
                    "rpc_system",
                    "rpc_service",
                    "rpc_method",
                    "rpc_grpc_status_code",
                ],
            )?,
            rpc_client_duration: HistogramVec::new(
                histogram(
                    "shoal_rpc_client_duration_seconds",
                    "gRPC calls made through the caller, all attempts included, by method and status code.",
                ),
                &[
                    "caller",
                    "target",
                    "rpc_system",
                    "rpc_service",
                    "rpc_method",
                    "rpc_grpc_status_code",
                ],
            )?,
            rpc_methods: LabelBudget::new(MAX_RPC_METHODS),
            rpc_client_methods: LabelBudget::new(MAX_RPC_METHODS),
            call_duration: HistogramVec::new(
                histogram(
                    "shoal_outbound_call_duration_seconds",
                    "Outbound call duration, all attempts included.",
                ),
                &["caller", "target", "outcome"],
            )?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "shoal_circuit_breaker_state",
                    "Service-level circuit breaker: 0 closed, 1 half-open, 2 open.",
                ),
                &["caller", "target"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "shoal_in_flight_requests",
                    "Requests running now, per service.",
                ),
                &["service"],
            )?,
            store_commits: IntCounterVec::new(
                Opts::new(
                    "shoal_store_commits_total",
                    "Store writes and transaction commits by outcome (ok, conflict, quota, error).",
                ),
                &["service", "outcome"],
            )?,
            events_published: IntCounterVec::new(
                Opts::new(
                    "shoal_events_published_total",
                    "Events committed to a service's outbox.",
                ),
                &["service"],
            )?,
            event_deliveries: IntCounterVec::new(
                Opts::new(
                    "shoal_event_deliveries_total",
                    "Event deliveries by outcome (delivered, deduplicated, failed, dead-lettered).",
                ),
                &["subscriber", "outcome"],
            )?,
            outbox_lag: prometheus::Histogram::with_opts(histogram(
                "shoal_outbox_lag_seconds",
                "Time from publish (commit) to the event's move onto the bus.",
            ))?,
            delivery_lag: HistogramVec::new(
                histogram(
                    "shoal_event_delivery_lag_seconds",
                    "Time from publish to the subscriber's acknowledgement.",
                ),
                &["subscriber"],
            )?,
            guest_log_dropped: IntCounterVec::new(
                Opts::new(
                    "shoal_guest_log_lines_dropped_total",
                    "Guest log lines (log import, stdout, stderr) dropped over the service's log budget.",
                ),
                &["service"],
            )?,
            log_lines_dropped: IntCounter::new(
                "shoal_log_lines_dropped_total",
                "Host log lines dropped because the log's writer (stderr) could not keep up.",
            )?,
            bus_bytes: IntGauge::new(
                "shoal_event_bus_bytes",
                "Bytes of events the event bus holds (waiting, scheduled and dead).",
            )?,
            memory_reserved: IntGauge::new(
                "shoal_memory_reserved_bytes",
                "Linear memory held by live instances, host-wide.",
            )?,
            memory_budget: IntGauge::new(
                "shoal_memory_budget_bytes",
                "Linear memory all instances together may hold (--max-total-memory-mb).",
            )?,
            queued: IntGaugeVec::new(
                Opts::new(
                    "shoal_queued_requests",
                    "Requests waiting for a slot, per service.",
                ),
                &["service"],
            )?,
            instantiation: HistogramVec::new(
                histogram(
                    "shoal_instantiation_duration_seconds",
                    "Time to create a fresh instance for a request.",
                ),
                &["service"],
            )?,
            compile: HistogramVec::new(
                histogram(
                    "shoal_compile_duration_seconds",
                    "Time to compile an uploaded component (cache misses only), by \
                     compiler tier (baseline, optimized).",
                ),
                &["service", "tier"],
            )?,
            deploys: IntCounterVec::new(
                Opts::new(
                    "shoal_deploys_total",
                    "Deploys by outcome (created, replaced, canary, rejected).",
                ),
                &["outcome"],
            )?,
            guest_cpu: prometheus::CounterVec::new(
                Opts::new(
                    "shoal_guest_cpu_seconds_total",
                    "Time each service's guest task spent running (its guest code and the host calls it makes inline; waiting is not counted).",
                ),
                &["service"],
            )?,
            instances_created: IntCounterVec::new(
                Opts::new(
                    "shoal_instances_created_total",
                    "Instances created for each service.",
                ),
                &["service"],
            )?,
            instance_memory_peak: HistogramVec::new(
                HistogramOpts::new(
                    "shoal_instance_memory_peak_bytes",
                    "The largest linear memory each instance reached, observed when it ends.",
                )
                .buckets(MEMORY_BUCKETS.to_vec()),
                &["service"],
            )?,
            guests: Mutex::new(BTreeMap::new()),
            guest_series_total: std::sync::atomic::AtomicUsize::new(0),
            host: std::sync::OnceLock::new(),
            cluster_hosts: IntGaugeVec::new(
                Opts::new(
                    "shoal_cluster_hosts",
                    "In a cluster: its hosts, by state (up, draining, down).",
                ),
                &["state"],
            )?,
            cluster_placements: IntGauge::new(
                "shoal_cluster_placements",
                "In a cluster: replicas placed on its hosts, all services together.",
            )?,
            cluster_leader: IntGauge::new(
                "shoal_cluster_leader",
                "In a cluster: 1 while this host is the leader that places replicas.",
            )?,
            registry,
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn Collector>,
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.errors.clone()),
            Box::new(metrics.calls.clone()),
            Box::new(metrics.call_duration.clone()),
            Box::new(metrics.rpc_server_duration.clone()),
            Box::new(metrics.rpc_client_duration.clone()),
            Box::new(metrics.breaker_state.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.queued.clone()),
            Box::new(metrics.memory_reserved.clone()),
            Box::new(metrics.guest_log_dropped.clone()),
            Box::new(metrics.store_commits.clone()),
            Box::new(metrics.events_published.clone()),
            Box::new(metrics.bus_bytes.clone()),
            Box::new(metrics.event_deliveries.clone()),
            Box::new(metrics.outbox_lag.clone()),
            Box::new(metrics.delivery_lag.clone()),
            Box::new(metrics.log_lines_dropped.clone()),
            Box::new(metrics.memory_budget.clone()),
            Box::new(metrics.instantiation.clone()),
            Box::new(metrics.compile.clone()),
            Box::new(metrics.deploys.clone()),
            Box::new(metrics.cluster_hosts.clone()),
            Box::new(metrics.cluster_placements.clone()),
            Box::new(metrics.cluster_leader.clone()),
            Box::new(metrics.guest_cpu.clone()),
            Box::new(metrics.instances_created.clone()),
            Box::new(metrics.instance_memory_peak.clone()),
        ] {
            metrics.registry.register(collector)?;
        }
        Ok(metrics)
    }

    /// Whether recording is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// In a cluster: name this host in a `host` label on every series, so the hosts'
    /// series stay apart when one Prometheus scrapes them all.
    pub fn set_host(&self, host: &str) {
        let _ = self.host.set(host.to_owned());
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::with_capacity(64 * 1024);
        let mut families = self.registry.gather();
        if let Some(host) = self.host.get() {
            for family in &mut families {
                for metric in family.mut_metric() {
                    let mut labels = metric.take_label();
                    if labels.iter().any(|label| label.name() == "host") {
                        metric.set_label(labels);
                        continue;
                    }
                    let mut pair = prometheus::proto::LabelPair::default();
                    pair.set_name("host".to_owned());
                    pair.set_value(host.clone());
                    labels.push(pair);
                    labels.sort_by(|a, b| a.name().cmp(b.name()));
                    metric.set_label(labels);
                }
            }
        }
        let _ = TextEncoder::new().encode(&families, &mut buffer);
        // The encoder writes UTF-8; take the buffer as it is instead of copying it.
        String::from_utf8(buffer)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
    }

    /// Record a guest metric operation for `service`.
    pub fn guest_record(
        &self,
        service: &str,
        kind: GuestKind,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> Result<(), GuestMetricError> {
        validate_name(name)?;
        if !value.is_finite() {
            return Err(GuestMetricError::InvalidValue(format!(
                "{value} is not finite"
            )));
        }
        if kind == GuestKind::Counter && value < 0.0 {
            return Err(GuestMetricError::InvalidValue(format!(
                "a counter cannot decrease (got {value})"
            )));
        }
        let mut sorted: Vec<(String, String)> = labels.to_vec();
        sorted.sort();
        validate_labels(&sorted)?;
        let label_names: Vec<String> = sorted.iter().map(|(k, _)| k.clone()).collect();
        let label_values: Vec<String> = sorted.iter().map(|(_, v)| v.clone()).collect();
        if !self.enabled {
            return Ok(());
        }

        let mut guests = self.guests.lock();
        let key = (service.to_owned(), name.to_owned());
        let total = self
            .guest_series_total
            .load(std::sync::atomic::Ordering::Relaxed);
        if !guests.contains_key(&key) {
            let count = guests.keys().filter(|(s, _)| s == service).count();
            if count >= MAX_GUEST_METRICS {
                return Err(GuestMetricError::TooManySeries);
            }
            let family = self.new_family(service, name, kind, &label_names)?;
            guests.insert(key.clone(), family);
        }
        let family = guests
            .get_mut(&key)
            .ok_or_else(|| GuestMetricError::InvalidName(name.to_owned()))?;
        if family.kind != kind {
            return Err(GuestMetricError::InvalidName(format!(
                "`{name}` is already a {:?}",
                family.kind
            )));
        }
        if family.label_names != label_names {
            return Err(GuestMetricError::LabelMismatch(format!(
                "`{name}` was first used with labels {:?}, not {:?}",
                family.label_names, label_names
            )));
        }
        if !family.series.contains(&label_values) {
            if family.series.len() >= MAX_GUEST_SERIES || total >= MAX_GUEST_SERIES_HOST {
                return Err(GuestMetricError::TooManySeries);
            }
            family.series.insert(label_values.clone());
            self.guest_series_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let values: Vec<&str> = label_values.iter().map(String::as_str).collect();
        match &family.collector {
            GuestCollector::Counter(c) => c.with_label_values(&values).inc_by(value),
            GuestCollector::Gauge(g) => g.with_label_values(&values).set(value),
            GuestCollector::Histogram(h) => h.with_label_values(&values).observe(value),
        }
        Ok(())
    }

    fn new_family(
        &self,
        service: &str,
        name: &str,
        kind: GuestKind,
        label_names: &[String],
    ) -> Result<GuestFamily, GuestMetricError> {
        // `:` cannot occur in a service or a metric name, so no two (service, name)
        // pairs share a family name (`a-b`/`c` and `a`/`b_c` stay apart).
        let full = format!("shoal_guest_{}:{}", service.replace('-', "_"), name);
        let help = format!("Defined by service {service}.");
        let names: Vec<&str> = label_names.iter().map(String::as_str).collect();
        let invalid = |error: prometheus::Error| GuestMetricError::InvalidName(error.to_string());
        let collector = match kind {
            GuestKind::Counter => GuestCollector::Counter(
                prometheus::CounterVec::new(
                    Opts::new(&full, &help).const_label("service", service),
                    &names,
                )
                .map_err(invalid)?,
            ),
            GuestKind::Gauge => GuestCollector::Gauge(
                prometheus::GaugeVec::new(
                    Opts::new(&full, &help).const_label("service", service),
                    &names,
                )
                .map_err(invalid)?,
            ),
            GuestKind::Histogram => GuestCollector::Histogram(
                HistogramVec::new(
                    HistogramOpts::new(&full, &help).const_label("service", service),
                    &names,
                )
                .map_err(invalid)?,
            ),
        };
        self.registry
            .register(family_collector(&collector))
            .map_err(invalid)?;
        Ok(GuestFamily {
            kind,
            label_names: label_names.to_vec(),
            series: HashSet::new(),
            collector,
        })
    }

    /// Drop every metric `service` defined (when the service is removed).
    pub fn forget_guest(&self, service: &str) {
        let mut guests = self.guests.lock();
        let keys: Vec<(String, String)> = guests
            .keys()
            .filter(|(s, _)| s == service)
            .cloned()
            .collect();
        for key in keys {
            if let Some(family) = guests.remove(&key) {
                self.guest_series_total
                    .fetch_sub(family.series.len(), std::sync::atomic::Ordering::Relaxed);
                let _ = self
                    .registry
                    .unregister(family_collector(&family.collector));
            }
        }
    }

    /// Drop every host series that names `service` (as the service, the caller or the
    /// target), when the service is removed.
    pub fn forget_service(&self, service: &str) {
        let is = |labels: &[(String, String)], name: &str| {
            labels
                .iter()
                .any(|(key, value)| key == name && value == service)
        };
        remove_series(&self.requests, |l| is(l, "service"));
        remove_series(&self.request_duration, |l| is(l, "service"));
        remove_series(&self.errors, |l| is(l, "service"));
        remove_series(&self.in_flight, |l| is(l, "service"));
        remove_series(&self.queued, |l| is(l, "service"));
        remove_series(&self.instantiation, |l| is(l, "service"));
        remove_series(&self.compile, |l| is(l, "service"));
        remove_series(&self.guest_log_dropped, |l| is(l, "service"));
        remove_series(&self.guest_cpu, |l| is(l, "service"));
        remove_series(&self.instances_created, |l| is(l, "service"));
        remove_series(&self.instance_memory_peak, |l| is(l, "service"));
        remove_series(&self.store_commits, |l| is(l, "service"));
        remove_series(&self.events_published, |l| is(l, "service"));
        remove_series(&self.event_deliveries, |l| is(l, "subscriber"));
        remove_series(&self.delivery_lag, |l| is(l, "subscriber"));
        remove_series(&self.calls, |l| is(l, "caller") || is(l, "target"));
        remove_series(&self.call_duration, |l| is(l, "caller") || is(l, "target"));
        remove_series(&self.breaker_state, |l| is(l, "caller") || is(l, "target"));
        remove_series(&self.rpc_server_duration, |l| is(l, "service"));
        remove_series(&self.rpc_client_duration, |l| {
            is(l, "caller") || is(l, "target")
        });
        self.rpc_methods.forget(service);
        self.rpc_client_methods.forget(service);
        self.forget_guest(service);
    }

    /// Drop the request series of `version` of `service`, once no traffic can reach
    /// it (replaced, rolled back, or a dropped canary).
    pub fn forget_version(&self, service: &str, version: &str) {
        let matches = |labels: &[(String, String)]| {
            let has =
                |name: &str, value: &str| labels.iter().any(|(key, v)| key == name && v == value);
            has("service", service) && has("version", version)
        };
        remove_series(&self.requests, matches);
        remove_series(&self.request_duration, matches);
        remove_series(&self.rpc_server_duration, matches);
    }

    /// Requests, failures, requests by version and the latency histogram of each
    /// service, summed over methods and status classes (for the dashboard).
    pub fn request_stats(&self) -> BTreeMap<String, RequestStats> {
        let mut stats: BTreeMap<String, RequestStats> = BTreeMap::new();
        for family in self.request_duration.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| label_value(metric, name);
                let histogram = metric.get_histogram();
                let count = histogram.get_sample_count();
                let service = stats.entry(label("service")).or_default();
                service.requests += count;
                if label("status_class") == "5xx" {
                    service.failures += count;
                }
                *service.by_version.entry(label("version")).or_default() += count;
                let buckets = histogram.get_bucket();
                if service.buckets.is_empty() {
                    service.buckets = buckets
                        .iter()
                        .map(|bucket| (bucket.upper_bound(), 0))
                        .collect();
                }
                for (sum, bucket) in service.buckets.iter_mut().zip(buckets) {
                    sum.1 += bucket.cumulative_count();
                }
            }
        }
        for family in self.rpc_server_duration.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| label_value(metric, name);
                let code = crate::grpc::Code::from_value(label("rpc_grpc_status_code").as_bytes());
                let count = metric.get_histogram().get_sample_count();
                let service = stats.entry(label("service")).or_default();
                *service.grpc.entry(grpc_class(code).to_owned()).or_default() += count;
            }
        }
        stats
    }

    /// Every service-level circuit breaker: caller, target and state (0 closed,
    /// 1 half-open, 2 open).
    pub fn breaker_states(&self) -> Vec<(String, String, i64)> {
        let mut states = Vec::new();
        for family in self.breaker_state.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| label_value(metric, name);
                states.push((
                    label("caller"),
                    label("target"),
                    metric.get_gauge().get_value() as i64,
                ));
            }
        }
        states
    }

    /// Number of `service`'s series (for the admin view and tests).
    pub fn guest_series(&self, service: &str) -> usize {
        self.guests
            .lock()
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|(_, family)| family.series.len())
            .sum()
    }
}

/// The value of label `name` of `metric` (empty when it has none).
fn label_value(metric: &prometheus::proto::Metric, name: &str) -> String {
    metric
        .get_label()
        .iter()
        .find(|pair| pair.name() == name)
        .map(|pair| pair.value().to_owned())
        .unwrap_or_default()
}

/// One service's requests as the dashboard reads them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RequestStats {
    /// Requests answered.
    pub requests: u64,
    /// Of them, answered with a 5xx.
    pub failures: u64,
    /// Requests answered by each version (a canary's share).
    pub by_version: BTreeMap<String, u64>,
    /// Cumulative latency histogram: (upper bound in seconds, requests at most that).
    pub buckets: Vec<(f64, u64)>,
    /// gRPC calls by status class (`ok`, `client_error`, `server_error`): a call
    /// that failed with a status in its trailers was an HTTP 200.
    pub grpc: BTreeMap<String, u64>,
}

/// Remove every series of `vec` whose labels `doomed` picks.
fn remove_series<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    doomed: impl Fn(&[(String, String)]) -> bool,
) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: Vec<(String, String)> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name().to_owned(), pair.value().to_owned()))
                .collect();
            if doomed(&labels) {
                let descs = vec.desc();
                let Some(desc) = descs.first() else {
                    continue;
                };
                let values: Vec<&str> = desc
                    .variable_labels
                    .iter()
                    .filter_map(|name| {
                        labels
                            .iter()
                            .find(|(key, _)| key == name)
                            .map(|(_, value)| value.as_str())
                    })
                    .collect();
                let _ = vec.remove_label_values(&values);
            }
        }
    }
}

fn validate_name(name: &str) -> Result<(), GuestMetricError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || !rest_ok || name.len() > 100 || name.starts_with("__") {
        return Err(GuestMetricError::InvalidName(format!(
            "`{name}`: use 1 to 100 letters, digits and `_`, not starting with a digit or `__`"
        )));
    }
    // A histogram `x` writes `x_bucket`, `x_sum` and `x_count`; a metric of its own
    // with one of those names would clash with it in the exposition.
    if let Some(suffix) = ["_bucket", "_sum", "_count"]
        .into_iter()
        .find(|suffix| name.ends_with(suffix))
    {
        return Err(GuestMetricError::InvalidName(format!(
            "`{name}`: names ending in `{suffix}` are reserved for histograms"
        )));
    }
    Ok(())
}

fn validate_labels(labels: &[(String, String)]) -> Result<(), GuestMetricError> {
    if labels.len() > MAX_GUEST_LABELS {
        return Err(GuestMetricError::LabelMismatch(format!(
            "at most {MAX_GUEST_LABELS} labels"
        )));
    }
    for window in labels.windows(2) {
        if window[0].0 == window[1].0 {
            return Err(GuestMetricError::LabelMismatch(format!(
                "label `{}` given twice",
                window[0].0
            )));
        }
    }
    for (key, value) in labels {
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !key.starts_with("__")
            && key.len() <= 100;
        if !valid {
            return Err(GuestMetricError::LabelMismatch(format!(
                "`{key}` is not a valid label name"
            )));
        }
        if key == "service" {
            return Err(GuestMetricError::LabelMismatch(
                "`service` is set by the host".into(),
            ));
        }
        if value.len() > 256 {
            return Err(GuestMetricError::LabelMismatch(format!(
                "the value of `{key}` is longer than 256 bytes"
            )));
        }
    }
    Ok(())
}

/// Most gRPC `service/method` names kept as label values per owner; the rest are
/// counted under [`OTHER_LABEL`].
pub const MAX_RPC_METHODS: usize = 64;

/// The label value of a name not admitted (OpenTelemetry's word for it).
pub const OTHER_LABEL: &str = "_OTHER";

/// Names that clients or guests choose (gRPC methods), admitted as label values up to
/// a cap per owner so that nobody can grow the number of series without bound.
pub struct LabelBudget {
    cap: usize,
    admitted: Mutex<HashMap<String, HashSet<String>>>,
}

impl LabelBudget {
    /// A budget of `cap` values per owner.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            admitted: Mutex::new(HashMap::new()),
        }
    }

    /// `value` if it is, or may now be, one of `owner`'s labels; otherwise
    /// [`OTHER_LABEL`]. Only `admit` true lets a new value in.
    pub fn label<'a>(&self, owner: &str, value: &'a str, admit: bool) -> &'a str {
        let mut admitted = self.admitted.lock();
        if let Some(values) = admitted.get_mut(owner) {
            if values.contains(value) {
                return value;
            }
            if admit && values.len() < self.cap {
                values.insert(value.to_owned());
                return value;
            }
            return OTHER_LABEL;
        }
        if admit && self.cap > 0 {
            admitted.insert(owner.to_owned(), HashSet::from([value.to_owned()]));
            return value;
        }
        OTHER_LABEL
    }

    /// Forget `owner`'s values (the service was removed).
    pub fn forget(&self, owner: &str) {
        self.admitted.lock().remove(owner);
    }
}

/// `ok`, `client_error` or `server_error` for a gRPC status code, as the dashboard
/// groups them (server errors as OpenTelemetry's RPC conventions count them).
pub fn grpc_class(code: crate::grpc::Code) -> &'static str {
    if code == crate::grpc::Code::Ok {
        "ok"
    } else if code.is_server_failure() {
        "server_error"
    } else {
        "client_error"
    }
}

/// The method labels a request can have (see the gateway's method label).
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
/// The status classes [`status_class`] names.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One deployment's request counter and duration histogram for each method and
/// status class, each resolved on its first request: after that, a request's end
/// costs its two updates, not two label lookups under the metric family's lock.
pub struct RequestSeries {
    cells: [std::sync::OnceLock<(IntCounter, prometheus::Histogram)>;
        METHOD_LABELS.len() * STATUS_CLASSES.len()],
}

impl Default for RequestSeries {
    fn default() -> Self {
        Self {
            cells: [const { std::sync::OnceLock::new() };
                METHOD_LABELS.len() * STATUS_CLASSES.len()],
        }
    }
}

impl RequestSeries {
    /// Count a request of `service`'s `version` with `method` that ended in `class`
    /// after `seconds`.
    pub fn observe(&self, metrics: &Metrics, labels: [&str; 4], seconds: f64) {
        let [_, _, method, class] = labels;
        let cell = METHOD_LABELS
            .iter()
            .position(|known| *known == method)
            .zip(STATUS_CLASSES.iter().position(|known| *known == class))
            .map(|(m, c)| &self.cells[m * STATUS_CLASSES.len() + c]);
        let resolve = || {
            (
                metrics.requests.with_label_values(&labels),
                metrics.request_duration.with_label_values(&labels),
            )
        };
        match cell {
            Some(cell) => {
                let (requests, duration) = cell.get_or_init(resolve);
                requests.inc();
                duration.observe(seconds);
            }
            None => {
                let (requests, duration) = resolve();
                requests.inc();
                duration.observe(seconds);
            }
        }
    }
}

/// `2xx`, `4xx`, ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_budget_admits_only_what_it_is_told_and_up_to_its_cap() {
        let budget = LabelBudget::new(2);
        assert_eq!(budget.label("svc", "Made1", false), OTHER_LABEL);
        assert_eq!(budget.label("svc", "SayHello", true), "SayHello");
        // Once admitted, a name stays a label whatever its later outcome.
        assert_eq!(budget.label("svc", "SayHello", false), "SayHello");
        assert_eq!(budget.label("svc", "Other", true), "Other");
        assert_eq!(budget.label("svc", "Third", true), OTHER_LABEL);
        // Each owner has its own budget, and forgetting it starts it over.
        assert_eq!(budget.label("other", "Third", true), "Third");
        budget.forget("svc");
        assert_eq!(budget.label("svc", "Third", true), "Third");
    }

    #[test]
    fn grpc_classes_follow_the_rpc_conventions() {
        use crate::grpc::Code;
        assert_eq!(grpc_class(Code::Ok), "ok");
        assert_eq!(grpc_class(Code::InvalidArgument), "client_error");
        assert_eq!(grpc_class(Code::NotFound), "client_error");
        assert_eq!(grpc_class(Code::Cancelled), "client_error");
        assert_eq!(grpc_class(Code::Unavailable), "server_error");
        assert_eq!(grpc_class(Code::Internal), "server_error");
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn request_stats_sum_methods_and_statuses_and_split_versions() {
        let metrics = Metrics::new(true).expect("metrics");
        let observe = |version: &str, method: &str, class: &str, seconds: f64| {
            metrics
                .request_duration
                .with_label_values(&["web", version, method, class])
                .observe(seconds);
        };
        observe("1", "GET", "2xx", 0.002);
        observe("1", "POST", "5xx", 0.2);
        observe("2", "GET", "2xx", 0.002);
        let stats = metrics.request_stats();
        let web = &stats["web"];
        assert_eq!((web.requests, web.failures), (3, 1));
        assert_eq!(web.by_version["1"], 2);
        assert_eq!(web.by_version["2"], 1);
        let at_most = |bound: f64| {
            web.buckets
                .iter()
                .find(|(le, _)| (*le - bound).abs() < 1e-12)
                .map(|(_, count)| *count)
        };
        assert_eq!(at_most(0.0025), Some(2));
        assert_eq!(at_most(0.25), Some(3));
        metrics
            .breaker_state
            .with_label_values(&["a", "web"])
            .set(2);
        assert_eq!(metrics.breaker_states(), [("a".into(), "web".into(), 2)]);
    }

    #[test]
    fn names_of_different_services_never_collide() {
        let metrics = Metrics::new(true).expect("metrics");
        metrics
            .guest_record("a-b", GuestKind::Counter, "c", &[], 1.0)
            .expect("a-b/c");
        metrics
            .guest_record("a", GuestKind::Counter, "b_c", &[], 2.0)
            .expect("a/b_c is another metric");
        let text = metrics.render();
        assert!(
            text.contains("shoal_guest_a_b:c{service=\"a-b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("shoal_guest_a:b_c{service=\"a\"} 2"),
            "{text}"
        );
        for reserved in ["x_count", "x_sum", "x_bucket"] {
            assert!(
                metrics
                    .guest_record("a", GuestKind::Counter, reserved, &[], 1.0)
                    .is_err(),
                "{reserved}"
            );
        }
    }

    #[test]
    fn removing_a_service_removes_its_host_series() {
        let metrics = Metrics::new(true).expect("metrics");
        for service in ["gone", "kept"] {
            metrics
                .requests
                .with_label_values(&[service, "1", "GET", "2xx"])
                .inc();
            metrics
                .calls
                .with_label_values(&["kept", service, "ok"])
                .inc();
        }
        metrics
            .requests
            .with_label_values(&["kept", "0", "GET", "2xx"])
            .inc();
        metrics.forget_service("gone");
        metrics.forget_version("kept", "0");
        let text = metrics.render();
        assert!(!text.contains("\"gone\""), "{text}");
        assert!(text.contains("service=\"kept\""), "{text}");
        assert!(!text.contains("version=\"0\""), "{text}");
    }

    #[test]
    fn guest_metrics_are_namespaced_and_rendered() {
        let metrics = Metrics::new(true).expect("metrics");
        metrics
            .guest_record(
                "order-svc",
                GuestKind::Counter,
                "orders_total",
                &labels(&[("status", "ok")]),
                2.0,
            )
            .expect("counter");
        metrics
            .guest_record(
                "order-svc",
                GuestKind::Counter,
                "orders_total",
                &labels(&[("status", "ok")]),
                1.0,
            )
            .expect("counter");
        metrics
            .guest_record(
                "other",
                GuestKind::Gauge,
                "orders_total",
                &labels(&[("region", "eu")]),
                7.0,
            )
            .expect("same name, other service");
        let text = metrics.render();
        assert!(
            text.contains(
                "shoal_guest_order_svc:orders_total{service=\"order-svc\",status=\"ok\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("shoal_guest_other:orders_total{region=\"eu\",service=\"other\"} 7"),
            "{text}"
        );
    }

    #[test]
    fn bad_guest_metrics_are_refused() {
        let metrics = Metrics::new(true).expect("metrics");
        let record = |kind, name: &str, l: &[(&str, &str)], v| {
            metrics.guest_record("s", kind, name, &labels(l), v)
        };
        assert!(matches!(
            record(GuestKind::Counter, "9lives", &[], 1.0),
            Err(GuestMetricError::InvalidName(_))
        ));
        assert!(matches!(
            record(GuestKind::Counter, "a-b", &[], 1.0),
            Err(GuestMetricError::InvalidName(_))
        ));
        assert!(matches!(
            record(GuestKind::Counter, "c", &[], -1.0),
            Err(GuestMetricError::InvalidValue(_))
        ));
        assert!(matches!(
            record(GuestKind::Gauge, "g", &[], f64::NAN),
            Err(GuestMetricError::InvalidValue(_))
        ));
        assert!(matches!(
            record(GuestKind::Counter, "c", &[("service", "x")], 1.0),
            Err(GuestMetricError::LabelMismatch(_))
        ));
        record(GuestKind::Counter, "c", &[("a", "1")], 1.0).expect("first use");
        assert!(matches!(
            record(GuestKind::Counter, "c", &[("b", "1")], 1.0),
            Err(GuestMetricError::LabelMismatch(_))
        ));
        assert!(matches!(
            record(GuestKind::Gauge, "c", &[("a", "1")], 1.0),
            Err(GuestMetricError::InvalidName(_))
        ));
    }

    #[test]
    fn series_and_metrics_are_bounded() {
        let metrics = Metrics::new(true).expect("metrics");
        for i in 0..MAX_GUEST_SERIES {
            metrics
                .guest_record(
                    "s",
                    GuestKind::Counter,
                    "hits",
                    &labels(&[("id", &i.to_string())]),
                    1.0,
                )
                .expect("within bound");
        }
        let over = metrics.guest_record(
            "s",
            GuestKind::Counter,
            "hits",
            &labels(&[("id", "x")]),
            1.0,
        );
        assert_eq!(over, Err(GuestMetricError::TooManySeries));
        // Existing series still count.
        metrics
            .guest_record(
                "s",
                GuestKind::Counter,
                "hits",
                &labels(&[("id", "0")]),
                1.0,
            )
            .expect("existing series");
        for i in 1..MAX_GUEST_METRICS {
            metrics
                .guest_record("s", GuestKind::Gauge, &format!("m{i}"), &[], 1.0)
                .expect("within bound");
        }
        assert_eq!(
            metrics.guest_record("s", GuestKind::Gauge, "one_too_many", &[], 1.0),
            Err(GuestMetricError::TooManySeries)
        );
        metrics.forget_guest("s");
        assert_eq!(metrics.guest_series("s"), 0);
        assert!(!metrics.render().contains("shoal_guest_s:hits"));
    }

    #[test]
    fn request_series_count_the_same_series_as_label_lookups() {
        let metrics = Metrics::new(true).expect("metrics");
        let series = RequestSeries::default();
        for _ in 0..3 {
            series.observe(&metrics, ["svc", "1", "GET", "2xx"], 0.001);
        }
        series.observe(&metrics, ["svc", "1", "POST", "5xx"], 0.002);
        // A label outside the known sets is looked up each time, and still counted.
        series.observe(&metrics, ["svc", "1", "BREW", "2xx"], 0.003);
        let count = |method: &str, class: &str| {
            metrics
                .requests
                .with_label_values(&["svc", "1", method, class])
                .get()
        };
        assert_eq!(count("GET", "2xx"), 3);
        assert_eq!(count("POST", "5xx"), 1);
        assert_eq!(count("BREW", "2xx"), 1);
        let histogram = metrics
            .request_duration
            .with_label_values(&["svc", "1", "GET", "2xx"]);
        assert_eq!(histogram.get_sample_count(), 3);
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(404), "4xx");
    }
}
