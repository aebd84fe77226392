//! `shoal:platform/events`: publish now or with a transaction (the outbox), and mark
//! an event handled in a transaction (the inbox).

use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::store::{StoreTransaction, blocking_store, store_error_to_wit};
use super::{HostFault, PlatformView, traced_fallible};
use crate::bindings::events::{self, Host, PublishError};
use crate::bindings::store::StoreError as WitStoreError;
use crate::events::{MAX_PAYLOAD_BYTES, validate_topic};
use crate::platform::Platform;
use crate::recording::journal::{self, Journal};
use crate::store::{OutboxEvent, ServiceStore, StoreError, Transaction};
use crate::telemetry::TraceScope;

/// What an events call sees: the service's store (its outbox), the instance's
/// transactions, the request's spans and the host's bus.
pub struct EventsView<'a> {
    /// The service's store.
    pub store: &'a Arc<dyn ServiceStore>,
    /// Holds the guest's transactions.
    pub table: &'a mut ResourceTable,
    /// The publisher's spans: a delivery continues the current one.
    pub trace: &'a TraceScope,
    /// The bus to wake after a publish.
    pub platform: &'a Platform,
    /// The service, for the call's span.
    pub service: &'a str,
    /// The topics it may publish.
    pub topics: &'a crate::events::topics::TopicRules,
    /// When the request must be done: no store call waits past it.
    pub deadline: crate::deadline::Deadline,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasEvents;

impl HasData for HasEvents {
    type Data<'a> = EventsView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    events::add_to_linker::<T, HasEvents>(linker, |state| {
        let view = state.platform();
        EventsView {
            store: &view.ctx.service.store,
            table: view.table,
            trace: &view.ctx.trace,
            platform: &view.ctx.platform,
            service: &view.ctx.service.name,
            topics: &view.ctx.service.topics,
            deadline: view.ctx.deadline,
            journal: view.ctx.journal.as_deref(),
        }
    })
}

/// A refusal when the host's event bus holds its limit: the state of the host, so
/// checked where a recording keeps it (and a replay answers it).
fn bus_full(platform: &Platform) -> Option<PublishError> {
    let bound = &platform.bus_bound;
    bound.is_full().then(|| {
        PublishError::BusFull(format!(
            "the host's event bus holds its limit of {} MiB of events",
            bound.limit() / (1024 * 1024)
        ))
    })
}

impl EventsView<'_> {
    /// A new event of `topic`, checked, carrying the current trace context.
    fn event(
        &self,
        topic: String,
        payload: Vec<u8>,
        delay_ms: u64,
    ) -> Result<OutboxEvent, PublishError> {
        validate_topic(&topic).map_err(|error| PublishError::InvalidTopic(error.to_string()))?;
        if !self.topics.may_publish(&topic) {
            return Err(PublishError::NotDeclared(format!(
                "`{}` does not declare topic `{topic}` under `[events] publishes` in its manifest",
                self.service
            )));
        }
        if delay_ms > MAX_DELAY_MS {
            return Err(PublishError::TooLarge(format!(
                "an event's delay is at most {MAX_DELAY_MS} ms, 30 days (got {delay_ms})"
            )));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(PublishError::TooLarge(format!(
                "an event's payload is at most {MAX_PAYLOAD_BYTES} bytes (got {})",
                payload.len()
            )));
        }
        let mut headers = http::HeaderMap::new();
        self.platform
            .telemetry
            .tracing
            .inject(&self.trace.current(), &mut headers);
        let traceparent = headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let published_ms = crate::events::now_ms();
        Ok(OutboxEvent {
            id: format!("{:032x}", rand::random::<u128>()),
            topic,
            payload,
            traceparent,
            published_ms,
            deliver_at_ms: if delay_ms == 0 {
                0
            } else {
                published_ms.saturating_add(delay_ms)
            },
        })
    }

    /// Store a new event in a transaction of its own: `publish` and `schedule`.
    async fn publish_now(
        &mut self,
        call: &'static str,
        topic: String,
        payload: Vec<u8>,
        delay_ms: u64,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        let event = match self.event(topic, payload, delay_ms) {
            Ok(event) => event,
            Err(error) => return Ok(Err(error)),
        };
        let store =
            crate::store::bounded::Bounded::wrap(self.store.clone(), self.deadline.instant());
        let platform = self.platform;
        let service = self.service;
        let about = journal::about(self.journal, || event.topic.clone());
        let live = async move {
            if let Some(full) = bus_full(platform) {
                return Ok(Err(full));
            }
            let id = event.id.clone();
            let stored = blocking_store(&store, call, move |store| {
                let mut tx = Transaction::default();
                tx.publish(event)?;
                tx.commit(store)
            })
            .await?;
            if stored.is_ok() {
                platform.published.mark(service);
            }
            Ok(stored.map(|()| id).map_err(publish_error))
        };
        traced_fallible(
            call,
            service,
            journal::call(self.journal, call, about, live),
        )
        .await
    }

    /// Add a new event to a guest's transaction: `publish-in` and `schedule-in`.
    async fn publish_with(
        &mut self,
        call: &'static str,
        tx: Resource<StoreTransaction>,
        topic: String,
        payload: Vec<u8>,
        delay_ms: u64,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        let event = match self.event(topic, payload, delay_ms) {
            Ok(event) => event,
            Err(error) => return Ok(Err(error)),
        };
        let table = &mut *self.table;
        let about = journal::about(self.journal, || event.topic.clone());
        let platform = self.platform;
        let live = async move {
            if let Some(full) = bus_full(platform) {
                return Ok(Err(full));
            }
            let entry = table
                .get_mut(&tx)
                .map_err(|error| HostFault::table(call, error))?;
            let id = event.id.clone();
            // Delivered once the transaction commits: the commit wakes the bus.
            let published = entry.tx.publish(event).and_then(|()| entry.hold());
            Ok(published.map(|()| id).map_err(publish_error))
        };
        traced_fallible(
            call,
            self.service,
            journal::call(self.journal, call, about, live),
        )
        .await
    }
}

/// Longest delay of a scheduled event: 30 days.
const MAX_DELAY_MS: u64 = 30 * 24 * 60 * 60 * 1000;

fn publish_error(error: StoreError) -> PublishError {
    match error {
        StoreError::Backend(text) | StoreError::Unavailable(text) => {
            PublishError::Unavailable(text)
        }
        other => PublishError::Store(store_error_to_wit(other)),
    }
}

impl Host for EventsView<'_> {
    async fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        self.publish_now("events.publish", topic, payload, 0).await
    }

    async fn schedule(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        delay_ms: u64,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        self.publish_now("events.schedule", topic, payload, delay_ms)
            .await
    }

    async fn publish_in(
        &mut self,
        tx: Resource<StoreTransaction>,
        topic: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        self.publish_with("events.publish-in", tx, topic, payload, 0)
            .await
    }

    async fn schedule_in(
        &mut self,
        tx: Resource<StoreTransaction>,
        topic: String,
        payload: Vec<u8>,
        delay_ms: u64,
    ) -> wasmtime::Result<Result<String, PublishError>> {
        self.publish_with("events.schedule-in", tx, topic, payload, delay_ms)
            .await
    }

    async fn mark_handled(
        &mut self,
        tx: Resource<StoreTransaction>,
        id: String,
    ) -> wasmtime::Result<Result<(), WitStoreError>> {
        let table = &mut *self.table;
        let about = journal::about(self.journal, || id.clone());
        let live = async move {
            let entry = table
                .get_mut(&tx)
                .map_err(|error| HostFault::table("events.mark-handled", error))?;
            let marked = entry.tx.mark_handled(&id).and_then(|()| entry.hold());
            Ok(marked.map_err(store_error_to_wit))
        };
        traced_fallible(
            "events.mark-handled",
            self.service,
            journal::call(self.journal, "events.mark-handled", about, live),
        )
        .await
    }
}
