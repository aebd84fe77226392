//! WASIp3 services (`wasi:http/handler@0.3`): detected at deploy, one instance serving
//! several requests at once within its limits, isolation kept (a trapped instance is
//! never reused, a runaway request ends at its deadline), and `shoal:platform` calls
//! from concurrent requests each seeing their own request.

use shoal_tests::{Host, guest, temp_root};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `instance=<id> most=<m> served=<s>` as a map.
fn fields(body: &str) -> HashMap<String, String> {
    body.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Host flags for a test whose requests must meet in one instance: instances are
/// kept per gateway serving thread.
const ONE_SERVING_THREAD: &[&str] = &["--gateway-threads", "1"];

/// GET `path` from `threads` threads, each starting `apart` after the one before;
/// the replies' (status, body).
fn at_once(host: &Host, path: &str, threads: usize, apart: Duration) -> Vec<(u16, String)> {
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..threads)
            .map(|n| {
                scope.spawn(move || {
                    std::thread::sleep(apart * n as u32);
                    let reply = host.get(path);
                    (reply.status, reply.body)
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|call| call.join().expect("caller thread"))
            .collect()
    })
}

/// Wait until the request `request_id` of `/p3/sleep` runs in its instance (it logs
/// that it sleeps): its instance is up and holds it.
fn wait_until_sleeping(host: &Host, request_id: &str) {
    shoal_tests::wait_for(
        &format!("request {request_id} to sleep in its instance"),
        Duration::from_secs(10),
        || host.log().contains(&format!("sleeping {request_id}")),
    );
}

#[test]
fn a_wasip3_hello_is_served() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let deployed = host.deploy("p3hello", &guest("p3_hello"));
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    for _ in 0..3 {
        let reply = host.get("/p3hello/");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "Hello, world!\n")
        );
        assert_eq!(reply.header("content-type"), Some("text/plain"));
    }
}

#[test]
fn one_wasip3_instance_serves_several_requests_at_once_up_to_its_limit() {
    let root = temp_root();
    // One serving thread, an instance up first and the requests 100 ms apart: each
    // finds the instance waiting (a burst that arrives before any instance has room
    // gets an instance per request).
    let host = Host::start(root.path(), ONE_SERVING_THREAD);
    let manifest = "[limits]\ninstance_concurrency = 3\n";
    let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    assert_eq!(host.get("/p3/whoami").status, 200);

    let replies = at_once(&host, "/p3/sleep?ms=1500", 6, Duration::from_millis(100));
    let mut instances: HashMap<String, usize> = HashMap::new();
    let mut most_seen = 0;
    for (status, body) in &replies {
        assert_eq!(*status, 200, "{body}");
        let fields = fields(body);
        let most: usize = fields["most"].parse().expect("most");
        assert!(
            most <= 3,
            "an instance held {most} requests at once: {body}"
        );
        most_seen = most_seen.max(most);
        *instances.entry(fields["instance"].clone()).or_default() += 1;
    }
    assert_eq!(most_seen, 3, "no instance served 3 at once: {replies:?}");
    assert!(
        instances.len() >= 2,
        "6 requests, 3 per instance, need two instances: {replies:?}"
    );
}

#[test]
fn each_gateway_serving_thread_has_its_own_wasip3_instances() {
    let manifest = "[limits]\ninstance_concurrency = 4\n";
    // A second connection opened while the first is still waiting goes to the other
    // serving thread, so to another instance; with one thread it joins the first
    // request's instance (which takes 4 at once).
    for (threads, instances) in [("2", 2), ("1", 1)] {
        let root = temp_root();
        let host = Host::start(root.path(), &["--gateway-threads", threads]);
        let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
        assert_eq!(deployed.status, 201, "{}", deployed.body);
        let (first, second) = std::thread::scope(|scope| {
            let first = scope
                .spawn(|| host.get_with_headers("/p3/sleep?ms=2000", &[("x-request-id", "first")]));
            wait_until_sleeping(&host, "first");
            let second = host.get("/p3/sleep?ms=10");
            (first.join().expect("first request"), second)
        });
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(second.status, 200, "{}", second.body);
        let seen: std::collections::HashSet<String> = [&first.body, &second.body]
            .into_iter()
            .map(|body| fields(body)["instance"].clone())
            .collect();
        assert_eq!(
            seen.len(),
            instances,
            "{threads} serving thread(s): {} / {}",
            first.body,
            second.body
        );
    }
}

#[test]
fn a_wasip3_instance_serves_its_requests_per_instance_then_a_new_one_takes_over() {
    let root = temp_root();
    // One serving thread: every request reaches the same lane of instances.
    let host = Host::start(root.path(), ONE_SERVING_THREAD);
    let manifest = "[limits]\ninstance_concurrency = 1\ninstance_reuse = 3\n";
    let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let seen: Vec<HashMap<String, String>> = (0..6)
        .map(|_| {
            let reply = host.get("/p3/whoami");
            assert_eq!(reply.status, 200, "{}", reply.body);
            fields(&reply.body)
        })
        .collect();
    let served: Vec<&str> = seen
        .iter()
        .map(|fields| fields["served"].as_str())
        .collect();
    assert_eq!(served, ["1", "2", "3", "1", "2", "3"]);
    assert_eq!(seen[0]["instance"], seen[2]["instance"]);
    assert_ne!(seen[2]["instance"], seen[3]["instance"]);
}

#[test]
fn a_trapping_wasip3_instance_fails_the_requests_it_holds_and_is_never_reused() {
    let root = temp_root();
    // One serving thread, so the trapping request shares the slow one's instance.
    let host = Host::start(root.path(), ONE_SERVING_THREAD);
    let manifest = "[limits]\ninstance_concurrency = 4\n";
    let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let before = fields(&host.get("/p3/whoami").body)["instance"].clone();

    let (slow, trapped) = std::thread::scope(|scope| {
        let slow =
            scope.spawn(|| host.get_with_headers("/p3/sleep?ms=3000", &[("x-request-id", "slow")]));
        wait_until_sleeping(&host, "slow");
        let trapped = host.get("/p3/trap");
        (slow.join().expect("slow request"), trapped)
    });
    assert_eq!(trapped.status, 500, "{}", trapped.body);
    assert!(trapped.body.contains("trapped"), "{}", trapped.body);
    // The request that shared the instance ends with it, and says so.
    assert_eq!(slow.status, 500, "{}", slow.body);
    assert!(slow.body.contains("trapped"), "{}", slow.body);

    let after = host.get("/p3/whoami");
    assert_eq!(after.status, 200, "{}", after.body);
    let after = fields(&after.body);
    assert_ne!(
        after["instance"], before,
        "the trapped instance served again"
    );
    assert_eq!(after["served"], "1");
    // The panic message reached the host log.
    shoal_tests::wait_for("the panic message", Duration::from_secs(10), || {
        host.log().contains("asked to trap")
    });
}

#[test]
fn a_runaway_wasip3_request_ends_at_its_deadline_and_the_service_keeps_serving() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[limits]\ntimeout_ms = 1000\n";
    let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let started = Instant::now();
    let spun = host.get("/p3/spin");
    assert_eq!(spun.status, 504, "{}", spun.body);
    assert!(spun.body.contains("time limit"), "{}", spun.body);
    assert!(started.elapsed() < Duration::from_secs(10));
    let next = host.get("/p3/whoami");
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(fields(&next.body)["served"], "1", "{}", next.body);
}

#[test]
fn platform_calls_of_concurrent_wasip3_requests_each_see_their_own_request() {
    let root = temp_root();
    // One serving thread, so the requests interleave inside one instance.
    let host = Host::start(root.path(), ONE_SERVING_THREAD);
    assert_eq!(host.deploy("callee", &guest("wasi_hello")).status, 201);
    let manifest = "[config]\ngreeting = \"hi\"\n[limits]\ninstance_concurrency = 8\n\
                    [events]\npublishes = [\"p3.seen\"]\n";
    let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    // Later requests wait less, so the guest's calls interleave across requests. Each
    // request comes in a trace of its own. One request first, so an instance is up.
    assert_eq!(host.get("/p3/whoami").status, 200);
    let requests: Vec<(String, String)> = (0..4)
        .map(|n| (format!("p3-request-{n}"), format!("{:032x}", 0xabc0 + n)))
        .collect();
    let replies: Vec<_> = std::thread::scope(|scope| {
        let calls: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(n, (id, trace))| {
                let host = &host;
                scope.spawn(move || {
                    // A little apart, so each finds the instance already waiting.
                    std::thread::sleep(Duration::from_millis(100 * n as u64));
                    let path = format!("/p3/platform?ms={}", 800 - 200 * n);
                    let traceparent = format!("00-{trace}-00000000000000a1-01");
                    host.get_with_headers(
                        &path,
                        &[("x-request-id", id), ("traceparent", &traceparent)],
                    )
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|call| call.join().expect("caller"))
            .collect()
    });
    let mut most_at_once = 0;
    for ((id, trace), reply) in requests.iter().zip(&replies) {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let (body, most) = reply.body.rsplit_once("most=").expect("most");
        most_at_once = most_at_once.max(most.trim().parse::<u32>().expect("a count"));
        let expected = format!(
            "{id} {id} hi\ntrace={trace}\ncall=200 Hello, world!\ndiscovered=1\n\
             identity=p3\ncounted=ok\npublished=ok\n"
        );
        assert_eq!(body, expected);
    }
    assert!(most_at_once > 1, "the requests did not run at once");
    shoal_tests::wait_for("the guests' log lines", Duration::from_secs(10), || {
        let log = host.log();
        requests
            .iter()
            .all(|(id, _)| log.contains(&format!("p3 request {id}")))
    });
    let log = host.log();
    for (id, trace) in &requests {
        let line = log
            .lines()
            .find(|line| line.contains(&format!("p3 request {id}")))
            .expect("logged");
        assert!(
            line.contains(&format!("request_id=\"{id}\"")) && line.contains(trace),
            "a line of {id} is tagged with another request: {line}"
        );
    }
}

#[test]
fn a_wasip3_body_written_after_the_handler_returns_reaches_the_client() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("p3", &guest("p3_service")).status, 201);
    let reply = host.get("/p3/stream?chunks=12&ms=20");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let expected: String = (0..12).map(|n| format!("chunk {n}\n")).collect();
    assert_eq!(reply.body, expected);
}

#[test]
fn instance_concurrency_is_refused_for_a_wasip2_component() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[limits]\ninstance_concurrency = 4\n";
    let refused = host.deploy_with_manifest("hello", &guest("wasi_hello"), manifest);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("limits.instance_concurrency") && refused.body.contains("WASIp3"),
        "{}",
        refused.body
    );
    // Nothing was deployed.
    assert_eq!(host.admin("GET", "/v1/services/hello").status, 404);
    let out_of_range = host.deploy_with_manifest(
        "p3",
        &guest("p3_service"),
        "[limits]\ninstance_concurrency = 0\n",
    );
    assert_eq!(out_of_range.status, 400, "{}", out_of_range.body);
}

/// The compiled code under `cache`: (path, modified time) of each `.cwasm`, sorted.
fn compiled_code(cache: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(cache).expect("cache dir").flatten() {
        let Ok(entries) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "cwasm") {
                let modified = entry.metadata().and_then(|m| m.modified()).expect("mtime");
                found.push((path, modified));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn wasip2_and_wasip3_services_run_side_by_side_each_on_its_engine_and_restart_from_cache() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("p2", &guest("wasi_hello")).status, 201);
    assert_eq!(host.deploy("p3", &guest("p3_hello")).status, 201);
    for (name, wasi) in [("p2", "p2"), ("p3", "p3")] {
        let reply = host.get(&format!("/{name}/"));
        assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        let view = host.admin("GET", &format!("/v1/services/{name}")).json();
        assert_eq!(view["wasi"], wasi, "{name}: {view}");
    }
    // Each engine caches its code in a directory of its own (named by what its code
    // is compatible with): two engines, two directories, one component each.
    let cache = root.path().join("data").join("cache");
    let before = compiled_code(&cache);
    let dirs: std::collections::HashSet<_> = before
        .iter()
        .filter_map(|(path, _)| path.parent())
        .collect();
    assert_eq!(
        (before.len(), dirs.len()),
        (2, 2),
        "one compiled component in each engine's cache: {before:?}"
    );

    host.crash();
    let host = Host::start(root.path(), &[]);
    for name in ["p2", "p3"] {
        let reply = host.get(&format!("/{name}/"));
        assert_eq!(
            reply.status, 200,
            "{name} after the restart: {}",
            reply.body
        );
    }
    assert_eq!(
        compiled_code(&cache),
        before,
        "both services restarted from their cached code: nothing removed or compiled again"
    );
}

#[test]
fn a_wasip3_service_is_charged_for_the_time_its_guest_runs_not_for_the_time_it_waits() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[limits]\ntimeout_ms = 800\n";
    let deployed = host.deploy_with_manifest("p3", &guest("p3_service"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let cpu = || host.running("p3").usage.cpu_seconds;

    // Three requests that wait 600 ms each, at once: almost no CPU.
    for (status, body) in at_once(&host, "/p3/sleep?ms=600", 3, Duration::ZERO) {
        assert_eq!(status, 200, "{body}");
    }
    let waited = cpu();
    assert!(waited < 0.2, "waiting was charged as CPU: {waited} s");

    // A guest that spins until its deadline ends it: its whole time is charged.
    assert_eq!(host.get("/p3/spin").status, 504);
    let spun = cpu() - waited;
    assert!(spun >= 0.5, "an 800 ms spin was charged {spun} s");
    let metrics = host.metrics_text();
    assert!(
        metrics.contains("shoal_guest_cpu_seconds_total{service=\"p3\"}"),
        "no CPU series for the WASIp3 service"
    );
}

#[test]
fn a_small_wasip3_response_leaves_whole_with_its_length_and_a_slow_stream_still_streams() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("p3", &guest("p3_service")).status, 201);
    // The guest writes its body from a task of its own, after the head: the host
    // waits a moment for it, so the whole answer goes out with its length.
    let (head, body) = host.raw_gateway_get("/p3/whoami");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "a small answer is sent whole, with its length: {head}{body}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(body.starts_with("instance="), "{body}");
    // Five chunks 300 ms apart: the head does not wait for the body's end.
    let started = Instant::now();
    let (head, mut stream) = host.raw_gateway("/p3/stream?chunks=5&ms=300");
    let mut first_chunk_at = None;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        use std::io::Read as _;
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                received.extend_from_slice(&buffer[..n]);
                if first_chunk_at.is_none() && received.windows(7).any(|w| w == b"chunk 0") {
                    first_chunk_at = Some(started.elapsed());
                }
            }
        }
    }
    let body = String::from_utf8_lossy(&received).into_owned();
    assert!(
        head.contains("transfer-encoding: chunked"),
        "a stream keeps streaming: {head}"
    );
    for n in 0..5 {
        assert!(
            body.contains(&format!("chunk {n}\n")),
            "nothing is lost: {body}"
        );
    }
    let at = first_chunk_at.expect("the first chunk arrived");
    assert!(
        at + Duration::from_millis(600) < started.elapsed(),
        "the first chunk ({at:?}) came well before the last ({:?})",
        started.elapsed()
    );
}
