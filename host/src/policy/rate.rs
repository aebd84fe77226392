//! A token bucket: at most `burst` at once, refilled at `per_second`. Pure: time is
//! passed in.

use std::time::Instant;

/// Tokens that refill over time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second`.
    pub fn new(burst: u64, per_second: u64, now: Instant) -> Self {
        Self {
            burst: burst as f64,
            per_second: per_second as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Take `n` tokens if there are that many; otherwise take none.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The log allowance of one service: lines and bytes per second.
#[derive(Debug, Clone)]
pub struct LogBudget {
    lines: TokenBucket,
    bytes: TokenBucket,
}

/// Lines a service may log per second (twice that in a burst).
pub const LOG_LINES_PER_SECOND: u64 = 200;
/// Bytes a service may log per second (twice that in a burst).
pub const LOG_BYTES_PER_SECOND: u64 = 256 * 1024;

impl Default for LogBudget {
    fn default() -> Self {
        Self::new(LOG_LINES_PER_SECOND, LOG_BYTES_PER_SECOND, Instant::now())
    }
}

impl LogBudget {
    /// `lines` and `bytes` per second, with a burst of two seconds' worth.
    pub fn new(lines: u64, bytes: u64, now: Instant) -> Self {
        Self {
            lines: TokenBucket::new(lines * 2, lines, now),
            bytes: TokenBucket::new(bytes * 2, bytes, now),
        }
    }

    /// Whether a line of `len` bytes may be logged now (taking its share if so).
    pub fn allow(&mut self, len: usize, now: Instant) -> bool {
        // Take the line only if its bytes fit too, so a refusal costs nothing.
        let mut probe = self.bytes.clone();
        if !probe.try_take(len as u64, now) || !self.lines.try_take(1, now) {
            return false;
        }
        self.bytes = probe;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_bursts_then_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2, 1, start);
        assert!(bucket.try_take(1, start));
        assert!(bucket.try_take(1, start));
        assert!(!bucket.try_take(1, start));
        assert!(bucket.try_take(1, start + Duration::from_secs(1)));
        assert!(
            !bucket.try_take(5, start + Duration::from_secs(100)),
            "never above the burst"
        );
    }

    #[test]
    fn the_log_budget_limits_lines_and_bytes() {
        let start = Instant::now();
        let mut budget = LogBudget::new(10, 1000, start);
        let allowed = (0..100).filter(|_| budget.allow(10, start)).count();
        assert_eq!(allowed, 20, "a burst of two seconds' lines");
        let mut budget = LogBudget::new(1000, 1000, start);
        let allowed = (0..100).filter(|_| budget.allow(500, start)).count();
        assert_eq!(allowed, 4, "a burst of two seconds' bytes");
        assert!(
            budget.allow(500, start + Duration::from_secs(1)),
            "refilled"
        );
    }
}
