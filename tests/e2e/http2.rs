//! HTTP/2 on both listeners: prior knowledge (h2c) beside HTTP/1.1 on one port,
//! trailers both ways between a client and a guest, and the HTTP/2 abuse cases
//! (rapid reset, CONTINUATION flood, stream floods, PING/SETTINGS floods, idle
//! connections kept open by PINGs) against the real binary, with real HTTP/2 clients:
//! curl, and python-hyper's `h2` for what curl cannot send.

use shoal_tests::{Host, TOKEN, guest, python_json, rss_mb, temp_root};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `curl` with `args`: (HTTP version, status, body).
fn curl(args: &[&str]) -> (String, u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').expect("curl's write-out line");
    let (version, status) = last.split_once(' ').expect("version and status");
    (
        version.to_owned(),
        status.parse().unwrap_or(0),
        body.to_owned(),
    )
}

fn port(url: &str) -> &str {
    url.rsplit(':').next().expect("port")
}

#[test]
fn both_listeners_speak_http2_with_prior_knowledge_beside_http1() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    let url = format!("{}/hello/", host.gateway);

    let (version, status, body) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.contains("Hello"), "{body}");
    let (version, status, _) = curl(&["--http1.1", &url]);
    assert_eq!((version.as_str(), status), ("1.1", 200));

    let bearer = format!("Authorization: Bearer {TOKEN}");
    let services = format!("{}/v1/services", host.admin);
    let (version, status, body) = curl(&["--http2-prior-knowledge", "-H", &bearer, &services]);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert!(body.contains("\"hello\""), "{body}");
    // The admin API's checks hold on HTTP/2 too.
    let (version, status, _) = curl(&["--http2-prior-knowledge", &services]);
    assert_eq!((version.as_str(), status), ("2", 401));
}

#[test]
fn trailers_travel_from_a_client_to_a_guest_and_back() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("probe", &guest("wasi_probe")).status, 201);
    let reply = python_json(
        "http2/trailers.py",
        &[
            "127.0.0.1",
            port(&host.gateway),
            "/probe/trailers",
            "checksum=abc123",
            "x-parts=7",
        ],
    );
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(reply["body"], "1000 bytes\n", "{reply}");
    assert_eq!(reply["trailers"]["echo-checksum"], "abc123", "{reply}");
    assert_eq!(reply["trailers"]["echo-x-parts"], "7", "{reply}");
}

/// GETs of `url` on HTTP/1.1 in a loop until stopped: (answered 200, anything else).
fn neighbour_load(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let agent = shoal_tests::agent();
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            match agent.get(&url).call() {
                Ok(response) if response.status() == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
}

#[test]
fn http2_abuse_ends_the_abusers_connection_while_the_host_and_a_neighbour_keep_serving() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    assert_eq!(host.deploy("hello", &guest("hello")).status, 201);
    assert_eq!(host.deploy("neighbour", &guest("hello")).status, 201);
    let gateway_port = port(&host.gateway).to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let load = neighbour_load(format!("{}/neighbour/", host.gateway), stop.clone());
    let before = rss_mb(host.pid());
    let attack = |name: &str, count: &str| {
        python_json(
            "http2/abuse.py",
            &[
                "127.0.0.1",
                &gateway_port,
                "/hello/",
                name,
                "--count",
                count,
            ],
        )
    };

    // Rapid reset (CVE-2023-44487): streams opened and reset at once end the
    // connection with ENHANCE_YOUR_CALM (11) long before the 10,000 are sent.
    let reset = attack("rapid-reset", "10000");
    assert_eq!(reset["closed"], true, "{reset}");
    assert_eq!(reset["goaway"], 11, "{reset}");
    assert!(
        reset["streams_reset"].as_u64().expect("count") < 2000,
        "{reset}"
    );

    // CONTINUATION flood (CVE-2024-27316 and kin): a header block that never ends is
    // cut off near the header-list cap (64 KiB), not read to the 160 MB sent.
    let continuation = attack("continuation", "10000");
    assert_eq!(continuation["closed"], true, "{continuation}");
    assert!(
        continuation["sent_bytes"].as_u64().expect("bytes") < 4 * 1024 * 1024,
        "{continuation}"
    );

    // More streams than the cap at once: the excess is refused (REFUSED_STREAM), and
    // a client that keeps pushing is sent away.
    let streams = attack("streams", "1000");
    assert_eq!(streams["max_concurrent_streams"], 128, "{streams}");
    assert!(streams["resets"].as_u64().expect("resets") > 0, "{streams}");
    assert_eq!(streams["closed"], true, "{streams}");

    // PING and SETTINGS floods are answered one at a time: no queue grows.
    for flood in ["ping-flood", "settings-flood"] {
        let result = attack(flood, "100000");
        assert_eq!(result["frames"], 100000, "{flood}: {result}");
    }

    // The host and the neighbour served throughout, within bounded memory.
    assert_eq!(host.get("/hello/").status, 200);
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    assert!(ok > 0 && failed == 0, "neighbour: {ok} ok, {failed} failed");
    let after = rss_mb(host.pid());
    assert!(
        after < before + 64,
        "memory grew from {before} to {after} MiB"
    );
}

#[test]
fn an_http2_connection_that_only_pings_is_closed_when_idle() {
    let root = temp_root();
    let host = Host::start(root.path(), &["--idle-timeout-ms", "500"]);
    let pinged = python_json(
        "http2/abuse.py",
        &[
            "127.0.0.1",
            port(&host.gateway),
            "/",
            "idle-pings",
            "--count",
            "300",
        ],
    );
    // The script pings for up to 30 s: the host closing the connection is the proof.
    assert_eq!(pinged["closed"], true, "{pinged}");
    // A response still streaming keeps its connection open past the idle timeout:
    // four replies 300 ms apart all arrive.
    let manifest =
        std::fs::read_to_string(shoal_tests::repo_root().join("guests/grpc-greeter/shoal.toml"))
            .expect("manifest");
    let deployed = host.deploy_with_manifest("greeter", &guest("grpc_greeter"), &manifest);
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let target = format!("127.0.0.1:{}", port(&host.gateway));
    let streamed = python_json(
        "grpc/greeter.py",
        &[
            &target,
            "SayHelloStream",
            r#"{"name": "slow", "count": 4, "delay_ms": 300}"#,
        ],
    );
    assert_eq!(streamed["code"], "OK", "{streamed}");
    assert_eq!(
        streamed["replies"].as_array().map(Vec::len),
        Some(4),
        "{streamed}"
    );
}
