//! The event bus on NATS JetStream (`shoal serve --bus nats://HOST:PORT`), for hosts
//! that share their events, or an operator who runs NATS already.
//!
//! One stream per namespace (`--bus-namespace`, default `shoal`) holds every
//! delivery on the subject `NS.d.SUBSCRIBER.TOPIC` and every dead letter on
//! `NS.dead.SUBSCRIBER.TOPIC` (a topic's dots become `~`, so it stays one subject
//! token). Each subscription is one durable pull consumer filtered on its own subject,
//! with explicit acknowledgements: one filter subject per consumer, because NATS 2.9
//! (what Debian ships) silently ignores a consumer's second filter.
//!
//! What JetStream does and what the host does:
//! - A delivery is published with `Nats-Msg-Id` = event id and subscriber, so a relay
//!   that publishes it again after a crash (within the stream's duplicate window,
//!   [`DUPLICATE_WINDOW`]) does not create a second delivery.
//! - Attempts, backoff and dead letters are counted by the host in the message's own
//!   headers, not by the consumer's `max_deliver`: JetStream drops a message that runs
//!   out of deliveries and says so only in an advisory, which nobody may be listening
//!   to. A failed attempt publishes the delivery again with one more attempt (or as a
//!   dead letter), then deletes the old message and acknowledges it.
//! - A delivery that is not due yet (scheduled, or waiting for its backoff) is given
//!   back with a delayed negative acknowledgement, so JetStream keeps it until then:
//!   schedules survive restarts of the host and of NATS.
//! - A handled delivery is deleted from the stream, then acknowledged: what the stream
//!   holds is exactly what waits, which is what the host's bound measures.

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    message::{Acker, PublishMessage},
    stream::{self, Stream},
};
use bytes::Bytes;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    BusError, BusSettings, DeadLetter, Delivery, EventBus, HeldBytes, NewDelivery, Settlement,
    now_ms,
};

/// How long JetStream remembers a message id, so the same delivery published twice is
/// stored once: longer than a host takes to restart and relay its outbox again.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a fetched delivery is kept from other hosts before JetStream offers it
/// again (a host that died mid-delivery): the consumer's ack wait. A host tells
/// JetStream it is still at work on what it holds every [`STILL_WORKING`], so an
/// attempt may take longer than this.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// How often a host says it is still attempting the deliveries it holds.
const STILL_WORKING: Duration = Duration::from_secs(5);
/// Deliveries a consumer may have out at once (fetched or delayed, not acknowledged).
/// Scheduled events wait as delayed deliveries, so this is high.
const MAX_ACK_PENDING: i64 = 1_000_000;
/// Longest wait for NATS in any one call: a bus call never hangs a host thread.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a consumer that had nothing due is left alone (unless this host published
/// to it): what other hosts publish and what comes due after a delay is found within
/// this.
const IDLE_RECHECK: Duration = Duration::from_millis(250);
/// How often the consumers other hosts made are looked up.
const LIST_CONSUMERS: Duration = Duration::from_secs(5);
/// How often what the stream holds is counted at most (a scan of message headers).
const MEASURE_EVERY: Duration = Duration::from_secs(5);
/// Bytes fetched from one consumer at once at most.
const FETCH_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Longest reason kept in a dead letter's header.
const MAX_REASON_BYTES: usize = 1024;

const H_EVENT: &str = "Shoal-Event-Id";
const H_PUBLISHER: &str = "Shoal-Publisher";
const H_SUBSCRIBER: &str = "Shoal-Subscriber";
const H_TOPIC: &str = "Shoal-Topic";
const H_TRACEPARENT: &str = "Shoal-Traceparent";
const H_PUBLISHED: &str = "Shoal-Published-Ms";
const H_DELIVER_AT: &str = "Shoal-Deliver-At-Ms";
const H_ATTEMPTS: &str = "Shoal-Attempts";
const H_NEXT: &str = "Shoal-Next-Ms";
const H_BYTES: &str = "Shoal-Bytes";
const H_PAYLOAD_BYTES: &str = "Shoal-Payload-Bytes";
const H_REASON: &str = "Shoal-Reason";

/// Subjects, stream and consumer names of one namespace.
#[derive(Debug, Clone)]
struct Names {
    namespace: String,
}

impl Names {
    fn new(namespace: &str) -> Result<Self, String> {
        let valid = !namespace.is_empty()
            && namespace.len() <= 32
            && namespace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Self {
                namespace: namespace.to_owned(),
            })
        } else {
            Err(format!(
                "invalid bus namespace `{namespace}`: use 1 to 32 of a-z, 0-9, `-` and `_`"
            ))
        }
    }

    fn stream(&self) -> String {
        format!("{}-events", self.namespace)
    }

    fn all(&self) -> String {
        format!("{}.>", self.namespace)
    }

    fn deliveries(&self) -> String {
        format!("{}.d.>", self.namespace)
    }

    fn dead(&self) -> String {
        format!("{}.dead.>", self.namespace)
    }

    fn dead_of(&self, subscriber: &str) -> String {
        format!("{}.dead.{subscriber}.>", self.namespace)
    }

    fn delivery_subject(&self, subscriber: &str, topic: &str) -> String {
        format!("{}.d.{subscriber}.{}", self.namespace, topic_token(topic))
    }

    fn dead_subject(&self, subscriber: &str, topic: &str) -> String {
        format!(
            "{}.dead.{subscriber}.{}",
            self.namespace,
            topic_token(topic)
        )
    }

    fn consumer(&self, subscriber: &str, topic: &str) -> String {
        format!("{subscriber}_{}", topic_token(topic))
    }

    /// The subscriber a consumer's filter subject delivers to.
    fn subscriber_of<'a>(&self, filter: &'a str) -> Option<&'a str> {
        let rest = filter.strip_prefix(&self.namespace)?.strip_prefix(".d.")?;
        rest.split('.').next().filter(|name| !name.is_empty())
    }
}

/// A topic as one subject token: topics may hold dots, subjects split on them.
fn topic_token(topic: &str) -> String {
    topic.replace('.', "~")
}

/// The headers that carry a delivery, its attempts so far and when it is due next.
fn encode(delivery: &NewDelivery, attempts: u32, next_ms: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(H_EVENT, delivery.event_id.as_str());
    headers.insert(H_PUBLISHER, delivery.publisher.as_str());
    headers.insert(H_SUBSCRIBER, delivery.subscriber.as_str());
    headers.insert(H_TOPIC, delivery.topic.as_str());
    if let Some(traceparent) = &delivery.traceparent {
        headers.insert(H_TRACEPARENT, traceparent.as_str());
    }
    headers.insert(H_PUBLISHED, delivery.published_ms.to_string().as_str());
    headers.insert(H_DELIVER_AT, delivery.deliver_at_ms.to_string().as_str());
    headers.insert(H_ATTEMPTS, attempts.to_string().as_str());
    headers.insert(H_NEXT, next_ms.to_string().as_str());
    headers.insert(H_BYTES, delivery.bytes().to_string().as_str());
    headers.insert(H_PAYLOAD_BYTES, delivery.payload.len().to_string().as_str());
    headers
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    headers
        .get(name)
        .map(|value| value.as_str())
        .ok_or_else(|| format!("no {name} header"))
}

fn number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<T, String> {
    header(headers, name)?
        .parse()
        .map_err(|_| format!("{name} is not a number"))
}

/// A delivery, and when it is due next, from a message's headers and payload.
fn decode(headers: &HeaderMap, payload: Bytes) -> Result<(Delivery, u64), String> {
    let event = NewDelivery {
        event_id: header(headers, H_EVENT)?.to_owned(),
        publisher: header(headers, H_PUBLISHER)?.to_owned(),
        subscriber: header(headers, H_SUBSCRIBER)?.to_owned(),
        topic: header(headers, H_TOPIC)?.to_owned(),
        payload: payload.to_vec(),
        traceparent: headers
            .get(H_TRACEPARENT)
            .map(|value| value.as_str().to_owned()),
        published_ms: number(headers, H_PUBLISHED)?,
        deliver_at_ms: number(headers, H_DELIVER_AT)?,
    };
    let attempts = number(headers, H_ATTEMPTS)?;
    let next_ms = number(headers, H_NEXT)?;
    Ok((Delivery { event, attempts }, next_ms))
}

/// A reason as a header value: one line, bounded.
fn reason_header(reason: &str) -> String {
    let line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = line.len().min(MAX_REASON_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_owned()
}

/// A dead letter from its headers.
fn dead_letter(headers: &HeaderMap) -> Result<DeadLetter, String> {
    Ok(DeadLetter {
        event_id: header(headers, H_EVENT)?.to_owned(),
        subscriber: header(headers, H_SUBSCRIBER)?.to_owned(),
        topic: header(headers, H_TOPIC)?.to_owned(),
        attempts: number(headers, H_ATTEMPTS)?,
        reason: headers
            .get(H_REASON)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default(),
        payload_bytes: number(headers, H_PAYLOAD_BYTES)?,
    })
}

/// `counted` with `published` added.
fn with_published(counted: &HeldBytes, published: &HashMap<String, u64>) -> HeldBytes {
    let mut by_publisher: HashMap<String, u64> = counted.by_publisher.iter().cloned().collect();
    for (publisher, bytes) in published {
        *by_publisher.entry(publisher.clone()).or_default() += bytes;
    }
    let mut by_publisher: Vec<(String, u64)> = by_publisher.into_iter().collect();
    by_publisher.sort();
    HeldBytes {
        total: counted.total + published.values().sum::<u64>(),
        by_publisher,
    }
}

/// A delivery this host fetched and is attempting.
struct Claim {
    acker: Acker,
    sequence: u64,
    delivery: Delivery,
}

/// The deliveries this host holds, by event id and subscriber.
type Claims = parking_lot::Mutex<HashMap<(String, String), Arc<Claim>>>;

/// Tell JetStream every [`STILL_WORKING`] that the deliveries held here are still
/// being attempted, until the bus is gone.
async fn keep_claims(claims: std::sync::Weak<Claims>) {
    loop {
        tokio::time::sleep(STILL_WORKING).await;
        let Some(claims) = claims.upgrade() else {
            return;
        };
        let held: Vec<Arc<Claim>> = claims.lock().values().cloned().collect();
        drop(claims);
        for claim in held {
            // A lost one only means JetStream may offer it again: at least once.
            let _ = claim.acker.ack_with(AckKind::Progress).await;
        }
    }
}

/// A subscription's consumer as this host knows it.
struct KnownConsumer {
    subscriber: String,
    consumer: PullConsumer,
    /// Left alone until then: it had nothing due.
    idle_until: Option<Instant>,
}

#[derive(Default)]
struct Consumers {
    by_name: HashMap<String, KnownConsumer>,
    listed: Option<Instant>,
    /// Where the next round of fetches starts, so no subscriber is always first.
    rotation: usize,
}

/// The event bus in a NATS JetStream stream.
pub struct NatsBus {
    runtime: tokio::runtime::Handle,
    jetstream: jetstream::Context,
    names: Names,
    stream: tokio::sync::OnceCell<Stream>,
    consumers: parking_lot::Mutex<Consumers>,
    claims: Arc<Claims>,
    measured: parking_lot::Mutex<Option<(Instant, HeldBytes)>>,
    /// Bytes this host published since the last count, per publisher: added to it
    /// until the next, so the bound never sees less than the stream holds.
    published_since: parking_lot::Mutex<HashMap<String, u64>>,
    /// In a cluster, the subscribers whose deliveries this host claims (the others'
    /// are claimed by the hosts that run them).
    local_subscribers: parking_lot::Mutex<Option<std::collections::BTreeSet<String>>>,
}

fn nats_error(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BusError + '_ {
    move |error| BusError(format!("NATS: {what}: {error}"))
}

impl NatsBus {
    /// Connect to the NATS server `settings` name, in the background if it is not up
    /// yet: the host starts either way, and bus calls fail until it answers.
    pub async fn connect(
        settings: &BusSettings,
        url: &str,
        client_name: &str,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let names = Names::new(&settings.bus_namespace).map_err(anyhow::Error::msg)?;
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            anyhow::bail!("--bus `{url}`: use nats://HOST:PORT or tls://HOST:PORT");
        }
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CALL_TIMEOUT)
            .request_timeout(Some(CALL_TIMEOUT))
            .event_callback(|event| async move {
                // What the operator needs to see: the link to NATS and why it broke.
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS: connected"),
                    event => tracing::warn!(%event, "NATS"),
                }
            });
        if let Some(path) = &settings.bus_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the NATS token from {}", path.display()))?;
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            if token.is_empty() {
                anyhow::bail!("the NATS token file {} is empty", path.display());
            }
            options = options.token(token);
        }
        if let Some(path) = &settings.bus_credentials {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading the NATS credentials from {}", path.display()))?;
        }
        if let Some(path) = &settings.bus_ca_file {
            options = options.add_root_certificates(path.clone());
        }
        let client = options
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(CALL_TIMEOUT);
        let claims = Arc::new(Claims::default());
        runtime.spawn(keep_claims(Arc::downgrade(&claims)));
        Ok(Self {
            runtime,
            jetstream,
            names,
            stream: tokio::sync::OnceCell::new(),
            consumers: Default::default(),
            claims,
            measured: Default::default(),
            published_since: Default::default(),
            local_subscribers: Default::default(),
        })
    }

    /// Run `call` to its end on the host's runtime, from a blocking thread, bounded
    /// by [`CALL_TIMEOUT`].
    fn run<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, BusError>>,
    ) -> Result<T, BusError> {
        self.runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .map_err(|_| {
                    BusError(format!(
                        "NATS did not answer ({what}) within {} s",
                        CALL_TIMEOUT.as_secs()
                    ))
                })?
        })
    }

    /// The stream, made on first use (NATS may not have been up when the host
    /// started).
    async fn stream(&self) -> Result<Stream, BusError> {
        self.stream
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.names.stream(),
                    subjects: vec![self.names.all()],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    description: Some("Shoal: event deliveries and dead letters".into()),
                    ..Default::default()
                };
                self.jetstream
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| nats_error("opening the stream")(&e))
            })
            .await
            .cloned()
    }

    /// The consumer of `subscriber`'s subscription to `topic`, made if new.
    async fn consumer(
        &self,
        stream: &Stream,
        subscriber: &str,
        topic: &str,
    ) -> Result<PullConsumer, BusError> {
        let name = self.names.consumer(subscriber, topic);
        if let Some(known) = self.consumers.lock().by_name.get_mut(&name) {
            known.idle_until = None;
            return Ok(known.consumer.clone());
        }
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.names.delivery_subject(subscriber, topic),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: MAX_ACK_PENDING,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| nats_error("making a consumer")(&e))?;
        self.consumers
            .lock()
            .by_name
            .entry(name)
            .or_insert_with(|| KnownConsumer {
                subscriber: subscriber.to_owned(),
                consumer: consumer.clone(),
                idle_until: None,
            });
        Ok(consumer)
    }

    /// Learn the consumers other hosts made, every [`LIST_CONSUMERS`].
    async fn list_consumers(&self, stream: &Stream) -> Result<(), BusError> {
        let due = self
            .consumers
            .lock()
            .listed
            .is_none_or(|at| at.elapsed() >= LIST_CONSUMERS);
        if !due {
            return Ok(());
        }
        let mut listed = stream.consumers();
        let mut found = Vec::new();
        while let Some(info) = listed.next().await {
            let info = info.map_err(|e| nats_error("listing consumers")(&e))?;
            let Some(subscriber) = self.names.subscriber_of(&info.config.filter_subject) else {
                continue;
            };
            if info.config.durable_name.is_some() {
                found.push((info.name.clone(), subscriber.to_owned()));
            }
        }
        let mut new = Vec::new();
        {
            let consumers = self.consumers.lock();
            for (name, subscriber) in found {
                if !consumers.by_name.contains_key(&name) {
                    new.push((name, subscriber));
                }
            }
        }
        for (name, subscriber) in new {
            let consumer: PullConsumer = stream
                .get_consumer(&name)
                .await
                .map_err(|e| nats_error("opening a consumer")(&e))?;
            self.consumers
                .lock()
                .by_name
                .entry(name)
                .or_insert(KnownConsumer {
                    subscriber,
                    consumer,
                    idle_until: None,
                });
        }
        self.consumers.lock().listed = Some(Instant::now());
        Ok(())
    }

    /// Publish one message and wait until the stream has it.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
        message_id: String,
    ) -> Result<(), BusError> {
        let publish = PublishMessage::build()
            .headers(headers)
            .payload(payload)
            .message_id(message_id);
        self.jetstream
            .send_publish(subject, publish)
            .await
            .map_err(|e| nats_error("publishing")(&e))?
            .await
            .map_err(|e| nats_error("publishing")(&e))?;
        Ok(())
    }

    /// Delete a handled message from the stream, then acknowledge it, both confirmed.
    async fn finish(&self, stream: &Stream, claim: &Claim) -> Result<(), BusError> {
        stream
            .delete_message(claim.sequence)
            .await
            .map_err(|e| nats_error("deleting a delivery")(&e))?;
        claim
            .acker
            .double_ack()
            .await
            .map_err(|e| nats_error("acknowledging a delivery")(&*e))
    }

    async fn settle_one(
        &self,
        stream: &Stream,
        claim: Arc<Claim>,
        outcome: &Settlement,
    ) -> Result<(), BusError> {
        let event = &claim.delivery.event;
        match outcome {
            Settlement::Acknowledged => self.finish(stream, &claim).await,
            Settlement::Postponed { next_ms, .. } => {
                // Attempts are not counted: the same message comes back later.
                let delay = Duration::from_millis(next_ms.saturating_sub(now_ms()));
                claim
                    .acker
                    .double_ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(|e| nats_error("postponing a delivery")(&*e))
            }
            Settlement::Failed {
                reason,
                next_ms,
                max_attempts,
            } => {
                let attempts = claim.delivery.attempts + 1;
                let mut headers = encode(event, attempts, *next_ms);
                // The old message's sequence makes the id: a host that publishes this
                // again (it died before deleting the old one) stores it once.
                let (subject, id) = if attempts >= *max_attempts {
                    headers.insert(H_REASON, reason_header(reason).as_str());
                    (
                        self.names.dead_subject(&event.subscriber, &event.topic),
                        format!(
                            "dead:{}:{}:{}",
                            event.event_id, event.subscriber, claim.sequence
                        ),
                    )
                } else {
                    (
                        self.names.delivery_subject(&event.subscriber, &event.topic),
                        format!("{}:{}:{}", event.event_id, event.subscriber, claim.sequence),
                    )
                };
                self.publish(subject, headers, Bytes::from(event.payload.clone()), id)
                    .await?;
                self.finish(stream, &claim).await
            }
        }
    }

    /// Read the headers of every message on `filter`, in order, until `visit` says
    /// stop.
    async fn scan(
        &self,
        stream: &Stream,
        filter: &str,
        mut visit: impl FnMut(u64, &HeaderMap) -> bool,
    ) -> Result<(), BusError> {
        if self.count(stream, filter).await? == 0 {
            return Ok(());
        }
        let scanner = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                headers_only: true,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("reading the stream")(&e))?;
        let mut messages = scanner
            .messages()
            .await
            .map_err(|e| nats_error("reading the stream")(&e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| nats_error("reading the stream")(&e))?;
            let info = message
                .info()
                .map_err(|e| nats_error("reading the stream")(&*e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            let keep_going = match &message.headers {
                Some(headers) => visit(sequence, headers),
                None => true,
            };
            if !keep_going || pending == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Messages on `filter`.
    async fn count(&self, stream: &Stream, filter: &str) -> Result<u64, BusError> {
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| nats_error("counting messages")(&e))?;
        let mut total = 0;
        while let Some(entry) = subjects.next().await {
            let (_, count) = entry.map_err(|e| nats_error("counting messages")(&e))?;
            total += count as u64;
        }
        Ok(total)
    }

    /// The stream sequence of `subscriber`'s dead letter of `event_id`.
    async fn find_dead(
        &self,
        stream: &Stream,
        event_id: &str,
        subscriber: &str,
    ) -> Result<Option<u64>, BusError> {
        let mut found = None;
        self.scan(
            stream,
            &self.names.dead_of(subscriber),
            |sequence, headers| {
                if headers.get(H_EVENT).map(|value| value.as_str()) == Some(event_id) {
                    found = Some(sequence);
                    return false;
                }
                true
            },
        )
        .await?;
        Ok(found)
    }

    async fn claim(
        &self,
        now_ms: u64,
        limit: u32,
        per_subscriber: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<Delivery>, BusError> {
        let stream = self.stream().await?;
        self.list_consumers(&stream).await?;
        let now = Instant::now();
        let local = self.local_subscribers.lock().clone();
        let candidates: Vec<(String, String, PullConsumer)> = {
            let mut consumers = self.consumers.lock();
            let mut ready: Vec<(String, String, PullConsumer)> = consumers
                .by_name
                .iter()
                .filter(|(_, known)| known.idle_until.is_none_or(|until| until <= now))
                .filter(|(_, known)| {
                    local
                        .as_ref()
                        .is_none_or(|local| local.contains(&known.subscriber))
                })
                .map(|(name, known)| {
                    (
                        name.clone(),
                        known.subscriber.clone(),
                        known.consumer.clone(),
                    )
                })
                .collect();
            ready.sort_by(|a, b| a.0.cmp(&b.0));
            if !ready.is_empty() {
                let start = consumers.rotation % ready.len();
                ready.rotate_left(start);
                consumers.rotation = consumers.rotation.wrapping_add(1);
            }
            ready
        };
        let mut busy: HashMap<String, u32> = in_flight.iter().cloned().collect();
        let mut claimed = Vec::new();
        for (name, subscriber, consumer) in candidates {
            let room = (limit as usize).saturating_sub(claimed.len()).min(
                per_subscriber.saturating_sub(busy.get(&subscriber).copied().unwrap_or(0)) as usize,
            );
            if room == 0 {
                continue;
            }
            let mut batch = consumer
                .fetch()
                .max_messages(room)
                .max_bytes(FETCH_MAX_BYTES)
                .messages()
                .await
                .map_err(|e| nats_error("fetching deliveries")(&e))?;
            let mut taken = 0u32;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| nats_error("fetching deliveries")(&*e))?;
                let sequence = message
                    .info()
                    .map_err(|e| nats_error("fetching deliveries")(&*e))?
                    .stream_sequence;
                let (message, acker) = message.split();
                let decoded = match &message.headers {
                    Some(headers) => decode(headers, message.payload.clone()),
                    None => Err("no headers".to_owned()),
                };
                let (delivery, next_ms) = match decoded {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        // Not a delivery this host wrote: it can never be delivered.
                        tracing::warn!(subject = %message.subject, %error,
                            "dropping a malformed message from the event stream");
                        let _ = stream.delete_message(sequence).await;
                        let _ = acker.ack_with(AckKind::Term).await;
                        continue;
                    }
                };
                if next_ms > now_ms {
                    acker
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(next_ms - now_ms))))
                        .await
                        .map_err(|e| nats_error("delaying a delivery")(&*e))?;
                    continue;
                }
                taken += 1;
                let key = (
                    delivery.event.event_id.clone(),
                    delivery.event.subscriber.clone(),
                );
                self.claims.lock().insert(
                    key,
                    Arc::new(Claim {
                        acker,
                        sequence,
                        delivery: delivery.clone(),
                    }),
                );
                claimed.push(delivery);
            }
            *busy.entry(subscriber).or_default() += taken;
            if taken == 0
                && let Some(known) = self.consumers.lock().by_name.get_mut(&name)
            {
                known.idle_until = Some(now + IDLE_RECHECK);
            }
        }
        Ok(claimed)
    }

    /// What the stream holds: counted every [`MEASURE_EVERY`], with what this host
    /// published since added in between.
    async fn measure(&self) -> Result<HeldBytes, BusError> {
        if let Some((at, counted)) = &*self.measured.lock()
            && at.elapsed() < MEASURE_EVERY
        {
            return Ok(with_published(counted, &self.published_since.lock()));
        }
        // What is published from here on is added to this count (what is published
        // during it may be counted twice until the next: never too little).
        let before = std::mem::take(&mut *self.published_since.lock());
        let counted = self.count_bytes().await;
        if counted.is_err() {
            let mut since = self.published_since.lock();
            for (publisher, bytes) in before {
                *since.entry(publisher).or_default() += bytes;
            }
        }
        let counted = counted?;
        *self.measured.lock() = Some((Instant::now(), counted.clone()));
        Ok(with_published(&counted, &self.published_since.lock()))
    }

    /// Count the bytes of every message in the stream, per publisher.
    async fn count_bytes(&self) -> Result<HeldBytes, BusError> {
        let stream = self.stream().await?;
        let mut total = 0u64;
        let mut by_publisher: HashMap<String, u64> = HashMap::new();
        self.scan(&stream, &self.names.all(), |_, headers| {
            let bytes: u64 = number(headers, H_BYTES).unwrap_or(0);
            total += bytes;
            if let Ok(publisher) = header(headers, H_PUBLISHER) {
                *by_publisher.entry(publisher.to_owned()).or_default() += bytes;
            }
            true
        })
        .await?;
        let mut by_publisher: Vec<(String, u64)> = by_publisher.into_iter().collect();
        by_publisher.sort();
        Ok(HeldBytes {
            total,
            by_publisher,
        })
    }
}

impl EventBus for NatsBus {
    fn deliver_only(&self, subscribers: Option<std::collections::BTreeSet<String>>) {
        *self.local_subscribers.lock() = subscribers;
    }

    fn engine(&self) -> &'static str {
        "nats"
    }

    fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), BusError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.run("publishing deliveries", async {
            let stream = self.stream().await?;
            let mut acks = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                self.consumer(&stream, &delivery.subscriber, &delivery.topic)
                    .await?;
                let publish = PublishMessage::build()
                    .headers(encode(delivery, 0, delivery.deliver_at_ms))
                    .payload(Bytes::from(delivery.payload.clone()))
                    .message_id(format!("{}:{}", delivery.event_id, delivery.subscriber));
                let subject = self
                    .names
                    .delivery_subject(&delivery.subscriber, &delivery.topic);
                acks.push(
                    self.jetstream
                        .send_publish(subject, publish)
                        .await
                        .map_err(|e| nats_error("publishing")(&e))?,
                );
            }
            // Every one is stored before the events may leave their outbox.
            let stored = futures::future::join_all(
                acks.into_iter().map(std::future::IntoFuture::into_future),
            )
            .await;
            let mut since = self.published_since.lock();
            for (delivery, ack) in deliveries.iter().zip(&stored) {
                if ack.is_ok() {
                    *since.entry(delivery.publisher.clone()).or_default() += delivery.bytes();
                }
            }
            drop(since);
            for ack in stored {
                ack.map_err(|e| nats_error("publishing")(&e))?;
            }
            Ok(())
        })
    }

    fn claim_due(
        &self,
        now_ms: u64,
        _lease_ms: u64,
        limit: u32,
        per_subscriber: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<Delivery>, BusError> {
        self.run(
            "fetching deliveries",
            self.claim(now_ms, limit, per_subscriber, in_flight),
        )
    }

    fn settle(&self, outcomes: &[(String, String, Settlement)]) -> Result<(), BusError> {
        let claimed: Vec<(Arc<Claim>, &Settlement)> = {
            let mut claims = self.claims.lock();
            outcomes
                .iter()
                .filter_map(|(event_id, subscriber, outcome)| {
                    let claim = claims.remove(&(event_id.clone(), subscriber.clone()));
                    if claim.is_none() {
                        tracing::warn!(
                            event_id,
                            subscriber,
                            "settling a delivery not claimed here"
                        );
                    }
                    claim.map(|claim| (claim, outcome))
                })
                .collect()
        };
        if claimed.is_empty() {
            return Ok(());
        }
        self.run("recording deliveries", async {
            let stream = self.stream().await?;
            let settled = futures::future::join_all(
                claimed
                    .into_iter()
                    .map(|(claim, outcome)| self.settle_one(&stream, claim, outcome)),
            )
            .await;
            // What was not recorded is offered again after the ack wait: at least once.
            settled.into_iter().collect::<Result<Vec<()>, BusError>>()?;
            Ok(())
        })
    }

    fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, BusError> {
        self.run("reading dead letters", async {
            let stream = self.stream().await?;
            let mut dead = Vec::new();
            self.scan(&stream, &self.names.dead(), |_, headers| {
                if let Ok(letter) = dead_letter(headers) {
                    dead.push(letter);
                }
                dead.len() < limit as usize
            })
            .await?;
            Ok(dead)
        })
    }

    fn replay(&self, event_id: &str, subscriber: &str) -> Result<bool, BusError> {
        self.run("replaying a dead letter", async {
            let stream = self.stream().await?;
            let Some(sequence) = self.find_dead(&stream, event_id, subscriber).await? else {
                return Ok(false);
            };
            let message = stream
                .get_raw_message(sequence)
                .await
                .map_err(|e| nats_error("reading a dead letter")(&e))?;
            let (delivery, _) = decode(&message.headers, message.payload)
                .map_err(|error| BusError(format!("a dead letter in NATS: {error}")))?;
            let event = delivery.event;
            self.consumer(&stream, &event.subscriber, &event.topic)
                .await?;
            self.publish(
                self.names.delivery_subject(&event.subscriber, &event.topic),
                encode(&event, 0, 0),
                Bytes::from(event.payload.clone()),
                format!("replay:{}:{}:{sequence}", event.event_id, event.subscriber),
            )
            .await?;
            stream
                .delete_message(sequence)
                .await
                .map_err(|e| nats_error("deleting a dead letter")(&e))?;
            Ok(true)
        })
    }

    fn drop_dead(&self, event_id: &str, subscriber: &str) -> Result<bool, BusError> {
        self.run("dropping a dead letter", async {
            let stream = self.stream().await?;
            let Some(sequence) = self.find_dead(&stream, event_id, subscriber).await? else {
                return Ok(false);
            };
            stream
                .delete_message(sequence)
                .await
                .map_err(|e| nats_error("deleting a dead letter")(&e))
        })
    }

    fn pending(&self) -> Result<u64, BusError> {
        self.run("counting deliveries", async {
            let stream = self.stream().await?;
            self.count(&stream, &self.names.deliveries()).await
        })
    }

    fn held_bytes(&self) -> Result<HeldBytes, BusError> {
        self.run("measuring the stream", self.measure())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> NewDelivery {
        NewDelivery {
            event_id: "e-1".into(),
            publisher: "orders".into(),
            subscriber: "shipping".into(),
            topic: "order.created".into(),
            payload: b"{\"id\":1}".to_vec(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            published_ms: 1_000,
            deliver_at_ms: 5_000,
        }
    }

    #[test]
    fn a_delivery_survives_its_headers() {
        let original = delivery();
        let headers = encode(&original, 3, 9_000);
        let (decoded, next_ms) =
            decode(&headers, Bytes::from(original.payload.clone())).expect("decodes");
        assert_eq!(decoded.event, original);
        assert_eq!((decoded.attempts, next_ms), (3, 9_000));
        let mut no_topic = headers.clone();
        no_topic.insert(H_ATTEMPTS, "many");
        assert!(decode(&no_topic, Bytes::new()).is_err(), "a bad number");
    }

    #[test]
    fn each_subscription_has_its_own_subject_and_consumer() {
        let names = Names::new("shoal").expect("valid");
        assert_eq!(
            names.delivery_subject("shipping", "order.created"),
            "shoal.d.shipping.order~created"
        );
        assert_eq!(
            names.dead_subject("shipping", "order.created"),
            "shoal.dead.shipping.order~created"
        );
        assert_eq!(
            names.consumer("shipping", "order.created"),
            "shipping_order~created"
        );
        // A topic's dots never make a subject that another subscription's filter
        // matches, nor an empty token.
        assert_ne!(
            names.delivery_subject("a", "b.c"),
            names.delivery_subject("a", "b")
        );
        assert_eq!(names.delivery_subject("a", "b..c"), "shoal.d.a.b~~c");
        assert_eq!(
            names.subscriber_of("shoal.d.shipping.order~created"),
            Some("shipping")
        );
        assert_eq!(names.subscriber_of("other.d.shipping.x"), None);
        assert_eq!(names.subscriber_of("shoal.dead.shipping.x"), None);
        for bad in ["", "Shoal", "a.b", "a>", &"n".repeat(33)] {
            assert!(Names::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_was_published_since_the_last_count_is_added_to_it() {
        let counted = HeldBytes {
            total: 100,
            by_publisher: vec![("a".into(), 60), ("b".into(), 40)],
        };
        let published = HashMap::from([("b".to_owned(), 5), ("c".to_owned(), 7)]);
        let held = with_published(&counted, &published);
        assert_eq!(held.total, 112);
        assert_eq!(
            held.by_publisher,
            [("a".into(), 60), ("b".into(), 45), ("c".into(), 7)]
        );
    }

    #[test]
    fn a_reason_becomes_one_bounded_line() {
        assert_eq!(reason_header("a\nb\r\tc"), "a b  c");
        let long = "é".repeat(MAX_REASON_BYTES);
        let kept = reason_header(&long);
        assert!(kept.len() <= MAX_REASON_BYTES && kept.chars().all(|c| c == 'é'));
    }
}
