//! Circuit breaker: stop sending to a target that keeps failing, probe it carefully,
//! and resume when it recovers.
//!
//! ```text
//!  closed ──(N consecutive failures, or failure rate ≥ R over the window
//!            with at least M calls)──▶ open
//!  open ──(cool-down elapsed)──▶ half-open
//!  half-open: admits at most P probes at once;
//!             P successes ──▶ closed, any failure ──▶ open
//! ```
//!
//! All state sits behind one short mutex that is taken once per admission and once
//! per outcome: no read-to-write lock upgrade, and half-open can never admit more
//! than P probes however many threads ask at once. A probe whose outcome never
//! arrives (its caller was cancelled) cannot wedge half-open: after another cool-down
//! the half-open period starts afresh. Time is passed in, so the state machine is
//! tested without sleeping.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Thresholds of a breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Open when the failure ratio over the window reaches this (0.0–1.0) ...
    pub failure_rate: f64,
    /// ... and the window holds at least this many calls.
    pub minimum_calls: u32,
    /// Length of the sliding window for the failure rate.
    pub window: Duration,
    /// How long to stay open before probing.
    pub cool_down: Duration,
    /// Probes admitted at once while half-open; this many successes close the breaker.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            minimum_calls: 20,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

/// Observable state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A bounded number of probe calls are admitted.
    HalfOpen,
}

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected;

/// Admission to make one call; report its outcome with [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the outcome with CircuitBreaker::record"]
pub struct Permit {
    probe: bool,
    generation: u64,
}

/// Number of buckets the sliding window is split into.
const BUCKETS: usize = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Which bucket-length slot since `origin` this bucket currently counts.
    slot: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Bumped on every transition; outcomes of permits from an older generation are
    /// ignored, so a slow call admitted while closed cannot close a fresh half-open.
    generation: u64,
    consecutive_failures: u32,
    /// When the breaker last opened, or last (re)entered half-open.
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    origin: Instant,
    buckets: [Bucket; BUCKETS],
}

/// A circuit breaker for one target.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                consecutive_failures: 0,
                opened_at: now,
                probes_in_flight: 0,
                probe_successes: 0,
                origin: now,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    /// The state as of `now` (an open breaker whose cool-down ended reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        inner.state
    }

    /// Ask to make a call at `now`.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Rejected> {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        match inner.state {
            BreakerState::Closed => Ok(Permit {
                probe: false,
                generation: inner.generation,
            }),
            BreakerState::Open => Err(Rejected),
            BreakerState::HalfOpen => {
                let budget = self.config.half_open_probes.max(1);
                if inner.probes_in_flight + inner.probe_successes >= budget {
                    return Err(Rejected);
                }
                inner.probes_in_flight += 1;
                Ok(Permit {
                    probe: true,
                    generation: inner.generation,
                })
            }
        }
    }

    /// Report the outcome of a call admitted by `permit`.
    pub fn record(&self, permit: Permit, success: bool, now: Instant) {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        if permit.generation != inner.generation {
            return;
        }
        if permit.probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            if !success {
                self.open(&mut inner, now);
            } else {
                inner.probe_successes += 1;
                if inner.probe_successes >= self.config.half_open_probes.max(1) {
                    self.close(&mut inner, now);
                }
            }
            return;
        }
        // A closed-state call.
        self.count(&mut inner, success, now);
        if success {
            inner.consecutive_failures = 0;
            return;
        }
        inner.consecutive_failures += 1;
        let (calls, failures) = self.window_totals(&inner, now);
        let rate_tripped = calls >= self.config.minimum_calls.max(1)
            && f64::from(failures) >= self.config.failure_rate * f64::from(calls);
        if inner.consecutive_failures >= self.config.consecutive_failures.max(1) || rate_tripped {
            self.open(&mut inner, now);
        }
    }

    /// Give back a permit whose call was never made (e.g. the deadline passed first).
    pub fn release(&self, permit: Permit) {
        if permit.probe {
            let mut inner = self.inner.lock();
            if permit.generation == inner.generation {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            }
        }
    }

    fn advance(&self, inner: &mut Inner, now: Instant) {
        let cooled = now.saturating_duration_since(inner.opened_at) >= self.config.cool_down;
        let stuck_half_open = inner.state == BreakerState::HalfOpen && inner.probes_in_flight > 0;
        if cooled && (inner.state == BreakerState::Open || stuck_half_open) {
            // Open → half-open; or a half-open period whose probes never reported
            // starts afresh (their late outcomes carry an old generation).
            inner.state = BreakerState::HalfOpen;
            inner.generation += 1;
            inner.opened_at = now;
            inner.probes_in_flight = 0;
            inner.probe_successes = 0;
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = BreakerState::Open;
        inner.generation += 1;
        inner.opened_at = now;
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
    }

    fn close(&self, inner: &mut Inner, now: Instant) {
        inner.state = BreakerState::Closed;
        inner.generation += 1;
        inner.consecutive_failures = 0;
        inner.origin = now;
        inner.buckets = [Bucket::default(); BUCKETS];
    }

    fn bucket_len(&self) -> Duration {
        (self.config.window / BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn slot(&self, inner: &Inner, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(inner.origin);
        (elapsed.as_nanos() / self.bucket_len().as_nanos()) as u64
    }

    fn count(&self, inner: &mut Inner, success: bool, now: Instant) {
        let slot = self.slot(inner, now);
        let bucket = &mut inner.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls += 1;
        if !success {
            bucket.failures += 1;
        }
    }

    fn window_totals(&self, inner: &Inner, now: Instant) -> (u32, u32) {
        let current = self.slot(inner, now);
        inner
            .buckets
            .iter()
            .filter(|b| b.calls > 0 && current.saturating_sub(b.slot) < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (calls + b.calls, failures + b.failures)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            minimum_calls: 10,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn call(breaker: &CircuitBreaker, success: bool, now: Instant) -> bool {
        match breaker.try_acquire(now) {
            Ok(permit) => {
                breaker.record(permit, success, now);
                true
            }
            Err(Rejected) => false,
        }
    }

    #[test]
    fn opens_on_consecutive_failures() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        assert!(call(&breaker, false, t0));
        assert!(call(&breaker, false, t0));
        assert!(call(&breaker, true, t0)); // resets the streak
        assert!(call(&breaker, false, t0));
        assert!(call(&breaker, false, t0));
        assert_eq!(breaker.state(t0), BreakerState::Closed);
        assert!(call(&breaker, false, t0));
        assert_eq!(breaker.state(t0), BreakerState::Open);
        assert!(breaker.try_acquire(t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn opens_on_failure_rate_only_with_enough_calls() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        // Alternate: never 3 in a row, but a 50% failure rate.
        for i in 0..9 {
            assert!(call(&breaker, i % 2 == 0, t0));
        }
        assert_eq!(
            breaker.state(t0),
            BreakerState::Closed,
            "below minimum calls"
        );
        assert!(call(&breaker, false, t0)); // 10 calls, 5 failures
        assert_eq!(breaker.state(t0), BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        for i in 0..8 {
            assert!(call(&breaker, i % 2 == 0, t0));
        }
        // Eleven seconds later the old calls no longer count.
        let later = t0 + Duration::from_secs(11);
        assert!(call(&breaker, true, later));
        assert!(call(&breaker, false, later));
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    #[test]
    fn half_open_after_cool_down_then_closes_on_probe_success() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        for _ in 0..3 {
            call(&breaker, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(breaker.state(t1), BreakerState::HalfOpen);
        let p1 = breaker.try_acquire(t1).expect("probe 1");
        let p2 = breaker.try_acquire(t1).expect("probe 2");
        assert!(breaker.try_acquire(t1).is_err(), "only two probes at once");
        breaker.record(p1, true, t1);
        assert!(
            breaker.try_acquire(t1).is_err(),
            "probe budget is per half-open period"
        );
        breaker.record(p2, true, t1);
        assert_eq!(breaker.state(t1), BreakerState::Closed);
        assert!(call(&breaker, true, t1));
    }

    #[test]
    fn half_open_reopens_on_probe_failure() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        for _ in 0..3 {
            call(&breaker, false, t0);
        }
        let t1 = t0 + Duration::from_secs(6);
        let probe = breaker.try_acquire(t1).expect("probe");
        breaker.record(probe, false, t1);
        assert_eq!(breaker.state(t1), BreakerState::Open);
        assert!(breaker.try_acquire(t1 + Duration::from_secs(4)).is_err());
        assert!(breaker.try_acquire(t1 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn stale_outcomes_do_not_move_a_new_state() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        let slow = breaker.try_acquire(t0).expect("closed permit");
        for _ in 0..3 {
            call(&breaker, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(breaker.state(t1), BreakerState::HalfOpen);
        // The slow call from the closed period finishes now: it must not count as a probe.
        breaker.record(slow, true, t1);
        assert_eq!(breaker.state(t1), BreakerState::HalfOpen);
    }

    #[test]
    fn released_probe_frees_its_slot() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        for _ in 0..3 {
            call(&breaker, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let p1 = breaker.try_acquire(t1).expect("probe");
        let _p2 = breaker.try_acquire(t1).expect("probe");
        assert!(breaker.try_acquire(t1).is_err());
        breaker.release(p1);
        assert!(breaker.try_acquire(t1).is_ok());
    }

    #[test]
    fn lost_probes_cannot_wedge_half_open() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(config(), t0);
        for _ in 0..3 {
            call(&breaker, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        // Two probes go out and their callers vanish without reporting.
        let lost1 = breaker.try_acquire(t1).expect("probe");
        let lost2 = breaker.try_acquire(t1).expect("probe");
        assert!(breaker.try_acquire(t1 + Duration::from_secs(1)).is_err());
        // One cool-down later, half-open starts afresh.
        let t2 = t1 + Duration::from_secs(5);
        assert!(call(&breaker, true, t2));
        assert!(call(&breaker, true, t2));
        assert_eq!(breaker.state(t2), BreakerState::Closed);
        // The lost probes' late outcomes change nothing.
        breaker.record(lost1, false, t2);
        breaker.record(lost2, false, t2);
        assert_eq!(breaker.state(t2), BreakerState::Closed);
    }

    #[test]
    fn many_threads_never_exceed_the_probe_budget() {
        let t0 = Instant::now();
        let breaker = Arc::new(CircuitBreaker::new(config(), t0));
        for _ in 0..3 {
            call(&breaker, false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (breaker, admitted) = (breaker.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if breaker.try_acquire(t1).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn concurrent_failures_open_exactly_once_and_stay_consistent() {
        let t0 = Instant::now();
        let breaker = Arc::new(CircuitBreaker::new(
            BreakerConfig {
                consecutive_failures: 50,
                ..config()
            },
            t0,
        ));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let breaker = breaker.clone();
                std::thread::spawn(move || {
                    for j in 0..500 {
                        let _ = call(&breaker, (i + j) % 5 == 0, t0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        // 80% failures over far more than minimum_calls: must be open, not wedged.
        assert_eq!(breaker.state(t0), BreakerState::Open);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(breaker.state(t1), BreakerState::HalfOpen);
        assert!(call(&breaker, true, t1));
        assert!(call(&breaker, true, t1));
        assert_eq!(breaker.state(t1), BreakerState::Closed);
    }
}
