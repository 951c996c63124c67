//! `Proxy-Authenticate` challenges (RFC 9110 §11.6.1): one header may hold
//! several, and a response may repeat the header.

use std::fmt;

/// An authentication scheme the client can answer, weakest first (so
/// `max` is the strongest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum AuthScheme {
    /// `Basic`: the password, base64-encoded (readable by anyone on the
    /// way to the proxy).
    Basic,
    /// `NTLM` (NTLMv2 only).
    Ntlm,
    /// `Negotiate`: SPNEGO, Kerberos else NTLM inside it.
    Negotiate,
}

impl AuthScheme {
    /// The scheme's name as HTTP spells it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Basic => "Basic",
            Self::Ntlm => "NTLM",
            Self::Negotiate => "Negotiate",
        }
    }

    /// The scheme named `name` (case-insensitive), if the client can do it.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Basic, Self::Ntlm, Self::Negotiate]
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for AuthScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One challenge: a scheme and what came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme as the proxy spelled it.
    pub scheme: String,
    /// The token (`token68`: an NTLM or Negotiate message in base64).
    pub token: Option<String>,
    /// The `realm` parameter, unquoted.
    pub realm: Option<String>,
}

impl Challenge {
    /// The scheme, if the client can do it.
    #[must_use]
    pub fn known_scheme(&self) -> Option<AuthScheme> {
        AuthScheme::from_name(&self.scheme)
    }
}

/// The challenges of one `Proxy-Authenticate` value, in order. Anything
/// unreadable is skipped: a proxy's odd challenge must not hide the others.
#[must_use]
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for piece in split_outside_quotes(value) {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (first, rest) = match piece.split_once([' ', '\t']) {
            Some((first, rest)) => (first, rest.trim()),
            None => (piece, ""),
        };
        if !first.contains('=') && is_token(first) {
            // A new challenge: `scheme [token68 | auth-param]`.
            let mut challenge = Challenge {
                scheme: first.to_owned(),
                token: None,
                realm: None,
            };
            if !rest.is_empty() {
                if let Some((name, value)) = auth_param(rest) {
                    if name.eq_ignore_ascii_case("realm") {
                        challenge.realm = Some(value);
                    }
                } else {
                    challenge.token = Some(rest.to_owned());
                }
            }
            out.push(challenge);
        } else if let (Some(current), Some((name, value))) = (out.last_mut(), auth_param(piece)) {
            if name.eq_ignore_ascii_case("realm") {
                current.realm = Some(value);
            }
        }
    }
    out
}

/// `name=value` or `name="quoted"`; `None` for a token68 (whose `=` are
/// only trailing padding).
fn auth_param(text: &str) -> Option<(String, String)> {
    let (name, value) = text.split_once('=')?;
    let name = name.trim();
    let value = value.trim();
    // `abc==`: nothing but padding after the first `=`.
    if !is_token(name) || value.trim_start_matches('=').is_empty() {
        return None;
    }
    let value = match value.strip_prefix('"') {
        Some(quoted) => {
            let mut out = String::new();
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '"' => break,
                    c => out.push(c),
                }
            }
            out
        }
        None => value.to_owned(),
    };
    Some((name.to_owned(), value))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits at commas that are not inside a quoted string.
fn split_outside_quotes(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_challenges_in_one_header_with_quoted_commas() {
        let got = parse_challenges(
            r#"Basic realm="corp, \"main\"", charset="UTF-8", NTLM, Negotiate TlRMTVNTUAACAAAA=="#,
        );
        let schemes: Vec<_> = got.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["Basic", "NTLM", "Negotiate"]);
        assert_eq!(got[0].realm.as_deref(), Some(r#"corp, "main""#));
        assert_eq!(got[1].token, None);
        assert_eq!(got[2].token.as_deref(), Some("TlRMTVNTUAACAAAA=="));
    }

    #[test]
    fn unknown_schemes_are_kept_but_not_known() {
        let got = parse_challenges("Digest realm=\"x\", nonce=\"y\", ntlm");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].known_scheme(), None);
        assert_eq!(got[1].known_scheme(), Some(AuthScheme::Ntlm));
    }

    #[test]
    fn the_strongest_scheme_is_the_greatest() {
        assert!(AuthScheme::Negotiate > AuthScheme::Ntlm);
        assert!(AuthScheme::Ntlm > AuthScheme::Basic);
    }

    #[test]
    fn garbage_gives_no_challenge_and_no_panic() {
        for text in ["", ",,,", "=", "\"unterminated", "a=b", " , =x"] {
            let _ = parse_challenges(text);
        }
        assert!(parse_challenges("a=b").is_empty());
    }
}
