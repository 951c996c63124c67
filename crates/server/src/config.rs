//! The proxy service's configuration: a TOML file, every section optional.
//!
//! ```
//! use cloudproxy_server::config::ServerConfig;
//!
//! let config = ServerConfig::from_toml_str(
//!     "proxy.toml",
//!     r#"
//!     [listeners]
//!     bind = "0.0.0.0"
//!     advertise = "203.0.113.7"
//!
//!     [[apps]]
//!     id = "my-app"
//!     max_sessions = 500
//!     secrets = ["00112233445566778899aabbccddeeff"]
//!
//!     [[ticket_keys]]
//!     key_id = 7
//!     secret = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
//!
//!     [allowlist]
//!     allow = ["198.51.100.0/24:5000-5100"]
//!     "#,
//! )?;
//! assert_eq!(config.listeners.allocation_ports, [1080, 8000, 25000, 9700]);
//! assert_eq!(config.listeners.tcp_relay_port, 4000);
//! assert_eq!(config.apps[0].max_sessions, 500);
//! # Ok::<(), cloudproxy_server::config::ConfigError>(())
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudproxy_proto::frame::{MAX_DATAGRAM_PAYLOAD, MAX_PAYLOAD};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::allowlist::Allowlist;

mod redact;

/// The whole configuration of one proxy node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the service listens and what it tells clients.
    pub listeners: Listeners,
    /// The applications allowed to use this proxy.
    pub apps: Vec<AppConfig>,
    /// Keys that sign and verify tickets; the first signs, all verify. Every
    /// node of a fleet holds the same keys, so any node verifies any ticket.
    pub ticket_keys: Vec<KeyConfig>,
    /// Where relays may forward to.
    pub allowlist: AllowlistConfig,
    /// Deadlines and sizes.
    pub limits: Limits,
    /// The optional SOCKS5 listener for standard clients.
    pub socks5: Socks5Config,
    /// The optional admin listener (metrics, health, drain).
    pub admin: AdminConfig,
    /// The optional TLS port (allocation and relay behind one TLS listener).
    pub tls: TlsConfig,
}

/// The TLS port (`docs/protocol.md` §7.4): allocation, the message relay
/// and UDP-over-TCP media behind one TLS listener, for networks that let
/// only TLS on 443 out. On when `listen`, `cert` or `key` is set; `cert`
/// and `key` are then required (PEM files, re-read on every reload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address and port to listen on; defaults to `listeners.bind` port
    /// [`TlsConfig::DEFAULT_PORT`].
    pub listen: Option<std::net::SocketAddr>,
    /// The certificate chain, PEM, leaf first.
    pub cert: Option<PathBuf>,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Serve a fresh self-signed certificate for `localhost`, `127.0.0.1`
    /// and `::1` when `cert` and `key` are unset: `cloudproxy serve`'s
    /// development mode sets it. Not a file key.
    #[serde(skip)]
    pub self_signed: bool,
}

impl TlsConfig {
    /// The TLS port's default port.
    pub const DEFAULT_PORT: u16 = 443;

    /// Where the TLS port listens, or `None` when it is off.
    #[must_use]
    pub fn listen_addr(&self, listeners: &Listeners) -> Option<std::net::SocketAddr> {
        let on = self.listen.is_some() || self.cert.is_some() || self.key.is_some();
        on.then(|| {
            self.listen.unwrap_or(std::net::SocketAddr::new(
                listeners.bind,
                Self::DEFAULT_PORT,
            ))
        })
    }
}

/// The admin listener: `/metrics`, `/livez`, `/readyz` and `POST /drain`
/// over HTTP (`docs/operations.md`, "Admin listener"). Off unless `bind` is
/// set; it has no authentication, so bind it to loopback or a private
/// network only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address and port to listen on, such as `"127.0.0.1:9600"`.
    pub bind: Option<std::net::SocketAddr>,
}

/// The SOCKS5 listener (RFC 1928, user/password per RFC 1929): standard
/// clients use the same relay, allowlist, quotas and deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Socks5Config {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Its TCP port (the customary 1080 is the first allocation port of the
    /// guide's whitelist, hence 1081). UDP ASSOCIATE relays from ephemeral
    /// ports on the same address.
    pub port: u16,
    /// Accept clients that offer no authentication, counting them against
    /// this app. Off unless the operator names an app.
    pub no_auth_app: Option<String>,
}

impl Default for Socks5Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 1081,
            no_auth_app: None,
        }
    }
}

/// Listening addresses and ports (the guide's whitelist).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// Address every listener binds.
    pub bind: IpAddr,
    /// Address given to clients in proxy info; defaults to `bind`, which must
    /// then not be unspecified.
    pub advertise: Option<IpAddr>,
    /// Allocation service ports, TCP and UDP; clients try them in order.
    pub allocation_ports: Vec<u16>,
    /// TCP port of the message-data relay.
    pub tcp_relay_port: u16,
    /// UDP ports of the media relay; sessions are spread over them. A range
    /// starting at 0 (`"0-3"`) binds that many ephemeral ports, for tests.
    pub udp_relay_ports: PortRange,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise: None,
            allocation_ports: vec![1080, 8000, 25000, 9700],
            tcp_relay_port: 4000,
            udp_relay_ports: PortRange(4500..=4650),
        }
    }
}

/// An inclusive port range, written `"4500-4650"` or as one port `4500`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl PortRange {
    /// How many ports the range holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.clone().count()
    }

    /// Whether the range holds no port (never true for a parsed range).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Text(String),
        }
        let range = match Raw::deserialize(deserializer)? {
            Raw::One(port) => port..=port,
            Raw::Text(text) => {
                let (a, b) = text.split_once('-').unwrap_or((&text, &text));
                let parse = |p: &str| p.trim().parse::<u16>();
                match (parse(a), parse(b)) {
                    (Ok(a), Ok(b)) if a <= b => a..=b,
                    _ => {
                        return Err(serde::de::Error::custom(format!(
                            "expected a port range like \"4500-4650\", found {text:?}"
                        )));
                    }
                }
            }
        };
        Ok(Self(range))
    }
}

/// One application: who may allocate relays, and how many at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app id clients send.
    pub id: Spanned<String>,
    /// The app's secrets, in hex; a client may prove any of them, so a secret
    /// is rotated by adding the new one, moving clients over, then removing
    /// the old one.
    pub secrets: Vec<Secret>,
    /// The most sessions this app may hold at once (the guide's "concurrent
    /// scale").
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
}

fn default_max_sessions() -> u32 {
    1000
}

/// A ticket key with the id that names it in tickets.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Names the key in tickets, so keys can be rotated.
    pub key_id: u32,
    /// The key itself, written in hex, at least 16 bytes.
    pub secret: Secret,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Secret key bytes, decoded from hex; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl Secret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 16;
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = decode_hex(&text).map_err(|e| {
            serde::de::Error::custom(match e {
                // Not the digits themselves: the others are the secret's.
                HexError::NotHex { at, .. } => {
                    format!("expected hex digits, found a character that is not one at digit {at}")
                }
                other => other.to_string(),
            })
        })?;
        if bytes.len() < Self::MIN_LEN {
            return Err(serde::de::Error::custom(format!(
                "expected a secret of at least {} bytes ({} hex digits), found {} bytes",
                Self::MIN_LEN,
                Self::MIN_LEN * 2,
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }
}

/// Decodes hex digits (either case) into bytes; the error says what was
/// expected and where.
///
/// ```
/// use cloudproxy_server::config::decode_hex;
///
/// assert_eq!(decode_hex("00ff10"), Ok(vec![0x00, 0xff, 0x10]));
/// assert!(decode_hex("é").unwrap_err().to_string().contains("at digit 0")); // 2 bytes, not hex
/// ```
pub fn decode_hex(text: &str) -> Result<Vec<u8>, HexError> {
    if text.len() % 2 != 0 {
        return Err(HexError::OddLength { len: text.len() });
    }
    text.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| HexError::NotHex {
                    found: String::from_utf8_lossy(pair).into_owned(),
                    at: i * 2,
                })
        })
        .collect()
}

/// Why text is not hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexError {
    /// An odd number of digits.
    #[error("expected an even number of hex digits, found {len}")]
    OddLength {
        /// The number of digits (bytes of text).
        len: usize,
    },
    /// A pair that is not two hex digits.
    #[error("expected hex digits, found {found:?} at digit {at}")]
    NotHex {
        /// The pair, lossily decoded.
        found: String,
        /// Its offset in the text.
        at: usize,
    },
}

/// The destination allowlist section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowlistConfig {
    /// Rules, each `NET`, `NET:PORTS` or `[V6NET]:PORTS`. Empty denies every
    /// destination.
    pub allow: Allowlist,
}

/// Deadlines and sizes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A connection must finish its handshake within this many milliseconds.
    pub handshake_timeout_ms: u64,
    /// A relay binding with no traffic either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// How long a ticket is valid for new bindings; clients refresh it.
    pub allocation_lifetime_secs: u64,
    /// Longest a session may be refreshed for, from its first allocation.
    pub max_session_lifetime_secs: u64,
    /// The keepalive interval told to clients.
    pub keepalive_interval_secs: u64,
    /// Deadline for the relay's own connection to a destination.
    pub connect_timeout_ms: u64,
    /// Deadline for resolving a destination name.
    pub dns_timeout_ms: u64,
    /// Largest frame accepted on any TCP connection.
    pub max_frame_len: u32,
    /// Per-direction pipe (splice) or copy buffer of the TCP relay and of
    /// SOCKS5 CONNECT, held only while data flows. At most 16 MiB.
    pub relay_buffer_len: u32,
    /// Linux: move relayed TCP bytes with splice(2) through a pipe instead of
    /// copying them through user space (about half the relay's CPU per byte).
    /// Ignored on other systems, which always copy.
    pub relay_splice: bool,
    /// How long shutdown lets sessions drain before closing them.
    pub drain_timeout_ms: u64,
    /// Bindings one session (one ticket, or one SOCKS5 login) may hold at
    /// once on this node: TCP streams, UDP-over-TCP, UDP bindings and
    /// SOCKS5 requests together.
    pub max_bindings_per_session: u32,
    /// Upstream sockets one app's bindings may hold at once on this node.
    /// With several apps, each is also held to half the node's descriptor
    /// budget, so one app always leaves descriptors for the others.
    pub max_upstream_sockets_per_app: u32,
    /// Descriptors never given to bindings: kept for listeners, connections
    /// still in their handshake, logs.
    pub reserved_fds: u32,
    /// Name lookups one app may have in flight at once; more are refused at
    /// once (a lookup counts until the resolver really returns).
    pub dns_lookups_in_flight_per_app: u32,
    /// Name lookups one app may start a second (the burst is one second's
    /// worth); more are refused at once.
    pub dns_lookups_per_sec_per_app: u32,
    /// Failed logins (wrong SOCKS5 password, wrong allocation proof, bad
    /// ticket) one source address may make at once before it is refused.
    pub login_failure_burst: u32,
    /// Failed logins a minute one source address may make after its burst.
    pub login_failures_per_minute: u32,
    /// Source addresses the login-failure limiter remembers at once.
    pub login_failure_sources: u32,
}

/// The largest accepted `limits.relay_buffer_len`: each flowing direction
/// holds one buffer (or pipe) of this size.
pub const MAX_RELAY_BUFFER_LEN: u32 = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            allocation_lifetime_secs: 600,
            max_session_lifetime_secs: 24 * 3_600,
            keepalive_interval_secs: 15,
            connect_timeout_ms: 5_000,
            dns_timeout_ms: 2_000,
            max_frame_len: 64 * 1024,
            relay_buffer_len: 256 * 1024,
            relay_splice: true,
            drain_timeout_ms: 10_000,
            max_bindings_per_session: 8,
            max_upstream_sockets_per_app: 10_000,
            reserved_fds: 128,
            dns_lookups_in_flight_per_app: 8,
            dns_lookups_per_sec_per_app: 50,
            login_failure_burst: 10,
            login_failures_per_minute: 30,
            login_failure_sources: 10_000,
        }
    }
}

impl Limits {
    /// The handshake deadline.
    #[must_use]
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The idle timeout.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The allocation lifetime.
    #[must_use]
    pub fn allocation_lifetime(&self) -> Duration {
        Duration::from_secs(self.allocation_lifetime_secs)
    }

    /// The destination connect deadline.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The destination name resolution deadline.
    #[must_use]
    pub fn dns_timeout(&self) -> Duration {
        Duration::from_millis(self.dns_timeout_ms)
    }

    /// The shutdown drain deadline.
    #[must_use]
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// A configuration that cannot be used; the service does not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration file: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why; printed in the message, so not also `source()` (see
        /// `docs/decisions.md`, "Error causes are printed once").
        cause: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or form.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
        /// The parser's report, with the offending line and a caret under
        /// it; secret values (app secrets, ticket keys, any long run of hex
        /// digits) are shown as `<redacted>`, key names and caret kept.
        message: String,
    },
    /// The values parse but do not make a usable configuration.
    #[error("{path}:{line}:{column}: `{key}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the fault (1 when it is not one place).
        line: usize,
        /// 1-based column of the fault.
        column: usize,
        /// The key at fault, dotted.
        key: String,
        /// What is wrong and what was expected.
        problem: String,
    },
    /// A command-line flag set a value that does not make a usable
    /// configuration; the problem reads as it would for the file.
    #[error("{flag}: `{key}`: {problem}")]
    InvalidFlag {
        /// The flag, e.g. `--tcp-relay-port`.
        flag: String,
        /// The key it sets, dotted.
        key: String,
        /// What is wrong and what was expected.
        problem: String,
    },
}

/// A configuration that validates but cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnusableConfig {
    /// An app id the protocol cannot carry.
    #[error("app id {id:?}: {cause}")]
    AppId {
        /// The id as configured.
        id: String,
        /// Why the protocol refuses it; printed in the message, so not
        /// also `source()` (see `docs/decisions.md`, "Error causes are
        /// printed once").
        cause: cloudproxy_proto::CodecError,
    },
}

impl ServerConfig {
    /// Reads and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        ConfigDraft::read(path)?.validate()
    }

    /// Parses and validates configuration text; `path` is only used in errors.
    pub fn from_toml_str(path: impl AsRef<Path>, text: &str) -> Result<Self, ConfigError> {
        ConfigDraft::parse(path, text)?.validate()
    }
}

/// A configuration that has parsed but is not checked yet: the file, then
/// the command-line flags laid over it, then one validation of the result,
/// whose errors name the flag or the file line that set the faulty value.
///
/// ```
/// use cloudproxy_server::config::ConfigDraft;
///
/// let mut draft = ConfigDraft::parse("proxy.toml", "[listeners]\nallocation_ports = [9700]\n")?;
/// draft.set_by_flag("--tcp-relay-port", "listeners.tcp_relay_port", |c| {
///     c.listeners.tcp_relay_port = 9700;
/// });
/// let error = draft.validate().unwrap_err().to_string();
/// assert_eq!(
///     error,
///     "--tcp-relay-port: `listeners.tcp_relay_port`: port 9700 is also an allocation port"
/// );
/// # Ok::<(), cloudproxy_server::config::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigDraft {
    config: ServerConfig,
    path: PathBuf,
    text: String,
    /// Dotted key -> the flag that set it last.
    flags: Vec<(String, String)>,
}

impl ConfigDraft {
    /// Reads and parses a configuration file, without checking it.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(path, &text)
    }

    /// Parses configuration text, without checking it; `path` is only used
    /// in errors.
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let config: ServerConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: redact::redact_report(e.to_string().trim_end(), text),
            }
        })?;
        Ok(Self {
            config,
            path: path.to_owned(),
            text: text.to_owned(),
            flags: Vec::new(),
        })
    }

    /// The configuration as it stands.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Lets `flag` change the value at the dotted `key`; an error about that
    /// key then names the flag instead of the file.
    pub fn set_by_flag(&mut self, flag: &str, key: &str, change: impl FnOnce(&mut ServerConfig)) {
        change(&mut self.config);
        self.flags.retain(|(k, _)| k != key);
        self.flags.push((key.to_owned(), flag.to_owned()));
    }

    /// Checks the configuration, file and flags together.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        self.config.validate(&Origins {
            path: &self.path,
            text: &self.text,
            flags: &self.flags,
        })?;
        Ok(self.config)
    }
}

/// Where each value came from: a line of the file, or a flag.
struct Origins<'a> {
    path: &'a Path,
    text: &'a str,
    flags: &'a [(String, String)],
}

impl Origins<'_> {
    fn flag(&self, key: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f.as_str())
    }

    /// An error at a byte offset of the file.
    fn at(&self, offset: usize, key: &str, problem: String) -> ConfigError {
        let (line, column) = line_column(self.text, offset);
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            key: key.to_owned(),
            problem,
        }
    }

    /// An error about `keys[0]`, which the other `keys` bear on: the first
    /// of `keys` set by a flag names that flag; else the file's line that
    /// sets `keys[0]`, or line 1 when a default is at fault.
    fn invalid(&self, keys: &[&str], problem: String) -> ConfigError {
        let key = keys[0];
        if let Some(flag) = keys.iter().find_map(|k| self.flag(k)) {
            return ConfigError::InvalidFlag {
                flag: flag.to_owned(),
                key: key.to_owned(),
                problem,
            };
        }
        self.at(key_offset(self.text, key).unwrap_or(0), key, problem)
    }
}

impl ServerConfig {
    fn validate(&self, origins: &Origins<'_>) -> Result<(), ConfigError> {
        let invalid_at =
            |offset: usize, key: &str, problem: String| origins.at(offset, key, problem);
        let invalid = |key: &str, problem: String| origins.invalid(&[key], problem);
        let mut ids = HashSet::new();
        for app in &self.apps {
            let at = app.id.span().start;
            if app.id.get_ref().is_empty() || app.id.get_ref().len() > 255 {
                return Err(invalid_at(
                    at,
                    "apps.id",
                    "expected an app id of 1 to 255 bytes".into(),
                ));
            }
            if !ids.insert(app.id.get_ref().as_str()) {
                return Err(invalid_at(
                    at,
                    "apps.id",
                    format!("app id {:?} is configured twice", app.id.get_ref()),
                ));
            }
            if app.secrets.is_empty() {
                return Err(invalid_at(
                    at,
                    "apps.secrets",
                    format!(
                        "app {:?} has no secret, so no client could authenticate as it",
                        app.id.get_ref()
                    ),
                ));
            }
            if app.max_sessions == 0 {
                return Err(invalid_at(
                    at,
                    "apps.max_sessions",
                    format!(
                        "app {:?} allows 0 sessions; remove the app instead",
                        app.id.get_ref()
                    ),
                ));
            }
        }
        let listeners = &self.listeners;
        if listeners.allocation_ports.is_empty() {
            return Err(invalid(
                "listeners.allocation_ports",
                "expected at least one allocation port".into(),
            ));
        }
        let mut seen = HashSet::new();
        for &port in &listeners.allocation_ports {
            if port != 0 && !seen.insert(port) {
                return Err(invalid(
                    "listeners.allocation_ports",
                    format!("port {port} is listed twice"),
                ));
            }
        }
        if listeners.tcp_relay_port != 0
            && listeners
                .allocation_ports
                .contains(&listeners.tcp_relay_port)
        {
            return Err(origins.invalid(
                &["listeners.tcp_relay_port", "listeners.allocation_ports"],
                format!(
                    "port {} is also an allocation port",
                    listeners.tcp_relay_port
                ),
            ));
        }
        let udp = &listeners.udp_relay_ports.0;
        if *udp.start() != 0 {
            if let Some(port) = listeners.allocation_ports.iter().find(|p| udp.contains(p)) {
                return Err(origins.invalid(
                    &["listeners.udp_relay_ports", "listeners.allocation_ports"],
                    format!(
                        "range {} includes allocation port {port}",
                        listeners.udp_relay_ports
                    ),
                ));
            }
        }
        if listeners.advertise.is_none() && listeners.bind.is_unspecified() && !self.apps.is_empty()
        {
            // Without an advertised address clients would be told to send to 0.0.0.0.
            return Err(origins.invalid(
                &["listeners.advertise", "listeners.bind"],
                format!(
                    "bind is {} so clients need an address to reach the relays; set listeners.advertise to this node's public address",
                    listeners.bind
                ),
            ));
        }
        let limits = &self.limits;
        for (key, value) in [
            ("limits.handshake_timeout_ms", limits.handshake_timeout_ms),
            ("limits.idle_timeout_ms", limits.idle_timeout_ms),
            (
                "limits.allocation_lifetime_secs",
                limits.allocation_lifetime_secs,
            ),
            ("limits.max_frame_len", u64::from(limits.max_frame_len)),
            (
                "limits.relay_buffer_len",
                u64::from(limits.relay_buffer_len),
            ),
            (
                "limits.max_bindings_per_session",
                u64::from(limits.max_bindings_per_session),
            ),
            (
                "limits.max_upstream_sockets_per_app",
                u64::from(limits.max_upstream_sockets_per_app),
            ),
            (
                "limits.dns_lookups_in_flight_per_app",
                u64::from(limits.dns_lookups_in_flight_per_app),
            ),
            (
                "limits.dns_lookups_per_sec_per_app",
                u64::from(limits.dns_lookups_per_sec_per_app),
            ),
            (
                "limits.login_failure_burst",
                u64::from(limits.login_failure_burst),
            ),
            (
                "limits.login_failures_per_minute",
                u64::from(limits.login_failures_per_minute),
            ),
            (
                "limits.login_failure_sources",
                u64::from(limits.login_failure_sources),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "expected a value above 0".into()));
            }
        }
        // Below a full relay datagram UDP-over-TCP could not carry media;
        // above the protocol maximum the limit would silently not apply.
        let frame_range = MAX_DATAGRAM_PAYLOAD as u64..=MAX_PAYLOAD as u64;
        if !frame_range.contains(&u64::from(limits.max_frame_len)) {
            return Err(invalid(
                "limits.max_frame_len",
                format!(
                    "{} is outside {MAX_DATAGRAM_PAYLOAD}..={MAX_PAYLOAD} bytes (a full relay datagram up to the protocol maximum)",
                    limits.max_frame_len
                ),
            ));
        }
        if limits.relay_buffer_len > MAX_RELAY_BUFFER_LEN {
            return Err(invalid(
                "limits.relay_buffer_len",
                format!(
                    "{} is above the maximum of {MAX_RELAY_BUFFER_LEN} bytes (16 MiB)",
                    limits.relay_buffer_len
                ),
            ));
        }
        let socks5_port = self.socks5.port;
        if self.socks5.enabled && socks5_port != 0 {
            let clash = if listeners.allocation_ports.contains(&socks5_port) {
                Some("an allocation port")
            } else if socks5_port == listeners.tcp_relay_port {
                Some("the TCP relay port")
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(origins.invalid(
                    &[
                        "socks5.port",
                        "listeners.allocation_ports",
                        "listeners.tcp_relay_port",
                    ],
                    format!("port {socks5_port} is also {what}"),
                ));
            }
        }
        if let Some(app) = &self.socks5.no_auth_app {
            if !self.apps.iter().any(|a| a.id.get_ref() == app) {
                return Err(invalid(
                    "socks5.no_auth_app",
                    format!("app {app:?} is not configured in [[apps]]"),
                ));
            }
        }
        if let Some(admin) = self.admin.bind {
            let port = admin.port();
            let same_host = admin.ip() == listeners.bind
                || admin.ip().is_unspecified()
                || listeners.bind.is_unspecified();
            let clash = if port == 0 || !same_host {
                None
            } else if listeners.allocation_ports.contains(&port) {
                Some("an allocation port")
            } else if port == listeners.tcp_relay_port {
                Some("the TCP relay port")
            } else if self.socks5.enabled && port == self.socks5.port {
                Some("the SOCKS5 port")
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(origins.invalid(
                    &[
                        "admin.bind",
                        "listeners.allocation_ports",
                        "listeners.tcp_relay_port",
                        "socks5.port",
                    ],
                    format!("{admin}: port {port} is also {what}; give the admin listener a port of its own, such as 9600"),
                ));
            }
        }
        self.validate_tls(origins)?;
        if !self.apps.is_empty() && self.ticket_keys.is_empty() {
            return Err(invalid(
                "ticket_keys",
                "apps are configured but no ticket key is; add a [[ticket_keys]] entry".into(),
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate_tls(&self, origins: &Origins<'_>) -> Result<(), ConfigError> {
        let tls = &self.tls;
        let Some(listen) = tls.listen_addr(&self.listeners) else {
            return Ok(());
        };
        match (&tls.cert, &tls.key) {
            (Some(_), Some(_)) => {}
            (None, None) if tls.self_signed => {}
            (Some(_), None) => {
                return Err(origins.invalid(
                    &["tls.key", "tls.cert"],
                    "tls.cert is set but not its private key; set tls.key to the key's PEM file"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(origins.invalid(
                    &["tls.cert", "tls.key"],
                    "tls.key is set but not its certificate; set tls.cert to the certificate chain's PEM file".into(),
                ));
            }
            (None, None) => {
                return Err(origins.invalid(
                    &["tls.cert", "tls.listen"],
                    format!(
                        "the TLS port ({listen}) needs a certificate and key: set tls.cert and tls.key to PEM files (`cloudproxy cert` makes a self-signed pair)"
                    ),
                ));
            }
        }
        let port = listen.port();
        let listeners = &self.listeners;
        let same_host = listen.ip() == listeners.bind
            || listen.ip().is_unspecified()
            || listeners.bind.is_unspecified();
        let clash = if port == 0 || !same_host {
            None
        } else if listeners.allocation_ports.contains(&port) {
            Some("an allocation port")
        } else if port == listeners.tcp_relay_port {
            Some("the TCP relay port")
        } else if self.socks5.enabled && port == self.socks5.port {
            Some("the SOCKS5 port")
        } else if self.admin.bind.is_some_and(|a| a.port() == port) {
            Some("the admin port")
        } else {
            None
        };
        if let Some(what) = clash {
            return Err(origins.invalid(
                &[
                    "tls.listen",
                    "listeners.allocation_ports",
                    "listeners.tcp_relay_port",
                    "socks5.port",
                    "admin.bind",
                ],
                format!("{listen}: port {port} is also {what}; the TLS port needs a port of its own, such as 443"),
            ));
        }
        Ok(())
    }
}

/// Byte offset of the line that sets the last segment of a dotted `key`, or
/// `None` when the file does not set it (a default is at fault).
fn key_offset(text: &str, key: &str) -> Option<usize> {
    // In the key's own table first (`bind` is in [listeners] and [admin]),
    // then anywhere, as before tables were told apart.
    if let Some((table, name)) = key.rsplit_once('.') {
        let mut offset = 0;
        let mut current = String::new();
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(header) = trimmed.strip_prefix('[') {
                let header = header.trim_start_matches('[');
                let end = header.find(']').unwrap_or(header.len());
                header[..end].trim().clone_into(&mut current);
            } else if current == table {
                if let Some(rest) = trimmed.strip_prefix(name) {
                    if rest.trim_start().starts_with('=') {
                        return Some(offset + (line.len() - trimmed.len()));
                    }
                }
            }
            offset += line.len();
        }
    }
    let name = key.rsplit('.').next().unwrap_or(key);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(name) {
            if rest.trim_start().starts_with('=') {
                return Some(offset + (line.len() - trimmed.len()));
            }
        }
        offset += line.len();
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
