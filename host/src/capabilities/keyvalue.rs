//! `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`, `batch`) over the service's own
//! store, so a portable component written against the standard interface runs on
//! Shoal unchanged and shares its data with `shoal:platform/store`.
//!
//! - A service has one bucket, its store: `open("default")` (or `open("")`) opens
//!   it; any other identifier is `no-such-store`.
//! - Every write is durable when the call returns, as in `shoal:platform/store`.
//! - `increment` keeps the counter as 8 little-endian bytes of a signed 64-bit
//!   integer; it retries on a concurrent write, so no increment is lost.
//! - `cas` reads the key with its version; `swap` writes only if no commit changed
//!   the key since, and otherwise answers `cas-failed` with a new `cas` that holds
//!   the newer value.
//! - `set-many` and `delete-many` are atomic: one transaction each.

use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource};

use super::store::{StoreView, blocking_store, commit_label, store_view};
use super::{HostFault, PlatformView, traced};
use crate::bindings::keyvalue::{atomics, batch, store};
use crate::store::{ServiceStore, StoreError, Transaction, check_key};

/// The identifiers that open the service's store.
const BUCKET_NAMES: [&str; 2] = ["default", ""];
/// Keys one `list-keys` page holds.
const PAGE_KEYS: u32 = 1000;
/// Attempts of an `increment` that keeps meeting concurrent writes.
const INCREMENT_ATTEMPTS: u32 = 64;

/// An open bucket: the service's store.
pub struct KvBucket;

/// A compare-and-swap in progress: the key and the version of it that was read.
pub struct KvCas {
    key: String,
    current: Option<Vec<u8>>,
    tx: Transaction,
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = StoreView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, store_view)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, store_view)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, store_view)?;
    Ok(())
}

/// The standard's error for a store failure: its text says what went wrong.
fn to_wit(error: StoreError) -> store::Error {
    store::Error::Other(error.to_string())
}

/// Run `work` on the blocking pool, with the standard's error type.
async fn blocking<R: Send + 'static>(
    store: &Arc<dyn ServiceStore>,
    call: &'static str,
    work: impl FnOnce(&dyn ServiceStore) -> Result<R, StoreError> + Send + 'static,
) -> wasmtime::Result<Result<R, store::Error>> {
    Ok(blocking_store(store, call, work).await?.map_err(to_wit))
}

/// Read `key` in a new transaction, for a compare-and-swap.
fn begin_cas(store: &dyn ServiceStore, key: String) -> Result<KvCas, StoreError> {
    let mut tx = Transaction::default();
    let current = tx.get(store, &key)?;
    Ok(KvCas { key, current, tx })
}

/// The counter under `key` plus `delta`, written in one transaction, retried while
/// other commits change the key.
fn increment(store: &dyn ServiceStore, key: &str, delta: i64) -> Result<i64, StoreError> {
    check_key(key)?;
    for _ in 0..INCREMENT_ATTEMPTS {
        let mut tx = Transaction::default();
        let current = match tx.get(store, key)? {
            None => 0,
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                    StoreError::Backend(format!(
                        "the value under `{key}` is not a counter (8 little-endian bytes of \
                         a signed 64-bit integer; it has {} bytes)",
                        bytes.len()
                    ))
                })?;
                i64::from_le_bytes(bytes)
            }
        };
        let Some(next) = current.checked_add(delta) else {
            return Err(StoreError::TooLarge(format!(
                "the counter under `{key}` would overflow ({current} + {delta})"
            )));
        };
        tx.put(key, Some(next.to_le_bytes().to_vec()))?;
        match tx.commit(store) {
            Err(StoreError::Conflict) => continue,
            Err(other) => return Err(other),
            Ok(()) => return Ok(next),
        }
    }
    Err(StoreError::Backend(format!(
        "the counter under `{key}` kept changing during {INCREMENT_ATTEMPTS} attempts"
    )))
}

impl store::Host for StoreView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<KvBucket>, store::Error>> {
        if !BUCKET_NAMES.contains(&identifier.as_str()) {
            return Ok(Err(store::Error::NoSuchStore));
        }
        let table = &mut *self.table;
        traced("keyvalue.open", self.service, async move {
            table
                .push(KvBucket)
                .map(Ok)
                .map_err(|error| HostFault::table("keyvalue.open", error))
        })
        .await
    }
}

impl store::HostBucket for StoreView<'_> {
    async fn get(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        self.run_live("keyvalue.get", |store, call| async move {
            blocking(&store, call, move |store| {
                check_key(&key)?;
                Ok(store.get(&key)?.map(|found| found.value))
            })
            .await
        })
        .await
    }

    async fn set(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        self.write_batch("keyvalue.set", vec![(key, Some(value))])
            .await
    }

    async fn delete(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        self.write_batch("keyvalue.delete", vec![(key, None)]).await
    }

    async fn exists(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        self.run_live("keyvalue.exists", |store, call| async move {
            blocking(&store, call, move |store| {
                check_key(&key)?;
                Ok(store.get(&key)?.is_some())
            })
            .await
        })
        .await
    }

    async fn list_keys(
        &mut self,
        _: Resource<KvBucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        self.run_live("keyvalue.list-keys", |store, call| async move {
            blocking(&store, call, move |store| {
                let keys = store.keys_after(cursor.as_deref(), PAGE_KEYS)?;
                // A full page may have more after it; the last key is where the next
                // page starts.
                let cursor = (keys.len() == PAGE_KEYS as usize)
                    .then(|| keys.last().cloned())
                    .flatten();
                Ok(store::KeyResponse { keys, cursor })
            })
            .await
        })
        .await
    }

    async fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table
            .delete(bucket)
            .map_err(|error| HostFault::table("keyvalue.bucket.drop", error))?;
        Ok(())
    }
}

impl atomics::Host for StoreView<'_> {
    async fn increment(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, store::Error>> {
        let outcome = self
            .run_live("keyvalue.increment", |store, call| async move {
                blocking_store(&store, call, move |store| increment(store, &key, delta)).await
            })
            .await;
        self.count(commit_label(&outcome));
        outcome.map(|result| result.map_err(to_wit))
    }

    async fn swap(
        &mut self,
        cas: Resource<KvCas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let call = "keyvalue.swap";
        let KvCas { key, mut tx, .. } = self
            .table
            .delete(cas)
            .map_err(|error| HostFault::table(call, error))?;
        let swapped = self
            .run_live(call, |store, call| async move {
                blocking_store(&store, call, move |store| {
                    tx.put(&key, Some(value))?;
                    match tx.commit(store) {
                        // Someone wrote the key since: hand back a fresh read of it.
                        Err(StoreError::Conflict) => Ok(Err(begin_cas(store, key)?)),
                        Err(other) => Err(other),
                        Ok(()) => Ok(Ok(())),
                    }
                })
                .await
            })
            .await?;
        self.count(match &swapped {
            Ok(Ok(())) => "ok",
            Ok(Err(_)) => "conflict",
            Err(StoreError::QuotaExceeded) => "quota",
            Err(_) => "error",
        });
        Ok(match swapped {
            Ok(Ok(())) => Ok(()),
            Ok(Err(fresh)) => {
                let handle = self
                    .table
                    .push(fresh)
                    .map_err(|error| HostFault::table(call, error))?;
                Err(atomics::CasError::CasFailed(handle))
            }
            Err(error) => Err(atomics::CasError::StoreError(to_wit(error))),
        })
    }
}

impl atomics::HostCas for StoreView<'_> {
    async fn new(
        &mut self,
        _: Resource<KvBucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<KvCas>, store::Error>> {
        let call = "keyvalue.cas.new";
        let read = self
            .run_live(call, |store, call| async move {
                blocking(&store, call, move |store| begin_cas(store, key)).await
            })
            .await?;
        Ok(match read {
            Ok(cas) => Ok(self
                .table
                .push(cas)
                .map_err(|error| HostFault::table(call, error))?),
            Err(error) => Err(error),
        })
    }

    async fn current(
        &mut self,
        cas: Resource<KvCas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let cas = self
            .table
            .get(&cas)
            .map_err(|error| HostFault::table("keyvalue.cas.current", error))?;
        Ok(Ok(cas.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<KvCas>) -> wasmtime::Result<()> {
        self.table
            .delete(cas)
            .map_err(|error| HostFault::table("keyvalue.cas.drop", error))?;
        Ok(())
    }
}

impl batch::Host for StoreView<'_> {
    async fn get_many(
        &mut self,
        _: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        self.run_live("keyvalue.get-many", |store, call| async move {
            blocking(&store, call, move |store| {
                check_batch(keys.len())?;
                for key in &keys {
                    check_key(key)?;
                }
                // One consistent snapshot, whatever commits meanwhile.
                let values = store.get_many(&keys)?;
                Ok(keys
                    .into_iter()
                    .zip(values)
                    .map(|(key, value)| value.map(|value| (key, value.value)))
                    .collect())
            })
            .await
        })
        .await
    }

    async fn set_many(
        &mut self,
        _: Resource<KvBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let writes = key_values
            .into_iter()
            .map(|(key, value)| (key, Some(value)))
            .collect();
        self.write_batch("keyvalue.set-many", writes).await
    }

    async fn delete_many(
        &mut self,
        _: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let writes = keys.into_iter().map(|key| (key, None)).collect();
        self.write_batch("keyvalue.delete-many", writes).await
    }
}

/// Refuse a batch larger than one transaction may be.
fn check_batch(len: usize) -> Result<(), StoreError> {
    if len > crate::store::MAX_TRANSACTION_WRITES {
        return Err(StoreError::TooLarge(format!(
            "a batch holds at most {} keys (got {len})",
            crate::store::MAX_TRANSACTION_WRITES
        )));
    }
    Ok(())
}

impl StoreView<'_> {
    /// Apply `writes` (`None`: delete) in one transaction, and count the commit.
    async fn write_batch(
        &mut self,
        call: &'static str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let outcome = self
            .run_live(call, |store, call| async move {
                blocking_store(&store, call, move |store| {
                    check_batch(writes.len())?;
                    let mut tx = Transaction::default();
                    for (key, value) in writes {
                        tx.put(&key, value)?;
                    }
                    tx.commit(store)
                })
                .await
            })
            .await;
        self.count(commit_label(&outcome));
        outcome.map(|result| result.map_err(to_wit))
    }
}
