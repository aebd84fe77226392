//! `shoal dev` through the real binary: it starts a host of its own, builds and
//! deploys a new service, serves an edit within seconds without failing a request,
//! shows a broken build while the last good version keeps serving, prints the
//! service's log lines with their request ids, and leaves nothing behind on Ctrl-C.
//! With `--admin` it uses a running host instead.

use shoal_tests::{
    Host, Load, TOKEN, agent, repo_root, shoal_bin, signal_process, temp_root, wait_for,
};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `shoal dev` and everything it has printed.
struct Dev {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Dev {
    fn start(work: &Path, args: &[&str]) -> Dev {
        let mut command = Command::new(shoal_bin());
        command
            .arg("dev")
            .args(args)
            .current_dir(work)
            .env("SHOAL_SDK_DIR", repo_root().join("sdk"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        shoal_tests::share_guests_target(&mut command);
        let mut child = command.spawn().expect("start shoal dev");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut all = output.lock().unwrap_or_else(|e| e.into_inner());
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        Dev { child, output }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until the output has a line matching `check`; that line.
    fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().lines().find(|line| check(line)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "shoal dev exited ({status}) before {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C, and its exit status once it has stopped.
    fn interrupt(mut self) -> (std::process::ExitStatus, String) {
        assert!(signal_process(self.child.id(), libc::SIGINT), "send SIGINT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The reader threads finish with the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "shoal dev did not stop:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shoal new --lang rust NAME` in `work`.
fn new_service(work: &Path, name: &str) {
    let made = Command::new(shoal_bin())
        .args(["new", "--lang", "rust", name])
        .env("SHOAL_SDK_DIR", repo_root().join("sdk"))
        .current_dir(work)
        .output()
        .expect("shoal new");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

fn get(url: &str) -> String {
    agent()
        .get(url)
        .call()
        .ok()
        .and_then(|mut response| response.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read source");
    assert!(text.contains(from), "{from} in {}", file.display());
    std::fs::write(file, text.replace(from, to)).expect("write source");
}

#[test]
fn shoal_dev_serves_each_edit_keeps_the_last_good_build_and_leaves_nothing_behind() {
    let root = temp_root();
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    new_service(&work, "devsvc");
    let mut dev = Dev::start(&work, &["devsvc"]);
    let started = dev.wait_for_line("the embedded host", Duration::from_secs(60), |line| {
        line.contains("host started (pid ")
    });
    let pid: u32 = started
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("a pid in {started}"));
    let data_dir = started
        .split("data in ")
        .nth(1)
        .and_then(|rest| rest.split(", admin API").next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("a data directory in {started}"));
    assert!(data_dir.is_dir(), "{}", data_dir.display());
    let deployed = dev.wait_for_line("the first deploy", Duration::from_secs(300), |line| {
        line.contains("devsvc ✓ deployed")
    });
    let url = deployed
        .split("→ ")
        .nth(1)
        .map(|url| format!("{}/", url.trim()))
        .unwrap_or_else(|| panic!("a URL in {deployed}"));
    assert_eq!(get(&url), "Hello from devsvc!\n");

    // An edit is served within seconds, and no request fails while it is swapped in.
    let load = Load::start(url.clone(), 2, Duration::from_millis(5), |status, _| {
        (status == 200).then_some("ok")
    });
    let source = work.join("devsvc/src/lib.rs");
    edit(&source, "from devsvc!", "via devsvc!");
    wait_for("the edit to be served", Duration::from_secs(120), || {
        get(&url) == "Hello via devsvc!\n"
    });
    load.wait_for_more("answers after the swap", "ok", Duration::from_secs(10));
    let (counts, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?} (of {counts:?})");

    // A broken build is shown; the last good version keeps serving.
    edit(&source, "fn handle(", "fn handle broken(");
    dev.wait_for_line("the build error", Duration::from_secs(120), |line| {
        line.contains("devsvc ✗ build failed")
    });
    assert!(dev.output().contains("error"), "{}", dev.output());
    assert_eq!(get(&url), "Hello via devsvc!\n");

    // The service's log lines, with their request ids.
    dev.wait_for_line(
        "a log line of the service",
        Duration::from_secs(30),
        |line| {
            line.starts_with("devsvc | INFO")
                && line.contains(" greeted ")
                && line
                    .split_whitespace()
                    .any(|word| word.len() == 32 && word.chars().all(|c| c.is_ascii_hexdigit()))
        },
    );

    let (status, output) = dev.interrupt();
    assert!(status.success(), "{status}:\n{output}");
    assert!(
        output.contains("host stopped, its data removed"),
        "{output}"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the host {pid} still runs"
    );
    assert!(!data_dir.exists(), "{} was left", data_dir.display());
}

#[test]
fn shoal_dev_with_admin_deploys_to_a_running_host_and_leaves_it_running() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    new_service(&work, "devremote");
    let mut dev = Dev::start(
        &work,
        &[
            "--admin",
            &host.admin,
            "--token",
            TOKEN,
            "--gateway",
            &host.gateway,
            "devremote",
        ],
    );
    dev.wait_for_line("the deploy", Duration::from_secs(300), |line| {
        line.contains("devremote ✓ deployed 0.1.0")
            && line.contains(&format!("{}/devremote", host.gateway))
    });
    assert!(!dev.output().contains("host started"), "{}", dev.output());
    assert_eq!(host.get("/devremote/").body, "Hello from devremote!\n");
    let (status, output) = dev.interrupt();
    assert!(status.success(), "{status}:\n{output}");
    assert!(output.contains("stay deployed"), "{output}");
    assert_eq!(host.get("/devremote/").body, "Hello from devremote!\n");
}

#[test]
fn shoal_dev_refuses_what_it_cannot_develop() {
    let root = temp_root();
    let (ok, out, err) = shoal_tests::shoal_cli(
        &["dev", root.path().join("absent").to_str().expect("utf8")],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("is not a service directory"), "{err}");
}
