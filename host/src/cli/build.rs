//! `shoal build`: turn a service's directory into a component. The manifest's
//! `[build]` command when it has one; otherwise by the language its files show
//! (Rust through cargo for `wasm32-wasip2`; the others through the command `shoal
//! new` writes for them).

use anyhow::{Context as _, Result, bail};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::scaffold::Lang;

/// Build the service in `dir` and return the path of the component it produced.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let manifest_path = dir.join("shoal.toml");
    let declared = if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        crate::manifest::Manifest::from_toml(&text)
            .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?
            .build
    } else {
        None
    };
    let (command, output) = match (declared, Lang::detect(dir)) {
        (Some(build), _) => (build.command, build.output),
        (None, Some(Lang::Rust)) => return build_rust(dir),
        (None, Some(lang)) => {
            let name = name_from_path(dir)?;
            match lang.build_command(&name) {
                Some(command) => (command, format!("{name}.wasm")),
                None => return build_rust(dir),
            }
        }
        (None, None) => bail!(
            "{} has no `[build]` command in shoal.toml and no service `shoal build` \
             recognises (Cargo.toml, app.py, app.js with package.json, service.c); \
             `shoal new --lang rust|js|python|c NAME` writes one",
            dir.display()
        ),
    };
    run_command(dir, &command, &output)
}

/// Run a declared build command with `sh -c` in `dir`; its output goes to stderr, so
/// stdout carries only the component's path.
fn run_command(dir: &Path, command: &str, output: &str) -> Result<PathBuf> {
    eprintln!("building in {}: {command}", dir.display());
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .status()
        .context("running sh")?;
    if !status.success() {
        bail!("the build command failed ({status}): {command}");
    }
    let component = dir.join(output);
    if !component.is_file() {
        bail!(
            "the build command succeeded but left no {} (the manifest's `[build] output`)",
            component.display()
        );
    }
    Ok(component)
}

/// Build the Cargo package in `dir` for `wasm32-wasip2` (release).
fn build_rust(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
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

/// A service name from a component's file name or a service directory's name.
pub(super) fn name_from_path(path: &Path) -> Result<String> {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let stem = absolute
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| {
            format!(
                "cannot derive a service name from {}; pass --name",
                path.display()
            )
        })?;
    Ok(stem.to_ascii_lowercase().replace(['_', '.', ' '], "-"))
}
