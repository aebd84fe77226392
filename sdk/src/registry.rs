//! This instance's identity and its self-reported health.

use crate::bindings::shoal::platform::registry as wit;

pub use wit::{Health, Identity};

/// Who this instance is: service, version, instance id, host id.
pub fn identity() -> Identity {
    wit::get_identity()
}

/// Tell the host how healthy this service is; discovery and load balancing follow.
pub fn report_health(health: Health, reason: Option<&str>) {
    wit::report_health(health, reason);
}
