//! Resilience policy as pure code: no I/O, time and randomness passed in, so each
//! rule is unit-tested on its own. The caller composes them.

pub mod balancer;
pub mod breaker;
pub mod error_rate;
pub mod retry;
