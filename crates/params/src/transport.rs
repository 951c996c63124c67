//! The typed view of the transport keys for locked-down networks:
//! `rtc.proxy_tls_pin` ([`TlsPin`]), `rtc.proxy_tls_port` and
//! `rtc.http_proxy` ([`HttpProxy`]).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::error::{Location, ParamError};
use crate::parser::{HTTP_PROXY, Known, PROXY_TLS_PIN, PROXY_TLS_PORT, TransportKeys};
use crate::proxy::{check_host_name, describe_value};
use crate::value::Value;

/// The TLS port of a proxy server when `rtc.proxy_tls_port` is not set.
pub const DEFAULT_TLS_PORT: u16 = 443;

/// What a TLS connection to the proxy must present, instead of a
/// certificate the system roots trust: `rtc.proxy_tls_pin`.
///
/// ```
/// use cloudproxy_params::TlsPin;
///
/// let pin = TlsPin::parse("AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89")?;
/// assert!(matches!(pin, TlsPin::Fingerprint(f) if f[0] == 0xab));
/// let ca = TlsPin::parse("/etc/cloudproxy/ca.pem")?;
/// assert!(matches!(ca, TlsPin::CaFile(_)));
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsPin {
    /// The SHA-256 of the DER certificate the proxy presents (written as
    /// hex pairs, case-insensitive, colons optional, as `cloudproxy cert`
    /// prints it).
    Fingerprint([u8; 32]),
    /// A PEM file of CA certificates to trust instead of the system roots.
    CaFile(PathBuf),
}

impl TlsPin {
    /// Reads a pin: 64 hex digits (colons between pairs allowed) are a
    /// fingerprint; anything else is the path of a PEM CA file (not read
    /// here).
    ///
    /// # Errors
    /// [`ParamError::InvalidTlsPin`]: empty, hex digits of the wrong count,
    /// or a path with control characters. The location is within `text`.
    pub fn parse(text: &str) -> Result<Self, ParamError> {
        Self::parse_at(text, &|_| Location::of(text, 0))
    }

    fn parse_at(text: &str, at: &dyn Fn(usize) -> Location) -> Result<Self, ParamError> {
        let invalid = |reason: String| ParamError::InvalidTlsPin {
            found: text.to_owned(),
            reason,
            at: at(0),
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid(
                "it is empty; expected a SHA-256 fingerprint (64 hex digits) or a PEM CA file path"
                    .into(),
            ));
        }
        let hex: String = trimmed.chars().filter(|c| *c != ':').collect();
        let looks_hex = hex.chars().all(|c| c.is_ascii_hexdigit());
        if looks_hex && (trimmed.contains(':') || hex.len() >= 32) {
            if hex.len() != 64 {
                return Err(invalid(format!(
                    "a SHA-256 fingerprint has 64 hex digits (32 bytes), found {}",
                    hex.len()
                )));
            }
            let mut out = [0u8; 32];
            for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
                let pair = std::str::from_utf8(pair).unwrap_or_default();
                *byte = u8::from_str_radix(pair, 16)
                    .map_err(|_| invalid(format!("{pair:?} is not a hex byte")))?;
            }
            return Ok(Self::Fingerprint(out));
        }
        if let Some(c) = trimmed.chars().find(|c| c.is_control()) {
            return Err(invalid(format!(
                "expected a file path, found the control character {c:?}"
            )));
        }
        Ok(Self::CaFile(PathBuf::from(trimmed)))
    }

    /// The fingerprint as `cloudproxy cert` prints it (`AB:CD:…`), or the path.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Fingerprint(bytes) => fingerprint_text(bytes),
            Self::CaFile(path) => path.display().to_string(),
        }
    }
}

/// Uppercase hex pairs joined by `:`, the fingerprint form used everywhere.
#[must_use]
pub fn fingerprint_text(bytes: &[u8]) -> String {
    let pairs: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    pairs.join(":")
}

/// Credentials for an HTTP proxy (Negotiate, NTLM or Basic, whichever it
/// asks for; the user may be `DOMAIN\\user`). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyCredentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An explicit HTTP proxy (`CONNECT`), `rtc.http_proxy`:
/// `http://[user:password@]host:port`.
///
/// ```
/// use cloudproxy_params::HttpProxy;
///
/// let proxy = HttpProxy::parse("http://alice:s%40cret@proxy.corp:3128")?;
/// assert_eq!(proxy.host, "proxy.corp");
/// assert_eq!(proxy.port, 3128);
/// assert_eq!(proxy.credentials.as_ref().map(|c| c.password.as_str()), Some("s@cret"));
/// assert_eq!(proxy.to_string(), "http://alice:***@proxy.corp:3128");
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpProxy {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// Credentials, when the URL has `user:password@`.
    pub credentials: Option<ProxyCredentials>,
}

impl HttpProxy {
    /// Reads `http://[user:password@]host:port` (a trailing `/` is allowed;
    /// `%XX` escapes in the user and password are decoded). The scheme may be
    /// left out, as in many `HTTPS_PROXY` values.
    ///
    /// # Errors
    /// [`ParamError::InvalidHttpProxy`] saying which part is wrong.
    pub fn parse(text: &str) -> Result<Self, ParamError> {
        Self::parse_at(text, &|_| Location::of(text, 0))
    }

    fn parse_at(text: &str, at: &dyn Fn(usize) -> Location) -> Result<Self, ParamError> {
        let invalid = |reason: &str| ParamError::InvalidHttpProxy {
            found: redact(text),
            reason: reason.to_owned(),
            at: at(0),
        };
        let trimmed = text.trim();
        let rest = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(invalid(&format!(
                    "the scheme must be http (the proxy is spoken to in plain HTTP; CONNECT carries TLS), found {scheme:?}"
                )));
            }
            None => trimmed,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(invalid("expected nothing after host:port, found a path"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user)
                    .ok_or_else(|| invalid("the user name has an invalid %XX escape"))?;
                if user.is_empty() {
                    return Err(invalid("the user name before `@` is empty"));
                }
                let password = percent_decode(password)
                    .ok_or_else(|| invalid("the password has an invalid %XX escape"))?;
                Some(ProxyCredentials { user, password })
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address in `[` has no closing `]`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("the address in `[…]` is not an IPv6 address"));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("expected `:port` after the host"))?;
            (host, port)
        } else {
            hostport
                .rsplit_once(':')
                .ok_or_else(|| invalid("expected `:port` after the host (e.g. :3128)"))?
        };
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        if host.parse::<IpAddr>().is_err() {
            if let Err(reason) = check_host_name(host) {
                return Err(invalid(&format!(
                    "the host {host:?} is not valid: {reason}"
                )));
            }
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(invalid(&format!(
                    "the port must be 1 to 65535, found {port:?}"
                )));
            }
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    /// `host:port` as a `CONNECT` target or a dial address (IPv6 in `[]`).
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HttpProxy {
    /// The URL with the password shown as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if let Some(c) = &self.credentials {
            write!(f, "{}:***@", c.user)?;
        }
        f.write_str(&self.authority())
    }
}

/// `text` with the password of a `user:password@` part replaced by `***`,
/// for error messages.
fn redact(text: &str) -> String {
    let Some((before, after)) = text.rsplit_once('@') else {
        return text.to_owned();
    };
    let scheme_end = before.find("://").map_or(0, |i| i + 3);
    match before[scheme_end..].split_once(':') {
        Some((user, _)) => format!("{}{user}:***@{after}", &before[..scheme_end]),
        None => text.to_owned(),
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The typed values of the transport keys.
#[derive(Debug, Default, Clone)]
pub(crate) struct Transport {
    pub(crate) tls_pin: Option<TlsPin>,
    pub(crate) tls_port: Option<u16>,
    pub(crate) http_proxy: Option<HttpProxy>,
}

/// Interprets the transport keys of a parsed document.
pub(crate) fn interpret(
    keys: &TransportKeys<'_>,
    value_of: &dyn Fn(&Known<'_>) -> Option<Value<'static>>,
    at: &dyn Fn(&str) -> Location,
) -> Result<Transport, ParamError> {
    let mut typed = Transport::default();
    let string = |key: &'static str, k: &Known<'_>, expected: &'static str| match value_of(k) {
        Some(Value::String(s)) => Ok(Some(s.into_owned())),
        Some(other) => Err(ParamError::WrongType {
            key: key.to_owned(),
            expected,
            found: describe_value(&other),
            at: at(k.value_at),
        }),
        None => Ok(None),
    };
    if let Some(k) = &keys.tls_pin {
        if let Some(text) = string(
            PROXY_TLS_PIN,
            k,
            "a string: a SHA-256 certificate fingerprint or a PEM CA file path",
        )? {
            typed.tls_pin = Some(TlsPin::parse_at(&text, &|_| at(k.value_at))?);
        }
    }
    if let Some(k) = &keys.http_proxy {
        if let Some(text) = string(HTTP_PROXY, k, "a string http://[user:password@]host:port")? {
            typed.http_proxy = Some(HttpProxy::parse_at(&text, &|_| at(k.value_at))?);
        }
    }
    if let Some(k) = &keys.tls_port {
        match value_of(k) {
            Some(Value::Number(n)) if n.is_integer() => {
                match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
                    Some(p) if p > 0 => typed.tls_port = Some(p),
                    _ => {
                        return Err(ParamError::TlsPortOutOfRange {
                            found: n.to_string(),
                            at: at(k.value_at),
                        });
                    }
                }
            }
            Some(other) => {
                return Err(ParamError::WrongType {
                    key: PROXY_TLS_PORT.to_owned(),
                    expected: "an integer port from 1 to 65535",
                    found: describe_value(&other),
                    at: at(k.value_at),
                });
            }
            None => {}
        }
    }
    Ok(typed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(redact("http://u:pw@h:1"), "http://u:***@h:1");
        assert_eq!(redact("u:pw@h:1"), "u:***@h:1");
        assert_eq!(redact("http://h:1"), "http://h:1");
    }
}
