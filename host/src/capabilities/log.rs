//! `shoal:platform/log`: guest log lines, tagged by the host with the service,
//! version, request id and trace id.

use std::fmt::Write as _;
use std::time::Instant;
use wasmtime::component::{HasData, Linker};

use super::{PlatformView, ServiceContext, bounded_text, traced};
use crate::bindings::log::{self, Host, Level};
use crate::policy::redact::Redactor;
use crate::telemetry::{Metrics, TraceScope, traces};

/// Longest message or field list the host keeps from one guest log line.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// What a log call sees: who is logging, for which request, in which trace.
pub struct LogView<'a> {
    /// The logging service.
    pub service: &'a ServiceContext,
    /// The request being served.
    pub request_id: &'a str,
    /// The request's spans (log lines carry the current trace id).
    pub trace: &'a TraceScope,
    /// Where dropped lines are counted.
    pub metrics: &'a Metrics,
    /// Masks secret values.
    pub redactor: &'a Redactor,
}

/// Where a guest's line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `shoal:platform/log` import.
    Log,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Log => "log",
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
        }
    }
}

/// One line a guest logged, before the host tags, bounds and escapes it.
pub struct GuestLine<'a> {
    /// Its level.
    pub level: Level,
    /// Where it came from.
    pub source: Source,
    /// The text.
    pub message: String,
    /// `key=value` fields.
    pub fields: &'a [(String, String)],
}

/// Write a guest's line to the host log, tagged with service, version, request and
/// trace, within the service's log budget (lines beyond it are dropped and counted
/// in `shoal_guest_log_lines_dropped_total`), with secret values masked. Never blocks
/// on the log's writer.
pub fn emit(
    service: &ServiceContext,
    metrics: &Metrics,
    redactor: &Redactor,
    request_id: &str,
    trace_id: &str,
    line: GuestLine<'_>,
) {
    let message = redactor.redact_owned(line.message);
    // Escaped first, then bounded: escaping may grow the text several times over.
    let message = bounded_text(escape_controls(&message), MAX_LINE_BYTES);
    let rendered = render_fields(redactor, line.fields);
    let allowed = service
        .log_budget
        .lock()
        .allow(message.len() + rendered.len(), Instant::now());
    if !allowed {
        if metrics.enabled() && !service.replay {
            metrics
                .guest_log_dropped
                .with_label_values(&[&*service.name])
                .inc();
        }
        return;
    }
    let service_name = &*service.name;
    let version = &*service.version;
    let source = line.source.name();
    service.logs.push(crate::telemetry::guest_logs::LogLine {
        seq: 0,
        at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        level: level_name(line.level),
        source,
        version: version.to_owned(),
        request_id: request_id.to_owned(),
        message: message.clone(),
        fields: rendered.clone(),
    });
    if service.replay {
        // A replay's lines are its own (its report shows them), not the service's.
        return;
    }
    macro_rules! event {
        ($level:expr) => {
            ::tracing::event!(
                target: "guest",
                $level,
                service = service_name,
                version,
                request_id,
                trace_id,
                source,
                fields = %rendered,
                "{message}"
            )
        };
    }
    match line.level {
        Level::Trace => event!(::tracing::Level::TRACE),
        Level::Debug => event!(::tracing::Level::DEBUG),
        Level::Info => event!(::tracing::Level::INFO),
        Level::Warn => event!(::tracing::Level::WARN),
        Level::Error => event!(::tracing::Level::ERROR),
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

struct HasLog;

impl HasData for HasLog {
    type Data<'a> = LogView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, HasLog>(linker, |state| {
        let ctx = state.platform().ctx;
        LogView {
            service: &ctx.service,
            request_id: &ctx.request_id,
            trace: &ctx.trace,
            metrics: &ctx.platform.telemetry.metrics,
            redactor: ctx.platform.secrets.redactor(),
        }
    })
}

/// `text` with control characters (newlines, escape sequences) written as escapes, so
/// a guest's line can never forge a host log line or drive a terminal.
pub(crate) fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// `key="value"` pairs, bounded, with control characters escaped.
fn render_fields(redactor: &Redactor, fields: &[(String, String)]) -> String {
    let mut rendered = String::new();
    for (key, value) in fields {
        if rendered.len() > MAX_LINE_BYTES {
            rendered.push_str(" …");
            break;
        }
        if !rendered.is_empty() {
            rendered.push(' ');
        }
        let key = redactor.redact(key);
        let value = redactor.redact(value);
        let _ = write!(rendered, "{}={value:?}", escape_controls(&key));
    }
    bounded_text(rendered, MAX_LINE_BYTES)
}

impl Host for LogView<'_> {
    async fn write(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        traced("log.write", &self.service.name, async {
            let trace_id = traces::trace_id(&self.trace.current()).unwrap_or_default();
            let line = GuestLine {
                level,
                source: Source::Log,
                message,
                fields: &fields,
            };
            emit(
                self.service,
                self.metrics,
                self.redactor,
                self.request_id,
                &trace_id,
                line,
            );
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines() {
        assert_eq!(
            escape_controls("a\nERROR forged\u{1b}[2J"),
            "a\\nERROR forged\\u{1b}[2J"
        );
        assert_eq!(escape_controls("plain é"), "plain é");
        let fields = vec![("k\nx".to_owned(), "v\nw".to_owned())];
        assert!(!render_fields(&Redactor::default(), &fields).contains('\n'));
    }

    #[test]
    fn fields_are_rendered_and_bounded() {
        let none = Redactor::default();
        let fields = vec![("a".to_owned(), "1".to_owned()), ("b".into(), "x y".into())];
        assert_eq!(render_fields(&none, &fields), "a=\"1\" b=\"x y\"");
        let many: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("k{i}"), "v".repeat(10)))
            .collect();
        assert!(render_fields(&none, &many).len() <= MAX_LINE_BYTES + '…'.len_utf8());
    }

    #[test]
    fn secret_values_in_fields_are_masked_before_quoting() {
        let redactor = Redactor::default();
        redactor.set_values(["pa\"ss-word-1"]);
        let fields = vec![("password".to_owned(), "x pa\"ss-word-1".to_owned())];
        assert_eq!(
            render_fields(&redactor, &fields),
            "password=\"x [redacted]\""
        );
    }
}
