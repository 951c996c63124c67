//! Error types: [`CodecError`] for bytes that do not parse, [`ErrorCode`] for
//! the codes carried on the wire, [`TicketError`] for tickets that do not
//! verify and [`SessionError`] for the reasons a session state machine fails.

use std::fmt;
use std::time::Duration;

use crate::frame::FrameType;

/// A frame, header, ticket or field that could not be decoded.
///
/// Every variant names the field (as it is called in `docs/protocol.md`), the
/// byte offset where the problem is, what was expected and what was found.
/// Decoding works on bytes already in memory, so there is no I/O variant: the
/// `tokio_util` codec wraps this in its own error (feature `codec`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The first bytes are not the protocol's magic number.
    #[error(
        "bad magic at byte 0: expected {expected:#06x}, found {found:#06x} (not a cloudproxy frame)"
    )]
    BadMagic {
        /// The magic this implementation expects.
        expected: u16,
        /// The bytes that were there instead.
        found: u16,
    },
    /// The version byte names a protocol version this implementation does not speak.
    #[error("unsupported protocol version at byte {offset}: expected {expected}, found {found}")]
    UnsupportedVersion {
        /// Byte offset of the version field.
        offset: usize,
        /// The version this implementation speaks.
        expected: u8,
        /// The version the peer sent.
        found: u8,
    },
    /// The type byte names no frame or datagram kind known to this implementation.
    #[error("unknown {what} {found:#04x} at byte {offset}")]
    UnknownType {
        /// `"frame type"` or `"datagram kind"`.
        what: &'static str,
        /// Byte offset of the type field.
        offset: usize,
        /// The type byte that was found.
        found: u8,
    },
    /// A length field declares more bytes than the protocol (or the configured
    /// limit) allows. Raised before any buffer is reserved.
    #[error("{field} too large: declared {found} bytes, maximum is {max}")]
    TooLarge {
        /// The field whose length was too large.
        field: &'static str,
        /// The length that was declared.
        found: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// The input ended inside a field.
    #[error("truncated {field} at byte {offset}: needed {needed} bytes, {available} available")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Byte offset where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A field has a value outside its allowed set.
    #[error("invalid {field} at byte {offset}: expected {expected}, found {found}")]
    Invalid {
        /// The field that is wrong.
        field: &'static str,
        /// Byte offset where the field starts (or of the offending byte).
        offset: usize,
        /// What the protocol allows.
        expected: &'static str,
        /// What was found.
        found: FoundValue,
    },
    /// A frame body is longer than its fields.
    #[error("{extra} unexpected trailing bytes at byte {offset} after the {what}")]
    TrailingBytes {
        /// What was complete before the trailing bytes.
        what: &'static str,
        /// Byte offset of the first trailing byte.
        offset: usize,
        /// How many bytes were left over.
        extra: usize,
    },
}

impl CodecError {
    /// The wire [`ErrorCode`] a peer should be sent for this error.
    #[must_use]
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            _ => ErrorCode::MALFORMED_FRAME,
        }
    }

    pub(crate) fn invalid(
        field: &'static str,
        offset: usize,
        expected: &'static str,
        found: impl Into<FoundValue>,
    ) -> Self {
        Self::Invalid {
            field,
            offset,
            expected,
            found: found.into(),
        }
    }
}

/// The value a [`CodecError::Invalid`] found, as data (printed the way
/// `docs/protocol.md` shows it).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FoundValue {
    /// A number out of its allowed set (an enum byte, a flag), in decimal.
    Value(u64),
    /// A byte that must be zero (padding, reserved flags), in hex.
    Byte(u8),
    /// A length in bytes.
    Len(usize),
    /// A byte not allowed at `position` within the field, in hex.
    ByteAt {
        /// The byte.
        byte: u8,
        /// Its index within the field's value.
        position: usize,
    },
    /// A character not allowed in the field.
    Char(char),
    /// Bytes that are not UTF-8.
    NotUtf8(std::str::Utf8Error),
    /// The bytes of a host name that breaks the rule in `expected` (printed
    /// as text, invalid UTF-8 replaced).
    HostName(Vec<u8>),
    /// A domain name where only an IP address is allowed.
    DomainName,
}

impl fmt::Display for FoundValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => write!(f, "{v}"),
            Self::Byte(b) => write!(f, "{b:#04x}"),
            Self::Len(n) => write!(f, "{n} bytes"),
            Self::ByteAt { byte, position } => write!(f, "byte {byte:#04x} at position {position}"),
            Self::Char(c) => write!(f, "{c:?}"),
            Self::NotUtf8(e) => write!(f, "{e}"),
            Self::HostName(name) => f.write_str(&String::from_utf8_lossy(name)),
            Self::DomainName => f.write_str("a domain name"),
        }
    }
}

impl From<u8> for FoundValue {
    fn from(v: u8) -> Self {
        Self::Value(v.into())
    }
}

impl From<std::str::Utf8Error> for FoundValue {
    fn from(e: std::str::Utf8Error) -> Self {
        Self::NotUtf8(e)
    }
}

/// A protocol error code as carried in `Error` and `JoinRefused` frames.
///
/// Codes are grouped by hundreds: 1xx any phase, 2xx allocation, 3xx relay
/// binding, 4xx media edge. A receiver must accept codes it does not know
/// (it shows them with [`ErrorCode::user_text`]'s generic text).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: Self = Self($value); )*

            /// Every code this version of the protocol defines.
            pub const ALL: &'static [Self] = &[$(Self::$name),*];

            /// The constant's name (for example `"EXPIRED_TICKET"`), or `None` for an unknown code.
            #[must_use]
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// The sentence a user sees for this code (the table in `docs/protocol.md`).
            #[must_use]
            pub fn user_text(self) -> &'static str {
                match self.0 {
                    $( $value => $text, )*
                    _ => "The proxy reported an error this version does not know.",
                }
            }
        }
    };
}

error_codes! {
    /// 100: a frame or datagram did not parse.
    MALFORMED_FRAME = 100, "The proxy received data it could not understand; the connection was closed.";
    /// 101: the peer speaks no version this node speaks.
    UNSUPPORTED_VERSION = 101, "The proxy speaks a different protocol version; update the SDK or the proxy.";
    /// 102: a valid frame arrived in a state where it is not allowed.
    UNEXPECTED_FRAME = 102, "The proxy received a message out of order; the connection was closed.";
    /// 103: the first frame did not arrive within the handshake deadline.
    HANDSHAKE_TIMEOUT = 103, "The connection to the proxy was too slow to start and was closed.";
    /// 104: the binding saw no traffic for the idle timeout.
    IDLE_TIMEOUT = 104, "The relay connection was idle for too long and was closed.";
    /// 105: the node is overloaded or shutting down; try another node.
    SERVER_BUSY = 105, "The proxy is busy; another proxy address will be tried.";
    /// 106: a UDP request was smaller than the answer would be; pad it or use TCP.
    REQUEST_TOO_SMALL = 106, "The request was too small to be answered over UDP; retry over TCP.";
    /// 107: an internal error on the node.
    INTERNAL = 107, "The proxy hit an internal error.";
    /// 200: unknown app id or a proof that does not verify.
    BAD_CREDENTIAL = 200, "The app id or credential was not accepted by the proxy; check them.";
    /// 201: the request timestamp is outside the allowed clock skew.
    CLOCK_SKEW = 201, "The device clock differs too much from the proxy's; correct the date and time.";
    /// 202: the app's concurrent-session quota is used up.
    QUOTA_EXCEEDED = 202, "The app has reached its concurrent session limit on the proxy.";
    /// 203: none of the wanted transports is allowed for this app.
    TRANSPORT_NOT_ALLOWED = 203, "The requested transport (UDP or TCP) is not allowed for this app.";
    /// 204: the session is older than the maximum session lifetime and cannot be refreshed.
    SESSION_TOO_OLD = 204, "The proxy session reached its maximum lifetime; a new one is needed.";
    /// 300: the ticket's expiry has passed.
    EXPIRED_TICKET = 300, "The relay ticket has expired; a new proxy allocation is needed.";
    /// 301: the ticket does not verify (tampered, wrong key, unknown key id, malformed).
    INVALID_TICKET = 301, "The relay ticket is invalid; a new proxy allocation is needed.";
    /// 302: the destination is not on the relay's allowlist.
    DESTINATION_NOT_ALLOWED = 302, "The proxy is not allowed to reach this destination.";
    /// 303: the relay could not reach the destination.
    DESTINATION_UNREACHABLE = 303, "The proxy could not reach the destination.";
    /// 304: a UDP re-bind named a binding the relay does not have.
    BINDING_NOT_FOUND = 304, "The relay no longer knows this media path; it will be re-created.";
    /// 400: the media edge refused the join.
    JOIN_REFUSED = 400, "The channel could not be joined.";
    /// 401: the media edge could not resume the member (it will join afresh).
    RESUME_FAILED = 401, "The previous session could not be resumed; the channel was joined afresh.";
    /// 402: a message or media frame came before a successful join.
    NOT_JOINED = 402, "The channel must be joined first.";
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "ErrorCode::{n}({})", self.0),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

impl ErrorCode {
    /// The number and the name in words, for logs: `302 destination not
    /// allowed`, or `999 unknown code` for a code this version does not know.
    ///
    /// ```
    /// use cloudproxy_proto::ErrorCode;
    ///
    /// assert_eq!(ErrorCode::DESTINATION_NOT_ALLOWED.label(), "302 destination not allowed");
    /// ```
    #[must_use]
    pub fn label(self) -> String {
        let name = self.name().map_or_else(
            || "unknown code".to_owned(),
            |n| n.to_lowercase().replace('_', " "),
        );
        format!("{} {name}", self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.user_text(), self.0)
    }
}

/// Why a ticket was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The ticket's bytes do not parse. Printed in the message, so not also
    /// `source()` (`docs/decisions.md`, "Error causes are printed once").
    #[error("malformed ticket: {0}")]
    Malformed(CodecError),
    /// The ticket names a key id this node does not hold.
    #[error("ticket signed with unknown key id {0}")]
    UnknownKey(u32),
    /// The MAC does not verify (tampered ticket or wrong key).
    #[error("ticket signature does not verify (tampered, or signed with another key)")]
    BadSignature,
    /// The ticket's expiry has passed.
    #[error("ticket expired at unix time {expires_at}, now is {now}")]
    Expired {
        /// The ticket's expiry, unix seconds.
        expires_at: u64,
        /// The verifier's time, unix seconds.
        now: u64,
    },
}

impl TicketError {
    /// The wire [`ErrorCode`] for this error.
    #[must_use]
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::Expired { .. } => ErrorCode::EXPIRED_TICKET,
            _ => ErrorCode::INVALID_TICKET,
        }
    }
}

/// Why a session state machine (client or server) stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent an `Error` frame (or a `JoinRefused`).
    #[error("refused by peer: {code}: {message}")]
    Refused {
        /// The code the peer sent.
        code: ErrorCode,
        /// The peer's human-readable message (may be empty).
        message: String,
    },
    /// The peer broke the protocol: its bytes did not parse, or a field
    /// contradicts what was asked.
    #[error("protocol error from peer: {0}")]
    Protocol(PeerMisbehaved),
    /// A valid frame arrived where the state machine does not allow it.
    #[error("unexpected {found} frame while {state}")]
    UnexpectedFrame {
        /// The frame type that arrived.
        found: FrameType,
        /// The state the machine was in.
        state: &'static str,
    },
    /// A deadline passed.
    #[error("{which} timeout after {after:?}")]
    Timeout {
        /// Which deadline: `"handshake"`, `"allocation"`, `"bind"`, `"keepalive"`, `"idle"`.
        which: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// This side rejected the peer with a code (server side).
    #[error("rejected peer: {code}")]
    Rejected {
        /// The code sent to the peer.
        code: ErrorCode,
    },
    /// An operation was called in a state that does not allow it.
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// The peer closed the session cleanly.
    #[error("closed by peer")]
    ClosedByPeer,
    /// This side closed the session.
    #[error("closed locally")]
    ClosedLocally,
    /// The peer does not read what this side sends: more than the machine's
    /// bound of frames waits for it. Returned by a send that was refused for
    /// it, and the reason a connection closes when its idle timer runs out
    /// while it is so backed up (its input is then no longer read).
    #[error("peer not reading: {queued} bytes wait for it")]
    NotReading {
        /// Bytes queued for the peer and not yet taken by the transport.
        queued: usize,
    },
    /// The peer went silent while it should have spoken (a message waiting
    /// for its acknowledgement, or a peer that had been talking often), and
    /// a probe got no answer either.
    #[error("peer silent for {after:?} (no answer to a probe within {probe:?})")]
    Silent {
        /// How long nothing had arrived when the connection was given up.
        after: Duration,
        /// The probe's deadline.
        probe: Duration,
    },
}

impl SessionError {
    pub(crate) fn protocol(e: CodecError) -> Self {
        Self::Protocol(PeerMisbehaved::Malformed(std::sync::Arc::new(e)))
    }
}

/// How a peer broke the protocol ([`SessionError::Protocol`]), after rustls'
/// `PeerMisbehaved`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// Its bytes did not decode (shared: a session error is cloned to every
    /// observer).
    #[error("{0}")]
    Malformed(std::sync::Arc<CodecError>),
    /// `BindOk` names another relay mode than the `Bind` asked for.
    #[error("BindOk mode {found:?} differs from requested {requested:?}")]
    BindModeMismatch {
        /// The mode the client asked for.
        requested: crate::frame::BindMode,
        /// The mode the relay answered with.
        found: crate::frame::BindMode,
    },
}

impl PartialEq for PeerMisbehaved {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // `CodecError` has no equality of its own: the same decode error
            // prints the same located message.
            (Self::Malformed(a), Self::Malformed(b)) => {
                std::sync::Arc::ptr_eq(a, b) || a.to_string() == b.to_string()
            }
            (
                Self::BindModeMismatch { requested, found },
                Self::BindModeMismatch {
                    requested: r,
                    found: f,
                },
            ) => requested == r && found == f,
            _ => false,
        }
    }
}

impl Eq for PeerMisbehaved {}
