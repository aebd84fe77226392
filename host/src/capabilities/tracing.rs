//! `shoal:platform/tracing`: guest spans as children of the request's span (or of the
//! innermost guest span still open), and the current trace id.

use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use parking_lot::Mutex;
use std::sync::Arc;
use wasmtime::component::Resource;

use crate::bindings::tracing::{Host, HostSpan, Status as WitStatus};
use crate::runtime::GuestState;
use crate::telemetry::traces;

/// Spans open during one request: the request's own, and the guest's open ones.
/// Shared with the outbound hooks so plain `wasi:http` calls are children of the
/// span that is current when they are made.
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

    fn push(&self, id: u64, cx: Context) {
        self.open.lock().push((id, cx));
    }

    fn close(&self, id: u64) {
        self.open.lock().retain(|(open, _)| *open != id);
    }
}

/// A span a guest opened.
pub struct GuestSpan {
    id: u64,
    context: Context,
    ended: bool,
}

impl GuestSpan {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.context.span().end();
        }
    }
}

/// Longest span name or attribute the host keeps.
const MAX_TEXT: usize = 1024;

fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

impl Host for GuestState {
    async fn start_span(&mut self, name: String) -> Resource<GuestSpan> {
        let parent = self.trace.current();
        let context = self.platform.telemetry.tracing.start(
            bounded(name),
            SpanKind::Internal,
            &parent,
            vec![
                KeyValue::new("shoal.service", self.service.name.to_string()),
                KeyValue::new("shoal.guest_span", true),
            ],
        );
        let id = rand::random::<u64>();
        self.trace.push(id, context.clone());
        let span = GuestSpan {
            id,
            context,
            ended: false,
        };
        match self.table.push(span) {
            Ok(resource) => resource,
            // The table is full (a guest opening spans without bound): the span is
            // dropped on the floor rather than failing the request.
            Err(_) => Resource::new_own(u32::MAX),
        }
    }

    async fn trace_id(&mut self) -> String {
        traces::trace_id(&self.trace.current()).unwrap_or_else(|| "0".repeat(32))
    }

    async fn span_id(&mut self) -> String {
        traces::span_id(&self.trace.current()).unwrap_or_else(|| "0".repeat(16))
    }
}

impl HostSpan for GuestState {
    async fn set_attribute(&mut self, span: Resource<GuestSpan>, key: String, value: String) {
        if let Ok(span) = self.table.get(&span) {
            span.context
                .span()
                .set_attribute(KeyValue::new(bounded(key), bounded(value)));
        }
    }

    async fn add_event(
        &mut self,
        span: Resource<GuestSpan>,
        name: String,
        attributes: Vec<(String, String)>,
    ) {
        if let Ok(span) = self.table.get(&span) {
            let attributes = attributes
                .into_iter()
                .take(32)
                .map(|(k, v)| KeyValue::new(bounded(k), bounded(v)))
                .collect();
            span.context.span().add_event(bounded(name), attributes);
        }
    }

    async fn set_status(
        &mut self,
        span: Resource<GuestSpan>,
        status: WitStatus,
        description: Option<String>,
    ) {
        if let Ok(span) = self.table.get(&span) {
            let status = match status {
                WitStatus::Unset => Status::Unset,
                WitStatus::Ok => Status::Ok,
                WitStatus::Error => Status::error(bounded(description.unwrap_or_default())),
            };
            span.context.span().set_status(status);
        }
    }

    async fn end(&mut self, span: Resource<GuestSpan>) {
        if let Ok(span) = self.table.get_mut(&span) {
            span.end();
            let id = span.id;
            self.trace.close(id);
        }
    }

    async fn drop(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<()> {
        if let Ok(mut span) = self.table.delete(span) {
            span.end();
            self.trace.close(span.id);
        }
        Ok(())
    }
}
