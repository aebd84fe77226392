//! Event delivery: committed events move from each publisher's outbox onto the bus,
//! one delivery per subscribed service, and due deliveries are sent to their
//! subscriber's route in process. At least once: an event leaves an outbox only after
//! the bus has it, and a delivery leaves the bus only after a 2xx (or when the
//! subscriber already marked the event handled).

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt as _, Full};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Services;
use crate::deadline::Deadline;
use crate::events::{Delivery, NewDelivery, Settlement, backoff, now_ms};
use crate::manifest::Subscription;
use crate::protocol::{self, RequestId};
use crate::store::OutboxEvent;

/// Events taken from one outbox at a time.
const OUTBOX_BATCH: u32 = 256;
/// Deliveries in flight at once, across every subscriber.
const IN_FLIGHT: usize = 64;
/// Deliveries in flight at once to one subscriber: a slow one takes no more than this
/// of the host's delivery capacity, and never holds up another's events.
const IN_FLIGHT_PER_SUBSCRIBER: usize = 8;
/// Outcomes recorded in one durable write at most.
const SETTLE_BATCH: usize = 256;
/// How long a claimed delivery is kept from other attempts (a delivery in flight when
/// the host dies is retried after this).
const CLAIM_MS: u64 = 60_000;
/// How often delivery looks for due work when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How long an event waits for its subscriber to be there (deployed, and running a
/// version that subscribes to its topic) from when it was due, before it becomes a
/// dead letter: long enough to remove and redeploy a service, or roll it back and
/// forth.
const WAIT_FOR_SUBSCRIBER_MS: u64 = 60 * 60 * 1000;
/// How often an event waiting for its subscriber looks again, at most.
const WAITING_RECHECK_MS: u64 = 30_000;

/// How often every outbox is read, whatever was marked (a safety net).
const FULL_SWEEP: Duration = Duration::from_secs(5);
/// How often what the bus holds is measured, in all and per publisher.
const MEASURE_BUS: Duration = Duration::from_secs(1);
/// How often subscribers' inboxes are pruned at most (a quarter of the retention
/// when that is shorter).
const PRUNE_INBOXES: Duration = Duration::from_secs(600);

/// Move events onto the bus and deliver them until the services are gone: two loops,
/// so a slow round of deliveries never holds committed events in their outboxes.
pub async fn run(services: Weak<Services>) {
    let routed = Arc::new(tokio::sync::Notify::new());
    let router = tokio::spawn(route_loop(services.clone(), routed.clone()));
    deliver_loop(services, routed).await;
    router.abort();
}

/// Route committed events from marked outboxes onto the bus, as soon as they commit.
async fn route_loop(services: Weak<Services>, routed: Arc<tokio::sync::Notify>) {
    let mut last_sweep = std::time::Instant::now();
    let mut last_measure: Option<std::time::Instant> = None;
    let mut last_prune = std::time::Instant::now();
    loop {
        let Some(services) = services.upgrade() else {
            return;
        };
        if last_sweep.elapsed() >= FULL_SWEEP {
            services.platform.published.mark_all();
            last_sweep = std::time::Instant::now();
        }
        if last_measure.is_none_or(|at| at.elapsed() >= MEASURE_BUS) {
            services.measure_bus().await;
            last_measure = Some(std::time::Instant::now());
        }
        let retention = services.platform.inbox_retention;
        if last_prune.elapsed() >= (retention / 4).min(PRUNE_INBOXES) {
            services.prune_inboxes(retention).await;
            last_prune = std::time::Instant::now();
        }
        let moved = services.route_outboxes().await;
        if moved > 0 {
            routed.notify_one();
        }
        let platform = services.platform.clone();
        drop(services);
        if moved == 0 {
            let _ = tokio::time::timeout(IDLE_POLL, platform.published.notify.notified()).await;
        }
    }
}

/// Deliver what is due, each delivery independently of the others: at most
/// [`IN_FLIGHT`] at once, at most [`IN_FLIGHT_PER_SUBSCRIBER`] per subscriber, so a
/// slow subscriber's attempts (which may take minutes) never hold up another's events.
/// Outcomes are recorded as they come, several in one durable write.
async fn deliver_loop(services: Weak<Services>, routed: Arc<tokio::sync::Notify>) {
    let capacity = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let busy: Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let finished = Arc::new(tokio::sync::Notify::new());
    let (outcomes, settled) = tokio::sync::mpsc::unbounded_channel();
    let settler = tokio::spawn(settle_loop(services.clone(), settled));
    loop {
        let Some(services) = services.upgrade() else {
            break;
        };
        if services.directory.get().is_some() {
            // In a cluster, this host delivers to the services it runs; the others'
            // deliveries are claimed by the hosts that run them.
            let local = services
                .table
                .services()
                .iter()
                .map(|service| service.name().to_owned())
                .collect();
            services.platform.bus.deliver_only(Some(local));
        }
        let room = capacity.available_permits();
        let claimed = if room == 0 {
            Vec::new()
        } else {
            let in_flight: Vec<(String, u32)> = busy
                .lock()
                .iter()
                .map(|(subscriber, count)| (subscriber.clone(), *count as u32))
                .collect();
            services.claim_due(room as u32, in_flight).await
        };
        let count = claimed.len();
        for delivery in claimed {
            let Ok(permit) = capacity.clone().try_acquire_owned() else {
                break;
            };
            let subscriber = delivery.event.subscriber.clone();
            *busy.lock().entry(subscriber.clone()).or_default() += 1;
            let (services, busy, finished, outcomes) = (
                services.clone(),
                busy.clone(),
                finished.clone(),
                outcomes.clone(),
            );
            tokio::spawn(async move {
                let outcome = services.deliver(delivery).await;
                let _ = outcomes.send(outcome);
                {
                    let mut busy = busy.lock();
                    if let Some(in_flight) = busy.get_mut(&subscriber) {
                        *in_flight -= 1;
                        if *in_flight == 0 {
                            busy.remove(&subscriber);
                        }
                    }
                }
                drop(permit);
                finished.notify_one();
            });
        }
        drop(services);
        if count == 0 {
            // Idle until events arrive, a delivery finishes (room again), or a retry
            // may be due.
            tokio::select! {
                _ = routed.notified() => {}
                _ = finished.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }
    settler.abort();
}

/// Record delivery outcomes as they come: what is waiting is written at once, in one
/// durable write. A failed write leaves the claims to run out and the deliveries to be
/// attempted again: at least once.
async fn settle_loop(
    services: Weak<Services>,
    mut settled: tokio::sync::mpsc::UnboundedReceiver<(String, String, Settlement)>,
) {
    while let Some(first) = settled.recv().await {
        let mut batch = vec![first];
        while batch.len() < SETTLE_BATCH {
            match settled.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        let Some(services) = services.upgrade() else {
            return;
        };
        let bus = services.platform.bus.clone();
        drop(services);
        let recorded = tokio::task::spawn_blocking(move || bus.settle(&batch)).await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!("cannot record the outcomes of deliveries");
        }
    }
}

impl Services {
    /// Every subscription of every running service: (subscriber, subscription).
    /// A service that failed to restore keeps its subscriptions: its events wait (and
    /// become dead letters an operator can replay) instead of being skipped.
    pub fn subscriptions(&self) -> Vec<(String, Subscription)> {
        if let Some(directory) = self.directory.get() {
            // In a cluster, every host's subscribers receive the events published here.
            return directory.subscriptions();
        }
        let running = self.table.services().into_iter().map(|service| {
            let manifest = service.versions().stable.record.manifest.clone();
            (service.name().to_owned(), manifest)
        });
        let failed = self
            .failed()
            .into_iter()
            .map(|(name, failed)| (name, failed.state.current.manifest));
        running
            .chain(failed)
            .flat_map(|(service, manifest)| {
                manifest
                    .subscriptions
                    .into_iter()
                    .map(move |subscription| (service.clone(), subscription))
            })
            .collect()
    }

    /// Measure what the bus holds: the host-wide bound sees the total, and each
    /// publisher's store counts its own events on the bus against its quota.
    async fn measure_bus(&self) {
        let bus = self.platform.bus.clone();
        let held = match tokio::task::spawn_blocking(move || bus.held_bytes()).await {
            Ok(Ok(held)) => held,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot measure the event bus");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "measuring the event bus failed");
                return;
            }
        };
        self.platform.bus_bound.set_held(held.total);
        let by_publisher: std::collections::HashMap<&str, u64> = held
            .by_publisher
            .iter()
            .map(|(publisher, bytes)| (publisher.as_str(), *bytes))
            .collect();
        for service in self.table.services() {
            let bytes = by_publisher.get(service.name()).copied().unwrap_or(0);
            // The versions of a service share its store.
            service
                .versions()
                .stable
                .context
                .store
                .set_held_elsewhere(bytes);
        }
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            metrics.bus_bytes.set(held.total as i64);
        }
    }

    /// Forget the events each service handled longer ago than `retention`.
    async fn prune_inboxes(&self, retention: Duration) {
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        for service in self.table.services() {
            let store = service.versions().stable.context.store.clone();
            let pruned = tokio::task::spawn_blocking(move || store.prune_inbox(cutoff)).await;
            match pruned {
                Ok(Ok(0)) => {}
                Ok(Ok(count)) => {
                    tracing::debug!(service = service.name(), count, "handled events forgotten")
                }
                Ok(Err(error)) => {
                    tracing::warn!(service = service.name(), %error, "cannot prune the inbox")
                }
                Err(error) => tracing::error!(%error, "pruning an inbox failed"),
            }
        }
    }

    /// Move committed events from the outboxes onto the bus. Returns how many.
    async fn route_outboxes(&self) -> usize {
        let services = match self.platform.published.take() {
            None => self.table.services(),
            Some(marked) if marked.is_empty() => return 0,
            Some(marked) => marked
                .iter()
                .filter_map(|name| self.table.get(name))
                .collect(),
        };
        let subscriptions = self.subscriptions();
        let mut moved = 0;
        for service in services {
            let store = service.versions().stable.context.store.clone();
            if !store.outbox_may_hold_events() {
                continue;
            }
            // Only the subscribers the publisher shares its events with receive them.
            let subscriptions: Vec<(String, Subscription)> = subscriptions
                .iter()
                .filter(|(subscriber, _)| self.shares_events(service.name(), subscriber))
                .cloned()
                .collect();
            let bus = self.platform.bus.clone();
            let publisher = service.name().to_owned();
            let publisher_label = publisher.clone();
            let platform = self.platform.clone();
            let outcome = tokio::task::spawn_blocking(move || -> Result<usize, String> {
                let events = store.outbox(OUTBOX_BATCH).map_err(|e| e.to_string())?;
                if events.is_empty() {
                    return Ok(0);
                }
                let metrics = &platform.telemetry.metrics;
                if metrics.enabled() {
                    let now = now_ms();
                    for event in &events {
                        let lag = now.saturating_sub(event.published_ms) as f64 / 1000.0;
                        metrics.outbox_lag.observe(lag);
                    }
                }
                let deliveries: Vec<NewDelivery> = events
                    .iter()
                    .flat_map(|event| fan_out(&publisher_label, event, &subscriptions))
                    .collect();
                let bytes: u64 = deliveries.iter().map(NewDelivery::bytes).sum();
                if !platform.bus_bound.try_add(bytes) {
                    // They wait in the outbox, counted against the publisher's quota.
                    return Err(format!(
                        "the event bus is full ({} of {} bytes)",
                        platform.bus_bound.held(),
                        platform.bus_bound.limit()
                    ));
                }
                // The bus has them before they leave the outbox: a crash in between
                // enqueues them again, which the bus ignores.
                if let Err(error) = bus.enqueue(&deliveries) {
                    // They stay in the outbox; the room is taken again when they move.
                    platform.bus_bound.give_back(bytes);
                    return Err(error.to_string());
                }
                let ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
                store.remove_from_outbox(&ids).map_err(|e| e.to_string())?;
                if metrics.enabled() {
                    metrics
                        .events_published
                        .with_label_values(&[&publisher_label])
                        .inc_by(events.len() as u64);
                }
                Ok(events.len())
            })
            .await;
            match outcome {
                Ok(Ok(count)) => {
                    moved += count;
                    if count == OUTBOX_BATCH as usize {
                        // More may wait: read this outbox again next round.
                        self.platform.published.mark(service.name());
                    }
                }
                Ok(Err(error)) => {
                    // The periodic sweep reads this outbox again.
                    tracing::warn!(service = %publisher, %error, "cannot move events to the bus")
                }
                Err(error) => {
                    tracing::error!(service = %publisher, %error, "event routing task failed")
                }
            }
        }
        moved
    }

    /// Claim at most `limit` due deliveries, and for each subscriber no more than
    /// its share less what it has `in_flight`.
    async fn claim_due(&self, limit: u32, in_flight: Vec<(String, u32)>) -> Vec<Delivery> {
        let bus = self.platform.bus.clone();
        let share = IN_FLIGHT_PER_SUBSCRIBER as u32;
        match tokio::task::spawn_blocking(move || {
            bus.claim_due(now_ms(), CLAIM_MS, limit, share, &in_flight)
        })
        .await
        {
            Ok(Ok(due)) => due,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read due deliveries");
                Vec::new()
            }
            Err(error) => {
                tracing::error!(%error, "delivery task failed");
                Vec::new()
            }
        }
    }

    /// Attempt one delivery; answer its outcome for the bus.
    async fn deliver(&self, delivery: Delivery) -> (String, String, Settlement) {
        let event = &delivery.event;
        let attempts = delivery.attempts;
        let outcome = self.attempt(&delivery).await;
        let metrics = &self.platform.telemetry.metrics;
        if metrics.enabled() {
            let label = match &outcome {
                Attempt::Done { deduplicated: true } => "deduplicated",
                Attempt::Done { .. } => "delivered",
                Attempt::Waiting { .. } => "waiting",
                Attempt::Failed { max_attempts, .. } if attempts + 1 >= *max_attempts => {
                    "dead-lettered"
                }
                Attempt::Failed { .. } => "failed",
            };
            metrics
                .event_deliveries
                .with_label_values(&[&event.subscriber, label])
                .inc();
            if let Attempt::Done {
                deduplicated: false,
            } = outcome
            {
                let lag = now_ms().saturating_sub(event.ready_ms()) as f64 / 1000.0;
                metrics
                    .delivery_lag
                    .with_label_values(&[&event.subscriber])
                    .observe(lag);
            }
        }
        let settlement = match outcome {
            Attempt::Done { .. } => Settlement::Acknowledged,
            Attempt::Waiting {
                reason,
                again_in_ms,
            } => Settlement::Postponed {
                reason,
                next_ms: now_ms() + again_in_ms,
            },
            Attempt::Failed {
                reason,
                max_attempts,
            } => Settlement::Failed {
                reason,
                next_ms: now_ms() + backoff(attempts + 1).as_millis() as u64,
                max_attempts,
            },
        };
        (event.event_id.clone(), event.subscriber.clone(), settlement)
    }

    async fn attempt(&self, delivery: &Delivery) -> Attempt {
        let event = &delivery.event;
        let Some(service) = self.table.get(&event.subscriber) else {
            return waiting(event, format!("`{}` is not deployed", event.subscriber));
        };
        let versions = service.versions();
        let Some(subscription) = versions
            .stable
            .record
            .manifest
            .subscriptions
            .iter()
            .find(|subscription| subscription.topic == event.topic)
            .cloned()
        else {
            // Its running version does not subscribe (a rollback, a redeploy): the
            // event waits for one that does, and is never dropped unseen.
            return waiting(
                event,
                format!(
                    "the running version of `{}` does not subscribe to `{}`",
                    event.subscriber, event.topic
                ),
            );
        };
        let store = versions.stable.context.store.clone();
        let event_id = event.event_id.clone();
        if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || store.is_handled(&event_id)).await
        {
            // The subscriber's own transaction marked it handled: a redelivery.
            return Attempt::Done { deduplicated: true };
        }
        let failed = |reason: String| Attempt::Failed {
            reason,
            max_attempts: subscription.max_attempts,
        };
        let request = match delivery_request(delivery, &subscription) {
            Ok(request) => request,
            Err(reason) => return failed(reason),
        };
        drop(versions);
        // The service's own time limits bound the delivery.
        let response = self
            .serve(&service, request, RequestId::new(), Deadline::longest())
            .await;
        let status = response.status();
        // Read the answer to the end: a guest that sends its head and then fails
        // (traps, runs out of time) has not handled the event.
        let complete = response.into_body().collect().await.is_ok();
        if status.is_success() && complete {
            Attempt::Done {
                deduplicated: false,
            }
        } else if !complete {
            failed(format!("{} failed while answering", event.subscriber))
        } else {
            failed(format!("{} answered {status}", event.subscriber))
        }
    }
}

/// An event whose subscriber is not there to take it: it waits, looking again
/// sooner while it is young, until [`WAIT_FOR_SUBSCRIBER_MS`] after it was due, then
/// becomes a dead letter an operator can replay.
fn waiting(event: &NewDelivery, reason: String) -> Attempt {
    let waited = now_ms().saturating_sub(event.ready_ms());
    if waited >= WAIT_FOR_SUBSCRIBER_MS {
        return Attempt::Failed {
            reason: format!("{reason} (waited an hour)"),
            max_attempts: 0,
        };
    }
    Attempt::Waiting {
        reason,
        again_in_ms: (waited / 10).clamp(1_000, WAITING_RECHECK_MS),
    }
}

/// What came of one delivery attempt.
enum Attempt {
    /// Acknowledged; `deduplicated` when nothing had to be sent.
    Done {
        deduplicated: bool,
    },
    /// Not attempted: the subscriber is not there to take it.
    Waiting {
        reason: String,
        again_in_ms: u64,
    },
    Failed {
        reason: String,
        max_attempts: u32,
    },
}

/// One delivery of `event` per subscription to its topic.
fn fan_out(
    publisher: &str,
    event: &OutboxEvent,
    subscriptions: &[(String, Subscription)],
) -> Vec<NewDelivery> {
    subscriptions
        .iter()
        .filter(|(_, subscription)| subscription.topic == event.topic)
        .map(|(subscriber, _)| NewDelivery {
            event_id: event.id.clone(),
            publisher: publisher.to_owned(),
            subscriber: subscriber.clone(),
            topic: event.topic.clone(),
            payload: event.payload.clone(),
            traceparent: event.traceparent.clone(),
            published_ms: event.published_ms,
            deliver_at_ms: event.deliver_at_ms,
        })
        .collect()
}

/// The `POST` that carries a delivery to its subscriber's route.
fn delivery_request(
    delivery: &Delivery,
    subscription: &Subscription,
) -> Result<Request<Full<Bytes>>, String> {
    let event = &delivery.event;
    let mut headers = http::HeaderMap::new();
    let value = |text: &str| HeaderValue::from_str(text).map_err(|error| error.to_string());
    headers.insert("x-shoal-event-id", value(&event.event_id)?);
    headers.insert("x-shoal-topic", value(&event.topic)?);
    headers.insert(
        "x-shoal-delivery-attempt",
        HeaderValue::from(delivery.attempts + 1),
    );
    headers.insert(http::header::HOST, value(&event.subscriber)?);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(traceparent) = &event.traceparent {
        headers.insert("traceparent", value(traceparent)?);
    }
    let uri = subscription
        .route
        .parse()
        .map_err(|error: http::uri::InvalidUri| error.to_string())?;
    Ok(protocol::buffered_request(
        Method::POST,
        uri,
        headers,
        Bytes::from(event.payload.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_goes_to_every_subscriber_of_its_topic_only() {
        let subscription = |topic: &str| Subscription {
            topic: topic.into(),
            route: "/events".into(),
            max_attempts: 5,
        };
        let subscriptions = vec![
            ("shipping".to_owned(), subscription("order.created")),
            ("billing".to_owned(), subscription("order.created")),
            ("audit".to_owned(), subscription("order.cancelled")),
        ];
        let event = OutboxEvent {
            id: "e1".into(),
            topic: "order.created".into(),
            payload: b"{}".to_vec(),
            traceparent: None,
            published_ms: 0,
            deliver_at_ms: 0,
        };
        let deliveries = fan_out("orders", &event, &subscriptions);
        let subscribers: Vec<&str> = deliveries.iter().map(|d| d.subscriber.as_str()).collect();
        assert_eq!(subscribers, ["shipping", "billing"]);
    }
}
