//! Admission: the one place that decides whether a login may use the relay,
//! for the native protocol and SOCKS5 alike.
//!
//! 1. The source address must not be over its login-failure limit
//!    ([`LoginLimiter`]); failures are counted here too, in one table for
//!    TCP and another for UDP (whose sources can be forged, see [`Channel`]).
//! 2. The credential: an app secret (compared in constant time with every
//!    secret of the app) or a ticket (MAC, expiry, max session lifetime) —
//!    both checked by the proto [`Server`](cloudproxy_proto::server::Server),
//!    the same functions the native `AllocateRequest` and `Bind` use.
//! 3. The transport: the ticket's (or the app's) transports must include
//!    the one the request uses ([`Grant::permits`]).
//! 4. The session deadline (max session lifetime) is carried in what
//!    admission returns, so sessions end on it.
//! 5. The quota: the app's session place, the session's bindings and the
//!    app's and node's upstream sockets ([`Quotas`](crate::quota::Quotas)).
//!
//! The native protocol runs steps 2–3 inside the proto state machines
//! (`check_allocate`, `check_bind`) and calls [`admit`] for 4–5; SOCKS5 calls
//! [`login`] for 1–2 and [`admit`] with the transport for 3–5.

use std::net::SocketAddr;
use std::time::Instant;

use cloudproxy_proto::server::Grant;
use cloudproxy_proto::{AppId, CodecError, ErrorCode, SealedTicket, SessionError, Transports};

use crate::config::decode_hex;
use crate::login_limit::{Failure, LoginLimiter};
use crate::quota::{QuotaError, QuotaGuard};
use crate::shared::Shared;
use crate::stats::Stats;

/// A login that did not get in.
#[derive(Debug)]
pub(crate) enum LoginRefused {
    /// The source is over its login-failure limit; nothing was checked.
    Limited,
    /// The credential was wrong: why, for the log (never sent to a client).
    Bad(BadLogin),
}

/// Why a SOCKS5 login's credential was refused (for the log only).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadLogin {
    /// The user name is not an app id.
    #[error("the username is not a valid app id")]
    UserNotAppId,
    /// The password is not hex.
    #[error("the password is not hex")]
    PasswordNotHex,
    /// No secret of the app, and no ticket's shape either.
    #[error("the password is neither a secret of the app nor a ticket")]
    NeitherSecretNorTicket,
    /// No secret of the app, and a ticket that does not open.
    #[error("the password is not a secret of the app, nor a valid ticket ({code})")]
    InvalidTicket {
        /// Why the ticket was refused.
        code: ErrorCode,
    },
    /// A valid ticket of another app than the user name.
    #[error("the ticket belongs to another app")]
    OtherAppsTicket,
    /// The configured no-auth app is not an app id.
    #[error("{0}")]
    NoAuthAppId(CodecError),
    /// The proto server refused the no-auth app.
    #[error("no-auth app refused ({code})")]
    NoAuthRefused {
        /// Why.
        code: ErrorCode,
    },
}

impl std::fmt::Display for LoginRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Limited => {
                f.write_str("too many failed logins from this address; refused without checking")
            }
            Self::Bad(why) => why.fmt(f),
        }
    }
}

/// A login that got in, with its quota place.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Holds the session's place, its binding and its sockets.
    pub(crate) quota: QuotaGuard<u64>,
    /// Unix seconds when the session must end (max session lifetime).
    pub(crate) session_deadline: u64,
}

/// Where a login arrived, which decides the failure table it counts in.
///
/// A TCP peer's address is verified by the handshake; a UDP datagram's
/// source can be forged. If UDP failures counted in the table that gates
/// TCP, anyone could lock a victim (or a whole NAT address) out of TCP with
/// a few spoofed datagrams. So UDP failures go to a table of their own that
/// only gates UDP: a spoofer can at most slow a victim's UDP allocations and
/// binds, and the client falls back to TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// TCP (native allocation and relay, SOCKS5): the source is verified.
    Tcp,
    /// UDP (allocation and relay datagrams): the source may be spoofed.
    Udp,
}

impl Channel {
    fn limiter(self, shared: &Shared) -> &LoginLimiter {
        match self {
            Self::Tcp => &shared.logins,
            Self::Udp => &shared.udp_logins,
        }
    }
}

/// Whether `ip` may try a login on `channel` now; a refusal is counted.
pub(crate) fn source_allowed(shared: &Shared, channel: Channel, peer: SocketAddr) -> bool {
    if channel.limiter(shared).allows(peer.ip(), Instant::now()) {
        return true;
    }
    Stats::bump(&shared.stats.logins_rate_limited);
    false
}

/// Why a login failed: the `reason` of `cloudproxy_login_failures_total`
/// (a fixed list, so clients cannot add series).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginFailure {
    /// An unknown app or a wrong proof (200).
    BadCredential,
    /// A ticket that does not verify (301).
    BadTicket,
    /// An expired ticket (300).
    ExpiredTicket,
    /// A wrong SOCKS5 user or password.
    Socks5Password,
}

impl LoginFailure {
    /// The failed login a native refusal code stands for, if it is one.
    pub(crate) fn from_code(code: ErrorCode) -> Option<Self> {
        match code {
            ErrorCode::BAD_CREDENTIAL => Some(Self::BadCredential),
            ErrorCode::INVALID_TICKET => Some(Self::BadTicket),
            ErrorCode::EXPIRED_TICKET => Some(Self::ExpiredTicket),
            _ => None,
        }
    }
}

/// Counts a failed login from `peer` on `channel` (in total and by `why`),
/// and logs when its limit engages.
pub(crate) fn login_failed(shared: &Shared, channel: Channel, peer: SocketAddr, why: LoginFailure) {
    Stats::bump(&shared.stats.login_failures);
    let stats = &shared.stats;
    Stats::bump(match why {
        LoginFailure::BadCredential => &stats.login_failures_bad_credential,
        LoginFailure::BadTicket => &stats.login_failures_bad_ticket,
        LoginFailure::ExpiredTicket => &stats.login_failures_expired_ticket,
        LoginFailure::Socks5Password => &stats.login_failures_socks5_password,
    });
    if channel.limiter(shared).failed(peer.ip(), Instant::now()) == Failure::Engaged {
        Stats::bump(&shared.stats.login_limit_engaged);
        let limits = &shared.limits;
        let transport = match channel {
            Channel::Tcp => "tcp",
            Channel::Udp => "udp",
        };
        shared.refusal_log.log(|| {
            tracing::warn!(
                source = %peer.ip(),
                transport,
                burst = limits.login_failure_burst,
                per_minute = limits.login_failures_per_minute,
                "login failure limit engaged: further logins from this source on this transport are refused until it slows down"
            );
        });
    }
}

/// Whether a refusal code of the native protocol is a failed login (an
/// unknown app or wrong proof, a bad or expired ticket), as opposed to a
/// quota, destination or malformed-input refusal. The one list every
/// listener uses.
pub(crate) fn is_login_failure_code(code: ErrorCode) -> bool {
    LoginFailure::from_code(code).is_some()
}

/// Whether a session ended by a refusal that is a failed login
/// ([`is_login_failure_code`]).
pub(crate) fn is_login_failure(reason: &SessionError) -> bool {
    matches!(reason, SessionError::Rejected { code } if is_login_failure_code(*code))
}

/// SOCKS5 user/password (RFC 1929): username = app id, password = the app
/// secret or a ticket of that app, in hex. A new session for a secret (id
/// `new_session`), the ticket's session for a ticket.
pub(crate) fn login(
    shared: &Shared,
    peer: SocketAddr,
    user: &[u8],
    password: &[u8],
    new_session: impl FnOnce() -> u64,
) -> Result<Grant, LoginRefused> {
    if !source_allowed(shared, Channel::Tcp, peer) {
        return Err(LoginRefused::Limited);
    }
    let verified = verify(shared, user, password, new_session);
    if verified.is_err() {
        login_failed(shared, Channel::Tcp, peer, LoginFailure::Socks5Password);
    }
    verified
}

fn verify(
    shared: &Shared,
    user: &[u8],
    password: &[u8],
    new_session: impl FnOnce() -> u64,
) -> Result<Grant, LoginRefused> {
    let bad = LoginRefused::Bad;
    let app = std::str::from_utf8(user)
        .ok()
        .and_then(|u| AppId::new(u).ok())
        .ok_or(bad(BadLogin::UserNotAppId))?;
    let bytes = std::str::from_utf8(password)
        .ok()
        .and_then(|p| decode_hex(p).ok())
        .ok_or(bad(BadLogin::PasswordNotHex))?;
    let now = Instant::now();
    // A password as long as a ticket could still be a (long) secret: try the
    // secrets first, then the ticket.
    let by_secret = shared.proto.check_secret(now, &app, &bytes, new_session());
    if let Ok(grant) = by_secret {
        return Ok(grant);
    }
    let sealed =
        SealedTicket::new(bytes.into()).map_err(|_| bad(BadLogin::NeitherSecretNorTicket))?;
    let grant = shared
        .proto
        .open_ticket(now, &sealed)
        .map_err(|e| bad(BadLogin::InvalidTicket { code: e.code }))?;
    if grant.app_id != app {
        return Err(bad(BadLogin::OtherAppsTicket));
    }
    Ok(grant)
}

/// The app that SOCKS5 clients without authentication count against.
pub(crate) fn no_auth(shared: &Shared, app: &str, session: u64) -> Result<Grant, LoginRefused> {
    let app = AppId::new(app).map_err(|e| LoginRefused::Bad(BadLogin::NoAuthAppId(e)))?;
    shared
        .proto
        .grant_unauthenticated(Instant::now(), &app, session)
        .map_err(|e| LoginRefused::Bad(BadLogin::NoAuthRefused { code: e.code }))
}

/// Steps 3–5 for a verified login: the transport, the session deadline and
/// the quota for a binding holding `sockets` upstream sockets. The error is
/// the code and the message a client may see.
pub(crate) fn admit(
    shared: &Shared,
    grant: &Grant,
    needed: Transports,
    sockets: u32,
) -> Result<Admitted, (ErrorCode, String)> {
    grant.permits(needed).map_err(|e| {
        (
            e.code,
            "this transport is not allowed for this session".to_owned(),
        )
    })?;
    let unix = shared.proto.unix_at(Instant::now());
    if unix >= grant.session_deadline {
        return Err((
            ErrorCode::SESSION_TOO_OLD,
            "the session reached its maximum lifetime".to_owned(),
        ));
    }
    let quota = shared
        .quotas
        .acquire_sockets(grant.app_id.as_str(), grant.session_id, sockets)
        .map_err(|e| {
            shared.stats.note_quota(&e);
            (quota_code(&e), e.to_string())
        })?;
    Ok(Admitted {
        quota,
        session_deadline: grant.session_deadline,
    })
}

/// The client-visible code of a quota refusal.
pub(crate) fn quota_code(e: &QuotaError) -> ErrorCode {
    match e {
        QuotaError::UnknownApp { .. } => ErrorCode::BAD_CREDENTIAL,
        QuotaError::NodeFull => ErrorCode::SERVER_BUSY,
        _ => ErrorCode::QUOTA_EXCEEDED,
    }
}

/// The transport a native bind uses.
pub(crate) fn bind_transport(
    mode: cloudproxy_proto::frame::BindMode,
    path: cloudproxy_proto::Path,
) -> Transports {
    use cloudproxy_proto::Path;
    use cloudproxy_proto::frame::BindMode;
    match (mode, path) {
        (BindMode::Stream, _) => Transports::TCP,
        (BindMode::Datagram, Path::Tcp) => Transports::UDP_OVER_TCP,
        (BindMode::Datagram, _) => Transports::UDP,
    }
}

/// The grant a native bind proved (checked by `Server::check_bind`).
pub(crate) fn bind_grant(request: &cloudproxy_proto::server::BindRequest) -> Grant {
    Grant {
        app_id: request.app_id.clone(),
        session_id: request.session_id,
        transports: bind_transport(request.mode, request.path),
        session_deadline: request.session_deadline,
    }
}
