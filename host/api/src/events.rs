//! `/v1/events`: topics, subscriptions, deliveries waiting and dead letters.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The event bus as `GET /v1/events` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventsView {
    /// Topics some service subscribes to.
    pub topics: Vec<String>,
    /// Every subscription of every running service.
    pub subscriptions: Vec<Subscription>,
    /// Deliveries waiting (due now or later).
    pub pending: u64,
    /// Deliveries that used up their attempts (at most 1000 shown).
    pub dead_letters: Vec<DeadLetter>,
}

/// One service's subscription to a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    /// The subscribing service.
    pub service: String,
    /// The topic.
    pub topic: String,
    /// The route its events are POSTed to.
    pub route: String,
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: u32,
}

/// A delivery that used up its attempts: replay it or drop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    pub payload_bytes: u64,
}
