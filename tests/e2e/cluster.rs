//! Several hosts as one cluster on a real etcd: placement of replicas on distinct
//! hosts, every gateway serving every service, failover after `kill -9`, changes
//! through any host, drains, etcd outages and hosts without the cluster token.

use shoal_tests::cluster::{Cluster, EtcdServer, placements, runs_on, states};
use shoal_tests::{Load, guest, python_json, repo_root, temp_root, wait_for};
use std::time::{Duration, Instant};

const HELLO_TWO: &str = "version = \"1\"\nreplicas = 2\n";

fn greeting(manifest_version: &str, greeting: &str, replicas: u32) -> String {
    format!(
        "version = \"{manifest_version}\"\nreplicas = {replicas}\n[config]\ngreeting = \"{greeting}\"\n"
    )
}

/// The environment that points the CLI at an admin API.
fn cli_env(admin: &str) -> [(&'static str, &str); 2] {
    [
        ("SHOAL_ADMIN_URL", admin),
        ("SHOAL_ADMIN_TOKEN", shoal_tests::TOKEN),
    ]
}

/// Requests `host` served of `service`, as its admin API counts them.
fn served(host: &shoal_tests::Host, service: &str) -> u64 {
    host.running(service).requests
}

/// Wait until every host of `cluster` sees `service` placed on `count` hosts that all
/// run it; return their ids.
fn wait_until_placed(cluster: &Cluster, service: &str, count: usize) -> Vec<String> {
    let mut placed = Vec::new();
    wait_for(
        &format!("{service} placed on {count} hosts that run it"),
        Duration::from_secs(30),
        || {
            placed = placements(&cluster.hosts[0], service);
            placed.len() == count
                && cluster
                    .hosts
                    .iter()
                    .all(|host| placements(host, service) == placed)
                && placed.iter().all(|id| runs_on(cluster.host(id), service))
        },
    );
    placed
}

#[test]
fn replicas_land_on_distinct_hosts_and_every_gateway_serves_them() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let deployed = cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), HELLO_TWO);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let placed = wait_until_placed(&cluster, "hello", 2);
    assert_ne!(placed[0], placed[1], "replicas on distinct hosts");
    let third = cluster
        .hosts
        .iter()
        .find(|host| {
            !placed
                .iter()
                .any(|id| cluster.host(id).gateway == host.gateway)
        })
        .expect("a host without a replica");
    assert!(!runs_on(third, "hello"), "the third host runs no replica");
    assert_eq!(
        third.admin("GET", "/v1/services/hello").json()["state"],
        "elsewhere"
    );
    for _ in 0..1000 {
        let reply = third.get("/hello/");
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "Hello, world!\n");
    }
    // Both replicas took a share (the third gateway balances per request).
    for id in &placed {
        let count = served(cluster.host(id), "hello");
        assert!(count >= 200, "{id} served only {count} of 1000");
    }
    // Every host's series name it, and exactly one host says it leads.
    let mut leaders = 0;
    for (index, host) in cluster.hosts.iter().enumerate() {
        let text = host.metrics_text();
        let id = format!("h{}", index + 1);
        assert!(
            text.contains(&format!(
                "shoal_cluster_hosts{{host=\"{id}\",state=\"up\"}} 3"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("shoal_cluster_placements{{host=\"{id}\"}} 2")),
            "{text}"
        );
        if text.contains(&format!("shoal_cluster_leader{{host=\"{id}\"}} 1")) {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "one leader");
    let served_here = cluster.host(&placed[0]).metrics_text();
    assert!(
        served_here
            .lines()
            .any(|line| line.starts_with("shoal_requests_total{")
                && line.contains(&format!("host=\"{}\"", placed[0]))
                && line.contains("service=\"hello\"")),
        "{served_here}"
    );
    // `shoal hosts` and `shoal ls` say the same.
    let admin = &cluster.hosts[0].admin;
    let (ok, out, err) = shoal_tests::shoal_cli(&["hosts"], &cli_env(admin));
    assert!(ok, "{err}");
    for id in ["h1", "h2", "h3"] {
        assert!(out.contains(id), "{out}");
    }
    assert_eq!(out.matches(" up ").count(), 3, "{out}");
    let (ok, out, err) = shoal_tests::shoal_cli(&["ls"], &cli_env(&third.admin));
    assert!(ok, "{err}");
    assert!(out.contains("elsewhere"), "{out}");
    for id in &placed {
        assert!(out.contains(&format!("{id} (up)")), "{out}");
    }
}

/// Call the greeter with grpcio through `host`'s gateway.
fn greet(host: &shoal_tests::Host, method: &str, request: &str) -> serde_json::Value {
    let target = host.gateway.trim_start_matches("http://");
    python_json("grpc/greeter.py", &[target, method, request])
}

#[test]
fn grpc_calls_cross_hosts_with_their_streams_and_trailers() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let manifest = std::fs::read_to_string(repo_root().join("guests/grpc-greeter/shoal.toml"))
        .expect("manifest");
    let deployed =
        cluster.hosts[0].deploy_with_manifest("greeter", &guest("grpc_greeter"), &manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let placed = wait_until_placed(&cluster, "greeter", 1);
    // Every other host's gateway routes the gRPC service one hop to it.
    for host in cluster
        .hosts
        .iter()
        .filter(|host| host.gateway != cluster.host(&placed[0]).gateway)
    {
        wait_for(
            "the greeter in the route index",
            Duration::from_secs(30),
            || greet(host, "SayHello", r#"{"name": "Ada"}"#)["code"] == "OK",
        );
        let unary = greet(host, "SayHello", r#"{"name": "Ada"}"#);
        assert_eq!(unary["replies"][0], "Hello Ada", "{unary}");
        let streamed = greet(host, "SayHelloStream", r#"{"name": "Ada", "count": 4}"#);
        assert_eq!(streamed["code"], "OK", "{streamed}");
        assert_eq!(
            streamed["replies"].as_array().map(Vec::len),
            Some(4),
            "{streamed}"
        );
        // Statuses sent in trailers after the head cross the hop intact.
        let refused = greet(host, "SayHello", r#"{"name": ""}"#);
        assert_eq!(refused["code"], "INVALID_ARGUMENT", "{refused}");
        assert_eq!(refused["details"], "name must not be empty", "{refused}");
        let unavailable = greet(host, "SayHello", r#"{"name": "unavailable"}"#);
        assert_eq!(unavailable["code"], "UNAVAILABLE", "{unavailable}");
        let unknown = greet(host, "Nope", "{}");
        assert_eq!(unknown["code"], "UNIMPLEMENTED", "{unknown}");
    }
}

#[test]
fn a_killed_hosts_replica_is_replaced_within_the_lease_ttl_and_a_get_load_never_fails() {
    let root = temp_root();
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let deployed = cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), HELLO_TWO);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let placed = wait_until_placed(&cluster, "hello", 2);
    let victim: usize = placed[0][1..].parse::<usize>().expect("hN") - 1;
    let survivor = (0..3)
        .find(|i| *i != victim && !placed.contains(&format!("h{}", i + 1)))
        .expect("the host without a replica");
    let load = Load::start(
        format!("{}/hello/", cluster.hosts[survivor].gateway),
        4,
        Duration::from_millis(2),
        |status, body| (status == 200 && body == "Hello, world!\n").then_some("ok"),
    );
    load.wait_for_more("answers before the kill", "ok", Duration::from_secs(10));
    let killed_at = Instant::now();
    cluster.hosts[victim].crash();
    let ttl = Duration::from_secs(cluster.spec.lease_ttl_s);
    let survivor_host = &cluster.hosts[survivor];
    wait_for(
        "the replacement replica to serve on the host without one",
        ttl + Duration::from_secs(5),
        || runs_on(survivor_host, "hello"),
    );
    let replaced_after = killed_at.elapsed();
    load.wait_for_more(
        "answers after the replacement",
        "ok",
        Duration::from_secs(10),
    );
    let (counts, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "failed requests through a survivor: {failures:?}"
    );
    assert!(counts["ok"] > 0);
    assert!(
        replaced_after <= ttl + Duration::from_secs(5),
        "replaced after {replaced_after:?}"
    );
    let mut now = placements(survivor_host, "hello");
    now.sort();
    assert!(!now.contains(&format!("h{}", victim + 1)), "{now:?}");
    assert_eq!(now.len(), 2, "{now:?}");
    let states = states(survivor_host);
    assert!(
        states.contains(&(format!("h{}", victim + 1), "down".to_owned())),
        "{states:?}"
    );
}

#[test]
fn changes_through_any_host_apply_everywhere_and_a_stale_one_is_refused() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let wasm = guest("hello");
    let everywhere = |text: &str| {
        wait_for(
            &format!("every gateway to answer {text:?}"),
            Duration::from_secs(30),
            || {
                cluster
                    .hosts
                    .iter()
                    .all(|host| host.get("/hello/").body == format!("{text}, world!\n"))
            },
        )
    };
    let first = cluster.hosts[0].deploy_with_manifest("hello", &wasm, &greeting("1", "One", 3));
    assert_eq!(first.status, 201, "{}", first.body);
    everywhere("One");
    let revision = first.json()["revision"].as_i64().expect("a revision");
    let second = cluster.hosts[1].deploy_with_manifest("hello", &wasm, &greeting("2", "Two", 3));
    assert_eq!(second.status, 200, "{}", second.body);
    everywhere("Two");
    // A deploy that read the service before the second one is refused, not applied.
    let stale = cluster.hosts[2].deploy_with_headers(
        "hello",
        &wasm,
        &greeting("3", "Three", 3),
        &[("if-match", &revision.to_string())],
    );
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert!(stale.body.contains("changed while"), "{}", stale.body);
    everywhere("Two");
    // Rollback through the third host applies everywhere.
    let back = cluster.hosts[2].admin("POST", "/v1/services/hello/rollback");
    assert_eq!(back.status, 200, "{}", back.body);
    everywhere("One");
    // A canary at 20 takes about a fifth of the cluster's traffic.
    let canary = cluster.hosts[1].deploy_with_manifest_query(
        "hello",
        &wasm,
        &greeting("4", "Four", 3),
        "canary=20",
    );
    assert_eq!(canary.status, 200, "{}", canary.body);
    wait_for("the canary on every host", Duration::from_secs(30), || {
        cluster.hosts.iter().all(|host| {
            host.running("hello")
                .canary
                .is_some_and(|canary| canary.version == "4")
        })
    });
    let mut four = 0;
    let total = 900;
    for i in 0..total {
        let body = cluster.hosts[i % 3].get("/hello/").body;
        if body == "Four, world!\n" {
            four += 1;
        } else {
            assert_eq!(body, "One, world!\n");
        }
    }
    let share = f64::from(four) / total as f64;
    assert!((0.12..=0.28).contains(&share), "canary share {share}");
}

#[test]
fn draining_a_host_moves_its_replica_with_no_failed_request() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let one = "version = \"1\"\n";
    let deployed = cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), one);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let placed = wait_until_placed(&cluster, "hello", 1);
    let drained = placed[0].clone();
    let through = cluster
        .hosts
        .iter()
        .find(|host| host.gateway != cluster.host(&drained).gateway)
        .expect("another host");
    // A service on every host calls it too, with a method that is never retried once
    // sent: a call that reaches a host the service just left must go elsewhere.
    let caller = cluster.hosts[0].deploy_with_manifest(
        "a",
        &guest("caller"),
        "version = \"1\"\nreplicas = 3\n",
    );
    assert_eq!(caller.status, 201, "{}", caller.body);
    wait_until_placed(&cluster, "a", 3);
    let load = Load::start(
        format!("{}/hello/", through.gateway),
        4,
        Duration::from_millis(2),
        |status, body| (status == 200 && body == "Hello, world!\n").then_some("ok"),
    );
    let calls = Load::start(
        format!(
            "{}/a/call?service=hello&path=/&method=POST",
            through.gateway
        ),
        2,
        Duration::from_millis(2),
        |status, body| (status == 200 && body.starts_with("outcome=ok status=200")).then_some("ok"),
    );
    load.wait_for_more("answers before the drain", "ok", Duration::from_secs(10));
    calls.wait_for_more("calls before the drain", "ok", Duration::from_secs(10));
    let (ok, out, err) =
        shoal_tests::shoal_cli(&["host", "drain", &drained], &cli_env(&through.admin));
    assert!(ok, "{out}{err}");
    wait_for(
        "the drained host to run nothing",
        Duration::from_secs(30),
        || {
            !runs_on(cluster.host(&drained), "hello")
                && placements(through, "hello").len() == 1
                && !placements(through, "hello").contains(&drained)
        },
    );
    load.wait_for_more("answers after the drain", "ok", Duration::from_secs(10));
    calls.wait_for_more("calls after the drain", "ok", Duration::from_secs(10));
    let (_, call_failures) = calls.finish();
    assert!(
        call_failures.is_empty(),
        "{} failed calls during the drain, first: {:?}",
        call_failures.len(),
        &call_failures[..call_failures.len().min(5)]
    );
    let (_, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "failed requests during the drain: {failures:?}"
    );
    assert!(
        states(through).contains(&(drained.clone(), "draining".to_owned())),
        "{:?}",
        states(through)
    );
    // Undrained, it takes replicas again: scaled to three, every host runs one.
    let back = through.admin("DELETE", &format!("/v1/hosts/{drained}/drain"));
    assert_eq!(back.status, 204, "{}", back.body);
    let scaled = through.admin_json("PUT", "/v1/services/hello/scale", r#"{"replicas": 3}"#);
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    wait_until_placed(&cluster, "hello", 3);
}

#[test]
fn with_etcd_down_traffic_flows_changes_are_refused_and_everything_returns() {
    let mut etcd = EtcdServer::start();
    let root = temp_root();
    let cluster = Cluster::start_on(root.path(), etcd.url(), 3, &[]);
    let deployed = cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), HELLO_TWO);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let placed = wait_until_placed(&cluster, "hello", 2);
    etcd.stop();
    let stopped_at = Instant::now();
    // For 10 s without etcd, every gateway keeps serving, and changes say why not.
    let mut refused = false;
    while stopped_at.elapsed() < Duration::from_secs(10) {
        for host in &cluster.hosts {
            let reply = host.get("/hello/");
            assert_eq!(reply.status, 200, "{}: {}", host.gateway, reply.body);
        }
        if !refused {
            let change = cluster.hosts[1].deploy_with_manifest(
                "hello",
                &guest("hello"),
                &greeting("2", "Two", 2),
            );
            assert_eq!(change.status, 503, "{}", change.body);
            assert!(change.body.contains("etcd"), "{}", change.body);
            refused = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    etcd.resume();
    // Leases, host records and registrations come back without a restart.
    cluster.wait_for_up(3);
    wait_for(
        "hello's replicas registered again",
        Duration::from_secs(30),
        || {
            let reply = cluster.hosts[2].admin("GET", "/v1/discovery/hello");
            reply.status == 200
                && placed
                    .iter()
                    .all(|id| reply.body.contains(&format!("\"{id}/hello@1\"")))
        },
    );
    let change =
        cluster.hosts[1].deploy_with_manifest("hello", &guest("hello"), &greeting("2", "Two", 2));
    assert_eq!(change.status, 200, "{}", change.body);
    wait_for(
        "the new version everywhere",
        Duration::from_secs(30),
        || {
            cluster
                .hosts
                .iter()
                .all(|host| host.get("/hello/").body == "Two, world!\n")
        },
    );
}

#[test]
fn a_host_with_another_cluster_token_is_never_admitted() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 2, &[]);
    let deployed = cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), HELLO_TWO);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    wait_until_placed(&cluster, "hello", 2);
    // Same etcd, same prefix, another token.
    let outsider_root = root.path().join("outsider");
    std::fs::create_dir_all(&outsider_root).expect("dir");
    let mut outsider_spec =
        shoal_tests::cluster::ClusterSpec::new(&outsider_root, cluster.spec.etcd.clone());
    outsider_spec.prefix = cluster.spec.prefix.clone();
    let outsider = outsider_spec.start_host(&outsider_root, "h9", &[]);
    // It is seen by nobody, and sees nothing it could serve or forward to.
    for host in &cluster.hosts {
        wait_for(
            "the members' view to settle",
            Duration::from_secs(10),
            || states(host).len() == 2,
        );
    }
    let scaled =
        cluster.hosts[0].admin_json("PUT", "/v1/services/hello/scale", r#"{"replicas": 3}"#);
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    wait_for("a third replica sought", Duration::from_secs(10), || {
        cluster.hosts[0]
            .running("hello")
            .shortfall
            .is_some_and(|why| why.starts_with("2 of 3 replicas placed"))
    });
    assert!(
        placements(&cluster.hosts[0], "hello")
            .iter()
            .all(|id| id != "h9")
    );
    assert!(states(&cluster.hosts[1]).iter().all(|(id, _)| id != "h9"));
    assert_eq!(outsider.get("/hello/").status, 404, "it knows no service");
    assert!(
        cluster.hosts[0]
            .log()
            .contains("not signed with this cluster's token"),
        "the members ignore its records"
    );
    // A request between hosts with a credential not made with the token is refused.
    let forged = cluster.hosts[0].get_with_headers(
        "/",
        &[("x-shoal-peer", "h9:00ff"), ("x-shoal-target", "hello")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
}

#[test]
fn tokens_secrets_and_the_audit_log_are_the_whole_clusters() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let (h1, h2, h3) = (&cluster.hosts[0], &cluster.hosts[1], &cluster.hosts[2]);
    // A deploy token made through h1 works on h3.
    let made = h1.admin_json(
        "POST",
        "/v1/tokens",
        r#"{"name": "ci", "scope": "deploy", "services": ["secret-*"]}"#,
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let token = made.json()["token"].as_str().expect("a secret").to_owned();
    let id = made.json()["id"].as_str().expect("an id").to_owned();
    let whoami = |host: &shoal_tests::Host| {
        host.admin_with_token("GET", "/v1/whoami", Some(&token))
            .status
    };
    wait_for("the token on every host", Duration::from_secs(10), || {
        cluster.hosts.iter().all(|host| whoami(host) == 200)
    });
    // A secret set through h2 is read by the service wherever it runs.
    let set = h2.admin_json(
        "PUT",
        "/v1/secrets/db-password",
        r#"{"value": "correct-horse-battery", "services": ["secret-*"]}"#,
    );
    assert_eq!(set.status, 200, "{}", set.body);
    wait_for("the secret on every host", Duration::from_secs(10), || {
        cluster.hosts.iter().all(|host| {
            host.admin("GET", "/v1/secrets")
                .body
                .contains("db-password")
        })
    });
    let manifest = "version = \"1\"\nreplicas = 3\nsecrets = [\"db-password\"]\n";
    let deployed =
        h3.deploy_multipart_with_token("secret-reader", &guest("secrets"), manifest, &token);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    wait_until_placed(&cluster, "secret-reader", 3);
    for host in &cluster.hosts {
        let reply =
            host.get("/secret-reader/equals?name=db-password&candidate=correct-horse-battery");
        assert_eq!(reply.body, "equal\n", "{}", host.gateway);
        let listed = host.admin("GET", "/v1/secrets");
        assert!(listed.body.contains("db-password"), "{}", listed.body);
        assert!(!listed.body.contains("correct-horse"), "{}", listed.body);
    }
    // Revoked through h2: refused on every host.
    assert_eq!(h2.admin("DELETE", &format!("/v1/tokens/{id}")).status, 204);
    wait_for(
        "the token refused everywhere",
        Duration::from_secs(10),
        || cluster.hosts.iter().all(|host| whoami(host) == 401),
    );
    // Removed through h1: gone everywhere.
    assert_eq!(h1.admin("DELETE", "/v1/secrets/db-password").status, 204);
    wait_for(
        "the secret gone everywhere",
        Duration::from_secs(10),
        || {
            cluster.hosts.iter().all(|host| {
                host.get("/secret-reader/equals?name=db-password&candidate=x")
                    .body
                    == "not-found\n"
            })
        },
    );
    // Any host's audit log shows every host's entries, each naming its host.
    let audit = h3.admin("GET", "/v1/audit?limit=1000").json();
    let entries = audit["entries"].as_array().expect("entries");
    let has = |host: &str, action: &str| {
        entries
            .iter()
            .any(|e| e["host"] == host && e["action"] == action && e["outcome"] == "ok")
    };
    assert!(has("h1", "token.create"), "{audit}");
    assert!(has("h2", "secret.put"), "{audit}");
    assert!(has("h3", "deploy"), "{audit}");
    assert!(has("h2", "token.revoke"), "{audit}");
    assert!(audit.get("unreachable").is_none(), "{audit}");
}

#[test]
fn labels_place_services_and_one_trace_spans_a_call_between_hosts() {
    let root = temp_root();
    let receiver = shoal_tests::otlp::OtlpReceiver::start();
    let spec =
        shoal_tests::cluster::ClusterSpec::new(root.path(), shoal_tests::cluster::etcd_url());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "shoal-cluster-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let front = spec.start_host_with_env(root.path(), "h1", &["--labels", "role=front"], &env);
    let back =
        spec.start_host_with_env(root.path(), "h2", &["--labels", "role=back,disk=ssd"], &env);
    let cluster = Cluster {
        spec,
        hosts: vec![front, back],
        root: root.path().to_path_buf(),
    };
    cluster.wait_for_up(2);
    let on = |role: &str| {
        format!("version = \"1\"\nplacement = {{ labels = {{ role = \"{role}\" }} }}\n")
    };
    assert_eq!(
        cluster.hosts[0]
            .deploy_with_manifest("a", &guest("caller"), &on("front"))
            .status,
        201
    );
    assert_eq!(
        cluster.hosts[0]
            .deploy_with_manifest("c", &guest("hello"), &on("back"))
            .status,
        201
    );
    wait_for(
        "each service on its labelled host",
        Duration::from_secs(30),
        || {
            placements(&cluster.hosts[0], "a") == ["h1"]
                && placements(&cluster.hosts[0], "c") == ["h2"]
                && runs_on(&cluster.hosts[0], "a")
                && runs_on(&cluster.hosts[1], "c")
        },
    );
    // A label no host carries: nowhere to go, and said so.
    let nowhere = cluster.hosts[1].deploy_with_manifest("x", &guest("hello"), &on("none"));
    assert!(matches!(nowhere.status, 200 | 201), "{}", nowhere.body);
    wait_for("the shortfall named", Duration::from_secs(10), || {
        cluster.hosts[1].admin("GET", "/v1/services/x").json()["shortfall"]
            .as_str()
            .is_some_and(|why| why.starts_with("0 of 1"))
    });
    // A calls C on the other host: one trace, C's server span a child of A's call.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let reply = cluster.hosts[0].get_with_headers(
        "/a/call?service=c&path=/echo",
        &[("traceparent", &format!("00-{trace_id}-{client_span}-01"))],
    );
    assert!(reply.body.contains("outcome=ok"), "{}", reply.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let done = ["GET /a", "call c", "GET /c"]
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name));
        if done || std::time::Instant::now() > deadline {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span `{name}` in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (a, call, c) = (find("GET /a"), find("call c"), find("GET /c"));
    assert_eq!(a.parent_span_id, client_span);
    assert_eq!(call.parent_span_id, a.span_id, "the call is A's");
    assert_eq!(
        c.parent_span_id, call.span_id,
        "C, on the other host, continues A's call"
    );
}

#[test]
fn a_deploy_survives_the_loss_of_the_host_that_took_it() {
    let root = temp_root();
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    // On an empty cluster the one replica goes to h1 (least loaded, then by id): the
    // host that takes the deploy runs it, and is killed right after its 2xx.
    let deployed =
        cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), "version = \"1\"\n");
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    assert_eq!(placements(&cluster.hosts[1], "hello"), ["h1"]);
    cluster.hosts[0].crash();
    // The replacement, then a second replica, get the component from the copy the
    // deploy stored on another host before it answered.
    wait_for("a replacement serving", Duration::from_secs(30), || {
        cluster.hosts[1].get("/hello/").status == 200
    });
    let scaled =
        cluster.hosts[1].admin_json("PUT", "/v1/services/hello/scale", r#"{"replicas": 2}"#);
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    wait_for("both survivors running it", Duration::from_secs(30), || {
        runs_on(&cluster.hosts[1], "hello") && runs_on(&cluster.hosts[2], "hello")
    });
    for host in &cluster.hosts[1..] {
        assert_eq!(host.get("/hello/").body, "Hello, world!\n");
    }
}

#[test]
fn a_failing_canary_trips_on_one_host_and_is_rolled_back_on_every_host() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let stable = "version = \"1\"\nreplicas = 3\n";
    assert_eq!(
        cluster.hosts[0]
            .deploy_with_manifest("svc", &guest("faulty"), stable)
            .status,
        201
    );
    let canary = cluster.hosts[1].deploy_with_manifest_query(
        "svc",
        &guest("faulty"),
        "version = \"bad\"\nreplicas = 3\n[config]\nrelease = \"bad\"\n",
        "canary=50&max_error_rate=0.2&min_requests=5&window_ms=10000",
    );
    assert_eq!(canary.status, 200, "{}", canary.body);
    wait_for("the canary on every host", Duration::from_secs(30), || {
        cluster
            .hosts
            .iter()
            .all(|host| host.running("svc").canary.is_some())
    });
    // Failures through one host only: its window trips, and the cluster drops the
    // canary everywhere (a host dropping it alone would get it back from the
    // cluster's desired state).
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.hosts[2].running("svc").canary.is_some() {
        let _ = cluster.hosts[2].get("/svc/trap");
        assert!(
            Instant::now() < deadline,
            "the failing canary was never rolled back"
        );
    }
    wait_for(
        "no canary on any host, for good",
        Duration::from_secs(30),
        || {
            cluster.hosts.iter().all(|host| {
                let view = host.admin("GET", "/v1/services/svc").json();
                view["canary"].is_null() && view["version"] == "1"
            })
        },
    );
    for host in &cluster.hosts {
        assert_eq!(host.get("/svc/ok").body, "ok \n");
    }
    assert!(
        cluster.hosts[2]
            .log()
            .contains("canary rolled back on every host")
    );
}

/// A CA, and a certificate it signs for 127.0.0.1 usable by a server and a client,
/// in `dir` as `name-ca.crt`, `name.crt`, `name.key`.
fn cluster_certificate(dir: &std::path::Path, name: &str) -> [String; 3] {
    let path = |suffix: &str| dir.join(format!("{name}{suffix}")).display().to_string();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let curve = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key, cert, key, csr, ext) = (
        path("-ca.crt"),
        path("-ca.key"),
        path(".crt"),
        path(".key"),
        path(".csr"),
        path(".ext"),
    );
    let subject = format!("/CN={name} cluster CA");
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
    args.extend(curve);
    args.extend(["-keyout", &ca_key, "-out", &ca]);
    openssl(&args);
    let mut args = vec!["req", "-new", "-subj", "/CN=shoal host"];
    args.extend(curve);
    args.extend(["-keyout", &key, "-out", &csr]);
    openssl(&args);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    [ca, cert, key]
}

/// `curl` to `url` with a client certificate (or none); its exit status and output.
fn curl(url: &str, ca: &str, client: Option<(&str, &str)>) -> (i32, String) {
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "--max-time", "10", "--cacert", ca, url]);
    if let Some((cert, key)) = client {
        command.args(["--cert", cert, "--key", key]);
    }
    let output = command.output().expect("curl runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn with_mutual_tls_the_hosts_speak_only_to_certified_peers_on_their_cluster_port() {
    let root = temp_root();
    let [ca, cert, key] = cluster_certificate(root.path(), "cluster");
    let [_, foreign_cert, foreign_key] = cluster_certificate(root.path(), "foreign");
    let tls = [
        "--cluster-tls-cert",
        cert.as_str(),
        "--cluster-tls-key",
        key.as_str(),
        "--cluster-ca",
        ca.as_str(),
        "--cluster-listen",
        "127.0.0.1:0",
    ];
    let cluster = Cluster::start(root.path(), 2, &tls);
    let port = |host: &shoal_tests::Host| {
        host.startup_output
            .iter()
            .find_map(|line| line.strip_prefix("cluster port listening on "))
            .expect("a cluster port")
            .to_owned()
    };
    // Forwarding, component transfer and discovery all go over the cluster port.
    let deployed =
        cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), "version = \"1\"\n");
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    assert_eq!(placements(&cluster.hosts[1], "hello"), ["h1"]);
    let through = cluster.hosts[1].get("/hello/");
    assert_eq!(through.body, "Hello, world!\n", "{}", through.body);
    let scaled =
        cluster.hosts[1].admin_json("PUT", "/v1/services/hello/scale", r#"{"replicas": 2}"#);
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    wait_for(
        "the component fetched over mutual TLS",
        Duration::from_secs(30),
        || runs_on(&cluster.hosts[1], "hello"),
    );
    let discovered = cluster.hosts[1].admin("GET", "/v1/discovery/hello").body;
    assert!(
        discovered.contains(&port(&cluster.hosts[0])["https://".len()..]),
        "{discovered}"
    );
    // gRPC crosses the cluster port too: HTTP/2 chosen by ALPN under mutual TLS.
    let manifest = std::fs::read_to_string(repo_root().join("guests/grpc-greeter/shoal.toml"))
        .expect("manifest");
    let deployed =
        cluster.hosts[0].deploy_with_manifest("greeter", &guest("grpc_greeter"), &manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    wait_until_placed(&cluster, "greeter", 1);
    for host in &cluster.hosts {
        wait_for(
            "gRPC through every gateway",
            Duration::from_secs(30),
            || {
                let streamed = greet(host, "SayHelloStream", r#"{"name": "Ada", "count": 2}"#);
                streamed["code"] == "OK" && streamed["replies"].as_array().map(Vec::len) == Some(2)
            },
        );
    }
    // The public gateway takes no request between hosts any more.
    let forged = cluster.hosts[0].get_with_headers(
        "/",
        &[("x-shoal-peer", "h2:00"), ("x-shoal-target", "hello")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("cluster port"), "{}", forged.body);
    // The cluster port completes a handshake only with the cluster CA's certificate.
    let url = format!("{}/", port(&cluster.hosts[0]));
    let (code, out) = curl(&url, &ca, None);
    assert_ne!(code, 0, "no client certificate: {out}");
    let (code, out) = curl(&url, &ca, Some((&foreign_cert, &foreign_key)));
    assert_ne!(code, 0, "another CA's certificate: {out}");
    let (code, out) = curl(&url, &ca, Some((&cert, &key)));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the cluster's hosts only"), "{out}");
}

#[test]
fn a_canary_failing_a_little_on_every_host_is_judged_on_the_sum() {
    let root = temp_root();
    let cluster = Cluster::start(root.path(), 3, &[]);
    let stable = "version = \"1\"\nreplicas = 3\n";
    assert_eq!(
        cluster.hosts[0]
            .deploy_with_manifest("svc", &guest("faulty"), stable)
            .status,
        201
    );
    // Every request goes to the canary; its rule needs 6 requests in the window.
    let canary = cluster.hosts[1].deploy_with_manifest_query(
        "svc",
        &guest("faulty"),
        "version = \"bad\"\nreplicas = 3\n[config]\nrelease = \"bad\"\n",
        "canary=100&max_error_rate=0.2&min_requests=6&window_ms=60000",
    );
    assert_eq!(canary.status, 200, "{}", canary.body);
    wait_for("the canary on every host", Duration::from_secs(30), || {
        cluster
            .hosts
            .iter()
            .all(|host| host.running("svc").canary.is_some())
    });
    // Two failures on each host: no host sees the 6 its rule needs, the cluster does.
    for host in &cluster.hosts {
        for _ in 0..2 {
            assert_eq!(host.get("/svc/trap").status, 500);
        }
    }
    wait_for(
        "the canary rolled back on every host",
        Duration::from_secs(30),
        || {
            cluster.hosts.iter().all(|host| {
                let view = host.admin("GET", "/v1/services/svc").json();
                view["canary"].is_null() && view["version"] == "1"
            })
        },
    );
    assert!(
        cluster
            .hosts
            .iter()
            .any(|host| host.log().contains("over every host")),
        "the leader judged the sum"
    );
}

#[test]
fn hosts_log_in_to_an_etcd_with_authentication_and_a_wrong_password_stops_the_start() {
    let etcd = EtcdServer::start();
    etcd.enable_auth("etcd-root-password");
    let root = temp_root();
    let password = root.path().join("etcd-password");
    std::fs::write(&password, "etcd-root-password\n").expect("password file");
    let password = password.display().to_string();
    let login = [
        "--etcd-user",
        "root",
        "--etcd-password-file",
        password.as_str(),
    ];
    let cluster = Cluster::start_on(root.path(), etcd.url(), 2, &login);
    let deployed = cluster.hosts[0].deploy_with_manifest("hello", &guest("hello"), HELLO_TWO);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    wait_until_placed(&cluster, "hello", 2);
    // Without the password, or with a wrong one, a host does not start, and says why.
    let wrong = root.path().join("wrong-password");
    std::fs::write(&wrong, "not-it").expect("password file");
    let data = root.path().join("outsider-data");
    let mut args: Vec<String> = cluster.spec.args("h3");
    args.extend(
        [
            "--etcd-user",
            "root",
            "--etcd-password-file",
            &wrong.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        .map(str::to_owned),
    );
    let mut command = vec!["serve".to_owned()];
    command.extend(args);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let (ok, out, err) = shoal_tests::shoal_cli(&command, &[("SHOAL_ADMIN_TOKEN", "t")]);
    assert!(!ok, "started with a wrong etcd password: {out}");
    assert!(err.contains("etcd"), "{err}");
    assert_eq!(states(&cluster.hosts[0]).len(), 2);
}
