//! Data an operator cannot lose: damaged blobs, services that fail to restore, and
//! route ownership across restarts.

use shoal_tests::{Host, guest, temp_root};

fn flip_a_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).expect("read blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(path, bytes).expect("write blob");
}

#[test]
fn a_damaged_blob_leaves_the_service_visible_recoverable_and_repairable() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    let v1 = guest("faulty");
    let v2 = guest("hello");
    assert_eq!(
        host.deploy_with_manifest("svc", &v1, "version = \"1\"\n")
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("svc", &v2, "version = \"2\"\n")
            .status,
        200
    );
    let digest = host.admin("GET", "/v1/services/svc").json()["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    host.crash();
    flip_a_byte(
        &root
            .path()
            .join("data/blobs")
            .join(format!("{digest}.wasm")),
    );

    // Restarted, the service is listed as failed with the reason and its history.
    let mut host = Host::start(root.path(), &[]);
    let listed = host.admin("GET", "/v1/services").json();
    let services = listed["services"].as_array().expect("services").clone();
    assert_eq!(services.len(), 1, "{listed}");
    assert_eq!(services[0]["state"], "failed", "{listed}");
    assert!(
        services[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("corrupt"),
        "{listed}"
    );
    assert_eq!(services[0]["history"][0]["version"], "1", "{listed}");
    assert_eq!(host.get("/svc/").status, 404);

    // It can be rolled back to the earlier version...
    let rolled = host.admin("POST", "/v1/services/svc/rollback");
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    assert_eq!(host.get("/svc/ok").status, 200);
    // ... and redeploying the same bytes rewrites the damaged blob.
    assert_eq!(
        host.deploy_with_manifest("svc", &v2, "version = \"2\"\n")
            .status,
        200
    );
    host.crash();
    let host = Host::start(root.path(), &[]);
    let view = host.admin("GET", "/v1/services/svc").json();
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["version"], "2", "{view}");
    assert_eq!(host.get("/svc/").body, "Hello, world!\n");
}

#[test]
fn a_failed_service_can_be_deleted_or_redeployed_and_keeps_its_history() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(
        host.deploy_with_manifest("a", &guest("faulty"), "version = \"1\"\n")
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("a", &guest("hello"), "version = \"2\"\n")
            .status,
        200
    );
    assert_eq!(host.deploy("b", &guest("hello")).status, 201);
    let digest_a = host.admin("GET", "/v1/services/a").json()["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let digest_b = host.admin("GET", "/v1/services/b").json()["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    assert_eq!(digest_a, digest_b, "same hello bytes");
    host.crash();
    flip_a_byte(
        &root
            .path()
            .join("data/blobs")
            .join(format!("{digest_a}.wasm")),
    );
    let host = Host::start(root.path(), &[]);
    assert_eq!(
        host.admin("GET", "/v1/services/b").json()["state"],
        "failed"
    );
    // Deleting a failed service works and sticks.
    assert_eq!(host.admin("DELETE", "/v1/services/b").status, 204);
    assert_eq!(host.admin("GET", "/v1/services/b").status, 404);
    // Redeploying a failed service keeps its history.
    let redeployed = host.deploy_with_manifest("a", &guest("hello"), "version = \"3\"\n");
    assert_eq!(redeployed.status, 200, "{}", redeployed.body);
    let view = host.admin("GET", "/v1/services/a").json();
    let history: Vec<&str> = view["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(history, ["2", "1"], "{view}");
}

#[test]
fn two_records_claiming_one_route_restore_one_and_mark_the_other_failed() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(
        host.deploy_with_manifest("a", &guest("hello"), "route = \"/x\"\n")
            .status,
        201
    );
    assert_eq!(
        host.deploy_with_manifest("b", &guest("hello"), "route = \"/y\"\n")
            .status,
        201
    );
    host.crash();
    // An operator's mistake (or a bad restore) puts both on `/x`.
    let record = root.path().join("data/services/b.json");
    let text = std::fs::read_to_string(&record).expect("record");
    std::fs::write(&record, text.replace("\"/y\"", "\"/x\"")).expect("write record");
    let host = Host::start(root.path(), &[]);
    let listed = host.admin("GET", "/v1/services").json();
    let states: Vec<(String, String)> = listed["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap_or("").to_owned(),
                s["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let running = states
        .iter()
        .filter(|(state, _)| state == "running")
        .count();
    let failed: Vec<_> = states
        .iter()
        .filter(|(state, _)| state == "failed")
        .collect();
    assert_eq!(running, 1, "{listed}");
    assert_eq!(failed.len(), 1, "{listed}");
    assert!(failed[0].1.contains("route `/x`"), "{listed}");
    assert_eq!(host.get("/x/").status, 200);
}

#[test]
fn rollback_and_promote_bring_the_versions_own_limits() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let v1 = "version = \"1\"\n[limits]\nmax_concurrency = 2\n";
    let v2 = "version = \"2\"\n[limits]\nmax_concurrency = 5\n";
    assert_eq!(host.deploy_with_manifest("svc", &hello, v1).status, 201);
    assert_eq!(host.deploy_with_manifest("svc", &hello, v2).status, 200);
    let limits = |host: &Host| host.running("svc").limits.max_concurrency;
    assert_eq!(limits(&host), 5);
    assert_eq!(host.admin("POST", "/v1/services/svc/rollback").status, 200);
    assert_eq!(limits(&host), 2, "the rolled-back version's own limit");
    let canary = host.deploy_with_manifest_query("svc", &hello, v2, "canary=10");
    assert_eq!(canary.status, 200, "{}", canary.body);
    assert_eq!(
        host.admin("POST", "/v1/services/svc/canary/promote").status,
        200
    );
    assert_eq!(limits(&host), 5, "the promoted canary's own limit");
}

#[test]
fn deployed_and_external_services_never_share_a_name() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let external = host.admin_json(
        "PUT",
        "/v1/external/db",
        r#"{"endpoints": ["127.0.0.1:9"]}"#,
    );
    assert_eq!(external.status, 201, "{}", external.body);
    let deploy = host.deploy("db", &guest("hello"));
    assert_eq!(deploy.status, 409, "{}", deploy.body);
    assert!(deploy.body.contains("external service"), "{}", deploy.body);
    assert_eq!(host.deploy("web", &guest("hello")).status, 201);
    let clash = host.admin_json(
        "PUT",
        "/v1/external/web",
        r#"{"endpoints": ["127.0.0.1:9"]}"#,
    );
    assert_eq!(clash.status, 409, "{}", clash.body);
}

#[test]
fn restore_collects_components_and_compiled_code_no_version_refers_to() {
    let root = temp_root();
    let mut host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("kept", &guest("hello")).status, 201);
    assert_eq!(host.deploy("gone", &guest("faulty")).status, 201);
    assert_eq!(host.admin("DELETE", "/v1/services/gone").status, 204);
    host.crash();
    let data = root.path().join("data");
    let stale = data.join("cache").join("0000000000000000");
    std::fs::create_dir_all(&stale).expect("stale cache");
    std::fs::write(stale.join("x.cwasm"), b"old").expect("stale entry");
    let files = |dir: &std::path::Path, ext: &str| -> usize {
        walk(dir)
            .iter()
            .filter(|path| path.extension().is_some_and(|e| e == ext))
            .count()
    };
    assert_eq!(files(&data.join("blobs"), "wasm"), 2);

    let host = Host::start(root.path(), &[]);
    assert_eq!(host.get("/kept/").status, 200);
    assert_eq!(
        files(&data.join("blobs"), "wasm"),
        1,
        "the removed service's blob is gone"
    );
    assert_eq!(
        files(&data.join("cache"), "cwasm"),
        1,
        "only kept's compiled code is left"
    );
    assert!(!stale.exists(), "another engine's cache is removed");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_canary_and_its_stable_version_are_distinct_instances() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    assert_eq!(
        host.deploy_with_manifest("svc", &hello, "version = \"1\"\n")
            .status,
        201
    );
    let canary = host.deploy_with_manifest_query("svc", &hello, "version = \"2\"\n", "canary=10");
    assert_eq!(canary.status, 200, "{}", canary.body);
    let versions = |host: &Host| -> Vec<String> {
        let found = host.admin("GET", "/v1/discovery/svc").json();
        let mut versions: Vec<String> = found["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter_map(|i| i["version"].as_str().map(str::to_owned))
            .collect();
        versions.sort();
        versions
    };
    assert_eq!(versions(&host), ["1", "2"]);
    assert_eq!(
        host.admin("POST", "/v1/services/svc/canary/promote").status,
        200
    );
    assert_eq!(
        versions(&host),
        ["2"],
        "the old stable version left discovery"
    );
    assert_eq!(host.admin("DELETE", "/v1/services/svc").status, 204);
    assert!(versions(&host).is_empty());
}
