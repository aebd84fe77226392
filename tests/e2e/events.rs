//! Events: durable publish, transactional outbox, at-least-once delivery with retries,
//! dead letters and replay, inbox de-duplication, and survival of `kill -9`.

use shoal_tests::{Host, TOKEN, guest, shoal_cli, temp_root, wait_for};
use std::time::Duration;

const TOPIC: &str = "count.changed";

fn subscriber(extra_config: &str, max_attempts: u32) -> String {
    format!(
        "[config]\n{extra_config}\n[[subscriptions]]\ntopic = \"{TOPIC}\"\nroute = \"/events/handle\"\nmax_attempts = {max_attempts}\n"
    )
}

fn post(host: &Host, path: &str, body: &[u8]) -> (u16, String) {
    host.send_bytes("POST", path, body)
}

fn handled(host: &Host) -> Vec<String> {
    host.get("/sub/handled")
        .body
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_published_event_reaches_its_subscriber_once() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("pub", &guest("counter")).status, 201);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    let (status, id) = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"hello");
    assert_eq!(status, 200, "{id}");
    let id = id.trim().to_owned();
    wait_for("the delivery", Duration::from_secs(10), || {
        handled(&host) == [id.clone()]
    });
    assert_eq!(
        host.get(&format!("/sub/get?key=handled%2F{id}")).body,
        "hello"
    );
    // Operators see topics, subscriptions, the store's size and the counters.
    let events = host.admin("GET", "/v1/events").json();
    assert_eq!(events["topics"], serde_json::json!([TOPIC]), "{events}");
    assert_eq!(events["subscriptions"][0]["service"], "sub", "{events}");
    let shown = host.admin("GET", "/v1/services/sub").json();
    assert!(
        shown["store_bytes"].as_u64().is_some_and(|bytes| bytes > 0),
        "{shown}"
    );
    wait_for("the delivery counted", Duration::from_secs(10), || {
        let metrics = host.admin("GET", "/metrics").body;
        metrics.contains("shoal_event_deliveries_total{outcome=\"delivered\",subscriber=\"sub\"} 1")
            && metrics.contains("shoal_events_published_total{service=\"pub\"} 1")
            && metrics.contains("shoal_store_commits_total{outcome=\"ok\",service=\"sub\"}")
    });
    // A bad topic is refused and nothing is published.
    let (status, body) = post(&host, "/pub/publish?topic=Not%20A%20Topic", b"x");
    assert_eq!(status, 400);
    assert!(body.contains("InvalidTopic"), "{body}");
    let (status, body) = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}"),
        &vec![b'x'; 300 * 1024],
    );
    assert_eq!(status, 400);
    assert!(body.contains("TooLarge"), "{body}");
}

#[test]
fn the_outbox_sends_events_of_committed_transactions_only() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("pub", &guest("counter")).status, 201);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    let aborted = post(
        &host,
        &format!("/pub/increment-and-publish?key=n&topic={TOPIC}&abort=1"),
        b"",
    );
    assert_eq!(aborted.0, 200);
    for expected in 1..=3 {
        let (status, body) = post(
            &host,
            &format!("/pub/increment-and-publish?key=n&topic={TOPIC}"),
            b"",
        );
        assert_eq!((status, body.trim()), (200, expected.to_string().as_str()));
    }
    wait_for("three deliveries", Duration::from_secs(10), || {
        handled(&host).len() == 3
    });
    // Only the committed ones: the payloads are the committed counts.
    let mut payloads: Vec<String> = handled(&host)
        .iter()
        .map(|id| host.get(&format!("/sub/get?key=handled%2F{id}")).body)
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["1", "2", "3"]);
    assert_eq!(
        host.get("/pub/get?key=n").body,
        "3",
        "the aborted write never landed"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        handled(&host).len(),
        3,
        "no event of the aborted transaction"
    );
}

#[test]
fn failing_deliveries_are_retried_then_dead_lettered_and_replayed() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("pub", &guest("counter")).status, 201);
    let failing = subscriber("fail_attempts = \"100\"", 5);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &failing)
            .status,
        201
    );
    let id = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"x")
        .1
        .trim()
        .to_owned();
    wait_for("a dead letter", Duration::from_secs(20), || {
        let events = host.admin("GET", "/v1/events").json();
        events["dead_letters"]
            .as_array()
            .is_some_and(|dead| !dead.is_empty())
    });
    let events = host.admin("GET", "/v1/events").json();
    let dead = &events["dead_letters"][0];
    assert_eq!(dead["event_id"], id.as_str(), "{events}");
    assert_eq!(dead["subscriber"], "sub");
    assert_eq!(dead["attempts"], 5);
    assert!(
        dead["reason"].as_str().unwrap_or("").contains("500"),
        "{events}"
    );
    assert!(handled(&host).is_empty());
    // Fixed, then replayed: delivered.
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 3))
            .status,
        200
    );
    // The CLI lists the dead letter and replays it.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, listed, stderr) = shoal_cli(&["events"], &env);
    assert!(ok, "{stderr}");
    assert!(listed.contains("dead letters: 1"), "{listed}");
    assert!(listed.contains(&id), "{listed}");
    let (ok, replayed, stderr) = shoal_cli(&["events", "replay", "sub", &id], &env);
    assert!(ok, "{stderr}");
    assert!(replayed.contains("replaying"), "{replayed}");
    wait_for("the replayed delivery", Duration::from_secs(10), || {
        handled(&host) == [id.clone()]
    });
    assert_eq!(
        host.admin("POST", &format!("/v1/events/dead/sub/{id}/replay"))
            .status,
        404
    );
    assert_eq!(
        host.admin("DELETE", &format!("/v1/events/dead/sub/{id}"))
            .status,
        404
    );
}

#[test]
fn a_redelivery_of_a_handled_event_is_dropped_by_the_inbox() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("pub", &guest("counter")).status, 201);
    let flaky = subscriber("fail_after_commit = \"1\"", 5);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &flaky)
            .status,
        201
    );
    let id = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"x")
        .1
        .trim()
        .to_owned();
    // The first attempt commits and answers 500; the retry finds the event handled.
    wait_for("the delivery to settle", Duration::from_secs(10), || {
        host.admin("GET", "/v1/events").json()["pending"] == 0 && handled(&host) == [id.clone()]
    });
    assert_eq!(
        host.get("/sub/handled-total").body,
        "1",
        "the handler ran to commit once"
    );
}

#[test]
fn an_acknowledged_publish_is_delivered_after_kill_9() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("pub", &guest("counter")).status, 201);
    // The subscriber fails until redeployed, so the events are still queued at the crash.
    let failing = subscriber("fail_attempts = \"100\"", 100);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &failing)
            .status,
        201
    );
    let ids: Vec<String> = (0..5)
        .map(|_| {
            post(&host, &format!("/pub/publish?topic={TOPIC}"), b"x")
                .1
                .trim()
                .to_owned()
        })
        .collect();
    host.crash();
    let host = Host::start(root.path(), &[]);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 100))
            .status,
        200
    );
    wait_for("every acknowledged event", Duration::from_secs(60), || {
        handled(&host).len() == 5
    });
    let mut got = handled(&host);
    got.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_scheduled_event_waits_for_its_delay_even_across_kill_9() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("pub", &guest("counter")).status, 201);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    // One now, one in a transaction with a delay, one with a delay that a crash and
    // restart must not cut short.
    let now = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"now").1;
    let published = std::time::Instant::now();
    let (status, _) = post(
        &host,
        &format!("/pub/increment-and-publish?key=n&topic={TOPIC}&delay_ms=3000"),
        b"",
    );
    assert_eq!(status, 200);
    let later = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=6000"),
        b"later",
    )
    .1;
    wait_for("the undelayed event", Duration::from_secs(10), || {
        handled(&host).contains(&now.trim().to_owned())
    });
    assert_eq!(handled(&host).len(), 1, "the delayed ones wait");
    wait_for(
        "the event scheduled in a transaction",
        Duration::from_secs(20),
        || handled(&host).len() == 2,
    );
    assert!(published.elapsed() >= Duration::from_millis(3000));
    host.crash();
    let host = Host::start(root.path(), &[]);
    if published.elapsed() < Duration::from_millis(5500) {
        assert_eq!(handled(&host).len(), 2, "a restart does not make it due");
    }
    wait_for(
        "the event scheduled before the crash",
        Duration::from_secs(20),
        || handled(&host).contains(&later.trim().to_owned()),
    );
    assert!(published.elapsed() >= Duration::from_millis(6000));

    // A delay beyond 30 days is refused, and nothing is published.
    let (status, text) = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=2592000001"),
        b"x",
    );
    assert_eq!(status, 400);
    assert!(text.contains("delay is at most"), "{text}");
}
