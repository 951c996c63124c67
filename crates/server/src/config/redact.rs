//! Secret values kept out of what a configuration error shows. The TOML
//! parser's report quotes the faulty line (with a caret under the fault)
//! and its message may quote a value; near an app secret or a ticket key,
//! either would put the key in the log (a SIGHUP reload), on a terminal
//! (`serve --check`, a start) or in a journal.
//!
//! Two rules, both applied to every excerpt and message:
//!
//! * the value of a key that holds secrets ([`SECRET_KEYS`]) is replaced by
//!   [`REDACTED`] from its `=` to the end of the line, and so is every line
//!   that continues it (a multi-line array); the key name and the caret
//!   stay, so the report still says where the fault is;
//! * any run of at least [`HEX_RUN`] hex digits is replaced too, wherever it
//!   is: a secret under a misspelt key, or one quoted by a message.

/// Keys whose values are secrets, as the last segment of a dotted key
/// (compared without case): `ticket_keys.secret`, `apps.secrets`, and the
/// names a password or token would get.
pub(crate) const SECRET_KEYS: &[&str] = &[
    "secret",
    "secrets",
    "password",
    "passwords",
    "token",
    "tokens",
];

/// What a secret value is replaced with.
pub(crate) const REDACTED: &str = "<redacted>";

/// Shortest run of hex digits taken for key material wherever it appears
/// (8 bytes; a secret is at least 16).
const HEX_RUN: usize = 16;

/// `report`, the parser's account of an error in the configuration `text`,
/// with every secret value redacted: the lines it quotes from `text`, and
/// the secret values that appear anywhere else in it.
pub(crate) fn redact_report(report: &str, text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let spans = secret_spans(&lines);
    let values: Vec<&str> = lines
        .iter()
        .zip(&spans)
        .filter_map(|(line, span)| span.map(|from| &line[from..]))
        .flat_map(string_contents)
        .filter(|v| v.len() >= 4)
        .collect();
    let mut out = String::with_capacity(report.len());
    for (i, line) in report.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if let Some(n) = quoted_line(line, &lines) {
            let gutter = line.len() - lines[n].len();
            out.push_str(&line[..gutter]);
            out.push_str(&redact_hex(&redact_line(lines[n], spans[n])));
        } else {
            let mut line = line.to_owned();
            for value in &values {
                line = line.replace(value, REDACTED);
            }
            out.push_str(&redact_hex(&line));
        }
    }
    out
}

/// The 0-based line of `text` that a report line `N | <line>` quotes.
fn quoted_line(report_line: &str, lines: &[&str]) -> Option<usize> {
    let (number, rest) = report_line.split_once(" | ")?;
    let n: usize = number.trim().parse().ok()?;
    let line = lines.get(n.checked_sub(1)?)?;
    (rest == *line).then_some(n - 1)
}

/// `line` with its secret value (from byte `from` on) redacted.
fn redact_line(line: &str, from: Option<usize>) -> String {
    match from {
        Some(from) => format!("{}{REDACTED}", &line[..from]),
        None => line.to_owned(),
    }
}

/// `text` with every run of at least [`HEX_RUN`] hex digits redacted.
fn redact_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= HEX_RUN {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// For each line, the byte where a secret value starts on it (it runs to
/// the end of the line), if one does: after the `=` of a secret key, or the
/// whole line while such a value continues (an array or a multi-line
/// string left open). A tolerant scan: the file did not parse.
fn secret_spans(lines: &[&str]) -> Vec<Option<usize>> {
    let mut spans = Vec::with_capacity(lines.len());
    // Inside a secret value that continues on the next line.
    let mut open: Option<Open> = None;
    for line in lines {
        if let Some(state) = open {
            let start = line.len() - line.trim_start().len();
            spans.push(Some(start));
            open = scan_value(line, state);
            continue;
        }
        match secret_assignment(line) {
            Some(from) => {
                spans.push(Some(from));
                open = scan_value(&line[from..], Open::default());
            }
            None => spans.push(None),
        }
    }
    spans
}

/// Where a value stands at the end of a line.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Open {
    /// Unclosed `[` and `{`.
    depth: usize,
    /// Inside a multi-line string with this delimiter.
    string: Option<&'static str>,
}

/// Scans (the rest of) a line of a value from `state`; `None` when the
/// value ends on it.
fn scan_value(text: &str, state: Open) -> Option<Open> {
    let mut state = state;
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(delimiter) = state.string {
            match rest.find(delimiter) {
                Some(end) => {
                    rest = &rest[end + delimiter.len()..];
                    state.string = None;
                }
                None => return Some(state),
            }
            continue;
        }
        let c = rest.chars().next().unwrap_or_default();
        if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            state.string = Some(if c == '"' { "\"\"\"" } else { "'''" });
            rest = &rest[3..];
            continue;
        }
        match c {
            '"' | '\'' => {
                rest = &rest[skip_string(rest)..];
                continue;
            }
            '#' => break,
            '[' | '{' => state.depth += 1,
            ']' | '}' => state.depth = state.depth.saturating_sub(1),
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    (state.depth > 0 || state.string.is_some()).then_some(state)
}

/// Bytes of the one-line string at the start of `text` (its quotes
/// included; to the end of the line when it is not closed).
fn skip_string(text: &str) -> usize {
    let quote = text.as_bytes()[0];
    let mut escaped = false;
    for (i, b) in text.bytes().enumerate().skip(1) {
        if quote == b'"' && b == b'\\' && !escaped {
            escaped = true;
            continue;
        }
        if b == quote && !escaped {
            return i + 1;
        }
        escaped = false;
    }
    text.len()
}

/// The contents of the strings in `text` (to the end of the line when one
/// is not closed).
fn string_contents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text.as_bytes()[i];
        if b == b'"' || b == b'\'' {
            let len = skip_string(&text[i..]);
            let end = if len > 1 && text.as_bytes()[i + len - 1] == b {
                i + len - 1
            } else {
                i + len
            };
            out.push(&text[i + 1..end.max(i + 1)]);
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

/// Where the value of a secret key assigned on `line` starts: the byte
/// after its `=` and the spaces behind it.
fn secret_assignment(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let is_key = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut i = 0;
    while i < bytes.len() {
        let (key, end) = match bytes[i] {
            b'#' => return None,
            b'"' | b'\'' => {
                let len = skip_string(&line[i..]);
                let inner = &line[i + 1..(i + len).saturating_sub(1).max(i + 1)];
                (inner, i + len)
            }
            b if is_key(b) => {
                let start = i;
                while i < bytes.len() && is_key(bytes[i]) {
                    i += 1;
                }
                (&line[start..i], i)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let after = &line[end..];
        let trimmed = after.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            if SECRET_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                let from = line.len() - value.trim_start().len();
                return Some(from);
            }
        }
        i = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, ServerConfig};

    const KEY: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";
    const APP_SECRET: &str = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
    const OTHER_SECRET: &str = "ffeeddccbbaa99887766554433221100";

    /// The error `text` gets, as shown.
    fn shown(text: &str) -> String {
        let e = ServerConfig::from_toml_str("proxy.toml", text).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        e.to_string()
    }

    fn assert_no_secret(shown: &str) {
        for secret in [KEY, APP_SECRET, OTHER_SECRET] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains(&secret[..16]), "{shown}");
        }
    }

    #[test]
    fn a_ticket_key_left_unquoted_is_redacted_with_its_key_and_caret_kept() {
        let text = format!("[[ticket_keys]]\nkey_id = 1\nsecret = \"{KEY}\n");
        let shown = shown(&text);
        assert_no_secret(&shown);
        assert!(shown.contains("3 | secret = <redacted>"), "{shown}");
        assert!(shown.contains('^'), "{shown}");
        assert!(shown.starts_with("proxy.toml:3:"), "{shown}");
    }

    #[test]
    fn an_app_secret_line_with_a_typo_is_redacted() {
        let text =
            format!("[[apps]]\nid = \"a\"\nsecrets = [\"{APP_SECRET}\" \"{OTHER_SECRET}\"]\n");
        let shown = shown(&text);
        assert_no_secret(&shown);
        assert!(shown.contains("3 | secrets = <redacted>"), "{shown}");
    }

    #[test]
    fn a_secret_array_over_several_lines_is_redacted_on_each() {
        let text = format!(
            "[[apps]]\nid = \"a\"\nsecrets = [\n  \"{APP_SECRET}\",\n  \"{OTHER_SECRET}\" oops\n]\n"
        );
        let shown = shown(&text);
        assert_no_secret(&shown);
        assert!(shown.contains("5 |   <redacted>"), "{shown}");
    }

    #[test]
    fn a_secret_in_an_inline_table_is_redacted() {
        let text = format!("ticket_keys = [{{ key_id = 1, secret = \"{KEY}\" }}\n");
        let shown = shown(&text);
        assert_no_secret(&shown);
        assert!(
            shown.contains("1 | ticket_keys = [{ key_id = 1, secret = <redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn a_secret_under_a_misspelt_key_is_redacted() {
        let text = format!("[[ticket_keys]]\nkey_id = 1\nsecert = \"{KEY}\"\n");
        let shown = shown(&text);
        assert_no_secret(&shown);
        assert!(shown.contains("unknown field `secert`"), "{shown}");
        assert!(shown.contains("3 | secert = \"<redacted>\""), "{shown}");
    }

    #[test]
    fn a_secret_quoted_by_the_message_is_redacted() {
        // A string where a list belongs: the parser quotes the value.
        let text = format!("[[apps]]\nid = \"a\"\nsecrets = \"{APP_SECRET}\"\n");
        let shown = shown(&text);
        assert_no_secret(&shown);
        assert!(shown.contains("invalid type"), "{shown}");
        // Not hex at all, so only the key rule can catch it.
        let text = "[[apps]]\nid = \"a\"\nsecrets = \"not-hex-but-secret\"\n";
        let shown = self::shown(text);
        assert!(!shown.contains("not-hex-but-secret"), "{shown}");
    }

    #[test]
    fn a_non_hex_secret_digit_is_not_quoted() {
        let text = "[[apps]]\nid = \"a\"\nsecrets = [\"q0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5\"]\n";
        let shown = shown(text);
        assert!(shown.contains("expected hex digits"), "{shown}");
        assert!(!shown.contains("q0"), "{shown}");
    }

    #[test]
    fn other_errors_keep_their_excerpt_whole() {
        let text = format!(
            "[[ticket_keys]]\nkey_id = 1\nsecret = \"{KEY}\"\n[listeners]\nbnd = \"1.2.3.4\"\n"
        );
        let shown = shown(&text);
        assert!(shown.contains("5 | bnd = \"1.2.3.4\""), "{shown}");
        assert!(shown.contains("unknown field `bnd`"), "{shown}");
    }

    #[test]
    fn hex_runs_and_key_values_are_found_where_toml_puts_them() {
        assert_eq!(redact_hex("ab12 0123456789abcdef0 x"), "ab12 <redacted> x");
        assert_eq!(secret_assignment("secret = \"x\""), Some(9));
        assert_eq!(secret_assignment("  \"secrets\"=[\"x\"]"), Some(12));
        assert_eq!(secret_assignment("apps.secrets = []"), Some(15));
        assert_eq!(secret_assignment("secret_file = \"x\""), None);
        assert_eq!(secret_assignment("# secret = \"x\""), None);
        assert_eq!(secret_assignment("id = \"secret = x\""), None);
        assert_eq!(
            string_contents("[\"ab\", 'cd', \"e\\\"f\", \"open"),
            ["ab", "cd", "e\\\"f", "open"]
        );
    }
}
