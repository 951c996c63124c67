//! Logging for every long-running subcommand: one line per event, values in
//! their human form, outside text escaped so it cannot forge a line or reach
//! the terminal as an escape sequence, colours only on a terminal, and a JSON
//! form for log collectors.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human line per event: time, level, target, message, `key=value`.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flags every long-running subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LogArgs {
    /// Log filter, e.g. info, debug, cloudproxy_transport=debug. When given
    /// it wins over RUST_LOG, which is only read when --log is not given.
    /// Default: info (error for demo).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Log line format: text (one human line per event) or json (one object
    /// per line, for log collectors). Both go to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
}

impl LogArgs {
    /// Installs the logger: `--log`, else `RUST_LOG`, else `default`.
    /// The error names the filter that does not parse.
    pub(crate) fn init(&self, default: &str) -> Result<(), String> {
        let env = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let (source, text) = match (&self.log, env) {
            (Some(flag), _) => ("--log", flag.clone()),
            (None, Some(env)) => ("RUST_LOG", env),
            (None, None) => ("the default filter", default.to_owned()),
        };
        let filter = EnvFilter::try_new(&text)
            .map_err(|e| format!("{source}: {e} (in the filter {text:?})"))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Text => builder
                .with_ansi(std::io::stderr().is_terminal())
                .fmt_fields(EscapedFields)
                .try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        Ok(())
    }
}

/// Formats an event's fields and message on one line: `message key=value …`.
/// Every value is escaped (see [`escape_into`]), whatever the log site wrote,
/// so no log site can forget; values with spaces, quotes or `=` are quoted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        let name = field.name();
        // Metadata of events that came from the `log` crate, already printed.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let mut line = String::with_capacity(name.len() + value.len() + 4);
        if !self.first {
            line.push(' ');
        }
        self.first = false;
        if name == "message" {
            escape_into(&mut line, value);
        } else {
            line.push_str(name);
            line.push('=');
            quote_into(&mut line, value);
        }
        self.result = self.writer.write_str(&line);
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its causes on one line, each cause once.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                let _ = write!(text, ": {cause_text}");
            }
            source = cause.source();
        }
        self.write(field, &text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` arrives here as its Display form, `?value` as Debug.
        self.write(field, &format!("{value:?}"));
    }
}

/// Appends `value` with every character that could end a line, move the
/// cursor or start a terminal escape sequence written as a visible escape:
/// `\n`, `\r`, `\t`, `\\`, and `\u{..}` for any other control character
/// (C0, DEL, C1, so ESC is `\u{1b}`) and the Unicode line and paragraph
/// separators.
pub(crate) fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Appends `value` escaped, in double quotes when it is empty or holds a
/// space, a quote or `=` (so `key=value` pairs always split the same way).
fn quote_into(out: &mut String, value: &str) {
    let quote = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=');
    if quote {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push_str("\\\"");
            } else {
                let mut buf = [0u8; 4];
                escape_into(out, c.encode_utf8(&mut buf));
            }
        }
        out.push('"');
    } else {
        escape_into(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        let mut out = String::new();
        escape_into(&mut out, value);
        out
    }

    fn quoted(value: &str) -> String {
        let mut out = String::new();
        quote_into(&mut out, value);
        out
    }

    #[test]
    fn control_characters_are_visible_escapes() {
        assert_eq!(
            escaped("a\nb\rc\td\u{1b}[31me\u{7f}\u{85}\u{2028}\\"),
            "a\\nb\\rc\\td\\u{1b}[31me\\u{7f}\\u{85}\\u{2028}\\\\"
        );
        assert_eq!(escaped("media.example:443"), "media.example:443");
    }

    #[test]
    fn values_with_spaces_quotes_or_equals_are_quoted() {
        assert_eq!(quoted("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(quoted("idle timeout"), "\"idle timeout\"");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        assert_eq!(quoted("x\n y"), "\"x\\n y\"");
    }

    #[test]
    fn an_event_is_one_line_whatever_its_fields_hold() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .with_writer(move || writer.clone())
            .finish();
        let forged = "x\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m";
        let error = std::io::Error::other(forged);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(destination = %forged, name = forged, error = &error as &dyn std::error::Error, "connect {forged} failed");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("destination=\"x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m\""),
            "{text}"
        );
    }
}
