//! Isolation, limits, overload, scaling, rollbacks and canaries.

use shoal_tests::{Host, TOKEN, agent, guest, shoal_cli, temp_root, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Requests `path` in a loop on `threads` threads until stopped; counts outcomes.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<parking_free::Failures>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

mod parking_free {
    /// Failure descriptions, poison-free.
    #[derive(Default)]
    pub struct Failures(std::sync::Mutex<Vec<String>>);

    impl Failures {
        pub fn push(&self, failure: String) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(failure);
        }

        pub fn take(&self) -> Vec<String> {
            std::mem::take(
                &mut *self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
    }
}

impl Load {
    fn start(url: String, threads: usize, accept: fn(&str) -> bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(parking_free::Failures::default());
        let workers = (0..threads)
            .map(|_| {
                let (stop, ok, failed, url) =
                    (stop.clone(), ok.clone(), failed.clone(), url.clone());
                std::thread::spawn(move || {
                    let agent = agent();
                    while !stop.load(Ordering::Relaxed) {
                        match agent.get(&url).call() {
                            Ok(mut response) => {
                                let status = response.status().as_u16();
                                let body = response.body_mut().read_to_string().unwrap_or_default();
                                if status == 200 && accept(&body) {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    failed.push(format!("{status} {body:?}"));
                                }
                            }
                            Err(error) => failed.push(format!("error {error}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            workers,
        }
    }

    /// Stop and return (successes, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.join();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.take())
    }
}

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
    let neighbour = Load::start(format!("{}/hello/", host.gateway), 2, |body| {
        body == "Hello, world!\n"
    });

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
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failures) = neighbour.finish();
    assert!(
        failures.is_empty(),
        "the neighbour failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20, "the neighbour barely ran: {ok}");

    // Each fault was counted by kind.
    let view = host.admin("GET", "/v1/services/faulty").json();
    for kind in [
        "timeout",
        "memory",
        "trap",
        "stack",
        "no-response",
        "error-response",
    ] {
        assert!(
            view["faults"][kind].as_u64().unwrap_or(0) >= 1,
            "{kind} not counted: {}",
            view["faults"]
        );
    }
    assert_eq!(
        view["faults"]["trap"], 2,
        "trap and panic: {}",
        view["faults"]
    );
}

#[test]
fn a_full_service_answers_503_at_once_while_others_answer_normally() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[limits]\nmax_concurrency = 2\nqueue = 1\n";
    assert_eq!(
        host.deploy_with_manifest("slow", &guest("faulty"), manifest)
            .status,
        201
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);

    let gateway = host.gateway.clone();
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{gateway}/slow/sleep?ms=1500");
            std::thread::spawn(move || {
                agent()
                    .get(&url)
                    .call()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let load = host.admin("GET", "/v1/services/slow").json()["load"].clone();
        if load["in_flight"] == 2 && load["queued"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never saw 2 running + 1 queued: {load}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = host.get("/slow/ok");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.body.contains("overloaded"), "{}", refused.body);
    // Refused at once, not after waiting for a slot: the requests holding the slots
    // are still running.
    let load = host.admin("GET", "/v1/services/slow").json()["load"].clone();
    assert_eq!(load["in_flight"], 2, "{load}");
    // Another service is not affected by slow's full queue.
    for _ in 0..5 {
        assert_eq!(host.get("/hello/").status, 200);
    }
    // All three admitted requests (two running, one queued) complete.
    for request in busy {
        assert_eq!(request.join().expect("join"), 200);
    }
    let view = host.admin("GET", "/v1/services/slow").json();
    assert!(
        view["faults"]["overload"].as_u64().unwrap_or(0) >= 1,
        "{}",
        view["faults"]
    );

    // Scaling up live admits more at once, without a redeploy.
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
    let parallel: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/slow/sleep?ms=300", host.gateway);
            std::thread::spawn(move || {
                agent()
                    .get(&url)
                    .call()
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    for request in parallel {
        assert_eq!(request.join().expect("join"), 200);
    }
    let view = host.admin("GET", "/v1/services/slow").json();
    assert_eq!(view["limits"]["max_concurrency"], 8);
    assert_eq!(view["limits"]["scaled_by_operator"], true);

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
    let load = Load::start(format!("{}/svc/", host.gateway), 3, |body| {
        body.starts_with('v')
    });
    for round in 1..=10 {
        let reply = host.deploy_with_manifest(
            "svc",
            &hello,
            &hello_manifest(&format!("v{round}"), &round.to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        std::thread::sleep(Duration::from_millis(50));
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
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "too few requests: {ok}");

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
