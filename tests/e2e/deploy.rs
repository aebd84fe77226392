//! Deploy, call, list, show and remove services.

use shoal_tests::{Host, guest, temp_root};

#[test]
fn sdk_service_with_manifest_serves_config_and_logs_tagged_lines() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "version = \"1.2.3\"\n[config]\ngreeting = \"Howdy\"\nrelease = \"r1\"\n";
    let deployed = host.deploy_with_manifest("hello", &guest("hello"), manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let view = deployed.service();
    assert_eq!(view.name, "hello");
    assert_eq!(view.version, "1.2.3");
    assert_eq!(view.route, "/hello");
    assert_eq!(view.digest.len(), 64);
    assert_eq!(view.config_keys, ["greeting", "release"]);

    let reply = host.get("/hello/?name=Ann");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "Howdy, Ann!\n");
    assert_eq!(reply.header("x-hello-release"), Some("r1"));
    let request_id = reply.header("x-request-id").expect("request id").to_owned();
    assert_eq!(request_id.len(), 32);

    // The guest's log line carries service, version and the request id.
    shoal_tests::wait_for(
        "the guest's log line",
        std::time::Duration::from_secs(10),
        || host.log().contains(&request_id),
    );
    let log = host.log();
    let line = log
        .lines()
        .find(|line| line.contains("greeted") && line.contains(&request_id))
        .unwrap_or_else(|| panic!("no tagged guest log line in:\n{log}"));
    assert!(line.contains("service=\"hello\""), "{line}");
    assert!(line.contains("version=\"1.2.3\""), "{line}");
    assert!(
        line.contains("name=\\\"Ann\\\"") || line.contains("name=\"Ann\""),
        "{line}"
    );

    let config = host.get("/hello/config");
    assert_eq!(config.body, "greeting=Howdy\nrelease=r1\n");
}

#[test]
fn guest_sees_method_path_query_headers_and_body_without_the_route_prefix() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let reply = host.post("/hello/echo?a=1&b=two", "payload bytes");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("method: POST\n"), "{}", reply.body);
    assert!(reply.body.contains("path: /echo\n"), "{}", reply.body);
    assert!(reply.body.contains("query: a=1&b=two\n"), "{}", reply.body);
    assert!(
        reply.body.contains("header x-forwarded-prefix: /hello\n"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("body: payload bytes\n"),
        "{}",
        reply.body
    );
    // A client's own request id is passed to the guest and returned.
    let agent = shoal_tests::agent();
    let mut response = agent
        .get(format!("{}/hello/echo", host.gateway))
        .header("x-request-id", "client-id-42")
        .call()
        .expect("call");
    assert_eq!(response.headers()["x-request-id"], "client-id-42");
    let body = response.body_mut().read_to_string().expect("body");
    assert!(body.contains("header x-request-id: client-id-42"), "{body}");
}

#[test]
fn plain_wasi_http_component_runs_unchanged_and_streams() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let deployed = host.deploy("plain", &guest("plain_http"));
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let reply = host.get("/plain/some/path?x=1");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "plain wasi:http here\npath: /some/path?x=1\n");
    assert_eq!(host.get("/plain/missing").status, 404);
    // A body of many chunks, more than the host buffers: the guest writes each one as
    // the previous leaves, reuse or not.
    let long: String = "abcdefgh/".repeat(5_000);
    let manifest = "[limits]\ninstance_reuse = 4\n";
    assert_eq!(
        host.deploy_with_manifest("plain-reuse", &guest("plain_http"), manifest)
            .status,
        201
    );
    for service in ["plain", "plain-reuse", "plain-reuse", "plain-reuse"] {
        let reply = host.get(&format!("/{service}/{long}"));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, format!("plain wasi:http here\npath: /{long}\n"));
    }
}

#[test]
fn custom_route_list_show_and_delete() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "route = \"/api/greeter\"\n";
    assert_eq!(
        host.deploy_with_manifest("hello", &guest("hello"), manifest)
            .status,
        201
    );
    assert_eq!(host.deploy("plain", &guest("plain_http")).status, 201);
    assert_eq!(host.get("/api/greeter/").body, "Hello, world!\n");
    assert_eq!(host.get("/api/greeter").body, "Hello, world!\n");
    // The default route is replaced by the manifest's.
    assert_eq!(host.get("/hello/").status, 404);

    let listed = host.admin("GET", "/v1/services").json();
    let names: Vec<&str> = listed["services"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["hello", "plain"]);

    let shown = host.admin("GET", "/v1/services/hello");
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json()["route"], "/api/greeter");
    assert_eq!(shown.json()["state"], "running");
    assert!(
        shown.json()["deployed_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // A second service may not take a route that is already in use.
    let conflict = host.deploy_with_manifest("other", &guest("hello"), manifest);
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(conflict.body.contains("hello"), "{}", conflict.body);

    assert_eq!(host.admin("DELETE", "/v1/services/hello").status, 204);
    assert_eq!(host.get("/api/greeter/").status, 404);
    assert_eq!(host.admin("GET", "/v1/services/hello").status, 404);
    assert_eq!(host.admin("DELETE", "/v1/services/hello").status, 404);
    assert_eq!(host.get("/plain/").status, 200);
}

#[test]
fn a_component_beyond_the_instance_pool_is_refused_with_the_limit_to_raise() {
    let root = temp_root();
    let host = Host::start(
        root.path(),
        &[
            "--max-memory-mb",
            "1",
            "--default-memory-mb",
            "1",
            "--max-instances",
            "8",
        ],
    );
    let reply = host.deploy("hello", &guest("hello"));
    assert_eq!(reply.status, 400, "{}", reply.body);
    for part in [
        "does not fit this host's instance pool",
        "memory has a minimum byte size",
        "--max-memory-mb",
    ] {
        assert!(reply.body.contains(part), "{part}: {}", reply.body);
    }
    assert_eq!(host.admin("GET", "/readyz").status, 200, "the host is fine");
    assert_eq!(host.get("/hello/").status, 404, "nothing was deployed");

    let root = temp_root();
    let host = Host::start(root.path(), &["--max-table-elements", "10"]);
    let reply = host.deploy("hello", &guest("hello"));
    assert_eq!(reply.status, 400, "{}", reply.body);
    for part in ["minimum element size", "--max-table-elements"] {
        assert!(reply.body.contains(part), "{part}: {}", reply.body);
    }
}

/// Mappings of the host's compiled-code files (`*.cwasm`) and its open store files.
fn code_mappings_and_open_stores(pid: u32) -> (usize, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mappings = maps.lines().filter(|line| line.ends_with(".cwasm")).count();
    let stores = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.contains("/stores/") && target.ends_with(".sqlite3")
        })
        .count();
    (mappings, stores)
}

#[test]
fn services_of_the_same_bytes_share_code_and_idle_ones_hold_no_store_connection() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let counter = guest("counter");
    assert_eq!(host.deploy("c0", &counter).status, 201);
    let (one, stores) = code_mappings_and_open_stores(host.pid());
    assert!(one > 0, "the code is mapped from the compile cache");
    assert_eq!(
        stores, 0,
        "a service that never used its store holds no connection"
    );
    for index in 1..30 {
        assert_eq!(host.deploy(&format!("c{index}"), &counter).status, 201);
    }
    let (thirty, stores) = code_mappings_and_open_stores(host.pid());
    assert_eq!(
        thirty, one,
        "thirty services of the same bytes map their code once"
    );
    assert_eq!(stores, 0);
    // Used, a store opens; each service still reads only its own.
    let increment =
        |service: &str| host.send_bytes("POST", &format!("/{service}/increment?key=n"), b"");
    assert_eq!(increment("c3"), (200, "1\n".to_owned()));
    assert_eq!(increment("c3"), (200, "2\n".to_owned()));
    assert_eq!(increment("c4"), (200, "1\n".to_owned()));
    let (_, stores) = code_mappings_and_open_stores(host.pid());
    assert_eq!(stores, 2, "the two stores in use are open");
    // The code outlives the removal of the service it was loaded for.
    assert_eq!(host.admin("DELETE", "/v1/services/c0").status, 204);
    assert_eq!(increment("c5"), (200, "1\n".to_owned()));
}

#[test]
fn the_admin_api_documents_itself_and_answers_in_its_documented_types() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    // Every answer reads as the shared types the document is derived from.
    let list: shoal_api::services::ServiceList =
        serde_json::from_str(&host.admin("GET", "/v1/services").body).expect("a service list");
    assert_eq!(list.services.len(), 1);
    assert_eq!(list.services[0].name(), "hello");
    let scaled = host.admin_json(
        "PUT",
        "/v1/services/hello/scale",
        r#"{"max_concurrency": 3}"#,
    );
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    assert_eq!(scaled.service().limits.max_concurrency, 3);
    let refused = host.admin_json("PUT", "/v1/services/hello/scale", r#"{"max": 3}"#);
    assert_eq!(refused.status, 400);
    let error: shoal_api::ErrorBody = serde_json::from_str(&refused.body).expect("an error body");
    assert!(error.error.contains("unknown field"), "{}", error.error);
    let events: shoal_api::events::EventsView =
        serde_json::from_str(&host.admin("GET", "/v1/events").body).expect("the events view");
    assert_eq!(events.pending, 0);
    let registered = host.admin_json(
        "PUT",
        "/v1/external/legacy",
        r#"{"endpoints": ["127.0.0.1:9"]}"#,
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    let external: shoal_api::external::ExternalList =
        serde_json::from_str(&host.admin("GET", "/v1/external").body).expect("external list");
    assert_eq!(external.external[0].spec.endpoints, ["127.0.0.1:9"]);
    let discovered: shoal_api::external::Discovery =
        serde_json::from_str(&host.admin("GET", "/v1/discovery/hello").body).expect("discovery");
    assert_eq!(
        discovered.instances[0].endpoint,
        shoal_api::external::Endpoint::Local
    );
    let created = host.admin_json(
        "POST",
        "/v1/tokens",
        r#"{"name": "ci", "scope": "deploy", "services": ["hello"]}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let created: shoal_api::access::CreatedToken =
        serde_json::from_str(&created.body).expect("a created token");
    assert_eq!(created.info.scope, shoal_api::access::Scope::Deploy);
    let whoami: shoal_api::access::WhoAmI = serde_json::from_str(
        &host
            .admin_with_token("GET", "/v1/whoami", Some(&created.token))
            .body,
    )
    .expect("whoami");
    assert_eq!(whoami.token_id, created.info.id);
    let audit: shoal_api::access::AuditLog =
        serde_json::from_str(&host.admin("GET", "/v1/audit").body).expect("the audit log");
    assert!(
        audit.entries.iter().any(
            |entry| entry.action == "deploy" && entry.outcome == shoal_api::access::Outcome::Ok
        ),
        "{audit:?}"
    );

    // The document: OpenAPI 3.1, behind the token like the rest of /v1.
    assert_eq!(
        host.admin_with_token("GET", "/v1/openapi.json", None)
            .status,
        401
    );
    let document = host.admin("GET", "/v1/openapi.json");
    assert_eq!(document.status, 200, "{}", document.body);
    let document = document.json();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    for path in ["/v1/services/{name}", "/v1/external/{name}", "/v1/tokens"] {
        assert!(
            document["paths"][path].is_object(),
            "{path} is not documented"
        );
    }
    assert!(
        document["components"]["schemas"]["RunningService"]["properties"]["limits"].is_object()
    );
    assert_eq!(
        document["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );
}
