//! Secrets the operator provides: read one by the name the manifest gives it
//! (`secrets = ["db-password"]`).
//!
//! ```no_run
//! let password = shoal_sdk::secrets::get("db-password").expect("the operator sets it");
//! # drop(password);
//! ```
//!
//! The value is read at each call, so a rotated secret takes effect at once. The host
//! masks every secret value in its logs, traces and metrics, but a value the service
//! writes into its own responses or data is the service's to protect.

use crate::bindings::shoal::platform::secrets as wit;

pub use wit::SecretError;

/// The current value of the secret `name`.
pub fn get(name: &str) -> Result<String, SecretError> {
    wit::get(name)
}
