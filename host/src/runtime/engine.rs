//! The wasmtime engine and linker shared by every service on the host.

use anyhow::{Context as _, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use super::GuestState;
use super::limits::MemoryBudget;
use super::reuse::IdlePools;

/// Most memory regions the pooling allocator gives back to the kernel at once.
const DECOMMIT_BATCH: usize = 32;
/// Engines with an instance pool of their own (sequential, concurrent, baseline).
const POOLED_ENGINES: usize = 3;
/// Largest async stack region an instance leaves to decommit (wasmtime's default
/// async stack is 2 MiB).
const STACK_REGION_BYTES: usize = 4 * 1024 * 1024;

/// How many memory regions the pooling allocator may queue before it gives them back
/// to the kernel in one call.
///
/// An ended instance's memory goes back to the memory budget when its store is
/// dropped, but stays resident until its region is decommitted: each pool keeps up
/// to `batch - 1` regions queued per shard (one shard per core, at most 16), each as
/// large as one instance's memory. Batching saves a system call per instance, so it
/// is used only as far as what it keeps resident stays within a tenth of the budget;
/// with a small budget or large memories every region is decommitted at once.
pub fn decommit_batch(budget_bytes: usize, max_memory_bytes: usize, shards: usize) -> usize {
    let region = max_memory_bytes.max(STACK_REGION_BYTES);
    let queued_at_most = shards.max(1) * POOLED_ENGINES * region;
    (budget_bytes / 10 / queued_at_most + 1).min(DECOMMIT_BATCH)
}

/// The pooling allocator's decommit shards: one per core, at most 16 (as wasmtime
/// makes them).
fn decommit_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// How often the epoch advances; the granularity of execution deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings, from the host's command line.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled code is cached, keyed by content hash.
    pub cache_dir: PathBuf,
    /// Instances the pooling allocator can hold at once, across all services.
    pub max_instances: u32,
    /// Largest linear memory any instance may have, in bytes.
    pub max_memory_bytes: usize,
    /// Use the pooling allocator (fast instantiation) instead of on-demand allocation.
    pub pooling: bool,
    /// Wasm call-stack limit per instance, in bytes (engine-wide in wasmtime).
    pub max_wasm_stack: usize,
    /// Elements one table of a pooled instance may have.
    pub max_table_elements: usize,
    /// Bytes of compiled functions kept for later compiles (0: none).
    pub function_cache_bytes: u64,
    /// Linear memory all live instances together may hold, in bytes.
    pub memory_budget_bytes: usize,
    /// Components of at least this many bytes whose optimised code is not cached yet
    /// are first compiled by the baseline compiler and served at once, while the
    /// optimised code is compiled in the background (none: always wait for it).
    pub baseline_above_bytes: Option<usize>,
    /// Bytes of each pooled memory, table and stack reset in place (memset) instead of
    /// decommitted when an instance ends.
    pub keep_resident_bytes: usize,
    /// Find the pages an instance wrote with Linux's `PAGEMAP_SCAN` (6.7+) and reset
    /// only those, instead of the whole kept-resident size; off where unsupported.
    pub pagemap_scan: bool,
}

/// The engines and linkers every component is checked against, and the compile cache.
#[derive(Clone)]
pub struct Runtime {
    /// WASIp2 code, optimised (Cranelift): one request per instance at a time. Its
    /// engine has wasmtime's concurrency support off, which every store and every
    /// call would otherwise pay for (measured: −21 % requests/s with a fresh instance
    /// per request, −15 % with reuse).
    pub(crate) sequential: CodeEngine,
    /// WASIp3 code, optimised: several requests in one instance, which needs
    /// concurrency support.
    pub(crate) concurrent: CodeEngine,
    /// Replays of recorded requests: optimised code with determinism enforced (NaN
    /// canonicalisation, deterministic relaxed SIMD), no instance pool.
    pub(crate) replay: CodeEngine,
    /// Baseline compiler (Winch) for WASIp2 code: code in a fraction of the time,
    /// which runs slower; serves big components until their optimised code is ready.
    pub(crate) baseline: Option<Baseline>,
    /// The optimising compiler on one thread, for background compiles: its code is
    /// the same as `sequential`'s (and loads into it), but it leaves the other cores
    /// to requests and to deploys in the foreground.
    pub(crate) background: Engine,
    /// Baseline code of components whose optimised code is being compiled, by digest:
    /// a deploy of the same bytes meanwhile reuses it instead of compiling again.
    pub(crate) pending_baseline:
        Arc<parking_lot::Mutex<std::collections::HashMap<String, wasmtime::component::Component>>>,
    /// Optimised code deployments run, by digest: a deploy of the same bytes shares it.
    pub(crate) running:
        Arc<parking_lot::Mutex<std::collections::HashMap<String, std::sync::Weak<super::Loaded>>>>,
    /// The host-wide memory budget every instance's growth draws on.
    pub memory_budget: Arc<MemoryBudget>,
    /// Idle reusable instances of every deployment (evicted under pool pressure).
    pub idle: Arc<IdlePools>,
    /// Compiles at once (each takes a core).
    pub(crate) compiles: Arc<tokio::sync::Semaphore>,
    /// Background compiles (optimised code for a service already serving baseline
    /// code) at once: one, on a core of its own, never holding up a deploy.
    pub(crate) background_compiles: Arc<tokio::sync::Semaphore>,
}

/// An engine that runs optimised code, the linker its components are linked with,
/// and the directory its compiled code is cached in (one per engine fingerprint).
#[derive(Clone)]
pub(crate) struct CodeEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<GuestState>>,
    pub(crate) cache_dir: PathBuf,
}

/// The baseline tier: its own engine (compiler strategy is engine-wide) and a linker
/// with the same host functions.
#[derive(Clone)]
pub(crate) struct Baseline {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<GuestState>>,
    /// Components smaller than this wait for optimised code (it is quick for them).
    pub(crate) above_bytes: usize,
}

impl Runtime {
    /// Build the engines and linkers, and start the epoch tickers that enforce deadlines.
    pub fn new(options: &RuntimeOptions) -> Result<Self> {
        let mut config = engine_config(options, Strategy::Cranelift, options.pooling);
        config.concurrency_support(false);
        let mut concurrent = engine_config(options, Strategy::Cranelift, options.pooling);
        concurrent.concurrency_support(true);
        // Same settings as `config`, no instance pool (it never instantiates), one thread.
        let mut background = engine_config(options, Strategy::Cranelift, false);
        background.concurrency_support(false);
        background.parallel_compilation(false);
        if options.function_cache_bytes > 0 {
            std::fs::create_dir_all(&options.cache_dir).with_context(|| {
                format!("creating the compile cache {}", options.cache_dir.display())
            })?;
            let path = options.cache_dir.join("functions.sqlite3");
            let functions = Arc::new(
                super::function_cache::FunctionCache::open(&path, options.function_cache_bytes)
                    .with_context(|| format!("opening the function cache {}", path.display()))?,
            );
            for config in [&mut config, &mut concurrent, &mut background] {
                config
                    .enable_incremental_compilation(functions.clone())
                    .map_err(anyhow::Error::from)?;
            }
        }
        let mut replay = engine_config(options, Strategy::Cranelift, false);
        replay.concurrency_support(false);
        replay.cranelift_nan_canonicalization(true);
        replay.relaxed_simd_deterministic(true);
        let engine = new_engine(&config)?;
        let concurrent = new_engine(&concurrent)?;
        let replay = new_engine(&replay)?;
        let background = new_engine(&background)?;
        let baseline = match options.baseline_above_bytes {
            Some(above_bytes) => {
                let mut config = engine_config(options, Strategy::Winch, options.pooling);
                config.concurrency_support(false);
                let engine = new_engine(&config)?;
                let linker = new_linker(&engine, Wasi::P2)?;
                start_epoch_ticker(&engine);
                Some(Baseline {
                    engine,
                    linker,
                    above_bytes,
                })
            }
            None => None,
        };

        let sequential = CodeEngine::new(engine, Wasi::P2, &options.cache_dir)?;
        let concurrent = CodeEngine::new(concurrent, Wasi::P3, &options.cache_dir)?;
        let replay = CodeEngine::new(replay, Wasi::Replay, &options.cache_dir)?;
        // Directories of earlier engines (another wasmtime, other settings, or the one
        // engine of a host before the split) are not these: removed.
        remove_stale_caches(
            &options.cache_dir,
            &[
                &sequential.cache_dir,
                &concurrent.cache_dir,
                &replay.cache_dir,
            ],
        );
        Ok(Self {
            sequential,
            concurrent,
            replay,
            baseline,
            background,
            pending_baseline: Arc::default(),
            running: Arc::default(),
            memory_budget: MemoryBudget::new(options.memory_budget_bytes),
            idle: Arc::default(),
            compiles: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            )),
            background_compiles: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }
}

impl CodeEngine {
    /// Link `wasi` against `engine`, make its cache directory and start its epoch ticker.
    /// The directory is named by the kind of code and the engine's fingerprint.
    fn new(engine: Engine, wasi: Wasi, cache_root: &std::path::Path) -> Result<Self> {
        let linker = new_linker(&engine, wasi)?;
        let kind = match wasi {
            Wasi::P2 => "p2",
            Wasi::P3 => "p3",
            Wasi::Replay => "replay",
        };
        let cache_dir = cache_root.join(format!("{kind}-{}", engine_fingerprint(&engine)));
        std::fs::create_dir_all(&cache_dir)
            .with_context(|| format!("creating the compile cache {}", cache_dir.display()))?;
        start_epoch_ticker(&engine);
        Ok(Self {
            engine,
            linker,
            cache_dir,
        })
    }
}

/// Engine settings shared by every engine. Each engine that instantiates (WASIp2,
/// WASIp3, baseline) gets a pool of the same size: a host may serve only one kind, the
/// baseline one only holds instances while optimised code is on its way, and an
/// unused pool costs address space, not memory.
fn engine_config(options: &RuntimeOptions, strategy: Strategy, pooling: bool) -> Config {
    let mut config = Config::new();
    config.strategy(strategy);
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(options.max_wasm_stack);
    if pooling {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(options.max_instances)
            .total_core_instances(options.max_instances.saturating_mul(4))
            .total_memories(options.max_instances.saturating_mul(2))
            .total_tables(options.max_instances.saturating_mul(4))
            .total_stacks(options.max_instances)
            .max_memory_size(options.max_memory_bytes)
            .table_elements(options.max_table_elements)
            // Give memory back to the kernel in batches (one call and one TLB
            // shootdown per batch), as far as the budget allows: see
            // `decommit_batch`.
            .decommit_batch_size(decommit_batch(
                options.memory_budget_bytes,
                options.max_memory_bytes,
                decommit_shards(),
            ))
            // Small tables and the first pages of memory and stacks are reset
            // with memset instead of madvise: cheaper for small guests.
            .linear_memory_keep_resident(options.keep_resident_bytes)
            .table_keep_resident(options.keep_resident_bytes)
            .async_stack_keep_resident(options.keep_resident_bytes)
            // A hello writes a few pages of its memory: resetting only those, not all
            // 64 KiB kept resident, is most of a fresh instance's teardown.
            .pagemap_scan(if options.pagemap_scan {
                wasmtime::Enabled::Auto
            } else {
                wasmtime::Enabled::No
            });
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

fn new_engine(config: &Config) -> Result<Engine> {
    Engine::new(config).map_err(anyhow::Error::from).context(
        "cannot create the wasmtime engine (lower --max-instances or --max-memory-mb, \
         or pass --no-pooling)",
    )
}

/// Which WASI generations a linker provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wasi {
    /// WASIp2 only: its host functions need no concurrency support.
    P2,
    /// WASIp3 and WASIp2 (a WASIp3 component may still import 0.2 interfaces).
    P3,
    /// WASIp2, for the replay engine (its code goes to a cache directory of its own).
    Replay,
}

/// Every host function a component may import: WASI and `wasi:http` (0.2, and 0.3
/// for [`Wasi::P3`]) and `shoal:platform`.
fn new_linker(engine: &Engine, wasi: Wasi) -> Result<Arc<Linker<GuestState>>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking wasi:http")?;
    if wasi == Wasi::P3 {
        // What WASIp3's `wasi:http/service` world imports, and no more (no files, no
        // sockets; as for WASIp2 nothing is granted).
        wasmtime_wasi::p3::cli::add_to_linker(&mut linker)
            .and_then(|()| wasmtime_wasi::p3::clocks::add_to_linker(&mut linker))
            .and_then(|()| wasmtime_wasi::p3::random::add_to_linker(&mut linker))
            .and_then(|()| wasmtime_wasi_http::p3::add_to_linker(&mut linker))
            .map_err(anyhow::Error::from)
            .context("linking WASIp3")?;
    }
    crate::capabilities::add_to_linker::<GuestState>(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking shoal:platform")?;
    Ok(Arc::new(linker))
}

/// A short name for "code compiled by this engine": wasmtime's own compatibility hash
/// (its version and every setting that changes compiled code). Artefacts of another
/// engine land in another directory and are never loaded; upgrading Shoal without
/// changing wasmtime or these settings recompiles nothing.
fn engine_fingerprint(engine: &Engine) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Remove the compile caches of other engines: nothing will load them again.
fn remove_stale_caches(root: &std::path::Path, current: &[&std::path::Path]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !current.contains(&path.as_path()) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a stale compile cache"),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a stale compile cache")
                }
            }
        }
    }
}

impl Runtime {
    /// Remove cached compiled code of components not in `keep` (digests).
    pub fn collect_cache(&self, keep: &std::collections::HashSet<String>) -> usize {
        collect_files(&self.sequential.cache_dir, "cwasm", keep)
            + collect_files(&self.concurrent.cache_dir, "cwasm", keep)
            + collect_files(&self.replay.cache_dir, "cwasm", keep)
    }
}

/// Remove `*.{extension}` files in `dir` whose stem is not in `keep`, and leftover
/// temporary files; returns how many were removed.
pub fn collect_files(
    dir: &std::path::Path,
    extension: &str,
    keep: &std::collections::HashSet<String>,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let orphan = ext == extension && !keep.contains(stem);
        if (orphan || ext == "tmp") && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Advance the engine's epoch every [`EPOCH_TICK`] on a thread of its own, so deadlines
/// fire even when every runtime worker is busy running guest code.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("shoal-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the epoch ticker; guest deadlines will not fire");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn what_queued_regions_keep_resident_stays_within_a_tenth_of_the_budget() {
        for (budget, memory, shards) in [
            (1024 * MIB, 128 * MIB, 2),
            (1024 * MIB, 16 * MIB, 2),
            (6 * 1024 * MIB, 128 * MIB, 2),
            (48 * 1024 * MIB, 128 * MIB, 16),
            (256 * MIB, 4 * MIB, 1),
        ] {
            let batch = decommit_batch(budget, memory, shards);
            assert!((1..=DECOMMIT_BATCH).contains(&batch));
            let resident = (batch - 1) * shards * POOLED_ENGINES * memory.max(STACK_REGION_BYTES);
            assert!(
                resident <= budget / 10,
                "{budget} {memory} {shards}: {batch}"
            );
        }
        assert_eq!(
            decommit_batch(1024 * MIB, 128 * MIB, 2),
            1,
            "no room: no batching"
        );
        assert_eq!(decommit_batch(64 * 1024 * MIB, 4 * MIB, 2), DECOMMIT_BATCH);
    }
}
