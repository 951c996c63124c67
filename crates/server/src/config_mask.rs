//! Secrets kept out of configuration error excerpts.
//!
//! A parse error shows the offending line with a caret under it; when that
//! line holds a ticket key (`secret = "…"`) or an app secret
//! (`secrets = […]`, possibly over several lines), the excerpt would print
//! it to the terminal or the service log. [`mask_secrets`] returns the text
//! with every character of such values replaced by `*`, byte for byte, so
//! the parser's spans, the caret and the key name stay where they were.

/// Keys whose values are secret.
const SECRET_KEYS: [&str; 2] = ["secret", "secrets"];

/// `text` with the value of every secret-bearing key masked: each byte
/// other than TOML's structure (quotes, brackets, braces, commas, `=`,
/// white space) becomes `*`. Values that continue over several lines (an
/// array) are masked until their brackets close.
pub(crate) fn mask_secrets(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    // Open brackets of a secret value that continues onto later lines.
    let mut open = 0usize;
    for line in text.split_inclusive('\n') {
        let bytes = line.as_bytes();
        let mask_from = if open > 0 {
            Some(0)
        } else {
            secret_value_start(line)
        };
        match mask_from {
            None => out.extend_from_slice(bytes),
            Some(start) => {
                out.extend_from_slice(&bytes[..start]);
                for &b in &bytes[start..] {
                    match b {
                        b'[' | b'{' => open += 1,
                        b']' | b'}' => open = open.saturating_sub(1),
                        _ => {}
                    }
                    out.push(if is_structure(b) { b } else { b'*' });
                }
            }
        }
    }
    // Only ASCII bytes were written in place of others, and whole lines
    // otherwise: the result is UTF-8 (a masked multi-byte character
    // becomes several `*`).
    String::from_utf8(out).unwrap_or_default()
}

fn is_structure(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'[' | b']' | b'{' | b'}' | b',' | b'=') || b.is_ascii_whitespace()
}

/// Where the value of a secret key starts on `line` (just after its `=`),
/// if the line assigns one, as a bare key (`secret = …`), a dotted one
/// (`key.secret = …`) or inside an inline table (`{ secrets = […] }`).
fn secret_value_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(eq) = line[from..].find('=').map(|i| i + from) {
        let key_end = line[..eq].trim_end().len();
        let key_start = line[..key_end]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '"' | '\'')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let key = line[key_start..key_end].trim_matches(|c| c == '"' || c == '\'');
        if SECRET_KEYS.contains(&key) {
            return Some(eq + 1);
        }
        from = eq + 1;
        if from >= bytes.len() {
            break;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_a_ticket_key_and_keeps_the_layout() {
        let text = "[[ticket_keys]]\nkey_id = 1\nsecret = \"00ff11ee\n";
        let masked = mask_secrets(text);
        assert_eq!(masked, "[[ticket_keys]]\nkey_id = 1\nsecret = \"********\n");
        assert_eq!(masked.len(), text.len());
    }

    #[test]
    fn masks_app_secrets_over_several_lines_and_stops_after() {
        let text = "[[apps]]\nid = \"a\"\nsecrets = [\n  \"aabb\",\n  'ccdd',\n]\nid2 = \"kept\"\n";
        assert_eq!(
            mask_secrets(text),
            "[[apps]]\nid = \"a\"\nsecrets = [\n  \"****\",\n  '****',\n]\nid2 = \"kept\"\n"
        );
    }

    #[test]
    fn masks_inline_and_dotted_forms_only() {
        assert_eq!(
            mask_secrets("apps = [{ id = \"x\", secrets = [\"ab\"] }]\n"),
            "apps = [{ id = \"x\", secrets = [\"**\"] }]\n"
        );
        assert_eq!(mask_secrets("t.secret=\"ab\"\n"), "t.secret=\"**\"\n");
        // A key that only contains the word is not a secret.
        assert_eq!(
            mask_secrets("secret_hint = \"x\"\nkey_id = 1\n"),
            "secret_hint = \"x\"\nkey_id = 1\n"
        );
        assert_eq!(mask_secrets("sécret = \"é\"\n"), "sécret = \"é\"\n");
        assert_eq!(mask_secrets("secret = \"é\"\n"), "secret = \"**\"\n");
    }
}
