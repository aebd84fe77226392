//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver):
//! log in with a token, watch a service's live numbers move under load, move a
//! canary's weight and see the traffic split follow, and see a read token get no
//! actions. A screenshot is kept as an artifact.

use fantoccini::{Client, ClientBuilder, Locator};
use shoal_tests::{Host, Load, TOKEN, guest, repo_root, temp_root, wait_for};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// gRPC calls to the greeter over h2c (curl) until dropped, every other one
/// failing with `UNAVAILABLE` in its trailers.
struct GrpcLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcLoad {
    fn start(gateway: &str) -> GrpcLoad {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = Vec::new();
        for name in ["Ada", "unavailable"] {
            // A length-prefixed HelloRequest { name }.
            let mut framed = vec![0, 0, 0, 0, name.len() as u8 + 2, 0x0a, name.len() as u8];
            framed.extend_from_slice(name.as_bytes());
            let file = dir.path().join(format!("{name}.bin"));
            std::fs::write(&file, framed).expect("write a request");
            files.push(file);
        }
        let url = format!("{gateway}/helloworld.Greeter/SayHello");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let _dir = dir;
            for file in files.iter().cycle() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let _ = Command::new("curl")
                    .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null"])
                    .args(["-H", "content-type: application/grpc"])
                    .arg("--data-binary")
                    .arg(format!("@{}", file.display()))
                    .arg(&url)
                    .status();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        GrpcLoad {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for GrpcLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A chromedriver on a free port, stopped on drop.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup.sh installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", Duration::from_secs(20), || {
            shoal_tests::agent()
                .get(format!("{url}/status"))
                .call()
                .is_ok_and(|response| response.status() == 200)
        });
        Chromedriver { child, url }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps requesting `url` until dropped.
/// The text of the element `css`, or empty while it is not there.
async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Wait until `check` holds for the text of `css`; fail naming both.
async fn until_text(
    client: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = text(client, css).await;
        if check(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{css}` shows `{current}`"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn type_into(client: &Client, css: &str, value: &str) {
    let input = client.find(Locator::Css(css)).await.expect("input");
    input.clear().await.expect("clear");
    input.send_keys(value).await.expect("type");
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .expect("element")
        .click()
        .await
        .expect("click");
}

/// The canary's share of recent traffic, as the page shows it.
async fn canary_share(client: &Client) -> Option<u32> {
    let element = client.find(Locator::Css("#canary-share")).await.ok()?;
    element.attr("data-share").await.ok()??.parse().ok()
}

async fn until_share(client: &Client, low: u32, high: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let share = canary_share(client).await;
        if let Some(share) = share
            && (low..=high).contains(&share)
        {
            return share;
        }
        assert!(
            Instant::now() < deadline,
            "the canary's share stayed at {share:?}, not {low}..={high}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A headless Chromium session through `driver`, with its profile in `profile`.
async fn browser(driver: &Chromedriver, profile: &std::path::Path) -> Client {
    let mut capabilities = fantoccini::wd::Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

#[test]
fn in_a_cluster_the_dashboard_shows_the_hosts_and_where_each_replica_runs() {
    let root = temp_root();
    let cluster = shoal_tests::cluster::Cluster::start(root.path(), 2, &[]);
    let reply = cluster.hosts[1].deploy_with_manifest(
        "web",
        &guest("hello"),
        "version = \"1\"\nreplicas = 2\n",
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let driver = Chromedriver::start();
    let profile = root.path().join("chromium-profile");
    let artifact = std::env::var_os("SHOAL_ARTIFACTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/artifacts"))
        .join("dashboard-cluster.png");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = browser(&driver, &profile).await;
        client
            .goto(&format!("{}/", cluster.hosts[0].admin))
            .await
            .expect("open the dashboard");
        type_into(&client, "#token", TOKEN).await;
        click(&client, "#login").await;
        for id in ["h1", "h2"] {
            let row = format!("#hosts tr[data-host=\"{id}\"]");
            until_text(&client, &row, "the host listed up", |t| {
                t.contains(id) && t.contains("up") && t.contains("web")
            })
            .await;
        }
        until_text(
            &client,
            "#svc-web .hosts",
            "where web's replicas run",
            |t| t.contains("h1 (up)") && t.contains("h2 (up)"),
        )
        .await;
        let leader = text(&client, "#hosts tbody").await;
        assert_eq!(leader.matches("leader").count(), 1, "{leader}");
        if let Some(dir) = artifact.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let png = client.screenshot().await.expect("screenshot");
        std::fs::write(&artifact, png).expect("keep the screenshot");
        client.close().await.expect("close");
    });
}

#[test]
fn the_dashboard_shows_live_numbers_and_follows_a_canary_weight() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let hello = guest("hello");
    let reply = host.deploy_with_manifest("web", &hello, "version = \"1.0.0\"\n");
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply =
        host.deploy_with_manifest_query("web", &hello, "version = \"2.0.0\"\n", "canary=10");
    assert!(reply.status < 300, "{}", reply.body);
    let read = host.admin_json(
        "POST",
        "/v1/tokens",
        r#"{"name": "viewer", "scope": "read"}"#,
    );
    assert_eq!(read.status, 201, "{}", read.body);
    let read_token = read.json()["token"].as_str().expect("token").to_owned();
    let greeter = std::fs::read_to_string(repo_root().join("guests/grpc-greeter/shoal.toml"))
        .expect("greeter manifest");
    let reply = host.deploy_with_manifest("greeter", &guest("grpc_greeter"), &greeter);
    assert_eq!(reply.status, 201, "{}", reply.body);
    let _grpc = GrpcLoad::start(&host.gateway);
    // Some traffic for the charts: every answer counts, none is a failure here.
    let _load = Load::start(
        format!("{}/web/", host.gateway),
        1,
        Duration::from_millis(5),
        |_, _| Some("any"),
    );

    let driver = Chromedriver::start();
    let profile = root.path().join("chromium-profile");
    let artifact = std::env::var_os("SHOAL_ARTIFACTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/artifacts"))
        .join("dashboard.png");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = browser(&driver, &profile).await;
        client
            .goto(&format!("{}/", host.admin))
            .await
            .expect("open the dashboard");

        // A wrong token is refused on the page.
        type_into(&client, "#token", "not-a-token").await;
        click(&client, "#login").await;
        until_text(&client, "#login-error", "a wrong token", |t| {
            t.contains("unknown")
        })
        .await;

        // The operator's token: live numbers that move under load.
        type_into(&client, "#token", TOKEN).await;
        click(&client, "#login").await;
        until_text(&client, "#who", "logged in", |t| {
            t.contains("operator · admin")
        })
        .await;
        let rate = |t: &str| t.parse::<f64>().unwrap_or(0.0);
        let first = until_text(&client, "#svc-web .rate", "a live rate", |t| rate(t) > 0.0).await;
        // A host that serves alone shows no hosts table.
        let hosts_shown = client
            .find(Locator::Css("#cluster"))
            .await
            .expect("the hosts section")
            .is_displayed()
            .await
            .expect("visibility");
        assert!(!hosts_shown, "a single host shows no cluster");
        until_text(&client, "#status", "a later update", |t| {
            t.starts_with("updated")
        })
        .await;
        let requests_before = host.admin("GET", "/v1/services/web").json()["requests"].as_u64();
        until_text(&client, "#svc-web .p50", "a latency", |t| t.ends_with("ms")).await;
        let later = until_text(&client, "#svc-web .rate", "the rate to move", |t| {
            t != first && rate(t) > 0.0
        })
        .await;
        assert!(rate(&later) > 0.0);
        let requests_after = host.admin("GET", "/v1/services/web").json()["requests"].as_u64();
        assert!(requests_after > requests_before, "load is running");

        // gRPC calls by status class: the failures are HTTP 200s with a status.
        until_text(&client, "#svc-greeter .grpc", "gRPC status classes", |t| {
            t.contains("ok ") && t.contains("server ")
        })
        .await;

        // Select the service; its canary takes about 10 %, then about 50 %.
        click(&client, "#svc-web").await;
        until_text(&client, "#detail-name", "the detail", |t| t == "web").await;
        let share = until_share(&client, 0, 30).await;
        assert!(share <= 30, "weight 10: {share}%");
        type_into(&client, "#canary-input", "50").await;
        click(&client, "#canary-apply").await;
        until_text(&client, "#action-result", "the weight change", |t| {
            t.ends_with("done")
        })
        .await;
        until_text(&client, "#svc-web .canary", "the new weight", |t| {
            t.contains("(50%)")
        })
        .await;
        let share = until_share(&client, 35, 65).await;
        assert_eq!(
            host.admin("GET", "/v1/services/web").json()["canary"]["weight"],
            50
        );
        until_text(&client, "#log-tail", "the log tail", |_| true).await;
        let png = client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(artifact.parent().expect("dir")).expect("artifact dir");
        std::fs::write(&artifact, &png).expect("write the screenshot");
        println!("screenshot: {} (canary share {share}%)", artifact.display());

        // A read token sees the numbers and gets no actions.
        click(&client, "#logout").await;
        type_into(&client, "#token", &read_token).await;
        click(&client, "#login").await;
        until_text(&client, "#who", "the read token", |t| t.contains("read")).await;
        until_text(&client, "#svc-web .rate", "numbers for a read token", |t| {
            rate(t) > 0.0
        })
        .await;
        click(&client, "#svc-web").await;
        until_text(&client, "#read-only", "no actions", |t| {
            t.contains("may not change")
        })
        .await;
        let actions = client
            .find(Locator::Css("#actions"))
            .await
            .expect("actions");
        assert!(
            !actions.is_displayed().await.expect("displayed"),
            "no actions for read"
        );
        client.close().await.expect("close");
    });
}
