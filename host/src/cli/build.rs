//! `shoal build`: compile a Rust service to a `wasm32-wasip2` component.

use anyhow::{Context as _, Result, bail};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Build the Cargo package in `dir` for `wasm32-wasip2` (release) and return the path
/// of the component it produced.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml: `shoal build` builds Rust services; for other languages \
             use their component tooling (componentize-py, jco componentize, wit-bindgen c) \
             and deploy the resulting .wasm",
            dir.display()
        );
    }
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running cargo (is Rust installed?)")?;
    let mut wasm = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let is_this_package = message["manifest_path"]
                .as_str()
                .is_some_and(|path| Path::new(path) == manifest || same_file(path, &manifest));
            if !is_this_package {
                continue;
            }
            if let Some(files) = message["filenames"].as_array() {
                wasm.extend(
                    files
                        .iter()
                        .filter_map(|f| f.as_str())
                        .filter(|f| f.ends_with(".wasm"))
                        .map(PathBuf::from),
                );
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "cargo build failed ({status}); if the target is missing, run \
             `rustup target add wasm32-wasip2`"
        );
    }
    match wasm.pop() {
        Some(path) => Ok(path),
        None => bail!(
            "the build produced no .wasm: the package needs `crate-type = [\"cdylib\"]` \
             under [lib]"
        ),
    }
}

fn same_file(a: &str, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
