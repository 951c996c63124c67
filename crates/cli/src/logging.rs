//! Logging for every long-running subcommand: one line per event, values in
//! their human form, outside text escaped so it cannot forge a line or reach
//! the terminal as an escape sequence, colours only on a terminal, and a JSON
//! form for log collectors.
//!
//! Other crates' events (rustls, hyper, hickory, …) often describe what an
//! unauthenticated peer sent, so none of them can flood the log: the
//! filter's default level reaches them at most at `warn` unless the filter
//! names them, and each one that gets through takes from the log budget
//! the node's refusal lines take from ([`LogBudget`]) and is cut to
//! [`FOREIGN_LINE_MAX`] bytes.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use cloudproxy_server::LogBudget;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Where this program's own events come from: its crates are
/// `cloudproxy` (the command) and `cloudproxy_*`.
const OWN_TARGETS: &str = "cloudproxy";

/// The most verbose level another crate logs at when the filter does not
/// name it.
const FOREIGN_LEVEL_CAP: LevelFilter = LevelFilter::WARN;

/// Bytes of one line from another crate at most (text format); a JSON line
/// keeps each of its values to [`FOREIGN_VALUE_MAX`] characters instead.
pub(crate) const FOREIGN_LINE_MAX: usize = 1024;

/// Characters of one value of another crate's JSON line at most.
const FOREIGN_VALUE_MAX: usize = 512;

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
    /// Installs the logger: `--log`, else `RUST_LOG`, else `default`, with
    /// other crates capped ([`cap_other_crates`]); their events take from
    /// `budget` (share the node's to hold both to one budget). The error
    /// names the filter that does not parse.
    pub(crate) fn init(&self, default: &str, budget: LogBudget) -> Result<(), String> {
        let env = std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let (source, text) = match (&self.log, env) {
            (Some(flag), _) => ("--log", flag.clone()),
            (None, Some(env)) => ("RUST_LOG", env),
            (None, None) => ("the default filter", default.to_owned()),
        };
        let error = |e: &dyn fmt::Display| format!("{source}: {e} (in the filter {text:?})");
        EnvFilter::try_new(&text).map_err(|e| error(&e))?;
        let (capped, named) = cap_other_crates(&text);
        let filter = EnvFilter::try_new(&capped).map_err(|e| error(&e))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Text => builder
                .with_ansi(std::io::stderr().is_terminal())
                .fmt_fields(EscapedFields)
                .event_format(Guarded {
                    inner: tracing_subscriber::fmt::format(),
                    budget,
                    named,
                    json: false,
                })
                .try_init(),
            LogFormat::Json => builder
                .json()
                .event_format(Guarded {
                    inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                    budget,
                    named,
                    json: true,
                })
                .try_init(),
        };
        Ok(())
    }
}

/// The filter `text` with its default level (a directive that is only a
/// level) applied as given to this program's crates and at most at `warn`
/// to every other crate, and the other crates' targets it names (which
/// keep the level it gives them, and are not held to the log budget): an
/// operator who asks for `debug` gets this program's debug lines, not
/// rustls's; one who asks for `rustls=debug` gets rustls's.
pub(crate) fn cap_other_crates(text: &str) -> (String, Vec<String>) {
    let mut directives = Vec::new();
    let mut named = Vec::new();
    for directive in split_directives(text) {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        if let Ok(level) = directive.parse::<LevelFilter>() {
            directives.push(format!("{OWN_TARGETS}={level}"));
            directives.push(level.min(FOREIGN_LEVEL_CAP).to_string());
            continue;
        }
        let target = directive
            .split(['[', '='])
            .next()
            .unwrap_or_default()
            .trim();
        if !target.is_empty() && !target.starts_with(OWN_TARGETS) {
            named.push(target.to_owned());
        }
        directives.push(directive.to_owned());
    }
    (directives.join(","), named)
}

/// The directives of a filter: split at commas outside `[...]` and `{...}`
/// (a span's field list may hold commas).
fn split_directives(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The event formatter: this program's events as `inner` formats them;
/// another crate's, unless the filter named it, only within the log budget
/// and cut to [`FOREIGN_LINE_MAX`] bytes (JSON: each value to
/// [`FOREIGN_VALUE_MAX`] characters), without colours.
struct Guarded<F> {
    inner: F,
    budget: LogBudget,
    /// Other crates' targets the filter names.
    named: Vec<String>,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for Guarded<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let target = event.metadata().target();
        if target.starts_with(OWN_TARGETS)
            || self.named.iter().any(|n| target.starts_with(n.as_str()))
        {
            return self.inner.format_event(ctx, writer, event);
        }
        // Over the budget: nothing is written (the fmt layer then writes
        // an empty line buffer, which is no line at all).
        let Some(suppressed) = self.budget.admit() else {
            return Ok(());
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let bounded = if self.json {
            bound_json_line(&line, suppressed)
        } else {
            bound_text_line(&line, suppressed)
        };
        writer.write_str(&bounded)
    }
}

/// A text line of another crate cut to [`FOREIGN_LINE_MAX`] bytes, saying
/// how much was cut and how many such lines the budget suppressed before.
pub(crate) fn bound_text_line(line: &str, suppressed: u64) -> String {
    let line = line.trim_end_matches('\n');
    let mut out = String::with_capacity(line.len().min(FOREIGN_LINE_MAX) + 64);
    if line.len() <= FOREIGN_LINE_MAX {
        out.push_str(line);
    } else {
        let mut at = FOREIGN_LINE_MAX;
        while !line.is_char_boundary(at) {
            at -= 1;
        }
        let _ = write!(out, "{}… ({} more bytes)", &line[..at], line.len() - at);
    }
    if suppressed > 0 {
        let _ = write!(
            out,
            " ({suppressed} similar lines suppressed before this one)"
        );
    }
    out.push('\n');
    out
}

/// A JSON line of another crate with each string value cut to
/// [`FOREIGN_VALUE_MAX`] characters, and `suppressed` added when lines were.
fn bound_json_line(line: &str, suppressed: u64) -> String {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(line.trim_end()) else {
        // Not what the JSON formatter writes; keep it short at least.
        return bound_text_line(line, suppressed);
    };
    for value in object.values_mut() {
        if let serde_json::Value::String(text) = value {
            if let Some((at, _)) = text.char_indices().nth(FOREIGN_VALUE_MAX) {
                let more = text.len() - at;
                text.truncate(at);
                let _ = write!(text, "… ({more} more bytes)");
            }
        }
    }
    if suppressed > 0 {
        object.insert("suppressed".to_owned(), suppressed.into());
    }
    let mut out = serde_json::Value::Object(object).to_string();
    out.push('\n');
    out
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

    /// What a test subscriber writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

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
    fn the_default_level_reaches_other_crates_at_most_at_warn() {
        let (filter, named) = cap_other_crates("info");
        assert_eq!(filter, "cloudproxy=info,warn");
        assert!(named.is_empty());
        let (filter, _) = cap_other_crates("debug");
        assert_eq!(filter, "cloudproxy=debug,warn");
        let (filter, _) = cap_other_crates("error");
        assert_eq!(filter, "cloudproxy=error,error");
        // A crate the operator names keeps its level, and is named.
        let (filter, named) = cap_other_crates(
            "info, rustls=debug,cloudproxy_transport=trace,h2[conn{id=1,b=2}]=info",
        );
        assert_eq!(
            filter,
            "cloudproxy=info,warn,rustls=debug,cloudproxy_transport=trace,h2[conn{id=1,b=2}]=info"
        );
        assert_eq!(named, ["rustls", "h2"]);
        for (text, _) in [("info", 0), ("debug,rustls=trace", 0)] {
            let (filter, _) = cap_other_crates(text);
            assert!(EnvFilter::try_new(&filter).is_ok(), "{filter}");
        }
    }

    #[test]
    fn another_crates_lines_are_cut_and_say_so() {
        let long = format!(
            "2026-01-01T00:00:00Z  WARN rustls::msgs::handshake: Illegal SNI hostname received \"{}\"\n",
            "A".repeat(8000)
        );
        let cut = bound_text_line(&long, 3);
        assert!(cut.len() < FOREIGN_LINE_MAX + 100, "{}", cut.len());
        assert!(
            cut.ends_with("more bytes) (3 similar lines suppressed before this one)\n"),
            "{cut}"
        );
        assert_eq!(cut.lines().count(), 1);
        let short =
            "2026-01-01T00:00:00Z  WARN rustls::check: Received a ApplicationData message\n";
        assert_eq!(bound_text_line(short, 0), short);
        let json = format!(
            "{{\"timestamp\":\"t\",\"level\":\"WARN\",\"message\":\"{}\",\"target\":\"rustls\"}}\n",
            "é".repeat(3000)
        );
        let cut = bound_json_line(&json, 2);
        let value: serde_json::Value = serde_json::from_str(&cut).unwrap();
        let message = value["message"].as_str().unwrap();
        assert!(
            message.starts_with(&"é".repeat(FOREIGN_VALUE_MAX)),
            "{message}"
        );
        assert!(message.ends_with("… (4976 more bytes)"), "{message}");
        assert_eq!(value["suppressed"], 2);
        assert_eq!(value["target"], "rustls");
    }

    /// rustls's own warning about a peer's ClientHello goes through the
    /// budget: a flood of them writes the budget's worth of short lines.
    #[test]
    fn other_crates_events_take_from_the_log_budget() {
        let sink = Sink::default();
        let writer = sink.clone();
        let budget = LogBudget::new();
        let (filter, named) = cap_other_crates("info");
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::try_new(filter).unwrap())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .event_format(Guarded {
                inner: tracing_subscriber::fmt::format(),
                budget: budget.clone(),
                named,
                json: false,
            })
            .with_writer(move || writer.clone())
            .finish();
        let sni = "A".repeat(8000);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..500 {
                tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI hostname received {sni:?}");
                tracing::debug!(target: "rustls::server::hs", "a debug line nobody asked for");
            }
            tracing::info!(target: "cloudproxy_server::tls::listener", "ours, always formatted");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 21, "the burst of 20, and ours:\n{text}");
        assert!(lines.iter().all(|l| l.len() <= FOREIGN_LINE_MAX + 100));
        assert!(!text.contains("nobody asked"));
        assert!(lines[20].contains("ours, always formatted"));
        assert_eq!(budget.admit(), None, "the budget is spent");
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
