//! Output for people: `shoal show` as a summary and `shoal top` as a table, rendered
//! from the admin API's JSON by pure functions (unit-tested here, checked end to end
//! in the tests).

use serde_json::Value;
use std::fmt::Write as _;
use std::time::Duration;

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{} KiB", n / 1024)
    }
}

/// Faults by kind, as `trap 2, timeout 1` (only the ones that happened).
fn faults(service: &Value) -> (u64, String) {
    let Some(map) = service["faults"].as_object() else {
        return (0, "none".into());
    };
    let mut total = 0;
    let listed: Vec<String> = map
        .iter()
        .filter_map(|(kind, count)| {
            let count = count.as_u64().unwrap_or(0);
            total += count;
            (count > 0).then(|| format!("{kind} {count}"))
        })
        .collect();
    let listed = if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join(", ")
    };
    (total, listed)
}

/// `shoal show NAME`: the service, then its most recent warnings and errors.
pub fn render_service(service: &Value, recent_errors: &[Value]) -> String {
    let mut out = String::new();
    let digest = text(service, "digest");
    let _ = writeln!(
        out,
        "{}  {}  version {} ({})",
        text(service, "name"),
        text(service, "state"),
        text(service, "version"),
        digest.chars().take(19).collect::<String>()
    );
    let _ = writeln!(
        out,
        "  route      {}  deployed {}",
        text(service, "route"),
        text(service, "deployed_at")
    );
    if service["state"] == "failed" {
        let _ = writeln!(out, "  reason     {}", text(service, "reason"));
    }
    if service["code"] == "baseline" {
        let _ = writeln!(
            out,
            "  code       baseline (optimised code is compiling in the background)"
        );
    }
    if let Some(canary) = service["canary"].as_object() {
        let canary = Value::Object(canary.clone());
        let mut line = format!(
            "  canary     {} takes {}%",
            text(&canary, "version"),
            canary["weight"]
        );
        if let Some(rate) = canary["auto_rollback"]["max_error_rate"].as_f64() {
            let _ = write!(line, ", rolled back above {:.0}% errors", rate * 100.0);
        }
        let _ = writeln!(out, "{line}");
    }
    let limits = &service["limits"];
    if limits.is_object() {
        let _ = writeln!(
            out,
            "  limits     memory {} MiB, timeout {} ms, concurrency {}, queue {}{}",
            limits["memory_mb"],
            limits["timeout_ms"],
            limits["max_concurrency"],
            limits["queue"],
            if limits["scaled_by_operator"] == true {
                " (scaled by the operator)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  load       {} in flight, {} queued",
            service["load"]["in_flight"], service["load"]["queued"]
        );
        let (_, faults) = faults(service);
        let _ = writeln!(
            out,
            "  requests   {} served; faults: {faults}",
            service["requests"]
        );
        let usage = &service["usage"];
        let _ = writeln!(
            out,
            "  usage      cpu {:.3} s, {} instances, memory peak {}",
            usage["cpu_seconds"].as_f64().unwrap_or(0.0),
            usage["instances_created"],
            bytes(usage["memory_peak_bytes"].as_u64().unwrap_or(0))
        );
    }
    if let Some(secrets) = service["secrets"].as_object() {
        let listed: Vec<String> = secrets
            .iter()
            .map(|(name, status)| format!("{name} {}", status.as_str().unwrap_or("")))
            .collect();
        let _ = writeln!(out, "  secrets    {}", listed.join(", "));
    }
    let history: Vec<String> = service["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|version| text(version, "version").to_owned())
        .collect();
    if !history.is_empty() {
        let _ = writeln!(out, "  history    {}", history.join(", "));
    }
    if !recent_errors.is_empty() {
        let _ = writeln!(out, "  recent warnings and errors:");
        for line in recent_errors {
            let _ = writeln!(
                out,
                "    {} {} {} {}",
                text(line, "at"),
                text(line, "level").to_uppercase(),
                text(line, "request_id"),
                text(line, "message")
            );
        }
    }
    out
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

/// The counters of every service in a `GET /v1/services` answer.
pub fn counters(services: &Value) -> Vec<Counters> {
    services["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|service| Counters {
            name: text(service, "name").to_owned(),
            version: text(service, "version").to_owned(),
            cpu_seconds: service["usage"]["cpu_seconds"].as_f64().unwrap_or(0.0),
            requests: service["requests"].as_u64().unwrap_or(0),
            errors: faults(service).0,
            in_flight: service["load"]["in_flight"].as_u64().unwrap_or(0),
            memory_peak: service["usage"]["memory_peak_bytes"].as_u64().unwrap_or(0),
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

    fn service(name: &str, cpu: f64, requests: u64, traps: u64) -> Value {
        json!({
            "name": name, "version": "1.0.0", "digest": "sha256:0123456789abcdef",
            "state": "running", "route": format!("/{name}"), "deployed_at": "2026-12-01T00:00:00Z",
            "code": "baseline",
            "limits": {"memory_mb": 128, "timeout_ms": 30000, "max_concurrency": 64, "queue": 256, "scaled_by_operator": false},
            "load": {"in_flight": 1, "queued": 0},
            "requests": requests, "faults": {"trap": traps, "timeout": 0},
            "usage": {"cpu_seconds": cpu, "instances_created": 3, "memory_peak_bytes": 3 << 20},
            "canary": {"version": "1.1.0", "weight": 10, "auto_rollback": {"max_error_rate": 0.05}},
            "secrets": {"db-password": "available"},
            "history": [{"version": "0.9.0"}],
        })
    }

    #[test]
    fn show_is_a_summary() {
        let errors = [json!({"at": "t", "level": "error", "request_id": "r1", "message": "boom"})];
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
        let before =
            counters(&json!({"services": [service("a", 1.0, 100, 0), service("b", 0.0, 0, 0)]}));
        let now =
            counters(&json!({"services": [service("a", 1.1, 300, 4), service("b", 1.0, 10, 0)]}));
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
