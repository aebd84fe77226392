//! Failure ratio over a sliding time window, for automatic canary rollback.

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    slot: u64,
    calls: u32,
    failures: u32,
}

/// Counts calls and failures over the last `window`.
#[derive(Debug, Clone)]
pub struct ErrorWindow {
    origin: Instant,
    bucket_len: Duration,
    buckets: [Bucket; BUCKETS],
}

impl ErrorWindow {
    /// An empty window of length `window`.
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            origin: now,
            bucket_len: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket_len.as_nanos()) as u64
    }

    /// Record one outcome.
    pub fn record(&mut self, success: bool, now: Instant) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot || bucket.calls == 0 {
            *bucket = Bucket {
                slot,
                calls: 0,
                failures: 0,
            };
        }
        bucket.calls += 1;
        bucket.failures += u32::from(!success);
    }

    /// (calls, failures) within the window.
    pub fn totals(&self, now: Instant) -> (u32, u32) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && current.saturating_sub(b.slot) < BUCKETS as u64)
            .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures))
    }

    /// Whether at least `min_calls` calls happened and the failure ratio exceeds
    /// `max_rate`.
    pub fn exceeds(&self, max_rate: f64, min_calls: u32, now: Instant) -> bool {
        let (calls, failures) = self.totals(now);
        exceeds(calls, failures, max_rate, min_calls)
    }
}

/// Whether `failures` of at least `min_calls` `calls` exceed the ratio `max_rate` (a
/// window's own counts, or the counts of several hosts' windows summed).
pub fn exceeds(calls: u32, failures: u32, max_rate: f64, min_calls: u32) -> bool {
    calls >= min_calls.max(1) && f64::from(failures) > max_rate * f64::from(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_only_above_the_rate_with_enough_calls() {
        let t0 = Instant::now();
        let mut window = ErrorWindow::new(Duration::from_secs(10), t0);
        for i in 0..9 {
            window.record(i % 3 != 0, t0);
        }
        assert!(!window.exceeds(0.2, 10, t0), "not enough calls yet");
        window.record(false, t0);
        assert_eq!(window.totals(t0), (10, 4));
        assert!(window.exceeds(0.2, 10, t0));
        assert!(!window.exceeds(0.5, 10, t0));
    }

    #[test]
    fn old_outcomes_slide_out() {
        let t0 = Instant::now();
        let mut window = ErrorWindow::new(Duration::from_secs(10), t0);
        for _ in 0..20 {
            window.record(false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(window.totals(later), (0, 0));
        window.record(true, later);
        assert!(!window.exceeds(0.1, 1, later));
    }
}
