//! `shoal:platform/log`: guest log lines, tagged by the host with the service,
//! version, request id and trace id.

use std::fmt::Write as _;
use wasmtime::component::{HasData, Linker};

use super::{PlatformView, ServiceContext, bounded_text, traced};
use crate::bindings::log::{self, Host, Level};
use crate::telemetry::{TraceScope, traces};

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
        }
    })
}

/// `text` with control characters (newlines, escape sequences) written as escapes, so
/// a guest's line can never forge a host log line or drive a terminal.
fn escape_controls(text: &str) -> String {
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
fn render_fields(fields: &[(String, String)]) -> String {
    let mut rendered = String::new();
    for (key, value) in fields {
        if rendered.len() > MAX_LINE_BYTES {
            rendered.push_str(" …");
            break;
        }
        if !rendered.is_empty() {
            rendered.push(' ');
        }
        let _ = write!(rendered, "{}={value:?}", escape_controls(key));
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
        let service = &*self.service.name;
        traced("log.write", service, async {
            let message = escape_controls(&bounded_text(message, MAX_LINE_BYTES));
            let rendered = render_fields(&fields);
            let version = &*self.service.version;
            let request_id = self.request_id;
            let trace_id = traces::trace_id(&self.trace.current()).unwrap_or_default();
            macro_rules! emit {
                ($level:expr) => {
                    ::tracing::event!(
                        target: "guest",
                        $level,
                        service,
                        version,
                        request_id,
                        trace_id,
                        fields = %rendered,
                        "{message}"
                    )
                };
            }
            match level {
                Level::Trace => emit!(::tracing::Level::TRACE),
                Level::Debug => emit!(::tracing::Level::DEBUG),
                Level::Info => emit!(::tracing::Level::INFO),
                Level::Warn => emit!(::tracing::Level::WARN),
                Level::Error => emit!(::tracing::Level::ERROR),
            }
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
        assert!(!render_fields(&fields).contains('\n'));
    }

    #[test]
    fn fields_are_rendered_and_bounded() {
        let fields = vec![("a".to_owned(), "1".to_owned()), ("b".into(), "x y".into())];
        assert_eq!(render_fields(&fields), "a=\"1\" b=\"x y\"");
        let many: Vec<(String, String)> = (0..10_000)
            .map(|i| (format!("k{i}"), "v".repeat(10)))
            .collect();
        assert!(render_fields(&many).len() <= MAX_LINE_BYTES + '…'.len_utf8());
    }
}
