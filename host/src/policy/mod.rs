//! Resilience and placement policy as pure code: no I/O, time and randomness passed in, so each
//! rule is unit-tested on its own. The caller composes them.

pub mod balancer;
pub mod breaker;
pub mod budget;
pub mod error_rate;
pub mod glob;
pub mod inbound;
pub mod placement;
pub mod rate;
pub mod redact;
pub mod retry;

/// Whether an answered status counts as a failure of the service that gave it: for
/// breakers, canary error windows, spans and the caller's `server-error` outcome.
/// A 4xx is the client's problem, not the service's.
pub fn is_failure_status(status: u16) -> bool {
    status >= 500
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_5xx_is_a_failure() {
        assert!(!super::is_failure_status(200));
        assert!(!super::is_failure_status(404));
        assert!(!super::is_failure_status(429));
        assert!(super::is_failure_status(500));
        assert!(super::is_failure_status(503));
    }
}
