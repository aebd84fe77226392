//! The event bus: deliveries of published events to subscribed services.
//!
//! Publishing writes an event into the publisher's own store (its outbox), in the
//! same commit as the transaction's writes. The host then moves committed events onto
//! the bus, one delivery per subscriber, and delivers them at least once: a delivery
//! that fails is retried with exponential backoff, and after its subscription's
//! `max_attempts` it becomes a dead letter that an operator can replay or drop.
//!
//! [`EventBus`] is the queue of deliveries; the embedded backend ([`sqlite`]) keeps it
//! in one SQLite database in the data directory, and [`nats`] keeps it in a NATS
//! JetStream stream that several hosts can share.

pub mod nats;
pub mod sqlite;
pub mod topics;

use std::time::Duration;
use thiserror::Error;

/// Largest payload of one event, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Longest topic name.
pub const MAX_TOPIC_BYTES: usize = 128;

/// A bus failure (the host's side).
#[derive(Debug, Error)]
#[error("event bus: {0}")]
pub struct BusError(pub String);

/// An invalid topic name; the text says why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid topic `{0}`: use 1 to 128 of a-z, 0-9, `.`, `-` and `_`")]
pub struct InvalidTopic(pub String);

/// Check a topic name.
pub fn validate_topic(topic: &str) -> Result<(), InvalidTopic> {
    let valid = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(InvalidTopic(topic.chars().take(MAX_TOPIC_BYTES).collect()))
    }
}

/// Where the bus is kept, and how much it may hold, host-wide.
#[derive(Debug, Clone, clap::Args)]
pub struct BusSettings {
    /// Keep the event bus in NATS JetStream (`nats://HOST:PORT`, or `tls://HOST:PORT`
    /// for TLS) instead of SQLite in the data directory. Hosts that share a store
    /// share their events by naming the same server and namespace.
    #[arg(long = "bus", env = "SHOAL_BUS_URL", value_name = "URL")]
    pub bus_url: Option<String>,

    /// Names the NATS stream (`NAMESPACE-events`) and subjects (`NAMESPACE.>`) the
    /// bus uses, so several Shoal platforms can share one NATS server.
    #[arg(long, env = "SHOAL_BUS_NAMESPACE", default_value = "shoal")]
    pub bus_namespace: String,

    /// A file holding the NATS token (its first line).
    #[arg(long, env = "SHOAL_BUS_TOKEN_FILE", value_name = "FILE")]
    pub bus_token_file: Option<std::path::PathBuf>,

    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed).
    #[arg(long, env = "SHOAL_BUS_CREDENTIALS", value_name = "FILE")]
    pub bus_credentials: Option<std::path::PathBuf>,

    /// A PEM file of the certificate authorities that sign the NATS server's
    /// certificate (with `tls://`), besides the system's.
    #[arg(long, env = "SHOAL_BUS_CA_FILE", value_name = "FILE")]
    pub bus_ca_file: Option<std::path::PathBuf>,

    /// Bytes of events the bus may hold for all services together (waiting,
    /// scheduled and dead), in MiB. Past it, events stay in their publishers'
    /// outboxes (counted against their quotas) and `publish` fails with `bus-full`.
    #[arg(long, env = "SHOAL_MAX_BUS_MB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_bus_mb: u64,

    /// How long a subscriber remembers an event it handled (its inbox), so a
    /// redelivery is dropped: longer than any redelivery (at most 100 attempts, 30 s
    /// apart, about 50 minutes). A dead letter replayed after it may be handled again.
    #[arg(long, env = "SHOAL_INBOX_RETENTION", default_value = "24h",
          value_parser = humantime::parse_duration)]
    pub inbox_retention: Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            bus_url: None,
            bus_namespace: "shoal".into(),
            bus_token_file: None,
            bus_credentials: None,
            bus_ca_file: None,
            max_bus_mb: 1024,
            inbox_retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// What the bus holds against its host-wide bound, as last measured.
#[derive(Debug)]
pub struct BusBound {
    limit: u64,
    held: std::sync::atomic::AtomicU64,
    /// Events waiting in an outbox did not fit the bus at the last try.
    refused: std::sync::atomic::AtomicBool,
}

impl BusBound {
    /// A bound of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            held: Default::default(),
            refused: Default::default(),
        }
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held, as last measured.
    pub fn held(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record what the bus holds now (measured: whether waiting events fit is then
    /// tried again).
    pub fn set_held(&self, bytes: u64) {
        self.held.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self.refused
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Take room for `bytes` more if they fit; if not, the bus counts as full until
    /// it is measured again.
    pub fn try_add(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering;
        let added = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !added {
            self.refused.store(true, Ordering::Relaxed);
        }
        added
    }

    /// Give back room taken by [`BusBound::try_add`] for events that did not reach
    /// the bus after all (it was unreachable): retries must not fill the bound.
    pub fn give_back(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(bytes))
            });
    }

    /// Whether the bus is full: it holds its limit, or events waiting to move onto
    /// it did not fit.
    pub fn is_full(&self) -> bool {
        self.held() >= self.limit || self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A new event for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The event's id.
    pub event_id: String,
    /// The publishing service: what waits on the bus counts against its quota.
    pub publisher: String,
    /// The subscribing service.
    pub subscriber: String,
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The publisher's `traceparent`.
    pub traceparent: Option<String>,
    /// When it was published (Unix milliseconds).
    pub published_ms: u64,
    /// Not delivered before this time (Unix milliseconds; 0: at once).
    pub deliver_at_ms: u64,
}

impl NewDelivery {
    /// When it could first be delivered: the delivery lag counts from here.
    pub fn ready_ms(&self) -> u64 {
        self.published_ms.max(self.deliver_at_ms)
    }

    /// Bytes it takes on the bus, as [`EventBus::held_bytes`] counts them.
    pub fn bytes(&self) -> u64 {
        (self.event_id.len() + self.topic.len() + self.payload.len()) as u64
    }
}

/// What the bus holds: in all, and per publisher (bytes of id, topic and payload of
/// every delivery, waiting, scheduled or dead).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldBytes {
    /// In all.
    pub total: u64,
    /// Per publishing service.
    pub by_publisher: Vec<(String, u64)>,
}

/// A delivery waiting in the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// What is delivered, to whom.
    pub event: NewDelivery,
    /// Attempts made so far.
    pub attempts: u32,
}

/// A delivery that ran out of attempts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The event's id.
    pub event_id: String,
    /// The subscribing service.
    pub subscriber: String,
    /// The topic.
    pub topic: String,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub reason: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
}

/// How one delivery attempt ended, as the bus records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delivered (or already handled): it leaves the bus.
    Acknowledged,
    /// Not attempted: its subscriber is not there to take it (removed, or its
    /// running version does not subscribe). Due again at `next_ms`; attempts are not
    /// counted.
    Postponed {
        /// Why.
        reason: String,
        /// When to look again (Unix milliseconds).
        next_ms: u64,
    },
    /// Failed: try again at `next_ms`, or bury it after `max_attempts`.
    Failed {
        /// Why.
        reason: String,
        /// When to try again (Unix milliseconds).
        next_ms: u64,
        /// Attempts before it becomes a dead letter.
        max_attempts: u32,
    },
}

/// The queue of deliveries.
pub trait EventBus: Send + Sync {
    /// The engine that keeps them (`sqlite`).
    fn engine(&self) -> &'static str;

    /// In a cluster, claim deliveries only for `subscribers` (the services this host
    /// runs; `None`: every one). A bus only this host reads ignores it.
    fn deliver_only(&self, _subscribers: Option<std::collections::BTreeSet<String>>) {}

    /// Add deliveries (idempotent: an event already queued for a subscriber is kept
    /// as it is).
    fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<(), BusError>;

    /// Deliveries due at `now_ms` (Unix milliseconds), at most `limit`, and for each
    /// subscriber at most `per_subscriber` less what it has `in_flight` already,
    /// claimed until `now_ms + lease_ms` so no other worker takes them meanwhile.
    fn claim_due(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
        per_subscriber: u32,
        in_flight: &[(String, u32)],
    ) -> Result<Vec<Delivery>, BusError>;

    /// Record the outcomes of a round of deliveries in one durable write:
    /// `(event_id, subscriber, outcome)`. An acknowledged delivery leaves the bus; a
    /// failed one is due again at its `next_ms`, or becomes a dead letter after
    /// `max_attempts`.
    fn settle(&self, outcomes: &[(String, String, Settlement)]) -> Result<(), BusError>;

    /// Dead letters, at most `limit`.
    fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, BusError>;

    /// Queue a dead letter for delivery again (attempts start over). Whether it existed.
    fn replay(&self, event_id: &str, subscriber: &str) -> Result<bool, BusError>;

    /// Forget a dead letter. Whether it existed.
    fn drop_dead(&self, event_id: &str, subscriber: &str) -> Result<bool, BusError>;

    /// Deliveries waiting (not dead).
    fn pending(&self) -> Result<u64, BusError>;

    /// What the bus holds, in all and per publisher.
    fn held_bytes(&self) -> Result<HeldBytes, BusError>;
}

/// Wait before attempt `attempts + 1` of a delivery: 100 ms doubling per attempt, at
/// most 30 s.
pub fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    Duration::from_millis(100u64 << exponent).min(Duration::from_secs(30))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_is_full_at_its_bound_or_when_waiting_events_do_not_fit() {
        let bound = BusBound::new(100);
        assert!(bound.try_add(60) && !bound.is_full());
        assert!(!bound.try_add(60), "past the bound");
        assert!(bound.is_full(), "what waits does not fit");
        assert_eq!(bound.held(), 60, "a refused batch takes nothing");
        bound.set_held(10);
        assert!(!bound.is_full(), "measured again");
        assert!(bound.try_add(90) && bound.is_full());
        bound.give_back(50);
        assert_eq!(bound.held(), 50, "events that never reached the bus");
        bound.give_back(500);
        assert_eq!(bound.held(), 0);
    }

    #[test]
    fn topics() {
        for good in ["order.created", "a", "x_y-z.1"] {
            assert!(validate_topic(good).is_ok(), "{good}");
        }
        for bad in ["", "Order", "a b", "a/b", &"t".repeat(129)] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
