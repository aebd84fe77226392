//! Per-service configuration from the `[config]` table of the manifest.

use crate::bindings::shoal::platform::config as wit;

/// The value set for `key` in the service's manifest, if any.
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// Every configured key and value, sorted by key.
pub fn all() -> Vec<(String, String)> {
    wit::get_all()
}
