//! Host-side bindings of the `shoal:platform` interfaces the host implements.
//!
//! The `wasi:*` interfaces come from `wasmtime-wasi` and `wasmtime-wasi-http`, except
//! `wasi:keyvalue`, which Shoal implements over its store; those and Shoal's own
//! interfaces are generated here, from the same WIT the guests use.
//! Every import is `trappable`: a host method returns `wasmtime::Result`, whose `Err`
//! is a host fault that traps the instance, while expected failures are WIT values.

wasmtime::component::bindgen!({
    path: "../wit",
    inline: "
        package shoal:host;
        world host {
            import shoal:platform/config@0.1.0;
            import shoal:platform/secrets@0.1.0;
            import shoal:platform/log@0.1.0;
            import shoal:platform/registry@0.1.0;
            import shoal:platform/discovery@0.1.0;
            import shoal:platform/caller@0.1.0;
            import shoal:platform/metrics@0.1.0;
            import shoal:platform/tracing@0.1.0;
            import shoal:platform/store@0.1.0;
            import shoal:platform/events@0.1.0;
            export shoal:platform/health-check@0.1.0;
        }
    ",
    world: "shoal:host/host",
    imports: { default: async | trappable },
    exports: { default: async },
    // Results are kept in recordings and read back by replays.
    additional_derives: [serde::Serialize, serde::Deserialize],
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "shoal:platform/discovery.watcher": crate::capabilities::discovery::Watcher,
        "shoal:platform/tracing.span": crate::capabilities::tracing::GuestSpan,
        "shoal:platform/store.transaction": crate::capabilities::store::StoreTransaction,
    },
});

/// `wasi:keyvalue`, apart: its compare-and-swap error holds a handle, so its types
/// cannot be kept in a recording (a replay's store refuses its calls instead).
mod keyvalue_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "
            package shoal:keyvalue-host;
            world host {
                import wasi:keyvalue/store@0.2.0-draft2;
                import wasi:keyvalue/atomics@0.2.0-draft2;
                import wasi:keyvalue/batch@0.2.0-draft2;
            }
        ",
        world: "shoal:keyvalue-host/host",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::KvBucket,
            "wasi:keyvalue/atomics.cas": crate::capabilities::keyvalue::KvCas,
        },
    });
}

pub use self::exports::shoal::platform::health_check;
pub use self::keyvalue_bindings::wasi::keyvalue;
pub use self::shoal::platform::{
    caller, config, discovery, events, log, metrics, registry, secrets, store, tracing,
};
