//! A store whose calls are bounded by a request's deadline.
//!
//! Store calls run on the blocking pool; the capability layer hands each request a
//! [`Bounded`] view of its service's store, which marks the thread running a call
//! with the request's deadline. A backend that waits on a database
//! ([`call_deadline`]) gives up then, whatever its own limits.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use super::{Commit, OutboxEvent, ServiceStore, Snapshot, StoreError, Versioned};

thread_local! {
    static CALL_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The deadline of the store call running on this thread, if it has one.
pub fn call_deadline() -> Option<Instant> {
    CALL_DEADLINE.with(Cell::get)
}

/// `inner`, each call bounded by `deadline`.
pub struct Bounded {
    inner: Arc<dyn ServiceStore>,
    deadline: Instant,
}

impl Bounded {
    /// `inner` with its calls bounded by `deadline`.
    pub fn wrap(inner: Arc<dyn ServiceStore>, deadline: Instant) -> Arc<dyn ServiceStore> {
        Arc::new(Self { inner, deadline })
    }

    fn scoped<R>(&self, call: impl FnOnce(&dyn ServiceStore) -> R) -> R {
        let outer = CALL_DEADLINE.with(|cell| cell.replace(Some(self.deadline)));
        let result = call(&*self.inner);
        CALL_DEADLINE.with(|cell| cell.set(outer));
        result
    }
}

impl ServiceStore for Bounded {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }

    fn quota(&self) -> u64 {
        self.inner.quota()
    }

    fn set_quota(&self, bytes: u64) {
        self.inner.set_quota(bytes);
    }

    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.scoped(|store| store.get(key))
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Versioned>>, StoreError> {
        self.scoped(|store| store.get_many(keys))
    }

    fn list(&self, prefix: &str, limit: u32) -> Result<Vec<(String, u64)>, StoreError> {
        self.scoped(|store| store.list(prefix, limit))
    }

    fn keys_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, StoreError> {
        self.scoped(|store| store.keys_after(after, limit))
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        self.scoped(|store| store.commit(commit))
    }

    fn size(&self) -> Result<u64, StoreError> {
        self.inner.size()
    }

    fn outbox(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        self.scoped(|store| store.outbox(limit))
    }

    fn outbox_may_hold_events(&self) -> bool {
        self.inner.outbox_may_hold_events()
    }

    fn remove_from_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        self.scoped(|store| store.remove_from_outbox(ids))
    }

    fn export(&self) -> Result<Snapshot, StoreError> {
        self.scoped(|store| store.export())
    }

    fn import(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.scoped(|store| store.import(snapshot))
    }

    fn prune_inbox(&self, handled_before_ms: u64) -> Result<u64, StoreError> {
        self.scoped(|store| store.prune_inbox(handled_before_ms))
    }

    fn set_held_elsewhere(&self, bytes: u64) {
        self.inner.set_held_elsewhere(bytes);
    }

    fn is_handled(&self, id: &str) -> Result<bool, StoreError> {
        self.scoped(|store| store.is_handled(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Bounded {
        fn scoped_for_test(&self, check: impl FnOnce()) {
            self.scoped(|_| check());
        }
    }

    #[test]
    fn a_call_sees_its_request_s_deadline_and_nothing_after_it() {
        let dir = tempfile::tempdir().expect("dir");
        let backend =
            crate::store::sqlite::SqliteBackend::new(dir.path().to_path_buf()).expect("backend");
        let store = crate::store::StoreBackend::open(&backend, "s", 1 << 20).expect("open");
        let deadline = Instant::now() + std::time::Duration::from_secs(3);
        let bounded = Bounded {
            inner: store,
            deadline,
        };
        assert_eq!(call_deadline(), None);
        bounded.scoped_for_test(|| assert_eq!(call_deadline(), Some(deadline)));
        assert_eq!(call_deadline(), None, "cleared after the call");
        assert!(bounded.get("k").expect("get").is_none());
    }
}
