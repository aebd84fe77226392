//! Retries: which calls may be retried, how long to wait between attempts, and a
//! budget that keeps retries from multiplying load on a struggling target.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Retry settings for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (1 = no retries).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles for each further one.
    pub base_backoff: Duration,
    /// Ceiling of the backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// Wait before retry number `retry` (1 for the first retry), with "full jitter":
    /// a uniform draw in `[0, min(max, base · 2^(retry-1))]`. `unit` is a random
    /// number in `[0, 1)` supplied by the caller, which keeps this function pure.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let ceiling = self
            .base_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Methods that are safe to send twice (RFC 9110 §9.2.2).
pub fn is_idempotent_method(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Statuses worth retrying on another attempt: the target (or a proxy) says it could
/// not handle the request now.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// How one attempt of a call ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The target answered with this status.
    Answered(u16),
    /// A gRPC target answered (HTTP 200) with this status before any message.
    Grpc(crate::grpc::Code),
    /// No answer; `sent` says whether any of the request may have reached the target.
    Failed {
        /// Whether the request may have been (partly) sent.
        sent: bool,
    },
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep this attempt's outcome.
    Stop,
    /// Wait this long, then try again.
    RetryAfter(Duration),
}

/// Whether an attempt counts as a success for the target's breakers.
pub fn attempt_succeeded(attempt: Attempt) -> bool {
    match attempt {
        Attempt::Answered(status) => !super::is_failure_status(status),
        Attempt::Grpc(code) => !code.is_server_failure(),
        Attempt::Failed { .. } => false,
    }
}

/// The retry decision after attempt number `number` (1 for the first), pure apart
/// from the budget it draws on: retry a retryable status or a transport failure when
/// the call is idempotent, or a failure that never left whatever the method; never past
/// `max_attempts`, the budget or the deadline (including the backoff). `unit` is a
/// random number in `[0, 1)` for the backoff's jitter.
#[allow(clippy::too_many_arguments)]
pub fn next_step(
    policy: &RetryPolicy,
    budget: &mut RetryBudget,
    number: u32,
    attempt: Attempt,
    idempotent: bool,
    now: Instant,
    deadline: Instant,
    unit: f64,
) -> Next {
    let retryable = match attempt {
        Attempt::Answered(status) => idempotent && is_retryable_status(status),
        // UNAVAILABLE says the server did not act on the call: retried whatever the
        // method; other server codes only for idempotent methods.
        Attempt::Grpc(code) => code.is_retryable(idempotent),
        Attempt::Failed { sent } => idempotent || !sent,
    };
    if !retryable || number >= policy.max_attempts || now >= deadline || !budget.try_retry(now) {
        return Next::Stop;
    }
    let backoff = policy.backoff(number, unit);
    if now + backoff >= deadline {
        return Next::Stop;
    }
    Next::RetryAfter(backoff)
}

/// Settings of a [`RetryBudget`].
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed as a fraction of first attempts over the window (0.2 = 20 %).
    pub ratio: f64,
    /// Retries always allowed per window, so low-traffic callers can still retry.
    pub min_retries: u32,
    /// Length of the window.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_retries: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Caps retries to a fraction of recent traffic: when a target fails for everyone,
/// callers fall back to single attempts instead of tripling the load on it.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    requests: VecDeque<Instant>,
    retries: VecDeque<Instant>,
}

impl RetryBudget {
    /// An empty budget.
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            requests: VecDeque::new(),
            retries: VecDeque::new(),
        }
    }

    /// Record a first attempt.
    pub fn on_request(&mut self, now: Instant) {
        self.expire(now);
        self.requests.push_back(now);
    }

    /// Take permission for one retry; false when the budget is spent.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        self.expire(now);
        let allowed =
            self.config.min_retries as f64 + self.config.ratio * self.requests.len() as f64;
        if (self.retries.len() as f64) < allowed.floor() {
            self.retries.push_back(now);
            true
        } else {
            false
        }
    }

    fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        for queue in [&mut self.requests, &mut self.retries] {
            while queue
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                queue.pop_front();
            }
            // Bound memory under extreme rates: keep at most 1M timestamps each.
            while queue.len() > 1_000_000 {
                queue.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generous_budget() -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio: 1.0,
            min_retries: 100,
            window: Duration::from_secs(10),
        })
    }

    #[test]
    fn next_step_retries_only_what_is_safe() {
        let policy = RetryPolicy::default();
        let now = Instant::now();
        let deadline = now + Duration::from_secs(10);
        let step = |attempt, idempotent| {
            next_step(
                &policy,
                &mut generous_budget(),
                1,
                attempt,
                idempotent,
                now,
                deadline,
                0.5,
            )
        };
        assert!(matches!(
            step(Attempt::Answered(503), true),
            Next::RetryAfter(_)
        ));
        assert_eq!(
            step(Attempt::Answered(503), false),
            Next::Stop,
            "a POST that answered"
        );
        assert_eq!(
            step(Attempt::Answered(500), true),
            Next::Stop,
            "500 is not retryable"
        );
        assert_eq!(step(Attempt::Answered(200), true), Next::Stop);
        assert!(matches!(
            step(Attempt::Failed { sent: false }, false),
            Next::RetryAfter(_)
        ));
        assert_eq!(step(Attempt::Failed { sent: true }, false), Next::Stop);
        assert!(matches!(
            step(Attempt::Failed { sent: true }, true),
            Next::RetryAfter(_)
        ));
        use crate::grpc::Code;
        assert!(matches!(
            step(Attempt::Grpc(Code::Unavailable), false),
            Next::RetryAfter(_)
        ));
        assert_eq!(step(Attempt::Grpc(Code::InvalidArgument), true), Next::Stop);
        assert_eq!(step(Attempt::Grpc(Code::Internal), false), Next::Stop);
        assert!(matches!(
            step(Attempt::Grpc(Code::Internal), true),
            Next::RetryAfter(_)
        ));
        assert!(attempt_succeeded(Attempt::Grpc(Code::NotFound)));
        assert!(!attempt_succeeded(Attempt::Grpc(Code::Unavailable)));
    }

    #[test]
    fn next_step_stops_at_the_attempt_limit_the_deadline_and_the_budget() {
        let policy = RetryPolicy::default();
        let now = Instant::now();
        let far = now + Duration::from_secs(10);
        let failed = Attempt::Failed { sent: false };
        let mut budget = generous_budget();
        assert_eq!(
            next_step(
                &policy,
                &mut budget,
                policy.max_attempts,
                failed,
                true,
                now,
                far,
                0.5
            ),
            Next::Stop
        );
        // The backoff would end past the deadline.
        let near = now + Duration::from_micros(1);
        assert_eq!(
            next_step(&policy, &mut budget, 1, failed, true, now, near, 1.0),
            Next::Stop
        );
        let mut empty = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_retries: 0,
            window: Duration::from_secs(10),
        });
        assert_eq!(
            next_step(&policy, &mut empty, 1, failed, true, now, far, 0.5),
            Next::Stop
        );
    }

    #[test]
    fn success_for_breakers_is_an_answer_below_500() {
        assert!(attempt_succeeded(Attempt::Answered(404)));
        assert!(!attempt_succeeded(Attempt::Answered(502)));
        assert!(!attempt_succeeded(Attempt::Failed { sent: false }));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        };
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(10));
        assert_eq!(policy.backoff(2, 1.0), Duration::from_millis(20));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(40));
        assert_eq!(policy.backoff(5, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(40, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(20));
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(
            policy.backoff(3, 7.0),
            Duration::from_millis(40),
            "unit is clamped"
        );
    }

    #[test]
    fn idempotency_and_retryable_statuses() {
        for method in ["GET", "get", "HEAD", "PUT", "DELETE", "OPTIONS"] {
            assert!(is_idempotent_method(method), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent_method(method), "{method}");
        }
        assert!(is_retryable_status(503));
        assert!(!is_retryable_status(500));
        assert!(!is_retryable_status(404));
    }

    #[test]
    fn budget_allows_minimum_then_a_ratio_of_traffic() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_retries: 2,
            window: Duration::from_secs(10),
        });
        assert!(budget.try_retry(t0));
        assert!(budget.try_retry(t0));
        assert!(!budget.try_retry(t0), "minimum spent, no traffic yet");
        for _ in 0..10 {
            budget.on_request(t0);
        }
        // 2 + 0.2 * 10 = 4 retries in the window.
        assert!(budget.try_retry(t0));
        assert!(budget.try_retry(t0));
        assert!(!budget.try_retry(t0));
        // The window slides: everything expires.
        let later = t0 + Duration::from_secs(10);
        assert!(budget.try_retry(later));
    }

    #[test]
    fn budget_under_a_storm_caps_amplification() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(BudgetConfig::default());
        let mut retries = 0;
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 100); // 1 s of traffic
            budget.on_request(now);
            if budget.try_retry(now) {
                retries += 1;
            }
        }
        // At most min_retries + 20 % of requests.
        assert!(retries <= 10 + 2_000, "{retries}");
        assert!(retries >= 1_900, "{retries}");
    }
}
