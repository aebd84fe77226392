//! `shoal:platform/config`: the service's `[config]` table from its manifest.

use std::collections::BTreeMap;
use wasmtime::component::{HasData, Linker};

use super::{PlatformView, traced};
use crate::bindings::config::{self, Host};

/// What a config call sees: the service's table and name.
pub struct ConfigView<'a> {
    /// The `[config]` table.
    pub config: &'a BTreeMap<String, String>,
    /// The service, for the call's span.
    pub service: &'a str,
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
            config: &ctx.service.config,
            service: &ctx.service.name,
        }
    })
}

impl Host for ConfigView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        traced("config.get", self.service, async {
            Ok(self.config.get(&key).cloned())
        })
        .await
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        traced("config.get-all", self.service, async {
            // A BTreeMap iterates in key order, which is what the interface promises.
            Ok(self
                .config
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect())
        })
        .await
    }
}
