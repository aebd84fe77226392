//! The host's own log: `tracing` events to stderr through a non-blocking, lossy
//! writer. A slow or stopped reader of stderr never stalls a runtime worker (or a
//! guest's log call): lines it cannot take are dropped and counted, and
//! `/metrics` reports them as `shoal_log_lines_dropped_total`. Every line passes the
//! process's [`Redactor`] on its way out, so no secret value reaches the log.

use std::sync::{Arc, OnceLock};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::policy::redact::Redactor;

/// Lines buffered for the writer thread before new ones are dropped (a guest line is
/// at most about 16 KiB, so the buffer stays within a few MiB).
const BUFFERED_LINES: usize = 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log to stderr from now on. `SHOAL_LOG` takes a `tracing` filter (default `info`);
/// `SHOAL_LOG_FORMAT=json` writes one JSON object per line. Keep the returned guard
/// alive: dropping it flushes what is buffered.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("shoal-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Masking {
            inner: writer,
            redactor: Redactor::process(),
        })
        .with_ansi(ansi);
    if std::env::var("SHOAL_LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

/// Lines dropped so far because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// The log's writer, masking secret values. The formatter hands it one whole event
/// per write, so a value is never split between two writes.
#[derive(Clone)]
struct Masking {
    inner: NonBlocking,
    redactor: Arc<Redactor>,
}

impl std::io::Write for Masking {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let masked = self.redactor.redact_bytes(bytes);
        self.inner.write_all(&masked)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<'a> MakeWriter<'a> for Masking {
    type Writer = Masking;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
