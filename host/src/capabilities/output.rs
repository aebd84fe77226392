//! A guest's standard output and standard error (`wasi:cli/stdout`, `stderr`): cut
//! into lines and written to the host log like the guest's own log lines (tagged,
//! escaped, within the service's log budget). Writing never fails and never blocks,
//! so a chatty guest cannot trap or stall on its output; what exceeds the budget is
//! dropped and counted. The last lines of standard error are kept for the request's
//! fault record: a Rust guest's panic message is written there just before it traps.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::ServiceContext;
use super::log::{GuestLine, Source, emit};
use crate::bindings::log::Level;
use crate::platform::Platform;
use crate::protocol::RequestId;

/// Longest line kept; a longer one is cut there and the rest starts a new line.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// Standard-error lines kept for the fault record.
const TAIL_LINES: usize = 4;
/// What one write may carry (what `check-write` grants).
const WRITE_PERMIT: usize = 64 * 1024;

/// Where one of a guest's output streams goes: shared by every stream the guest
/// opens on it, for the life of the store (a reused instance serves several requests).
pub struct GuestOutput {
    sink: Arc<Sink>,
}

struct Sink {
    source: Source,
    service: Arc<ServiceContext>,
    platform: Arc<Platform>,
    state: Mutex<SinkState>,
}

struct SinkState {
    request_id: RequestId,
    partial: Vec<u8>,
    tail: VecDeque<String>,
}

impl GuestOutput {
    /// The standard output (`Source::Stdout`) or error (`Source::Stderr`) of an
    /// instance of `service`, serving `request_id` first.
    pub fn new(
        source: Source,
        service: Arc<ServiceContext>,
        platform: Arc<Platform>,
        request_id: RequestId,
    ) -> Self {
        Self {
            sink: Arc::new(Sink {
                source,
                service,
                platform,
                state: Mutex::new(SinkState {
                    request_id,
                    partial: Vec::new(),
                    tail: VecDeque::new(),
                }),
            }),
        }
    }

    /// Another handle on the same sink (one goes to WASI, one stays with the host).
    pub fn handle(&self) -> GuestOutput {
        GuestOutput {
            sink: self.sink.clone(),
        }
    }

    /// A reused instance starts serving `request_id`: what is left of the previous
    /// request's output is written out, and the fault tail starts empty.
    pub fn next_request(&self, request_id: RequestId) {
        self.finish();
        let mut state = self.sink.state.lock();
        state.request_id = request_id;
        state.tail.clear();
    }

    /// Write out an unfinished last line.
    pub fn finish(&self) {
        let (request_id, partial) = {
            let mut state = self.sink.state.lock();
            (state.request_id.clone(), std::mem::take(&mut state.partial))
        };
        if !partial.is_empty() {
            self.sink.line(&request_id, &partial);
        }
    }

    /// The last lines written, oldest first, joined with ` | ` (empty when none),
    /// with secret values masked.
    pub fn tail(&self) -> String {
        let state = self.sink.state.lock();
        let mut lines: Vec<&str> = state.tail.iter().map(String::as_str).collect();
        if !state.partial.is_empty() {
            lines.push("…");
        }
        let tail = lines.join(" | ");
        self.sink.platform.secrets.redactor().redact_owned(tail)
    }
}

impl Sink {
    fn write(&self, mut bytes: &[u8]) {
        let mut complete = Vec::new();
        let request_id = {
            let mut state = self.state.lock();
            while !bytes.is_empty() {
                let room = MAX_LINE_BYTES - state.partial.len();
                let (take, ends_line) = match bytes.iter().position(|b| *b == b'\n') {
                    Some(newline) if newline <= room => (newline + 1, true),
                    _ if bytes.len() >= room => (room, true),
                    _ => (bytes.len(), false),
                };
                state.partial.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if ends_line {
                    complete.push(std::mem::take(&mut state.partial));
                }
            }
            state.request_id.clone()
        };
        for line in complete {
            self.line(&request_id, &line);
        }
    }

    fn line(&self, request_id: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches(['\n', '\r']).to_owned();
        if self.source == Source::Stderr {
            let mut state = self.state.lock();
            if state.tail.len() == TAIL_LINES {
                state.tail.pop_front();
            }
            // Masked before it is cut, so no part of a secret is left at the cut.
            let masked = self.platform.secrets.redactor().redact(&text);
            state.tail.push_back(masked.chars().take(512).collect());
        }
        let level = match self.source {
            Source::Stderr => Level::Warn,
            _ => Level::Info,
        };
        let line = GuestLine {
            level,
            source: self.source,
            message: text,
            fields: &[],
        };
        emit(
            &self.service,
            &self.platform.telemetry.metrics,
            self.platform.secrets.redactor(),
            request_id,
            "",
            line,
        );
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.handle())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.handle())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.sink.write(bytes);
        std::task::Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
