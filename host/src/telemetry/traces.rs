//! OpenTelemetry traces: one tracer for the host, W3C `traceparent`/`tracestate`
//! extracted from inbound requests and injected into outbound calls, OTLP/HTTP export
//! configured by the standard `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME`
//! variables. Nothing is exported unless an endpoint is set. An `https://` endpoint
//! is verified against the public roots, or against the PEM file named by
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (or `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`).
//! Every exported span passes the process's [`Redactor`] first.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanProcessor};
use std::borrow::Cow;
use std::sync::Arc;

use crate::policy::redact::Redactor;

/// The host's tracer and propagator.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    propagator: TraceContextPropagator,
    exporting: bool,
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

impl Tracing {
    /// Spans are always made when `enabled` (trace ids appear in logs and are readable
    /// by guests); they are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub fn from_env(enabled: bool) -> anyhow::Result<Self> {
        let propagator = TraceContextPropagator::new();
        if !enabled {
            return Ok(Self {
                provider: None,
                tracer: None,
                propagator,
                exporting: false,
            });
        }
        let endpoint_set = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
        let service_name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "shoal".to_owned());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if endpoint_set {
            use opentelemetry_otlp::WithHttpConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(otlp_http_client()?)
                .build()
                .map_err(|error| anyhow::anyhow!("configuring the OTLP exporter: {error}"))?;
            let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
            builder = builder.with_span_processor(Masked {
                next: batch,
                redactor: Redactor::process(),
            });
        }
        let provider = builder.build();
        let tracer = provider.tracer("shoal");
        Ok(Self {
            provider: Some(provider),
            tracer: Some(tracer),
            propagator,
            exporting: endpoint_set,
        })
    }

    /// Whether spans leave the host.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// The trace context in `headers` (an invalid `traceparent` is ignored: the
    /// request starts a new trace).
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Write `cx`'s trace context into `headers`.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        if cx.span().span_context().is_valid() {
            self.propagator
                .inject_context(cx, &mut HeaderInjector(headers));
        }
    }

    /// Start a span under `parent` and return the context that holds it. When tracing
    /// is off, returns `parent` unchanged.
    pub fn start(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let Some(tracer) = &self.tracer else {
            return parent.clone();
        };
        if !self.exporting {
            return non_recording_child(parent);
        }
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        parent.with_span(span)
    }

    /// Like [`Tracing::start`], building the name and attributes only when the span
    /// is recorded (saves allocations on every request when nothing is exported).
    pub fn start_with(
        &self,
        kind: SpanKind,
        parent: &Context,
        make: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> Context {
        if self.tracer.is_none() {
            return parent.clone();
        }
        if !self.exporting {
            return non_recording_child(parent);
        }
        let (name, attributes) = make();
        self.start(name, kind, parent, attributes)
    }

    /// Flush and stop exporting (on shutdown).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// The HTTP client of the OTLP exporter: rustls over the public roots plus the CA of
/// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, with `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`
/// (milliseconds, default 10 s). Built on its own thread: a blocking client may not
/// be made inside the async runtime.
fn otlp_http_client() -> anyhow::Result<reqwest::blocking::Client> {
    use anyhow::Context as _;
    let setting = |name: &str| {
        [
            format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
            format!("OTEL_EXPORTER_OTLP_{name}"),
        ]
        .into_iter()
        .find_map(|key| {
            std::env::var(key)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })
    };
    let timeout_ms = match setting("TIMEOUT") {
        Some(text) => text
            .trim()
            .parse::<u64>()
            .with_context(|| format!("OTEL_EXPORTER_OTLP_TIMEOUT `{text}` is not milliseconds"))?,
        None => 10_000,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = setting("CERTIFICATE") {
        let pem =
            std::fs::read(&path).with_context(|| format!("reading the OTLP CA file {path}"))?;
        let mut added = 0;
        for certificate in rustls_pki_types_certs(&pem) {
            roots
                .add(certificate?)
                .with_context(|| format!("the OTLP CA file {path} holds a bad certificate"))?;
            added += 1;
        }
        anyhow::ensure!(
            added > 0,
            "the OTLP CA file {path} holds no PEM certificate"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS settings for OTLP")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_millis(timeout_ms))
            .tls_backend_preconfigured(tls)
            .build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
    .context("building the OTLP HTTP client")
}

fn rustls_pki_types_certs(
    pem: &[u8],
) -> impl Iterator<Item = anyhow::Result<rustls::pki_types::CertificateDer<'static>>> + '_ {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|certificate| certificate.map_err(|error| anyhow::anyhow!("reading PEM: {error}")))
}

/// Masks secret values in a finished span (its name, attributes, events and status)
/// before handing it to the exporting processor.
#[derive(Debug)]
struct Masked<P> {
    next: P,
    redactor: Arc<Redactor>,
}

fn mask_attributes(redactor: &Redactor, attributes: &mut [KeyValue]) {
    for attribute in attributes {
        if let opentelemetry::Value::String(text) = &attribute.value
            && let Cow::Owned(masked) = redactor.redact(text.as_str())
        {
            attribute.value = opentelemetry::Value::String(masked.into());
        }
    }
}

fn mask_cow(redactor: &Redactor, text: &mut Cow<'static, str>) {
    if let Cow::Owned(masked) = redactor.redact(text) {
        *text = Cow::Owned(masked);
    }
}

impl<P: SpanProcessor> SpanProcessor for Masked<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.next.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        mask_cow(&self.redactor, &mut span.name);
        mask_attributes(&self.redactor, &mut span.attributes);
        for event in &mut span.events.events {
            mask_cow(&self.redactor, &mut event.name);
            mask_attributes(&self.redactor, &mut event.attributes);
        }
        if let opentelemetry::trace::Status::Error { description } = &mut span.status {
            mask_cow(&self.redactor, description);
        }
        self.next.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.next.force_flush()
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.next.set_resource(resource);
    }
}

/// A child span context that records nothing: the parent's trace id (or a new one)
/// and a fresh span id, so propagation, logs and guests see real ids at the cost of
/// two random numbers.
fn non_recording_child(parent: &Context) -> Context {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let parent_context = parent.span().span_context().clone();
    let (trace_id, flags, state) = if parent_context.is_valid() {
        (
            parent_context.trace_id(),
            parent_context.trace_flags(),
            parent_context.trace_state().clone(),
        )
    } else {
        (
            TraceId::from(rand::random::<u128>().max(1)),
            TraceFlags::default(),
            TraceState::default(),
        )
    };
    let span_id = SpanId::from(rand::random::<u64>().max(1));
    parent.with_remote_span_context(SpanContext::new(trace_id, span_id, flags, false, state))
}

/// OpenTelemetry's RPC attributes of a gRPC call of `method` of `service`.
pub fn rpc_attributes(service: &str, method: &str) -> [KeyValue; 3] {
    [
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
    ]
}

/// Whether spans are being exported (callers skip building attributes otherwise).
pub fn is_recording(cx: &Context) -> bool {
    cx.span().is_recording()
}

/// The trace id of `cx`'s span, as 32 hex digits, when there is one.
pub fn trace_id(cx: &Context) -> Option<String> {
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The span id of `cx`'s span, as 16 hex digits, when there is one.
pub fn span_id(cx: &Context) -> Option<String> {
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.span_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_and_invalid_ones_ignored() {
        let tracing = Tracing::from_env(true).expect("tracing");
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let parent = tracing.extract(&headers);
        let child = tracing.start("child", SpanKind::Server, &parent, vec![]);
        assert_eq!(
            trace_id(&child).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut out = HeaderMap::new();
        tracing.inject(&child, &mut out);
        let injected = out
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            injected.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{injected}"
        );
        assert!(
            !injected.contains("00f067aa0ba902b7"),
            "the child has its own span id"
        );

        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-xyz",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", HeaderValue::from_static(bad));
            let root = tracing.start("root", SpanKind::Server, &tracing.extract(&headers), vec![]);
            let id = trace_id(&root).expect("a new trace");
            assert_ne!(id, "00000000000000000000000000000000");
        }
    }

    #[test]
    fn disabled_tracing_makes_no_spans() {
        let tracing = Tracing::from_env(false).expect("tracing");
        let cx = tracing.start("x", SpanKind::Server, &Context::new(), vec![]);
        assert_eq!(trace_id(&cx), None);
    }
}
