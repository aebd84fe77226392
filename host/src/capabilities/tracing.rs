//! `shoal:platform/tracing`: guest spans as children of the request's span (or of the
//! innermost guest span still open), and the current trace id.

use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{HostFault, InstanceLimit, MAX_OPEN_SPANS, PlatformView, bounded_text, traced_sync};
use crate::bindings::tracing::{self, Host, HostSpan, Status as WitStatus};
use crate::recording::journal::{self, Journal};
use crate::telemetry::{TraceScope, Tracing, traces};

/// Longest span name, attribute key or value the host keeps.
const MAX_TEXT: usize = 1024;
/// Most attributes kept on one span event.
const MAX_EVENT_ATTRIBUTES: usize = 32;

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

/// What a tracing call sees: the tracer, the request's spans and the resource table.
pub struct TracingView<'a> {
    /// The host's tracer.
    pub tracing: &'a Tracing,
    /// The service, recorded on its spans.
    pub service: &'a str,
    /// The request's span and the guest's open spans.
    pub scope: &'a TraceScope,
    /// Holds the guest's spans.
    pub table: &'a mut ResourceTable,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasTracing;

impl HasData for HasTracing {
    type Data<'a> = TracingView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    tracing::add_to_linker::<T, HasTracing>(linker, |state| {
        let view = state.platform();
        TracingView {
            tracing: &view.ctx.platform.telemetry.tracing,
            service: &view.ctx.service.name,
            scope: &view.ctx.trace,
            table: view.table,
            journal: view.ctx.journal.as_deref(),
        }
    })
}

fn bounded(text: String) -> String {
    bounded_text(text, MAX_TEXT)
}

impl TracingView<'_> {
    /// Run `body` on the guest span `span`, in the host call's span.
    fn with_span(
        &mut self,
        call: &'static str,
        span: &Resource<GuestSpan>,
        body: impl FnOnce(&opentelemetry::trace::SpanRef<'_>),
    ) -> wasmtime::Result<()> {
        let table = &*self.table;
        traced_sync(call, self.service, || {
            let span = table
                .get(span)
                .map_err(|error| HostFault::table(call, error))?;
            body(&span.context.span());
            Ok(())
        })
    }
}

impl Host for TracingView<'_> {
    async fn start_span(&mut self, name: String) -> wasmtime::Result<Resource<GuestSpan>> {
        traced_sync("tracing.start-span", self.service, || {
            if self.scope.open_spans() >= MAX_OPEN_SPANS {
                return Err(wasmtime::Error::new(InstanceLimit {
                    call: "tracing.start-span",
                    what: "open spans",
                    limit: MAX_OPEN_SPANS,
                }));
            }
            let parent = self.scope.current();
            let context = self.tracing.start(
                bounded(name),
                SpanKind::Internal,
                &parent,
                vec![
                    KeyValue::new("shoal.service", self.service.to_owned()),
                    KeyValue::new("shoal.guest_span", true),
                ],
            );
            let id = rand::random::<u64>();
            let span = GuestSpan {
                id,
                context: context.clone(),
                ended: false,
            };
            match self.table.push(span) {
                Ok(resource) => {
                    self.scope.push(id, context);
                    Ok(resource)
                }
                Err(error) => {
                    context.span().end();
                    Err(HostFault::table("tracing.start-span", error))
                }
            }
        })
    }

    async fn trace_id(&mut self) -> wasmtime::Result<String> {
        let live = traces::trace_id(&self.scope.current()).unwrap_or_else(|| "0".repeat(32));
        let about = journal::about(self.journal, String::new);
        let id = journal::call(self.journal, "tracing.trace-id", about, async { Ok(live) }).await;
        traced_sync("tracing.trace-id", self.service, || id)
    }

    async fn span_id(&mut self) -> wasmtime::Result<String> {
        let live = traces::span_id(&self.scope.current()).unwrap_or_else(|| "0".repeat(16));
        let about = journal::about(self.journal, String::new);
        let id = journal::call(self.journal, "tracing.span-id", about, async { Ok(live) }).await;
        traced_sync("tracing.span-id", self.service, || id)
    }
}

impl HostSpan for TracingView<'_> {
    async fn set_attribute(
        &mut self,
        span: Resource<GuestSpan>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        self.with_span("tracing.span.set-attribute", &span, |span| {
            span.set_attribute(KeyValue::new(bounded(key), bounded(value)));
        })
    }

    async fn add_event(
        &mut self,
        span: Resource<GuestSpan>,
        name: String,
        attributes: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let attributes = attributes
            .into_iter()
            .take(MAX_EVENT_ATTRIBUTES)
            .map(|(k, v)| KeyValue::new(bounded(k), bounded(v)))
            .collect();
        self.with_span("tracing.span.add-event", &span, |span| {
            span.add_event(bounded(name), attributes);
        })
    }

    async fn set_status(
        &mut self,
        span: Resource<GuestSpan>,
        status: WitStatus,
        description: Option<String>,
    ) -> wasmtime::Result<()> {
        let status = match status {
            WitStatus::Unset => Status::Unset,
            WitStatus::Ok => Status::Ok,
            WitStatus::Error => Status::error(bounded(description.unwrap_or_default())),
        };
        self.with_span("tracing.span.set-status", &span, |span| {
            span.set_status(status);
        })
    }

    async fn end(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<()> {
        let (table, scope) = (&mut *self.table, self.scope);
        traced_sync("tracing.span.end", self.service, || {
            let span = table
                .get_mut(&span)
                .map_err(|error| HostFault::table("tracing.span.end", error))?;
            span.end();
            scope.close(span.id);
            Ok(())
        })
    }

    async fn drop(&mut self, span: Resource<GuestSpan>) -> wasmtime::Result<()> {
        let mut span = self
            .table
            .delete(span)
            .map_err(|error| HostFault::table("tracing.span.drop", error))?;
        span.end();
        self.scope.close(span.id);
        Ok(())
    }
}
