//! The typed view of the proxy keys: [`ProxyServer`], [`ProxyKind`], and the
//! validation that turns `rtc.enable_proxy` / `rtc.proxy_server` values into them.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use crate::error::{Location, ParamError};
use crate::parser::{Document, ENABLE_PROXY, Known, PROXY_SERVER};
use crate::value::{Number, Value};

/// The proxy server the SDK uses when `rtc.enable_proxy` is `true` and no
/// `rtc.proxy_server` is set: `[1, "ap-proxy.agora.io", 0]`.
pub const DEFAULT_PROXY_DOMAIN: &str = "ap-proxy.agora.io";

/// The ports tried, in order, when a proxy server's port is 0: the guide's
/// "edge node communication" ports.
pub const DEFAULT_PORTS: [u16; 4] = [1080, 8000, 25000, 9700];

/// What a proxy server is addressed by: `proxy_type` 1 or 2 of `rtc.proxy_server`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    /// Type 1: a domain name, resolved by DNS (recommended by the guide).
    Domain(String),
    /// Type 2: a non-empty list of addresses, for when DNS is restricted.
    IpList(Vec<IpAddr>),
}

impl ProxyKind {
    /// The `proxy_type` number of `rtc.proxy_server`: 1 for a domain, 2 for an IP list.
    #[must_use]
    pub fn proxy_type(&self) -> u8 {
        match self {
            Self::Domain(_) => 1,
            Self::IpList(_) => 2,
        }
    }
}

/// A validated `rtc.proxy_server` setting: what to connect to and on which port.
///
/// Construct one by parsing (see [`crate::parse`]) or with [`ProxyServer::domain`]
/// / [`ProxyServer::ip_list`], which apply the same validation: a domain is a
/// valid host name (RFC 1123 labels), an IP list is non-empty.
///
/// ```
/// use cloudproxy_params::{ProxyKind, ProxyServer, DEFAULT_PORTS};
///
/// let server = ProxyServer::domain("ap-proxy.agora.io", 0)?;
/// assert!(server.uses_default_ports());
/// assert_eq!(server.ports(), DEFAULT_PORTS);
/// assert_eq!(server.kind(), &ProxyKind::Domain("ap-proxy.agora.io".into()));
/// assert_eq!(server.to_value().to_string(), r#"[1,"ap-proxy.agora.io",0]"#);
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyServer {
    kind: ProxyKind,
    port: u16,
}

impl ProxyServer {
    /// A type-1 server addressed by domain name. `port` 0 means [`DEFAULT_PORTS`].
    ///
    /// # Errors
    /// [`ParamError::InvalidHost`] if `host` is not a valid host name; its
    /// location is within `host` itself.
    pub fn domain(host: impl Into<String>, port: u16) -> Result<Self, ParamError> {
        let host = host.into();
        if let Err(reason) = check_host_name(&host) {
            return Err(ParamError::InvalidHost {
                at: Location::of(&host, 0),
                host,
                reason,
            });
        }
        Ok(Self {
            kind: ProxyKind::Domain(host),
            port,
        })
    }

    /// A type-2 server addressed by a list of IP addresses, tried in order.
    /// `port` 0 means [`DEFAULT_PORTS`].
    ///
    /// # Errors
    /// [`ParamError::EmptyIpList`] if `ips` is empty.
    pub fn ip_list(ips: impl Into<Vec<IpAddr>>, port: u16) -> Result<Self, ParamError> {
        let ips = ips.into();
        if ips.is_empty() {
            return Err(ParamError::EmptyIpList {
                at: Location::of("", 0),
            });
        }
        Ok(Self {
            kind: ProxyKind::IpList(ips),
            port,
        })
    }

    /// The guide's default, `[1, "ap-proxy.agora.io", 0]`.
    #[must_use]
    pub fn default_server() -> Self {
        Self {
            kind: ProxyKind::Domain(DEFAULT_PROXY_DOMAIN.to_owned()),
            port: 0,
        }
    }

    /// Domain or IP list.
    #[must_use]
    pub fn kind(&self) -> &ProxyKind {
        &self.kind
    }

    /// The port as configured; 0 means "the default port list".
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `true` when the port is 0, i.e. the client tries [`DEFAULT_PORTS`] in order.
    #[must_use]
    pub fn uses_default_ports(&self) -> bool {
        self.port == 0
    }

    /// The ports to try, in order: [`DEFAULT_PORTS`] for port 0, else the one port.
    #[must_use]
    pub fn ports(&self) -> &[u16] {
        if self.uses_default_ports() {
            &DEFAULT_PORTS
        } else {
            std::slice::from_ref(&self.port)
        }
    }

    /// The `rtc.proxy_server` value in the guide's documented form:
    /// `[1, "domain", port]` or `[2, "[\"ip1\",\"ip2\"]", port]`.
    #[must_use]
    pub fn to_value(&self) -> Value<'static> {
        let host = match &self.kind {
            ProxyKind::Domain(host) => host.clone(),
            ProxyKind::IpList(ips) => {
                let list: Vec<Value<'static>> =
                    ips.iter().map(|ip| Value::from(ip.to_string())).collect();
                Value::Array(list).to_string()
            }
        };
        Value::Array(vec![
            Value::Number(Number::from(u16::from(self.kind.proxy_type()))),
            Value::String(Cow::Owned(host)),
            Value::Number(Number::from(self.port)),
        ])
    }
}

impl fmt::Display for ProxyServer {
    /// `domain ap-proxy.agora.io, default ports` / `IP list 10.0.0.1, ::1, port 443`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ProxyKind::Domain(host) => write!(f, "domain {host}")?,
            ProxyKind::IpList(ips) => {
                f.write_str("IP list ")?;
                for (n, ip) in ips.iter().enumerate() {
                    if n > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{ip}")?;
                }
            }
        }
        if self.uses_default_ports() {
            f.write_str(", default ports")
        } else {
            write!(f, ", port {}", self.port)
        }
    }
}

/// Checks RFC 1123 host-name syntax: at most 253 characters, dot-separated
/// labels of 1 to 63 ASCII letters, digits and hyphens, not starting or ending
/// with a hyphen. No trailing dot.
pub(crate) fn check_host_name(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("it is empty");
    }
    if host.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    // One pass over the bytes with a class table: the length of the current
    // label and the byte before are all the state needed.
    const INVALID: u8 = 0;
    const ALNUM: u8 = 1;
    const HYPHEN_CLASS: u8 = 2;
    const DOT: u8 = 3;
    const CLASS: [u8; 256] = {
        let mut table = [INVALID; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = match b as u8 {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => ALNUM,
                b'-' => HYPHEN_CLASS,
                b'.' => DOT,
                _ => INVALID,
            };
            b += 1;
        }
        table
    };
    let bytes = host.as_bytes();
    let mut label_start = 0;
    for (n, &b) in bytes.iter().enumerate() {
        match CLASS[usize::from(b)] {
            ALNUM | HYPHEN_CLASS => {}
            DOT => {
                check_label(&bytes[label_start..n])?;
                label_start = n + 1;
            }
            _ => return Err("labels may only hold ASCII letters, digits and `-`"),
        }
    }
    check_label(&bytes[label_start..])
}

/// One label of a host name: 1 to 63 bytes, no hyphen at either end.
fn check_label(label: &[u8]) -> Result<(), &'static str> {
    match (label.first(), label.last()) {
        (None, _) | (_, None) => Err("it has an empty label (leading, trailing or doubled `.`)"),
        _ if label.len() > 63 => Err("a label is longer than 63 characters"),
        (Some(b'-'), _) | (_, Some(b'-')) => Err("a label starts or ends with `-`"),
        _ => Ok(()),
    }
}

/// The typed values of the known keys.
#[derive(Debug, Default)]
pub(crate) struct Typed {
    pub(crate) enable_proxy: Option<bool>,
    pub(crate) proxy_server: Option<ProxyServer>,
    pub(crate) transport: crate::transport::Transport,
}

/// Interprets the known keys of a parsed document. `input` is the whole
/// parsed input (for locations).
pub(crate) fn interpret(input: &str, doc: &Document<'_>) -> Result<Typed, ParamError> {
    let at = |rest: &str| Location::of(input, input.len() - rest.len());
    let value_of = |k: &Known<'_>| doc.object.entries().get(k.index).map(|(_, v)| v);
    let mut typed = Typed::default();
    if let Some(k) = &doc.enable_proxy {
        match value_of(k) {
            Some(Value::Bool(b)) => typed.enable_proxy = Some(*b),
            Some(other) => {
                return Err(ParamError::WrongType {
                    key: ENABLE_PROXY.to_owned(),
                    expected: "a boolean (true or false)",
                    found: describe_value(other),
                    at: at(k.value_at),
                });
            }
            None => {}
        }
    }
    if let Some(k) = &doc.proxy_server {
        if let Some(value) = value_of(k) {
            typed.proxy_server = Some(proxy_server(value, k, &at)?);
        }
    }
    typed.transport = crate::transport::interpret(
        &doc.transport,
        &|k| value_of(k).map(|v| v.clone().into_owned()),
        &at,
    )?;
    Ok(typed)
}

const PROXY_SERVER_SHAPE: &str = "an array [proxy_type, \"domain or IP list\", port]";

fn proxy_server(
    value: &Value<'_>,
    known: &Known<'_>,
    at: &dyn Fn(&str) -> Location,
) -> Result<ProxyServer, ParamError> {
    let wrong = |expected, found, rest| ParamError::WrongType {
        key: PROXY_SERVER.to_owned(),
        expected,
        found,
        at: at(rest),
    };
    let items = match value {
        Value::Array(items) if items.len() == 3 => items,
        Value::Array(items) => {
            let rest = known.item_at(3);
            return Err(wrong(
                PROXY_SERVER_SHAPE,
                format!("an array of {} element(s)", items.len()),
                rest,
            ));
        }
        other => {
            return Err(wrong(
                PROXY_SERVER_SHAPE,
                describe_value(other),
                known.value_at,
            ));
        }
    };
    let item_at = |n: usize| known.item_at(n);

    let proxy_type = match &items[0] {
        Value::Number(n) if n.is_integer() => match n.as_u64() {
            Some(t @ (1 | 2)) => t,
            _ => {
                return Err(ParamError::UnknownProxyType {
                    found: n.to_string(),
                    at: at(item_at(0)),
                });
            }
        },
        other => {
            return Err(wrong(
                "an integer proxy_type, 1 (domain) or 2 (IP list), first",
                describe_value(other),
                item_at(0),
            ));
        }
    };

    // The port is checked before the host so a message about the host is not
    // followed by another about the port once the host is fixed.
    let port = match &items[2] {
        Value::Number(n) if n.is_integer() => {
            match n.as_u64().and_then(|p| u16::try_from(p).ok()) {
                Some(p) => p,
                None => {
                    return Err(ParamError::PortOutOfRange {
                        found: n.to_string(),
                        at: at(item_at(2)),
                    });
                }
            }
        }
        other => {
            return Err(wrong(
                "an integer port (0 for the default ports) last",
                describe_value(other),
                item_at(2),
            ));
        }
    };

    let host_at = item_at(1);
    let kind = if proxy_type == 1 {
        let Value::String(host) = &items[1] else {
            return Err(wrong(
                "a domain name string second (proxy_type 1)",
                describe_value(&items[1]),
                host_at,
            ));
        };
        if let Err(reason) = check_host_name(host) {
            return Err(ParamError::InvalidHost {
                host: host.to_string(),
                reason,
                at: at(host_at),
            });
        }
        ProxyKind::Domain(host.to_string())
    } else {
        ProxyKind::IpList(ip_list(&items[1], host_at, at)?)
    };
    Ok(ProxyServer { kind, port })
}

/// The IP list of a type-2 server, in any of its three forms (they all reach
/// here as either a string holding a JSON array, or an array).
fn ip_list(
    value: &Value<'_>,
    host_at: &str,
    at: &dyn Fn(&str) -> Location,
) -> Result<Vec<IpAddr>, ParamError> {
    if let Value::String(text) = value {
        if let Some(ips) = fast_ip_list(text) {
            return Ok(ips);
        }
    }
    let invalid = |detail: String| ParamError::InvalidIpList {
        detail,
        at: at(host_at),
    };
    let parsed;
    let items = match value {
        Value::Array(items) => items,
        Value::String(text) => {
            parsed = crate::parser::parse_value(text).map_err(|e| {
                invalid(format!(
                    "the string is not a JSON list of IP addresses like [\"192.168.0.112\"]: {}",
                    brief(&e)
                ))
            })?;
            match &parsed {
                Value::Array(items) => items,
                other => {
                    return Err(invalid(format!(
                        "the string holds {}, not a JSON list of IP addresses like [\"192.168.0.112\"]",
                        describe_value(other)
                    )));
                }
            }
        }
        other => {
            return Err(invalid(format!(
                "expected a list of IP address strings, found {}",
                describe_value(other)
            )));
        }
    };
    if items.is_empty() {
        return Err(ParamError::EmptyIpList { at: at(host_at) });
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(text) => text.parse::<IpAddr>().map_err(|_| ParamError::InvalidIp {
                text: text.to_string(),
                at: at(host_at),
            }),
            other => Err(invalid(format!(
                "each entry must be a string IP address, found {}",
                describe_value(other)
            ))),
        })
        .collect()
}

/// The common case of an IP list in a string, `["ip", ...]` with plain
/// (unescaped) strings that are all valid addresses, parsed straight into
/// addresses without building a [`Value`]. `None` for anything else,
/// including every error, which the general path then reports precisely.
fn fast_ip_list(text: &str) -> Option<Vec<IpAddr>> {
    fn ws(s: &str) -> &str {
        s.trim_start_matches([' ', '\t', '\n', '\r'])
    }
    let mut rest = ws(ws(text).strip_prefix('[')?);
    let mut ips = Vec::new();
    loop {
        let body = rest.strip_prefix('"')?;
        let end = body.find('"')?;
        let ip = &body[..end];
        if ip.bytes().any(|b| b == b'\\' || b < 0x20) {
            return None;
        }
        ips.push(ip.parse().ok()?);
        let after = ws(&body[end + 1..]);
        match after.as_bytes().first() {
            Some(b',') => rest = ws(&after[1..]),
            Some(b']') => return ws(&after[1..]).is_empty().then_some(ips),
            _ => return None,
        }
    }
}

/// A one-line summary of an error inside the IP-list string, positioned
/// relative to that string.
fn brief(e: &ParamError) -> String {
    match e {
        ParamError::Syntax {
            expected,
            found,
            at,
            ..
        } => format!(
            "expected {expected}, found {found} at character {} of the string",
            at.position().column
        ),
        other => {
            let message = other.to_string();
            let first = message.lines().next().unwrap_or_default();
            first.to_owned()
        }
    }
}

/// "a string \"x\"", "the number 3", "an array", ... for messages.
pub(crate) fn describe_value(value: &Value<'_>) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let shown: String = s.chars().take(40).collect();
            let ellipsis = if shown.len() < s.len() { "…" } else { "" };
            format!("the string {shown:?}{ellipsis}")
        }
        Value::Array(items) => format!("an array of {} element(s)", items.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}
