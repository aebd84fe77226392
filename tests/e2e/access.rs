//! Scoped admin tokens and the audit log: `read`, `deploy` (limited to service
//! patterns) and `admin` tokens, stored hashed, created, listed and revoked over the
//! API and the CLI; every change and every refused attempt in the audit log, which
//! survives `kill -9`.

use shoal_tests::{Host, TOKEN, guest, shoal_cli, temp_root};

fn create(host: &Host, body: &str) -> (String, String) {
    let reply = host.admin_json("POST", "/v1/tokens", body);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let json = reply.json();
    (
        json["id"].as_str().expect("id").to_owned(),
        json["token"].as_str().expect("token").to_owned(),
    )
}

#[test]
fn scoped_tokens_do_what_their_scope_allows_and_nothing_else() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let (_, read) = create(&host, r#"{"name": "dashboard", "scope": "read"}"#);
    let (deploy_id, deploy) = create(
        &host,
        r#"{"name": "ci", "scope": "deploy", "services": ["shop-*"]}"#,
    );
    let (_, admin) = create(&host, r#"{"name": "ops", "scope": "admin"}"#);

    // Listed without secrets.
    let listed = host.admin("GET", "/v1/tokens");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["tokens"].as_array().expect("tokens").len(), 3);
    assert!(!listed.body.contains(&deploy) && !listed.body.contains("hash"));
    assert!(listed.body.contains("shop-*"));
    let on_disk = std::fs::read_to_string(root.path().join("data/tokens.json")).expect("file");
    assert!(!on_disk.contains(&deploy), "stored hashed only");

    // read: reads, nothing else.
    assert_eq!(
        host.admin_with_token("GET", "/v1/services", Some(&read))
            .status,
        200
    );
    let refused = host.deploy_with_token("shop-a", &hello, &read);
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("read"), "{}", refused.body);
    // Refused before its body is read, the connection is closed, not left for reuse.
    let head = host.raw_admin_head(&format!(
        "PUT /v1/services/shop-a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {read}\r\n\
         Content-Type: application/wasm\r\nContent-Length: 3000000\r\n\r\n"
    ));
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(
        host.admin_with_token("GET", "/v1/audit", Some(&read))
            .status,
        403
    );

    // deploy: the services its patterns match, nothing else.
    assert_eq!(
        host.deploy_with_token("shop-a", &hello, &deploy).status,
        201
    );
    let refused = host.deploy_with_token("billing", &hello, &deploy);
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("shop-*"), "{}", refused.body);
    let scale = r#"{"max_concurrency": 4}"#;
    let reply = host.admin_json_with_token("PUT", "/v1/services/shop-a/scale", scale, &deploy);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = host.admin_json_with_token(
        "POST",
        "/v1/tokens",
        r#"{"name": "x", "scope": "admin"}"#,
        &deploy,
    );
    assert_eq!(reply.status, 403, "no token management");
    assert_eq!(
        host.admin_with_token("DELETE", "/v1/external/db", Some(&deploy))
            .status,
        403
    );

    // admin: everything.
    assert_eq!(
        host.admin_with_token("GET", "/v1/audit", Some(&admin))
            .status,
        200
    );
    assert_eq!(
        host.deploy_with_token("billing", &hello, &admin).status,
        201
    );

    // Revoked and unknown tokens are 401.
    assert_eq!(
        host.admin("DELETE", &format!("/v1/tokens/{deploy_id}"))
            .status,
        204
    );
    assert_eq!(
        host.deploy_with_token("shop-b", &hello, &deploy).status,
        401
    );
    assert_eq!(
        host.admin_with_token("GET", "/v1/services", Some("shoal_made_up"))
            .status,
        401
    );
    assert_eq!(
        host.admin("DELETE", &format!("/v1/tokens/{deploy_id}"))
            .status,
        404
    );
    // The operator's token stays an admin token.
    assert_eq!(
        host.admin_with_token("GET", "/v1/tokens", Some(TOKEN))
            .status,
        200
    );
}

#[test]
fn bad_token_requests_get_clear_errors() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    for (body, expect) in [
        (r#"{"name": "x", "scope": "root"}"#, "scope"),
        (r#"{"name": "", "scope": "read"}"#, "token name"),
        (r#"{"name": "a b", "scope": "read"}"#, "token name"),
        (
            r#"{"name": "r", "scope": "read", "services": ["a*"]}"#,
            "deploy",
        ),
        (
            r#"{"name": "d", "scope": "deploy", "services": ["a/b"]}"#,
            "pattern",
        ),
        (
            r#"{"name": "x", "scope": "read", "extra": 1}"#,
            "unknown field",
        ),
        ("not json", "expected"),
    ] {
        let reply = host.admin_json("POST", "/v1/tokens", body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        assert!(reply.body.contains(expect), "{body}: {}", reply.body);
    }
    let huge = format!(r#"{{"name": "{}", "scope": "read"}}"#, "x".repeat(100_000));
    assert_eq!(host.admin_json("POST", "/v1/tokens", &huge).status, 413);
    assert_eq!(
        host.admin("GET", "/v1/tokens").json()["tokens"],
        serde_json::json!([])
    );
    assert_eq!(host.admin("DELETE", "/v1/tokens/tok_nope").status, 404);
}

#[test]
fn every_change_and_refusal_is_audited_and_survives_kill_9() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let (read_id, read) = create(&host, r#"{"name": "viewer", "scope": "read"}"#);
    assert_eq!(host.deploy("hello", &hello).status, 201);
    assert_eq!(host.deploy_with_token("hello", &hello, &read).status, 403);
    assert_eq!(
        host.admin_with_token("GET", "/v1/services", Some("wrong"))
            .status,
        401
    );
    assert_eq!(host.deploy("bad", b"not wasm").status, 400);
    assert_eq!(host.admin("DELETE", "/v1/services/hello").status, 204);
    // Reads with a good token are not audited.
    assert_eq!(host.admin("GET", "/v1/services").status, 200);
    host.crash();

    let host = Host::start(root.path(), &[]);
    let entries = host.admin("GET", "/v1/audit").json()["entries"]
        .as_array()
        .cloned()
        .expect("entries");
    let summary: Vec<(String, String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["target"].as_str().unwrap_or("-").to_owned(),
                e["outcome"].as_str().unwrap_or("").to_owned(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // A change is on record as started before it runs, then with its outcome;
    // a refusal of the token or its scope has no start.
    let expected = [
        ("token.create", "-", "started", 0),
        ("token.create", read_id.as_str(), "ok", 201),
        ("deploy", "hello", "started", 0),
        ("deploy", "hello", "ok", 201),
        ("deploy", "hello", "refused", 403),
        ("read", "-", "refused", 401),
        ("deploy", "bad", "started", 0),
        ("deploy", "bad", "refused", 400),
        ("remove", "hello", "started", 0),
        ("remove", "hello", "ok", 204),
    ];
    let expected: Vec<(String, String, String, u64)> = expected
        .iter()
        .map(|(a, t, o, s)| (a.to_string(), t.to_string(), o.to_string(), *s))
        .collect();
    assert_eq!(summary, expected, "oldest first, across kill -9");
    assert_eq!(entries[3]["token_id"], "operator");
    let digest = entries[3]["digest"].as_str().expect("digest");
    assert_eq!(digest.len(), 64);
    assert_eq!(entries[4]["token_id"], read_id.as_str());
    assert!(entries[4]["reason"].as_str().unwrap_or("").contains("read"));
    assert!(entries[5]["token_id"].is_null());
    assert!(
        entries[7]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not WebAssembly")
    );
    assert!(
        entries
            .iter()
            .all(|e| e["at"].as_str().is_some_and(|at| at.ends_with('Z')))
    );

    // The CLI reads it too.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["audit"], &env);
    assert!(ok, "{err}");
    assert!(
        out.contains("deploy") && out.contains("refused") && out.contains("sha256:"),
        "{out}"
    );
}

#[test]
fn the_cli_manages_tokens() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(
        &[
            "token",
            "create",
            "ci",
            "--scope",
            "deploy",
            "--service",
            "shop-*",
        ],
        &env,
    );
    assert!(ok, "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .expect(name)
    };
    let (id, secret) = (field("id:"), field("token:"));
    assert!(secret.starts_with("shoal_"));
    assert_eq!(
        host.deploy_with_token("shop-x", &guest("hello"), &secret)
            .status,
        201
    );
    let (ok, out, _) = shoal_cli(&["token", "ls"], &env);
    assert!(
        ok && out.contains(&id) && out.contains("shop-*") && !out.contains(&secret),
        "{out}"
    );
    let (ok, _, err) = shoal_cli(&["token", "revoke", &id], &env);
    assert!(ok, "{err}");
    assert_eq!(
        host.deploy_with_token("shop-x", &guest("hello"), &secret)
            .status,
        401
    );
    let (ok, _, err) = shoal_cli(&["token", "create", "x", "--scope", "root"], &env);
    assert!(!ok && err.contains("root"), "{err}");
}

#[test]
fn a_service_is_called_only_by_the_services_its_manifest_allows() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let restricted = "[inbound]\nallowed_callers = [\"orders\", \"shop-*\"]\n";
    let reply = host.deploy_with_manifest("payment", &guest("hello"), restricted);
    assert_eq!(reply.status, 201, "{}", reply.body);
    for name in ["orders", "shop-web", "shipping"] {
        assert_eq!(host.deploy(name, &guest("caller")).status, 201);
    }
    assert_eq!(host.deploy("web", &guest("plain_http")).status, 201);

    for allowed in ["orders", "shop-web"] {
        let reply = host.get(&format!("/{allowed}/call?service=payment&path=/"));
        assert!(
            reply.body.starts_with("outcome=ok status=200"),
            "{allowed}: {}",
            reply.body
        );
    }
    let denied = host.get("/shipping/call?service=payment&path=/");
    assert!(
        denied.body.starts_with("outcome=error kind=denied"),
        "{}",
        denied.body
    );
    assert!(
        denied
            .body
            .contains("does not accept calls from `shipping`"),
        "{}",
        denied.body
    );
    // Plain wasi:http to the service takes the same path and is denied too.
    let plain = host.get("/web/proxy?url=http://payment/");
    assert!(plain.body.contains("HttpRequestDenied"), "{}", plain.body);
    // Clients through the gateway are not service calls.
    assert_eq!(host.get("/payment/").status, 200);
    // Denied calls are counted, and never reach the target.
    let metrics = host.admin("GET", "/metrics").body;
    let line =
        "shoal_outbound_calls_total{caller=\"shipping\",outcome=\"denied\",target=\"payment\"} 1";
    assert!(metrics.contains(line), "{line} in\n{metrics}");
    let served = host.admin("GET", "/v1/services/payment").json()["requests"].as_u64();
    assert_eq!(served, Some(3), "two allowed calls and one gateway request");

    // A redeploy that opens the service lets everyone in.
    assert_eq!(
        host.deploy_with_manifest("payment", &guest("hello"), "")
            .status,
        200
    );
    let reply = host.get("/shipping/call?service=payment&path=/");
    assert!(reply.body.starts_with("outcome=ok"), "{}", reply.body);

    // Bad patterns name the field.
    let bad = "[inbound]\nallowed_callers = [\"a/b\"]\n";
    let reply = host.deploy_with_manifest("vault", &guest("hello"), bad);
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("inbound.allowed_callers[0]"),
        "{}",
        reply.body
    );
}

#[test]
fn an_anonymous_flood_hides_no_insider_and_tampering_shows() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    assert_eq!(host.deploy("hello", &hello).status, 201);
    let (read_id, read) = create(&host, r#"{"name": "insider", "scope": "read"}"#);
    // Far more anonymous refusals than the log takes (8 clients at once), with one
    // refused insider in the middle of them.
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..100 {
                    let refused =
                        host.admin_with_token("DELETE", "/v1/services/hello", Some("guess"));
                    assert_eq!(refused.status, 401);
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(host.deploy_with_token("hello", &hello, &read).status, 403);
    });
    // One more entry carries the count of what was left out last.
    assert_eq!(host.admin("DELETE", "/v1/services/nothing").status, 404);
    let entries = host.admin("GET", "/v1/audit?limit=10000").json()["entries"]
        .as_array()
        .cloned()
        .expect("entries");
    assert!(
        entries
            .iter()
            .any(|e| e["token_id"] == read_id.as_str() && e["outcome"] == "refused"),
        "the insider's refused deploy is on record"
    );
    // Every anonymous refusal is either on record or counted.
    let logged = entries
        .iter()
        .filter(|e| e["token_id"].is_null() && e["outcome"] == "refused")
        .count() as u64;
    let counted: u64 = entries
        .iter()
        .filter_map(|e| e["anonymous_not_logged"].as_u64())
        .sum();
    assert_eq!(logged + counted, 800, "{logged} logged, {counted} counted");

    // The chain is intact, through the API and on the files.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["audit", "verify"], &env);
    assert!(ok, "{out}{err}");
    assert!(out.contains("the chain is intact"), "{out}");
    host.crash();
    let data = root.path().join("data");
    let data_arg = data.to_str().expect("a path");
    let (ok, out, err) = shoal_cli(
        &["audit", "verify", "--offline", "--data-dir", data_arg],
        &[],
    );
    assert!(ok, "{out}{err}");

    // Someone with the files rewrites who deployed `hello`: the chain shows it.
    let path = data.join("audit.log");
    let text = std::fs::read_to_string(&path).expect("the audit log");
    let forged = text.replacen("\"token_id\":\"operator\"", "\"token_id\":\"nobody\"", 1);
    assert_ne!(forged, text);
    std::fs::write(&path, forged).expect("tamper");
    let (ok, out, _) = shoal_cli(
        &["audit", "verify", "--offline", "--data-dir", data_arg],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("was edited"), "{out}");
}

#[test]
fn a_change_the_audit_log_cannot_record_is_not_made() {
    let root = temp_root();
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // Every write to the audit log fails, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", data.join("audit.log")).expect("link");
    let host = Host::start(root.path(), &[]);
    let refused = host.deploy("hello", &guest("hello"));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("audit log cannot be written"),
        "{}",
        refused.body
    );
    assert_eq!(host.admin("GET", "/v1/services/hello").status, 404);
    assert_eq!(host.admin("GET", "/v1/services").status, 200, "reads go on");
}
