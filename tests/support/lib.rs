//! Test support: start the real `shoal` binary on free ports with a fresh data
//! directory, talk to it over real HTTP, and find the example guests.
#![allow(missing_docs)]

pub mod cluster;
pub mod otlp;
pub mod prometheus;
pub mod replica;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Admin token every test host uses.
pub const TOKEN: &str = "test-admin-token";

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    // At run time first: `cargo test` sets it for the checkout being tested, while a
    // build shared between checkouts may carry another one's compile-time path.
    let tests_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    tests_dir
        .parent()
        .map(Path::to_path_buf)
        .expect("tests/ has a parent")
}

/// The `shoal` binary under test: `$SHOAL_BIN`, or the one next to this test's
/// target directory.
pub fn shoal_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/shoal
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .join("shoal");
    assert!(
        bin.exists(),
        "{} does not exist: build the host first (cargo build -p shoal)",
        bin.display()
    );
    bin
}

/// Bytes of an example guest built by `cargo build --release --target wasm32-wasip2`
/// in `guests/` (the test script does that first).
pub fn guest(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("SHOAL_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("guests/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {}: {error}; build the guests first (scripts/test.sh does)",
            path.display()
        )
    })
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    /// The body as a running service of the admin API's shared types.
    pub fn service(&self) -> shoal_api::services::RunningService {
        match serde_json::from_str::<shoal_api::services::Service>(&self.body) {
            Ok(shoal_api::services::Service::Running(service)) => *service,
            Ok(other) => panic!("not running: {other:?}"),
            Err(error) => panic!("not a service ({error}): {}", self.body),
        }
    }
}

/// A blocking HTTP client that returns every status as a [`Reply`].
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("HTTP request failed");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Reply {
        status,
        body,
        headers,
    }
}

/// Send `request` to `address` (`http://host:port`) and read the answer's head; the
/// stream is left for the rest.
fn raw_exchange(address: &str, request: &str) -> (String, std::net::TcpStream) {
    use std::io::{Read as _, Write as _};
    let address = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

/// A running `shoal serve` process with its own data directory.
pub struct Host {
    child: Option<Child>,
    pub gateway: String,
    pub admin: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// What the host printed on stdout while starting.
    pub startup_output: Vec<String>,
    agent: ureq::Agent,
    /// A stderr pipe held open and never read (see `start_with_unread_stderr`).
    unread_stderr: Option<std::process::ChildStderr>,
}

impl Host {
    /// Start a host on free ports with its data in `root/data`, its log in
    /// `root/host.log` (appended across restarts), and extra `args`.
    pub fn start(root: &Path, args: &[&str]) -> Host {
        Self::start_with_env(
            &root.join("data"),
            &root.join("host.log"),
            args,
            &[("SHOAL_ADMIN_TOKEN", TOKEN)],
        )
    }

    /// Start a host with explicit environment variables (no token unless given).
    pub fn start_with_env(
        data_dir: &Path,
        log_path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Host {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open host log");
        Self::spawn(data_dir, log_path, args, env, Stdio::from(log))
    }

    /// Start a host (with the test token) whose stderr is a pipe that nobody reads:
    /// once the pipe is full, every write to it would block.
    pub fn start_with_unread_stderr(root: &Path, args: &[&str]) -> Host {
        let mut host = Self::spawn(
            &root.join("data"),
            &root.join("host.log"),
            args,
            &[("SHOAL_ADMIN_TOKEN", TOKEN)],
            Stdio::piped(),
        );
        host.unread_stderr = host.child.as_mut().and_then(|child| child.stderr.take());
        host
    }

    fn spawn(
        data_dir: &Path,
        log_path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Host {
        let mut command = Command::new(shoal_bin());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("SHOAL_ADMIN_TOKEN")
            .env("SHOAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // A small instance pool unless the test sizes it itself.
        if !args.contains(&"--max-instances") {
            command.args(["--max-instances", "64"]);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn shoal");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut gateway, mut admin) = (None, None);
        let mut seen = Vec::new();
        while gateway.is_none() || admin.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("gateway listening on ") {
                        gateway = Some(url.to_owned());
                    } else if let Some(url) = line.strip_prefix("admin API listening on ") {
                        admin = Some(url.to_owned());
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(log_path).unwrap_or_default();
                    panic!("host did not start; stdout: {seen:?}\nlog:\n{log}");
                }
            }
        }
        // Keep draining stdout so the host never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        // Serving starts before the restore; tests start once the host is ready.
        let admin_url = admin.clone().expect("admin");
        let ready_agent = agent();
        while ready_agent
            .get(format!("{admin_url}/readyz"))
            .call()
            .map(|response| response.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("host never became ready; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Host {
            child: Some(child),
            gateway: gateway.expect("gateway"),
            admin: admin.expect("admin"),
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            startup_output: seen,
            agent: agent(),
            unread_stderr: None,
        }
    }

    /// GET a gateway path.
    pub fn get(&self, path: &str) -> Reply {
        reply(self.agent.get(format!("{}{path}", self.gateway)).call())
    }

    /// Send `body` with `method` to a gateway path; answer status and body text.
    pub fn send_bytes(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.gateway))
            .body(body.to_vec())
            .expect("request");
        let reply = reply(self.agent.run(request));
        (reply.status, reply.body)
    }

    /// POST to a gateway path.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        reply(
            self.agent
                .post(format!("{}{path}", self.gateway))
                .send(body),
        )
    }

    /// Deploy raw bytes as `name` (`application/wasm`), with the test token.
    pub fn deploy(&self, name: &str, wasm: &[u8]) -> Reply {
        self.deploy_with_token(name, wasm, TOKEN)
    }

    /// Deploy raw bytes as `name` with a chosen token.
    pub fn deploy_with_token(&self, name: &str, wasm: &[u8], token: &str) -> Reply {
        reply(
            self.agent
                .put(format!("{}/v1/services/{name}", self.admin))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/wasm")
                .send(wasm),
        )
    }

    /// Deploy with a manifest, as multipart.
    pub fn deploy_with_manifest(&self, name: &str, wasm: &[u8], manifest: &str) -> Reply {
        self.deploy_with_manifest_query(name, wasm, manifest, "")
    }

    /// Deploy with a manifest and a query string (e.g. `canary=10`).
    pub fn deploy_with_manifest_query(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &str,
        query: &str,
    ) -> Reply {
        self.deploy_multipart(name, wasm, manifest, query, TOKEN, &[])
    }

    /// Deploy with a manifest and extra request headers (`If-Match`, say).
    pub fn deploy_with_headers(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.deploy_multipart(name, wasm, manifest, "", TOKEN, headers)
    }

    /// Deploy with a manifest, as multipart, with a chosen token.
    pub fn deploy_multipart_with_token(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &str,
        token: &str,
    ) -> Reply {
        self.deploy_multipart(name, wasm, manifest, "", token, &[])
    }

    fn deploy_multipart(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &str,
        query: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let boundary = "shoal-test-boundary-7f3a";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"c.wasm\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(wasm);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let mut request = self
            .agent
            .put(format!("{}/v1/services/{name}{query}", self.admin))
            .header("authorization", format!("Bearer {token}"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            );
        for (header, value) in headers {
            request = request.header(*header, *value);
        }
        reply(request.send(&body[..]))
    }

    /// An admin call with a JSON body and the test token.
    pub fn admin_json(&self, method: &str, path: &str, json: &str) -> Reply {
        self.admin_json_with_token(method, path, json, TOKEN)
    }

    /// An admin call with a JSON body and a chosen token.
    pub fn admin_json_with_token(
        &self,
        method: &str,
        path: &str,
        json: &str,
        token: &str,
    ) -> Reply {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.admin))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(json.to_owned())
            .expect("request");
        reply(self.agent.run(request))
    }

    /// An admin call with a body of any content type and the test token.
    pub fn admin_body(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.admin))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(body.to_vec())
            .expect("request");
        reply(self.agent.run(request))
    }

    /// GET a gateway path with extra headers.
    pub fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.gateway));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        reply(request.call())
    }

    /// An admin call with the test token.
    /// The running service `name`, as the admin API's shared types say.
    pub fn running(&self, name: &str) -> shoal_api::services::RunningService {
        self.admin("GET", &format!("/v1/services/{name}")).service()
    }

    pub fn admin(&self, method: &str, path: &str) -> Reply {
        self.admin_with_token(method, path, Some(TOKEN))
    }

    /// An admin call with a chosen token (or none).
    pub fn admin_with_token(&self, method: &str, path: &str, token: Option<&str>) -> Reply {
        let url = format!("{}{path}", self.admin);
        let mut request = ureq::http::Request::builder().method(method).uri(url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(()).expect("request");
        reply(self.agent.run(request))
    }

    /// Send raw request bytes to the admin port and return the status line and headers
    /// of the answer (what a client sees before it has sent any body).
    pub fn raw_admin_head(&self, request: &str) -> String {
        let (head, _stream) = raw_exchange(&self.admin, request);
        head
    }

    /// `GET path` on the gateway as a raw HTTP/1.1 client (one request, then the
    /// connection closes): the response head (lowercased) and the open stream, which
    /// holds the rest.
    pub fn raw_gateway(&self, path: &str) -> (String, std::net::TcpStream) {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: shoal.test\r\nConnection: close\r\n\r\n");
        let (head, stream) = raw_exchange(&self.gateway, &request);
        (head.to_ascii_lowercase(), stream)
    }

    /// `GET path` on the gateway as a raw HTTP/1.1 client sees it: the response head
    /// (lowercased) and the bytes after it, read to the connection's end.
    pub fn raw_gateway_get(&self, path: &str) -> (String, String) {
        use std::io::Read as _;
        let (head, mut stream) = self.raw_gateway(path);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (head, String::from_utf8_lossy(&rest).into_owned())
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// File descriptors the host process has open now (Linux).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// The host's `/metrics` page.
    pub fn metrics_text(&self) -> String {
        self.agent
            .get(format!("{}/metrics", self.admin))
            .call()
            .expect("metrics")
            .body_mut()
            .read_to_string()
            .expect("body")
    }

    /// Everything the host has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send a signal to the host process.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY-free: `kill` on our own child's pid.
        let rc = unsafe_kill(pid, signal);
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Wait for the host to exit, up to `timeout`; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the host, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Let a Rust build that `command` runs share the guests' target directory (their
/// dependencies are built there already), when the tests know it.
pub fn share_guests_target(command: &mut std::process::Command) {
    if let Some(guests) = std::env::var_os("SHOAL_GUESTS_DIR") {
        let guests = PathBuf::from(guests);
        if let Some(target) = guests.parent().and_then(|p| p.parent()) {
            command.env("CARGO_TARGET_DIR", target);
        }
    }
}

/// Send `signal` to the process `pid` (a child of this test); whether it was sent.
pub fn signal_process(pid: u32, signal: i32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| unsafe_kill(pid, signal) == 0)
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    // SAFETY: plain syscall wrapper with no memory arguments.
    unsafe { libc::kill(pid, signal) }
}

/// Resident memory of a process now, from `/proc/PID/status` (Linux), in MiB.
pub fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

/// Run a Python helper of the tests (`tests/DIR/NAME.py`) with `args`; its last
/// line of output is JSON.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let path = repo_root().join("tests").join(script);
    let output = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|error| panic!("{script} printed {stdout}: {error}"))
}

/// Poll `condition` until it holds; fail the test naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh temporary directory for one host (data and log).
pub fn temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shoal-e2e-")
        .tempdir()
        .expect("tempdir")
}

/// Run the `shoal` CLI with `args` and environment; returns (success, stdout, stderr).
pub fn shoal_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(shoal_bin());
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run shoal");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`shoal_cli`] with `input` on its standard input.
pub fn shoal_cli_with_input(
    args: &[&str],
    env: &[(&str, &str)],
    input: &[u8],
) -> (bool, String, String) {
    let mut command = Command::new(shoal_bin());
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("run shoal");
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, input).expect("write its input");
    }
    let output = child.wait_with_output().expect("shoal ends");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The one load generator of the tests: `threads` clients that GET one URL in a loop
/// until it is finished (or dropped). Each answer is sorted by the test's `classify`:
/// `Some(label)` counts it under that label (a version, say), `None` records it as a
/// failure. Tests wait on the counts (a condition), never on how fast they grow.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// Sorts one answer of a [`Load`]: its status and body give a label, or `None` for a
/// failure.
pub type Classify = fn(u16, &str) -> Option<&'static str>;

fn lock_unpoisoned<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Load {
    /// Start `threads` clients on `url`, each pausing `pause` between requests.
    pub fn start(url: String, threads: usize, pause: Duration, classify: Classify) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts: std::sync::Arc<
            std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>,
        > = std::sync::Arc::default();
        let failures: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let workers = (0..threads)
            .map(|_| {
                let (stop, counts, failures, url) =
                    (stop.clone(), counts.clone(), failures.clone(), url.clone());
                std::thread::spawn(move || {
                    let agent = agent();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let outcome = agent.get(&url).call().map(|mut response| {
                            let status = response.status().as_u16();
                            let body = response.body_mut().read_to_string().unwrap_or_default();
                            (status, body)
                        });
                        match outcome {
                            Ok((status, body)) => match classify(status, &body) {
                                Some(label) => {
                                    *lock_unpoisoned(&counts).entry(label).or_default() += 1;
                                }
                                None => {
                                    lock_unpoisoned(&failures).push(format!("{status} {body:?}"))
                                }
                            },
                            Err(error) => lock_unpoisoned(&failures).push(format!("error {error}")),
                        }
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            failures,
            workers,
        }
    }

    /// Answers counted under `label` so far.
    pub fn count(&self, label: &str) -> usize {
        lock_unpoisoned(&self.counts)
            .get(label)
            .copied()
            .unwrap_or(0)
    }

    /// Answers counted under any label so far.
    pub fn total(&self) -> usize {
        lock_unpoisoned(&self.counts).values().sum()
    }

    /// Wait until more answers than now are counted under `label` (`what` names it
    /// if that never happens within `timeout`).
    pub fn wait_for_more(&self, what: &str, label: &str, timeout: Duration) {
        let before = self.count(label);
        wait_for(what, timeout, || self.count(label) > before);
    }

    /// Stop, and return the counts by label and the failures.
    pub fn finish(mut self) -> (std::collections::BTreeMap<&'static str, usize>, Vec<String>) {
        self.stop_workers();
        let counts = lock_unpoisoned(&self.counts).clone();
        let failures = std::mem::take(&mut *lock_unpoisoned(&self.failures));
        (counts, failures)
    }

    fn stop_workers(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Where a test host keeps services' stores: SQLite files in its data directory, or a
/// database of its own on the test run's PostgreSQL server (started by
/// `scripts/test.sh`, which exports `SHOAL_TEST_POSTGRES_URL`).
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded default.
    Embedded,
    /// `--store` with this URL.
    Postgres(String),
    /// `--store` with this PostgreSQL URL and `--bus` with this NATS URL, in a
    /// namespace of the test's own.
    PostgresAndNats {
        /// The database.
        postgres: String,
        /// The NATS server.
        nats: String,
        /// The test's bus namespace.
        namespace: String,
    },
}

impl Store {
    /// Every backend a store test runs on: the embedded one, and PostgreSQL.
    pub fn every() -> Vec<Store> {
        vec![Store::Embedded, Store::postgres()]
    }

    /// Every backend pair an event test runs on: the embedded ones, and PostgreSQL
    /// with NATS JetStream.
    pub fn every_with_bus() -> Vec<Store> {
        vec![Store::Embedded, Store::postgres_and_nats()]
    }

    /// A new, empty database and a new bus namespace on the test run's PostgreSQL
    /// and NATS servers.
    pub fn postgres_and_nats() -> Store {
        let Store::Postgres(postgres) = Store::postgres() else {
            unreachable!("a PostgreSQL store")
        };
        Store::PostgresAndNats {
            postgres,
            nats: nats_url(),
            namespace: format!("t{:016x}", random_u64()),
        }
    }

    /// A new, empty database on the test run's PostgreSQL server.
    pub fn postgres() -> Store {
        let server = std::env::var("SHOAL_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "SHOAL_TEST_POSTGRES_URL is not set: run the tests with scripts/test.sh, or \
                 `source scripts/setup.sh; source scripts/servers.sh; start_postgres` first"
            )
        });
        let name = format!("shoal_test_{:016x}", random_u64());
        let psql = std::env::var("SHOAL_TEST_POSTGRES_BIN")
            .map(|bin| format!("{bin}/psql"))
            .unwrap_or_else(|_| "psql".into());
        let made = Command::new(&psql)
            .arg(&server)
            .args(["-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql runs");
        assert!(
            made.status.success(),
            "creating database {name}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        Store::Postgres(format!("{base}/{name}"))
    }

    /// The `shoal serve` arguments that select it.
    pub fn args(&self) -> Vec<&str> {
        match self {
            Store::Embedded => Vec::new(),
            Store::Postgres(url) => vec!["--store", url.as_str()],
            Store::PostgresAndNats {
                postgres,
                nats,
                namespace,
            } => vec![
                "--store",
                postgres.as_str(),
                "--bus",
                nats.as_str(),
                "--bus-namespace",
                namespace.as_str(),
            ],
        }
    }

    /// [`Store::args`] followed by `extra`.
    pub fn with<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = self.args();
        args.extend_from_slice(extra);
        args
    }

    /// The engines the host names for its store and its bus (`GET /v1/host`).
    pub fn engines(&self) -> (&'static str, &'static str) {
        match self {
            Store::Embedded => ("sqlite", "sqlite"),
            Store::Postgres(_) => ("postgresql", "sqlite"),
            Store::PostgresAndNats { .. } => ("postgresql", "nats"),
        }
    }

    /// Its name in failure messages.
    pub fn name(&self) -> &'static str {
        match self {
            Store::Embedded => "embedded SQLite",
            Store::Postgres(_) => "PostgreSQL",
            Store::PostgresAndNats { .. } => "PostgreSQL and NATS",
        }
    }
}

/// A random number from the kernel, for unique names.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes));
    read.expect("/dev/urandom");
    u64::from_le_bytes(bytes)
}

/// The test run's NATS server.
pub fn nats_url() -> String {
    std::env::var("SHOAL_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "SHOAL_TEST_NATS_URL is not set: run the tests with scripts/test.sh, or \
             `source scripts/setup.sh; source scripts/servers.sh; start_nats` first"
        )
    })
}

/// A NATS server with JetStream of a test's own (for tests that stop and start it),
/// the program `scripts/test.sh` found (`SHOAL_TEST_NATS_BIN`).
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    token: Option<String>,
}

impl NatsServer {
    /// Start one on a free port, its streams in a temporary directory.
    pub fn start() -> NatsServer {
        Self::start_with(None)
    }

    /// [`NatsServer::start`], accepting only clients that present `token`.
    pub fn start_with_token(token: &str) -> NatsServer {
        Self::start_with(Some(token.to_owned()))
    }

    fn start_with(token: Option<String>) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("shoal-nats-")
            .tempdir()
            .expect("temp dir");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("address").port()
        };
        let mut server = NatsServer {
            dir,
            port,
            child: None,
            token,
        };
        server.resume();
        server
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stop it as an operator restarting it does (SIGTERM: it writes out what it
    /// acknowledged, and its clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Kill it at once (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and streams.
    pub fn resume(&mut self) {
        let bin = std::env::var("SHOAL_TEST_NATS_BIN").unwrap_or_else(|_| {
            panic!("SHOAL_TEST_NATS_BIN is not set: run the tests with scripts/test.sh")
        });
        let child = Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .args(
                self.token
                    .iter()
                    .flat_map(|token| ["--auth", token.as_str()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        wait_for(
            "NATS to accept connections",
            Duration::from_secs(30),
            || std::net::TcpStream::connect(&address).is_ok(),
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server of a test's own (for tests that stop and start it), from the
/// binaries `scripts/test.sh` found (`SHOAL_TEST_POSTGRES_BIN`); run as the
/// `postgres` user when the tests run as root, as PostgreSQL requires.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    tls: bool,
}

impl PostgresServer {
    /// Make a cluster in a temporary directory and start it on a free port.
    pub fn start() -> PostgresServer {
        Self::start_with(false)
    }

    /// [`PostgresServer::start`], serving TLS with a certificate for 127.0.0.1 signed
    /// by a certificate authority of its own ([`PostgresServer::ca_file`]).
    pub fn start_with_tls() -> PostgresServer {
        Self::start_with(true)
    }

    /// The PEM file of the authority that signed a TLS server's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> PostgresServer {
        let dir = tempfile::Builder::new()
            .prefix("shoal-pg-")
            .tempdir()
            .expect("temp dir");
        let as_root = is_root();
        if as_root {
            let chowned = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chowned.success());
        }
        let made = postgres_command(as_root, "initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres"])
            .output()
            .expect("initdb runs");
        assert!(
            made.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("address").port()
        };
        if tls {
            make_certificates(dir.path(), as_root);
        }
        let mut server = PostgresServer {
            dir,
            port,
            child: None,
            tls,
        };
        server.resume();
        server
    }

    /// The superuser URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stop it at once (as a crash or an outage looks to its clients).
    pub fn stop(&mut self) {
        if self.child.is_some() && self.dir.path().join("data/postmaster.pid").exists() {
            // A frozen server cannot stop: let it go on first.
            self.signal_all("CONT", false);
        }
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: no waiting for clients to leave.
            let _ = postgres_command(is_root(), "pg_ctl")
                .args(["stop", "-m", "immediate", "-D"])
                .arg(self.dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }

    /// Freeze it (SIGSTOP to the server and every backend): connections stay open
    /// and nothing answers, as a database that hangs looks to its clients.
    pub fn freeze(&self) {
        self.signal_all("STOP", true);
    }

    /// Let a frozen server go on.
    pub fn thaw(&self) {
        self.signal_all("CONT", true);
    }

    /// Send `signal` to the server and its backends; `strict`: they must be there.
    fn signal_all(&self, signal: &str, strict: bool) {
        // `runuser` stops itself when its child stops (as `su` does for job
        // control): it is continued with it, or it never reaps the server.
        if let Some(child) = &self.child
            && signal == "CONT"
        {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        let pid_file = self.dir.path().join("data").join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            assert!(!strict, "PostgreSQL is not running");
            return;
        };
        let pid = text.lines().next().unwrap_or_default().trim().to_owned();
        for args in [
            vec![format!("-{signal}"), "-P".to_owned(), pid.clone()],
            vec![format!("-{signal}"), pid.clone()],
        ] {
            let program = if args.len() == 3 { "pkill" } else { "kill" };
            let signalled = Command::new(program).args(&args).status();
            assert!(
                !strict || signalled.is_ok_and(|status| status.success()),
                "{program} {args:?}"
            );
        }
    }

    /// Start it again on the same port and data.
    pub fn resume(&mut self) {
        let as_root = is_root();
        let child = postgres_command(as_root, "postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-k",
            ])
            .arg(self.dir.path())
            .args(if self.tls {
                vec![
                    "-c".to_owned(),
                    "ssl=on".to_owned(),
                    "-c".to_owned(),
                    format!(
                        "ssl_cert_file={}",
                        self.dir.path().join("server.pem").display()
                    ),
                    "-c".to_owned(),
                    format!(
                        "ssl_key_file={}",
                        self.dir.path().join("server.key").display()
                    ),
                ]
            } else {
                Vec::new()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "PostgreSQL to accept connections",
            Duration::from_secs(30),
            || {
                postgres_command(false, "pg_isready")
                    .args(["-q", "-d", &url])
                    .status()
                    .is_ok_and(|status| status.success())
            },
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A certificate authority (`ca.pem`) and a server certificate for 127.0.0.1 it
/// signed (`server.pem`, `server.key`), made with openssl in `dir`; the key readable
/// by PostgreSQL only, as it requires.
fn make_certificates(dir: &std::path::Path, as_root: bool) {
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Shoal test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }
    if as_root {
        let chowned = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.join("server.key"))
            .arg(dir.join("server.pem"))
            .status()
            .expect("chown");
        assert!(chowned.success());
    }
}

/// A PostgreSQL program, as the `postgres` user when `as_postgres`.
fn postgres_command(as_postgres: bool, program: &str) -> Command {
    let bin = std::env::var("SHOAL_TEST_POSTGRES_BIN").unwrap_or_else(|_| {
        panic!("SHOAL_TEST_POSTGRES_BIN is not set: run the tests with scripts/test.sh")
    });
    let path = format!("{bin}/{program}");
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    // The effective user id, as `id -u` prints it.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}
