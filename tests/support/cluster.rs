//! Clusters of test hosts on etcd: the test run's etcd (started by `scripts/test.sh`,
//! which exports `SHOAL_TEST_ETCD_URL`), or one of a test's own ([`EtcdServer`]) for
//! tests that stop it. Each cluster has a key prefix and a token of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Host, random_u64, wait_for};

/// The test run's etcd.
pub fn etcd_url() -> String {
    std::env::var("SHOAL_TEST_ETCD_URL").unwrap_or_else(|_| {
        panic!(
            "SHOAL_TEST_ETCD_URL is not set: run the tests with scripts/test.sh, or \
             `source scripts/setup.sh; source scripts/servers.sh; start_etcd` first"
        )
    })
}

/// An etcd of a test's own, on free ports, its data in a temporary directory.
pub struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address").port()
}

impl EtcdServer {
    /// Start one.
    pub fn start() -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("shoal-etcd-")
            .tempdir()
            .expect("temp dir");
        let mut server = EtcdServer {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        server.resume();
        server
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Turn authentication on, with a `root` user whose password is `password`
    /// (through etcd's JSON gateway).
    pub fn enable_auth(&self, password: &str) {
        let agent = crate::agent();
        for (path, body) in [
            ("/v3/auth/role/add", serde_json::json!({ "name": "root" })),
            (
                "/v3/auth/user/add",
                serde_json::json!({ "name": "root", "password": password }),
            ),
            (
                "/v3/auth/user/grant",
                serde_json::json!({ "user": "root", "role": "root" }),
            ),
            ("/v3/auth/enable", serde_json::json!({})),
        ] {
            let reply = agent
                .post(format!("{}{path}", self.url()))
                .header("content-type", "application/json")
                .send(body.to_string())
                .map(|mut response| {
                    (
                        response.status().as_u16(),
                        response.body_mut().read_to_string().unwrap_or_default(),
                    )
                });
            assert!(matches!(reply, Ok((200, _))), "etcd {path}: {reply:?}");
        }
    }

    /// Stop it (SIGKILL: as a crash or a network cut looks to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub fn resume(&mut self) {
        let bin = std::env::var("SHOAL_TEST_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(bin)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let agent = crate::agent();
        wait_for("etcd to be healthy", Duration::from_secs(30), || {
            agent
                .get(format!("{client}/health"))
                .call()
                .ok()
                .and_then(|mut response| response.body_mut().read_to_string().ok())
                .is_some_and(|body| body.contains("\"true\""))
        });
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster's settings: which etcd, which prefix, which token.
pub struct ClusterSpec {
    /// etcd's URL.
    pub etcd: String,
    /// Key prefix of this cluster.
    pub prefix: String,
    /// File with the cluster token.
    pub token_file: PathBuf,
    /// Lease TTL, seconds.
    pub lease_ttl_s: u64,
}

impl ClusterSpec {
    /// A new cluster on `etcd` (a prefix and a token of its own, in `root`).
    pub fn new(root: &Path, etcd: String) -> ClusterSpec {
        let token_file = root.join("cluster-token");
        std::fs::write(
            &token_file,
            format!("{:016x}{:016x}", random_u64(), random_u64()),
        )
        .expect("write the cluster token");
        ClusterSpec {
            etcd,
            prefix: format!("/shoal-test-{:016x}", random_u64()),
            token_file,
            lease_ttl_s: 3,
        }
    }

    /// The `shoal serve` arguments of host `id`.
    pub fn args(&self, id: &str) -> Vec<String> {
        vec![
            "--etcd".into(),
            self.etcd.clone(),
            "--cluster-token-file".into(),
            self.token_file.display().to_string(),
            "--cluster-prefix".into(),
            self.prefix.clone(),
            "--host-id".into(),
            id.into(),
            "--lease-ttl-s".into(),
            self.lease_ttl_s.to_string(),
        ]
    }

    /// Start host `id` of this cluster, its data and log under `root/id`, with `extra`
    /// arguments.
    pub fn start_host(&self, root: &Path, id: &str, extra: &[&str]) -> Host {
        self.start_host_with_env(root, id, extra, &[])
    }

    /// [`ClusterSpec::start_host`] with extra environment variables.
    pub fn start_host_with_env(
        &self,
        root: &Path,
        id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Host {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).expect("host dir");
        let mut args: Vec<String> = self.args(id);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = env.to_vec();
        env.push(("SHOAL_ADMIN_TOKEN", crate::TOKEN));
        Host::start_with_env(&dir.join("data"), &dir.join("host.log"), &args, &env)
    }
}

/// Hosts of one cluster.
pub struct Cluster {
    /// Its settings.
    pub spec: ClusterSpec,
    /// The hosts, `h1`, `h2`, ... in order.
    pub hosts: Vec<Host>,
    /// Where their data and logs are.
    pub root: PathBuf,
}

impl Cluster {
    /// `count` hosts on the test run's etcd, every one up before this returns.
    pub fn start(root: &Path, count: usize, extra: &[&str]) -> Cluster {
        Self::start_on(root, etcd_url(), count, extra)
    }

    /// `count` hosts on the etcd at `etcd`.
    pub fn start_on(root: &Path, etcd: String, count: usize, extra: &[&str]) -> Cluster {
        let spec = ClusterSpec::new(root, etcd);
        let hosts = (1..=count)
            .map(|n| spec.start_host(root, &format!("h{n}"), extra))
            .collect();
        let cluster = Cluster {
            spec,
            hosts,
            root: root.to_path_buf(),
        };
        cluster.wait_for_up(count);
        cluster
    }

    /// The host with id `id`.
    pub fn host(&self, id: &str) -> &Host {
        let index: usize = id
            .strip_prefix('h')
            .and_then(|n| n.parse().ok())
            .expect("a host id hN");
        &self.hosts[index - 1]
    }

    /// Wait until every host sees `count` hosts up.
    pub fn wait_for_up(&self, count: usize) {
        for host in &self.hosts {
            wait_for(
                &format!("{count} hosts up, as {} sees them", host.gateway),
                Duration::from_secs(30),
                || {
                    states(host)
                        .iter()
                        .filter(|(_, state)| state == "up")
                        .count()
                        == count
                },
            );
        }
    }
}

/// The hosts `host` sees, with their states.
pub fn states(host: &Host) -> Vec<(String, String)> {
    let reply = host.admin("GET", "/v1/cluster");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let cluster: shoal_api::cluster::Cluster =
        serde_json::from_str(&reply.body).expect("a cluster");
    cluster.hosts.into_iter().map(|h| (h.id, h.state)).collect()
}

/// The hosts `host` says `service` is placed on (sorted), or none.
pub fn placements(host: &Host, service: &str) -> Vec<String> {
    let reply = host.admin("GET", &format!("/v1/services/{service}"));
    if reply.status != 200 {
        return Vec::new();
    }
    let view: shoal_api::services::Service = serde_json::from_str(&reply.body).expect("a service");
    let placements = match &view {
        shoal_api::services::Service::Running(s) => s.placements.clone(),
        shoal_api::services::Service::Elsewhere(s) => s.placements.clone(),
        shoal_api::services::Service::Failed(_) => Vec::new(),
    };
    placements.into_iter().map(|p| p.host).collect()
}

/// Whether `service` runs on `host` itself (not only elsewhere in its cluster).
pub fn runs_on(host: &Host, service: &str) -> bool {
    let reply = host.admin("GET", &format!("/v1/services/{service}"));
    reply.status == 200 && reply.json()["state"] == "running"
}
