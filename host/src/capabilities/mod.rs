//! Host implementations of the `shoal:platform` interfaces, one module per interface.
//!
//! Each capability reads only the per-request [`GuestState`](crate::runtime::GuestState)
//! it is handed; none reaches into the service table, storage or admin code.

pub mod caller;
pub mod config;
pub mod discovery;
pub mod log;
pub mod metrics;
pub mod registry;
pub mod tracing;

use crate::runtime::GuestState;
use wasmtime::component::{HasSelf, Linker};

/// Add every `shoal:platform` interface the host implements to `linker`.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    crate::bindings::config::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    crate::bindings::log::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    crate::bindings::registry::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    crate::bindings::discovery::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    crate::bindings::caller::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    crate::bindings::metrics::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    crate::bindings::tracing::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    Ok(())
}
