//! Hostile clients: half-open and idle connections, connection caps on both listeners.

use shoal_tests::{Host, guest, rss_mb, temp_root, wait_for};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn address(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("listener address")
}

/// Open up to `count` connections that each send the start of a request head and
/// then nothing more. Connections the host keeps in its backlog may not complete;
/// those that do are returned.
fn half_open(to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..count {
        let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_millis(100)) else {
            continue;
        };
        if stream.write_all(b"GET /healthz HTTP/1.1\r\n").is_ok() {
            open.push(stream);
        }
    }
    open
}

/// Whether the host closes `stream` within `within`.
fn closed_by_host(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("read timeout");
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            // A 408 or similar answer before the close is fine; keep reading.
            Ok(_) => continue,
            Err(error) => {
                return matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
            }
        }
    }
}

#[test]
fn half_open_floods_on_both_ports_neither_starve_traffic_nor_exhaust_descriptors() {
    let root = temp_root();
    let host = Host::start(
        root.path(),
        &[
            "--max-connections",
            "500",
            "--admin-max-connections",
            "50",
            "--header-read-timeout-ms",
            "1500",
        ],
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(host.get("/hello/").status, 200, "warm-up");
    let fds_before = host.open_fds();

    let gateway = address(&host.gateway);
    let admin = address(&host.admin);
    let gateway_flood = std::thread::spawn(move || half_open(gateway, 2000));
    let admin_flood = std::thread::spawn(move || half_open(admin, 2000));
    // Normal traffic during the flood, on the connection the client already has.
    let mut served = 0;
    let started = Instant::now();
    while !(gateway_flood.is_finished() && admin_flood.is_finished()) || served < 50 {
        let reply = host.get("/hello/");
        assert_eq!(reply.status, 200, "{}", reply.body);
        served += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "flood never ended"
        );
    }
    let mut gateway_flood = gateway_flood.join().expect("gateway flood");
    let mut admin_flood = admin_flood.join().expect("admin flood");
    assert!(!gateway_flood.is_empty() && !admin_flood.is_empty());

    // The caps bound what the host holds open, however many clients try.
    let fds = host.open_fds();
    assert!(
        fds <= fds_before + 500 + 50 + 16,
        "{fds} descriptors open (from {fds_before}) with caps of 500 + 50"
    );

    // Half-sent heads are cut at the header-read timeout, on both ports.
    for stream in gateway_flood
        .iter_mut()
        .take(20)
        .chain(admin_flood.iter_mut().take(20))
    {
        assert!(
            closed_by_host(stream, Duration::from_secs(30)),
            "a half-open connection stayed open"
        );
    }
    drop(gateway_flood);
    drop(admin_flood);

    // Both listeners serve new clients again; deploys still write.
    assert_eq!(host.admin("GET", "/healthz").status, 200);
    assert_eq!(host.deploy("hello2", &guest("hello")).status, 201);
    assert_eq!(host.get("/hello2/").status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let root = temp_root();
    // The header-read timeout is far longer than the wait below: only the idle
    // timeout can close the connection in time.
    let host = Host::start(
        root.path(),
        &[
            "--idle-timeout-ms",
            "500",
            "--header-read-timeout-ms",
            "60000",
        ],
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let mut stream = TcpStream::connect(address(&host.gateway)).expect("connect");
    stream
        .write_all(b"GET /hello/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let mut answer = [0u8; 16];
    stream.read_exact(&mut answer).expect("answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    // Nothing more is sent: the host closes the connection once it has been idle.
    assert!(closed_by_host(&mut stream, Duration::from_secs(10)));
}

/// Send raw request bytes to the gateway; answer the whole response text.
fn raw(host: &Host, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address(&host.gateway)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn faults_and_requests(host: &Host, service: &str) -> (serde_json::Value, serde_json::Value) {
    let view = host.admin("GET", &format!("/v1/services/{service}")).json();
    (view["faults"].clone(), view["requests"].clone())
}

#[test]
fn client_mistakes_are_400s_that_count_against_no_service() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(host.get("/hello/").status, 200);
    let before = faults_and_requests(&host, "hello");

    // A Host header that is not ASCII is the client's fault.
    let answer = raw(
        &host,
        b"GET /hello/ HTTP/1.1\r\nhost: caf\xe9\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Host"), "{answer}");
    // So is a request with no authority at all.
    let answer = raw(&host, b"GET /hello/ HTTP/1.1\r\nconnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        faults_and_requests(&host, "hello"),
        before,
        "counted against hello"
    );

    // A request in absolute form keeps its authority (RFC 9112 §3.2.2).
    let answer = raw(
        &host,
        b"GET http://shop.example/hello/echo HTTP/1.1\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("authority: shop.example\n"), "{answer}");
}

#[test]
fn clients_cannot_set_internal_or_forwarding_headers() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(host.deploy("faulty", &guest("faulty")).status, 201);
    let echo = host.get_with_headers(
        "/hello/echo",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-shoal-caller", "payments"),
            ("x-shoal-anything", "1"),
        ],
    );
    assert_eq!(echo.status, 200);
    assert!(
        echo.body.contains("header x-forwarded-for: 127.0.0.1\n"),
        "{}",
        echo.body
    );
    assert!(!echo.body.contains("203.0.113.9"), "{}", echo.body);
    assert!(!echo.body.contains("x-shoal-"), "{}", echo.body);
    // A client's deadline header does not shorten (or fail) the request.
    let slept = host.get_with_headers("/faulty/sleep?ms=300", &[("x-shoal-deadline-ms", "1")]);
    assert_eq!(slept.status, 200, "{}", slept.body);
}

#[test]
fn trusted_proxies_keep_forwarding_headers_and_pass_deadlines() {
    let root = temp_root();
    let host = Host::start(root.path(), &["--trusted-proxies", "127.0.0.1"]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(host.deploy("faulty", &guest("faulty")).status, 201);
    let echo = host.get_with_headers("/hello/echo", &[("x-forwarded-for", "203.0.113.9")]);
    assert!(
        echo.body
            .contains("header x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{}",
        echo.body
    );
    let cut = host.get_with_headers("/faulty/sleep?ms=3000", &[("x-shoal-deadline-ms", "200")]);
    assert_eq!(cut.status, 504, "{}", cut.body);
}

#[test]
fn guest_log_text_cannot_forge_host_log_lines() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let forged = "FORGED-LINE host is compromised";
    let reply = host.get(&format!("/hello/?name=x%0A{}", forged.replace(' ', "%20")));
    assert_eq!(reply.status, 200);
    wait_for("the greeting to be logged", Duration::from_secs(10), || {
        host.log().contains("FORGED-LINE")
    });
    for line in host.log().lines() {
        assert!(
            !line.starts_with("FORGED-LINE"),
            "a guest forged a line: {line}"
        );
    }
}

#[test]
fn failure_bodies_name_the_fault_and_request_id_only() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("faulty", &guest("faulty")).status, 201);
    let trap = host.get("/faulty/trap");
    assert_eq!(trap.status, 500);
    let id = trap.header("x-request-id").expect("id").to_owned();
    assert_eq!(
        trap.body.lines().count(),
        1,
        "one line, no backtrace or error chain: {}",
        trap.body
    );
    assert!(trap.body.contains(&id), "{}", trap.body);
    assert!(!trap.body.contains("wasm backtrace"), "{}", trap.body);
    assert!(!trap.body.contains(".rs:"), "{}", trap.body);
}

/// Peak resident memory of a process, from `/proc/PID/status` (Linux), in MiB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("kib");
    kib / 1024
}

#[test]
fn the_host_s_memory_stays_within_the_budget_while_guests_exhaust_it_again_and_again() {
    let root = temp_root();
    let host = Host::start(root.path(), &["--max-total-memory-mb", "256"]);
    // Its worst case is the whole budget: 16 instances of 16 MiB.
    let leaky = "[limits]\nmemory_mb = 16\nmax_concurrency = 16\nqueue = 160\n";
    let deployed = host.deploy_with_manifest("leak", &guest("faulty"), leaky);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    assert_eq!(host.get("/leak/hold?mb=1&ms=1").status, 200);
    let idle = rss_mb(host.pid());
    // From here the peak counts (writing 5 resets the high-water mark).
    std::fs::write(format!("/proc/{}/clear_refs", host.pid()), "5").expect("reset the peak");

    // 160 requests that each grow until refused, 16 at a time: instances end while
    // others grow in new slots, wave after wave.
    let gateway = host.gateway.clone();
    let leaks: Vec<_> = (0..160)
        .map(|_| {
            let url = format!("{gateway}/leak/leak");
            std::thread::spawn(move || {
                shoal_tests::agent()
                    .get(&url)
                    .call()
                    .map_or(0, |response| response.status().as_u16())
            })
        })
        .collect();
    let statuses: Vec<u16> = leaks
        .into_iter()
        .map(|leak| leak.join().expect("leak"))
        .collect();
    assert!(statuses.iter().all(|status| *status >= 500), "{statuses:?}");
    let peak = peak_rss_mb(host.pid());
    assert!(
        peak <= idle + 256 * 11 / 10,
        "the host peaked at {peak} MiB: idle {idle} MiB, budget 256 MiB"
    );
    assert_eq!(host.get("/leak/hold?mb=1&ms=1").status, 200, "it serves on");
}

#[test]
fn no_sum_of_services_passes_the_hosts_memory_budget() {
    let root = temp_root();
    let host = Host::start(root.path(), &["--max-total-memory-mb", "512"]);
    // A service whose worst case exceeds the whole budget is refused at deploy.
    let greedy = "[limits]\nmemory_mb = 128\nmax_concurrency = 8\n";
    let refused = host.deploy_with_manifest("greedy", &guest("faulty"), greedy);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("memory budget"), "{}", refused.body);
    // Two services that each fit, but not together.
    let fits = "[limits]\nmemory_mb = 64\nmax_concurrency = 8\n";
    assert_eq!(
        host.deploy_with_manifest("a", &guest("faulty"), fits)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("b", &guest("faulty"), fits)
            .status,
        201
    );
    let view = host.admin("GET", "/v1/services/a").json();
    assert_eq!(view["limits"]["memory_budget_mb"], 512, "{view}");
    let small = "[limits]\nmemory_mb = 16\nmax_concurrency = 4\n";
    assert_eq!(
        host.deploy_with_manifest("hello", &guest("hello"), small)
            .status,
        201
    );
    assert_eq!(host.get("/hello/").status, 200);
    let baseline = peak_rss_mb(host.pid());

    // 16 requests each holding 60 MiB at once would need 960 MiB.
    let gateway = host.gateway.clone();
    let holders: Vec<_> = (0..16)
        .map(|i| {
            let url = format!(
                "{gateway}/{}/hold?mb=60&ms=1500",
                if i % 2 == 0 { "a" } else { "b" }
            );
            std::thread::spawn(move || {
                let mut response = shoal_tests::agent().get(&url).call().expect("hold");
                let status = response.status().as_u16();
                (
                    status,
                    response.body_mut().read_to_string().unwrap_or_default(),
                )
            })
        })
        .collect();
    let outcomes: Vec<(u16, String)> = holders
        .into_iter()
        .map(|holder| holder.join().expect("holder"))
        .collect();
    let held = outcomes.iter().filter(|(status, _)| *status == 200).count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(status, _)| *status == 503)
        .collect();
    assert!(held >= 1, "{outcomes:?}");
    assert!(!refused.is_empty(), "the budget never bit: {outcomes:?}");
    assert!(
        refused
            .iter()
            .all(|(_, body)| body.contains("memory budget")),
        "{outcomes:?}"
    );
    assert_eq!(held + refused.len(), 16, "{outcomes:?}");
    let growth = peak_rss_mb(host.pid()).saturating_sub(baseline);
    assert!(
        growth < 512 + 150,
        "host grew by {growth} MiB with a 512 MiB budget"
    );
    // The host and a neighbour are unharmed; memory came back.
    assert_eq!(host.get("/hello/").status, 200);
    assert_eq!(host.get("/a/hold?mb=60&ms=1").status, 200);
    let metrics = host.admin("GET", "/metrics").body;
    assert!(
        metrics.contains("shoal_memory_budget_bytes 536870912"),
        "{metrics}"
    );
}

#[test]
fn guest_output_reaches_the_log_and_a_panic_message_the_fault_record() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("faulty", &guest("faulty")).status, 201);
    let printed = host.get("/faulty/print?bytes=10&text=hello-from-stdout");
    assert_eq!(printed.status, 200);
    assert_eq!(host.get("/faulty/panic").status, 500);
    wait_for(
        "the guest's output in the log",
        Duration::from_secs(10),
        || {
            let log = host.log();
            log.contains("hello-from-stdout") && log.contains("request failed")
        },
    );
    let log = host.log();
    let stdout_line = log
        .lines()
        .find(|line| line.contains("hello-from-stdout"))
        .expect("stdout line");
    assert!(
        stdout_line.contains("service=\"faulty\"") || stdout_line.contains("service=faulty"),
        "{stdout_line}"
    );
    assert!(stdout_line.contains("stdout"), "{stdout_line}");
    let fault = log
        .lines()
        .find(|line| line.contains("request failed"))
        .expect("fault record");
    assert!(
        fault.contains("panic requested"),
        "the panic message is in the fault record: {fault}"
    );
    // The client is told the fault, not the guest's output.
    assert!(!host.get("/faulty/panic").body.contains("panic requested"));
}

#[test]
fn a_stalled_log_reader_never_stalls_the_host() {
    let root = temp_root();
    let host = Host::start_with_unread_stderr(root.path(), &[]);
    for name in ["chatty0", "chatty1", "chatty2", "chatty3"] {
        assert_eq!(host.deploy(name, &guest("faulty")).status, 201);
    }
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    // Far more than the stderr pipe holds: 400 requests × 8 KiB of output each, from
    // four services (each within its own log budget, together past the log's buffer).
    let gateway = host.gateway.clone();
    let chatty: Vec<_> = (0..4)
        .map(|i| {
            let url = format!("{gateway}/chatty{i}/print?bytes=8192");
            std::thread::spawn(move || {
                let agent = shoal_tests::agent();
                (0..100)
                    .filter(|_| {
                        agent
                            .get(&url)
                            .call()
                            .is_ok_and(|response| response.status() == 200)
                    })
                    .count()
            })
        })
        .collect();
    for _ in 0..50 {
        assert_eq!(host.get("/hello/").status, 200);
        assert_eq!(host.admin("GET", "/healthz").status, 200);
    }
    let served: usize = chatty.into_iter().map(|t| t.join().expect("chatty")).sum();
    assert_eq!(served, 400, "every chatty request was answered");
    let metrics = host.admin("GET", "/metrics").body;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(value("shoal_log_lines_dropped_total") > 0.0, "{metrics}");
    assert!(
        value("shoal_guest_log_lines_dropped_total{service=\"chatty0\"}") > 0.0,
        "{metrics}"
    );
}

#[test]
fn calls_to_ten_thousand_made_up_names_leave_metrics_and_memory_bounded() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    assert_eq!(host.get("/a/call?service=warmup0").status, 200);
    let metrics_before = host.admin("GET", "/metrics").body.len();
    let rss_before = rss_mb(host.pid());
    let gateway = host.gateway.clone();
    let callers: Vec<_> = (0..4)
        .map(|worker| {
            let gateway = gateway.clone();
            std::thread::spawn(move || {
                let agent = shoal_tests::agent();
                for i in 0..2500 {
                    let url = format!("{gateway}/a/call?service=made-up-{worker}-{i}");
                    let mut response = agent.get(&url).call().expect("call");
                    let body = response.body_mut().read_to_string().unwrap_or_default();
                    assert!(body.contains("no-instances"), "{body}");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().expect("caller");
    }
    let metrics = host.admin("GET", "/metrics").body;
    assert!(
        metrics.len() < metrics_before + 16 * 1024,
        "/metrics grew from {metrics_before} to {} bytes",
        metrics.len()
    );
    assert!(metrics.contains("target=\"(unregistered)\""), "{metrics}");
    assert!(
        !metrics.contains("made-up-"),
        "a made-up name became a label"
    );
    let growth = rss_mb(host.pid()).saturating_sub(rss_before);
    assert!(growth < 64, "host RSS grew by {growth} MiB");
}

/// Wait until `service` has `queued` requests waiting.
fn wait_queued(host: &Host, service: &str, queued: u32) {
    wait_for("a queued request", Duration::from_secs(10), || {
        host.running(service).load.queued == queued
    });
}

#[test]
fn queued_requests_run_the_version_live_when_they_are_admitted() {
    // Holds the only slot long enough for a second request to queue behind it, even
    // on a machine busy with other tests.
    const BUSY: &str = "/svc/sleep?ms=4000";
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = |release: &str| {
        format!("[config]\nrelease = \"{release}\"\n[limits]\nmax_concurrency = 1\nqueue = 4\n")
    };
    assert_eq!(
        host.deploy_with_manifest("svc", &guest("faulty"), &manifest("r1"))
            .status,
        201
    );
    let gateway = host.gateway.clone();
    let get = move |path: &'static str| {
        let url = format!("{gateway}{path}");
        std::thread::spawn(move || {
            let mut response = shoal_tests::agent().get(&url).call().expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.body_mut().read_to_string().unwrap_or_default(),
            )
        })
    };
    let busy = get(BUSY);
    wait_for("the slot to be taken", Duration::from_secs(10), || {
        host.running("svc").load.in_flight == 1
    });
    let queued = get("/svc/ok");
    wait_queued(&host, "svc", 1);
    // A new version arrives while the request waits: it runs the new one.
    assert_eq!(
        host.deploy_with_manifest("svc", &guest("faulty"), &manifest("r2"))
            .status,
        200
    );
    assert_eq!(busy.join().expect("busy").0, 200);
    let (status, body) = queued.join().expect("queued");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("r2"), "ran the version it queued for: {body}");

    // The service is removed while a request waits: it is told so.
    let busy = get(BUSY);
    wait_for("the slot to be taken", Duration::from_secs(10), || {
        host.running("svc").load.in_flight == 1
    });
    let queued = get("/svc/ok");
    wait_queued(&host, "svc", 1);
    assert_eq!(host.admin("DELETE", "/v1/services/svc").status, 204);
    let _ = busy.join();
    let (status, body) = queued.join().expect("queued");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("removed"), "{body}");
}

#[test]
fn no_service_takes_the_whole_instance_pool() {
    let root = temp_root();
    let host = Host::start(
        root.path(),
        &["--max-instances", "8", "--max-instances-per-service", "6"],
    );
    // Asking for more concurrency than one service may have is refused.
    let greedy = "[limits]\nmemory_mb = 16\nmax_concurrency = 7\n";
    let refused = host.deploy_with_manifest("greedy", &guest("faulty"), greedy);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("max-instances-per-service"),
        "{}",
        refused.body
    );
    // Idle reusable instances hold pool slots; another service still gets them.
    let reuse = "[limits]\nmemory_mb = 16\nmax_concurrency = 6\ninstance_reuse = 100\n";
    assert_eq!(
        host.deploy_with_manifest("reused", &guest("faulty"), reuse)
            .status,
        201
    );
    let small = "[limits]\nmemory_mb = 16\nmax_concurrency = 3\ninstance_reuse = 100\n";
    assert_eq!(
        host.deploy_with_manifest("other", &guest("faulty"), small)
            .status,
        201
    );
    let gateway = host.gateway.clone();
    // `count` requests to `service` that run at the same time (the test waits until
    // all are in flight), each then answered.
    let at_once = |service: &str, count: usize| -> Vec<u16> {
        let requests: Vec<_> = (0..count)
            .map(|_| {
                let url = format!("{gateway}/{service}/sleep?ms=1500");
                std::thread::spawn(move || {
                    shoal_tests::agent()
                        .get(&url)
                        .call()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect();
        wait_for(
            &format!("{count} requests of {service} in flight"),
            Duration::from_secs(10),
            || host.running(service).load.in_flight as usize == count,
        );
        requests
            .into_iter()
            .map(|r| r.join().unwrap_or(0))
            .collect()
    };
    let instances = |service: &str| host.running(service).usage.instances_created;
    // Six instances of `reused` run at once, finish and stay idle, holding six of
    // the eight slots.
    assert_eq!(at_once("reused", 6), [200; 6]);
    assert_eq!(instances("reused"), 6, "six instances ran at once");
    // Three requests of `other` at once need three slots: two are free, the third
    // comes from the idle instances of `reused`, which give theirs up.
    assert_eq!(at_once("other", 3), [200; 3]);
    assert_eq!(instances("other"), 3);
    // They were evicted: the next request of `reused` needs a new instance.
    assert_eq!(host.get("/reused/ok").status, 200);
    assert_eq!(instances("reused"), 7, "the idle instances were evicted");
}
