//! Registry, discovery and the resilient caller, through real components and real
//! HTTP servers standing in for external replicas.

use shoal_tests::replica::{Mode, Replica};
use shoal_tests::{Host, guest, temp_root, wait_for};
use std::time::{Duration, Instant};

/// What the `caller` guest reports about one call.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    kind: String,
    status: Option<u16>,
    elapsed: Duration,
    text: String,
}

fn call(host: &Host, query: &str) -> Outcome {
    call_with_headers(host, query, &[])
}

fn call_with_headers(host: &Host, query: &str, headers: &[(&str, &str)]) -> Outcome {
    let reply = host.get_with_headers(&format!("/a/call?{query}"), headers);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let first = reply.body.lines().next().unwrap_or_default().to_owned();
    let field = |name: &str| {
        first
            .split(' ')
            .find_map(|part| part.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    Outcome {
        ok: field("outcome").as_deref() == Some("ok"),
        kind: field("kind").unwrap_or_default(),
        status: field("status").and_then(|s| s.parse().ok()),
        elapsed: Duration::from_micros(
            field("elapsed_us")
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX),
        ),
        text: reply.body,
    }
}

fn external(host: &Host, name: &str, replicas: &[&Replica], health: bool) {
    let endpoints: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{}\"", r.address))
        .collect();
    let check = if health {
        r#", "health_check": {"path": "/health", "interval_ms": 100, "timeout_ms": 200, "unhealthy_threshold": 2}"#
    } else {
        ""
    };
    let reply = host.admin_json(
        "PUT",
        &format!("/v1/external/{name}"),
        &format!(r#"{{"endpoints": [{}]{check}}}"#, endpoints.join(",")),
    );
    assert!(reply.status == 201 || reply.status == 200, "{}", reply.body);
}

#[test]
fn same_host_calls_take_the_in_process_path_and_propagate_context() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    assert_eq!(host.deploy("b", &guest("hello")).status, 201);
    assert_eq!(host.deploy("p", &guest("plain_http")).status, 201);

    // Through shoal:platform/caller.
    let outcome = call_with_headers(
        &host,
        "service=b&path=/echo%3Fx%3D1",
        &[("x-request-id", "chain-42")],
    );
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(outcome.status, Some(200));
    assert!(outcome.text.contains("path: /echo\n"), "{}", outcome.text);
    assert!(outcome.text.contains("query: x=1\n"), "{}", outcome.text);
    assert!(
        outcome.text.contains("header x-request-id: chain-42"),
        "{}",
        outcome.text
    );
    assert!(
        outcome.text.contains("header x-shoal-caller: a"),
        "{}",
        outcome.text
    );
    assert!(
        outcome.text.contains("header x-shoal-deadline-ms: "),
        "{}",
        outcome.text
    );

    // Through a plain wasi:http request to http://b/ from a guest with no Shoal crate.
    let reply = host.get_with_headers("/p/proxy?url=http://b/echo", &[("x-request-id", "plain-7")]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("upstream status: 200"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("header x-request-id: plain-7"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("header x-shoal-caller: p"),
        "{}",
        reply.body
    );

    // Discovery sees the local instances; identity is the registry's.
    let discovered = host.get("/a/discover?service=b");
    assert!(discovered.body.contains("/b@"), "{}", discovered.body);
    assert!(discovered.body.contains(" local "), "{}", discovered.body);
    assert!(discovered.body.contains("serving"), "{}", discovered.body);
    let whoami = host.get("/a/whoami");
    assert!(whoami.body.starts_with("service=a "), "{}", whoami.body);

    // A guest fault in B is a 5xx answer to A, not a crash of A.
    assert_eq!(host.deploy("f", &guest("faulty")).status, 201);
    let outcome = call(&host, "service=f&path=/trap");
    assert_eq!(outcome.kind, "server-error", "{outcome:?}");
    assert!(outcome.text.contains("status 500"), "{}", outcome.text);
}

#[test]
fn external_replicas_balance_eject_break_and_recover() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let replicas: Vec<Replica> = (0..3).map(|i| Replica::start(&format!("r{i}"))).collect();
    external(&host, "legacy", &replicas.iter().collect::<Vec<_>>(), true);
    let manifest = "[outbound.targets.legacy]\nattempt_timeout_ms = 500\ndeadline_ms = 2000\n\
                    load_balancing = \"round-robin\"\n\
                    breaker = { consecutive_failures = 3, cool_down_ms = 3000, half_open_probes = 1 }\n";
    assert_eq!(
        host.deploy_with_manifest("a", &guest("caller"), manifest)
            .status,
        201
    );
    wait_for("three serving replicas", Duration::from_secs(10), || {
        host.admin("GET", "/v1/discovery/legacy")
            .body
            .matches("\"serving\"")
            .count()
            == 3
    });

    // Load spreads evenly over three healthy replicas: in turn, so exactly evenly.
    for _ in 0..300 {
        let outcome = call(&host, "service=legacy&path=/work");
        assert!(outcome.ok && outcome.status == Some(200), "{outcome:?}");
        assert!(
            outcome.text.contains("path /work request-id "),
            "{}",
            outcome.text
        );
    }
    let hits: Vec<usize> = replicas.iter().map(Replica::hits).collect();
    assert_eq!(hits, [100, 100, 100], "uneven spread");

    // One replica dies: idempotent calls never fail, and it is ejected.
    replicas[0].kill();
    for _ in 0..100 {
        let outcome = call(&host, "service=legacy&path=/after-kill");
        assert!(outcome.ok && outcome.status == Some(200), "{outcome:?}");
    }
    wait_for(
        "the dead replica to be marked not serving",
        Duration::from_secs(10),
        || {
            host.admin("GET", "/v1/discovery/legacy")
                .body
                .contains("not-serving")
        },
    );

    // Every replica fails: the breaker opens and later calls fail fast without
    // reaching the replicas.
    replicas[1].set_mode(Mode::Fail);
    replicas[2].set_mode(Mode::Fail);
    let mut opened = false;
    for _ in 0..20 {
        let outcome = call(&host, "service=legacy&path=/x");
        assert!(!outcome.ok, "{outcome:?}");
        if outcome.kind == "circuit-open" {
            opened = true;
            break;
        }
        assert_eq!(outcome.kind, "server-error", "{outcome:?}");
    }
    assert!(opened, "the breaker never opened");
    // Failing fast means making no attempt: the replicas now hang, so a call let
    // through would wait for its attempt timeout, and it would be counted on arrival.
    replicas[1].set_mode(Mode::Hang);
    replicas[2].set_mode(Mode::Hang);
    let before: usize = replicas.iter().map(Replica::hits).sum();
    for _ in 0..20 {
        let outcome = call(&host, "service=legacy&path=/x");
        assert_eq!(outcome.kind, "circuit-open", "{outcome:?}");
    }
    assert_eq!(
        replicas.iter().map(Replica::hits).sum::<usize>(),
        before,
        "open breaker let calls through"
    );

    // Recovery: after the cool-down a probe goes through half-open and closes it.
    replicas[1].set_mode(Mode::Ok);
    replicas[2].set_mode(Mode::Ok);
    wait_for(
        "the breaker to close again",
        Duration::from_secs(10),
        || call(&host, "service=legacy&path=/again").ok,
    );
    for _ in 0..20 {
        let outcome = call(&host, "service=legacy&path=/again");
        assert!(outcome.ok, "{outcome:?}");
    }
}

#[test]
fn hanging_target_times_out_within_the_deadline() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let slow = Replica::start("slow");
    slow.set_mode(Mode::Hang);
    external(&host, "slow", &[&slow], false);
    let manifest = "[outbound.targets.slow]\nattempt_timeout_ms = 200\ndeadline_ms = 600\n";
    assert_eq!(
        host.deploy_with_manifest("a", &guest("caller"), manifest)
            .status,
        201
    );
    let started = Instant::now();
    let outcome = call(&host, "service=slow&path=/never");
    assert_eq!(outcome.kind, "timeout", "{outcome:?}");
    assert!(outcome.elapsed >= Duration::from_millis(200), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A per-call deadline shorter than the policy's (600 ms) wins: the call ends
    // before the policy's deadline, and sooner than the call that ran to it.
    let policy_bound = outcome;
    let outcome = call(&host, "service=slow&path=/never&deadline_ms=100");
    assert_eq!(outcome.kind, "timeout", "{outcome:?}");
    assert!(
        outcome.elapsed < policy_bound.elapsed,
        "{outcome:?} vs {policy_bound:?}"
    );
}

#[test]
fn plain_wasi_http_is_denied_outside_services_and_allowed_hosts() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let outside = Replica::start("outside");
    assert_eq!(host.deploy("p", &guest("plain_http")).status, 201);
    let denied = host.get(&format!("/p/proxy?url=http://{}/x", outside.address));
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);
    assert_eq!(outside.hits(), 0);
    let denied = host.get("/p/proxy?url=http://example.invalid/");
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);

    let manifest = format!("[outbound]\nallowed_hosts = [\"{}\"]\n", outside.address);
    assert_eq!(
        host.deploy_with_manifest("p", &guest("plain_http"), &manifest)
            .status,
        200
    );
    let allowed = host.get(&format!("/p/proxy?url=http://{}/x", outside.address));
    assert!(
        allowed.body.contains("upstream status: 200"),
        "{}",
        allowed.body
    );
    assert!(
        allowed.body.contains("replica outside path /x"),
        "{}",
        allowed.body
    );
    assert_eq!(outside.hits(), 1);
}

#[test]
fn bad_calls_get_typed_errors_quickly() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    assert_eq!(host.deploy("b", &guest("hello")).status, 201);
    for (query, kind, needle) in [
        ("service=nobody&path=/", "no-instances", ""),
        (
            "service=Bad!&path=/",
            "invalid-request",
            "invalid service name",
        ),
        ("service=b&path=no-slash", "invalid-request", "not a path"),
        (
            "service=b&path=/&method=BAD%20METHOD",
            "invalid-request",
            "not an HTTP method",
        ),
        (
            "service=b&path=/&header=bad%20name:v",
            "invalid-request",
            "header name",
        ),
        (
            "service=b&path=/&attempt_timeout_ms=4000000000",
            "invalid-request",
            "exceeds the maximum",
        ),
        (
            "service=b&path=/&deadline_ms=0",
            "invalid-request",
            "must be positive",
        ),
    ] {
        let outcome = call(&host, query);
        assert_eq!(outcome.kind, kind, "{query}: {outcome:?}");
        assert!(outcome.text.contains(needle), "{query}: {}", outcome.text);
        assert!(
            outcome.elapsed < Duration::from_secs(1),
            "{query}: {outcome:?}"
        );
    }
    // Refused connections (a registered endpoint nobody listens on).
    let gone = Replica::start("gone");
    external(&host, "gone", &[&gone], false);
    gone.kill();
    let outcome = call(&host, "service=gone&path=/&deadline_ms=1000");
    assert_eq!(outcome.kind, "refused", "{outcome:?}");
}

#[test]
fn a_hanging_health_check_marks_the_endpoint_down_without_blocking() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let stuck = Replica::start("stuck");
    let fine = Replica::start("fine");
    stuck.set_mode(Mode::HangAll);
    external(&host, "mixed", &[&stuck, &fine], true);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    wait_for(
        "the stuck endpoint to be marked down",
        Duration::from_secs(10),
        || {
            let body = host.admin("GET", "/v1/discovery/mixed").body;
            body.matches("not-serving").count() == 1
        },
    );
    // Only the healthy endpoint takes traffic now; the admin API never stalled.
    for _ in 0..10 {
        let outcome = call(&host, "service=mixed&path=/ok");
        assert!(outcome.text.contains("replica fine"), "{outcome:?}");
    }
    let discovered = host.get("/a/discover?service=mixed");
    assert_eq!(discovered.body.lines().count(), 1, "{}", discovered.body);
}

#[test]
fn health_reports_watch_and_external_registration_lifecycle() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    assert_eq!(host.deploy("b", &guest("caller")).status, 201);

    // A service reports itself not serving: callers stop reaching it.
    assert_eq!(host.get("/b/health?status=not-serving").status, 200);
    let outcome = call(&host, "service=b&path=/whoami");
    assert_eq!(outcome.kind, "no-instances", "{outcome:?}");
    assert_eq!(host.get("/b/health?status=serving").status, 200);
    assert!(call(&host, "service=b&path=/whoami").ok);

    // A watcher sees a registration that happens while it waits.
    let replica = Replica::start("w");
    let gateway = host.gateway.clone();
    let watcher = std::thread::spawn(move || {
        shoal_tests::agent()
            .get(format!("{gateway}/a/watch?service=late&wait_ms=5000"))
            .call()
            .expect("watch")
            .body_mut()
            .read_to_string()
            .expect("body")
    });
    wait_for(
        "the watcher to be in place",
        Duration::from_secs(10),
        || host.log().contains("watching") && host.log().contains("service=\"late\""),
    );
    external(&host, "late", &[&replica], false);
    let watched = watcher.join().expect("watcher");
    assert!(watched.starts_with("initial:\nchanged:\n"), "{watched}");
    assert!(
        watched.contains(&format!("external/late/{}", replica.address)),
        "{watched}"
    );

    // Bad registrations are refused with the reason; names must not clash.
    let bad = host.admin_json("PUT", "/v1/external/late", r#"{"endpoints": ["nope"]}"#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("explicit port"), "{}", bad.body);
    let clash = host.admin_json(
        "PUT",
        "/v1/external/b",
        &format!(r#"{{"endpoints": ["{}"]}}"#, replica.address),
    );
    assert_eq!(clash.status, 409, "{}", clash.body);
    assert_eq!(host.admin("GET", "/v1/external/nope").status, 404);

    // Registrations survive a crash; removal sticks.
    host.crash();
    let host = Host::start(root.path(), &[]);
    assert!(call(&host, "service=late&path=/x").ok);
    assert_eq!(host.admin("DELETE", "/v1/external/late").status, 204);
    assert_eq!(call(&host, "service=late&path=/x").kind, "no-instances");
    assert_eq!(host.admin("DELETE", "/v1/external/late").status, 404);
}

#[test]
fn exported_health_checks_drive_discovery_and_a_hanging_check_is_contained() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest =
        "[config]\ndepends_on = \"dep\"\n[health]\ninterval_ms = 100\ntimeout_ms = 500\n";
    assert_eq!(
        host.deploy_with_manifest("a", &guest("caller"), manifest)
            .status,
        201
    );
    let stuck = "[config]\nhealth = \"hang\"\n[health]\ninterval_ms = 100\ntimeout_ms = 200\n";
    assert_eq!(
        host.deploy_with_manifest("stuck", &guest("faulty"), stuck)
            .status,
        201
    );
    assert_eq!(host.deploy("b", &guest("hello")).status, 201);

    // `a` is not ready while its dependency is missing; `stuck`'s check never returns.
    wait_for(
        "a and stuck to be marked not serving",
        Duration::from_secs(10),
        || {
            host.admin("GET", "/v1/discovery/a")
                .body
                .contains("not-serving")
                && host
                    .admin("GET", "/v1/discovery/stuck")
                    .body
                    .contains("not-serving")
        },
    );
    assert!(
        host.admin("GET", "/v1/discovery/b")
            .body
            .contains("\"serving\"")
    );
    // The hanging check harms nobody: requests are still served, including stuck's own.
    assert_eq!(host.get("/b/").status, 200);
    assert_eq!(host.get("/stuck/ok").status, 200);

    // Once the dependency exists, `a` becomes ready.
    let dep = Replica::start("dep");
    external(&host, "dep", &[&dep], false);
    wait_for("a to be serving", Duration::from_secs(10), || {
        host.admin("GET", "/v1/discovery/a")
            .body
            .contains("\"serving\"")
    });
    // And callers reach it again.
    assert_eq!(host.deploy("c", &guest("caller")).status, 201);
    let reply = host.get("/c/call?service=a&path=/whoami");
    assert!(reply.body.contains("outcome=ok"), "{}", reply.body);
}

#[test]
fn flapping_replicas_are_absorbed_by_retries_for_sdk_and_plain_wasi_http_callers() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let flappy = Replica::start("flappy");
    flappy.set_mode(Mode::Flap);
    external(&host, "flaky", &[&flappy], false);
    // Breaker thresholds above what flapping produces, and a retry budget that allows
    // one retry per call (the default 20 % would rightly stop retrying a target that
    // fails half the time): retries alone must absorb the flapping.
    let manifest = "[outbound.targets.flaky]\nbreaker = { consecutive_failures = 10, minimum_calls = 1000 }\n\
                    retry_budget = { ratio = 1.0 }\n";
    assert_eq!(
        host.deploy_with_manifest("a", &guest("caller"), manifest)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("p", &guest("plain_http"), manifest)
            .status,
        201
    );
    for _ in 0..20 {
        let outcome = call(&host, "service=flaky&path=/get");
        assert!(outcome.ok && outcome.status == Some(200), "{outcome:?}");
        let plain = host.get("/p/proxy?url=http://flaky/plain");
        assert!(
            plain.body.contains("upstream status: 200"),
            "{}",
            plain.body
        );
    }
    // A POST is not idempotent: a 503 is returned, not retried.
    let mut saw_failure = false;
    for _ in 0..4 {
        let outcome = call(&host, "service=flaky&path=/post&method=POST");
        saw_failure |= outcome.kind == "server-error";
    }
    assert!(saw_failure, "a non-idempotent call was retried");
    // Unless the caller declares it idempotent.
    for _ in 0..10 {
        let outcome = call(
            &host,
            "service=flaky&path=/post&method=POST&idempotent=true",
        );
        assert!(outcome.ok, "{outcome:?}");
    }

    // With the default budget (10 + 20 % of calls per 10 s), retries stop before they
    // can multiply the load on a target that fails half the time.
    assert_eq!(host.deploy("q", &guest("caller")).status, 201);
    let before = flappy.hits();
    let calls = 60;
    let mut failed = 0;
    for _ in 0..calls {
        let reply = host.get("/q/call?service=flaky&path=/budget");
        failed += usize::from(reply.body.contains("outcome=error"));
    }
    let sent = flappy.hits() - before;
    assert!(failed > 0, "the retry budget never ran out");
    assert!(
        sent <= calls + 10 + calls / 5 + 1,
        "{sent} requests for {calls} calls"
    );
}
