//! `shoal:platform/config`: the service's `[config]` table from its manifest.

use crate::bindings::config::Host;
use crate::runtime::GuestState;

impl Host for GuestState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.service.config.get(&key).cloned()
    }

    async fn get_all(&mut self) -> Vec<(String, String)> {
        // A BTreeMap iterates in key order, which is what the interface promises.
        self.service
            .config
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}
