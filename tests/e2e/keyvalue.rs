//! `wasi:keyvalue@0.2.0-draft2`: a portable component with no Shoal crate keeps its
//! data in its service's store: CRUD, atomic increments under concurrency,
//! compare-and-swap with a fresh handle on conflict, atomic batches, paged listing,
//! isolation between services, durability across `kill -9`, and clear errors.

use shoal_tests::{Host, Store, agent, guest, temp_root};

fn send(host: &Host, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    host.send_bytes(method, path, body)
}

#[test]
fn a_portable_component_reads_and_writes_its_own_bucket() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        a_portable_component_reads_and_writes_its_own_bucket_on(&store);
    }
}

fn a_portable_component_reads_and_writes_its_own_bucket_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(host.deploy("kv", &guest("keyvalue")).status, 201);
    assert_eq!(host.deploy("other", &guest("keyvalue")).status, 201);

    assert_eq!(host.get("/kv/kv/greeting").status, 404);
    assert_eq!(host.get("/kv/exists/greeting").body, "false");
    assert_eq!(send(&host, "PUT", "/kv/kv/greeting", b"hello").0, 200);
    assert_eq!(host.get("/kv/kv/greeting").body, "hello");
    assert_eq!(host.get("/kv/exists/greeting").body, "true");
    // Another service never sees it, under the same key.
    assert_eq!(host.get("/other/kv/greeting").status, 404);
    assert_eq!(send(&host, "DELETE", "/kv/kv/greeting", b"").0, 200);
    assert_eq!(host.get("/kv/exists/greeting").body, "false");

    // One bucket per service: the default one.
    assert_eq!(host.get("/kv/open/default").body, "opened");
    let other = host.get("/kv/open/someone-elses");
    assert_eq!((other.status, other.body.as_str()), (404, "no-such-store"));

    // Compare-and-swap: a write in between fails the swap, and the fresh handle the
    // failure returns holds the newer value and swaps.
    assert_eq!(send(&host, "PUT", "/kv/kv/slot", b"v1").0, 200);
    let (status, steps) = send(&host, "POST", "/kv/cas/slot", b"v2");
    assert_eq!((status, steps.as_str()), (200, "read v1\nswapped"));
    let (status, steps) = send(&host, "POST", "/kv/cas/slot?interfere=1", b"v3");
    assert_eq!(
        (status, steps.as_str()),
        (
            200,
            "read v2\ninterfered\ncas-failed, now interfered\nswapped"
        )
    );
    assert_eq!(host.get("/kv/kv/slot").body, "v3");

    // Batches, and listing page by page with the cursor.
    assert_eq!(send(&host, "POST", "/kv/many?n=2500", b"").1, "set 2500");
    let many = host.get("/kv/many?keys=k00007,absent,k02499");
    assert_eq!(many.body, "k00007=7\n-\nk02499=2499");
    let listed = host.get("/kv/keys");
    let mut lines = listed.body.lines();
    assert_eq!(lines.next(), Some("pages 3"), "1000 keys a page");
    assert_eq!(lines.next(), Some("keys 2501"), "2500 and `slot`");
    let keys: Vec<&str> = lines.collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(keys, sorted, "in order, each once");
    assert_eq!(
        send(&host, "DELETE", "/kv/many?keys=k00007,k02499", b"").0,
        200
    );
    assert_eq!(host.get("/kv/many?keys=k00007,k00008").body, "-\nk00008=8");
}

#[test]
fn concurrent_increments_lose_nothing_and_survive_a_crash() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        concurrent_increments_lose_nothing_and_survive_a_crash_on(&store);
    }
}

fn concurrent_increments_lose_nothing_and_survive_a_crash_on(store: &Store) {
    let root = temp_root();
    let mut host = Host::start(root.path(), &store.args());
    let manifest = "[limits]\nmax_concurrency = 16\n";
    assert_eq!(
        host.deploy_with_manifest("kv", &guest("keyvalue"), manifest)
            .status,
        201
    );
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{}/kv/incr/hits?by=3", host.gateway);
            std::thread::spawn(move || {
                let agent = agent();
                for _ in 0..25 {
                    let reply = agent.post(&url).send_empty().expect("increment");
                    assert_eq!(reply.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    assert_eq!(send(&host, "POST", "/kv/incr/hits?by=0", b"").1, "600");
    assert_eq!(send(&host, "POST", "/kv/incr/hits?by=-601", b"").1, "-1");
    host.crash();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(send(&host, "POST", "/kv/incr/hits?by=1", b"").1, "0");
}

#[test]
fn bad_keyvalue_input_gets_clear_errors() {
    for store in Store::every() {
        eprintln!("store backend: {}", store.name());
        bad_keyvalue_input_gets_clear_errors_on(&store);
    }
}

fn bad_keyvalue_input_gets_clear_errors_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(host.deploy("kv", &guest("keyvalue")).status, 201);
    let long_key = "k".repeat(600);
    let (status, text) = send(&host, "PUT", &format!("/kv/kv/{long_key}"), b"x");
    assert_eq!(status, 500);
    assert!(text.contains("a key must be 1 to 512 bytes"), "{text}");

    // Not a counter: an increment refuses it and leaves the value alone.
    assert_eq!(send(&host, "PUT", "/kv/kv/name", b"shoal").0, 200);
    let (status, text) = send(&host, "POST", "/kv/incr/name", b"");
    assert_eq!(status, 500);
    assert!(text.contains("is not a counter"), "{text}");
    assert_eq!(host.get("/kv/kv/name").body, "shoal");

    // Overflow is refused, not wrapped.
    let max = i64::MAX.to_string();
    assert_eq!(
        send(&host, "POST", &format!("/kv/incr/big?by={max}"), b"").1,
        max
    );
    let (status, text) = send(&host, "POST", "/kv/incr/big?by=1", b"");
    assert_eq!(status, 500);
    assert!(text.contains("would overflow"), "{text}");

    // A batch larger than one transaction is refused whole.
    let (status, text) = send(&host, "POST", "/kv/many?n=10001", b"");
    assert_eq!(status, 500);
    assert!(text.contains("at most 10000"), "{text}");
    assert_eq!(host.get("/kv/exists/k00000").body, "false");
}
