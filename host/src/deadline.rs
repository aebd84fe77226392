//! The one type for a request's time budget.
//!
//! A request arrives with a budget (the host's longest, or what a calling host passed
//! in `x-shoal-deadline-ms`), is narrowed by the service's own limit, then by each
//! outbound call's deadline and attempt timeout. Narrowing only ever moves the
//! deadline earlier, so no step can outlive the one that started it.

use http::HeaderValue;
use std::time::{Duration, Instant};

/// The longest any request or call may run, whatever a manifest, a guest or a
/// calling host asks for.
pub const LONGEST: Duration = Duration::from_secs(600);

/// When something must be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// Due at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// Due `budget` from now (never later than [`LONGEST`] from now).
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget.min(LONGEST))
    }

    /// The longest budget there is, from now.
    pub fn longest() -> Self {
        Self::after(LONGEST)
    }

    /// The instant it is due.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left, zero once due.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it is due.
    pub fn is_past(self) -> bool {
        Instant::now() >= self.0
    }

    /// This deadline, or `budget` from now if that is earlier.
    #[must_use]
    pub fn within(self, budget: Duration) -> Self {
        self.min(Self::after(budget))
    }

    /// This deadline, narrowed by a remaining budget in milliseconds as a calling host
    /// sends it in `x-shoal-deadline-ms`; a value that is not a number is ignored.
    #[must_use]
    pub fn within_header(self, value: Option<&HeaderValue>) -> Self {
        match value
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
        {
            Some(ms) => self.within(Duration::from_millis(ms.max(1))),
            None => self,
        }
    }

    /// The remaining budget as an `x-shoal-deadline-ms` value (at least 1 ms, so a
    /// callee never reads "no deadline").
    pub fn header_value(self) -> HeaderValue {
        let ms = self.remaining().as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        HeaderValue::from(ms)
    }
}

impl From<Deadline> for tokio::time::Instant {
    fn from(deadline: Deadline) -> Self {
        deadline.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_only_moves_earlier() {
        let outer = Deadline::after(Duration::from_secs(10));
        let narrowed = outer.within(Duration::from_secs(1));
        assert!(narrowed < outer);
        assert_eq!(narrowed.within(Duration::from_secs(60)), narrowed);
    }

    #[test]
    fn budgets_are_capped_at_the_longest() {
        let capped = Deadline::after(Duration::from_secs(100_000));
        assert!(capped.remaining() <= LONGEST);
    }

    #[test]
    fn header_values_narrow_and_garbage_is_ignored() {
        let outer = Deadline::after(Duration::from_secs(60));
        let from_header = outer.within_header(Some(&HeaderValue::from_static("250")));
        assert!(from_header.remaining() <= Duration::from_millis(250));
        assert_eq!(
            outer.within_header(Some(&HeaderValue::from_static("soon"))),
            outer
        );
        assert_eq!(outer.within_header(None), outer);
        // Zero still leaves a budget of one millisecond, never "no deadline".
        let zero = outer.within_header(Some(&HeaderValue::from_static("0")));
        assert!(zero.remaining() <= Duration::from_millis(1));
    }

    #[test]
    fn a_past_deadline_has_nothing_left_and_still_sends_one_millisecond() {
        let past = Deadline::at(Instant::now() - Duration::from_millis(5));
        assert!(past.is_past());
        assert_eq!(past.remaining(), Duration::ZERO);
        assert_eq!(past.header_value(), HeaderValue::from(1u64));
    }
}
