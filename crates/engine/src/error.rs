//! [`EngineError`]: everything an [`Engine`](crate::Engine) call can fail with.

use std::net::SocketAddr;
use std::time::Duration;

use cloudproxy_proto::ErrorCode;

/// Why an engine call failed. Each message says what was expected, what was
/// found and where, so the reader knows what to change.
///
/// Each message says what happened once: a variant's `Display` includes its
/// cause, so no variant returns that cause again as
/// [`std::error::Error::source`]; the typed cause stays in the variant's
/// field (or, for [`EngineError::Resolve`] and [`EngineError::Tunnel`], is
/// the wrapped error itself, shown as it is).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A builder value is invalid (the engine was not built).
    #[error("invalid engine configuration `{what}`: expected {expected}, found {found}")]
    InvalidConfig {
        /// The builder setting.
        what: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What was given.
        found: String,
    },
    /// The `set_parameters` string did not parse or a known key had a wrong
    /// value; nothing was applied.
    #[error("set_parameters: {0}; no parameter was applied")]
    InvalidParameters(cloudproxy_params::ParamError),
    /// The call is not allowed in the engine's current state; nothing changed.
    #[error("{operation} {hint} (the engine is {state})")]
    InvalidState {
        /// The call that was refused.
        operation: &'static str,
        /// The engine's state when it was called, e.g. `in channel "room"`.
        state: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// A channel name or user id that the protocol cannot carry.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A message or media payload is larger than the protocol allows.
    #[error("{what} of {len} bytes is too large: at most {max} bytes fit in one frame")]
    PayloadTooLarge {
        /// `message` or `media`.
        what: &'static str,
        /// The payload length.
        len: usize,
        /// The largest payload allowed.
        max: usize,
    },
    /// The proxy server's host name could not be resolved.
    #[error(transparent)]
    Resolve(#[from] cloudproxy_transport::resolve::ResolveError),
    /// Allocating a proxy session or opening a relay path failed (every
    /// address tried is listed), or a proxy refused it.
    #[error(transparent)]
    Tunnel(#[from] cloudproxy_transport::tunnel::TunnelError),
    /// The proxy was reached and refused the app id or its credential
    /// (`BAD_CREDENTIAL`, 200).
    #[error(
        "the proxy at {proxy} refused app id {app_id:?} or its credential ({code_name}, {code_number}): check that the app id is the one the proxy's operator configured, and that the credential is the app secret given as the hex string that `cloudproxy serve` prints (or the proxy's configuration lists under [[apps]] secrets){hint}",
        code_name = code.name().unwrap_or("unknown code"),
        code_number = code.0
    )]
    CredentialRefused {
        /// The app id the engine was built with.
        app_id: String,
        /// The proxy address that refused.
        proxy: SocketAddr,
        /// The code it sent.
        code: ErrorCode,
        /// A more specific hint, when the credential gives one (empty
        /// otherwise).
        hint: String,
    },
    /// The proxy's TLS certificate is not one the engine trusts (neither the
    /// system roots nor the configured pin vouch for it): most often a
    /// TLS-intercepting proxy or firewall on the way. The join fails at
    /// once, without trying further rungs.
    #[error(
        "the proxy's TLS certificate is not trusted (at {proxy}): {detail}; is a TLS-intercepting proxy or firewall on the way? Trust the proxy's own CA or pin its certificate (EngineBuilder::tls_trust or rtc.proxy_tls_pin)"
    )]
    UntrustedCertificate {
        /// The TLS address (or HTTP proxy target) that presented it.
        proxy: String,
        /// What the certificate check found.
        detail: String,
    },
    /// The HTTP proxy answered `CONNECT` with `407 Proxy Authentication
    /// Required`: the credentials were refused (or none were given). The
    /// join fails at once.
    #[error(
        "the HTTP proxy {http_proxy} refused the credentials (407 Proxy Authentication Required){hint}"
    )]
    ProxyAuthFailed {
        /// The HTTP proxy (password hidden).
        http_proxy: String,
        /// What to check.
        hint: &'static str,
    },
    /// `ProxyMode::ForceUdp` and the proxy's UDP relay did not answer.
    #[error(
        "ProxyMode::ForceUdp requires media over UDP, but the proxy's UDP relay did not answer within {probe:?}: UDP looks blocked on this network; use ProxyMode::On or ProxyMode::ForceTcp to carry media over TCP"
    )]
    UdpBlocked {
        /// How long the UDP relay was probed.
        probe: Duration,
    },
    /// The media network could not be reached directly, or its media path
    /// (UDP) was not confirmed in time.
    #[error("connecting directly to the media network at {addr}: {reason}")]
    Direct {
        /// The media network's TCP address, or its UDP address when the
        /// media path was not confirmed.
        addr: SocketAddr,
        /// What failed.
        reason: DirectFailure,
    },
    /// `ProxyMode::Auto`: the direct path and the proxy both failed.
    #[error("the direct path failed ({direct}), and so did the proxy: {proxy}")]
    AutoFailed {
        /// Why the direct path failed.
        direct: Box<Self>,
        /// Why the proxy failed.
        proxy: Box<Self>,
    },
    /// The media network refused the join.
    #[error("the media network refused the join: {code}: {message}")]
    JoinRefused {
        /// The protocol error code (400 join refused, 401 resume failed).
        code: ErrorCode,
        /// The edge's explanation.
        message: String,
    },
    /// The media network sent something the protocol does not allow here.
    #[error("protocol error while {what}: expected {expected}, found {found}")]
    Protocol {
        /// What the engine was doing.
        what: &'static str,
        /// What it expected.
        expected: &'static str,
        /// What arrived.
        found: String,
    },
    /// A step did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// The step.
        what: &'static str,
        /// The bound that passed.
        after: Duration,
    },
    /// A socket operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// The step.
        what: &'static str,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// The connection to the channel was lost and could not be re-established.
    #[error("the channel connection was lost: {0}")]
    Disconnected(Disconnect),
}

/// Why the direct path to the media network failed
/// ([`EngineError::Direct`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectFailure {
    /// The TCP connection was not established.
    #[error("{0}")]
    Connect(std::io::Error),
    /// Joining took longer than the direct timeout.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// The media network never confirmed the UDP media path.
    #[error("the media path (UDP) was not confirmed within {after:?}: {why}; UDP may be blocked")]
    MediaUnconfirmed {
        /// The direct timeout.
        after: Duration,
        /// What the media path did meanwhile.
        why: MediaUnconfirmed,
    },
}

/// Why a media path's registration was not confirmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaUnconfirmed {
    /// The deadline passed with no confirmation.
    #[error("no confirmation of the media registration")]
    NoConfirmation,
    /// The media path closed first.
    #[error(transparent)]
    Closed(MediaClosed),
}

/// The media path through the proxy closed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the media path closed: {}", reason.as_deref().unwrap_or("no reason given"))]
pub struct MediaClosed {
    /// Why, as the tunnel reported it.
    pub reason: Option<String>,
}

/// Why an engine call found no channel session ([`EngineError::Disconnected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Disconnect {
    /// The session task ended (it left, failed to reconnect, or the engine
    /// shut down) while the call was made.
    #[error("the channel session has ended")]
    SessionEnded,
}

impl From<cloudproxy_params::ParamError> for EngineError {
    fn from(e: cloudproxy_params::ParamError) -> Self {
        Self::InvalidParameters(e)
    }
}
