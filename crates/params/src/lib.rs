//! Parser for the cloud proxy's `setParameters` strings.
//!
//! Apps configure the cloud proxy with JSON parameter strings, exactly as the
//! SDK guide shows them:
//!
//! ```
//! use cloudproxy_params::{parse, ProxyKind};
//!
//! let p = parse(r#"{"rtc.enable_proxy":true}"#)?;
//! assert_eq!(p.enable_proxy(), Some(true));
//!
//! let p = parse(r#"{"rtc.proxy_server":[1, "ap-proxy.agora.io", 0]}"#)?;
//! let server = p.proxy_server().expect("set");
//! assert_eq!(server.kind(), &ProxyKind::Domain("ap-proxy.agora.io".into()));
//! assert!(server.uses_default_ports());
//! # Ok::<(), cloudproxy_params::ParamError>(())
//! ```
//!
//! # Grammar
//!
//! A parameter string is a JSON object (RFC 8259) with **one or more** pairs.
//! Values are objects, arrays, strings (every escape, `\u` surrogate pairs
//! combined, lone surrogates rejected), numbers, `true`, `false` and `null`,
//! with JSON whitespace (space, tab, CR, LF) wherever JSON allows it. Nothing
//! may follow the object but whitespace.
//!
//! Limits: input is at most [`MAX_INPUT_LEN`] bytes (64 KiB) and arrays and
//! objects nest at most [`MAX_DEPTH`] deep. No input makes the parser panic.
//!
//! **Duplicate keys** in any object are an error ([`ParamError::DuplicateKey`],
//! naming the key and both positions), not "last one wins": setting one
//! parameter twice in a string is a mistake worth reporting.
//!
//! # Known keys
//!
//! Five top-level keys get a typed, validated view; every key other than
//! the guide's two is kept, in order, with its value ([`Params::others`],
//! [`Params::get`]), and the whole object can be deserialized into your own serde type
//! ([`Params::deserialize`]).
//!
//! - `rtc.enable_proxy`: a boolean → [`Params::enable_proxy`].
//! - `rtc.proxy_server`: `[proxy_type, host, port]` → [`Params::proxy_server`],
//!   a [`ProxyServer`]. Type 1: `host` is a domain name (RFC 1123 host-name
//!   syntax). Type 2: `host` is a non-empty list of IPv4/IPv6 addresses.
//!   `port` is 0 to 65535, and 0 means "the default port list"
//!   ([`DEFAULT_PORTS`]).
//! - `rtc.proxy_tls_pin`: a string, a SHA-256 certificate fingerprint
//!   (`AB:CD:…`, case-insensitive, colons optional) or the path of a PEM CA
//!   file → [`Params::tls_pin`], a [`TlsPin`].
//! - `rtc.proxy_tls_port`: an integer 1 to 65535, the proxy's TLS port
//!   (default [`DEFAULT_TLS_PORT`], 443) → [`Params::tls_port`].
//! - `rtc.http_proxy`: a string `http://[user:password@]host:port`, an
//!   explicit HTTP proxy reached with `CONNECT` → [`Params::http_proxy`], an
//!   [`HttpProxy`]. The user may be `DOMAIN\\user` (NTLM, Negotiate; the
//!   backslash as is or as `%5C`); the credentials serve whichever scheme
//!   the proxy asks for (Negotiate, NTLM or Basic).
//!
//! The three transport keys are also kept in [`Params::others`] (the guide's
//! two are not), so an app reading the other keys sees them as before.
//!
//! The IP list of type 2 is accepted in three forms:
//!
//! 1. as documented by the guide, a string holding a JSON array:
//!    `{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}`;
//! 2. a plain JSON array: `{"rtc.proxy_server":[2, ["192.168.0.112","127.0.0.1"], 0]}`;
//! 3. **for compatibility**, the guide's own sample code, whose inner quotes
//!    are not escaped (users paste it, so it must work):
//!    `{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}`.
//!
//! Form 3 is not JSON. It is accepted by a narrow extension that applies only
//! to the second element of the array value of the top-level
//! `rtc.proxy_server` key, and only when that element starts with `"[` and
//! does not parse as standard JSON there:
//!
//! ```text
//! host = json-value                                           ; standard JSON, tried first
//!      / %x22 "[" ws [ string *( ws "," ws string ) ] ws "]" %x22
//! ```
//!
//! Because the standard reading is tried first (a JSON string followed by `,`
//! or `]`), valid JSON is never read differently. The extension yields the
//! string between the outer quotes, `["192.168.0.112","127.0.0.1"]`, which is
//! exactly the value form 1 decodes to; serializing writes form 1.
//!
//! ```
//! use cloudproxy_params::{parse, ProxyKind};
//! use std::net::IpAddr;
//!
//! let guide = parse(r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#)?;
//! let documented = parse(r#"{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}"#)?;
//! assert_eq!(guide, documented);
//! let ips: Vec<IpAddr> = vec!["192.168.0.112".parse().unwrap(), "127.0.0.1".parse().unwrap()];
//! assert_eq!(guide.proxy_server().unwrap().kind(), &ProxyKind::IpList(ips));
//! assert_eq!(
//!     guide.to_json(),
//!     r#"{"rtc.proxy_server":[2,"[\"192.168.0.112\",\"127.0.0.1\"]",0]}"#
//! );
//! # Ok::<(), cloudproxy_params::ParamError>(())
//! ```
//!
//! # Errors
//!
//! Every failure is a [`ParamError`] with the byte offset, line, column, what
//! was expected and what was found; its `Display` ends with the input line
//! and a caret under the fault.
//!
//! # Borrowing
//!
//! [`Params`] and [`Value`] borrow strings without escapes from the input;
//! [`Params::into_owned`] detaches them when the input goes away.

mod de;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod parser;
mod proxy;
mod serialize;
mod transport;
mod value;
mod warning;

use std::borrow::Cow;

pub use error::{ErrorKind, Location, MAX_DEPTH, MAX_INPUT_LEN, ParamError, Position};
pub use proxy::{DEFAULT_PORTS, DEFAULT_PROXY_DOMAIN, ProxyKind, ProxyServer};
pub use serialize::to_json;
pub use transport::{DEFAULT_TLS_PORT, HttpProxy, ProxyCredentials, TlsPin, fingerprint_text};
pub use value::{Number, Object, Value};
pub use warning::{KNOWN_KEYS, ParamWarning, suggest_key};

/// The key of the proxy on/off switch, `rtc.enable_proxy`.
pub const ENABLE_PROXY_KEY: &str = parser::ENABLE_PROXY;
/// The key of the proxy server setting, `rtc.proxy_server`.
pub const PROXY_SERVER_KEY: &str = parser::PROXY_SERVER;
/// The key of the TLS trust pin, `rtc.proxy_tls_pin`.
pub const PROXY_TLS_PIN_KEY: &str = parser::PROXY_TLS_PIN;
/// The key of the proxy server's TLS port, `rtc.proxy_tls_port`.
pub const PROXY_TLS_PORT_KEY: &str = parser::PROXY_TLS_PORT;
/// The key of the explicit HTTP proxy, `rtc.http_proxy`.
pub const HTTP_PROXY_KEY: &str = parser::HTTP_PROXY;

/// A parsed parameter string: every pair in order, plus the typed view of the
/// known keys.
///
/// Equality compares the pairs in order (the typed view follows from them).
#[derive(Debug, Clone, PartialEq)]
pub struct Params<'a> {
    object: Object<'a>,
    enable_proxy: Option<bool>,
    proxy_server: Option<ProxyServer>,
    tls_pin: Option<TlsPin>,
    tls_port: Option<u16>,
    http_proxy: Option<HttpProxy>,
}

/// Parses a parameter string. Same as [`Params::parse`].
///
/// # Errors
/// A [`ParamError`] locating the first fault: syntax, limits, duplicate keys,
/// or an invalid value for a known key.
pub fn parse(input: &str) -> Result<Params<'_>, ParamError> {
    Params::parse(input)
}

/// Parses a parameter string given as bytes, checking UTF-8 first.
///
/// # Errors
/// [`ParamError::InvalidUtf8`] at the first invalid byte, or anything
/// [`parse`] returns.
///
/// ```
/// let err = cloudproxy_params::parse_bytes(b"{\"a\":\"\xff\"}").unwrap_err();
/// assert_eq!(err.kind(), cloudproxy_params::ErrorKind::InvalidUtf8);
/// assert_eq!(err.offset(), Some(6));
/// ```
pub fn parse_bytes(input: &[u8]) -> Result<Params<'_>, ParamError> {
    if input.len() > MAX_INPUT_LEN {
        return Err(ParamError::InputTooLong {
            len: input.len(),
            max: MAX_INPUT_LEN,
        });
    }
    match std::str::from_utf8(input) {
        Ok(text) => Params::parse(text),
        Err(e) => {
            let valid = e.valid_up_to();
            // The prefix up to `valid_up_to` is valid UTF-8 by definition.
            let prefix = std::str::from_utf8(&input[..valid]).unwrap_or_default();
            Err(ParamError::InvalidUtf8 {
                at: Location::of(prefix, valid),
            })
        }
    }
}

impl<'a> Params<'a> {
    /// Parses a parameter string: see the [crate docs](crate) for the grammar.
    ///
    /// # Errors
    /// A [`ParamError`] locating the first fault: syntax, limits, duplicate keys,
    /// or an invalid value for a known key.
    pub fn parse(input: &'a str) -> Result<Self, ParamError> {
        let doc = match parser::parse_document(input) {
            Ok(doc) => doc,
            Err(e @ ParamError::Syntax { .. }) => return Err(source_code_form(input).unwrap_or(e)),
            Err(e) => return Err(e),
        };
        let typed = proxy::interpret(input, &doc)?;
        Ok(Self {
            object: doc.object,
            enable_proxy: typed.enable_proxy,
            proxy_server: typed.proxy_server,
            tls_pin: typed.transport.tls_pin,
            tls_port: typed.transport.tls_port,
            http_proxy: typed.transport.http_proxy,
        })
    }

    /// What the string says that is accepted but most likely a mistake: an
    /// unknown key that is a misspelling of a known one (see
    /// [`suggest_key`]). Unknown keys are still kept, as the guide requires.
    ///
    /// ```
    /// let p = cloudproxy_params::parse(r#"{"Rtc.Enable_Proxy":true,"che.audio.level":3}"#)?;
    /// let shown: Vec<String> = p.warnings().iter().map(ToString::to_string).collect();
    /// assert_eq!(
    ///     shown,
    ///     ["unknown key \"Rtc.Enable_Proxy\" is kept but has no effect: did you mean `rtc.enable_proxy`?"]
    /// );
    /// # Ok::<(), cloudproxy_params::ParamError>(())
    /// ```
    #[must_use]
    pub fn warnings(&self) -> Vec<ParamWarning> {
        self.others()
            .filter_map(|(key, _)| {
                suggest_key(key).map(|suggestion| ParamWarning::MisspelledKey {
                    key: key.to_owned(),
                    suggestion,
                })
            })
            .collect()
    }

    /// `rtc.enable_proxy`, if set.
    #[must_use]
    pub fn enable_proxy(&self) -> Option<bool> {
        self.enable_proxy
    }

    /// `rtc.proxy_server`, if set.
    #[must_use]
    pub fn proxy_server(&self) -> Option<&ProxyServer> {
        self.proxy_server.as_ref()
    }

    /// `rtc.proxy_tls_pin`, if set: what the proxy's TLS certificate must
    /// match instead of the system roots.
    #[must_use]
    pub fn tls_pin(&self) -> Option<&TlsPin> {
        self.tls_pin.as_ref()
    }

    /// `rtc.proxy_tls_port`, if set (else the TLS port is
    /// [`DEFAULT_TLS_PORT`]).
    #[must_use]
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rtc.http_proxy`, if set.
    #[must_use]
    pub fn http_proxy(&self) -> Option<&HttpProxy> {
        self.http_proxy.as_ref()
    }

    /// The value of any top-level key, known or not, as parsed.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.object.get(key)
    }

    /// The top-level pairs other than `rtc.enable_proxy` and
    /// `rtc.proxy_server`, in input order.
    ///
    /// ```
    /// let p = cloudproxy_params::parse(r#"{"che.audio.level":3,"rtc.enable_proxy":true,"x":"y"}"#)?;
    /// let others: Vec<String> = p.others().map(|(k, v)| format!("{k}={v}")).collect();
    /// assert_eq!(others, ["che.audio.level=3", r#"x="y""#]);
    /// # Ok::<(), cloudproxy_params::ParamError>(())
    /// ```
    pub fn others(&self) -> impl Iterator<Item = (&str, &Value<'a>)> {
        self.object
            .iter()
            .filter(|(k, _)| *k != ENABLE_PROXY_KEY && *k != PROXY_SERVER_KEY)
    }

    /// Every top-level pair, known keys included, in input order.
    #[must_use]
    pub fn as_object(&self) -> &Object<'a> {
        &self.object
    }

    /// Deserializes the whole object into a serde type; use
    /// `#[serde(rename = "rtc.some_key")]` for dotted keys. Unknown keys are
    /// ignored unless the type denies them.
    ///
    /// # Errors
    /// [`ParamError::Deserialize`] with serde's message.
    ///
    /// ```
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Audio {
    ///     #[serde(rename = "che.audio.level")]
    ///     level: u8,
    /// }
    ///
    /// let p = cloudproxy_params::parse(r#"{"rtc.enable_proxy":true,"che.audio.level":3}"#)?;
    /// let audio: Audio = p.deserialize()?;
    /// assert_eq!(audio.level, 3);
    /// # Ok::<(), cloudproxy_params::ParamError>(())
    /// ```
    pub fn deserialize<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, ParamError> {
        T::deserialize(&self.object)
    }

    /// Canonical compact JSON for all the pairs (see [`to_json`]); parsing it
    /// gives back equal `Params`.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        serialize::write_object(&mut out, &self.object);
        out
    }

    /// Copies every borrowed string so the parameters no longer borrow the input.
    #[must_use]
    pub fn into_owned(self) -> Params<'static> {
        Params {
            object: self.object.into_owned(),
            enable_proxy: self.enable_proxy,
            proxy_server: self.proxy_server,
            tls_pin: self.tls_pin,
            tls_port: self.tls_port,
            http_proxy: self.http_proxy,
        }
    }

    /// Consumes the parameters, returning all pairs.
    #[must_use]
    pub fn into_object(self) -> Object<'a> {
        self.object
    }
}

impl std::fmt::Display for Params<'_> {
    /// Canonical compact JSON, as [`Params::to_json`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl<'a> From<Params<'a>> for Cow<'a, str> {
    fn from(params: Params<'a>) -> Self {
        Cow::Owned(params.to_json())
    }
}

/// Longest suggestion quoted in a [`ParamError::SourceCodeForm`].
const SUGGESTION_MAX: usize = 200;

/// When `input` (which failed to parse) is a parameter string written as in
/// program source — `"{\"rtc.enable_proxy\":true}"` with the literal's outer
/// quotes, or `{\"rtc.enable_proxy\":true}` with escaped quotes only — and
/// its value parses, the error that says so.
fn source_code_form(input: &str) -> Option<ParamError> {
    let text = input.trim();
    let quoted = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
    let (form, body) = if quoted {
        (
            "outer quotes and \\\" escapes of a string literal",
            &text[1..text.len() - 1],
        )
    } else if text.starts_with("{\\\"") {
        ("\\\" escapes of a string literal", text)
    } else {
        return None;
    };
    let value = unescape_quotes(body);
    // Only when the value is a parameter string: then the hint is right.
    let doc = parser::parse_document(&value).ok()?;
    proxy::interpret(&value, &doc).ok()?;
    let suggestion = if value.chars().count() > SUGGESTION_MAX {
        let mut short: String = value.chars().take(SUGGESTION_MAX).collect();
        short.push('…');
        short
    } else {
        value.clone()
    };
    let offset = input.find(['"', '\\']).unwrap_or(0);
    Some(ParamError::SourceCodeForm {
        form,
        suggestion,
        at: Location::of(input, offset),
    })
}

/// `\"` → `"` and `\\` → `\`; every other character as it is.
fn unescape_quotes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ ('"' | '\\'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}
