//! The service's own key-value store: single-key calls, and transactions that commit
//! atomically (see `wit/store.wit`).
//!
//! ```no_run
//! use shoal_sdk::store::{self, StoreError};
//!
//! // Read-modify-write without lost updates: retried when another commit got there
//! // first.
//! let count = store::transaction(|tx| {
//!     let now = tx.get("visits")?.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or_default()));
//!     tx.set("visits", &(now + 1).to_le_bytes())?;
//!     Ok::<_, StoreError>(now + 1)
//! });
//! ```

use crate::bindings::shoal::platform::store as wit;

pub use wit::StoreError;

/// Attempts [`transaction`] makes before giving up with `conflict`.
pub const MAX_ATTEMPTS: u32 = 64;
/// Longest pause between two attempts, in milliseconds.
const MAX_BACKOFF_MS: u64 = 50;

/// The value under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    wit::get(key)
}

/// Store `value` under `key`.
pub fn set(key: &str, value: &[u8]) -> Result<(), StoreError> {
    wit::set(key, value)
}

/// Remove `key`.
pub fn delete(key: &str) -> Result<(), StoreError> {
    wit::delete(key)
}

/// Store `value` under `key` only if it currently holds `expected` (`None`: absent).
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
) -> Result<(), StoreError> {
    wit::compare_and_swap(key, expected, value)
}

/// Keys starting with `prefix`, in order, at most `limit`.
pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, StoreError> {
    wit::list_keys(prefix, limit)
}

/// An open transaction; see [`transaction`] for the usual way to run one.
pub struct Transaction {
    raw: wit::Transaction,
}

impl Transaction {
    /// Start a transaction.
    pub fn new() -> Self {
        Self {
            raw: wit::Transaction::new(),
        }
    }

    /// The value under `key`, as this transaction sees it.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.raw.get(key)
    }

    /// Write `value` under `key` at commit.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.raw.set(key, value)
    }

    /// Remove `key` at commit.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.raw.delete(key)
    }

    /// Keys starting with `prefix`, as this transaction sees them.
    pub fn list_keys(&self, prefix: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        self.raw.list_keys(prefix, limit)
    }

    /// Publish `payload` to `topic` when this transaction commits (never if it does
    /// not); returns the event's id.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<String, crate::events::PublishError> {
        crate::bindings::shoal::platform::events::publish_in(&self.raw, topic, payload)
    }

    /// Publish `payload` to `topic` when this transaction commits, delivered no sooner
    /// than `delay` from now.
    pub fn schedule(
        &self,
        topic: &str,
        payload: &[u8],
        delay: std::time::Duration,
    ) -> Result<String, crate::events::PublishError> {
        crate::bindings::shoal::platform::events::schedule_in(
            &self.raw,
            topic,
            payload,
            crate::events::millis(delay),
        )
    }

    /// Record that event `id` is handled, when this transaction commits: the host then
    /// drops its redeliveries to this service.
    pub fn mark_handled(&self, id: &str) -> Result<(), StoreError> {
        crate::bindings::shoal::platform::events::mark_handled(&self.raw, id)
    }

    /// Write everything at once, or nothing.
    pub fn commit(self) -> Result<(), StoreError> {
        self.raw.commit()
    }
}

impl Default for Transaction {
    fn default() -> Self {
        Self::new()
    }
}

/// Run `work` in a transaction and commit it; when the commit meets a `conflict`,
/// wait a random, growing pause and run `work` again on a fresh transaction (up to
/// [`MAX_ATTEMPTS`] times). `work` must do nothing but store calls that should be
/// repeated.
pub fn transaction<T, E: From<StoreError>>(
    mut work: impl FnMut(&Transaction) -> Result<T, E>,
) -> Result<T, E> {
    for attempt in 0..MAX_ATTEMPTS {
        let tx = Transaction::new();
        let value = work(&tx)?;
        match tx.commit() {
            Ok(()) => return Ok(value),
            Err(StoreError::Conflict) => backoff(attempt),
            Err(error) => return Err(error.into()),
        }
    }
    Err(StoreError::Conflict.into())
}

/// Wait a random time that grows with `attempt` ("full jitter"), so transactions that
/// keep colliding on a hot key spread out instead of colliding again.
fn backoff(attempt: u32) {
    let ceiling_ms = (1u64 << attempt.min(6)).min(MAX_BACKOFF_MS);
    let random = crate::bindings::wasi::random::random::get_random_u64();
    let micros = random % (ceiling_ms * 1000 + 1);
    std::thread::sleep(std::time::Duration::from_micros(micros));
}
