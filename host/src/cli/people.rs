//! Output for people: `shoal show` as a summary and `shoal top` as a table, rendered
//! from the admin API's shared types by pure functions (unit-tested here, checked end
//! to end in the tests).

use shoal_api::logs::LogLine;
use shoal_api::services as api;
use std::fmt::Write as _;
use std::time::Duration;

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{} KiB", n / 1024)
    }
}

/// Faults by kind, as `trap 2, timeout 1` (only the ones that happened), and their sum.
fn faults(service: &api::RunningService) -> (u64, String) {
    let total = service.faults.values().sum();
    let listed: Vec<String> = service
        .faults
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    let listed = if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join(", ")
    };
    (total, listed)
}

fn secret_status(status: api::SecretStatus) -> &'static str {
    match status {
        api::SecretStatus::Available => "available",
        api::SecretStatus::Missing => "missing",
        api::SecretStatus::Denied => "denied",
        api::SecretStatus::NotDeclared => "not-declared",
    }
}

/// `shoal show NAME`: the service, then its most recent warnings and errors.
pub fn render_service(service: &api::Service, recent_errors: &[LogLine]) -> String {
    let mut out = String::new();
    let (state, version, digest, route, deployed_at, history) = match service {
        api::Service::Running(s) => (
            "running",
            &s.version,
            &s.digest,
            &s.route,
            &s.deployed_at,
            &s.history,
        ),
        api::Service::Failed(s) => (
            "failed",
            &s.version,
            &s.digest,
            &s.route,
            &s.deployed_at,
            &s.history,
        ),
        api::Service::Elsewhere(s) => (
            "elsewhere",
            &s.version,
            &s.digest,
            &s.route,
            &s.deployed_at,
            &s.history,
        ),
    };
    let _ = writeln!(
        out,
        "{}  {state}  version {version} ({})",
        service.name(),
        digest.chars().take(19).collect::<String>()
    );
    let _ = writeln!(out, "  route      {route}  deployed {deployed_at}");
    match service {
        api::Service::Failed(failed) => {
            let _ = writeln!(out, "  reason     {}", failed.reason);
        }
        api::Service::Running(running) => render_running(&mut out, running),
        api::Service::Elsewhere(elsewhere) => {
            let hosts: Vec<String> = elsewhere
                .placements
                .iter()
                .map(|p| format!("{} ({})", p.host, p.state))
                .collect();
            let _ = writeln!(
                out,
                "  replicas   {} on {}",
                elsewhere.replicas,
                if hosts.is_empty() {
                    "-".to_owned()
                } else {
                    hosts.join(", ")
                }
            );
        }
    }
    let history: Vec<&str> = history.iter().map(|v| v.version.as_str()).collect();
    if !history.is_empty() {
        let _ = writeln!(out, "  history    {}", history.join(", "));
    }
    if !recent_errors.is_empty() {
        let _ = writeln!(out, "  recent warnings and errors:");
        for line in recent_errors {
            let _ = writeln!(
                out,
                "    {} {} {} {}",
                line.at,
                line.level.to_uppercase(),
                line.request_id,
                line.message
            );
        }
    }
    out
}

/// The lines only a running service has.
fn render_running(out: &mut String, service: &api::RunningService) {
    if service.code == api::CodeTier::Baseline {
        let _ = writeln!(
            out,
            "  code       baseline (optimised code is compiling in the background)"
        );
    }
    if let Some(canary) = &service.canary {
        let mut line = format!("  canary     {} takes {}%", canary.version, canary.weight);
        if let Some(rule) = &canary.auto_rollback {
            let _ = write!(
                line,
                ", rolled back above {:.0}% errors",
                rule.max_error_rate * 100.0
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let limits = &service.limits;
    let _ = writeln!(
        out,
        "  limits     memory {} MiB, timeout {} ms, concurrency {}, queue {}{}",
        limits.memory_mb,
        limits.timeout_ms,
        limits.max_concurrency,
        limits.queue,
        if limits.scaled_by_operator {
            " (scaled by the operator)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  load       {} in flight, {} queued",
        service.load.in_flight, service.load.queued
    );
    let (_, faults) = faults(service);
    let _ = writeln!(
        out,
        "  requests   {} served; faults: {faults}",
        service.requests
    );
    let usage = &service.usage;
    let _ = writeln!(
        out,
        "  usage      cpu {:.3} s, {} instances, memory peak {}",
        usage.cpu_seconds,
        usage.instances_created,
        bytes(usage.memory_peak_bytes)
    );
    if let Some(secrets) = &service.secrets {
        let listed: Vec<String> = secrets
            .iter()
            .map(|(name, status)| format!("{name} {}", secret_status(*status)))
            .collect();
        let _ = writeln!(out, "  secrets    {}", listed.join(", "));
    }
}

/// What `shoal top` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopOrder {
    /// CPU time spent in the guest.
    Cpu,
    /// Requests served.
    Requests,
    /// Faults.
    Errors,
}

/// One service's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    name: String,
    version: String,
    cpu_seconds: f64,
    requests: u64,
    errors: u64,
    in_flight: u64,
    memory_peak: u64,
}

/// The counters of every running service in a `GET /v1/services` answer.
pub fn counters(list: &api::ServiceList) -> Vec<Counters> {
    list.services
        .iter()
        .filter_map(api::Service::running)
        .map(|service| Counters {
            name: service.name.clone(),
            version: service.version.clone(),
            cpu_seconds: service.usage.cpu_seconds,
            requests: service.requests,
            errors: faults(service).0,
            in_flight: u64::from(service.load.in_flight),
            memory_peak: service.usage.memory_peak_bytes,
        })
        .collect()
}

/// `shoal top`'s table: rates over `elapsed` since `before` (totals when there is no
/// earlier sample), ordered by `order`, highest first.
pub fn render_top(
    before: Option<&[Counters]>,
    now: &[Counters],
    elapsed: Duration,
    order: TopOrder,
) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let mut rows: Vec<(&Counters, f64, f64, f64)> = now
        .iter()
        .map(|current| {
            let earlier = before.and_then(|b| b.iter().find(|c| c.name == current.name));
            match earlier {
                Some(earlier) => (
                    current,
                    (current.cpu_seconds - earlier.cpu_seconds).max(0.0) / seconds * 100.0,
                    current.requests.saturating_sub(earlier.requests) as f64 / seconds,
                    current.errors.saturating_sub(earlier.errors) as f64 / seconds,
                ),
                None => (
                    current,
                    current.cpu_seconds,
                    current.requests as f64,
                    current.errors as f64,
                ),
            }
        })
        .collect();
    let key = |row: &(&Counters, f64, f64, f64)| match order {
        TopOrder::Cpu => row.1,
        TopOrder::Requests => row.2,
        TopOrder::Errors => row.3,
    };
    rows.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    let rates = before.is_some();
    let mut out = format!(
        "{:<24} {:<20} {:>9} {:>10} {:>10} {:>9} {:>12}\n",
        "NAME",
        "VERSION",
        if rates { "CPU %" } else { "CPU s" },
        if rates { "REQ/S" } else { "REQUESTS" },
        if rates { "ERR/S" } else { "ERRORS" },
        "IN FLIGHT",
        "MEM PEAK"
    );
    for (counters, cpu, requests, errors) in rows {
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:>9.1} {:>10.1} {:>10.1} {:>9} {:>12}",
            counters.name,
            counters.version,
            cpu,
            requests,
            errors,
            counters.in_flight,
            bytes(counters.memory_peak)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A running service as the admin API sends it (read through the shared types).
    fn service(name: &str, cpu: f64, requests: u64, traps: u64) -> api::Service {
        serde_json::from_value(json!({
            "name": name, "version": "1.0.0", "digest": "sha256:0123456789abcdef",
            "state": "running", "route": format!("/{name}"), "deployed_at": "2026-12-01T00:00:00Z",
            "code": "baseline", "wasi": "p2",
            "limits": {"memory_mb": 128, "memory_budget_mb": 8192, "timeout_ms": 30000, "max_concurrency": 64, "queue": 256, "scaled_by_operator": false},
            "load": {"in_flight": 1, "queued": 0},
            "requests": requests, "faults": {"trap": traps, "timeout": 0},
            "usage": {"cpu_seconds": cpu, "instances_created": 3, "memory_peak_bytes": 3 << 20},
            "config_keys": [], "store_bytes": null,
            "canary": {"version": "1.1.0", "digest": "d", "code": "optimized", "weight": 10,
                       "auto_rollback": {"max_error_rate": 0.05, "window_ms": 30000, "min_requests": 20}},
            "secrets": {"db-password": "available"},
            "history": [{"version": "0.9.0", "digest": "e", "deployed_at": "t"}],
        }))
        .expect("a running service")
    }

    fn list(services: Vec<api::Service>) -> api::ServiceList {
        api::ServiceList { services }
    }

    #[test]
    fn show_is_a_summary() {
        let errors = [LogLine {
            seq: 1,
            at: "t".into(),
            level: "error".into(),
            source: "log".into(),
            version: "1.0.0".into(),
            request_id: "r1".into(),
            message: "boom".into(),
            fields: String::new(),
        }];
        let text = render_service(&service("orders", 1.5, 10, 2), &errors);
        for expected in [
            "orders  running  version 1.0.0",
            "code       baseline (optimised code is compiling in the background)",
            "canary     1.1.0 takes 10%, rolled back above 5% errors",
            "memory 128 MiB, timeout 30000 ms, concurrency 64, queue 256",
            "requests   10 served; faults: trap 2",
            "usage      cpu 1.500 s, 3 instances, memory peak 3.0 MiB",
            "secrets    db-password available",
            "history    0.9.0",
            "ERROR r1 boom",
        ] {
            assert!(text.contains(expected), "`{expected}` missing:\n{text}");
        }
    }

    #[test]
    fn top_orders_by_rate_between_samples() {
        let before = counters(&list(vec![
            service("a", 1.0, 100, 0),
            service("b", 0.0, 0, 0),
        ]));
        let now = counters(&list(vec![
            service("a", 1.1, 300, 4),
            service("b", 1.0, 10, 0),
        ]));
        let table = render_top(Some(&before), &now, Duration::from_secs(2), TopOrder::Cpu);
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].contains("CPU %"));
        assert!(
            rows[1].starts_with("b ") && rows[1].contains("50.0"),
            "{table}"
        );
        let table = render_top(
            Some(&before),
            &now,
            Duration::from_secs(2),
            TopOrder::Requests,
        );
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|row| row.starts_with("a ") && row.contains("100.0")),
            "{table}"
        );
        let table = render_top(None, &now, Duration::ZERO, TopOrder::Errors);
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|row| row.starts_with("a ")),
            "{table}"
        );
    }
}
