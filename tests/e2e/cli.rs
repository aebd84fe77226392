//! The user's commands: `shoal build`, `deploy`, `ls`, `rm`.

use shoal_tests::{Host, TOKEN, guest, repo_root, shoal_cli, temp_root};

#[test]
fn deploy_ls_rm_through_the_cli() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let wasm = root.path().join("plain_http.wasm");
    std::fs::write(&wasm, guest("plain_http")).expect("write wasm");
    let manifest = root.path().join("hello.toml");
    std::fs::write(
        &manifest,
        "version = \"3.0\"\n[config]\ngreeting = \"Ahoy\"\n",
    )
    .expect("manifest");
    let hello = root.path().join("hello.wasm");
    std::fs::write(&hello, guest("hello")).expect("write wasm");
    let env = [
        ("SHOAL_ADMIN_URL", host.admin.as_str()),
        ("SHOAL_ADMIN_TOKEN", TOKEN),
    ];

    let (ok, out, err) = shoal_cli(&["deploy", wasm.to_str().expect("utf8")], &env);
    assert!(ok, "{out}{err}");
    assert!(out.contains("deployed plain-http"), "{out}");
    assert_eq!(host.get("/plain-http/").status, 200);

    let (ok, out, err) = shoal_cli(
        &[
            "deploy",
            hello.to_str().expect("utf8"),
            "--name",
            "greeter",
            "--manifest",
            manifest.to_str().expect("utf8"),
        ],
        &env,
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("version 3.0"), "{out}");
    assert_eq!(host.get("/greeter/").body, "Ahoy, world!\n");

    let (ok, out, err) = shoal_cli(&["ls"], &env);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("greeter") && out.contains("plain-http") && out.contains("3.0"),
        "{out}"
    );

    let (ok, out, err) = shoal_cli(&["rm", "greeter"], &env);
    assert!(ok, "{out}{err}");
    assert_eq!(host.get("/greeter/").status, 404);

    // Errors from the host reach the user.
    let (ok, _, err) = shoal_cli(&["rm", "greeter"], &env);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("greeter"), "{err}");
    let (ok, _, err) = shoal_cli(
        &["ls"],
        &[
            ("SHOAL_ADMIN_URL", host.admin.as_str()),
            ("SHOAL_ADMIN_TOKEN", "nope"),
        ],
    );
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    let bad = root.path().join("bad.wasm");
    std::fs::write(&bad, b"nope").expect("write");
    let (ok, _, err) = shoal_cli(&["deploy", bad.to_str().expect("utf8")], &env);
    assert!(!ok);
    assert!(err.contains("not WebAssembly"), "{err}");
}

#[test]
fn build_produces_a_component_and_rejects_non_cargo_dirs() {
    let (ok, out, err) = shoal_cli(
        &[
            "build",
            repo_root().join("guests/hello").to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(ok, "{out}{err}");
    let path = std::path::PathBuf::from(out.trim());
    assert!(path.ends_with("hello.wasm"), "{out}");
    let bytes = std::fs::read(&path).expect("built wasm");
    assert!(bytes.starts_with(b"\0asm\x0d\0\x01\0"), "not a component");

    let empty = temp_root();
    let (ok, _, err) = shoal_cli(&["build", empty.path().to_str().expect("utf8")], &[]);
    assert!(!ok);
    assert!(err.contains("Cargo.toml"), "{err}");
}

#[test]
fn help_is_available_for_every_command() {
    for command in [
        &["--help"][..],
        &["serve", "--help"],
        &["build", "--help"],
        &["deploy", "--help"],
        &["ls", "--help"],
        &["rm", "--help"],
    ] {
        let (ok, out, err) = shoal_cli(command, &[]);
        assert!(ok, "{command:?}: {err}");
        assert!(out.contains("Usage"), "{command:?}: {out}");
    }
}
