//! `shoal:platform/store`: the service's own key-value store, with single-key calls
//! and optimistic transactions. Database work runs on the blocking pool, never on a
//! runtime worker.

use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{HostFault, PlatformView, traced, traced_fallible};
use crate::bindings::store::{self, Host, HostTransaction, StoreError as WitError};
use crate::store::{ServiceStore, StoreError, Transaction, check_key, check_value};

/// A guest's open transaction.
#[derive(Default)]
pub struct StoreTransaction {
    pub(super) tx: Transaction,
}

/// What a store call sees: the service's store and the instance's resource table.
pub struct StoreView<'a> {
    /// The service's store.
    pub store: &'a Arc<dyn ServiceStore>,
    /// Holds the guest's transactions.
    pub table: &'a mut ResourceTable,
    /// The service, for the call's span.
    pub service: &'a str,
    /// Told after a commit, which may have published events.
    pub published: &'a crate::platform::Published,
    /// Where commits are counted.
    pub metrics: &'a crate::telemetry::Metrics,
}

struct HasStore;

impl HasData for HasStore {
    type Data<'a> = StoreView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasStore>(linker, |state| {
        let view = state.platform();
        StoreView {
            store: &view.ctx.service.store,
            table: view.table,
            service: &view.ctx.service.name,
            published: &view.ctx.platform.published,
            metrics: &view.ctx.platform.telemetry.metrics,
        }
    })
}

/// The WIT form of a store error.
pub(super) fn store_error_to_wit(error: StoreError) -> WitError {
    match error {
        StoreError::Conflict => WitError::Conflict,
        StoreError::TooLarge(text) => WitError::TooLarge(text),
        StoreError::QuotaExceeded => WitError::QuotaExceeded,
        StoreError::Closed => WitError::Closed,
        StoreError::Backend(text) => WitError::Backend(text),
    }
}

/// Run `work` against `store` on the blocking pool (SQLite calls block, and commits
/// wait for the disk).
async fn blocking<R: Send + 'static>(
    store: &Arc<dyn ServiceStore>,
    work: impl FnOnce(&dyn ServiceStore) -> Result<R, StoreError> + Send + 'static,
) -> wasmtime::Result<Result<R, WitError>> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || work(&*store)).await {
        Ok(result) => Ok(result.map_err(store_error_to_wit)),
        Err(error) => Err(wasmtime::Error::new(HostFault {
            call: "store",
            reason: format!("the store task failed: {error}"),
        })),
    }
}

/// One write applied at once, as its own transaction.
fn write_one(
    store: &dyn ServiceStore,
    key: &str,
    value: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    let mut tx = Transaction::default();
    tx.put(key, value)?;
    tx.commit(store)
}

impl Host for StoreView<'_> {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, WitError>> {
        traced_fallible("store.get", self.service, async {
            if let Err(error) = check_key(&key) {
                return Ok(Err(store_error_to_wit(error)));
            }
            blocking(self.store, move |store| {
                Ok(store.get(&key)?.map(|found| found.value))
            })
            .await
        })
        .await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        let outcome = traced_fallible("store.set", self.service, async {
            blocking(self.store, move |store| write_one(store, &key, Some(value))).await
        })
        .await;
        self.count(&outcome);
        outcome
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), WitError>> {
        let outcome = traced_fallible("store.delete", self.service, async {
            blocking(self.store, move |store| write_one(store, &key, None)).await
        })
        .await;
        self.count(&outcome);
        outcome
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let outcome = traced_fallible("store.compare-and-swap", self.service, async {
            blocking(self.store, move |store| {
                check_value(&value)?;
                let mut tx = Transaction::default();
                if tx.get(store, &key)? != expected {
                    return Err(StoreError::Conflict);
                }
                tx.put(&key, Some(value))?;
                tx.commit(store)
            })
            .await
        })
        .await;
        self.count(&outcome);
        outcome
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        traced_fallible("store.list-keys", self.service, async {
            blocking(self.store, move |store| {
                let limit = limit.min(crate::store::MAX_LIST);
                Ok(store
                    .list(&prefix, limit)?
                    .into_iter()
                    .map(|(key, _)| key)
                    .collect())
            })
            .await
        })
        .await
    }
}

impl StoreView<'_> {
    /// Count a write or commit by its outcome.
    fn count<T>(&self, outcome: &wasmtime::Result<Result<T, WitError>>) {
        if !self.metrics.enabled() {
            return;
        }
        let label = match outcome {
            Ok(Ok(_)) => "ok",
            Ok(Err(WitError::Conflict)) => "conflict",
            Ok(Err(WitError::QuotaExceeded)) => "quota",
            Ok(Err(_)) | Err(_) => "error",
        };
        self.metrics
            .store_commits
            .with_label_values(&[self.service, label])
            .inc();
    }

    /// Take the transaction out of the table, run `work` on it on the blocking pool,
    /// and put it back.
    async fn with_transaction<R: Send + 'static>(
        &mut self,
        call: &'static str,
        handle: &Resource<StoreTransaction>,
        work: impl FnOnce(&mut Transaction, &dyn ServiceStore) -> Result<R, StoreError> + Send + 'static,
    ) -> wasmtime::Result<Result<R, WitError>> {
        let service = self.service;
        let store = self.store.clone();
        let table = &mut *self.table;
        traced_fallible(call, service, async move {
            let entry = table
                .get_mut(handle)
                .map_err(|error| HostFault::table(call, error))?;
            let mut tx = std::mem::take(&mut entry.tx);
            let outcome = tokio::task::spawn_blocking(move || {
                let result = work(&mut tx, &*store);
                (tx, result)
            })
            .await;
            let (tx, result) = outcome.map_err(|error| {
                wasmtime::Error::new(HostFault {
                    call,
                    reason: format!("the store task failed: {error}"),
                })
            })?;
            let entry = table
                .get_mut(handle)
                .map_err(|error| HostFault::table(call, error))?;
            entry.tx = tx;
            Ok(result.map_err(store_error_to_wit))
        })
        .await
    }
}

impl HostTransaction for StoreView<'_> {
    async fn new(&mut self) -> wasmtime::Result<Resource<StoreTransaction>> {
        let table = &mut *self.table;
        traced("store.transaction.new", self.service, async move {
            table
                .push(StoreTransaction::default())
                .map_err(|error| HostFault::table("store.transaction.new", error))
        })
        .await
    }

    async fn get(
        &mut self,
        handle: Resource<StoreTransaction>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, WitError>> {
        self.with_transaction("store.transaction.get", &handle, move |tx, store| {
            tx.get(store, &key)
        })
        .await
    }

    async fn set(
        &mut self,
        handle: Resource<StoreTransaction>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.with_transaction("store.transaction.set", &handle, move |tx, _| {
            tx.put(&key, Some(value))
        })
        .await
    }

    async fn delete(
        &mut self,
        handle: Resource<StoreTransaction>,
        key: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.with_transaction("store.transaction.delete", &handle, move |tx, _| {
            tx.put(&key, None)
        })
        .await
    }

    async fn list_keys(
        &mut self,
        handle: Resource<StoreTransaction>,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        self.with_transaction("store.transaction.list-keys", &handle, move |tx, store| {
            tx.list(store, &prefix, limit)
        })
        .await
    }

    async fn commit(
        &mut self,
        handle: Resource<StoreTransaction>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let committed = self
            .with_transaction("store.transaction.commit", &handle, |tx, store| {
                tx.commit(store)
            })
            .await;
        if matches!(committed, Ok(Ok(()))) {
            self.published.mark(self.service);
        }
        self.count(&committed);
        committed
    }

    async fn drop(&mut self, handle: Resource<StoreTransaction>) -> wasmtime::Result<()> {
        self.table
            .delete(handle)
            .map_err(|error| HostFault::table("store.transaction.drop", error))?;
        Ok(())
    }
}
