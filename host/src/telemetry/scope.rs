//! The spans open during one request: the request's own span and the guest's open
//! spans. Shared by the tracing capability (guest spans nest), the log capability
//! (log lines carry the current trace id) and the caller (outbound calls are children
//! of the span that is current when they are made).

use opentelemetry::Context;
use parking_lot::Mutex;
use std::sync::Arc;

/// Spans open during one request.
#[derive(Clone, Default)]
pub struct TraceScope {
    root: Context,
    open: Arc<Mutex<Vec<(u64, Context)>>>,
}

impl std::fmt::Debug for TraceScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceScope")
            .field("open_spans", &self.open.lock().len())
            .finish()
    }
}

impl TraceScope {
    /// A scope under the request span `root`.
    pub fn new(root: Context) -> Self {
        Self {
            root,
            open: Arc::default(),
        }
    }

    /// The innermost open guest span, or the request span.
    pub fn current(&self) -> Context {
        self.open
            .lock()
            .last()
            .map(|(_, cx)| cx.clone())
            .unwrap_or_else(|| self.root.clone())
    }

    /// How many guest spans are open.
    pub fn open_spans(&self) -> usize {
        self.open.lock().len()
    }

    /// A guest span `id` was opened; it is current until closed.
    pub fn push(&self, id: u64, cx: Context) {
        self.open.lock().push((id, cx));
    }

    /// The guest span `id` ended (or was dropped).
    pub fn close(&self, id: u64) {
        self.open.lock().retain(|(open, _)| *open != id);
    }
}
