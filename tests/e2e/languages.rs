//! One page per language (`guests/languages/*.md`): every `sh` block of a page runs as
//! it stands, in order, against a real host — install the tool, `shoal new`, bindings,
//! `shoal build`, `shoal deploy .`, `curl` — so the pages cannot rot.

use shoal_tests::{Host, TOKEN, repo_root, shoal_bin, temp_root};
use std::process::Command;

/// The `sh` blocks of `page`, in order.
fn steps(page: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("guests/languages").join(page))
        .expect("the language page");
    let mut script = String::new();
    let mut inside = false;
    for line in text.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, line) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!script.is_empty(), "{page} has no sh blocks");
    script
}

/// Run `page`'s steps in a fresh directory against `host`: their stdout and stderr.
fn run_steps(root: &std::path::Path, host: &Host, page: &str) -> (String, String) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let bin_dir = shoal_bin()
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &steps(page)])
        .current_dir(&work)
        .env("PATH", path)
        .env("SHOAL_ADMIN_URL", &host.admin)
        .env("SHOAL_ADMIN_TOKEN", TOKEN)
        .env("SHOAL_GATEWAY", &host.gateway)
        .env("SHOAL_SDK_DIR", repo_root().join("sdk"));
    shoal_tests::share_guests_target(&mut command);
    let output = command.output().expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{page}'s steps failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    (stdout.into_owned(), stderr.into_owned())
}

/// Run `page`'s steps in a fresh directory against a new host; check the service it
/// deploys answers, logs and counts.
fn run_page(page: &str) {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let work = root.path().join("work");
    let (stdout, stderr) = run_steps(root.path(), &host, page);
    assert!(
        stdout.trim_end().ends_with("Hello from greeter!"),
        "{page}: the service's answer ends the steps:\n{stdout}\n{stderr}"
    );
    // It is a real service of the host: it logs and counts.
    let reply = host.get("/greeter/");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let metrics = host.metrics_text();
    assert!(
        metrics.contains("shoal_guest_greeter:greetings_total{service=\"greeter\"} 2"),
        "{page}: the counter in\n{metrics}"
    );
    assert!(
        host.log()
            .lines()
            .any(|line| line.contains("greeted") && line.contains("greeter")),
        "{page}: the service's log line"
    );
    // The page's own `shoal new` refuses to write over the service it made.
    let again = Command::new(shoal_bin())
        .args(["new", "--lang", "c", "greeter"])
        .current_dir(&work)
        .output()
        .expect("shoal new");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn the_rust_page_runs_as_written() {
    run_page("rust.md");
}

#[test]
fn the_python_page_runs_as_written() {
    run_page("python.md");
}

#[test]
fn the_javascript_page_runs_as_written() {
    run_page("javascript.md");
}

#[test]
fn the_c_page_runs_as_written() {
    run_page("c.md");
}

#[test]
fn the_grpc_page_runs_as_written() {
    let root = temp_root();
    let host = Host::start(root.path(), &[]);
    let (stdout, stderr) = run_steps(root.path(), &host, "grpc.md");
    assert!(
        stdout.ends_with("Hello you (1)\nHello you (2)\nHello you\n"),
        "the stream, then the unary answer, end the steps:\n{stdout}\n{stderr}"
    );
    assert_eq!(host.running("greeter").requests, 2);
    // A contract of one's own: a function per method, each answering an empty reply.
    let work = root.path().join("work");
    let made = Command::new(shoal_bin())
        .args(["new", "--lang", "rust", "--grpc", "greeter2", "--proto"])
        .arg(repo_root().join("guests/grpc-greeter/proto/helloworld.proto"))
        .env("SHOAL_SDK_DIR", repo_root().join("sdk"))
        .current_dir(&work)
        .output()
        .expect("shoal new");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let source = std::fs::read_to_string(work.join("greeter2/src/lib.rs")).expect("lib.rs");
    assert!(
        source.contains(".unary(\"/helloworld.Greeter/SayHello\", say_hello)"),
        "{source}"
    );
    assert!(
        source.contains(
            ".server_streaming(\"/helloworld.Greeter/SayHelloStream\", say_hello_stream)"
        ),
        "{source}"
    );
    let manifest = std::fs::read_to_string(work.join("greeter2/shoal.toml")).expect("manifest");
    assert!(
        manifest.contains("grpc = [\"helloworld.Greeter\"]"),
        "{manifest}"
    );
    // A .proto protoc refuses is refused with protoc's words.
    std::fs::write(work.join("broken.proto"), "syntax = \"proto3\";\nservice {").expect("write");
    let refused = Command::new(shoal_bin())
        .args([
            "new",
            "--lang",
            "rust",
            "--grpc",
            "broken",
            "--proto",
            "broken.proto",
        ])
        .current_dir(&work)
        .output()
        .expect("shoal new");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("protoc cannot read broken.proto"),
        "{stderr}"
    );
    assert!(!work.join("broken").exists(), "nothing written");
}
