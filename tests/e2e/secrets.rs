//! Secrets: set through the admin API (sealed at rest), from the host's environment
//! and from a directory; read by the services that name them and are granted them;
//! masked in everything else the host writes.

use shoal_tests::otlp::OtlpReceiver;
use shoal_tests::{Host, TOKEN, guest, shoal_cli, temp_root, wait_for};
use std::path::Path;
use std::time::Duration;

const CANARY: &str = "canary-8c1f3a9e-db-password";
const ROTATED: &str = "rotated-77d2-db-password";
const FROM_ENV: &str = "env-canary-55aa77";
const FROM_FILE: &str = "file-canary-19bf02";
const MANIFEST: &str = "secrets = [\"db-password\", \"env-token\", \"mounted-key\", \"missing\"]\n";

fn start(root: &Path, receiver: &OtlpReceiver) -> Host {
    let mounted = root.join("mounted");
    let mounted = mounted.to_string_lossy().into_owned();
    Host::start_with_env(
        &root.join("data"),
        &root.join("host.log"),
        &["--secrets-dir", &mounted],
        &[
            ("SHOAL_ADMIN_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("SHOAL_SECRET_ENV_TOKEN", FROM_ENV),
        ],
    )
}

/// What the guest says about secret `name` compared with `candidate`.
fn compare(host: &Host, service: &str, name: &str, candidate: &str) -> (u16, String) {
    let reply = host.get(&format!(
        "/{service}/equals?name={name}&candidate={candidate}"
    ));
    (reply.status, reply.body.trim().to_owned())
}

/// Every file under `dir`, as text.
fn all_files(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            found.push((path.display().to_string(), text));
        }
    }
    found
}

#[test]
fn a_canary_secret_reaches_its_service_and_appears_nowhere_else() {
    let root = temp_root();
    std::fs::create_dir(root.path().join("mounted")).expect("mkdir");
    std::fs::write(
        root.path().join("mounted/mounted-key"),
        format!("{FROM_FILE}\n"),
    )
    .expect("write");
    let receiver = OtlpReceiver::start();
    let mut host = start(root.path(), &receiver);

    let body = format!(r#"{{"value": "{CANARY}", "services": ["vault-*"]}}"#);
    let reply = host.admin_json("PUT", "/v1/secrets/db-password", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!reply.body.contains(CANARY), "{}", reply.body);
    let secret = guest("secrets");
    for name in ["vault-a", "other"] {
        let reply = host.deploy_with_manifest(name, &secret, MANIFEST);
        assert_eq!(reply.status, 201, "{}", reply.body);
    }

    // Each source reaches a service that names it; refusals are typed.
    assert_eq!(
        compare(&host, "vault-a", "db-password", CANARY),
        (200, "equal".into())
    );
    assert_eq!(
        compare(&host, "vault-a", "db-password", "guess"),
        (200, "different".into())
    );
    assert_eq!(
        compare(&host, "vault-a", "env-token", FROM_ENV),
        (200, "equal".into())
    );
    assert_eq!(
        compare(&host, "vault-a", "mounted-key", FROM_FILE),
        (200, "equal".into())
    );
    assert_eq!(
        compare(&host, "other", "db-password", CANARY),
        (403, "denied".into())
    );
    assert_eq!(
        compare(&host, "other", "env-token", FROM_ENV),
        (200, "equal".into())
    );
    assert_eq!(
        compare(&host, "vault-a", "missing", "x"),
        (403, "not-found".into())
    );
    assert_eq!(
        compare(&host, "vault-a", "undeclared", "x"),
        (403, "not-declared".into())
    );
    let shown = host.admin("GET", "/v1/services/vault-a").json();
    assert_eq!(shown["secrets"]["db-password"], "available");
    assert_eq!(shown["secrets"]["missing"], "missing");

    // The guest writes the values everywhere it can; the host masks each.
    for name in ["db-password", "env-token", "mounted-key"] {
        let leak = host.get(&format!("/vault-a/leak?name={name}"));
        assert_eq!(leak.status, 500, "{}", leak.body);
    }
    wait_for("the guest's spans", Duration::from_secs(30), || {
        receiver
            .spans()
            .iter()
            .filter(|s| s.name.starts_with("span "))
            .count()
            >= 3
    });
    wait_for(
        "the guest's lines in the log",
        Duration::from_secs(10),
        || host.log().matches("giving up on [redacted]").count() >= 3,
    );
    let log = host.log();
    for masked in [
        "the secret is [redacted]",
        "secret=\"[redacted]\"",
        "stdout: [redacted]",
        "stderr: [redacted]",
    ] {
        assert!(log.contains(masked), "`{masked}` missing from the log");
    }
    let spans: Vec<String> = receiver.spans().into_iter().map(|s| s.everything).collect();
    assert!(spans.iter().any(|s| s.contains("span [redacted]")));
    assert!(spans.iter().any(|s| s.contains("failed with [redacted]")));
    let metrics = host.metrics_text();
    assert!(
        metrics.contains("secret=\"[redacted]\""),
        "the label is masked"
    );

    // Bad input gets a clear error that never quotes the value.
    let cases = [
        ("application/json", r#"{"value": "short"}"#, 400),
        (
            "application/json",
            r#"{"value": "canary-8c1f3a9e-x", "services": "one"}"#,
            400,
        ),
        (
            "application/json",
            r#"{"value": "canary-8c1f3a9e-x", "extra": 1}"#,
            400,
        ),
        ("text/plain", "canary-8c1f3a9e-envy", 409),
    ];
    for (content_type, body, status) in cases {
        let path = if status == 409 {
            "/v1/secrets/env-token"
        } else {
            "/v1/secrets/db-password"
        };
        let reply = host.admin_body("PUT", path, content_type, body.as_bytes());
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(!reply.body.contains("canary-8c1f3a9e"), "{}", reply.body);
    }
    let reply = host.admin_body(
        "PUT",
        "/v1/secrets/bin",
        "application/octet-stream",
        &[0xff; 16],
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = host.admin_body(
        "PUT",
        "/v1/secrets/Bad_Name",
        "text/plain",
        b"long-enough-1",
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(host.admin("DELETE", "/v1/secrets/none").status, 404);
    assert_eq!(
        compare(&host, "vault-a", "db-password", CANARY),
        (200, "equal".into())
    );

    // Rotation through the API (a raw body) and through the directory, no redeploy.
    let reply = host.admin_body(
        "PUT",
        "/v1/secrets/db-password?services=vault-*",
        "text/plain",
        ROTATED.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        compare(&host, "vault-a", "db-password", ROTATED),
        (200, "equal".into())
    );
    std::fs::write(
        root.path().join("mounted/mounted-key"),
        "file-canary-rotated-3",
    )
    .expect("rotate");
    wait_for("the rotated file", Duration::from_secs(10), || {
        compare(&host, "vault-a", "mounted-key", "file-canary-rotated-3").1 == "equal"
    });

    // Listed without values; the audit log names the changes, not the values.
    let listed = host.admin("GET", "/v1/secrets");
    assert_eq!(listed.status, 200);
    let names: Vec<String> = listed.json()["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["name"].as_str().unwrap_or(""),
                s["source"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        names,
        ["db-password:api", "env-token:env", "mounted-key:file"]
    );
    let audit = host.admin("GET", "/v1/audit").json();
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["target"] == "db-password" && e["outcome"] != "started")
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["secret.put"; 5]);

    // Nowhere else: listings, audit, metrics, the log, spans, the data directory.
    let mut places = vec![
        (
            "services".to_owned(),
            host.admin("GET", "/v1/services").body,
        ),
        (
            "service".to_owned(),
            host.admin("GET", "/v1/services/vault-a").body,
        ),
        ("secrets".to_owned(), listed.body.clone()),
        ("audit".to_owned(), host.admin("GET", "/v1/audit").body),
        ("metrics".to_owned(), metrics),
        ("log".to_owned(), host.log()),
    ];
    places.extend(spans.into_iter().map(|span| ("span".to_owned(), span)));
    places.extend(all_files(&root.path().join("data")));
    for (place, text) in &places {
        for value in [CANARY, ROTATED, FROM_ENV, FROM_FILE] {
            assert!(!text.contains(value), "a secret value is in {place}");
        }
    }

    // Sealed values survive kill -9; removal makes them unreadable.
    host.crash();
    let host = start(root.path(), &receiver);
    wait_for("the service restored", Duration::from_secs(30), || {
        host.get("/vault-a/equals?name=db-password&candidate=x")
            .status
            == 200
    });
    assert_eq!(
        compare(&host, "vault-a", "db-password", ROTATED),
        (200, "equal".into())
    );
    assert_eq!(host.admin("DELETE", "/v1/secrets/db-password").status, 204);
    assert_eq!(
        compare(&host, "vault-a", "db-password", ROTATED),
        (403, "not-found".into())
    );
}

#[test]
fn only_admin_tokens_manage_secrets() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let create = |scope: &str, services: &str| {
        let body = format!(r#"{{"name": "{scope}", "scope": "{scope}"{services}}}"#);
        let reply = host.admin_json("POST", "/v1/tokens", &body);
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["token"].as_str().expect("token").to_owned()
    };
    let read = create("read", "");
    let deploy = create("deploy", r#", "services": ["*"]"#);
    let body = r#"{"value": "canary-8c1f3a9e-tokens"}"#;
    for token in [&read, &deploy] {
        let reply = host.admin_json_with_token("PUT", "/v1/secrets/x", body, token);
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(
            host.admin_with_token("GET", "/v1/secrets", Some(token))
                .status,
            403
        );
    }
    let reply = host.admin_json_with_token("PUT", "/v1/secrets/x", body, "wrong");
    assert_eq!(reply.status, 401);
    assert_eq!(
        host.admin("GET", "/v1/secrets").json()["secrets"],
        serde_json::json!([])
    );
    assert_eq!(host.admin_json("PUT", "/v1/secrets/x", body).status, 200);

    // A deploy token cannot read a secret by deploying a service that names it: only
    // one the operator granted to that service by pattern may be named.
    let granted = r#"{"value": "canary-8c1f3a9e-granted", "services": ["shop-*"]}"#;
    assert_eq!(host.admin_json("PUT", "/v1/secrets/y", granted).status, 200);
    let secret = guest("secrets");
    let deploy_with = |name: &str, manifest: &str, token: &str| {
        host.deploy_multipart_with_token(name, &secret, manifest, token)
    };
    let refused = deploy_with("shop-a", "secrets = [\"x\"]\n", &deploy);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("every service"), "{}", refused.body);
    let refused = deploy_with("shop-a", "secrets = [\"unset\"]\n", &deploy);
    assert_eq!(refused.status, 403, "{}", refused.body);
    let allowed = deploy_with("shop-a", "secrets = [\"y\"]\n", &deploy);
    assert_eq!(allowed.status, 201, "{}", allowed.body);
    assert_eq!(
        host.get("/shop-a/equals?name=y&candidate=canary-8c1f3a9e-granted")
            .body
            .trim(),
        "equal"
    );
    let by_admin = deploy_with("shop-b", "secrets = [\"x\"]\n", TOKEN);
    assert_eq!(by_admin.status, 201, "{}", by_admin.body);

    // The CLI reads the value from a file (or standard input), never from argv.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let file = root.path().join("value.txt");
    std::fs::write(&file, "canary-8c1f3a9e-cli\n").expect("write");
    let file = file.to_string_lossy().into_owned();
    let (ok, out, err) = shoal_cli(
        &[
            "secret",
            "set",
            "cli-one",
            "--from-file",
            &file,
            "--service",
            "shop-*",
        ],
        &env,
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = shoal_cli(&["secret", "ls"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("cli-one") && out.contains("shop-*"), "{out}");
    assert!(!out.contains("canary-8c1f3a9e"), "{out}");
    let (ok, _, err) = shoal_cli(&["secret", "rm", "cli-one"], &env);
    assert!(ok, "{err}");
    let (ok, _, err) = shoal_cli(&["secret", "rm", "cli-one"], &env);
    assert!(!ok && err.contains("no secret named `cli-one`"), "{err}");
}
