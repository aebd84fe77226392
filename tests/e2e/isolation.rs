//! Isolation, limits, overload, scaling, rollbacks and canaries.

use shoal_tests::replica::{Mode, Replica};
use shoal_tests::{Host, Load, TOKEN, agent, guest, shoal_cli, temp_root, wait_for};
use std::time::{Duration, Instant};

#[test]
fn every_misbehaviour_ends_its_own_request_while_a_neighbour_keeps_answering() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let limits = "[limits]\nmemory_mb = 16\ntimeout_ms = 1000\n";
    assert_eq!(
        host.deploy_with_manifest("faulty", &guest("faulty"), limits)
            .status,
        201
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let neighbour = Load::start(
        format!("{}/hello/", host.gateway),
        2,
        Duration::ZERO,
        |status, body| (status == 200 && body == "Hello, world!\n").then_some("hello"),
    );

    for (path, status, reason) in [
        ("/faulty/loop", 504, "execution time limit"),
        ("/faulty/leak", 500, "memory limit of 16 MiB"),
        ("/faulty/trap", 500, "unreachable"),
        ("/faulty/panic", 500, "trapped"),
        ("/faulty/recurse", 500, "overflowed its stack"),
        ("/faulty/noresponse", 500, "without sending a response"),
        ("/faulty/malformed", 502, "answered with an error"),
    ] {
        let started = Instant::now();
        let reply = host.get(path);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert!(reply.body.contains(reason), "{path}: {}", reply.body);
        let request_id = reply.header("x-request-id").expect("request id").to_owned();
        assert!(reply.body.contains(&request_id), "{path}: {}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} took {:?}",
            started.elapsed()
        );
        // Logged with the service and the request id (the log is written off the
        // request path, so it may take a moment).
        wait_for(
            &format!("{path} to be logged"),
            Duration::from_secs(10),
            || {
                host.log().lines().any(|l| {
                    l.contains("request failed") && l.contains("faulty") && l.contains(&request_id)
                })
            },
        );
        // The faulty service itself still serves its next request.
        assert_eq!(host.get("/faulty/ok").status, 200, "after {path}");
    }
    // The neighbour is still answered after every fault, and never failed.
    neighbour.wait_for_more(
        "the neighbour answered after the faults",
        "hello",
        Duration::from_secs(10),
    );
    let (_, failures) = neighbour.finish();
    assert!(
        failures.is_empty(),
        "the neighbour failed: {:?}",
        &failures[..failures.len().min(5)]
    );

    // Each fault was counted by kind.
    let faults = host.running("faulty").faults;
    for kind in [
        "timeout",
        "memory",
        "trap",
        "stack",
        "no-response",
        "error-response",
    ] {
        assert!(
            faults.get(kind).copied().unwrap_or(0) >= 1,
            "{kind} not counted: {faults:?}"
        );
    }
    assert_eq!(faults.get("trap"), Some(&2), "trap and panic: {faults:?}");
}

#[test]
fn a_full_service_answers_503_at_once_while_others_answer_normally() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    // `slow` forwards each request to a replica that holds it until the test lets it
    // go: its requests run exactly as long as the test needs.
    let gate = Replica::start("gate");
    gate.set_mode(Mode::Hold);
    let manifest = format!(
        "[limits]\nmax_concurrency = 2\nqueue = 1\n[outbound]\nallowed_hosts = [\"{}\"]\n",
        gate.address
    );
    assert_eq!(
        host.deploy_with_manifest("slow", &guest("plain_http"), &manifest)
            .status,
        201
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let held = format!("/slow/proxy?url=http://{}/held", gate.address);

    let gateway = host.gateway.clone();
    let send = |count: usize| -> Vec<std::thread::JoinHandle<u16>> {
        (0..count)
            .map(|_| {
                let url = format!("{gateway}{held}");
                std::thread::spawn(move || {
                    agent()
                        .get(&url)
                        .call()
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect()
    };
    let busy = send(3);
    wait_for("2 running + 1 queued", Duration::from_secs(10), || {
        let load = host.admin("GET", "/v1/services/slow").json()["load"].clone();
        load["in_flight"] == 2 && load["queued"] == 1
    });
    let refused = host.get("/slow/ok");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.body.contains("overloaded"), "{}", refused.body);
    // Refused at once, not after waiting for a slot: the two requests holding the
    // slots are still held at the replica.
    assert_eq!(gate.hits(), 2);
    let load = host.admin("GET", "/v1/services/slow").json()["load"].clone();
    assert_eq!(load["in_flight"], 2, "{load}");
    // Another service is not affected by slow's full queue.
    for _ in 0..5 {
        assert_eq!(host.get("/hello/").status, 200);
    }
    // All three admitted requests (two running, one queued) complete once let go.
    gate.set_mode(Mode::Ok);
    for request in busy {
        assert_eq!(request.join().expect("join"), 200);
    }
    let faults = host.running("slow").faults;
    assert!(
        faults.get("overload").copied().unwrap_or(0) >= 1,
        "{faults:?}"
    );

    // Scaling up live admits more at once, without a redeploy: six held requests run
    // together.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(
        &["scale", "slow", "--max-concurrency", "8", "--queue", "0"],
        &env,
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("max concurrency 8, queue 0"), "{out}");
    gate.set_mode(Mode::Hold);
    let parallel = send(6);
    wait_for("six running at once", Duration::from_secs(10), || {
        host.running("slow").load.in_flight == 6
    });
    gate.set_mode(Mode::Ok);
    for request in parallel {
        assert_eq!(request.join().expect("join"), 200);
    }
    let limits = host.running("slow").limits;
    assert_eq!(limits.max_concurrency, 8);
    assert!(limits.scaled_by_operator);

    // Bad scale requests are refused with the reason.
    let bad = host.admin_json(
        "PUT",
        "/v1/services/slow/scale",
        r#"{"max_concurrency": 0}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad = host.admin_json("PUT", "/v1/services/slow/scale", r#"{"max": 3}"#);
    assert_eq!(bad.status, 400, "{}", bad.body);
    let missing = host.admin_json(
        "PUT",
        "/v1/services/nope/scale",
        r#"{"max_concurrency": 3}"#,
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
}

fn hello_manifest(greeting: &str, version: &str) -> String {
    format!("version = \"{version}\"\n[config]\ngreeting = \"{greeting}\"\n")
}

#[test]
fn ten_redeploys_and_rollbacks_under_load_fail_no_request() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    assert_eq!(
        host.deploy_with_manifest("svc", &hello, &hello_manifest("v0", "0"))
            .status,
        201
    );
    // Answers by greeting, which is the version: v0 to v10.
    const VERSIONS: [&str; 11] = [
        "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10",
    ];
    let load = Load::start(
        format!("{}/svc/", host.gateway),
        3,
        Duration::ZERO,
        |status, body| {
            let greeting = body.split(',').next()?;
            (status == 200)
                .then(|| VERSIONS.into_iter().find(|version| *version == greeting))
                .flatten()
        },
    );
    for (round, version) in VERSIONS.iter().enumerate().skip(1) {
        let reply =
            host.deploy_with_manifest("svc", &hello, &hello_manifest(version, &round.to_string()));
        assert_eq!(reply.status, 200, "{}", reply.body);
        // Each new version takes the load before the next swap.
        load.wait_for_more(
            &format!("{version} under load"),
            version,
            Duration::from_secs(10),
        );
    }
    assert_eq!(host.get("/svc/").body, "v10, world!\n");
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["rollback", "svc"], &env);
    assert!(ok, "{out}{err}");
    assert!(out.contains("version 9"), "{out}");
    assert_eq!(host.get("/svc/").body, "v9, world!\n");
    let (ok, out, err) = shoal_cli(&["rollback", "svc", "--to", "3"], &env);
    assert!(ok, "{out}{err}");
    assert_eq!(host.get("/svc/").body, "v3, world!\n");
    load.wait_for_more("v3 under load again", "v3", Duration::from_secs(10));
    let (_, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );

    // The history is bounded, newest first, and survives a restart.
    let view = host.admin("GET", "/v1/services/svc").json();
    let history: Vec<&str> = view["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(history.first().copied(), Some("9"), "{history:?}");
    assert!(history.len() <= 10);
    let (ok, _, err) = shoal_cli(&["rollback", "svc", "--to", "nope"], &env);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("nope"), "{err}");
    drop(host);
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.get("/svc/").body, "v3, world!\n");
    let view = host.admin("GET", "/v1/services/svc").json();
    assert_eq!(view["history"][0]["version"], "9");
}

#[test]
fn a_canary_takes_its_share_changes_live_and_promotes() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    assert_eq!(
        host.deploy_with_manifest("svc", &hello, &hello_manifest("stable", "1"))
            .status,
        201
    );
    let canary =
        host.deploy_with_manifest_query("svc", &hello, &hello_manifest("canary", "2"), "canary=10");
    assert_eq!(canary.status, 200, "{}", canary.body);
    assert_eq!(canary.json()["version"], "1");
    assert_eq!(canary.json()["canary"]["version"], "2");

    let count_canary = |n: usize| {
        (0..n)
            .filter(|_| host.get("/svc/").body.starts_with("canary"))
            .count()
    };
    let share = count_canary(1000);
    assert!((50..=150).contains(&share), "10% canary got {share}/1000");

    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["canary", "svc", "--weight", "50"], &env);
    assert!(ok, "{out}{err}");
    let share = count_canary(400);
    assert!((140..=260).contains(&share), "50% canary got {share}/400");

    // The canary survives a restart with its weight.
    drop(host);
    let host = Host::start(root.path(), &[]);
    let view = host.admin("GET", "/v1/services/svc").json();
    assert_eq!(view["canary"]["weight"], 50, "{view}");

    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["canary", "svc", "--promote"], &env);
    assert!(ok, "{out}{err}");
    for _ in 0..20 {
        assert_eq!(host.get("/svc/").body, "canary, world!\n");
    }
    let view = host.admin("GET", "/v1/services/svc").json();
    assert_eq!(view["version"], "2");
    assert!(view["canary"].is_null());
    assert_eq!(view["history"][0]["version"], "1");

    // Bad canary requests: weight out of range, no running version, no canary.
    let reply =
        host.deploy_with_manifest_query("svc", &hello, &hello_manifest("x", "3"), "canary=101");
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply =
        host.deploy_with_manifest_query("ghost", &hello, &hello_manifest("x", "1"), "canary=10");
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(host.admin("DELETE", "/v1/services/svc/canary").status, 409);
    assert_eq!(
        host.admin("POST", "/v1/services/svc/canary/promote").status,
        409
    );
}

#[test]
fn a_failing_canary_is_rolled_back_automatically() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("svc", &guest("faulty")).status, 201);
    // The canary is labelled `bad` (its /ok answers "ok bad"); it rolls back once more
    // than 20 % of at least 5 of its requests in the window fail.
    let canary = host.deploy_with_manifest_query(
        "svc",
        &guest("faulty"),
        "version = \"bad\"\n[config]\nrelease = \"bad\"\n",
        "canary=50&max_error_rate=0.2&min_requests=5&window_ms=10000",
    );
    assert_eq!(canary.status, 200, "{}", canary.body);
    // Every /trap fails; the canary's share of those failures trips its rule.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = host.get("/svc/trap");
        if host.admin("GET", "/v1/services/svc").json()["canary"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failing canary was never rolled back"
        );
    }
    wait_for("the rollback to be logged", Duration::from_secs(10), || {
        host.log().contains("canary rolled back")
    });
    for _ in 0..20 {
        assert_eq!(
            host.get("/svc/ok").body,
            "ok \n",
            "traffic is back on the stable version"
        );
    }
}

#[test]
fn a_pool_that_cannot_fit_is_a_clear_startup_error() {
    let root = temp_root();
    let (ok, out, err) = shoal_cli(
        &[
            "serve",
            "--data-dir",
            root.path().join("data").to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--max-instances",
            "4000000000",
            "--max-memory-mb",
            "4096",
        ],
        &[("SHOAL_ADMIN_TOKEN", TOKEN)],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("cannot create the wasmtime engine"), "{err}");
    assert!(err.contains("--max-instances"), "{err}");
}

#[test]
fn instance_reuse_is_opt_in_bounded_and_drops_faulted_instances() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let faulty = guest("faulty");
    assert_eq!(host.deploy("fresh", &faulty).status, 201);
    let reuse = "[limits]\ninstance_reuse = 3\nmax_concurrency = 1\n";
    assert_eq!(
        host.deploy_with_manifest("reused", &faulty, reuse).status,
        201
    );

    // Default: every request sees a fresh instance.
    for _ in 0..4 {
        assert_eq!(host.get("/fresh/count").body, "1\n");
    }
    // Opted in: one instance serves three requests, then a new one takes over.
    let counts: Vec<String> = (0..6).map(|_| host.get("/reused/count").body).collect();
    assert_eq!(counts, ["1\n", "2\n", "3\n", "1\n", "2\n", "3\n"]);
    // An instance that traps is never served again.
    assert_eq!(host.get("/reused/count").body, "1\n");
    assert_eq!(host.get("/reused/trap").status, 500);
    assert_eq!(host.get("/reused/count").body, "1\n");
    // So is one that ran past its deadline.
    let quick = "[limits]\ninstance_reuse = 100\nmax_concurrency = 1\ntimeout_ms = 300\n";
    assert_eq!(
        host.deploy_with_manifest("reused", &faulty, quick).status,
        200
    );
    assert_eq!(host.get("/reused/count").body, "1\n");
    assert_eq!(host.get("/reused/count").body, "2\n");
    assert_eq!(host.get("/reused/loop").status, 504);
    assert_eq!(host.get("/reused/count").body, "1\n");
    let bad = host.deploy_with_manifest("reused", &faulty, "[limits]\ninstance_reuse = 0\n");
    assert_eq!(bad.status, 400, "{}", bad.body);
}
