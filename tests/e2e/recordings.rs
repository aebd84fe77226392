//! Recorded requests: a service whose manifest says `[debug] record = "failed"` keeps
//! its failed requests (what came in, as the guest read it, what went out, the fault),
//! credentials and the operator's secrets masked; the mode changes live; only a token
//! that may change the service reads them; bad modes are refused.

use shoal_tests::{Host, TOKEN, guest, shoal_cli, temp_root, wait_for};
use std::time::Duration;

fn listing(host: &Host) -> serde_json::Value {
    let reply = host.admin("GET", "/v1/services/svc/recordings");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn token(host: &Host, body: &str) -> String {
    let created = host.admin_json("POST", "/v1/tokens", body);
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["token"].as_str().expect("token").to_owned()
}

#[test]
fn failed_requests_are_recorded_masked_and_read_only_by_who_may_change_the_service() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let secret = "rec-secret-value-42";
    let set = host.admin_json(
        "PUT",
        "/v1/secrets/rec-token",
        &format!(r#"{{"value": "{secret}"}}"#),
    );
    assert!(set.status < 300, "{}", set.body);
    let deployed =
        host.deploy_with_manifest("svc", &guest("faulty"), "[debug]\nrecord = \"failed\"\n");
    assert_eq!(deployed.status, 201, "{}", deployed.body);

    let request = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("{}/svc/trap?x=1", host.gateway))
        .header("authorization", "Bearer client-credential")
        .body(format!("order=7 password={secret}"))
        .expect("request");
    let status = shoal_tests::agent()
        .run(request)
        .map(|response| response.status().as_u16())
        .expect("an answer");
    assert_eq!(status, 500);
    assert_eq!(host.get("/svc/ok").status, 200);

    let mut recorded = serde_json::Value::Null;
    wait_for(
        "the failed request's recording",
        Duration::from_secs(10),
        || {
            recorded = listing(&host);
            recorded["recordings"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    );
    let kept = recorded["recordings"].as_array().expect("recordings");
    assert_eq!(kept.len(), 1, "only the failed request: {recorded}");
    assert_eq!(recorded["record"], "failed");
    let summary = &kept[0];
    assert_eq!(summary["path"], "/trap?x=1", "{summary}");
    assert_eq!(summary["status"], 500, "{summary}");
    assert!(
        summary["fault"]
            .as_str()
            .is_some_and(|fault| fault.starts_with("the service trapped")),
        "{summary}"
    );
    let id = summary["id"].as_str().expect("id");

    let whole = host.admin("GET", &format!("/v1/services/svc/recordings/{id}"));
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert!(!whole.body.contains(secret), "{}", whole.body);
    assert!(!whole.body.contains("client-credential"), "{}", whole.body);
    let whole = whole.json();
    assert_eq!(
        whole["request"]["body"]["text"], "order=7 password=[redacted]",
        "{whole}"
    );
    assert_eq!(whole["request"]["method"], "POST");
    assert_eq!(whole["response"]["status"], 500);
    assert!(
        whole["response"]["body"]["text"]
            .as_str()
            .is_some_and(|body| body.contains(summary["request_id"].as_str().unwrap_or("?"))),
        "{whole}"
    );

    // Who may read them: a token that may change the service, not a read token.
    let read = token(&host, r#"{"name": "viewer", "scope": "read"}"#);
    let mine = token(
        &host,
        r#"{"name": "svc-team", "scope": "deploy", "services": ["svc"]}"#,
    );
    let theirs = token(
        &host,
        r#"{"name": "other-team", "scope": "deploy", "services": ["other"]}"#,
    );
    let path = "/v1/services/svc/recordings";
    assert_eq!(host.admin_with_token("GET", path, Some(&read)).status, 403);
    assert_eq!(
        host.admin_with_token("GET", path, Some(&theirs)).status,
        403
    );
    assert_eq!(host.admin_with_token("GET", path, Some(&mine)).status, 200);

    // Live: every request, through the CLI; then the CLI's listing shows both kinds.
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];
    let (ok, out, err) = shoal_cli(&["record", "svc", "--ratio", "1"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("svc records: 1"), "{out}");
    assert_eq!(host.get("/svc/ok").status, 200);
    wait_for(
        "the answered request's recording",
        Duration::from_secs(10),
        || {
            listing(&host)["recordings"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["path"] == "/ok" && s["status"] == 200))
        },
    );
    let (ok, out, err) = shoal_cli(&["recordings", "svc"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("/trap?x=1") && out.contains("/ok"), "{out}");
    let (ok, out, err) = shoal_cli(&["recordings", "svc", id], &env);
    assert!(ok, "{err}");
    assert!(out.contains("[redacted]"), "{out}");

    // Bad modes are refused and change nothing.
    let bad = host.admin_json(
        "PUT",
        "/v1/services/svc/recording",
        r#"{"record": "sometimes"}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(listing(&host)["record"], "1");
    let refused = host.deploy_with_manifest("other", &guest("faulty"), "[debug]\nrecord = 2.5\n");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("debug.record"), "{}", refused.body);
    // Removing the service forgets them.
    let ring = root.path().join("data/recordings/svc");
    assert!(ring.is_dir(), "{}", ring.display());
    assert_eq!(host.admin("DELETE", "/v1/services/svc").status, 204);
    assert_eq!(host.admin("GET", path).status, 404);
    wait_for(
        "the recordings to be removed",
        Duration::from_secs(10),
        || !ring.exists(),
    );
}

#[test]
fn each_service_keeps_its_newest_recordings_within_the_hosts_bound() {
    let root = temp_root();
    let host = Host::start(root.path(), &["--max-recordings", "2"]);
    let deployed =
        host.deploy_with_manifest("svc", &guest("faulty"), "[debug]\nrecord = \"failed\"\n");
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    for index in 0..5 {
        assert_eq!(host.get(&format!("/svc/trap?n={index}")).status, 500);
        // Each recording is written before the next request, so the ring's order is
        // the requests' order.
        wait_for("the recording", Duration::from_secs(10), || {
            listing(&host)["recordings"]
                .as_array()
                .is_some_and(|r| r.iter().any(|s| s["path"] == format!("/trap?n={index}")))
        });
    }
    let kept = listing(&host);
    let paths: Vec<&str> = kept["recordings"]
        .as_array()
        .expect("recordings")
        .iter()
        .filter_map(|summary| summary["path"].as_str())
        .collect();
    assert_eq!(paths, ["/trap?n=4", "/trap?n=3"], "{kept}");
    assert_eq!(kept["dropped"], 3, "{kept}");
}

#[test]
fn a_secret_the_guest_reads_is_recorded_as_a_placeholder_and_read_live_by_a_replay() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let secret = "guest-read-secret-77";
    let set = host.admin_json(
        "PUT",
        "/v1/secrets/api-key",
        &format!(r#"{{"value": "{secret}"}}"#),
    );
    assert!(set.status < 300, "{}", set.body);
    let deployed = host.deploy_with_manifest(
        "svc",
        &guest("secrets"),
        "secrets = [\"api-key\"]\n[debug]\nrecord = \"failed\"\n",
    );
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    // The guest reads the secret, writes it everywhere, and panics with it.
    assert_eq!(host.get("/svc/leak?name=api-key").status, 500);
    let mut listing = serde_json::Value::Null;
    wait_for("the recording", Duration::from_secs(10), || {
        listing = host.admin("GET", "/v1/services/svc/recordings").json();
        listing["recordings"]
            .as_array()
            .is_some_and(|kept| !kept.is_empty())
    });
    let id = listing["recordings"][0]["id"].as_str().expect("id");
    let whole = host.admin("GET", &format!("/v1/services/svc/recordings/{id}"));
    assert!(!whole.body.contains(secret), "{}", whole.body);
    let whole = whole.json();
    let read = &whole["received"]["calls"][0];
    assert_eq!(read["import"], "secrets.get", "{whole}");
    assert_eq!(read["key"], "api-key", "{whole}");
    assert_eq!(read["result"]["Ok"], "[secret]", "{whole}");
    // The replay reads the secret as it is now: its panic is the recorded one, the
    // value masked in both (a placeholder would have shown instead).
    let replay = host.admin("POST", &format!("/v1/services/svc/recordings/{id}/replay"));
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert!(!replay.body.contains(secret), "{}", replay.body);
    let replay = replay.json();
    assert_eq!(replay["replayed"]["fault"], whole["fault"], "{replay}");
    assert!(
        whole["fault"]
            .as_str()
            .is_some_and(|fault| fault.contains("giving up on [redacted]")),
        "{whole}"
    );
    assert!(
        replay["logs"]
            .as_array()
            .is_some_and(|logs| logs.iter().any(|line| line
                .as_str()
                .is_some_and(|l| l.contains("the secret is [redacted]")))),
        "the replay's own log lines: {replay}"
    );
}
