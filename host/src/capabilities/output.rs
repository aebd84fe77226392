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
use crate::policy::redact::Redactor;
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
    lines: LineCutter,
    tail: VecDeque<String>,
}

/// Cuts a stream of bytes into lines: at each newline, and a line that runs past
/// [`MAX_LINE_BYTES`] into pieces. A line without its end is cut only once it is a
/// line long plus the longest secret value, and never inside a value, so no value
/// is logged in two unmasked halves.
#[derive(Default)]
struct LineCutter {
    partial: Vec<u8>,
}

impl LineCutter {
    /// The lines `bytes` complete.
    fn push(&mut self, bytes: &[u8], redactor: &Redactor) -> Vec<Vec<u8>> {
        let look_ahead = redactor.longest().saturating_sub(1);
        let mut complete = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let take = rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |newline| newline + 1);
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.ends_with(b"\n") {
                let line = std::mem::take(&mut self.partial);
                cut_lines(redactor, line, None, &mut complete);
            } else if self.partial.len() >= MAX_LINE_BYTES + look_ahead {
                let line = std::mem::take(&mut self.partial);
                self.partial = cut_lines(redactor, line, Some(look_ahead), &mut complete);
            }
        }
        complete
    }

    /// The unfinished last line, in pieces.
    fn finish(&mut self, redactor: &Redactor) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let partial = std::mem::take(&mut self.partial);
        if !partial.is_empty() {
            cut_lines(redactor, partial, None, &mut lines);
        }
        lines
    }

    fn is_unfinished(&self) -> bool {
        !self.partial.is_empty()
    }
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
                    lines: LineCutter::default(),
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
        let redactor = self.sink.platform.secrets.redactor();
        let (request_id, lines) = {
            let mut state = self.sink.state.lock();
            (state.request_id.clone(), state.lines.finish(redactor))
        };
        for line in lines {
            self.sink.line(&request_id, &line);
        }
    }

    /// The last lines written, oldest first, joined with ` | ` (empty when none),
    /// with secret values masked.
    pub fn tail(&self) -> String {
        let state = self.sink.state.lock();
        let mut lines: Vec<&str> = state.tail.iter().map(String::as_str).collect();
        if state.lines.is_unfinished() {
            lines.push("…");
        }
        let tail = lines.join(" | ");
        self.sink.platform.secrets.redactor().redact_owned(tail)
    }
}

impl Sink {
    fn write(&self, bytes: &[u8]) {
        let redactor = self.platform.secrets.redactor();
        let (request_id, complete) = {
            let mut state = self.state.lock();
            let complete = state.lines.push(bytes, redactor);
            (state.request_id.clone(), complete)
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

/// Cut `line` into pieces of at most [`MAX_LINE_BYTES`] (its newline aside), never
/// inside a secret value (a piece is longer only where one value is), into `lines`.
/// A line still being written (`look_ahead: Some(n)`) is cut only while at least `n`
/// bytes follow the cut, enough to hold the rest of any value that runs across it;
/// the unfinished rest is answered. A finished line (`None`) is cut whole.
fn cut_lines(
    redactor: &Redactor,
    mut line: Vec<u8>,
    look_ahead: Option<usize>,
    lines: &mut Vec<Vec<u8>>,
) -> Vec<u8> {
    let ready = |line: &[u8]| match look_ahead {
        Some(ahead) => line.len() >= MAX_LINE_BYTES + ahead,
        None => line.strip_suffix(b"\n").unwrap_or(line).len() > MAX_LINE_BYTES,
    };
    while ready(&line) {
        let cut = redactor.cut_point(&line, MAX_LINE_BYTES);
        let rest = line.split_off(cut);
        lines.push(std::mem::replace(&mut line, rest));
    }
    if look_ahead.is_some() {
        return line;
    }
    if !line.is_empty() {
        lines.push(line);
    }
    Vec::new()
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "AAAA-the-secret-value-ZZZZ";

    /// Every piece `cutter` makes of `input` written in `chunk`-byte writes.
    fn pieces(redactor: &Redactor, input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut cutter = LineCutter::default();
        let mut lines = Vec::new();
        for part in input.chunks(chunk) {
            lines.extend(cutter.push(part, redactor));
        }
        lines.extend(cutter.finish(redactor));
        lines
    }

    #[test]
    fn a_secret_across_the_cut_of_a_long_line_is_masked_whole() {
        let redactor = Redactor::default();
        redactor.set_values([SECRET]);
        for offset in [
            MAX_LINE_BYTES - 10,
            MAX_LINE_BYTES - 1,
            MAX_LINE_BYTES - SECRET.len(),
            MAX_LINE_BYTES,
        ] {
            let mut input = vec![b'x'; offset];
            input.extend_from_slice(SECRET.as_bytes());
            input.extend_from_slice(&vec![b'y'; 3 * MAX_LINE_BYTES]);
            input.push(b'\n');
            for chunk in [1, 7, 4096, 64 * 1024] {
                let lines = pieces(&redactor, &input, chunk);
                assert_eq!(lines.concat(), input, "nothing lost");
                for line in &lines {
                    assert!(line.len() <= MAX_LINE_BYTES + 1, "{}", line.len());
                    let masked = redactor.redact_bytes(line);
                    let text = String::from_utf8_lossy(&masked);
                    assert!(
                        !text.contains("AAAA") && !text.contains("ZZZZ"),
                        "offset {offset}, chunk {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn lines_are_cut_as_before_without_secrets() {
        let redactor = Redactor::default();
        let mut input = vec![b'x'; MAX_LINE_BYTES];
        input.extend_from_slice(b"\nshort\n");
        input.extend_from_slice(&vec![b'z'; MAX_LINE_BYTES + 5]);
        let lines = pieces(&redactor, &input, 1000);
        let lengths: Vec<usize> = lines.iter().map(Vec::len).collect();
        assert_eq!(lengths, [MAX_LINE_BYTES + 1, 6, MAX_LINE_BYTES, 5]);
    }
}
