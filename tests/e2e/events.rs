//! Events: durable publish, transactional outbox, at-least-once delivery with retries,
//! dead letters and replay, inbox de-duplication, and survival of `kill -9`.

use shoal_tests::{Host, Store, TOKEN, guest, shoal_cli, temp_root, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;

const TOPIC: &str = "count.changed";

/// `counter` publishing `TOPIC` to the test's subscribers (`sub`, `slow`).
const PUBLISHER: &str =
    "[events]\npublishes = [\"count.changed\"]\nsubscribers = [\"sub\", \"slow\"]\n";

fn subscriber(extra_config: &str, max_attempts: u32) -> String {
    format!(
        "[config]\n{extra_config}\n[[subscriptions]]\ntopic = \"{TOPIC}\"\nroute = \"/events/handle\"\nmax_attempts = {max_attempts}\n"
    )
}

fn post(host: &Host, path: &str, body: &[u8]) -> (u16, String) {
    host.send_bytes("POST", path, body)
}

/// When the subscriber handled event `id`, in Unix milliseconds (its own clock, which
/// is this machine's).
fn handled_at(host: &Host, id: &str) -> u64 {
    let reply = host.get(&format!("/sub/get?key=handled-at%2F{id}"));
    reply
        .body
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no handling time for {id}: {}", reply.body))
}

/// This machine's clock in Unix milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
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
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        a_published_event_reaches_its_subscriber_once_on(&store);
    }
}

fn a_published_event_reaches_its_subscriber_once_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    let shown = host.admin("GET", "/v1/host").json();
    assert_eq!(shown["bus"], store.engines().1, "{shown}");
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
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
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        the_outbox_sends_events_of_committed_transactions_only_on(&store);
    }
}

fn the_outbox_sends_events_of_committed_transactions_only_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
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
    // An event published after all of them has been delivered: any event of the
    // aborted transaction, older than it, would have been delivered by now.
    let probe = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"probe")
        .1
        .trim()
        .to_owned();
    wait_for("the probe event", Duration::from_secs(10), || {
        handled(&host).contains(&probe)
    });
    assert_eq!(
        handled(&host).len(),
        4,
        "no event of the aborted transaction"
    );
}

#[test]
fn failing_deliveries_are_retried_then_dead_lettered_and_replayed() {
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        failing_deliveries_are_retried_then_dead_lettered_and_replayed_on(&store);
    }
}

fn failing_deliveries_are_retried_then_dead_lettered_and_replayed_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
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
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        a_redelivery_of_a_handled_event_is_dropped_by_the_inbox_on(&store);
    }
}

fn a_redelivery_of_a_handled_event_is_dropped_by_the_inbox_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
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
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        an_acknowledged_publish_is_delivered_after_kill_9_on(&store);
    }
}

fn an_acknowledged_publish_is_delivered_after_kill_9_on(store: &Store) {
    let root = temp_root();
    let mut host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
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
    let host = Host::start(root.path(), &store.args());
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
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        a_scheduled_event_waits_for_its_delay_even_across_kill_9_on(&store);
    }
}

fn a_scheduled_event_waits_for_its_delay_even_across_kill_9_on(store: &Store) {
    let root = temp_root();
    let mut host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    // One now, one in a transaction with a delay, one with a delay that a crash and
    // restart must not cut short. Each delayed event is checked against the time the
    // subscriber handled it: never before its publish plus its delay.
    let now = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"now").1;
    let before_scheduled = unix_ms();
    let (status, _) = post(
        &host,
        &format!("/pub/increment-and-publish?key=n&topic={TOPIC}&delay_ms=3000"),
        b"",
    );
    assert_eq!(status, 200);
    let before_later = unix_ms();
    let later = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=6000"),
        b"later",
    )
    .1
    .trim()
    .to_owned();
    let now = now.trim().to_owned();
    wait_for("the undelayed event", Duration::from_secs(10), || {
        handled(&host).contains(&now)
    });
    wait_for(
        "the event scheduled in a transaction",
        Duration::from_secs(20),
        || handled(&host).len() == 2,
    );
    let scheduled = handled(&host)
        .into_iter()
        .find(|id| *id != now && *id != later)
        .expect("the transaction's event");
    assert!(
        handled_at(&host, &scheduled) >= before_scheduled + 3000,
        "the transaction's event waited for its delay"
    );
    host.crash();
    let host = Host::start(root.path(), &store.args());
    // Deliveries run again (an event published now is delivered), and the event
    // scheduled before the crash still comes no earlier than it was due: a restart
    // does not make it due.
    let after = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"after")
        .1
        .trim()
        .to_owned();
    wait_for(
        "the event scheduled before the crash",
        Duration::from_secs(20),
        || {
            let handled = handled(&host);
            handled.contains(&after) && handled.contains(&later)
        },
    );
    let later_at = handled_at(&host, &later);
    assert!(
        later_at >= before_later + 6000,
        "handled {} ms after it was published with a 6000 ms delay",
        later_at.saturating_sub(before_later)
    );

    // A delay beyond 30 days is refused, and nothing is published.
    let (status, text) = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=2592000001"),
        b"x",
    );
    assert_eq!(status, 400);
    assert!(text.contains("delay is at most"), "{text}");
}

#[test]
fn a_slow_subscriber_never_holds_up_another_s_events() {
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        a_slow_subscriber_never_holds_up_another_s_events_on(&store);
    }
}

fn a_slow_subscriber_never_holds_up_another_s_events_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    // Each delivery to `slow` takes 25 s.
    let slow = format!(
        "[limits]\ntimeout_ms = 60000\n[[subscriptions]]\ntopic = \"{TOPIC}\"\n\
         route = \"/sleep?ms=25000\"\nmax_attempts = 1\n"
    );
    assert_eq!(
        host.deploy_with_manifest("slow", &guest("faulty"), &slow)
            .status,
        201
    );
    let first = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"1")
        .1
        .trim()
        .to_owned();
    wait_for(
        "the first event and the slow delivery",
        Duration::from_secs(10),
        || handled(&host).contains(&first) && host.running("slow").load.in_flight == 1,
    );
    // While `slow` still works on the first event, the next one reaches `sub`.
    let second = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"2")
        .1
        .trim()
        .to_owned();
    wait_for("the second event", Duration::from_secs(15), || {
        handled(&host).contains(&second)
    });
    // (`slow` takes the second event too, beside the first.)
    assert!(
        host.running("slow").load.in_flight >= 1,
        "the second event was delivered while the slow deliveries were still running"
    );
}

/// Publish events of `bytes` scheduled a day ahead from `pub` until one is refused;
/// answers the refusal. They wait on the bus all that time.
fn publish_until_refused(host: &Host, bytes: usize) -> String {
    let payload = vec![b'x'; bytes];
    let mut refusal = None;
    wait_for("a publish to be refused", Duration::from_secs(30), || {
        let (status, body) = post(
            host,
            &format!("/pub/publish?topic={TOPIC}&delay_ms=86400000"),
            &payload,
        );
        if status != 200 {
            refusal = Some(body);
        }
        refusal.is_some()
    });
    refusal.unwrap_or_default()
}

#[test]
fn a_publisher_s_waiting_events_count_against_its_own_quota() {
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        a_publisher_s_waiting_events_count_against_its_own_quota_on(&store);
    }
}

fn a_publisher_s_waiting_events_count_against_its_own_quota_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    let small = format!("{PUBLISHER}[limits]\nstore_mb = 1\n");
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), &small)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    let refusal = publish_until_refused(&host, 100 * 1024);
    assert!(refusal.contains("QuotaExceeded"), "{refusal}");
    // Its own store is nearly empty: the events wait on the bus, counted for it.
    let shown = host.admin("GET", "/v1/services/pub").json();
    assert!(
        shown["store_bytes"]
            .as_u64()
            .is_some_and(|bytes| bytes < 512 * 1024),
        "{shown}"
    );
    // A neighbour publishes as before.
    let other = "[events]\npublishes = [\"other.topic\"]\n";
    assert_eq!(
        host.deploy_with_manifest("other", &guest("counter"), other)
            .status,
        201
    );
    let (status, body) = post(&host, "/other/publish?topic=other.topic", b"x");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_bus_has_a_host_wide_bound_and_publishing_past_it_fails_with_bus_full() {
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        the_bus_has_a_host_wide_bound_and_publishing_past_it_fails_with_bus_full_on(&store);
    }
}

fn the_bus_has_a_host_wide_bound_and_publishing_past_it_fails_with_bus_full_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.with(&["--max-bus-mb", "1"]));
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    let refusal = publish_until_refused(&host, 200 * 1024);
    assert!(refusal.contains("BusFull"), "{refusal}");
    // The bus holds close to its bound, and never more.
    let held = || -> u64 {
        let metrics = host.admin("GET", "/metrics").body;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("shoal_event_bus_bytes "))
            .and_then(|value| value.trim().parse().ok())
            .expect("the bus's size is a metric")
    };
    wait_for("the bus measured", Duration::from_secs(10), || {
        held() > 512 * 1024
    });
    assert!(held() <= 1024 * 1024, "{}", held());
    // Nothing acknowledged is lost: every accepted event is on the bus or waits in
    // the publisher's outbox.
    let events = host.admin("GET", "/v1/events").json();
    let pending = events["pending"].as_u64().expect("pending");
    assert!(pending >= 5, "{events}");
}

#[test]
fn a_subscriber_forgets_the_events_it_handled_after_the_retention() {
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        a_subscriber_forgets_the_events_it_handled_after_the_retention_on(&store);
    }
}

fn a_subscriber_forgets_the_events_it_handled_after_the_retention_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.with(&["--inbox-retention", "2s"]));
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    let (status, id) = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"x");
    assert_eq!(status, 200, "{id}");
    let id = id.trim().to_owned();
    wait_for("the delivery", Duration::from_secs(10), || {
        handled(&host) == [id.clone()]
    });
    let bytes = || {
        host.admin("GET", "/v1/services/sub").json()["store_bytes"]
            .as_u64()
            .expect("store bytes")
    };
    let with_inbox = bytes();
    // Its handler's own writes stay; the inbox's id goes once its retention is over.
    wait_for("the inbox to be pruned", Duration::from_secs(20), || {
        bytes() == with_inbox - id.len() as u64
    });
    assert_eq!(handled(&host), [id]);
}

/// Deliveries to `sub` that found it not there to take them, so far.
fn waiting(host: &Host) -> u64 {
    host.admin("GET", "/metrics")
        .body
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "shoal_event_deliveries_total{outcome=\"waiting\",subscriber=\"sub\"} ",
            )
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn events_wait_for_a_subscriber_that_is_redeployed_or_rolled_back() {
    for store in Store::every_with_bus() {
        eprintln!("store backend: {}", store.name());
        events_wait_for_a_subscriber_that_is_redeployed_or_rolled_back_on(&store);
    }
}

fn events_wait_for_a_subscriber_that_is_redeployed_or_rolled_back_on(store: &Store) {
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    let subscribed = subscriber("", 5);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscribed)
            .status,
        201
    );

    // Due in a second, by when its subscriber is gone; it comes back after more than
    // the retries an absent subscriber used to get.
    let (status, first) = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=1000"),
        b"1",
    );
    assert_eq!(status, 200, "{first}");
    assert_eq!(host.admin("DELETE", "/v1/services/sub").status, 204);
    wait_for(
        "the event to wait for its subscriber",
        Duration::from_secs(30),
        || waiting(&host) >= 3,
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscribed)
            .status,
        201
    );
    wait_for(
        "the delivery after the redeploy",
        Duration::from_secs(60),
        || handled(&host).contains(&first.trim().to_owned()),
    );

    // Due while a version without the subscription runs: delivered after a rollback.
    let (status, second) = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=1000"),
        b"2",
    );
    assert_eq!(status, 200, "{second}");
    let unsubscribed = "[config]\nversion_note = \"no subscription\"\n";
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), unsubscribed)
            .status,
        200
    );
    let before = waiting(&host);
    wait_for(
        "the event to wait for a subscribing version",
        Duration::from_secs(30),
        || waiting(&host) >= before + 2,
    );
    assert_eq!(host.admin("POST", "/v1/services/sub/rollback").status, 200);
    wait_for(
        "the delivery after the rollback",
        Duration::from_secs(60),
        || handled(&host).contains(&second.trim().to_owned()),
    );
    let dead = host.admin("GET", "/v1/events").json();
    assert_eq!(dead["dead_letters"], serde_json::json!([]), "{dead}");
}

#[test]
fn events_committed_while_nats_restarts_are_all_delivered_and_handled_once() {
    let mut nats = shoal_tests::NatsServer::start();
    let Store::Postgres(postgres) = Store::postgres() else {
        unreachable!("a PostgreSQL store")
    };
    let store = Store::PostgresAndNats {
        postgres,
        nats: nats.url(),
        namespace: "restart".into(),
    };
    let root = temp_root();
    let host = Host::start(root.path(), &store.args());
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 20))
            .status,
        201
    );
    // A burst of publishes, each acknowledged once its transaction commits; NATS
    // stops and starts again in the middle of it.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (gateway, acknowledged, stop) =
            (host.gateway.clone(), acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            let agent = shoal_tests::agent();
            let url = format!("{gateway}/pub/publish?topic={TOPIC}");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut response) = agent.post(&url).send(&b"x"[..]) else {
                    continue;
                };
                if response.status() == 200 {
                    let id = response.body_mut().read_to_string().unwrap_or_default();
                    acknowledged
                        .lock()
                        .expect("lock")
                        .push(id.trim().to_owned());
                }
            }
        })
    };
    wait_for("events flowing", Duration::from_secs(30), || {
        handled(&host).len() >= 20
    });
    // One event is scheduled 4 s ahead: it waits in JetStream across the restart.
    let before_scheduled = unix_ms();
    let scheduled = post(
        &host,
        &format!("/pub/publish?topic={TOPIC}&delay_ms=4000"),
        b"later",
    )
    .1
    .trim()
    .to_owned();
    wait_for(
        "the scheduled event on the bus",
        Duration::from_secs(10),
        || {
            host.admin("GET", "/v1/events").json()["pending"]
                .as_u64()
                .is_some_and(|pending| pending >= 1)
        },
    );
    // Restarted as an operator does (SIGTERM): a single NATS server killed with -9
    // may lose what it acknowledged in its last moments (JetStream writes behind).
    nats.stop();
    let at_stop = acknowledged.lock().expect("lock").len();
    wait_for(
        "events committed while NATS is down",
        Duration::from_secs(30),
        || acknowledged.lock().expect("lock").len() >= at_stop + 50,
    );
    nats.resume();
    let at_resume = acknowledged.lock().expect("lock").len();
    wait_for(
        "events committed after NATS is back",
        Duration::from_secs(30),
        || acknowledged.lock().expect("lock").len() >= at_resume + 50,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().expect("publisher");
    let acknowledged: BTreeSet<String> =
        acknowledged.lock().expect("lock").iter().cloned().collect();
    let acknowledged: BTreeSet<String> = acknowledged
        .into_iter()
        .chain([scheduled.clone()])
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while handled(&host).len() < acknowledged.len() {
        if std::time::Instant::now() > deadline {
            let got: BTreeSet<String> = handled(&host).into_iter().collect();
            let missing: Vec<&String> = acknowledged.difference(&got).collect();
            panic!(
                "not handled after 90 s: {missing:?}\nbus: {}\nhost log:\n{}",
                host.admin("GET", "/v1/events").body,
                host.log()
                    .lines()
                    .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = handled(&host);
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, acknowledged, "no event lost, none invented");
    assert_eq!(unique.len(), got.len(), "none handled twice");
    assert_eq!(
        host.get("/sub/handled-total").body,
        acknowledged.len().to_string(),
        "the handler ran to commit once per event"
    );
    assert!(
        handled_at(&host, &scheduled) >= before_scheduled + 4000,
        "the scheduled event came no earlier than it was due"
    );
}

#[test]
fn the_bus_authenticates_to_nats_with_a_token_from_a_file() {
    let nats = shoal_tests::NatsServer::start_with_token("s3cret-token");
    let root = temp_root();
    let token_file = root.path().join("nats-token");
    let args = |token_file: &std::path::Path| -> Vec<String> {
        let Store::Postgres(postgres) = Store::postgres() else {
            unreachable!("a PostgreSQL store")
        };
        vec![
            "--store".into(),
            postgres,
            "--bus".into(),
            nats.url(),
            "--bus-token-file".into(),
            token_file.display().to_string(),
        ]
    };
    // An empty token file is refused at start, naming the file.
    std::fs::write(&token_file, "\n").expect("write");
    let output = std::process::Command::new(shoal_tests::shoal_bin())
        .arg("serve")
        .args(args(&token_file))
        .args([
            "--data-dir",
            &root.path().join("refused").display().to_string(),
        ])
        .env("SHOAL_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run shoal");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("nats-token") && err.contains("empty"), "{err}");

    // With the right token, events flow; the token is never in the process's
    // arguments.
    std::fs::write(&token_file, "s3cret-token\n").expect("write");
    let host_args = args(&token_file);
    let host_args: Vec<&str> = host_args.iter().map(String::as_str).collect();
    std::fs::create_dir_all(root.path().join("good")).expect("dir");
    let host = Host::start(&root.path().join("good"), &host_args);
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), &subscriber("", 5))
            .status,
        201
    );
    let id = post(&host, &format!("/pub/publish?topic={TOPIC}"), b"x")
        .1
        .trim()
        .to_owned();
    wait_for("the event delivered", Duration::from_secs(30), || {
        handled(&host) == [id.clone()]
    });
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", host.pid())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret-token"));

    // With a wrong one, the host runs, the publish is kept in the outbox, and the
    // bus says why it cannot be read.
    let wrong_file = root.path().join("wrong-token");
    std::fs::write(&wrong_file, "not-the-token\n").expect("write");
    let wrong_args = args(&wrong_file);
    let wrong_args: Vec<&str> = wrong_args.iter().map(String::as_str).collect();
    std::fs::create_dir_all(root.path().join("wrong")).expect("dir");
    let wrong = Host::start(&root.path().join("wrong"), &wrong_args);
    assert_eq!(
        wrong
            .deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        post(&wrong, &format!("/pub/publish?topic={TOPIC}"), b"x").0,
        200
    );
    let events = wrong.admin("GET", "/v1/events");
    assert!(events.status >= 500, "{}", events.body);
    assert!(events.body.contains("NATS"), "{}", events.body);
    wait_for(
        "the refusal in the host's log",
        Duration::from_secs(10),
        || wrong.log().contains("uthorization"),
    );
}
