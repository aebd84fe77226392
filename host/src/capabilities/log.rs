//! `shoal:platform/log`: guest log lines, tagged by the host.

use crate::bindings::log::{Host, Level};
use crate::runtime::GuestState;
use std::fmt::Write as _;

/// Longest message or field list the host keeps from one guest log line.
const MAX_LINE_BYTES: usize = 8 * 1024;

impl Host for GuestState {
    async fn write(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let message = truncate(message);
        let mut rendered = String::new();
        for (key, value) in &fields {
            if rendered.len() > MAX_LINE_BYTES {
                rendered.push_str(" …");
                break;
            }
            if !rendered.is_empty() {
                rendered.push(' ');
            }
            let _ = write!(rendered, "{key}={value:?}");
        }
        let rendered = truncate(rendered);
        let service = &*self.service.name;
        let version = &*self.service.version;
        let request_id = &*self.request_id;
        let trace_id =
            crate::telemetry::traces::trace_id(&self.trace.current()).unwrap_or_default();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
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
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_a_char_boundary() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = truncate(long);
        assert!(cut.len() <= MAX_LINE_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn short_lines_are_untouched() {
        assert_eq!(truncate("hi".into()), "hi");
    }
}
