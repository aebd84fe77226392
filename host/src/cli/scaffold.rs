//! `shoal new --lang rust|js|python|c NAME`: a service that builds (`shoal build`)
//! and deploys (`shoal deploy`) as it stands, in each language's own component
//! tooling; and what `shoal build` runs for a directory of each language.

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};

/// A language `shoal new` and `shoal build` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, through the Shoal SDK (cargo, wasm32-wasip2).
    Rust,
    /// JavaScript, through componentize-js (npm).
    #[value(alias = "javascript")]
    Js,
    /// Python, through componentize-py (pip).
    #[value(alias = "py")]
    Python,
    /// C, through `wit-bindgen c`, clang for wasm32-wasi and `wasm-tools`.
    C,
}

/// Version of `wasi:http` that the JavaScript runtime (StarlingMonkey, in
/// componentize-js 0.23) exports; its WIT folder carries the WASI packages at this
/// version too (0.2.x releases differ in their version number only).
const JS_WASI_VERSION: &str = "0.2.10";
/// The version the repository's WIT names.
const WIT_WASI_VERSION: &str = "0.2.12";
/// WASI packages a toolchain's own `wasi:http` version needs copies of.
const WASI_PACKAGES: &[&str] = &[
    "io",
    "clocks",
    "random",
    "cli",
    "filesystem",
    "sockets",
    "http",
];

impl Lang {
    /// The language of the service in `dir`, from the files it has.
    pub fn detect(dir: &Path) -> Option<Lang> {
        if dir.join("Cargo.toml").is_file() {
            Some(Lang::Rust)
        } else if dir.join("package.json").is_file() && dir.join("app.js").is_file() {
            Some(Lang::Js)
        } else if dir.join("app.py").is_file() {
            Some(Lang::Python)
        } else if dir.join("service.c").is_file() {
            Some(Lang::C)
        } else {
            None
        }
    }

    /// The shell command that builds the service `name` of this language in its
    /// directory into `name.wasm` (Rust: `None`, cargo is run directly).
    pub fn build_command(self, name: &str) -> Option<String> {
        match self {
            Lang::Rust => None,
            Lang::Python => Some(format!(
                "componentize-py -d wit -w shoal:platform/service@0.1.0 componentize app -o {name}.wasm"
            )),
            Lang::Js => Some(format!(
                "npm install --no-audit --no-fund --loglevel=error && \
                 node_modules/.bin/componentize-js app.js --wit wit \
                 --world-name local:service/service -o {name}.wasm"
            )),
            Lang::C => Some(format!(
                "mkdir -p build && \
                 wit-bindgen c wit --world shoal:platform/service@0.1.0 --out-dir build && \
                 clang-16 --target=wasm32-wasi -O2 -Wall -mexec-model=reactor \
                 -fuse-ld=/usr/bin/wasm-ld-16 -Ibuild service.c build/service.c \
                 build/service_component_type.o -o build/core.wasm && \
                 wasm-tools component new build/core.wasm \
                 --adapt wasi_snapshot_preview1=wasi_snapshot_preview1.reactor.wasm -o {name}.wasm"
            )),
        }
    }
}

/// Write a new service `name` of `lang` into `dir` (which must not exist or be
/// empty). `sdk` is the Shoal SDK a Rust service depends on.
pub fn create(lang: Lang, name: &str, dir: &Path, sdk: &Path) -> Result<()> {
    check_new(name, dir)?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{metric}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut text = |path: &str, template: &str| files.push((path.into(), fill(template).into()));
    match lang {
        Lang::Rust => {
            text("Cargo.toml", include_str!("templates/rust/Cargo.toml"));
            text("src/lib.rs", include_str!("templates/rust/lib.rs"));
        }
        Lang::Python => text("app.py", include_str!("templates/python/app.py")),
        Lang::Js => {
            text("app.js", include_str!("templates/javascript/app.js"));
            text(
                "package.json",
                include_str!("templates/javascript/package.json"),
            );
        }
        Lang::C => text("service.c", include_str!("templates/c/service.c")),
    }
    text("shoal.toml", &manifest(lang, name));
    match lang {
        Lang::Rust => {}
        Lang::Python | Lang::C => files.extend(platform_wit()),
        Lang::Js => files.extend(own_world_wit(
            include_str!("templates/javascript/service.wit"),
            JS_WASI_VERSION,
        )),
    }
    if lang == Lang::C {
        files.push((
            "wasi_snapshot_preview1.reactor.wasm".into(),
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
                .to_vec(),
        ));
    }
    write_files(dir, files)
}

/// Whether `name` can name a new service written into `dir` (absent or empty).
pub(super) fn check_new(name: &str, dir: &Path) -> Result<()> {
    crate::registry::validate_name(name)
        .map_err(|error| anyhow::anyhow!("`{name}` cannot name a service: {error}"))?;
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!(
            "{} exists and is not empty; pick another name or --dir",
            dir.display()
        );
    }
    Ok(())
}

/// Write `files` (paths relative to `dir`), creating folders as needed.
pub(super) fn write_files(dir: &Path, files: Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
    for (path, bytes) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The new service's manifest: its config, and how `shoal build` builds it.
fn manifest(lang: Lang, name: &str) -> String {
    let mut text = format!(
        "# `{name}`: deploy with `shoal deploy .` (builds first, reads this file).\n\
         version = \"0.1.0\"\n\n[config]\ngreeting = \"Hello\"\n"
    );
    if let Some(command) = lang.build_command(name) {
        text.push_str(&format!(
            "\n# What `shoal build` runs here, and the component it makes.\n[build]\n\
             command = \"{}\"\noutput = \"{name}.wasm\"\n",
            command.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    text
}

/// The repository's `wit/` as it is: `shoal:platform` at the top, WASI in `deps/`.
fn platform_wit() -> Vec<(PathBuf, Vec<u8>)> {
    super::wit_files::FILES
        .iter()
        .map(|(path, text)| (Path::new("wit").join(path), text.as_bytes().to_vec()))
        .collect()
}

/// A WIT folder for a toolchain that exports its own `wasi:http` version: the
/// service's world on top, `shoal:platform` in `deps/shoal`, and the WASI packages at
/// both the repository's version and `version`.
fn own_world_wit(world: &str, version: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = vec![(PathBuf::from("wit/service.wit"), world.as_bytes().to_vec())];
    for (path, text) in super::wit_files::FILES {
        let path = Path::new(path);
        match path.strip_prefix("deps") {
            Err(_) => files.push((
                Path::new("wit/deps/shoal").join(path),
                text.as_bytes().to_vec(),
            )),
            Ok(inner) => {
                let mut parts = inner.components();
                let package = parts
                    .next()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !WASI_PACKAGES.contains(&package.as_str()) {
                    continue;
                }
                files.push((Path::new("wit").join(path), text.as_bytes().to_vec()));
                let renamed = text
                    .replace(&format!("@{WIT_WASI_VERSION}"), &format!("@{version}"))
                    .replace(
                        &format!("version = {WIT_WASI_VERSION}"),
                        &format!("version = {version}"),
                    );
                files.push((
                    Path::new("wit/deps")
                        .join(format!("{package}-{version}"))
                        .join(parts.as_path()),
                    renamed.into_bytes(),
                ));
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_wit_is_the_whole_wit_folder() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk = Vec::new();
        let mut pending = vec![root.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("wit folder") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(&root).expect("inside");
                    on_disk.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = super::super::wit_files::FILES
            .iter()
            .map(|(path, _)| (*path).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "regenerate host/src/cli/wit_files.rs");
    }

    #[test]
    fn a_new_service_gets_its_files_and_a_build_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("greeter");
        create(Lang::Js, "greeter", &root, Path::new("/sdk")).expect("create");
        let manifest = std::fs::read_to_string(root.join("shoal.toml")).expect("manifest");
        assert!(manifest.contains("output = \"greeter.wasm\""), "{manifest}");
        let parsed = crate::manifest::Manifest::from_toml(&manifest).expect("a valid manifest");
        assert!(parsed.build.is_some());
        // Both WASI versions, with the renamed package line.
        let http = std::fs::read_to_string(root.join("wit/deps/http-0.2.10/http.wit"))
            .expect("renamed http");
        assert!(http.contains("package wasi:http@0.2.10;"));
        assert!(root.join("wit/deps/http/http.wit").is_file());
        assert!(root.join("wit/deps/shoal/worlds.wit").is_file());
        assert_eq!(Lang::detect(&root), Some(Lang::Js));
        // Never over an existing service.
        let again = create(Lang::Js, "greeter", &root, Path::new("/sdk"));
        assert!(again.is_err());
        assert!(create(Lang::C, "Not_A_Name", &dir.path().join("x"), Path::new("/")).is_err());
    }
}
