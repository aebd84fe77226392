//! A real OTLP/HTTP trace receiver: accepts `POST /v1/traces` with protobuf bodies,
//! decodes them with the OpenTelemetry protobuf definitions, and keeps every span.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
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
}

/// A running receiver.
pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
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
    /// Listen on a free loopback port.
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let sink = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
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
                                        .and_then(|r| {
                                            r.attributes.iter().find(|a| a.key == "service.name")
                                        })
                                        .map(|a| value_text(&a.value))
                                        .unwrap_or_default();
                                    for scope in resource.scope_spans {
                                        for span in scope.spans {
                                            received.push(ReceivedSpan {
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
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        OtlpReceiver { endpoint, spans }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
