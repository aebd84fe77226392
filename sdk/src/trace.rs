//! Spans of the service's own, inside the trace the host already keeps for each
//! request (and carries across calls).
//!
//! ```no_run
//! let span = shoal_sdk::trace::Span::start("price-basket");
//! span.set_attribute("items", "3");
//! span.add_event("discount-applied", &[("code", "SPRING")]);
//! span.end();
//! ```

use crate::bindings::shoal::platform::tracing as wit;

pub use wit::Status;

/// A span; ended when [`Span::end`] is called or when it is dropped.
pub struct Span(wit::Span);

impl Span {
    /// Open a child of the current span.
    pub fn start(name: &str) -> Self {
        Span(wit::start_span(name))
    }

    /// Set an attribute.
    pub fn set_attribute(&self, key: &str, value: &str) {
        self.0.set_attribute(key, value);
    }

    /// Record an event with attributes.
    pub fn add_event(&self, name: &str, attributes: &[(&str, &str)]) {
        let attributes: Vec<(String, String)> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0.add_event(name, &attributes);
    }

    /// Mark the span as failed, with a description.
    pub fn set_error(&self, description: &str) {
        self.0.set_status(Status::Error, Some(description));
    }

    /// Mark the span as successful.
    pub fn set_ok(&self) {
        self.0.set_status(Status::Ok, None);
    }

    /// End the span now.
    pub fn end(self) {
        self.0.end();
    }
}

/// The current trace id (32 hex digits).
pub fn trace_id() -> String {
    wit::trace_id()
}

/// The current span id (16 hex digits).
pub fn span_id() -> String {
    wit::span_id()
}
