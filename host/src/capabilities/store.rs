//! `shoal:platform/store`: the service's own key-value store, with single-key calls
//! and optimistic transactions. Database work runs on the blocking pool, never on a
//! runtime worker. Every call is an OpenTelemetry client span under the guest's
//! current span when traces are exported.

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{HostFault, InstanceLimit, PlatformView, traced, traced_fallible};
use crate::bindings::store::{self, Host, HostTransaction, StoreError as WitError};
use crate::policy::budget::MemoryBudget;
use crate::recording::journal::{self, Journal};
use crate::store::{ServiceStore, StoreError, Transaction, check_key, check_value};
use crate::telemetry::{TraceScope, Tracing};

/// Transactions one request may hold open at once.
pub const MAX_OPEN_TRANSACTIONS: usize = 64;

/// The transactions of one request's instance: how many are open, and the host
/// memory budget the bytes they hold are taken from (with the guests' linear memory),
/// so a guest cannot grow the host through transactions it keeps open.
#[derive(Debug)]
pub struct TransactionAccount {
    open: AtomicUsize,
    budget: Arc<MemoryBudget>,
}

impl TransactionAccount {
    /// An account drawing on `budget`.
    pub fn new(budget: Arc<MemoryBudget>) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            budget,
        })
    }
}

/// A guest's open transaction, and the bytes of the budget it holds.
pub struct StoreTransaction {
    pub(super) tx: Transaction,
    held: usize,
    account: Arc<TransactionAccount>,
}

impl StoreTransaction {
    /// Take what `tx` holds now from the budget; when the budget has no room, the
    /// transaction gives up what it holds and fails.
    pub(super) fn hold(&mut self) -> Result<(), StoreError> {
        let now = self.tx.tracked_bytes();
        if now > self.held {
            if !self.account.budget.try_reserve(now - self.held) {
                self.tx.abandon();
                self.account.budget.release(self.held);
                self.held = 0;
                return Err(StoreError::TooLarge(format!(
                    "the host's memory budget of {} bytes cannot hold this transaction; it \
                     is closed",
                    self.account.budget.limit()
                )));
            }
        } else {
            self.account.budget.release(self.held - now);
        }
        self.held = now;
        Ok(())
    }
}

impl Drop for StoreTransaction {
    fn drop(&mut self) {
        self.account.budget.release(self.held);
        let _ = self
            .account
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
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
    /// Where store spans go.
    pub tracing: &'a Tracing,
    /// The request's spans: a store span is a child of the current one.
    pub trace: &'a TraceScope,
    /// The request's open transactions.
    pub transactions: &'a Arc<TransactionAccount>,
    /// When the request must be done: no store call waits past it.
    pub deadline: crate::deadline::Deadline,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

/// The view of one instance's store data (the linker's accessor).
pub(super) fn store_view<T: PlatformView>(state: &mut T) -> StoreView<'_> {
    let view = state.platform();
    StoreView {
        store: &view.ctx.service.store,
        table: view.table,
        service: &view.ctx.service.name,
        published: &view.ctx.platform.published,
        metrics: &view.ctx.platform.telemetry.metrics,
        tracing: &view.ctx.platform.telemetry.tracing,
        trace: &view.ctx.trace,
        transactions: &view.ctx.transactions,
        deadline: view.ctx.deadline,
        journal: view.ctx.journal.as_deref(),
    }
}

struct HasStore;

impl HasData for HasStore {
    type Data<'a> = StoreView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasStore>(linker, store_view)
}

/// The WIT form of a store error.
pub(super) fn store_error_to_wit(error: StoreError) -> WitError {
    match error {
        StoreError::Conflict => WitError::Conflict,
        StoreError::TooLarge(text) => WitError::TooLarge(text),
        StoreError::QuotaExceeded => WitError::QuotaExceeded,
        StoreError::Closed => WitError::Closed,
        StoreError::Backend(text) => WitError::Backend(text),
        StoreError::Unavailable(text) => WitError::Unavailable(text),
    }
}

/// Run `work` against `store` on the blocking pool (SQLite calls block, and commits
/// wait for the disk). A task that fails to run is the host's fault in `call`.
pub(super) async fn blocking_store<R: Send + 'static>(
    store: &Arc<dyn ServiceStore>,
    call: &'static str,
    work: impl FnOnce(&dyn ServiceStore) -> Result<R, StoreError> + Send + 'static,
) -> wasmtime::Result<Result<R, StoreError>> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(&*store))
        .await
        .map_err(|error| {
            wasmtime::Error::new(HostFault {
                call,
                reason: format!("the store task failed: {error}"),
            })
        })
}

/// [`blocking_store`] with the `shoal:platform` error type.
async fn blocking<R: Send + 'static>(
    store: &Arc<dyn ServiceStore>,
    call: &'static str,
    work: impl FnOnce(&dyn ServiceStore) -> Result<R, StoreError> + Send + 'static,
) -> wasmtime::Result<Result<R, WitError>> {
    Ok(to_wit(blocking_store(store, call, work).await?))
}

/// A store result with the WIT error.
fn to_wit<R>(result: Result<R, StoreError>) -> Result<R, WitError> {
    result.map_err(store_error_to_wit)
}

/// The metric label of a write's outcome.
pub(super) fn commit_label<T>(outcome: &wasmtime::Result<Result<T, StoreError>>) -> &'static str {
    match outcome {
        Ok(Ok(_)) => "ok",
        Ok(Err(StoreError::Conflict)) => "conflict",
        Ok(Err(StoreError::QuotaExceeded)) => "quota",
        Ok(Err(_)) | Err(_) => "error",
    }
}

/// [`commit_label`] of an outcome in its WIT form.
fn wit_commit_label<T>(outcome: &wasmtime::Result<Result<T, WitError>>) -> &'static str {
    match outcome {
        Ok(Ok(_)) => "ok",
        Ok(Err(WitError::Conflict)) => "conflict",
        Ok(Err(WitError::QuotaExceeded)) => "quota",
        Ok(Err(_)) | Err(_) => "error",
    }
}

/// Where a store call's spans go.
#[derive(Clone, Copy)]
struct Observed<'a> {
    tracing: &'a Tracing,
    trace: &'a TraceScope,
    service: &'a str,
    engine: &'static str,
}

impl Observed<'_> {
    /// Run `body` in a `host_call` span and, when traces are exported, in an
    /// OpenTelemetry client span named after `call`, whose status says whether the
    /// call failed.
    async fn run<T, E: std::fmt::Debug>(
        self,
        call: &'static str,
        body: impl Future<Output = wasmtime::Result<Result<T, E>>>,
    ) -> wasmtime::Result<Result<T, E>> {
        let span = self
            .tracing
            .start_with(SpanKind::Client, &self.trace.current(), || {
                (
                    call.to_owned(),
                    vec![
                        KeyValue::new("db.system.name", self.engine),
                        KeyValue::new("db.operation.name", call),
                        KeyValue::new("shoal.service", self.service.to_owned()),
                    ],
                )
            });
        let result = traced_fallible(call, self.service, body).await;
        let span = span.span();
        match &result {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                span.set_status(opentelemetry::trace::Status::error(format!("{error:?}")))
            }
            Err(_) => span.set_status(opentelemetry::trace::Status::error("host fault")),
        }
        span.end();
        result
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
        let about = journal::about(self.journal, || key.clone());
        self.run("store.get", about, |store, call| async move {
            blocking(&store, call, move |store| {
                check_key(&key)?;
                Ok(store.get(&key)?.map(|found| found.value))
            })
            .await
        })
        .await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        let about = journal::about(self.journal, || key.clone());
        self.write("store.set", about, move |store| {
            write_one(store, &key, Some(value))
        })
        .await
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), WitError>> {
        let about = journal::about(self.journal, || key.clone());
        self.write("store.delete", about, move |store| {
            write_one(store, &key, None)
        })
        .await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let about = journal::about(self.journal, || key.clone());
        self.write("store.compare-and-swap", about, move |store| {
            check_value(&value)?;
            let mut tx = Transaction::default();
            if tx.get(store, &key)? != expected {
                return Err(StoreError::Conflict);
            }
            tx.put(&key, Some(value))?;
            tx.commit(store)
        })
        .await
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, WitError>> {
        let about = journal::about(self.journal, || prefix.clone());
        self.run("store.list-keys", about, |store, call| async move {
            blocking(&store, call, move |store| {
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

impl<'a> StoreView<'a> {
    /// The service's store, its calls bounded by the request's deadline.
    fn bounded_store(&self) -> Arc<dyn ServiceStore> {
        crate::store::bounded::Bounded::wrap(self.store.clone(), self.deadline.instant())
    }

    fn observed(&self) -> Observed<'a> {
        Observed {
            tracing: self.tracing,
            trace: self.trace,
            service: self.service,
            engine: self.store.engine(),
        }
    }

    /// Run one call that needs only the store (not the resource table), observed.
    /// `about` says what the call is about, for the request's journal.
    pub(super) async fn run<T, E, F>(
        &mut self,
        call: &'static str,
        about: Option<String>,
        body: impl FnOnce(Arc<dyn ServiceStore>, &'static str) -> F,
    ) -> wasmtime::Result<Result<T, E>>
    where
        F: Future<Output = wasmtime::Result<Result<T, E>>>,
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let live = self.observed().run(call, body(self.bounded_store(), call));
        journal::call(self.journal, call, about, live).await
    }

    /// [`StoreView::run`] outside the journal, for calls whose results hold live
    /// handles (a replay's store refuses them).
    pub(super) async fn run_live<T, E: std::fmt::Debug, F>(
        &mut self,
        call: &'static str,
        body: impl FnOnce(Arc<dyn ServiceStore>, &'static str) -> F,
    ) -> wasmtime::Result<Result<T, E>>
    where
        F: Future<Output = wasmtime::Result<Result<T, E>>>,
    {
        self.observed()
            .run(call, body(self.bounded_store(), call))
            .await
    }

    /// Whether this request is a replay (nothing it does may leave it).
    pub(super) fn replaying(&self) -> bool {
        self.journal.is_some_and(Journal::is_replaying)
    }

    /// Count a write or commit under `label` (see [`commit_label`]).
    pub(super) fn count(&self, label: &'static str) {
        if self.metrics.enabled() && !self.replaying() {
            self.metrics
                .store_commits
                .with_label_values(&[self.service, label])
                .inc();
        }
    }

    /// Run one write on the blocking pool, observed and counted.
    async fn write(
        &mut self,
        call: &'static str,
        about: Option<String>,
        work: impl FnOnce(&dyn ServiceStore) -> Result<(), StoreError> + Send + 'static,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let outcome = self
            .run(call, about, |store, call| async move {
                Ok(to_wit(blocking_store(&store, call, work).await?))
            })
            .await;
        self.count(wit_commit_label(&outcome));
        outcome
    }

    /// Take the transaction out of the table, run `work` on it on the blocking pool,
    /// and put it back.
    async fn with_transaction<R>(
        &mut self,
        call: &'static str,
        about: Option<String>,
        handle: &Resource<StoreTransaction>,
        work: impl FnOnce(&mut Transaction, &dyn ServiceStore) -> Result<R, StoreError> + Send + 'static,
    ) -> wasmtime::Result<Result<R, WitError>>
    where
        R: Send + serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        let observed = self.observed();
        let store = self.bounded_store();
        let table = &mut *self.table;
        let live = observed.run(call, async move {
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
            let held = entry.hold();
            Ok(to_wit(held.and(result)))
        });
        journal::call(self.journal, call, about, live).await
    }
}

impl HostTransaction for StoreView<'_> {
    async fn new(&mut self) -> wasmtime::Result<Resource<StoreTransaction>> {
        let table = &mut *self.table;
        let account = self.transactions.clone();
        traced("store.transaction.new", self.service, async move {
            let open = account
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < MAX_OPEN_TRANSACTIONS).then_some(n + 1)
                });
            if open.is_err() {
                return Err(wasmtime::Error::new(InstanceLimit {
                    call: "store.transaction.new",
                    what: "open transactions",
                    limit: MAX_OPEN_TRANSACTIONS,
                }));
            }
            let transaction = StoreTransaction {
                tx: Transaction::default(),
                held: 0,
                account,
            };
            table
                .push(transaction)
                .map_err(|error| HostFault::table("store.transaction.new", error))
        })
        .await
    }

    async fn get(
        &mut self,
        handle: Resource<StoreTransaction>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, WitError>> {
        let about = journal::about(self.journal, || key.clone());
        self.with_transaction("store.transaction.get", about, &handle, move |tx, store| {
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
        let about = journal::about(self.journal, || key.clone());
        self.with_transaction("store.transaction.set", about, &handle, move |tx, _| {
            tx.put(&key, Some(value))
        })
        .await
    }

    async fn delete(
        &mut self,
        handle: Resource<StoreTransaction>,
        key: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let about = journal::about(self.journal, || key.clone());
        self.with_transaction("store.transaction.delete", about, &handle, move |tx, _| {
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
        let about = journal::about(self.journal, || prefix.clone());
        self.with_transaction(
            "store.transaction.list-keys",
            about,
            &handle,
            move |tx, store| tx.list(store, &prefix, limit),
        )
        .await
    }

    async fn commit(
        &mut self,
        handle: Resource<StoreTransaction>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let about = journal::about(self.journal, String::new);
        let committed = self
            .with_transaction("store.transaction.commit", about, &handle, |tx, store| {
                tx.commit(store)
            })
            .await;
        if matches!(committed, Ok(Ok(()))) && !self.replaying() {
            self.published.mark(self.service);
        }
        self.count(wit_commit_label(&committed));
        committed
    }

    async fn drop(&mut self, handle: Resource<StoreTransaction>) -> wasmtime::Result<()> {
        self.table
            .delete(handle)
            .map_err(|error| HostFault::table("store.transaction.drop", error))?;
        Ok(())
    }
}
