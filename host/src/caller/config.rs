//! The effective caller policy towards one target: manifest values over defaults.

use std::time::Duration;

use crate::manifest::{self, Outbound};
use crate::policy::balancer::Strategy;
use crate::policy::breaker::BreakerConfig;
use crate::policy::retry::{BudgetConfig, RetryPolicy};

/// Default time one attempt may take.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a whole call may take.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// Resolved policy of one (caller, target) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPolicy {
    /// Per-attempt timeout.
    pub attempt_timeout: Duration,
    /// Overall deadline.
    pub deadline: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Load balancing.
    pub strategy: Strategy,
    /// Breaker thresholds (per instance and per service).
    pub breaker: BreakerConfig,
    /// Retry budget.
    pub budget: BudgetConfig,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            retry: RetryPolicy::default(),
            strategy: Strategy::default(),
            breaker: BreakerConfig::default(),
            budget: BudgetConfig::default(),
        }
    }
}

impl TargetPolicy {
    /// The policy `outbound` sets for `target`, defaults elsewhere.
    pub fn resolve(outbound: &Outbound, target: &str) -> Self {
        let mut policy = Self::default();
        let Some(config) = outbound.targets.get(target) else {
            return policy;
        };
        apply(config, &mut policy);
        policy
    }
}

fn apply(config: &manifest::TargetPolicy, policy: &mut TargetPolicy) {
    let ms = Duration::from_millis;
    if let Some(v) = config.attempt_timeout_ms {
        policy.attempt_timeout = ms(v);
    }
    if let Some(v) = config.deadline_ms {
        policy.deadline = ms(v);
    }
    if let Some(v) = config.max_attempts {
        policy.retry.max_attempts = v;
    }
    if let Some(v) = config.load_balancing {
        policy.strategy = v;
    }
    if let Some(breaker) = &config.breaker {
        let b = &mut policy.breaker;
        if let Some(v) = breaker.consecutive_failures {
            b.consecutive_failures = v;
        }
        if let Some(v) = breaker.failure_rate {
            b.failure_rate = v;
        }
        if let Some(v) = breaker.minimum_calls {
            b.minimum_calls = v;
        }
        if let Some(v) = breaker.window_ms {
            b.window = ms(v);
        }
        if let Some(v) = breaker.cool_down_ms {
            b.cool_down = ms(v);
        }
        if let Some(v) = breaker.half_open_probes {
            b.half_open_probes = v;
        }
    }
    if let Some(budget) = &config.retry_budget {
        if let Some(v) = budget.ratio {
            policy.budget.ratio = v;
        }
        if let Some(v) = budget.min_retries {
            policy.budget.min_retries = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_values_override_defaults_for_their_target_only() {
        let manifest = crate::manifest::Manifest::parse(
            "[outbound.targets.b]\nattempt_timeout_ms = 100\nbreaker = { cool_down_ms = 300 }\n",
            256,
        )
        .expect("manifest");
        let b = TargetPolicy::resolve(&manifest.outbound, "b");
        assert_eq!(b.attempt_timeout, Duration::from_millis(100));
        assert_eq!(b.breaker.cool_down, Duration::from_millis(300));
        assert_eq!(
            b.breaker.consecutive_failures,
            BreakerConfig::default().consecutive_failures
        );
        assert_eq!(
            TargetPolicy::resolve(&manifest.outbound, "c"),
            TargetPolicy::default()
        );
    }
}
