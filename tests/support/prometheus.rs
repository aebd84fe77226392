//! A real Prometheus server (Debian package `prometheus`) scraping a host, and its
//! HTTP query API.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    pub address: String,
}

impl Prometheus {
    /// Start Prometheus under `dir`, scraping `target` (`host:port`) every second.
    pub fn start(dir: &Path, target: &str) -> Prometheus {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("`prometheus` is not installed; scripts/setup.sh installs it (Debian package prometheus)")
        });
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).expect("log"),
            ))
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            address: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let agent = crate::agent();
        loop {
            if agent
                .get(format!("http://{}/-/ready", prometheus.address))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// The value of instant query `query` (first series), if any.
    pub fn query(&self, query: &str) -> Option<f64> {
        let mut response = crate::agent()
            .get(format!("http://{}/api/v1/query", self.address))
            .query("query", query)
            .call()
            .ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        let body: serde_json::Value = serde_json::from_str(&text).ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Wait until `query` returns `expected` (within 60 s); returns the last value.
    pub fn wait_for(&self, query: &str, expected: f64) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.query(query);
            if value == Some(expected) || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
}
