//! A store that refuses every call: a replay's. Every store call a replay makes is
//! answered from its recording before it gets here; one that is not (a
//! `wasi:keyvalue` compare-and-swap) is refused rather than reaching a real store.

use super::{Commit, OutboxEvent, ServiceStore, Snapshot, StoreError, Versioned};

/// The store of a replay.
#[derive(Debug, Default)]
pub struct Sealed;

fn sealed<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable(
        "a replay has no store: its store calls are answered from the recording".into(),
    ))
}

impl ServiceStore for Sealed {
    fn engine(&self) -> &'static str {
        "replay"
    }

    fn quota(&self) -> u64 {
        0
    }

    fn set_quota(&self, _bytes: u64) {}

    fn get(&self, _key: &str) -> Result<Option<Versioned>, StoreError> {
        sealed()
    }

    fn get_many(&self, _keys: &[String]) -> Result<Vec<Option<Versioned>>, StoreError> {
        sealed()
    }

    fn list(&self, _prefix: &str, _limit: u32) -> Result<Vec<(String, u64)>, StoreError> {
        sealed()
    }

    fn keys_after(&self, _after: Option<&str>, _limit: u32) -> Result<Vec<String>, StoreError> {
        sealed()
    }

    fn commit(&self, _commit: &Commit) -> Result<(), StoreError> {
        sealed()
    }

    fn size(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn outbox(&self, _limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        Ok(Vec::new())
    }

    fn outbox_may_hold_events(&self) -> bool {
        false
    }

    fn remove_from_outbox(&self, _ids: &[String]) -> Result<(), StoreError> {
        sealed()
    }

    fn export(&self) -> Result<Snapshot, StoreError> {
        sealed()
    }

    fn import(&self, _snapshot: &Snapshot) -> Result<(), StoreError> {
        sealed()
    }

    fn prune_inbox(&self, _handled_before_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn set_held_elsewhere(&self, _bytes: u64) {}

    fn is_handled(&self, _id: &str) -> Result<bool, StoreError> {
        sealed()
    }
}
