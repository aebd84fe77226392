//! The runtime's `shoal serve` flags: the instance pool, memory, stacks, tables and
//! compilers. Flattened into the serve command; resolved into [`RuntimeOptions`].

use clap::Args;
use std::path::PathBuf;

use super::RuntimeOptions;
use crate::manifest::defaults;

/// Instances each engine's pool holds when `--max-instances` is not given.
pub const MAX_INSTANCES: u32 = 1000;

/// How the runtime runs guests, host-wide.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RuntimeSettings {
    /// Instances that may run at once across all services, for each kind of code
    /// (WASIp2, WASIp3, baseline): the size of each engine's pooling allocator.
    #[arg(long, env = "SHOAL_MAX_INSTANCES", default_value_t = MAX_INSTANCES)]
    pub max_instances: u32,

    /// Largest linear memory a manifest may ask for, in MiB.
    #[arg(long, env = "SHOAL_MAX_MEMORY_MB", default_value_t = defaults::MAX_MEMORY_MB)]
    pub max_memory_mb: u32,

    /// Linear memory all instances together may hold, in MiB (0: three quarters of
    /// the machine's memory). A growth beyond it fails that instance with a 503,
    /// never the host; a deploy whose memory × concurrency exceeds it is refused.
    #[arg(long, env = "SHOAL_MAX_TOTAL_MEMORY_MB", default_value_t = 0)]
    pub max_total_memory_mb: usize,

    /// Wasm call-stack limit per instance, in KiB. Engine-wide: wasmtime fixes it for
    /// every instance of an engine, so it is a host setting, not a manifest one.
    #[arg(long, env = "SHOAL_MAX_WASM_STACK_KB", default_value_t = 512)]
    pub max_wasm_stack_kb: usize,

    /// Elements one table of an instance may have, reserved for every table slot of
    /// the instance pool. A component with a larger table is refused at deploy.
    #[arg(long, env = "SHOAL_MAX_TABLE_ELEMENTS", default_value_t = defaults::TABLE_ELEMENTS)]
    pub max_table_elements: u32,

    /// MiB of compiled functions kept on disk for later deploys: components that
    /// share code (one language runtime) then compile only what is new. 0 turns it off.
    #[arg(long, env = "SHOAL_FUNCTION_CACHE_MB", default_value_t = 1024)]
    pub function_cache_mb: u64,

    /// Components of at least this many KiB whose optimised code is not cached yet
    /// serve at once on code from the baseline compiler (Winch), and switch to the
    /// optimised code (Cranelift) when its background compile is done.
    #[arg(long, env = "SHOAL_BASELINE_ABOVE_KB", default_value_t = 2048)]
    pub baseline_above_kb: usize,

    /// Bytes at the start of each pooled memory, table and stack that are reset with
    /// memset when an instance ends, instead of handed back to the kernel (KiB).
    /// Larger: faster instantiation for small guests, more resident memory.
    #[arg(long, env = "SHOAL_KEEP_RESIDENT_KB", default_value_t = 64)]
    pub keep_resident_kb: usize,

    /// Never serve baseline code: a deploy waits for optimised code.
    #[arg(long, env = "SHOAL_NO_BASELINE")]
    pub no_baseline: bool,

    /// Allocate instances on demand instead of from a pre-reserved pool.
    #[arg(long, env = "SHOAL_NO_POOLING")]
    pub no_pooling: bool,

    /// Reset whole kept-resident regions instead of only the pages an instance wrote
    /// (Linux's `PAGEMAP_SCAN`); for measuring what the scan gives.
    #[arg(long, env = "SHOAL_NO_PAGEMAP_SCAN", hide = true)]
    pub no_pagemap_scan: bool,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            max_instances: MAX_INSTANCES,
            max_memory_mb: defaults::MAX_MEMORY_MB,
            max_total_memory_mb: 0,
            max_wasm_stack_kb: 512,
            max_table_elements: defaults::TABLE_ELEMENTS,
            function_cache_mb: 1024,
            baseline_above_kb: 2048,
            keep_resident_kb: 64,
            no_baseline: false,
            no_pooling: false,
            no_pagemap_scan: false,
        }
    }
}

impl RuntimeSettings {
    /// The host-wide memory budget in bytes: the flag, or three quarters of the
    /// machine's memory (16 GiB where that cannot be read).
    pub fn memory_budget_bytes(&self) -> usize {
        if self.max_total_memory_mb > 0 {
            return self.max_total_memory_mb.saturating_mul(1024 * 1024);
        }
        super::limits::machine_memory_bytes()
            .map(|total| total / 4 * 3)
            .unwrap_or(16 << 30)
    }

    /// The engines' options, caching compiled code in `cache_dir`.
    pub fn options(&self, cache_dir: PathBuf) -> RuntimeOptions {
        RuntimeOptions {
            cache_dir,
            max_instances: self.max_instances,
            max_memory_bytes: self.max_memory_mb as usize * 1024 * 1024,
            pooling: !self.no_pooling,
            max_wasm_stack: self.max_wasm_stack_kb * 1024,
            max_table_elements: self.max_table_elements as usize,
            function_cache_bytes: self.function_cache_mb * 1024 * 1024,
            memory_budget_bytes: self.memory_budget_bytes(),
            baseline_above_bytes: (!self.no_baseline).then(|| self.baseline_above_kb * 1024),
            keep_resident_bytes: self.keep_resident_kb * 1024,
            pagemap_scan: !self.no_pagemap_scan,
        }
    }
}
