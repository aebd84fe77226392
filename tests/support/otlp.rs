//! A real OTLP/HTTP trace receiver (plain or TLS): accepts `POST /v1/traces` with
//! protobuf bodies,
//! decodes them with the OpenTelemetry protobuf definitions, and keeps every span.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    pub service_name: String,
    /// The status: its code (0 unset, 1 ok, 2 error) and message.
    pub status: (i32, String),
    /// Everything received about the span (events included), as debug text.
    pub everything: String,
}

/// A running receiver.
pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    failed_handshakes: Arc<std::sync::atomic::AtomicUsize>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl OtlpReceiver {
    /// Listen on a free loopback port, plain HTTP.
    pub fn start() -> OtlpReceiver {
        Self::listen(None)
    }

    /// Listen on a free loopback port, HTTPS with the PEM certificate chain and key
    /// given (a collector behind TLS).
    pub fn start_tls(cert: &Path, key: &Path) -> OtlpReceiver {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        Self::listen(Some(Arc::new(config)))
    }

    fn listen(tls: Option<Arc<rustls::ServerConfig>>) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", listener.local_addr().expect("addr"));
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let failed_handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sink = spans.clone();
        let failed = failed_handshakes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let sink = sink.clone();
                let tls = tls.clone();
                let failed = failed.clone();
                std::thread::spawn(move || match tls {
                    None => serve(stream, &sink),
                    Some(config) => {
                        let Ok(mut connection) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        while connection.is_handshaking() {
                            if connection.complete_io(&mut stream).is_err() {
                                failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return;
                            }
                        }
                        serve(rustls::StreamOwned::new(connection, stream), &sink);
                    }
                });
            }
        });
        OtlpReceiver {
            endpoint,
            spans,
            failed_handshakes,
        }
    }

    /// TLS connections whose handshake failed (a client that did not trust the
    /// receiver's certificate, for one).
    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Answer export requests on one connection until it closes.
fn serve(stream: impl Read + Write, sink: &Mutex<Vec<ReceivedSpan>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = match ExportTraceServiceRequest::decode(&body[..]) {
            Ok(request) => {
                let mut received = Vec::new();
                for resource in request.resource_spans {
                    let service_name = resource
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .map(|a| value_text(&a.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let everything = format!("{span:?}");
                            received.push(ReceivedSpan {
                                everything,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                                name: span.name.clone(),
                                kind: span.kind,
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), value_text(&a.value)))
                                    .collect(),
                                service_name: service_name.clone(),
                                status: span
                                    .status
                                    .as_ref()
                                    .map(|s| (s.code, s.message.clone()))
                                    .unwrap_or_default(),
                            });
                        }
                    }
                }
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(received);
                "200 OK"
            }
            Err(_) => "400 Bad Request",
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err()
            || reader.get_mut().flush().is_err()
        {
            return;
        }
    }
}
