//! Publish events, and receive them (see `wit/events.wit`).
//!
//! A subscription is declared in the manifest; each event arrives as a `POST` to the
//! subscription's route, which [`Event::from_request`] reads. Publish inside a store
//! transaction with [`crate::store::Transaction::publish`] to send an event only if
//! (and after) the transaction commits; mark an event handled in the handler's own
//! transaction with [`crate::store::Transaction::mark_handled`] so redeliveries are
//! dropped.

use crate::bindings::shoal::platform::events as wit;
use crate::http::Request;

pub use wit::PublishError;

/// Publish `payload` to `topic` now; returns the event's id.
pub fn publish(topic: &str, payload: &[u8]) -> Result<String, PublishError> {
    wit::publish(topic, payload)
}

/// Publish `payload` to `topic`, delivered no sooner than `delay` from now (at most
/// 30 days); returns the event's id.
pub fn schedule(
    topic: &str,
    payload: &[u8],
    delay: std::time::Duration,
) -> Result<String, PublishError> {
    wit::schedule(topic, payload, millis(delay))
}

/// `delay` in whole milliseconds, saturating.
pub(crate) fn millis(delay: std::time::Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// An event delivered to this service.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique id (the same on every redelivery).
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Which delivery attempt this is (1 for the first).
    pub attempt: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Event {
    /// The event a delivery request carries, if it is one.
    pub fn from_request(request: &Request) -> Option<Event> {
        Some(Event {
            id: request.header("x-shoal-event-id")?.to_owned(),
            topic: request.header("x-shoal-topic")?.to_owned(),
            attempt: request
                .header("x-shoal-delivery-attempt")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            payload: request.body().to_vec(),
        })
    }
}
