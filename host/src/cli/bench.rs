//! `shoal bench-instantiate`: time the per-request instantiation path in isolation
//! (fresh store + instantiate from the pre-instantiated component), or a whole
//! request handled in-process with no gateway (`--handle`), for the benchmark.

use anyhow::{Context as _, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::deadline::Deadline;
use crate::platform::Platform;
use crate::runtime::invoke::Invocation;
use crate::runtime::{InstanceLimits, Runtime, RuntimeSettings, ServiceContext};

/// What one timed iteration does.
#[derive(Debug, Clone, Copy)]
pub struct BenchMode {
    /// Allocate instances from the pool.
    pub pooling: bool,
    /// Also hand the instance a `GET /` and read its whole response.
    pub handle: bool,
    /// Run code from the baseline compiler instead of the optimising one.
    pub baseline: bool,
    /// The pooling allocator's keep-resident size, in KiB.
    pub keep_resident_kb: usize,
    /// Reset whole kept-resident regions, without asking the kernel which pages were
    /// written.
    pub no_pagemap_scan: bool,
}

/// Instantiate `component` (and handle a request, per `mode`) `iterations` times and
/// print mean and percentiles in µs.
pub async fn instantiate(component: &Path, iterations: u32, mode: BenchMode) -> Result<()> {
    let BenchMode {
        pooling,
        handle,
        baseline,
        ..
    } = mode;
    let cache = std::env::temp_dir().join(format!("shoal-bench-{:016x}", rand::random::<u64>()));
    let runtime = Runtime::new(
        &RuntimeSettings {
            max_instances: 64,
            max_memory_mb: 128,
            no_pooling: !pooling,
            function_cache_mb: 0,
            max_total_memory_mb: usize::MAX >> 20,
            no_baseline: !baseline,
            baseline_above_kb: 0,
            keep_resident_kb: mode.keep_resident_kb,
            no_pagemap_scan: mode.no_pagemap_scan,
            ..RuntimeSettings::default()
        }
        .options(cache.clone()),
    )?;
    let bytes =
        std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let digest = crate::data_dir::sha256_hex(&bytes);
    let loaded = runtime.load(&bytes, &digest)?.code;
    if baseline && loaded.tier != crate::runtime::CodeTier::Baseline {
        anyhow::bail!("the baseline compiler cannot compile this component (see the log)");
    }
    let platform = Platform::builder(&cache)
        .host_id("bench")
        .telemetry(Arc::new(crate::telemetry::Telemetry::from_env(false)?))
        .registry_sweep(Duration::from_secs(60))
        .build()?;
    let store = platform
        .stores
        .open("bench", 1 << 20)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let service = Arc::new(ServiceContext {
        name: "bench".into(),
        version: "1".into(),
        config: Default::default(),
        secrets: Vec::new(),
        instance_id: "bench/bench".into(),
        outbound: Default::default(),
        topics: Default::default(),
        health: Default::default(),
        log_budget: Default::default(),
        store,
        meter: Default::default(),
        logs: Default::default(),
        replay: false,
    });
    let limits = InstanceLimits {
        memory_bytes: 128 * 1024 * 1024,
        table_elements: 100_000,
        budget: runtime.memory_budget.clone(),
        idle: runtime.idle.clone(),
    };
    let invocation = || Invocation {
        service: service.clone(),
        limits: limits.clone(),
        platform: platform.clone(),
        request_id: crate::protocol::RequestId::new(),
        deadline: Deadline::after(Duration::from_secs(3600)),
        trace: opentelemetry::Context::new(),
        held_until_done: None,
        journal: None,
    };
    let run = || async {
        if handle {
            let crate::runtime::Handler::Sequential(pre) = &loaded.handler else {
                anyhow::bail!("--handle measures WASIp2 components only");
            };
            handle_once(pre, invocation()).await
        } else {
            crate::runtime::invoke::instantiate_once(&loaded.handler, &invocation())
                .await
                .map_err(anyhow::Error::from)
        }
    };
    for _ in 0..(iterations / 10).max(10) {
        run().await?;
    }
    let mut samples = Vec::with_capacity(iterations as usize);
    let started = Instant::now();
    for _ in 0..iterations.max(1) {
        let one = Instant::now();
        run().await?;
        samples.push(one.elapsed().as_secs_f64() * 1e6);
    }
    let mean = started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations.max(1));
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "allocator": if pooling { "pooling" } else { "on-demand" },
            "measured": if handle { "instantiate and handle GET /" } else { "instantiate" },
            "code": loaded.tier,
            "iterations": iterations,
            "mean_us": mean,
            "p50_us": at(0.5),
            "p99_us": at(0.99),
        })
    );
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}

/// One `GET /` through a fresh instance, its whole response read: the component's
/// own cost with no gateway in front.
async fn handle_once(
    pre: &wasmtime_wasi_http::p2::bindings::ProxyPre<crate::runtime::GuestState>,
    invocation: Invocation,
) -> Result<()> {
    use http_body_util::BodyExt as _;
    let request = hyper::Request::get("http://bench/")
        .body(http_body_util::Empty::<bytes::Bytes>::new().map_err(
            |never| -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode { match never {} },
        ))
        .context("building the request")?;
    let response = crate::runtime::invoke::handle(pre, None, invocation, request)
        .await
        .map_err(|failure| anyhow::anyhow!("{failure}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "the component answered {}",
        response.status()
    );
    response
        .into_body()
        .collect()
        .await
        .map_err(|code| anyhow::anyhow!("reading the body: {code:?}"))?;
    Ok(())
}

/// Serve a fixed `Hello, world!` with plain hyper on `listen` until interrupted: the
/// native ceiling the benchmark compares the gateway against.
pub async fn native_hello(listen: std::net::SocketAddr) -> Result<()> {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "native hello listening on http://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"Hello, world!\n"),
                )))
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
