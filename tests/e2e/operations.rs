//! What an operator reads: per-service metering (CPU, instances, memory), log lines
//! kept in the host and followed live, and the CLI's output for people.

use shoal_tests::{Host, TOKEN, guest, shoal_bin, shoal_cli, temp_root, wait_for};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn metering_puts_a_cpu_hungry_service_above_an_idle_one() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[limits]\ntimeout_ms = 300\n";
    let reply = host.deploy_with_manifest("hungry", &guest("faulty"), manifest);
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(host.deploy("idle", &guest("hello")).status, 201);
    for _ in 0..3 {
        assert!(host.get("/hungry/loop").status >= 500);
        assert_eq!(host.get("/idle/").status, 200);
    }
    assert_eq!(host.get("/hungry/hold?mb=16&ms=10").status, 200);
    let usage =
        |name: &str| host.admin("GET", &format!("/v1/services/{name}")).json()["usage"].clone();
    let (hungry, idle) = (usage("hungry"), usage("idle"));
    let cpu = |usage: &serde_json::Value| usage["cpu_seconds"].as_f64().expect("cpu_seconds");
    assert!(cpu(&hungry) >= 0.6, "three 300 ms spins: {hungry}");
    assert!(
        cpu(&idle) * 20.0 < cpu(&hungry),
        "idle {idle} vs hungry {hungry}"
    );
    assert_eq!(idle["instances_created"], 3, "{idle}");
    assert_eq!(hungry["instances_created"], 4, "{hungry}");
    let peak = hungry["memory_peak_bytes"].as_u64().expect("peak");
    assert!(peak >= 16 << 20, "held 16 MiB: {peak}");
    assert!(idle["memory_peak_bytes"].as_u64().expect("peak") < 16 << 20);
    let metrics = host.metrics_text();
    for series in [
        "shoal_guest_cpu_seconds_total{service=\"hungry\"}",
        "shoal_instances_created_total{service=\"idle\"} 3",
        "shoal_instance_memory_peak_bytes_bucket{service=\"hungry\"",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }

    // `shoal show`: a summary for people, JSON on request.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["show", "hungry"], &env);
    assert!(ok, "{err}");
    for expected in [
        "hungry  running  version",
        "limits     memory 128 MiB, timeout 300 ms",
        "requests   4 served; faults: timeout 3",
        "usage      cpu ",
        "4 instances, memory peak ",
    ] {
        assert!(out.contains(expected), "`{expected}` missing:\n{out}");
    }
    let (ok, out, _) = shoal_cli(&["show", "hungry", "--json"], &env);
    let json: serde_json::Value = serde_json::from_str(&out).expect("--json is JSON");
    assert!(ok && json["usage"]["instances_created"] == 4);

    // `shoal top`: the service that burns CPU now is on top, whatever the totals.
    let gateway = host.gateway.clone();
    let busy = std::thread::spawn(move || {
        for _ in 0..6 {
            let _ = shoal_tests::agent()
                .get(format!("{gateway}/hungry/loop"))
                .call();
        }
    });
    let (ok, out, err) = shoal_cli(
        &[
            "top",
            "--sort",
            "cpu",
            "--iterations",
            "2",
            "--interval-ms",
            "1000",
        ],
        &env,
    );
    busy.join().expect("load");
    assert!(ok, "{err}");
    let second = out.split("NAME").nth(2).expect("two tables");
    let rows: Vec<&str> = second
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        rows[0].starts_with("hungry") && rows[1].starts_with("idle"),
        "{out}"
    );
    assert!(second.contains("CPU %"), "{out}");

    // `shoal external add|ls|rm`.
    let (ok, _, err) = shoal_cli(
        &[
            "external",
            "add",
            "legacy-db",
            "--endpoint",
            "127.0.0.1:9",
            "--health-path",
            "/up",
        ],
        &env,
    );
    assert!(ok, "{err}");
    let (ok, out, _) = shoal_cli(&["external", "ls"], &env);
    assert!(
        ok && out.contains("legacy-db") && out.contains("127.0.0.1:9") && out.contains("/up"),
        "{out}"
    );
    let (ok, _, err) = shoal_cli(
        &["external", "add", "hungry", "--endpoint", "127.0.0.1:9"],
        &env,
    );
    assert!(!ok && err.contains("deployed service"), "{err}");
    let (ok, _, err) = shoal_cli(&["external", "rm", "legacy-db"], &env);
    assert!(ok, "{err}");
    let (ok, _, err) = shoal_cli(&["external", "rm", "legacy-db"], &env);
    assert!(!ok && err.contains("legacy-db"), "{err}");
}

/// `shoal logs NAME -f` running, its stdout lines arriving on a channel.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(host: &Host, args: &[&str]) -> Follower {
        let mut child = Command::new(shoal_bin())
            .arg("logs")
            .args(args)
            .env("SHOAL_ADMIN_URL", &host.admin)
            .env("SHOAL_ADMIN_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start shoal logs");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line that contains `text`, within ten seconds.
    fn line_with(&self, text: &str) -> String {
        self.line_within(text, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no line with `{text}`"))
    }

    /// The next line that contains `text`, if one comes within `wait`.
    fn line_within(&self, text: &str, wait: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn log_lines_are_kept_read_and_followed() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("chatty", &guest("faulty")).status, 201);
    let reply = host.get_with_headers(
        "/chatty/print?bytes=10&text=before-following",
        &[("x-request-id", "req-logs-1")],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(
        host.get("/chatty/print?bytes=10&text=on-stderr&to=stderr")
            .status,
        200
    );

    let kept = host.admin("GET", "/v1/services/chatty/logs").json();
    let lines = kept["lines"].as_array().expect("lines");
    let first = lines
        .iter()
        .find(|l| l["message"] == "before-following")
        .expect("kept");
    assert_eq!(first["source"], "stdout");
    assert_eq!(first["level"], "info");
    assert_eq!(first["request_id"], "req-logs-1");
    let only_request = host
        .admin("GET", "/v1/services/chatty/logs?request_id=req-logs-1")
        .json();
    assert!(
        only_request["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .all(|l| l["request_id"] == "req-logs-1")
    );
    let warnings = host
        .admin("GET", "/v1/services/chatty/logs?level=warn")
        .json();
    let warnings = warnings["lines"].as_array().expect("lines");
    assert!(!warnings.is_empty() && warnings.iter().all(|l| l["message"] == "on-stderr"));
    assert_eq!(
        host.admin("GET", "/v1/services/chatty/logs?level=loud")
            .status,
        400
    );
    assert_eq!(host.admin("GET", "/v1/services/nobody/logs").status, 404);

    // Following: the kept tail first, then a line written after it started.
    let follower = Follower::start(&host, &["chatty", "-f", "--level", "info"]);
    follower.line_with("before-following");
    assert_eq!(
        host.get("/chatty/print?bytes=10&text=after-following")
            .status,
        200
    );
    let line = follower.line_with("after-following");
    assert!(line.contains("INFO"), "{line}");
    // With no tail, only what comes after it connects; write until it has.
    let filtered = Follower::start(&host, &["chatty", "-f", "--tail", "0", "--level", "warn"]);
    let mut line = None;
    for _ in 0..50 {
        assert_eq!(
            host.get("/chatty/print?bytes=10&text=quiet-info").status,
            200
        );
        assert_eq!(
            host.get("/chatty/print?bytes=10&text=loud-warning&to=stderr")
                .status,
            200
        );
        line = filtered.line_within("loud-warning", Duration::from_millis(200));
        if line.is_some() {
            break;
        }
    }
    let line = line.expect("the follower saw a warning");
    assert!(line.contains("WARN"), "{line}");
    assert!(filtered.lines.try_iter().all(|l| !l.contains("quiet-info")));

    // Removing the service ends the stream: the follower exits by itself.
    let mut follower = follower;
    assert_eq!(host.admin("DELETE", "/v1/services/chatty").status, 204);
    wait_for("the follower to exit", Duration::from_secs(10), || {
        matches!(follower.child.try_wait(), Ok(Some(_)))
    });
}
