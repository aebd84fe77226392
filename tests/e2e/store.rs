//! Each service's own store: semantics, isolation, no lost updates under concurrency,
//! durability across `kill -9`, quota and bad input.

use shoal_tests::{Host, Store, agent, guest, temp_root, wait_for};
use std::time::Duration;

fn put(host: &Host, path: &str, body: &[u8]) -> (u16, String) {
    host.send_bytes("PUT", path, body)
}

fn post(host: &Host, path: &str, body: &[u8]) -> (u16, String) {
    host.send_bytes("POST", path, body)
}

#[test]
fn single_key_calls_and_compare_and_swap() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        single_key_calls_and_compare_and_swap_on(&store);
    }
}

fn single_key_calls_and_compare_and_swap_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    // The host says which backend it runs on.
    let (store_engine, bus_engine) = store.engines();
    let shown = host.admin("GET", "/v1/host").json();
    assert_eq!(shown["store"], store_engine, "{shown}");
    assert_eq!(shown["bus"], bus_engine, "{shown}");
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(host.get("/kv/get?key=a").status, 404);
    assert_eq!(put(&host, "/kv/set?key=a", b"one").0, 200);
    assert_eq!(host.get("/kv/get?key=a").body, "one");
    assert_eq!(post(&host, "/kv/cas?key=a&expected=nope", b"two").0, 409);
    assert_eq!(post(&host, "/kv/cas?key=a&expected=one", b"two").0, 200);
    assert_eq!(host.get("/kv/get?key=a").body, "two");
    assert_eq!(
        post(&host, "/kv/cas?key=new", b"first").0,
        200,
        "absent as expected"
    );
    assert_eq!(post(&host, "/kv/cas?key=new", b"again").0, 409);
    assert_eq!(put(&host, "/kv/set?key=a%2F1", b"x").0, 200);
    assert_eq!(put(&host, "/kv/set?key=a%2F2", b"y").0, 200);
    assert_eq!(host.get("/kv/list?prefix=a%2F").body, "a/1\na/2\n");
    assert_eq!(
        agent()
            .delete(format!("{}/kv/delete?key=a%2F1", host.gateway))
            .call()
            .expect("delete")
            .status(),
        200
    );
    assert_eq!(host.get("/kv/list?prefix=a%2F").body, "a/2\n");
}

#[test]
fn concurrent_read_modify_writes_lose_no_update() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        concurrent_read_modify_writes_lose_no_update_on(&store);
    }
}

fn concurrent_read_modify_writes_lose_no_update_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    let manifest = "[limits]\nmax_concurrency = 16\n";
    assert_eq!(
        host.deploy_with_manifest("kv", &guest("counter"), manifest)
            .status,
        201
    );
    let gateway = host.gateway.clone();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{gateway}/kv/increment?key=n");
            std::thread::spawn(move || {
                let agent = agent();
                (0..25)
                    .map(|_| {
                        let mut response = agent.post(&url).send(&b""[..]).expect("increment");
                        assert_eq!(response.status(), 200);
                        response
                            .body_mut()
                            .read_to_string()
                            .expect("body")
                            .trim()
                            .parse::<u64>()
                            .expect("count")
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seen: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<u64>>(),
        "every increment saw its own value"
    );
    assert_eq!(host.get("/kv/get?key=n").body, "200");
}

#[test]
fn services_cannot_see_each_others_data_however_they_name_keys() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        services_cannot_see_each_others_data_however_they_name_keys_on(&store);
    }
}

fn services_cannot_see_each_others_data_however_they_name_keys_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(host.deploy("a", &guest("counter")).status, 201);
    assert_eq!(host.deploy("b", &guest("counter")).status, 201);
    assert_eq!(put(&host, "/a/set?key=secret", b"a's").0, 200);
    assert_eq!(host.get("/b/get?key=secret").status, 404);
    for guess in [
        "..%2Fa%2Fsecret",
        "a%2Fsecret",
        "%2F..%2F..%2Fstores%2Fa.sqlite3",
        "a.sqlite3",
    ] {
        assert_eq!(
            host.get(&format!("/b/get?key={guess}")).status,
            404,
            "{guess}"
        );
    }
    assert_eq!(host.get("/b/list?prefix=").body, "", "b's store is empty");
    assert_eq!(host.get("/a/get?key=secret").body, "a's");
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        acknowledged_writes_survive_kill_9_on(&store);
    }
}

fn acknowledged_writes_survive_kill_9_on(store: &Store) {
    let root = temp_root();
    let mut host = Host::start(root.path(), &store.args());
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    for i in 0..20 {
        assert_eq!(
            post(&host, "/kv/increment?key=n", b"").1.trim(),
            (i + 1).to_string()
        );
    }
    host.crash();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(host.get("/kv/get?key=n").body, "20");
}

#[test]
fn quota_and_limits_are_typed_errors_that_change_nothing() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        quota_and_limits_are_typed_errors_that_change_nothing_on(&store);
    }
}

fn quota_and_limits_are_typed_errors_that_change_nothing_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    let manifest = "[limits]\nstore_mb = 1\n";
    assert_eq!(
        host.deploy_with_manifest("kv", &guest("counter"), manifest)
            .status,
        201
    );
    assert_eq!(post(&host, "/kv/fill?key=a&bytes=600000", b"").0, 200);
    let (status, body) = post(&host, "/kv/fill?key=b&bytes=600000", b"");
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("QuotaExceeded"), "{body}");
    assert_eq!(host.get("/kv/get?key=b").status, 404, "nothing was written");
    // Replacing a value with a smaller one still fits.
    assert_eq!(post(&host, "/kv/fill?key=a&bytes=10", b"").0, 200);
    // A value over 1 MiB and a key over 512 bytes are refused with the reason.
    let (status, body) = post(&host, "/kv/fill?key=c&bytes=1048577", b"");
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("TooLarge"), "{body}");
    let long = "k".repeat(513);
    let (status, body) = put(&host, &format!("/kv/set?key={long}"), b"x");
    assert_eq!(status, 413, "{body}");
    // A bad manifest quota is refused at deploy.
    let bad = host.deploy_with_manifest("kv2", &guest("counter"), "[limits]\nstore_mb = 0\n");
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[test]
fn two_hosts_committing_to_one_service_on_postgresql_lose_no_update() {
    let store = Store::postgres();
    let (first_root, second_root) = (temp_root(), temp_root());
    let first = Host::start(first_root.path(), &store.args());
    let second = Host::start(second_root.path(), &store.args());
    let manifest = "[limits]\nmax_concurrency = 16\n";
    for host in [&first, &second] {
        assert_eq!(
            host.deploy_with_manifest("kv", &guest("counter"), manifest)
                .status,
            201
        );
    }
    // 8 clients on each host's gateway, 25 increments each, at once.
    let workers: Vec<_> = [&first, &second]
        .iter()
        .flat_map(|host| {
            let gateway = host.gateway.clone();
            (0..8).map(move |_| {
                let url = format!("{gateway}/kv/increment?key=n");
                std::thread::spawn(move || {
                    let agent = agent();
                    // A commit that lost to others 64 times in a row answers 409
                    // (nothing written), and the client sends it again: what is
                    // tested is that no acknowledged increment is lost.
                    let mut done = 0;
                    while done < 25 {
                        let status = agent.post(&url).send_empty().map(|r| r.status().as_u16());
                        match status.ok() {
                            Some(200) => done += 1,
                            Some(409) => {}
                            other => panic!("an increment answered {other:?}"),
                        }
                    }
                })
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    assert_eq!(first.get("/kv/get?key=n").body, "400");
    assert_eq!(second.get("/kv/get?key=n").body, "400");
}

#[test]
fn a_stopped_database_fails_store_calls_fast_and_typed_and_the_host_recovers_by_itself() {
    let mut server = shoal_tests::PostgresServer::start();
    let store = Store::Postgres(server.url());
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(post(&host, "/kv/increment?key=n", b"").1.trim(), "1");

    server.stop();
    let started = std::time::Instant::now();
    let (status, body) = post(&host, "/kv/increment?key=n", b"");
    assert!(status >= 400, "{status} {body}");
    assert!(body.contains("Unavailable"), "a typed error: {body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "it failed within the store's bounds, not a request's whole deadline"
    );
    // The host and a service that does not use the store go on.
    assert_eq!(host.get("/hello/").status, 200);
    assert_eq!(
        agent()
            .get(format!("{}/healthz", host.admin))
            .call()
            .map(|r| r.status().as_u16())
            .ok(),
        Some(200)
    );

    // Back, without a restart of the host; the failed increment wrote nothing.
    server.resume();
    shoal_tests::wait_for("the store back", std::time::Duration::from_secs(30), || {
        post(&host, "/kv/increment?key=n", b"").0 == 200
    });
    assert_eq!(host.get("/kv/get?key=n").body, "2");
}

#[test]
fn data_moves_between_backends_and_rm_purge_deletes_it() {
    let cli = |host: &Host, args: &[&str], input: Option<&[u8]>| {
        let env = [
            ("SHOAL_ADMIN_URL", host.admin.as_str()),
            ("SHOAL_ADMIN_TOKEN", shoal_tests::TOKEN),
        ];
        match input {
            Some(input) => shoal_tests::shoal_cli_with_input(args, &env, input),
            None => shoal_tests::shoal_cli(args, &env),
        }
    };
    // Data written on the embedded store...
    let (first_root, second_root, third_root) = (temp_root(), temp_root(), temp_root());
    let embedded = Host::start(first_root.path(), &[]);
    assert_eq!(embedded.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(put(&embedded, "/kv/set?key=a", b"one").0, 200);
    assert_eq!(put(&embedded, "/kv/set?key=bin", &[0, 159, 255, 10]).0, 200);
    for _ in 0..3 {
        assert_eq!(post(&embedded, "/kv/increment?key=n", b"").0, 200);
    }
    let (ok, exported, err) = cli(&embedded, &["data", "export", "kv"], None);
    assert!(ok, "{err}");
    let snapshot: serde_json::Value = serde_json::from_str(&exported).expect("a snapshot");
    assert_eq!(snapshot["engine"], "sqlite");
    assert_eq!(
        snapshot["entries"].as_array().map(Vec::len),
        Some(3),
        "{snapshot}"
    );

    // ...moves to PostgreSQL and answers the same, and its commits go on from there.
    let postgres = Host::start(second_root.path(), &Store::postgres().args());
    assert_eq!(postgres.deploy("kv", &guest("counter")).status, 201);
    let (ok, out, err) = cli(
        &postgres,
        &["data", "import", "kv"],
        Some(exported.as_bytes()),
    );
    assert!(ok, "{err}");
    assert!(out.contains("imported 3 keys"), "{out}");
    assert_eq!(postgres.get("/kv/get?key=a").body, "one");
    assert_eq!(post(&postgres, "/kv/increment?key=n", b"").1.trim(), "4");
    // Only into an empty store.
    let (ok, _, err) = cli(
        &postgres,
        &["data", "import", "kv"],
        Some(exported.as_bytes()),
    );
    assert!(!ok && err.contains("already holds data"), "{err}");

    // And back to SQLite, into a store of a service not deployed yet.
    let (ok, from_postgres, err) = cli(&postgres, &["data", "export", "kv"], None);
    assert!(ok, "{err}");
    let back = Host::start(third_root.path(), &[]);
    let (ok, _, err) = cli(
        &back,
        &["data", "import", "kv"],
        Some(from_postgres.as_bytes()),
    );
    assert!(ok, "{err}");
    assert_eq!(back.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(back.get("/kv/get?key=n").body, "4");
    let (ok, round_trip, err) = cli(&back, &["data", "export", "kv"], None);
    assert!(ok, "{err}");
    let value_of = |json: &str, key: &str| -> serde_json::Value {
        let snapshot: serde_json::Value = serde_json::from_str(json).expect("a snapshot");
        snapshot["entries"]
            .as_array()
            .and_then(|entries| entries.iter().find(|entry| entry["key"] == key))
            .map(|entry| entry["value"].clone())
            .unwrap_or_default()
    };
    assert!(value_of(&exported, "bin").is_string(), "{exported}");
    assert_eq!(
        value_of(&round_trip, "bin"),
        value_of(&exported, "bin"),
        "bytes kept exactly through both backends"
    );

    // Deleting the data is refused while the service runs; `rm --purge` does both.
    let refused = back.admin("DELETE", "/v1/services/kv/data");
    assert_eq!(refused.status, 409, "{}", refused.body);
    let (ok, _, err) = cli(&back, &["rm", "kv", "--purge"], None);
    assert!(ok, "{err}");
    assert_eq!(back.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(back.get("/kv/get?key=n").status, 404, "the data is gone");
    // A bad snapshot is a clear error that changes nothing.
    let (ok, _, err) = cli(&back, &["data", "import", "kv"], Some(b"{\"format\": 1}"));
    assert!(!ok && err.contains("not a snapshot"), "{err}");
}

#[test]
fn a_host_started_while_its_database_is_down_serves_its_store_once_the_database_is_up() {
    let mut server = shoal_tests::PostgresServer::start();
    let store = Store::Postgres(server.url());
    server.stop();
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    let (status, body) = post(&host, "/kv/increment?key=n", b"");
    assert!(
        status >= 400 && body.contains("Unavailable"),
        "{status} {body}"
    );
    server.resume();
    shoal_tests::wait_for(
        "the store reachable",
        std::time::Duration::from_secs(30),
        || post(&host, "/kv/increment?key=n", b"").0 == 200,
    );
    assert_eq!(
        host.get("/kv/get?key=n").body,
        "1",
        "the failed call wrote nothing"
    );
}

#[test]
fn the_store_speaks_tls_to_postgresql_and_refuses_a_certificate_it_does_not_trust() {
    let server = shoal_tests::PostgresServer::start_with_tls();
    let url = format!("{}?sslmode=require", server.url());
    let ca_file = server.ca_file();
    let ca_file = ca_file.to_str().expect("a UTF-8 path");

    // Trusting the server's authority: the store works, over TLS.
    let root = temp_root();
    let host = Host::start(root.path(), &["--store", &url, "--store-ca-file", ca_file]);
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(post(&host, "/kv/increment?key=n", b"").1.trim(), "1");
    let psql = format!(
        "{}/psql",
        std::env::var("SHOAL_TEST_POSTGRES_BIN").expect("SHOAL_TEST_POSTGRES_BIN")
    );
    let encrypted = std::process::Command::new(psql)
        .arg(server.url())
        .args([
            "-tAc",
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'shoal'",
        ])
        .output()
        .expect("psql runs");
    let count: u32 = String::from_utf8_lossy(&encrypted.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(count > 0, "the host's connections are encrypted");

    // Trusting only the public roots: no connection, and the guest gets the typed
    // error, not a hang.
    let other_root = temp_root();
    let untrusting = Host::start(other_root.path(), &["--store", &url]);
    assert_eq!(untrusting.deploy("kv", &guest("counter")).status, 201);
    let (status, body) = post(&untrusting, "/kv/increment?key=n", b"");
    assert!(status >= 400, "{status} {body}");
    assert!(body.contains("Unavailable"), "a typed error: {body}");
}

#[test]
fn a_hung_database_holds_no_thread_a_neighbour_needs() {
    let server = shoal_tests::PostgresServer::start();
    let root = temp_root();
    let host = Host::start(root.path(), &Store::Postgres(server.url()).args());
    assert_eq!(host.deploy("kv", &guest("counter")).status, 201);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(post(&host, "/kv/increment?key=n", b"").1.trim(), "1");

    // The database hangs; store calls wait on it (at most their 5 s bound).
    server.freeze();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stuck: Vec<_> = (0..8)
        .map(|_| {
            let (url, answered) = (
                format!("{}/kv/increment?key=n", host.gateway),
                answered.clone(),
            );
            std::thread::spawn(move || {
                let reply = agent().post(&url).send(&b""[..]);
                answered.store(true, std::sync::atomic::Ordering::SeqCst);
                reply.map(|r| r.status().as_u16()).ok()
            })
        })
        .collect();
    let in_flight = || -> u64 {
        host.admin("GET", "/metrics")
            .body
            .lines()
            .find(|line| {
                line.starts_with("shoal_in_flight_requests{") && line.contains("service=\"kv\"")
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    wait_for(
        "store calls waiting on the database",
        Duration::from_secs(5),
        || in_flight() >= 4,
    );
    // While they wait, a neighbour is served on every serving thread, before any of
    // them is answered: none holds a thread the gateway runs requests on.
    for _ in 0..5 {
        assert_eq!(host.get("/hello/").status, 200);
    }
    assert!(
        !answered.load(std::sync::atomic::Ordering::SeqCst),
        "a store call ended before the neighbour was served: the neighbour waited for it"
    );
    for call in stuck {
        let status = call.join().expect("a store call");
        assert_eq!(
            status,
            Some(503),
            "a hung database is the typed unavailable"
        );
    }
    server.thaw();
    shoal_tests::wait_for("the store back", Duration::from_secs(30), || {
        post(&host, "/kv/increment?key=n", b"").0 == 200
    });
}
