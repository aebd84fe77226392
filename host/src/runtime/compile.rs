//! From uploaded bytes to a service ready to instantiate.
//!
//! Every check a deploy needs happens here, before anything is swapped in: the bytes
//! are WebAssembly, they are a component (not a core module), every import is one
//! the host provides, and the component exports an HTTP handler: WASIp2's
//! `wasi:http/incoming-handler` or WASIp3's `wasi:http/handler`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use super::{GuestState, Runtime};

/// Why an upload cannot become a running service. Every variant is the user's
/// to fix, except [`LoadError::Internal`].
#[derive(Debug, Error)]
pub enum LoadError {
    /// The body does not start with the WebAssembly magic number.
    #[error("the upload is not WebAssembly: it does not start with the `\\0asm` magic number")]
    NotWasm,
    /// A core module was uploaded where a component is required.
    #[error(
        "the upload is a core WebAssembly module, not a component: build a component \
         (for Rust, `cargo build --target wasm32-wasip2` or `shoal build`; for other \
         languages, their component tooling such as componentize-py or jco)"
    )]
    CoreModule,
    /// The component failed validation or compilation.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// The component imports interfaces this host does not provide.
    #[error("the component imports interfaces this host does not provide: {}", .0.join(", "))]
    MissingImports(Vec<String>),
    /// An import exists on the host but with an incompatible type.
    #[error("the component's imports do not match what this host provides: {0}")]
    IncompatibleImports(String),
    /// The component does not export an HTTP handler.
    #[error(
        "the component exports neither `wasi:http/incoming-handler` (WASIp2, 0.2.x) nor \
         `wasi:http/handler` (WASIp3, 0.3.x), so it cannot serve requests: {0}"
    )]
    NotAService(String),
    /// The component needs more of something than the instance pool reserves per
    /// instance; the text names what and the limit.
    #[error(
        "the component does not fit this host's instance pool: {0}. Raise the limit it \
         names (`--max-memory-mb` for memory, `--max-table-elements` for tables), or \
         serve with `--no-pooling`"
    )]
    ExceedsPool(String),
    /// The manifest asks for something this kind of code cannot do.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// A host-side failure (disk, threads).
    #[error("internal error while loading the component: {0:#}")]
    Internal(anyhow::Error),
}

/// Which compiler produced a service's running code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeTier {
    /// The baseline compiler's: ready in a fraction of the time, runs slower; the
    /// optimised code replaces it when it is ready.
    Baseline,
    /// The optimising compiler's.
    Optimized,
}

/// A compiled, linked component, ready to be instantiated per request. Shared by
/// every deployment of the same bytes.
pub struct Loaded {
    /// Which compiler produced the code.
    pub tier: CodeTier,
    /// Pre-instantiated component, typed by the HTTP handler it exports.
    pub handler: Handler,
    /// Where its `shoal:platform/health-check` export is, when it has one.
    pub health_check: Option<crate::bindings::health_check::GuestIndices>,
}

/// The HTTP entry point a component exports, which decides how it is served.
pub enum Handler {
    /// WASIp2 `wasi:http/incoming-handler`: an instance serves one request at a time.
    Sequential(ProxyPre<GuestState>),
    /// WASIp3 `wasi:http/handler`: an instance serves several requests at once.
    Concurrent(ServicePre<GuestState>),
}

impl Handler {
    /// The component, linked and ready to instantiate.
    pub fn instance_pre(&self) -> &wasmtime::component::InstancePre<GuestState> {
        match self {
            Handler::Sequential(pre) => pre.instance_pre(),
            Handler::Concurrent(pre) => pre.instance_pre(),
        }
    }

    /// The engine its code belongs to.
    pub fn engine(&self) -> &wasmtime::Engine {
        self.instance_pre().engine()
    }

    /// The WASI generation of its HTTP interface, as the admin API shows it.
    pub fn wasi(&self) -> &'static str {
        match self {
            Handler::Sequential(_) => "p2",
            Handler::Concurrent(_) => "p3",
        }
    }
}

/// What a load produced: the code, and how long compiling it took (none when it came
/// from the compile cache or from a deployment already running it).
pub struct Compiled {
    /// The code.
    pub code: Arc<Loaded>,
    /// Time spent compiling, for the compile metric.
    pub compiled_in: Option<std::time::Duration>,
}

impl Runtime {
    /// Validate, compile (or load from cache) and link `bytes`, whose SHA-256 is `digest`.
    ///
    /// A big component whose optimised code is not cached yet comes back compiled by
    /// the baseline compiler ([`CodeTier::Baseline`]): the caller serves it and asks
    /// for [`Runtime::load_optimized_in_background`]. Anything the baseline
    /// compiler cannot handle is compiled by the optimising one at once.
    ///
    /// Optimised code already running for the same bytes is shared, not loaded again:
    /// a second copy would cost its memory once more (code mapped, metadata, links).
    ///
    /// CPU-heavy: call from a blocking thread.
    pub fn load(&self, bytes: &[u8], digest: &str) -> Result<Compiled, LoadError> {
        check_format(bytes)?;
        if let Some(code) = self.running_code(digest) {
            return Ok(Compiled {
                code,
                compiled_in: None,
            });
        }
        let target = self.code_engine(bytes);
        // Baseline code is WASIp2 only: WASIp3 code is always optimised at once.
        if let Some(baseline) = &self.baseline
            && bytes.len() >= baseline.above_bytes
            && std::ptr::eq(target, &self.sequential)
            && !cache_path(target, digest).exists()
        {
            match self.load_baseline(baseline, bytes, digest) {
                Ok(loaded) => return Ok(loaded),
                Err(error @ LoadError::ExceedsPool(_)) => return Err(error),
                // Invalid for the baseline compiler (a proposal it lacks) or for
                // everyone: the optimising compiler decides, and its error is the one
                // reported.
                Err(error) => tracing::info!(
                    digest,
                    %error,
                    "the baseline compiler cannot take this component; optimising now"
                ),
            }
        }
        self.load_optimized_on(target, bytes, digest)
    }

    /// [`Runtime::load`] with the optimising compiler only (or its cached code), for
    /// `target`, the engine the bytes' imports and exports call for.
    fn load_optimized_on(
        &self,
        target: &super::engine::CodeEngine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Compiled, LoadError> {
        let loaded = self.load_optimized_with(target, &target.engine, bytes, digest);
        match loaded {
            // Component-model async features (async lifts, streams, futures) need the
            // engine with concurrency support even where no WASIp3 interface names
            // them: the WASIp2 engine's validator refuses them, so they get a second
            // try there. If that fails too, the first reason is the one reported.
            Err(LoadError::Invalid(reason)) if std::ptr::eq(target, &self.sequential) => {
                let concurrent = &self.concurrent;
                match self.load_optimized_with(concurrent, &concurrent.engine, bytes, digest) {
                    Err(LoadError::Invalid(_)) => Err(LoadError::Invalid(reason)),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// [`Runtime::load`]'s optimised code, when it is not waited for: one thread, at a
    /// lower scheduling priority, so requests and foreground deploys come first.
    /// Lowers the priority of the calling thread: call it on a thread of its own.
    pub fn load_optimized_in_background(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Compiled, LoadError> {
        super::cpu::lower_this_thread_priority();
        let target = self.code_engine(bytes);
        // The background compiler makes code for the WASIp2 engine only.
        let compiler = if std::ptr::eq(target, &self.sequential) {
            &self.background
        } else {
            &target.engine
        };
        self.load_optimized_with(target, compiler, bytes, digest)
    }

    /// The engine `bytes` run on: the WASIp3 one when the component uses WASIp3.
    fn code_engine(&self, bytes: &[u8]) -> &super::engine::CodeEngine {
        if uses_wasip3(bytes) {
            &self.concurrent
        } else {
            &self.sequential
        }
    }

    fn load_optimized_with(
        &self,
        target: &super::engine::CodeEngine,
        compiler: &wasmtime::Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Compiled, LoadError> {
        check_format(bytes)?;
        if let Some(code) = self.running_code(digest) {
            return Ok(Compiled {
                code,
                compiled_in: None,
            });
        }
        let compiled = self.compile_cached(target, compiler, bytes, digest);
        // Cached now (or failed for good): later deploys of these bytes need no
        // baseline code.
        self.pending_baseline.lock().remove(digest);
        let (component, compiled_in) = compiled?;
        let code = Arc::new(link(&target.engine, &target.linker, &component)?);
        let mut running = self.running.lock();
        running.retain(|_, code| code.strong_count() > 0);
        running.insert(digest.to_owned(), Arc::downgrade(&code));
        Ok(Compiled { code, compiled_in })
    }

    /// The optimised code of `digest` if a deployment still runs it.
    fn running_code(&self, digest: &str) -> Option<Arc<Loaded>> {
        self.running
            .lock()
            .get(digest)
            .and_then(std::sync::Weak::upgrade)
    }

    fn load_baseline(
        &self,
        baseline: &super::engine::Baseline,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Compiled, LoadError> {
        let pending = self.pending_baseline.lock().get(digest).cloned();
        if let Some(component) = pending {
            let mut loaded = link(&baseline.engine, &baseline.linker, &component)?;
            loaded.tier = CodeTier::Baseline;
            return Ok(Compiled {
                code: Arc::new(loaded),
                compiled_in: None,
            });
        }
        let started = std::time::Instant::now();
        let component = Component::new(&baseline.engine, bytes).map_err(|error| {
            let error = anyhow::Error::from(error);
            if exceeds_pool(&error) {
                LoadError::ExceedsPool(format!("{error:#}"))
            } else {
                LoadError::Invalid(format!("{error:#}"))
            }
        })?;
        let elapsed = started.elapsed();
        tracing::info!(
            digest,
            elapsed_ms = elapsed.as_millis() as u64,
            "compiled component (baseline)"
        );
        let mut loaded = link(&baseline.engine, &baseline.linker, &component)?;
        loaded.tier = CodeTier::Baseline;
        self.pending_baseline
            .lock()
            .insert(digest.to_owned(), component);
        Ok(Compiled {
            code: Arc::new(loaded),
            compiled_in: Some(elapsed),
        })
    }

    /// `bytes` compiled (or loaded from the cache) for the replay engine, linked.
    /// CPU-heavy: call from a blocking thread.
    pub(crate) fn load_for_replay(&self, bytes: &[u8], digest: &str) -> Result<Loaded, LoadError> {
        check_format(bytes)?;
        if uses_wasip3(bytes) {
            return Err(LoadError::NotAService(NO_WASIP3_REPLAY.into()));
        }
        let replay = &self.replay;
        let (component, _) = self.compile_cached(replay, &replay.engine, bytes, digest)?;
        link(&replay.engine, &replay.linker, &component)
    }

    /// Load the cached code of `digest` into `target`, or compile it with `compiler`
    /// (`target`'s engine or one whose code is compatible with it), cache it and load it.
    fn compile_cached(
        &self,
        target: &super::engine::CodeEngine,
        compiler: &wasmtime::Engine,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, Option<std::time::Duration>), LoadError> {
        let cached = cache_path(target, digest);
        if cached.exists() {
            // SAFETY-relevant: the cache directory belongs to this host and only ever
            // holds output of `precompile_component` from an engine with the same
            // fingerprint. A file that fails to load is recompiled below.
            match deserialize(&target.engine, &cached) {
                Ok(component) => return Ok((component, None)),
                Err(error) if exceeds_pool(&error) => {
                    return Err(LoadError::ExceedsPool(format!("{error:#}")));
                }
                Err(error) => {
                    tracing::warn!(path = %cached.display(), %error, "discarding unusable cached code");
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        let started = std::time::Instant::now();
        let compiled = compiler
            .precompile_component(bytes)
            .map_err(|error| LoadError::Invalid(format!("{error:#}")))?;
        tracing::info!(
            digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        let elapsed = started.elapsed();
        crate::data_dir::write_durably(&cached, &compiled).map_err(LoadError::Internal)?;
        let component = deserialize(&target.engine, &cached).map_err(|error| {
            if exceeds_pool(&error) {
                LoadError::ExceedsPool(format!("{error:#}"))
            } else {
                LoadError::Internal(error)
            }
        })?;
        Ok((component, Some(elapsed)))
    }
}

/// Why a WASIp3 component is not replayed.
pub(crate) const NO_WASIP3_REPLAY: &str =
    "a WASIp3 component (several requests in one instance) cannot be replayed yet";

fn cache_path(target: &super::engine::CodeEngine, digest: &str) -> PathBuf {
    target.cache_dir.join(format!("{digest}.cwasm"))
}

/// Whether the component uses WASIp3: it exports or imports a `wasi:` interface of
/// version 0.3. Such code needs the engine with concurrency support. Read from the
/// top-level import and export names, before anything is compiled; bytes that do
/// not parse are WASIp2's to reject with the compiler's own error.
fn uses_wasip3(bytes: &[u8]) -> bool {
    use wasmparser::Payload;
    let is_wasip3 = |name: &str| name.starts_with("wasi:") && name.contains("@0.3.");
    // Nested modules and components start with their own `Version` and end with an
    // `End`: only depth 1 is the component itself.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return false;
        };
        let names_wasip3 = match payload {
            Payload::Version { .. } => {
                depth += 1;
                false
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                false
            }
            Payload::ComponentImportSection(imports) if depth == 1 => imports
                .into_iter()
                .flatten()
                .any(|i| is_wasip3(i.name.name)),
            Payload::ComponentExportSection(exports) if depth == 1 => exports
                .into_iter()
                .flatten()
                .any(|e| is_wasip3(e.name.name)),
            _ => false,
        };
        if names_wasip3 {
            return true;
        }
    }
    false
}

/// Link `component` against `linker` (both of `engine`) and check it is a service.
fn link(
    engine: &wasmtime::Engine,
    linker: &Linker<GuestState>,
    component: &Component,
) -> Result<Loaded, LoadError> {
    let instance_pre = match linker.instantiate_pre(component) {
        Ok(pre) => pre,
        Err(error) => {
            let missing = missing_imports(engine, linker, component);
            return Err(if missing.is_empty() {
                LoadError::IncompatibleImports(format!("{error:#}"))
            } else {
                LoadError::MissingImports(missing)
            });
        }
    };
    let health_check = crate::bindings::health_check::GuestIndices::new(&instance_pre).ok();
    let handler = match ProxyPre::new(instance_pre.clone()) {
        Ok(pre) => Handler::Sequential(pre),
        Err(p2) => match ServicePre::new(instance_pre) {
            Ok(pre) => Handler::Concurrent(pre),
            Err(p3) => {
                return Err(LoadError::NotAService(format!(
                    "as WASIp2: {p2:#}; as WASIp3: {p3:#}"
                )));
            }
        },
    };
    Ok(Loaded {
        tier: CodeTier::Optimized,
        handler,
        health_check,
    })
}

/// Names of the component's imports that the linker has no definition for.
///
/// The linker has no lookup API, so each import name is probed on a copy: defining
/// a name succeeds exactly when the linker does not already provide it (semver-
/// compatible versions count as provided).
fn missing_imports(
    engine: &wasmtime::Engine,
    linker: &Linker<GuestState>,
    component: &Component,
) -> Vec<String> {
    let mut probe = linker.clone();
    let ty = component.component_type();
    let mut missing = Vec::new();
    for (name, _) in ty.imports(engine) {
        if probe.root().func_new(name, |_, _, _, _| Ok(())).is_ok() {
            missing.push(name.to_owned());
        }
    }
    missing
}

/// Reject bytes that are not WebAssembly, or are a core module.
fn check_format(bytes: &[u8]) -> Result<(), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::Invalid(
            "unsupported WebAssembly binary version or layer".into(),
        ));
    }
    Ok(())
}

/// Whether loading failed because the component needs more than the pooling
/// allocator reserves per instance (wasmtime checks this when code is loaded).
fn exceeds_pool(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("pooling allocator")
}

#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: `path` is in this host's private compile cache and was written by
    // `Engine::precompile_component` of a compatible engine (see `compile_cached`);
    // wasmtime additionally checks the engine compatibility header on load.
    unsafe { Component::deserialize_file(engine, path) }.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_not_wasm() {
        assert!(matches!(check_format(b"hello"), Err(LoadError::NotWasm)));
    }

    #[test]
    fn empty_core_module_is_rejected_as_core() {
        let module = b"\0asm\x01\0\0\0";
        assert!(matches!(check_format(module), Err(LoadError::CoreModule)));
    }

    fn component(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid component text")
    }

    #[test]
    fn a_wasip3_import_or_export_picks_the_concurrent_engine() {
        let import =
            component(r#"(component (import "wasi:clocks/monotonic-clock@0.3.0" (instance)))"#);
        assert!(uses_wasip3(&import));
        let export = component(
            r#"(component (instance $h) (export "wasi:http/handler@0.3.0-rc-2025-09-16" (instance $h)))"#,
        );
        assert!(uses_wasip3(&export));
    }

    #[test]
    fn wasip2_nested_or_foreign_names_keep_the_sequential_engine() {
        let p2 =
            component(r#"(component (import "wasi:clocks/monotonic-clock@0.2.6" (instance)))"#);
        assert!(!uses_wasip3(&p2));
        // Only the component's own imports and exports count, not a nested one's.
        let nested = component(
            r#"(component (component (import "wasi:clocks/monotonic-clock@0.3.0" (instance))))"#,
        );
        assert!(!uses_wasip3(&nested));
        let foreign = component(r#"(component (import "acme:lib/thing@0.3.0" (instance)))"#);
        assert!(!uses_wasip3(&foreign));
        assert!(!uses_wasip3(b"\0asm\x0d\0\x01\0garbage"));
    }

    #[test]
    fn async_features_without_wasip3_names_compile_on_the_concurrent_engine() {
        let cache = tempfile::tempdir().expect("tempdir");
        let runtime = Runtime::new(
            &super::super::RuntimeSettings {
                max_instances: 4,
                max_memory_mb: 1,
                no_pooling: true,
                max_table_elements: 1_000,
                function_cache_mb: 0,
                max_total_memory_mb: 1024,
                no_baseline: true,
                keep_resident_kb: 0,
                ..Default::default()
            }
            .options(cache.path().to_owned()),
        )
        .expect("runtime");
        // A stream type is a component-model async feature, named by no WASI interface.
        let bytes = component("(component (type (stream u8)))");
        assert!(!uses_wasip3(&bytes));
        let Err(error) = runtime.load(&bytes, "streams") else {
            panic!("a component with no HTTP handler loaded");
        };
        // It compiled (on the engine with concurrency support) and then failed as
        // what it is: not a service.
        assert!(matches!(error, LoadError::NotAService(_)), "{error}");
        let invalid = component("(component (type (stream u8)) (type (stream u8)))");
        let truncated = &invalid[..invalid.len() - 3];
        let Err(error) = runtime.load(truncated, "truncated") else {
            panic!("truncated bytes loaded");
        };
        assert!(matches!(error, LoadError::Invalid(_)), "{error}");
    }

    #[test]
    fn component_header_passes_the_format_check() {
        let component = b"\0asm\x0d\0\x01\0";
        assert!(check_format(component).is_ok());
    }
}
