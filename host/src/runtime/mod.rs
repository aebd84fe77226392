//! The runtime core: the wasmtime engine, the linker every service is checked
//! against, compiled-code caching, and per-request instantiation.
//!
//! - [`engine`] builds the engine (component model, pooling allocator, epochs).
//! - [`compile`] turns uploaded bytes into a ready-to-instantiate service, with a
//!   content-addressed on-disk cache of compiled code.
//! - [`function_cache`] keeps compiled functions, so components that share code
//!   (one toolchain's runtime) compile only what is new to them.
//! - [`state`] is the per-request store data that lends capabilities their views.
//! - [`executor`] is the one interface the layers above run a deployment through,
//!   and the [`Loader`] that makes one of an upload.
//! - [`invoke`] runs one HTTP request through a fresh (or reused) instance.
//! - [`concurrent`] serves WASIp3 components: one instance, several requests at once;
//!   [`read_ahead`] lets a WASIp3 response head wait a moment for its body.
//! - [`journaled`] puts an instance's clocks and random numbers through its
//!   request's journal (recorded requests, replays).
//! - [`replay`] runs a recorded request again on an engine that enforces
//!   determinism, its imports answered from the recording.
//! - [`reuse`] keeps idle instances of services that opt in to reuse.
//! - [`limits`] bounds each instance and all of them together (memory budget).
//! - [`settings`] is the runtime's part of the `shoal serve` flags.

pub mod compile;
pub mod concurrent;
pub mod cpu;
pub mod engine;
pub mod executor;
pub mod failure;
pub mod function_cache;
pub mod invoke;
pub mod journaled;
pub mod limits;
pub mod read_ahead;
pub mod replay;
pub mod reuse;
pub mod settings;
pub mod state;

pub use crate::capabilities::ServiceContext;
pub use compile::{CodeTier, Compiled, Handler, LoadError, Loaded};
pub use engine::{Runtime, RuntimeOptions};
pub use executor::{Executor, Loader};
pub use settings::RuntimeSettings;
pub use state::{GuestState, InstanceLimits};
