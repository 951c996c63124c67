//! Through an explicit HTTP proxy: `CONNECT host:port`, authentication
//! (Negotiate, NTLM, Basic: [`crate::proxy_auth`]), and the
//! `HTTPS_PROXY`/`NO_PROXY` convention.
//!
//! The CONNECT target is always a name (`host:port`), never resolved here:
//! behind such a proxy the client often has no DNS of its own. Only
//! `http://` proxies are supported (the tunnel itself carries TLS).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::proxy_auth::{AuthScheme, Challenge, Handshake, base64_decode, parse_challenges};

/// The most a proxy's response header may take.
pub const MAX_RESPONSE_HEADER: usize = 8 * 1024;

/// An explicit HTTP proxy (`http://[user:password@]host:port`).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    /// Its host name or IP address (no brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Credentials, if it needs them (for whichever scheme it asks for).
    pub auth: Option<BasicAuth>,
}

/// Credentials for the proxy, whichever scheme it asks for (the name is
/// from when Basic was the only one). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user name: `DOMAIN\user` (NTLM; for Kerberos `REALM\user`, as
    /// `user@REALM` is sent as an enterprise name MIT's KDC refuses),
    /// `user@domain`, or `user`.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProxy")
            .field("addr", &self.addr())
            .field("auth", &self.auth)
            .finish()
    }
}

impl fmt::Display for HttpProxy {
    /// `http://host:port`, never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.addr())
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A proxy URL that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyUrlError {
    /// `https://` or another scheme than `http://`.
    #[error(
        "HTTP proxy {url:?}: the scheme {scheme:?} is not supported; only http:// proxies are (the tunnel through them is TLS already; TLS to the proxy itself is out of scope)"
    )]
    UnsupportedScheme {
        /// The URL given (credentials removed).
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// No host.
    #[error("HTTP proxy {url:?}: expected http://[user:password@]host:port, found no host")]
    MissingHost {
        /// The URL given (credentials removed).
        url: String,
    },
    /// No port, or not a number in 1..=65535.
    #[error("HTTP proxy {url:?}: expected a port (1-65535) after the host, found {found:?}")]
    BadPort {
        /// The URL given (credentials removed).
        url: String,
        /// What stood where the port should be.
        found: String,
    },
    /// A `%` not followed by two hex digits, or credentials that are not
    /// UTF-8 once decoded.
    #[error("HTTP proxy {url:?}: the credentials are not valid percent-encoded UTF-8")]
    BadPercentEncoding {
        /// The URL given (credentials removed).
        url: String,
    },
    /// A control character (CR, LF, …) in the host or the credentials.
    #[error("HTTP proxy {url:?}: the host or the credentials contain a control character")]
    ControlCharacter {
        /// The URL given (credentials removed).
        url: String,
    },
    /// A path, query or fragment after the authority.
    #[error("HTTP proxy {url:?}: expected nothing after host:port, found {found:?}")]
    TrailingPath {
        /// The URL given (credentials removed).
        url: String,
        /// What followed.
        found: String,
    },
}

impl HttpProxy {
    /// Parses `http://[user:password@]host:port` (the scheme may be left
    /// out; `user` and `password` are percent-decoded; a trailing `/` is
    /// allowed). The port is required.
    pub fn parse(url: &str) -> Result<Self, ProxyUrlError> {
        let url = url.trim();
        let (scheme, rest) = match url.find("://") {
            Some(at) => (&url[..at], &url[at + 3..]),
            None => ("http", url),
        };
        let (userinfo, hostport) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        // Messages never repeat the credentials.
        let shown = || match userinfo {
            Some(_) => format!("{scheme}://***@{hostport}"),
            None => url.to_owned(),
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(ProxyUrlError::UnsupportedScheme {
                url: shown(),
                scheme: scheme.to_owned(),
            });
        }
        let (hostport, path) = match hostport.find(['/', '?', '#']) {
            Some(at) => (&hostport[..at], &hostport[at..]),
            None => (hostport, ""),
        };
        if !path.is_empty() && path != "/" {
            return Err(ProxyUrlError::TrailingPath {
                url: shown(),
                found: path.to_owned(),
            });
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((host, tail)) => (host, tail.strip_prefix(':')),
                None => (v6, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(ProxyUrlError::MissingHost { url: shown() });
        }
        let port = match port.map(|p| (p, p.parse::<u16>())) {
            Some((_, Ok(port))) if port != 0 => port,
            Some((p, _)) => {
                return Err(ProxyUrlError::BadPort {
                    url: shown(),
                    found: p.to_owned(),
                });
            }
            None => {
                return Err(ProxyUrlError::BadPort {
                    url: shown(),
                    found: String::new(),
                });
            }
        };
        let auth = match userinfo {
            None => None,
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let decode = |s: &str| {
                    percent_decode(s)
                        .ok_or_else(|| ProxyUrlError::BadPercentEncoding { url: shown() })
                };
                Some(BasicAuth {
                    user: decode(user)?,
                    password: decode(password)?,
                })
            }
        };
        let has_control = |s: &str| s.chars().any(char::is_control);
        if has_control(host)
            || auth
                .as_ref()
                .is_some_and(|a| has_control(&a.user) || has_control(&a.password))
        {
            return Err(ProxyUrlError::ControlCharacter { url: shown() });
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            auth,
        })
    }

    /// `host:port` (IPv6 in brackets).
    #[must_use]
    pub fn addr(&self) -> String {
        authority(&self.host, self.port)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `HTTPS_PROXY`/`NO_PROXY` convention: which proxy to use for a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// The `https_proxy` value (else `HTTPS_PROXY`), if set and not empty.
    pub https_proxy: Option<String>,
    /// The `no_proxy` value (else `NO_PROXY`), if set and not empty.
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// The convention's values from `var` (a variable's value by name):
    /// the lowercase name wins over the uppercase one, as in curl; empty
    /// values count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let pick = |lower: &str, upper: &str| {
            var(lower)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| var(upper).filter(|v| !v.trim().is_empty()))
        };
        Self {
            https_proxy: pick("https_proxy", "HTTPS_PROXY"),
            no_proxy: pick("no_proxy", "NO_PROXY"),
        }
    }

    /// The convention's values from this process's environment.
    #[must_use]
    pub fn from_process() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The proxy to reach `host` through: none when no proxy is set or
    /// `NO_PROXY` exempts `host`.
    pub fn proxy_for(&self, host: &str) -> Result<Option<HttpProxy>, ProxyUrlError> {
        let Some(url) = &self.https_proxy else {
            return Ok(None);
        };
        if let Some(no_proxy) = &self.no_proxy {
            if NoProxy::parse(no_proxy).matches(host) {
                return Ok(None);
            }
        }
        HttpProxy::parse(url).map(Some)
    }
}

/// A `NO_PROXY` list: `*`, host names (matching themselves and their
/// subdomains; a leading `.` is the same), IP addresses and CIDR blocks;
/// any `:port` is ignored. Entries are separated by commas or spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    names: Vec<String>,
    nets: Vec<IpNet>,
}

impl NoProxy {
    /// Parses a `NO_PROXY` value; entries it cannot read are skipped (the
    /// convention has no error channel).
    #[must_use]
    pub fn parse(value: &str) -> Self {
        let mut list = Self::default();
        for entry in value.split([',', ' ', '\t']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                list.all = true;
                continue;
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                list.nets.push(net);
                continue;
            }
            let host = strip_port(entry);
            if let Ok(ip) = host.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
                continue;
            }
            let name = host.trim_start_matches("*.").trim_start_matches('.');
            if !name.is_empty() {
                list.names.push(name.to_ascii_lowercase());
            }
        }
        list
    }

    /// Whether `host` (a name or an IP address, brackets allowed) goes
    /// direct.
    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.nets.iter().any(|net| net.contains(&ip));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|name| {
            host == *name
                || host
                    .strip_suffix(name.as_str())
                    .is_some_and(|prefix| prefix.ends_with('.'))
        })
    }
}

/// `entry` without a `:port` (brackets of an IPv6 address removed).
fn strip_port(entry: &str) -> &str {
    if let Some(v6) = entry.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match entry.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    }
}

/// A CONNECT through an HTTP proxy failed. Each message is complete: no
/// variant returns its cause again as [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpProxyError {
    /// The proxy answered 407 and the client could not authenticate: no
    /// credentials, no scheme in common, the credentials refused, or the
    /// handshake broken off. Never carries the credentials.
    #[error("{}", auth_failed_text(self))]
    AuthFailed {
        /// The proxy (`http://host:port`).
        proxy: String,
        /// Whether credentials were given.
        had_credentials: bool,
        /// The scheme tried, once one was chosen.
        scheme: Option<AuthScheme>,
        /// The schemes the proxy offered, as it spelled them.
        offered: Vec<String>,
        /// What went wrong, in words.
        detail: String,
    },
    /// The proxy answered another status than 2xx.
    #[error("the HTTP proxy at {proxy} refused CONNECT {target}: {status} {reason}")]
    Refused {
        /// The proxy.
        proxy: String,
        /// The CONNECT target.
        target: String,
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The response is not HTTP.
    #[error(
        "the HTTP proxy at {proxy} sent a malformed response: expected {expected}, found {found:?}"
    )]
    Malformed {
        /// The proxy.
        proxy: String,
        /// What was expected.
        expected: &'static str,
        /// What came (at most 64 bytes, lossily decoded).
        found: String,
    },
    /// The response header did not end within [`MAX_RESPONSE_HEADER`].
    #[error("the HTTP proxy at {proxy} sent a response header longer than {limit} bytes")]
    HeaderTooLarge {
        /// The proxy.
        proxy: String,
        /// The limit.
        limit: usize,
    },
    /// The proxy closed the connection before its header ended.
    #[error("the HTTP proxy at {proxy} closed the connection before answering CONNECT")]
    Closed {
        /// The proxy.
        proxy: String,
    },
    /// The target has a control character (would split the request).
    #[error("the CONNECT target {target:?} contains a control character")]
    BadTarget {
        /// The target.
        target: String,
    },
    /// Reading or writing failed.
    #[error("talking to the HTTP proxy at {proxy}: {cause}")]
    Io {
        /// The proxy.
        proxy: String,
        /// The operating system's error.
        cause: io::Error,
    },
}

fn auth_failed_text(e: &HttpProxyError) -> String {
    let HttpProxyError::AuthFailed {
        proxy,
        had_credentials,
        scheme,
        offered,
        detail,
    } = e
    else {
        return String::new();
    };
    let offered = if offered.is_empty() {
        "no scheme".to_owned()
    } else {
        offered.join(", ")
    };
    match (scheme, had_credentials) {
        (Some(scheme), _) => format!(
            "the HTTP proxy at {proxy} refused the {scheme} authentication (407 Proxy Authentication Required): {detail} (it offered {offered})"
        ),
        (None, true) => format!(
            "the HTTP proxy at {proxy} requires authentication (407) by {offered}: {detail}"
        ),
        (None, false) => format!(
            "the HTTP proxy at {proxy} requires authentication (407) by {offered}, and no credentials were given (http://[DOMAIN%5C]user:password@host:port, or the app's proxy-authentication callback)"
        ),
    }
}

impl HttpProxyError {
    /// Whether the proxy refused or required credentials (407).
    #[must_use]
    pub fn is_auth_failed(&self) -> bool {
        matches!(self, Self::AuthFailed { .. })
    }

    /// A copy (`Io` keeps the kind and message of its cause).
    #[must_use]
    pub fn duplicate(&self) -> Self {
        match self {
            Self::AuthFailed {
                proxy,
                had_credentials,
                scheme,
                offered,
                detail,
            } => Self::AuthFailed {
                proxy: proxy.clone(),
                had_credentials: *had_credentials,
                scheme: *scheme,
                offered: offered.clone(),
                detail: detail.clone(),
            },
            Self::Refused {
                proxy,
                target,
                status,
                reason,
            } => Self::Refused {
                proxy: proxy.clone(),
                target: target.clone(),
                status: *status,
                reason: reason.clone(),
            },
            Self::Malformed {
                proxy,
                expected,
                found,
            } => Self::Malformed {
                proxy: proxy.clone(),
                expected,
                found: found.clone(),
            },
            Self::HeaderTooLarge { proxy, limit } => Self::HeaderTooLarge {
                proxy: proxy.clone(),
                limit: *limit,
            },
            Self::Closed { proxy } => Self::Closed {
                proxy: proxy.clone(),
            },
            Self::BadTarget { target } => Self::BadTarget {
                target: target.clone(),
            },
            Self::Io { proxy, cause } => Self::Io {
                proxy: proxy.clone(),
                cause: io::Error::new(cause.kind(), cause.to_string()),
            },
        }
    }
}

/// The most legs an authentication handshake may take (NTLM takes two,
/// Negotiate one or two, Basic one).
const MAX_LEGS: usize = 6;

/// The largest 407 body read and thrown away to keep the connection; a
/// larger one (or one delimited by the close) costs a new connection.
const MAX_DISCARDED_BODY: usize = 64 * 1024;

/// Asks `proxy`, already connected as `stream`, to open a tunnel to
/// `target_host:target_port` (a name, not resolved here), authenticating
/// as [`connect_with`] does; if the proxy closes the connection between
/// legs, this fails ([`HttpProxyError::Closed`]) instead of reconnecting.
pub async fn connect<S>(
    stream: S,
    proxy: &HttpProxy,
    target_host: &str,
    target_port: u16,
) -> Result<Prefixed<S>, HttpProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_with(
        stream,
        || {
            std::future::ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the proxy closed the connection between authentication legs, and there is no way to reconnect here",
            )))
        },
        proxy,
        target_host,
        target_port,
    )
    .await
}

/// Asks `proxy`, already connected as `stream`, to open a tunnel to
/// `target_host:target_port` (a name, not resolved here). Returns the
/// tunnel; bytes that came after the proxy's response header are read from
/// it first. Not bounded in time: the caller's attempt timeout bounds it.
///
/// The first `CONNECT` carries no credentials. On a `407` the strongest
/// scheme the proxy offers and the client can do (Negotiate > NTLM > Basic)
/// is chosen and its handshake runs leg by leg on the same connection (the
/// 407's body is read and thrown away to keep it). When the proxy closes the
/// connection after a 407, `redial` makes a new one: before a handshake or
/// at its start (NTLM and Negotiate cannot continue on another connection).
pub async fn connect_with<S, F, Fut>(
    stream: S,
    mut redial: F,
    proxy: &HttpProxy,
    target_host: &str,
    target_port: u16,
) -> Result<Prefixed<S>, HttpProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let shown = proxy.to_string();
    let target = authority(target_host, target_port);
    if target.chars().any(char::is_control) {
        return Err(HttpProxyError::BadTarget { target });
    }
    let io_error = |cause| HttpProxyError::Io {
        proxy: shown.clone(),
        cause,
    };
    let mut stream = stream;
    // Bytes read past the last response (kept for the next one).
    let mut pending: Vec<u8> = Vec::new();
    let mut authorization: Option<String> = None;
    let mut handshake: Option<(AuthScheme, Handshake)> = None;
    let mut offered: Vec<String> = Vec::new();
    // Schemes that failed, and the first (strongest) failure, reported
    // when every offered scheme has failed.
    let mut tried: Vec<AuthScheme> = Vec::new();
    let mut first_failure: Option<(AuthScheme, String)> = None;
    // Whether the request about to go is a handshake's first leg.
    let mut restartable = false;
    let auth_failed = |scheme: Option<AuthScheme>, offered: &[String], detail: String| {
        HttpProxyError::AuthFailed {
            proxy: shown.clone(),
            had_credentials: proxy.auth.is_some(),
            scheme,
            offered: offered.to_vec(),
            detail,
        }
    };
    for _ in 0..MAX_LEGS {
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(value) = &authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        // Ask to keep the connection for the next leg (HTTP/1.1's default;
        // some proxies want it said).
        request.push_str("Proxy-Connection: Keep-Alive\r\n\r\n");
        let head = match exchange(&mut stream, &request, &mut pending, &shown).await {
            // A proxy that closed a connection it said it kept, before a
            // handshake's first leg: that leg can start on a new one.
            Err(HttpProxyError::Closed { .. } | HttpProxyError::Io { .. }) if restartable => {
                pending.clear();
                stream = redial().await.map_err(io_error)?;
                exchange(&mut stream, &request, &mut pending, &shown).await?
            }
            other => other?,
        };
        restartable = false;
        match head.status {
            200..=299 => {
                let early = Bytes::from(std::mem::take(&mut pending));
                return Ok(Prefixed::new(early, stream));
            }
            407 => {}
            status => {
                return Err(HttpProxyError::Refused {
                    proxy: shown,
                    target,
                    status,
                    reason: head.reason,
                });
            }
        }
        let challenges: Vec<Challenge> = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("proxy-authenticate"))
            .flat_map(|(_, value)| parse_challenges(value))
            .collect();
        offered = challenges.iter().map(|c| c.scheme.clone()).collect();
        offered.dedup();
        let kept = discard_body(&mut stream, &mut pending, &head)
            .await
            .map_err(io_error)?;
        let Some(credentials) = &proxy.auth else {
            return Err(auth_failed(None, &offered, String::new()));
        };
        // The running handshake's next leg; a scheme the proxy refused
        // gives way to the next weaker one it offered (as browsers do: a
        // proxy offering Negotiate, NTLM and Basic may accept only some).
        let mut next = None;
        if let Some((scheme, running)) = handshake.as_mut() {
            let scheme = *scheme;
            let token = challenges
                .iter()
                .filter(|c| c.known_scheme() == Some(scheme))
                .find_map(|c| c.token.clone());
            match token {
                None => {
                    let detail = "it refused the user name or password".to_owned();
                    first_failure.get_or_insert((scheme, detail));
                    tried.push(scheme);
                    handshake = None;
                }
                Some(_) if !kept => {
                    return Err(auth_failed(
                        Some(scheme),
                        &offered,
                        format!(
                            "it closed the connection in the middle of the {scheme} handshake, which needs one kept-alive connection"
                        ),
                    ));
                }
                Some(token) => {
                    let Some(token) = base64_decode(&token) else {
                        return Err(auth_failed(
                            Some(scheme),
                            &offered,
                            format!(
                                "expected a base64 {scheme} token in Proxy-Authenticate, found {:?}",
                                token.chars().take(32).collect::<String>()
                            ),
                        ));
                    };
                    next = Some(
                        running
                            .step(credentials, Some(token))
                            .await
                            .map_err(|detail| auth_failed(Some(scheme), &offered, detail))?,
                    );
                }
            }
        }
        if next.is_none() {
            // Strongest first, skipping what failed; a scheme that cannot
            // even start here (no KDC for Kerberos) gives way too.
            let mut candidates: Vec<AuthScheme> = challenges
                .iter()
                .filter_map(Challenge::known_scheme)
                .filter(|s| !tried.contains(s))
                .collect();
            candidates.sort_unstable_by(|a, b| b.cmp(a));
            candidates.dedup();
            for scheme in candidates {
                tracing::debug!(proxy = %shown, %scheme, offered = ?offered, "authenticating to the HTTP proxy");
                let started = match Handshake::start(scheme, credentials, &proxy.host) {
                    Ok(mut started) => started
                        .step(credentials, None)
                        .await
                        .map(|first| (started, first)),
                    Err(detail) => Err(detail),
                };
                match started {
                    Ok((started, first)) => {
                        handshake = Some((scheme, started));
                        restartable = true;
                        next = Some(first);
                        break;
                    }
                    Err(detail) => {
                        tracing::debug!(proxy = %shown, %scheme, %detail, "this scheme cannot start; trying the next");
                        first_failure.get_or_insert((scheme, detail));
                        tried.push(scheme);
                    }
                }
            }
        }
        let Some(value) = next else {
            return Err(match first_failure.take() {
                Some((scheme, detail)) => auth_failed(Some(scheme), &offered, detail),
                None => auth_failed(
                    None,
                    &offered,
                    "none of its schemes is one the client can do (Negotiate, NTLM, Basic)"
                        .to_owned(),
                ),
            });
        };
        authorization = Some(value);
        if !kept {
            pending.clear();
            stream = redial().await.map_err(io_error)?;
        }
    }
    let scheme = handshake.map(|(scheme, _)| scheme);
    Err(auth_failed(
        scheme,
        &offered,
        format!("the handshake did not end within {MAX_LEGS} legs"),
    ))
}

/// Sends `request` and reads the response's header.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
    pending: &mut Vec<u8>,
    shown: &str,
) -> Result<Head, HttpProxyError> {
    let io_error = |cause| HttpProxyError::Io {
        proxy: shown.to_owned(),
        cause,
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    read_head(stream, pending, shown).await
}

/// A response's status line and header fields.
struct Head {
    status: u16,
    reason: String,
    /// Whether the response is HTTP/1.0.
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a `Connection`/`Proxy-Connection` field has `token`.
    fn connection_has(&self, token: &str) -> bool {
        self.headers.iter().any(|(n, v)| {
            (n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("proxy-connection"))
                && v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }
}

/// Reads one response header (starting with `pending`); leaves what follows
/// it in `pending`.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
    shown: &str,
) -> Result<Head, HttpProxyError> {
    let header_len = loop {
        if let Some(end) = find_header_end(pending) {
            break end;
        }
        if pending.len() >= MAX_RESPONSE_HEADER {
            return Err(HttpProxyError::HeaderTooLarge {
                proxy: shown.to_owned(),
                limit: MAX_RESPONSE_HEADER,
            });
        }
        let mut chunk = [0u8; 1024];
        let room = (MAX_RESPONSE_HEADER + 4 - pending.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(|cause| HttpProxyError::Io {
                proxy: shown.to_owned(),
                cause,
            })?;
        if n == 0 {
            return Err(HttpProxyError::Closed {
                proxy: shown.to_owned(),
            });
        }
        pending.extend_from_slice(&chunk[..n]);
    };
    if header_len > MAX_RESPONSE_HEADER {
        return Err(HttpProxyError::HeaderTooLarge {
            proxy: shown.to_owned(),
            limit: MAX_RESPONSE_HEADER,
        });
    }
    let header: Vec<u8> = pending.drain(..header_len).collect();
    let (status, reason) = parse_status_line(&header, shown)?;
    let text = String::from_utf8_lossy(&header);
    let headers = text
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Head {
        status,
        reason,
        http10: header.starts_with(b"HTTP/1.0"),
        headers,
    })
}

/// Reads and drops a 407's body; whether the connection can carry the next
/// leg (false: the proxy closes it, or its body is delimited by the close
/// or too large to read).
async fn discard_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
    head: &Head,
) -> io::Result<bool> {
    if head.connection_has("close") || head.http10 && !head.connection_has("keep-alive") {
        return Ok(false);
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        return discard_chunked(stream, pending).await;
    }
    let Some(length) = head.header("content-length") else {
        return Ok(false);
    };
    let Ok(length) = length.parse::<usize>() else {
        return Ok(false);
    };
    if length > MAX_DISCARDED_BODY {
        return Ok(false);
    }
    fill(stream, pending, length).await
}

/// Reads until `pending` holds `n` bytes, then drops them; false if the
/// connection ended first.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
    n: usize,
) -> io::Result<bool> {
    while pending.len() < n {
        let mut chunk = [0u8; 4096];
        let got = stream.read(&mut chunk).await?;
        if got == 0 {
            return Ok(false);
        }
        pending.extend_from_slice(&chunk[..got]);
    }
    pending.drain(..n);
    Ok(true)
}

/// Reads more of a chunked body's size or trailer line into `pending`;
/// `false` when the stream ended or the line would pass 1 KiB (no proxy
/// sends such a line: the body is abandoned, not the connection's reader).
async fn read_more_of_a_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> io::Result<bool> {
    if pending.len() > 1024 {
        return Ok(false);
    }
    let mut chunk = [0u8; 1024];
    let got = stream.read(&mut chunk).await?;
    pending.extend_from_slice(&chunk[..got]);
    Ok(got > 0)
}

/// Drops a chunked body (bounded by [`MAX_DISCARDED_BODY`] in all).
async fn discard_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut total = 0usize;
    loop {
        // The chunk-size line.
        let line_end = loop {
            if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if !read_more_of_a_line(stream, pending).await? {
                return Ok(false);
            }
        };
        let line = String::from_utf8_lossy(&pending[..line_end]).into_owned();
        pending.drain(..line_end + 2);
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Ok(false);
        };
        total = total.saturating_add(size);
        if total > MAX_DISCARDED_BODY {
            return Ok(false);
        }
        if size == 0 {
            // Trailers (none expected) end with a blank line.
            loop {
                if pending.starts_with(b"\r\n") {
                    pending.drain(..2);
                    return Ok(true);
                }
                if let Some(end) = find_header_end(pending) {
                    pending.drain(..end);
                    return Ok(true);
                }
                if !read_more_of_a_line(stream, pending).await? {
                    return Ok(false);
                }
            }
        }
        if !fill(stream, pending, size + 2).await? {
            return Ok(false);
        }
    }
}

/// The length of the header including its blank line, once it is in `buf`.
fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

fn parse_status_line(header: &[u8], proxy: &str) -> Result<(u16, String), HttpProxyError> {
    let line_end = header
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(header.len());
    let line = &header[..line_end];
    let malformed = || HttpProxyError::Malformed {
        proxy: proxy.to_owned(),
        expected: "a status line 'HTTP/1.x NNN reason'",
        found: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(malformed());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 {
        return Err(malformed());
    }
    let status = code.parse::<u16>().map_err(|_| malformed())?;
    let reason = parts.next().unwrap_or_default().trim().to_owned();
    Ok((status, reason))
}

/// A stream whose first reads return `prefix` (bytes already read from
/// it, e.g. what a proxy sent right after its response header).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read after `prefix`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The bytes not yet read from the prefix.
    #[must_use]
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The wrapped stream and the unread prefix.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_chunked_407_body_is_dropped_and_what_follows_kept() {
        let mut stream: &[u8] = b"lo\r\n0\r\n\r\nHTTP/1.1 200";
        let mut pending = b"5;ext=1\r\nhel".to_vec();
        assert!(discard_chunked(&mut stream, &mut pending).await.unwrap());
        assert_eq!(pending, b"HTTP/1.1 200");
        // A size line that never ends gives up on the body, bounded.
        let long = vec![b'1'; 4096];
        let mut stream: &[u8] = &long;
        let mut pending = Vec::new();
        assert!(!discard_chunked(&mut stream, &mut pending).await.unwrap());
        // So does a stream that ends inside the trailer.
        let mut stream: &[u8] = b"0\r\nX-T";
        assert!(!discard_chunked(&mut stream, &mut Vec::new()).await.unwrap());
    }

    #[test]
    fn ports_are_stripped_from_no_proxy_entries() {
        assert_eq!(strip_port("example.com:443"), "example.com");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
    }
}
