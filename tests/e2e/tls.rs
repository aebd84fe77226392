//! TLS on the gateway and the admin API, from PEM files: HTTPS only, certificates
//! reloaded without a restart, and a broken renewal never takes the listener down;
//! traces exported to an HTTPS collector.

use shoal_tests::otlp::OtlpReceiver;
use shoal_tests::{Host, TOKEN, guest, shoal_bin, shoal_cli, temp_root, wait_for};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA of its own and a certificate for 127.0.0.1 named `cn` signed by it, written
/// as `name-ca.crt`, `name.crt` and `name.key`. Returns (CA, certificate, key).
fn certificate(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let text = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (ca, ca_key) = (path("-ca.crt"), path("-ca.key"));
    let (cert, key, csr, ext) = (path(".crt"), path(".key"), path(".csr"), path(".ext"));
    let curve = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let subject = format!("/CN={cn} test CA");
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
    args.extend(curve);
    let (ca_text, ca_key_text) = (text(&ca), text(&ca_key));
    args.extend(["-keyout", &ca_key_text, "-out", &ca_text]);
    openssl(&args);
    let subject = format!("/CN={cn}");
    let (key_text, csr_text) = (text(&key), text(&csr));
    let mut args = vec!["req", "-new", "-subj", &subject];
    args.extend(curve);
    args.extend(["-keyout", &key_text, "-out", &csr_text]);
    openssl(&args);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    let (cert_text, ext_text) = (text(&cert), text(&ext));
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr_text,
        "-CA",
        &ca_text,
        "-CAkey",
        &ca_key_text,
        "-CAcreateserial",
        "-extfile",
        &ext_text,
        "-out",
        &cert_text,
    ]);
    (ca, cert, key)
}

struct TlsHost {
    child: Child,
    gateway: String,
    admin: String,
    log: PathBuf,
}

impl Drop for TlsHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(root: &Path, cert: &Path, key: &Path) -> TlsHost {
    let log = root.join("host.log");
    let mut child = serve_on_free_ports(&root.join("data"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .arg("--admin-tls-cert")
        .arg(cert)
        .arg("--admin-tls-key")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start shoal");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut gateway, mut admin) = (String::new(), String::new());
    while gateway.is_empty() || admin.is_empty() {
        let line = lines.next().expect("host output").expect("line");
        if let Some(url) = line.strip_prefix("gateway listening on ") {
            gateway = url.to_owned();
        } else if let Some(url) = line.strip_prefix("admin API listening on ") {
            admin = url.to_owned();
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    TlsHost {
        child,
        gateway,
        admin,
        log,
    }
}

/// `curl` trusting only `ca`: the status, or none when the connection failed.
fn curl(ca: &Path, args: &[&str], url: &str) -> Option<(u16, String)> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n')?;
    Some((status.parse().ok()?, body.to_owned()))
}

#[test]
fn both_listeners_speak_https_and_take_a_renewed_certificate_without_a_restart() {
    let root = temp_root();
    let (ca_a, cert_a, key_a) = certificate(root.path(), "a", "shoal-a");
    let (cert, key) = (root.path().join("live.crt"), root.path().join("live.key"));
    std::fs::copy(&cert_a, &cert).expect("copy");
    std::fs::copy(&key_a, &key).expect("copy");
    let host = start(root.path(), &cert, &key);
    assert!(host.gateway.starts_with("https://") && host.admin.starts_with("https://"));

    let wasm = root.path().join("hello.wasm");
    std::fs::write(&wasm, guest("hello")).expect("wasm");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let deploy_url = format!("{}/v1/services/hello", host.admin);
    let data = format!("@{}", wasm.display());
    let deployed = curl(
        &ca_a,
        &[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            "content-type: application/wasm",
            "--data-binary",
            &data,
        ],
        &deploy_url,
    );
    assert_eq!(deployed.map(|(status, _)| status), Some(201));
    let hello = curl(&ca_a, &[], &format!("{}/hello/", host.gateway));
    assert_eq!(hello, Some((200, "Hello, world!\n".to_owned())));
    // Plain HTTP on a TLS port gets nowhere.
    let plain = host.gateway.replacen("https://", "http://", 1);
    assert_ne!(
        curl(&ca_a, &[], &format!("{plain}/hello/")).map(|r| r.0),
        Some(200)
    );

    // The CLI speaks HTTPS, trusting the CA file it is given (and only that).
    let admin_url = host.admin.as_str();
    let ca = ca_a.to_string_lossy().into_owned();
    let env = [("SHOAL_ADMIN_TOKEN", TOKEN)];
    let (ok, out, err) = shoal_cli(&["ls", "--admin", admin_url, "--ca-file", &ca], &env);
    assert!(ok && out.contains("hello"), "{out}{err}");
    let (ok, _, err) = shoal_cli(&["ls", "--admin", admin_url], &env);
    assert!(
        !ok && err.contains("TLS"),
        "an unknown issuer is refused: {err}"
    );

    // Renew: the new pair replaces the old one in place; new connections see it.
    let (ca_b, cert_b, key_b) = certificate(root.path(), "b", "shoal-b");
    let staged = root.path().join("staged.key");
    std::fs::copy(&key_b, &staged).expect("copy");
    std::fs::rename(&staged, &key).expect("swap key");
    let staged = root.path().join("staged.crt");
    std::fs::copy(&cert_b, &staged).expect("copy");
    std::fs::rename(&staged, &cert).expect("swap cert");
    let healthz = format!("{}/healthz", host.admin);
    wait_for("the renewed certificate", Duration::from_secs(15), || {
        curl(&ca_b, &[], &healthz).is_some()
    });
    assert!(
        curl(&ca_a, &[], &healthz).is_none(),
        "the old certificate is gone"
    );
    assert!(curl(&ca_b, &[], &format!("{}/hello/", host.gateway)).is_some());

    // A broken renewal is reported and the certificate in use stays.
    std::fs::write(&cert, "not a certificate").expect("break");
    wait_for(
        "the broken renewal reported",
        Duration::from_secs(15),
        || std::fs::read_to_string(&host.log).is_ok_and(|log| log.contains("does not load")),
    );
    assert_eq!(curl(&ca_b, &[], &healthz).map(|r| r.0), Some(200));
}

#[test]
fn a_missing_or_mismatched_certificate_stops_the_start_with_a_reason() {
    let root = temp_root();
    let (_, cert_a, _) = certificate(root.path(), "a", "shoal-a");
    let (_, _, key_b) = certificate(root.path(), "b", "shoal-b");
    for (cert, key, reason) in [
        (cert_a.clone(), key_b.clone(), "does not belong"),
        (
            root.path().join("missing.crt"),
            key_b.clone(),
            "missing.crt",
        ),
    ] {
        let output = serve_on_free_ports(&root.path().join("data"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .expect("run shoal");
        assert!(!output.status.success());
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(reason), "{reason}: {err}");
    }
    // A certificate without its key is refused by the command line itself.
    let output = Command::new(shoal_bin())
        .args(["serve", "--tls-cert"])
        .arg(&cert_a)
        .output()
        .expect("run shoal");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key"));
}

#[test]
fn traces_reach_an_https_collector_that_the_ca_file_vouches_for() {
    let root = temp_root();
    let (ca, cert, key) = certificate(root.path(), "otlp", "127.0.0.1");
    let receiver = OtlpReceiver::start_tls(&cert, &key);
    assert!(receiver.endpoint.starts_with("https://"));
    let ca = ca.to_string_lossy().into_owned();
    let host = |name: &str, ca: Option<&str>| {
        let mut env = vec![
            ("SHOAL_ADMIN_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_SERVICE_NAME", name),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        env.extend(ca.map(|ca| ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)));
        let dir = root.path().join(name);
        Host::start_with_env(
            &dir.join("data"),
            &root.path().join(format!("{name}.log")),
            &[],
            &env,
        )
    };
    // Without the CA the collector is not trusted: nothing is sent, the host serves on.
    let untrusted = host("untrusted", None);
    let trusted = host("trusted", Some(&ca));
    for host in [&untrusted, &trusted] {
        assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
        for _ in 0..3 {
            assert_eq!(host.get("/hello/").status, 200);
        }
    }
    wait_for("spans over https", Duration::from_secs(30), || {
        receiver.spans().iter().any(|s| s.service_name == "trusted")
    });
    // The untrusted host did try to export: its handshake was refused.
    wait_for(
        "the untrusted host's refused handshake",
        Duration::from_secs(30),
        || receiver.failed_handshakes() > 0,
    );
    assert!(
        receiver.spans().iter().all(|s| s.service_name == "trusted"),
        "a host that does not trust the collector sent it nothing"
    );

    // A CA file that holds no certificate stops the start with a reason.
    let empty = root.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let output = serve_on_free_ports(&root.path().join("bad-ca-data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &empty)
        .output()
        .expect("run shoal");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
}

/// `shoal serve` on free ports with the test token and no input.
fn serve_on_free_ports(data_dir: &Path) -> Command {
    let mut command = Command::new(shoal_bin());
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("SHOAL_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null());
    command
}

#[test]
fn http2_and_grpc_are_chosen_by_alpn_over_tls() {
    let root = temp_root();
    let (ca, cert, key) = certificate(root.path(), "h2", "shoal-h2");
    let host = start(root.path(), &cert, &key);
    let wasm = root.path().join("greeter.wasm");
    std::fs::write(&wasm, guest("grpc_greeter")).expect("wasm");
    let manifest = shoal_tests::repo_root().join("guests/grpc-greeter/shoal.toml");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (component, manifest) = (
        format!("component=@{}", wasm.display()),
        format!("manifest=@{}", manifest.display()),
    );
    let deployed = curl(
        &ca,
        &["-X", "PUT", "-H", &auth, "-F", &component, "-F", &manifest],
        &format!("{}/v1/services/greeter", host.admin),
    );
    assert_eq!(deployed.map(|(status, _)| status), Some(201));

    // curl offers h2 and http/1.1 by ALPN; the host picks h2, or what is offered.
    let page = format!("{}/greeter/", host.gateway);
    let version = |flag: &str| {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version}",
            ])
            .arg("--cacert")
            .arg(&ca)
            .args([flag, &page])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(version("--http2"), "2");
    assert_eq!(version("--http1.1"), "1.1");

    // A gRPC client over TLS.
    let target = host.gateway.trim_start_matches("https://").to_owned();
    let ca_text = ca.to_string_lossy().into_owned();
    let reply = shoal_tests::python_json(
        "grpc/greeter.py",
        &[&target, "SayHello", r#"{"name": "TLS"}"#, "--ca", &ca_text],
    );
    assert_eq!(reply["code"], "OK", "{reply}");
    assert_eq!(reply["replies"][0], "Hello TLS", "{reply}");
}
