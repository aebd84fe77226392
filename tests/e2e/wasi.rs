//! Standard WASI interfaces a portable component imports: `wasi:config/store` reads
//! the manifest's `[config]`; the environment, files, sockets and name lookups are
//! linked (so such components instantiate) but grant nothing.

use shoal_tests::{Host, guest, temp_root};

#[test]
fn wasi_config_reads_the_manifest_config() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let manifest = "[config]\ngreeting = \"hello\"\nregion = \"eu-1\"\n";
    assert_eq!(
        host.deploy_with_manifest("probe", &guest("wasi_probe"), manifest)
            .status,
        201
    );
    assert_eq!(host.get("/probe/config/greeting").body, "hello");
    assert_eq!(host.get("/probe/config/missing").status, 404);
    // `get-all` promises no order.
    let mut all: Vec<String> = host
        .get("/probe/config")
        .body
        .lines()
        .map(str::to_owned)
        .collect();
    all.sort();
    assert_eq!(all, ["greeting=hello", "region=eu-1"]);
    // A redeploy with other config is what the next request reads.
    let manifest = "[config]\ngreeting = \"bonjour\"\n";
    assert_eq!(
        host.deploy_with_manifest("probe", &guest("wasi_probe"), manifest)
            .status,
        200
    );
    assert_eq!(host.get("/probe/config").body, "greeting=bonjour\n");
}

#[test]
fn environment_files_sockets_and_name_lookups_are_denied() {
    let root = temp_root();
    let host = Host::start_with_env(
        &root.path().join("data"),
        &root.path().join("host.log"),
        &[],
        &[
            ("SHOAL_ADMIN_TOKEN", shoal_tests::TOKEN),
            ("SECRET_OF_THE_HOST", "do-not-leak"),
        ],
    );
    assert_eq!(host.deploy("probe", &guest("wasi_probe")).status, 201);
    let env = host.get("/probe/env");
    assert_eq!((env.status, env.body.as_str()), (200, ""), "no environment");
    let preopens = host.get("/probe/preopens");
    assert_eq!(
        (preopens.status, preopens.body.as_str()),
        (200, ""),
        "no directories"
    );
    for path in ["/etc/passwd", "data/admin-token", "."] {
        let file = host.get(&format!("/probe/file?path={path}"));
        assert_eq!(file.status, 403, "{path}: {}", file.body);
    }
    let admin = host.admin.trim_start_matches("http://").to_owned();
    for addr in [admin.as_str(), "1.1.1.1:53"] {
        let tcp = host.get(&format!("/probe/tcp?addr={addr}"));
        assert_eq!(tcp.status, 403, "{addr}: {}", tcp.body);
    }
    let dns = host.get("/probe/dns?name=localhost");
    assert_eq!(dns.status, 403, "{}", dns.body);
    assert!(!host.log().contains("do-not-leak"));
}
