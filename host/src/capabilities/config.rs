//! `shoal:platform/config` and the standard `wasi:config/store@0.2.0-rc.1`: the
//! service's `[config]` table from its manifest, through either interface, so a
//! component written for another host's `wasi:config` runs unchanged.

use std::collections::BTreeMap;
use wasmtime::component::{HasData, Linker};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use super::{PlatformView, traced};
use crate::bindings::config::{self, Host};
use crate::recording::journal::{self, Journal};

/// A service's `[config]` table, kept in the form each interface reads.
#[derive(Default)]
pub struct ServiceConfig {
    values: BTreeMap<String, String>,
    wasi: WasiConfigVariables,
}

impl From<BTreeMap<String, String>> for ServiceConfig {
    fn from(values: BTreeMap<String, String>) -> Self {
        let wasi = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self { values, wasi }
    }
}

impl ServiceConfig {
    /// The table, in key order.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }
}

/// What a config call sees: the service's table and name.
pub struct ConfigView<'a> {
    /// The `[config]` table.
    pub config: &'a BTreeMap<String, String>,
    /// The service, for the call's span.
    pub service: &'a str,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasConfig;

impl HasData for HasConfig {
    type Data<'a> = ConfigView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    config::add_to_linker::<T, HasConfig>(linker, |state| {
        let ctx = state.platform().ctx;
        ConfigView {
            config: ctx.service.config.values(),
            service: &ctx.service.name,
            journal: ctx.journal(),
        }
    })?;
    wasmtime_wasi_config::add_to_linker(linker, |state: &mut T| {
        WasiConfig::new(&state.platform().ctx.service.config.wasi)
    })
}

impl Host for ConfigView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let about = journal::about(self.journal, || key.clone());
        let config = self.config;
        traced(
            "config.get",
            self.service,
            journal::call(self.journal, "config.get", about, async move {
                Ok(config.get(&key).cloned())
            }),
        )
        .await
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let about = journal::about(self.journal, String::new);
        let config = self.config;
        traced(
            "config.get-all",
            self.service,
            journal::call(self.journal, "config.get-all", about, async move {
                // A BTreeMap iterates in key order, which is what the interface promises.
                Ok(config
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect())
            }),
        )
        .await
    }
}
