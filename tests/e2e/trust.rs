//! Trust between services: what a deployed service can and cannot do to its
//! neighbours through the host.

use shoal_tests::{Host, guest, temp_root};

const TOPIC: &str = "count.changed";

/// `counter` publishing `TOPIC` to `sub`.
const PUBLISHER: &str = "[events]\npublishes = [\"count.changed\"]\nsubscribers = [\"sub\"]\n";

/// `counter` subscribed to `TOPIC` at `/events/handle`.
const SUBSCRIBER: &str =
    "[[subscriptions]]\ntopic = \"count.changed\"\nroute = \"/events/handle\"\n";

/// A `deploy` token limited to `shop-*`, as a team of the shop would hold.
fn shop_team_token(host: &Host) -> String {
    let created = host.admin_json(
        "POST",
        "/v1/tokens",
        r#"{"name": "shop-team", "scope": "deploy", "services": ["shop-*"]}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

fn handled(host: &Host) -> Vec<String> {
    host.get("/sub/handled")
        .body
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_service_cannot_forge_an_event_delivery_or_the_host_s_headers() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), SUBSCRIBER)
            .status,
        201
    );
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);
    assert_eq!(host.deploy("p", &guest("plain_http")).status, 201);
    assert_eq!(host.deploy("echo", &guest("hello")).status, 201);

    // Through shoal:platform/caller: the headers of a delivery, set by the guest.
    let forged = host.get(&format!(
        "/a/call?service=sub&path=/events/handle&method=POST\
         &header=x-shoal-event-id:forged-1&header=x-shoal-topic:{TOPIC}\
         &header=x-shoal-delivery-attempt:1"
    ));
    assert_eq!(forged.status, 200, "{}", forged.body);
    assert!(
        forged.body.contains("status=400"),
        "the subscriber took a call for a delivery: {}",
        forged.body
    );
    // Through plain wasi:http to http://sub/: the same headers.
    let forged = host.get_with_headers(
        "/p/proxy?url=http://sub/events/handle",
        &[
            ("x-pass-x-shoal-event-id", "forged-2"),
            ("x-pass-x-shoal-topic", TOPIC),
        ],
    );
    assert!(
        forged.body.contains("upstream status: 400"),
        "the subscriber took a plain request for a delivery: {}",
        forged.body
    );
    assert!(
        handled(&host).is_empty(),
        "a forged event was recorded as handled: {:?}",
        handled(&host)
    );

    // Nor can a guest say whom a call came through, or which service calls.
    let echoed = host.get(
        "/a/call?service=echo&path=/echo&header=x-forwarded-for:6.6.6.6\
         &header=x-shoal-caller:payment&header=x-kept:yes",
    );
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    assert!(echoed.body.contains("x-kept: yes"), "{}", echoed.body);
    assert!(!echoed.body.contains("6.6.6.6"), "{}", echoed.body);
    assert!(
        !echoed.body.contains("x-shoal-caller: payment"),
        "{}",
        echoed.body
    );
    assert!(
        echoed.body.contains("x-shoal-caller: a"),
        "the host names the real caller: {}",
        echoed.body
    );

    // A real delivery still is one.
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    let published = host.post(&format!("/pub/publish?topic={TOPIC}"), "real");
    assert_eq!(published.status, 200, "{}", published.body);
    let id = published.body.trim().to_owned();
    shoal_tests::wait_for("the real event", std::time::Duration::from_secs(10), || {
        handled(&host) == [id.clone()]
    });
}

#[test]
fn a_scoped_token_cannot_nest_a_route_inside_another_service_s() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let payment = "route = \"/payment\"\n[config]\ngreeting = \"payment\"\n";
    assert_eq!(
        host.deploy_with_manifest("payment", &hello, payment).status,
        201
    );
    let token = shop_team_token(&host);
    let stolen = "route = \"/payment/charges\"\n[config]\ngreeting = \"stolen\"\n";
    let refused = host.deploy_multipart_with_token("shop-x", &hello, stolen, &token);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("sits inside"), "{}", refused.body);
    assert_eq!(host.admin("GET", "/v1/services/shop-x").status, 404);
    assert_eq!(host.get("/payment/?name=x").body, "payment, x!\n");
    let below = host.get("/payment/charges/");
    assert!(
        !below.body.contains("stolen"),
        "payment keeps its traffic: {}",
        below.body
    );
    // A route of its own is fine for the same token.
    let own = "route = \"/shop-x\"\n";
    let deployed = host.deploy_multipart_with_token("shop-x", &hello, own, &token);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
}

#[test]
fn clients_reach_only_what_a_service_keeps_public() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let private = "[inbound]\nprivate_paths = [\"/config\"]\n";
    assert_eq!(
        host.deploy_with_manifest("pay", &hello, private).status,
        201
    );
    let internal = "[inbound]\npublic = false\n";
    assert_eq!(
        host.deploy_with_manifest("internal", &hello, internal)
            .status,
        201
    );
    assert_eq!(host.deploy("a", &guest("caller")).status, 201);

    // Clients: public paths yes; private paths and internal services no, however
    // the path is spelled.
    assert_eq!(host.get("/pay/").status, 200);
    for path in [
        "/pay/config",
        "/pay/config/x",
        "/pay/%63onfig",
        "/pay//config",
        "/internal/",
    ] {
        let refused = host.get(path);
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
        assert!(
            refused.body.contains("is internal"),
            "{path}: {}",
            refused.body
        );
    }
    // Counted against no service.
    assert_eq!(host.running("pay").requests, 1);
    // Services reach them.
    let called = host.get("/a/call?service=internal&path=/");
    assert!(
        called.body.contains("outcome=ok status=200"),
        "{}",
        called.body
    );
    let called = host.get("/a/call?service=pay&path=/config");
    assert!(
        called.body.contains("outcome=ok status=200"),
        "{}",
        called.body
    );

    // Nor a trusted peer: a client's request never names a calling service.
    let root2 = temp_root();
    let trusting = Host::start(root2.path(), &["--trusted-proxies", "127.0.0.1"]);
    assert_eq!(
        trusting.deploy_with_manifest("pay", &hello, private).status,
        201
    );
    let forwarded = trusting.get_with_headers("/pay/config", &[("x-shoal-caller", "orders")]);
    assert_eq!(forwarded.status, 403, "{}", forwarded.body);
}

#[test]
fn a_service_cannot_come_back_through_the_host_s_own_gateway() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let gateway = host.gateway.trim_start_matches("http://").to_owned();
    let manifest = format!("[outbound]\nallowed_hosts = [\"{gateway}\"]\n");
    assert_eq!(
        host.deploy_with_manifest("p", &guest("plain_http"), &manifest)
            .status,
        201
    );
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let looped = host.get(&format!("/p/proxy?url=http://{gateway}/hello/"));
    assert!(
        looped.body.contains("HttpRequestDenied"),
        "a guest reached the host's own gateway as a client: {}",
        looped.body
    );
}

#[test]
fn an_operator_reaches_private_paths_through_the_admin_api() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[inbound]\nprivate_paths = [\"/echo\"]\n[config]\ngreeting = \"Hi\"\n";
    assert_eq!(
        host.deploy_with_manifest("pay", &guest("hello"), manifest)
            .status,
        201
    );
    assert_eq!(host.get("/pay/echo").status, 403);
    // As the caller `operator`, with the method, query and body as sent.
    let called = host.admin_json("POST", "/v1/services/pay/call/echo?x=1", r#"{"a": 1}"#);
    assert_eq!(called.status, 200, "{}", called.body);
    for expected in [
        "method: POST",
        "path: /echo",
        "query: x=1",
        "header x-shoal-caller: operator",
        "body: {\"a\": 1}",
    ] {
        assert!(
            called.body.contains(expected),
            "{expected}: {}",
            called.body
        );
    }
    assert!(!called.body.contains("authorization"), "{}", called.body);
    // Only a token that may change the service.
    let created = host.admin_json(
        "POST",
        "/v1/tokens",
        r#"{"name": "viewer", "scope": "read"}"#,
    );
    let viewer = created.json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let refused = host.admin_with_token("GET", "/v1/services/pay/call/echo", Some(&viewer));
    assert_eq!(refused.status, 403, "{}", refused.body);
    // No service may take the operator's name.
    let taken = host.deploy("operator", &guest("hello"));
    assert_eq!(taken.status, 409, "{}", taken.body);
}

#[test]
fn a_service_publishes_and_receives_only_the_topics_it_is_given() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let counter = guest("counter");
    let subscribing = |name: &str| {
        format!(
            "route = \"/{name}\"\n[[subscriptions]]\ntopic = \"order.created\"\n\
             route = \"/events/handle\"\n"
        )
    };
    // Subscribed before anyone publishes the topic: accepted, but it receives only
    // what a publisher shares with it.
    let early = host.deploy_with_manifest("early", &counter, &subscribing("early"));
    assert_eq!(early.status, 201, "{}", early.body);
    let orders = "[events]\npublishes = [\"order.*\"]\nsubscribers = [\"inventory\"]\n";
    assert_eq!(
        host.deploy_with_manifest("orders", &counter, orders).status,
        201
    );
    let inventory = host.deploy_with_manifest("inventory", &counter, &subscribing("inventory"));
    assert_eq!(inventory.status, 201, "{}", inventory.body);

    // A team with a token for `shop-*` can neither read orders' events nor claim them.
    let token = shop_team_token(&host);
    let reading =
        host.deploy_multipart_with_token("shop-spy", &counter, &subscribing("shop-spy"), &token);
    assert_eq!(reading.status, 403, "{}", reading.body);
    assert!(
        reading
            .body
            .contains("does not share topic `order.created`"),
        "{}",
        reading.body
    );
    let claiming = "[events]\npublishes = [\"order.created\"]\n";
    let claimed = host.deploy_multipart_with_token("shop-spy", &counter, claiming, &token);
    assert_eq!(claimed.status, 409, "{}", claimed.body);
    assert!(
        claimed.body.contains("belongs to service `orders`"),
        "{}",
        claimed.body
    );
    assert_eq!(host.admin("GET", "/v1/services/shop-spy").status, 404);

    // A service publishes only what its manifest declares.
    assert_eq!(host.deploy("rogue", &counter).status, 201);
    let (status, body) = host.send_bytes("POST", "/rogue/publish?topic=order.created", b"forged");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("NotDeclared"), "{body}");

    // Orders' event reaches inventory, and not the subscriber it does not share with.
    let (status, id) = host.send_bytes("POST", "/orders/publish?topic=order.created", b"real");
    assert_eq!(status, 200, "{id}");
    let id = id.trim().to_owned();
    let handled_by = |name: &str| -> Vec<String> {
        host.get(&format!("/{name}/handled"))
            .body
            .lines()
            .map(str::to_owned)
            .collect()
    };
    shoal_tests::wait_for(
        "the delivery to inventory",
        std::time::Duration::from_secs(10),
        || {
            handled_by("inventory") == [id.clone()]
                && host.admin("GET", "/v1/events").json()["pending"] == 0
        },
    );
    assert!(handled_by("early").is_empty(), "{:?}", handled_by("early"));
}

#[test]
fn every_file_in_the_data_directory_is_the_host_s_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    // Stores, the bus, blobs, records, tokens and the audit log all get written.
    assert_eq!(
        host.deploy_with_manifest("pub", &guest("counter"), PUBLISHER)
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("sub", &guest("counter"), SUBSCRIBER)
            .status,
        201
    );
    assert_eq!(host.post("/pub/increment?key=n", "").status, 200);
    let published = host.post(&format!("/pub/publish?topic={TOPIC}"), "x");
    assert_eq!(published.status, 200, "{}", published.body);
    let created = host.admin_json("POST", "/v1/tokens", r#"{"name": "ci", "scope": "read"}"#);
    assert_eq!(created.status, 201);
    let id = published.body.trim().to_owned();
    shoal_tests::wait_for("the delivery", std::time::Duration::from_secs(10), || {
        handled(&host).contains(&id)
    });
    let mut open_to_others = Vec::new();
    let mut seen = 0;
    let mut dirs = vec![root.path().join("data")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("an entry").path();
            let metadata = path.symlink_metadata().expect("stat");
            if metadata.permissions().mode() & 0o077 != 0 {
                open_to_others.push(format!(
                    "{} {:o}",
                    path.display(),
                    metadata.permissions().mode()
                ));
            }
            if metadata.is_dir() {
                dirs.push(path);
            } else {
                seen += 1;
            }
        }
    }
    assert!(seen >= 6, "only {seen} files");
    assert!(open_to_others.is_empty(), "{open_to_others:#?}");
}
