//! Each service's own key-value store.
//!
//! [`StoreBackend`] opens the store of one service; [`ServiceStore`] is that store.
//! The embedded backend ([`sqlite`]) keeps one SQLite database per service in the data
//! directory; a replicated backend (PostgreSQL) can sit behind the same two traits.
//!
//! Transactions are optimistic: a guest's transaction reads through the store and
//! buffers its writes in the host ([`Transaction`]), and [`ServiceStore::commit`]
//! applies them in one database transaction only if nothing it read has changed
//! since (every key carries the sequence number of the commit that last wrote it).
//! So no lock is held while guest code runs, and no update is lost.

pub mod bounded;
pub mod postgres;
pub mod sealed;
pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;
use thiserror::Error;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Writes one transaction may buffer.
pub const MAX_TRANSACTION_WRITES: usize = 10_000;
/// Bytes one transaction may hold in the host: keys and values it writes, events it
/// publishes, and the keys it has read and listed (checked again at commit).
pub const MAX_TRANSACTION_BYTES: usize = 16 * 1024 * 1024;
/// What one remembered key costs besides its bytes (its version, the map's entry).
const ENTRY_OVERHEAD: usize = 48;
/// Keys one `list-keys` may answer.
pub const MAX_LIST: u32 = 10_000;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// A concurrent commit changed what was read (or a compare-and-swap found another
    /// value); nothing was written.
    #[error("conflict: another commit changed what was read")]
    Conflict,
    /// A key or value outside the limits.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The store is full.
    #[error("the store's quota is exhausted")]
    QuotaExceeded,
    /// The transaction is already committed or failed.
    #[error("the transaction is closed")]
    Closed,
    /// The database failed (the host's side).
    #[error("store backend: {0}")]
    Backend(String),
    /// The database cannot be reached, or did not answer in time: nothing was
    /// written; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A value and the sequence number of the commit that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// The commit that wrote it.
    pub version: u64,
}

/// An event waiting in a service's outbox: stored with the transaction that published
/// it, moved to the bus after that transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Unique id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The publisher's W3C `traceparent`, so the delivery continues its trace.
    pub traceparent: Option<String>,
    /// When it was published (Unix milliseconds), for the delivery lag.
    pub published_ms: u64,
    /// Not delivered before this time (Unix milliseconds; 0: at once).
    pub deliver_at_ms: u64,
}

/// What a transaction read and wants to write, checked and applied by
/// [`ServiceStore::commit`].
#[derive(Debug, Default, Clone)]
pub struct Commit {
    /// Keys read and the version seen (`None`: absent).
    pub reads: BTreeMap<String, Option<u64>>,
    /// Prefixes listed and the keys (with versions) seen, up to the limit used.
    pub listed: Vec<Listed>,
    /// Keys to write (`None`: delete).
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Events to publish once committed (the outbox).
    pub events: Vec<OutboxEvent>,
    /// Event ids handled by this transaction (the inbox).
    pub handled: Vec<String>,
}

impl Commit {
    /// Whether committing would write anything.
    pub fn writes_anything(&self) -> bool {
        !self.writes.is_empty() || !self.events.is_empty() || !self.handled.is_empty()
    }
}

/// One `list-keys` of a transaction, to check again at commit.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The prefix.
    pub prefix: String,
    /// The limit it was listed with.
    pub limit: u32,
    /// What the store held then.
    pub seen: Vec<(String, u64)>,
}

/// The store of one service.
pub trait ServiceStore: Send + Sync {
    /// The database engine, as OpenTelemetry's `db.system.name` names it.
    fn engine(&self) -> &'static str;

    /// The size quota in force, in bytes.
    fn quota(&self) -> u64;

    /// Change the size quota (the version now serving brings its own): growth beyond
    /// it is refused from now on, shrinking is always allowed.
    fn set_quota(&self, bytes: u64);

    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// The values under `keys`, read in one consistent snapshot.
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StoreError>;

    /// Keys starting with `prefix` with their versions, in order, at most `limit`.
    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<(String, u64)>, StoreError>;

    /// Keys strictly after `after` (all keys when `None`), in order, at most `limit`:
    /// a page of a scan that resumes where the previous page ended.
    fn keys_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, StoreError>;

    /// Check `commit`'s reads against the store and apply its writes atomically and
    /// durably; `Conflict` when a read is stale, `QuotaExceeded` when the writes do
    /// not fit.
    fn commit(&self, commit: &Commit) -> Result<(), StoreError>;

    /// Bytes of keys and values stored.
    fn size(&self) -> Result<u64, StoreError>;

    /// Committed events not yet handed to the bus, oldest first, at most `limit`.
    fn outbox(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Whether [`ServiceStore::outbox`] may return events. A backend that knows its
    /// outbox is empty answers false without touching its database, so an idle
    /// service costs the event router nothing.
    fn outbox_may_hold_events(&self) -> bool {
        true
    }

    /// Remove events from the outbox (the bus has them now).
    fn remove_from_outbox(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Everything it holds, in one consistent snapshot.
    fn export(&self) -> Result<Snapshot, StoreError>;

    /// Load `snapshot` into this store in one transaction: `Conflict` unless the store
    /// is empty, `QuotaExceeded` when it does not fit.
    fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Forget the ids of events handled before `handled_before_ms` (Unix
    /// milliseconds): long after any redelivery of them. Returns how many.
    fn prune_inbox(&self, handled_before_ms: u64) -> Result<u64, StoreError>;

    /// Bytes of this service's events that the bus holds now: they count against
    /// the quota with what the store holds (its outbox included), so a backlog of its
    /// events cannot grow without bound.
    fn set_held_elsewhere(&self, bytes: u64);

    /// Whether a committed transaction marked event `id` handled.
    fn is_handled(&self, id: &str) -> Result<bool, StoreError>;
}

/// Everything one service's store holds, read in one consistent snapshot: what
/// `shoal data export` writes and `shoal data import` loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Keys, values and the versions that wrote them, in key order.
    pub entries: Vec<(String, Vec<u8>, u64)>,
    /// Events committed and not yet on the bus, oldest first.
    pub outbox: Vec<OutboxEvent>,
    /// Ids of handled events and when they were handled (Unix milliseconds).
    pub inbox: Vec<(String, u64)>,
    /// The last commit's sequence number.
    pub sequence: u64,
}

impl Snapshot {
    /// The bytes it counts against a quota, as commits count them.
    pub fn bytes(&self) -> u64 {
        let entries: usize = self
            .entries
            .iter()
            .map(|(key, value, _)| key.len() + value.len())
            .sum();
        let outbox: usize = self
            .outbox
            .iter()
            .map(|event| event.id.len() + event.topic.len() + event.payload.len())
            .sum();
        let inbox: usize = self.inbox.iter().map(|(id, _)| id.len()).sum();
        (entries + outbox + inbox) as u64
    }

    /// The sequence a store continues from after loading it: past every version in it.
    pub fn next_sequence(&self) -> u64 {
        self.entries
            .iter()
            .map(|(_, _, version)| *version)
            .max()
            .unwrap_or(0)
            .max(self.sequence)
    }
}

/// Opens services' stores.
pub trait StoreBackend: Send + Sync {
    /// The database engine (`sqlite`, `postgresql`).
    fn engine(&self) -> &'static str;

    /// Delete everything `service`'s store holds (its file, or its schema). The caller
    /// makes sure no version of the service runs.
    fn purge(&self, service: &str) -> Result<(), StoreError>;

    /// The store of `service` (created empty on first use), limited to `quota` bytes.
    fn open(&self, service: &str, quota: u64) -> Result<Arc<dyn ServiceStore>, StoreError>;
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
pub(crate) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut bound = prefix.to_vec();
    while let Some(last) = bound.pop() {
        if last < u8::MAX {
            bound.push(last + 1);
            return Some(bound);
        }
    }
    None
}

/// Check a key against the limits.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StoreError::TooLarge(format!(
            "a key must be 1 to {MAX_KEY_BYTES} bytes (got {})",
            key.len()
        )));
    }
    Ok(())
}

/// Check a value against the limits.
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge(format!(
            "a value must be at most {MAX_VALUE_BYTES} bytes (got {})",
            value.len()
        )));
    }
    Ok(())
}

/// A guest's transaction: its reads (with the versions seen) and its buffered writes.
#[derive(Debug, Default)]
pub struct Transaction {
    commit: Commit,
    /// Bytes it holds: reads, listings, writes, events, handled ids.
    tracked_bytes: usize,
    closed: bool,
}

impl Transaction {
    /// The value under `key` as this transaction sees it.
    pub fn get(
        &mut self,
        store: &dyn ServiceStore,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.open()?;
        check_key(key)?;
        if let Some(write) = self.commit.writes.get(key) {
            return Ok(write.clone());
        }
        let found = store.get(key)?;
        // The first read of a key is what the commit checks.
        if !self.commit.reads.contains_key(key) {
            self.track(key.len() + ENTRY_OVERHEAD)?;
            self.commit
                .reads
                .insert(key.to_owned(), found.as_ref().map(|v| v.version));
        }
        Ok(found.map(|v| v.value))
    }

    /// Bytes this transaction holds in the host.
    pub fn tracked_bytes(&self) -> usize {
        self.tracked_bytes
    }

    /// Hold `added` more bytes, if the transaction's limit allows.
    fn track(&mut self, added: usize) -> Result<(), StoreError> {
        if self.tracked_bytes + added > MAX_TRANSACTION_BYTES {
            return Err(StoreError::TooLarge(format!(
                "a transaction may hold at most {MAX_TRANSACTION_BYTES} bytes of keys read \
                 and listed, writes and events: commit it and start another"
            )));
        }
        self.tracked_bytes += added;
        Ok(())
    }

    /// Give up everything it holds and close it (the host could not hold it).
    pub fn abandon(&mut self) {
        self.commit = Commit::default();
        self.tracked_bytes = 0;
        self.closed = true;
    }

    /// Buffer a write (`None`: delete).
    pub fn put(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.open()?;
        check_key(key)?;
        if let Some(value) = &value {
            check_value(value)?;
        }
        let added = key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
        if self.commit.writes.len() >= MAX_TRANSACTION_WRITES {
            return Err(StoreError::TooLarge(format!(
                "a transaction may write at most {MAX_TRANSACTION_WRITES} keys"
            )));
        }
        self.track(added)?;
        self.commit.writes.insert(key.to_owned(), value);
        Ok(())
    }

    /// Keys starting with `prefix` as this transaction sees them.
    pub fn list(
        &mut self,
        store: &dyn ServiceStore,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.open()?;
        let limit = limit.min(MAX_LIST);
        // Keys this transaction deleted are left out of its page: read as many more
        // from the store, so a page is short only at the end of the keys.
        let deleted = self
            .commit
            .writes
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, write)| write.is_none())
            .count() as u32;
        let fetch = limit.saturating_add(deleted);
        let seen = store.list(prefix, fetch)?;
        let held: usize = prefix.len()
            + seen
                .iter()
                .map(|(key, _)| key.len() + ENTRY_OVERHEAD)
                .sum::<usize>();
        self.track(held)?;
        let mut keys: std::collections::BTreeSet<String> =
            seen.iter().map(|(key, _)| key.clone()).collect();
        for (key, write) in self.commit.writes.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match write {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        self.commit.listed.push(Listed {
            prefix: prefix.to_owned(),
            limit: fetch,
            seen,
        });
        Ok(keys.into_iter().take(limit as usize).collect())
    }

    /// Publish `event` when this transaction commits.
    pub fn publish(&mut self, event: OutboxEvent) -> Result<(), StoreError> {
        self.open()?;
        let added = event.topic.len() + event.payload.len() + ENTRY_OVERHEAD;
        if self.commit.events.len() >= MAX_TRANSACTION_WRITES {
            return Err(StoreError::TooLarge(
                "a transaction may publish at most 10000 events".into(),
            ));
        }
        self.track(added)?;
        self.commit.events.push(event);
        Ok(())
    }

    /// Record that event `id` is handled when this transaction commits.
    pub fn mark_handled(&mut self, id: &str) -> Result<(), StoreError> {
        self.open()?;
        if id.is_empty() || id.len() > 128 {
            return Err(StoreError::TooLarge("an event id is 1 to 128 bytes".into()));
        }
        if self.commit.handled.len() >= MAX_TRANSACTION_WRITES {
            return Err(StoreError::TooLarge(
                "too many handled events in one transaction".into(),
            ));
        }
        self.track(id.len() + ENTRY_OVERHEAD)?;
        self.commit.handled.push(id.to_owned());
        Ok(())
    }

    /// Commit: check the reads and apply the writes, once. Closed afterwards.
    pub fn commit(&mut self, store: &dyn ServiceStore) -> Result<(), StoreError> {
        self.open()?;
        self.closed = true;
        if !self.commit.writes_anything()
            && self.commit.reads.is_empty()
            && self.commit.listed.is_empty()
        {
            return Ok(());
        }
        // Even a read-only transaction is checked: what it read must still hold, so
        // it saw one consistent state.
        store.commit(&self.commit)
    }

    fn open(&self) -> Result<(), StoreError> {
        if self.closed {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_bounded() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(check_key("orders/1").is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(check_value(b"").is_ok());
    }
}
