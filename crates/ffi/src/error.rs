//! [`CloudProxyError`]: what an SDK call fails with, as a typed code and a
//! message, in every language.

use std::net::AddrParseError;

use cloudproxy_engine::{CredentialError, EngineError, ErrorCode as ProtoCode, TunnelError};

/// Why an SDK call failed. Kotlin, Swift and Python see one exception class
/// per variant whose message is this error's `Display` (what was expected,
/// what was found, where); C sees [`CloudProxyError::code`] and the same
/// message.
///
/// Engine errors are sorted into variants by what the app can do about
/// them; the engine's own error stays inside, typed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum CloudProxyError {
    /// An [`EngineConfig`](crate::EngineConfig) value the engine refuses
    /// (app id, media network, default domain).
    #[error(transparent)]
    InvalidConfig(EngineError),
    /// `credential_hex` is not the hex string `cloudproxy serve` prints.
    #[error("invalid credential_hex: {0}")]
    InvalidCredential(CredentialError),
    /// `credential_hex` is hex but shorter than any secret a proxy accepts
    /// (code [`ErrorCode::InvalidCredential`]).
    #[error(
        "invalid credential_hex: expected the app secret as `cloudproxy serve` prints it, at least {min} bytes ({} hex digits), found {found} bytes",
        min * 2
    )]
    CredentialTooShort {
        /// The shortest secret a proxy accepts, in bytes.
        min: usize,
        /// The length given, in bytes.
        found: usize,
    },
    /// A media network address that is not `ip:port`.
    #[error("invalid {what}: expected an `ip:port` socket address, found {found:?} ({cause})")]
    InvalidAddress {
        /// Which setting.
        what: &'static str,
        /// What was given.
        found: String,
        /// The parser's complaint.
        cause: AddrParseError,
    },
    /// The `setParameters` string did not parse, or a known key had a wrong
    /// value; nothing was applied.
    #[error(transparent)]
    InvalidParameters(EngineError),
    /// The call is not allowed now (parameters while in a channel, a second
    /// join, sending outside a channel); nothing changed.
    #[error(transparent)]
    InvalidState(EngineError),
    /// An argument the protocol cannot carry (channel name, empty media),
    /// or, from C, a null or non-UTF-8 string.
    #[error(transparent)]
    InvalidArgument(EngineError),
    /// A message or media payload above the protocol's maximum.
    #[error(transparent)]
    PayloadTooLarge(EngineError),
    /// The proxy could not be resolved or reached, or refused the session.
    #[error(transparent)]
    ProxyUnreachable(EngineError),
    /// The proxy answered but could not reach the media network
    /// (`DESTINATION_UNREACHABLE`, 303): the media addresses are wrong, or
    /// the media network is down or not reachable from the proxy.
    #[error(transparent)]
    MediaUnreachable(EngineError),
    /// The proxy refused the app id or its credential.
    #[error(transparent)]
    CredentialRefused(EngineError),
    /// `ForceUdp` and the proxy's UDP relay did not answer.
    #[error(transparent)]
    UdpBlocked(EngineError),
    /// The media network could not be reached directly (and, in `Auto`,
    /// neither through the proxy).
    #[error(transparent)]
    DirectFailed(EngineError),
    /// The media network refused the join.
    #[error(transparent)]
    JoinRefused(EngineError),
    /// The media network broke the protocol.
    #[error(transparent)]
    Protocol(EngineError),
    /// A step did not finish in time.
    #[error(transparent)]
    Timeout(EngineError),
    /// A socket operation failed.
    #[error(transparent)]
    Io(EngineError),
    /// The channel connection was lost for good.
    #[error(transparent)]
    Disconnected(EngineError),
    /// An engine error this SDK version does not sort yet.
    #[error(transparent)]
    Other(EngineError),
    /// The proxy's TLS certificate is not trusted: a TLS-intercepting proxy
    /// or firewall on the way, or a missing pin for a private deployment.
    #[error(transparent)]
    UntrustedCertificate(EngineError),
    /// The HTTP proxy refused the credentials (`407`).
    #[error(transparent)]
    ProxyAuthFailed(EngineError),
    /// The engine was destroyed; create a new one.
    #[error("{operation}: the engine was destroyed; create a new engine")]
    Destroyed {
        /// The call that was refused.
        operation: &'static str,
    },
    /// The library could not start its runtime (threads, I/O driver).
    #[error("starting the engine's runtime: {0}")]
    Runtime(std::io::Error),
    /// From C: a required pointer argument is `NULL`.
    #[error("{what}: expected a pointer, found NULL")]
    NullPointer {
        /// Which argument.
        what: &'static str,
    },
    /// From C: a proxy mode number that is not a `CpProxyMode`.
    #[error("mode: expected a CpProxyMode value (0 to 5), found {value}")]
    UnknownProxyMode {
        /// The number given.
        value: u32,
    },
    /// From C: a string argument that is null or not UTF-8.
    #[error("{what}: expected a NUL-terminated UTF-8 string, found {found}")]
    InvalidString {
        /// Which argument.
        what: &'static str,
        /// `NULL`, or the UTF-8 error.
        found: InvalidStringKind,
    },
}

/// What was wrong with a C string argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidStringKind {
    /// A null pointer where a string is required.
    Null,
    /// Bytes that are not UTF-8, from this offset.
    NotUtf8 {
        /// The offset of the first invalid byte.
        valid_up_to: usize,
    },
}

impl std::fmt::Display for InvalidStringKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => f.write_str("NULL"),
            Self::NotUtf8 { valid_up_to } => {
                write!(f, "bytes that are not UTF-8 from offset {valid_up_to}")
            }
        }
    }
}

impl From<EngineError> for CloudProxyError {
    /// Sorts by variant only, so the engine's fields can change freely.
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::InvalidConfig { .. } => Self::InvalidConfig(e),
            EngineError::InvalidParameters(..) => Self::InvalidParameters(e),
            EngineError::InvalidState { .. } => Self::InvalidState(e),
            EngineError::InvalidArgument { .. } => Self::InvalidArgument(e),
            EngineError::PayloadTooLarge { .. } => Self::PayloadTooLarge(e),
            EngineError::Tunnel(TunnelError::Refused { code, .. })
                if code == ProtoCode::DESTINATION_UNREACHABLE =>
            {
                Self::MediaUnreachable(e)
            }
            EngineError::Resolve(..) | EngineError::Tunnel(..) => Self::ProxyUnreachable(e),
            EngineError::CredentialRefused { .. } => Self::CredentialRefused(e),
            EngineError::UdpBlocked { .. } => Self::UdpBlocked(e),
            EngineError::Direct { .. } | EngineError::AutoFailed { .. } => Self::DirectFailed(e),
            EngineError::JoinRefused { .. } => Self::JoinRefused(e),
            EngineError::Protocol { .. } => Self::Protocol(e),
            EngineError::Timeout { .. } => Self::Timeout(e),
            EngineError::Io { .. } => Self::Io(e),
            EngineError::Disconnected(..) => Self::Disconnected(e),
            EngineError::UntrustedCertificate { .. } => Self::UntrustedCertificate(e),
            EngineError::ProxyAuthFailed { .. } => Self::ProxyAuthFailed(e),
            _ => Self::Other(e),
        }
    }
}

/// The error codes of the C ABI (`CP_ERROR_CODE_*` in `cloudproxy.h`), one
/// per [`CloudProxyError`] variant; `Ok` is 0. The numbers are stable:
/// new codes are only ever added.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Success.
    Ok = 0,
    /// [`CloudProxyError::InvalidConfig`].
    InvalidConfig = 1,
    /// [`CloudProxyError::InvalidCredential`].
    InvalidCredential = 2,
    /// [`CloudProxyError::InvalidAddress`].
    InvalidAddress = 3,
    /// [`CloudProxyError::InvalidParameters`].
    InvalidParameters = 4,
    /// [`CloudProxyError::InvalidState`].
    InvalidState = 5,
    /// [`CloudProxyError::InvalidArgument`], and from C
    /// [`CloudProxyError::InvalidString`], [`CloudProxyError::NullPointer`]
    /// and [`CloudProxyError::UnknownProxyMode`].
    InvalidArgument = 6,
    /// [`CloudProxyError::PayloadTooLarge`].
    PayloadTooLarge = 7,
    /// [`CloudProxyError::ProxyUnreachable`].
    ProxyUnreachable = 8,
    /// [`CloudProxyError::CredentialRefused`].
    CredentialRefused = 9,
    /// [`CloudProxyError::UdpBlocked`].
    UdpBlocked = 10,
    /// [`CloudProxyError::DirectFailed`].
    DirectFailed = 11,
    /// [`CloudProxyError::JoinRefused`].
    JoinRefused = 12,
    /// [`CloudProxyError::Protocol`].
    Protocol = 13,
    /// [`CloudProxyError::Timeout`].
    Timeout = 14,
    /// [`CloudProxyError::Io`].
    Io = 15,
    /// [`CloudProxyError::Disconnected`].
    Disconnected = 16,
    /// [`CloudProxyError::Other`].
    Other = 17,
    /// [`CloudProxyError::Destroyed`].
    Destroyed = 18,
    /// [`CloudProxyError::Runtime`].
    Runtime = 19,
    /// [`CloudProxyError::UntrustedCertificate`].
    UntrustedCertificate = 20,
    /// [`CloudProxyError::ProxyAuthFailed`].
    ProxyAuthFailed = 21,
    /// [`CloudProxyError::MediaUnreachable`].
    MediaUnreachable = 22,
}

impl CloudProxyError {
    /// The C ABI's code for this error.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidConfig(_) => ErrorCode::InvalidConfig,
            Self::InvalidCredential(_) | Self::CredentialTooShort { .. } => {
                ErrorCode::InvalidCredential
            }
            Self::InvalidAddress { .. } => ErrorCode::InvalidAddress,
            Self::InvalidParameters(_) => ErrorCode::InvalidParameters,
            Self::InvalidState(_) => ErrorCode::InvalidState,
            Self::InvalidArgument(_)
            | Self::InvalidString { .. }
            | Self::NullPointer { .. }
            | Self::UnknownProxyMode { .. } => ErrorCode::InvalidArgument,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::ProxyUnreachable(_) => ErrorCode::ProxyUnreachable,
            Self::MediaUnreachable(_) => ErrorCode::MediaUnreachable,
            Self::CredentialRefused(_) => ErrorCode::CredentialRefused,
            Self::UdpBlocked(_) => ErrorCode::UdpBlocked,
            Self::DirectFailed(_) => ErrorCode::DirectFailed,
            Self::JoinRefused(_) => ErrorCode::JoinRefused,
            Self::Protocol(_) => ErrorCode::Protocol,
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::Io(_) => ErrorCode::Io,
            Self::Disconnected(_) => ErrorCode::Disconnected,
            Self::Other(_) => ErrorCode::Other,
            Self::Destroyed { .. } => ErrorCode::Destroyed,
            Self::Runtime(_) => ErrorCode::Runtime,
            Self::UntrustedCertificate(_) => ErrorCode::UntrustedCertificate,
            Self::ProxyAuthFailed(_) => ErrorCode::ProxyAuthFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_proxy_auth_errors_get_their_own_appended_codes() {
        let untrusted = CloudProxyError::from(EngineError::UntrustedCertificate {
            proxy: "127.0.0.1:443".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        });
        assert_eq!(untrusted.code(), ErrorCode::UntrustedCertificate);
        assert_eq!(untrusted.code() as i32, 20);
        assert!(
            untrusted.to_string().contains("TLS-intercepting"),
            "{untrusted}"
        );
        let auth = CloudProxyError::from(EngineError::ProxyAuthFailed {
            http_proxy: "http://u:***@127.0.0.1:3128".into(),
            hint: "",
        });
        assert_eq!(auth.code(), ErrorCode::ProxyAuthFailed);
        assert_eq!(auth.code() as i32, 21);
        assert!(auth.to_string().contains("407"), "{auth}");
        assert_eq!(ErrorCode::Runtime as i32, 19, "existing numbers stay");
    }

    #[test]
    fn a_proxy_that_cannot_reach_the_media_network_is_not_proxy_unreachable() {
        let refused = |code| {
            CloudProxyError::from(EngineError::Tunnel(TunnelError::Refused {
                what: "allocating a proxy session",
                proxy: "127.0.0.1:19700".parse().expect("address"),
                code,
                message: String::new(),
            }))
        };
        let edge_down = refused(ProtoCode::DESTINATION_UNREACHABLE);
        assert_eq!(edge_down.code(), ErrorCode::MediaUnreachable, "{edge_down}");
        assert_eq!(edge_down.code() as i32, 22);
        assert!(
            edge_down.to_string().contains("127.0.0.1:19700"),
            "{edge_down}"
        );
        let other = refused(ProtoCode(300));
        assert_eq!(other.code(), ErrorCode::ProxyUnreachable, "{other}");
    }
}
