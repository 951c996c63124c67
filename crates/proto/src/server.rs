//! Sans-I/O server side: the allocation service and the relays' handshakes.
//!
//! * [`Server`] holds the configuration, the [`TicketKeyRing`], a
//!   [`CredentialStore`] (app id → secrets) and an [`Entropy`] source. It is
//!   shared (`Arc`) by every connection and is itself stateless per request:
//!   it checks credential proofs and tickets and issues tickets.
//! * [`Connection`] is one accepted TCP connection on an allocation port
//!   ([`Role::Allocation`]) or the relay port ([`Role::Relay`]).
//! * [`Server::handle_allocation_datagram`] answers allocation requests on the
//!   allocation UDP ports, never with more bytes than the request had.
//! * [`UdpRelay`] is the binding table of the media relay's UDP sockets.
//!
//! Decisions that need state this crate does not have — the per-app quota, the
//! destination allowlist, whether a TCP connect to the destination worked —
//! are the I/O layer's: the state machines stop at
//! [`ServerEvent::AllocationRequested`] / [`ServerEvent::BindRequested`] (or
//! [`UdpRelayEvent::BindRequested`]) until it calls `accept_*` or `reject`.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use std::time::Instant;
//! use cloudproxy_proto::server::{AppCredentials, Connection, Role, Server, ServerConfig, ServerEvent};
//! use cloudproxy_proto::ticket::TicketKeyRing;
//! use cloudproxy_proto::{AppId, Timebase, Transports};
//!
//! # struct Rng(std::sync::atomic::AtomicU64);
//! # impl cloudproxy_proto::server::Entropy for Rng {
//! #     fn fill(&self, buf: &mut [u8]) {
//! #         for b in buf { *b = self.0.fetch_add(7, std::sync::atomic::Ordering::Relaxed) as u8; }
//! #     }
//! # }
//! let now = Instant::now();
//! let mut apps = HashMap::new();
//! apps.insert(
//!     AppId::new("demo-app").unwrap(),
//!     Arc::new(AppCredentials { secrets: vec![b"demo-secret".to_vec()], transports: Transports::ALL }),
//! );
//! let mut config = ServerConfig::new(Timebase::new(now, 1_700_000_000));
//! config.tcp_relays = vec!["192.0.2.1:4000".parse().unwrap()];
//! config.udp_relays = vec!["192.0.2.1:4500".parse().unwrap()];
//! let server = Arc::new(Server::new(
//!     config,
//!     TicketKeyRing::new(1, vec![0x5a; 32]),
//!     Arc::new(apps),
//!     Arc::new(Rng(0.into())),
//! ));
//! let mut conn = Connection::new(server, Role::Allocation, now);
//! // Garbage is refused with an Error frame and the connection closes.
//! conn.handle_input(now, b"GET / HTTP/1.1\r\n");
//! assert!(conn.poll_transmit().is_some());
//! assert!(matches!(conn.poll_event(), Some(ServerEvent::Closed(_))));
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::Path;
use crate::codec::FrameCodec;
use crate::error::{ErrorCode, SessionError};
use crate::frame::{
    AllocateOk, AllocateRequest, Bind, BindMode, BindOk, ErrorFrame, Frame, HEADER_LEN,
    MAX_DATAGRAM_PAYLOAD, MAX_PAYLOAD, Refresh,
};
use crate::ticket::{Ticket, TicketKeyRing, tokens_equal, verify_credential_proof};
use crate::time::Timebase;
use crate::types::{Address, AppId, Capabilities, SealedTicket, Text, Transports};
use crate::udp::{DatagramClass, UdpHeader, UdpKind, classify};

/// The secrets and permissions of one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCredentials {
    /// Every secret currently valid for the app (several during a rotation).
    /// A request's proof is checked against each, in constant time.
    pub secrets: Vec<Vec<u8>>,
    /// Transports the app may use.
    pub transports: Transports,
}

/// Where the server looks up apps. Implemented for
/// `HashMap<AppId, Arc<AppCredentials>>`; a configuration-reloading I/O layer
/// implements it over its own store.
pub trait CredentialStore: Send + Sync {
    /// The app's credentials, or `None` for an unknown app.
    fn lookup(&self, app_id: &AppId) -> Option<Arc<AppCredentials>>;
}

impl CredentialStore for HashMap<AppId, Arc<AppCredentials>> {
    fn lookup(&self, app_id: &AppId) -> Option<Arc<AppCredentials>> {
        self.get(app_id).cloned()
    }
}

/// A source of unpredictable bytes (session ids, binding ids and tokens).
/// The I/O layer implements it with the OS random generator; tests use a
/// seeded generator.
pub trait Entropy: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

fn random_u64(e: &dyn Entropy) -> u64 {
    let mut b = [0u8; 8];
    e.fill(&mut b);
    u64::from_be_bytes(b)
}

/// Server settings. Every duration is one of the named timeouts of
/// `docs/protocol.md`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Maps `Instant`s to unix time for tickets and proofs.
    pub timebase: Timebase,
    /// How long a ticket is valid (`allocation lifetime`, default 600 s).
    pub ticket_lifetime: Duration,
    /// Longest a session can be refreshed for, from its first allocation
    /// (`max session lifetime`, default 24 h). Bindings end then too.
    pub max_session_lifetime: Duration,
    /// Deadline from accept (or first datagram) to the end of the handshake
    /// (`handshake deadline`, default 10 s).
    pub handshake_timeout: Duration,
    /// A binding with no traffic from the client for this long is dropped
    /// (`idle timeout`, default 60 s).
    pub idle_timeout: Duration,
    /// The keepalive interval told to clients (default 15 s).
    pub keepalive_interval: Duration,
    /// Largest accepted difference between a request's timestamp and the
    /// server's clock (`max clock skew`, default 300 s). Also the replay window
    /// of a captured request.
    pub max_clock_skew: Duration,
    /// TCP relay endpoints advertised in `AllocateOk` (at most 16 are sent).
    pub tcp_relays: Vec<SocketAddr>,
    /// UDP relay endpoints; each allocation gets `udp_relays_per_allocation`
    /// of them, chosen by session id to spread sessions over the range.
    pub udp_relays: Vec<SocketAddr>,
    /// How many UDP relay endpoints one `AllocateOk` lists (default 2).
    pub udp_relays_per_allocation: usize,
    /// Capabilities this server implements.
    pub capabilities: Capabilities,
    /// Most UDP binds waiting for the I/O layer's decision (default 1024);
    /// more are dropped.
    pub max_pending_binds: usize,
    /// Largest frame body accepted on a TCP connection, bound or not
    /// (default and cap [`MAX_PAYLOAD`]); before the bind the lower
    /// [`HANDSHAKE_MAX_PAYLOAD`] applies too. A larger frame is refused with
    /// `Error` 100 and the connection closes, before anything is reserved
    /// for its body (`docs/protocol.md` §3.1).
    pub max_frame_len: usize,
}

impl ServerConfig {
    /// A configuration with the defaults of `docs/protocol.md` and no relays.
    #[must_use]
    pub fn new(timebase: Timebase) -> Self {
        Self {
            timebase,
            ticket_lifetime: Duration::from_secs(600),
            max_session_lifetime: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            max_clock_skew: Duration::from_secs(300),
            tcp_relays: Vec::new(),
            udp_relays: Vec::new(),
            udp_relays_per_allocation: 2,
            capabilities: Capabilities::ALL,
            max_pending_binds: 1024,
            max_frame_len: MAX_PAYLOAD,
        }
    }
}

/// A credential-checked allocation (or refresh) waiting for the I/O layer's
/// quota decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationRequest {
    /// The app.
    pub app_id: AppId,
    /// The session id (new, or the refreshed ticket's).
    pub session_id: u64,
    /// Transports that will be granted (wanted ∩ allowed).
    pub transports: Transports,
    /// Capabilities that will be agreed.
    pub capabilities: Capabilities,
    /// True for a `Refresh` of an existing session (no new quota slot).
    pub refresh: bool,
    /// The client's version string (empty for a refresh).
    pub client_version: Text,
    created_at: u64,
}

/// A ticket-checked bind waiting for the I/O layer's allowlist / quota /
/// connect decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindRequest {
    /// The session (from the ticket).
    pub session_id: u64,
    /// The app (from the ticket).
    pub app_id: AppId,
    /// Where the client wants to go. Check it against the allowlist (after
    /// resolving a domain and canonicalising the address).
    pub destination: Address,
    /// Stream or datagram.
    pub mode: BindMode,
    /// The transport the bind came on.
    pub path: Path,
    /// Unix seconds when the session must end (max session lifetime).
    pub session_deadline: u64,
}

/// What a valid login proves, by ticket ([`Server::open_ticket`]) or by
/// secret ([`Server::check_secret`]): the app, the session, what it may use
/// and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The app.
    pub app_id: AppId,
    /// The session.
    pub session_id: u64,
    /// Transports the session may use (the ticket's, or the app's).
    pub transports: Transports,
    /// Unix seconds when the session must end (max session lifetime).
    pub session_deadline: u64,
}

impl Grant {
    /// Whether the session may use `needed`; the refusal is
    /// `TRANSPORT_NOT_ALLOWED`.
    pub fn permits(&self, needed: Transports) -> Result<(), ErrorFrame> {
        if self.transports.contains(needed) {
            Ok(())
        } else {
            Err(ErrorFrame::new(ErrorCode::TRANSPORT_NOT_ALLOWED))
        }
    }
}

/// An error frame that fits in `limit` bytes, shortening its message, or
/// `None` when even the bare code does not fit.
fn error_reply(code: ErrorCode, message: Option<&str>, limit: usize) -> Option<Bytes> {
    let mut e = match message {
        Some(m) => ErrorFrame::with_message(code, m),
        None => ErrorFrame::new(code),
    };
    let bare = HEADER_LEN + 2 + 1;
    if limit < bare {
        return None;
    }
    e.message.shorten(limit - bare);
    Some(Frame::Error(e).to_bytes())
}

/// The shared, per-request-stateless part of the proxy service.
///
/// Its ticket keys and credential store can be replaced while it runs
/// ([`Server::replace_credentials`], a configuration reload): every check
/// reads them once, so a check sees either the old pair or the new one,
/// never a mix.
pub struct Server {
    config: ServerConfig,
    auth: RwLock<Arc<Auth>>,
    entropy: Arc<dyn Entropy>,
}

/// What decides who gets in: swapped as one.
struct Auth {
    keys: Arc<TicketKeyRing>,
    credentials: Arc<dyn CredentialStore>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("keys", &self.auth().keys)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with its configuration, ticket keys, credential store and
    /// entropy source.
    #[must_use]
    pub fn new(
        config: ServerConfig,
        keys: TicketKeyRing,
        credentials: Arc<dyn CredentialStore>,
        entropy: Arc<dyn Entropy>,
    ) -> Self {
        Self {
            config,
            auth: RwLock::new(Arc::new(Auth {
                keys: Arc::new(keys),
                credentials,
            })),
            entropy,
        }
    }

    /// The ticket keys and credential store in force now.
    fn auth(&self) -> Arc<Auth> {
        // A panic while holding the lock cannot leave a half-written `Arc`.
        Arc::clone(&self.auth.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the ticket keys and the credential store, together (a
    /// configuration reload). Every check that starts afterwards uses the
    /// new ones: a ticket signed by a removed key no longer opens, a removed
    /// secret no longer proves, a removed app is unknown. What was admitted
    /// before is not revisited: running bindings keep running.
    pub fn replace_credentials(&self, keys: TicketKeyRing, credentials: Arc<dyn CredentialStore>) {
        let auth = Arc::new(Auth {
            keys: Arc::new(keys),
            credentials,
        });
        *self.auth.write().unwrap_or_else(PoisonError::into_inner) = auth;
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The ticket keys in force now.
    #[must_use]
    pub fn ticket_keys(&self) -> Arc<TicketKeyRing> {
        Arc::clone(&self.auth().keys)
    }

    /// Unix seconds at `now`.
    #[must_use]
    pub fn unix_at(&self, now: Instant) -> u64 {
        self.config.timebase.unix_at(now)
    }

    /// Checks an `AllocateRequest`: known app, proof valid for one of its
    /// secrets, timestamp within the allowed skew, some wanted transport
    /// allowed. Picks a fresh random session id.
    pub fn check_allocate(
        &self,
        now: Instant,
        req: &AllocateRequest,
    ) -> Result<AllocationRequest, ErrorFrame> {
        let unix = self.unix_at(now);
        let Some(app) = self.auth().credentials.lookup(&req.app_id) else {
            return Err(ErrorFrame::new(ErrorCode::BAD_CREDENTIAL));
        };
        // Check every secret, so timing does not tell which one matched.
        let mut ok = false;
        for s in &app.secrets {
            ok |= verify_credential_proof(s, &req.app_id, &req.nonce, req.timestamp, &req.proof);
        }
        if !ok {
            return Err(ErrorFrame::new(ErrorCode::BAD_CREDENTIAL));
        }
        let skew = unix.abs_diff(req.timestamp);
        if skew > self.config.max_clock_skew.as_secs() {
            return Err(ErrorFrame::with_message(
                ErrorCode::CLOCK_SKEW,
                format!(
                    "request time {} differs from proxy time {unix} by {skew} s (max {} s)",
                    req.timestamp,
                    self.config.max_clock_skew.as_secs()
                ),
            ));
        }
        let transports = req.transports.intersection(app.transports);
        if transports.is_empty() {
            return Err(ErrorFrame::new(ErrorCode::TRANSPORT_NOT_ALLOWED));
        }
        Ok(AllocationRequest {
            app_id: req.app_id.clone(),
            session_id: random_u64(&*self.entropy),
            transports,
            capabilities: req.capabilities.intersection(self.config.capabilities),
            refresh: false,
            client_version: req.client_version.clone(),
            created_at: unix,
        })
    }

    /// Checks a `Refresh`: the ticket verifies and is unexpired, and the
    /// session is younger than the max session lifetime.
    pub fn check_refresh(
        &self,
        now: Instant,
        req: &Refresh,
    ) -> Result<AllocationRequest, ErrorFrame> {
        let unix = self.unix_at(now);
        let auth = self.auth();
        let t = auth
            .keys
            .open(&req.ticket, unix)
            .map_err(|e| ErrorFrame::with_message(e.wire_code(), e.to_string()))?;
        app_still_configured(&auth, &t.app_id)?;
        if unix
            >= t.created_at
                .saturating_add(self.config.max_session_lifetime.as_secs())
        {
            return Err(ErrorFrame::new(ErrorCode::SESSION_TOO_OLD));
        }
        Ok(AllocationRequest {
            app_id: t.app_id,
            session_id: t.session_id,
            transports: t.transports,
            capabilities: self.config.capabilities,
            refresh: true,
            client_version: Text::default(),
            created_at: t.created_at,
        })
    }

    /// Issues the ticket and builds the `AllocateOk` for a checked request.
    #[must_use]
    pub fn grant(&self, now: Instant, req: &AllocationRequest) -> AllocateOk {
        let unix = self.unix_at(now);
        let session_end = req
            .created_at
            .saturating_add(self.config.max_session_lifetime.as_secs());
        let expires_at = unix
            .saturating_add(self.config.ticket_lifetime.as_secs())
            .min(session_end);
        let ticket = self.auth().keys.seal(&Ticket {
            key_id: 0,
            session_id: req.session_id,
            app_id: req.app_id.clone(),
            transports: req.transports,
            created_at: req.created_at,
            expires_at,
        });
        let udp = &self.config.udp_relays;
        let n = self.config.udp_relays_per_allocation.min(udp.len()).min(16);
        let start = if udp.is_empty() {
            0
        } else {
            (req.session_id % udp.len() as u64) as usize
        };
        let udp_relays = if req.transports.contains(Transports::UDP) {
            (0..n).map(|i| udp[(start + i) % udp.len()]).collect()
        } else {
            Vec::new()
        };
        AllocateOk {
            session_id: req.session_id,
            capabilities: req.capabilities,
            transports: req.transports,
            lifetime_secs: u32::try_from(expires_at.saturating_sub(unix)).unwrap_or(u32::MAX),
            keepalive_secs: secs_u16(self.config.keepalive_interval),
            idle_timeout_secs: secs_u16(self.config.idle_timeout),
            ticket,
            tcp_relays: self.config.tcp_relays.iter().take(16).copied().collect(),
            udp_relays,
        }
    }

    /// Opens a relay ticket: it verifies and is unexpired, and its session is
    /// within the max session lifetime. Every login by ticket — a native
    /// `Bind` or a SOCKS5 password that is a ticket — goes through here, so
    /// they cannot disagree.
    pub fn open_ticket(&self, now: Instant, ticket: &SealedTicket) -> Result<Grant, ErrorFrame> {
        let unix = self.unix_at(now);
        let auth = self.auth();
        let t = auth
            .keys
            .open(ticket, unix)
            .map_err(|e| ErrorFrame::with_message(e.wire_code(), e.to_string()))?;
        app_still_configured(&auth, &t.app_id)?;
        let session_deadline = t
            .created_at
            .saturating_add(self.config.max_session_lifetime.as_secs());
        if unix >= session_deadline {
            return Err(ErrorFrame::new(ErrorCode::SESSION_TOO_OLD));
        }
        Ok(Grant {
            app_id: t.app_id,
            session_id: t.session_id,
            transports: t.transports,
            session_deadline,
        })
    }

    /// Checks an app secret presented as it is (SOCKS5 user/password, where
    /// no proof is possible): known app, and `secret` equal to one of its
    /// secrets, compared in constant time with *every* secret, as
    /// [`Server::check_allocate`] does with proofs. The session is new
    /// (`session_id`, chosen by the caller) and may live for the max session
    /// lifetime from now.
    pub fn check_secret(
        &self,
        now: Instant,
        app_id: &AppId,
        secret: &[u8],
        session_id: u64,
    ) -> Result<Grant, ErrorFrame> {
        let Some(app) = self.auth().credentials.lookup(app_id) else {
            return Err(ErrorFrame::new(ErrorCode::BAD_CREDENTIAL));
        };
        let mut ok = subtle::Choice::from(0);
        for s in &app.secrets {
            ok |= subtle::ConstantTimeEq::ct_eq(s.as_slice(), secret);
        }
        if !bool::from(ok) {
            return Err(ErrorFrame::new(ErrorCode::BAD_CREDENTIAL));
        }
        Ok(Grant {
            app_id: app_id.clone(),
            session_id,
            transports: app.transports,
            session_deadline: self
                .unix_at(now)
                .saturating_add(self.config.max_session_lifetime.as_secs()),
        })
    }

    /// A session of `app_id` without any credential, for a listener the
    /// operator opened to that app (SOCKS5 `no_auth_app`): the app's
    /// transports, the max session lifetime from now.
    pub fn grant_unauthenticated(
        &self,
        now: Instant,
        app_id: &AppId,
        session_id: u64,
    ) -> Result<Grant, ErrorFrame> {
        let app = self
            .auth()
            .credentials
            .lookup(app_id)
            .ok_or_else(|| ErrorFrame::new(ErrorCode::BAD_CREDENTIAL))?;
        Ok(Grant {
            app_id: app_id.clone(),
            session_id,
            transports: app.transports,
            session_deadline: self
                .unix_at(now)
                .saturating_add(self.config.max_session_lifetime.as_secs()),
        })
    }

    /// Checks a `Bind`: the ticket verifies and is unexpired, the session is
    /// within its max lifetime, and the ticket allows this mode on this path.
    pub fn check_bind(
        &self,
        now: Instant,
        bind: &Bind,
        path: Path,
    ) -> Result<BindRequest, ErrorFrame> {
        let grant = self.open_ticket(now, &bind.ticket)?;
        let needed = match (bind.mode, path) {
            (BindMode::Stream, Path::Tcp) => Transports::TCP,
            (BindMode::Datagram, Path::Tcp) => Transports::UDP_OVER_TCP,
            (BindMode::Datagram, Path::Udp) => Transports::UDP,
            (BindMode::Stream, Path::Udp) => {
                return Err(ErrorFrame::with_message(
                    ErrorCode::TRANSPORT_NOT_ALLOWED,
                    "stream mode needs the TCP relay",
                ));
            }
        };
        grant.permits(needed)?;
        Ok(BindRequest {
            session_id: grant.session_id,
            app_id: grant.app_id,
            destination: bind.destination.clone(),
            mode: bind.mode,
            path,
            session_deadline: grant.session_deadline,
        })
    }

    /// Handles one datagram on an allocation UDP port.
    ///
    /// Every reply is at most as long as `data` (no amplification): a request
    /// too small for its `AllocateOk` gets `REQUEST_TOO_SMALL`, and datagrams
    /// that do not start with the frame magic get nothing.
    #[must_use]
    pub fn handle_allocation_datagram(&self, now: Instant, data: &[u8]) -> UdpAllocation {
        let limit = data.len();
        if classify(data) != DatagramClass::Control {
            return UdpAllocation::Drop;
        }
        let frame = match Frame::parse(data) {
            Ok(f) => f,
            Err(e) => {
                return error_reply(e.wire_code(), Some(&e.to_string()), limit)
                    .map_or(UdpAllocation::Drop, UdpAllocation::Reply);
            }
        };
        let checked = match &frame {
            Frame::AllocateRequest(r) => self.check_allocate(now, r),
            Frame::Refresh(r) => self.check_refresh(now, r),
            _ => Err(ErrorFrame::new(ErrorCode::UNEXPECTED_FRAME)),
        };
        match checked {
            Ok(request) => {
                let reply = Frame::AllocateOk(self.grant(now, &request)).to_bytes();
                if reply.len() > limit {
                    return error_reply(ErrorCode::REQUEST_TOO_SMALL, None, limit)
                        .map_or(UdpAllocation::Drop, UdpAllocation::Reply);
                }
                UdpAllocation::Pending(PendingAllocation {
                    request,
                    reply,
                    limit,
                })
            }
            Err(e) => error_reply(e.code, Some(e.message.as_str()), limit)
                .map_or(UdpAllocation::Drop, UdpAllocation::Reply),
        }
    }
}

/// A ticket outlives its app's removal from the configuration (it is signed
/// by a ticket key, not the app's secret): refuse it, so a removed app gets
/// no new binding or refresh.
fn app_still_configured(auth: &Auth, app_id: &AppId) -> Result<(), ErrorFrame> {
    if auth.credentials.lookup(app_id).is_none() {
        return Err(ErrorFrame::with_message(
            ErrorCode::BAD_CREDENTIAL,
            "the ticket's app is not configured on this proxy",
        ));
    }
    Ok(())
}

fn secs_u16(d: Duration) -> u16 {
    u16::try_from(d.as_secs()).unwrap_or(u16::MAX)
}

/// What to do with a datagram that arrived on an allocation UDP port.
#[derive(Debug)]
#[non_exhaustive]
pub enum UdpAllocation {
    /// Send nothing.
    Drop,
    /// Send these bytes back to the source (never larger than the request).
    Reply(Bytes),
    /// A valid request: decide on the quota, then call
    /// [`PendingAllocation::accept`] or [`PendingAllocation::reject`].
    Pending(PendingAllocation),
}

/// A valid UDP allocation request awaiting the quota decision.
#[derive(Debug)]
pub struct PendingAllocation {
    /// The checked request.
    pub request: AllocationRequest,
    reply: Bytes,
    limit: usize,
}

impl PendingAllocation {
    /// The `AllocateOk` datagram to send back.
    #[must_use]
    pub fn accept(self) -> Bytes {
        self.reply
    }

    /// An `Error` datagram to send back (shortened to the request's size).
    #[must_use]
    pub fn reject(self, code: ErrorCode, message: Option<&str>) -> Option<Bytes> {
        error_reply(code, message, self.limit)
    }
}

/// Which listener accepted a TCP connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// An allocation port (1080, 8000, 25000, 9700): `AllocateRequest` or `Refresh`.
    Allocation,
    /// The TCP relay port (4000): `Bind`.
    Relay,
}

/// What a [`Connection`] reports to the I/O layer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// Credentials are good; check the app's quota, then call
    /// [`Connection::accept_allocation`] or [`Connection::reject`].
    AllocationRequested(AllocationRequest),
    /// `AllocateOk` was queued; the connection closes after it is flushed.
    Allocated {
        /// The session.
        session_id: u64,
        /// The app.
        app_id: AppId,
    },
    /// The ticket is good; check the destination against the allowlist (and,
    /// for stream mode, connect to it), then call [`Connection::accept_bind`]
    /// or [`Connection::reject`].
    BindRequested(BindRequest),
    /// `BindOk` was queued. In stream mode the I/O layer now copies bytes both
    /// ways itself, starting with `early_data` (client bytes that followed the
    /// `Bind`); the state machine is done. In datagram mode keep driving it.
    Bound {
        /// The bind that was accepted.
        request: BindRequest,
        /// Client bytes received after the `Bind` frame (stream mode).
        early_data: Bytes,
    },
    /// Datagram mode: a datagram from the client to forward to the destination.
    Datagram(Bytes),
    /// The connection is over: flush the queued transmits, then close it.
    Closed(SessionError),
}

#[derive(Debug)]
enum ConnState {
    Handshake {
        deadline: Instant,
    },
    PendingAllocation {
        deadline: Instant,
        request: AllocationRequest,
    },
    PendingBind {
        deadline: Instant,
        request: BindRequest,
    },
    Datagram {
        deadline: Instant,
    },
    Streaming,
    Closed,
}

/// One TCP connection accepted on an allocation port or the relay port.
#[derive(Debug)]
pub struct Connection {
    server: Arc<Server>,
    role: Role,
    state: ConnState,
    last_recv: Instant,
    buf: BytesMut,
    codec: FrameCodec,
    out: BytesMut,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ServerEvent>,
    /// The app the first request named (unverified), for the I/O layer's log.
    claimed_app: Option<AppId>,
}

/// Largest frame body accepted before a connection is bound (handshake frames
/// are small; this keeps unauthenticated buffers small).
pub const HANDSHAKE_MAX_PAYLOAD: usize = 2048;

impl Connection {
    /// A freshly accepted connection; the handshake deadline starts now.
    #[must_use]
    pub fn new(server: Arc<Server>, role: Role, now: Instant) -> Self {
        let deadline = now + server.config.handshake_timeout;
        let handshake_max = HANDSHAKE_MAX_PAYLOAD.min(server.config.max_frame_len);
        Self {
            server,
            role,
            state: ConnState::Handshake { deadline },
            last_recv: now,
            buf: BytesMut::new(),
            codec: FrameCodec::with_max_payload(handshake_max),
            out: BytesMut::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            claimed_app: None,
        }
    }

    /// The app the client's first request named — its `AllocateRequest`'s app
    /// id, or the app inside its ticket — whether or not it verified. For
    /// logging a refusal; never proof of anything.
    #[must_use]
    pub fn claimed_app(&self) -> Option<&AppId> {
        self.claimed_app.as_ref()
    }

    /// The listener role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// True once closed (flush transmits, then close the socket).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self.state, ConnState::Closed)
    }

    /// Feeds bytes read from the connection. Ignored after `Bound` in stream
    /// mode (the I/O layer copies bytes itself) and after `Closed`.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, ConnState::Closed | ConnState::Streaming) {
            return;
        }
        self.buf.extend_from_slice(data);
        loop {
            // Frames that arrive while a decision is pending stay buffered.
            if !matches!(
                self.state,
                ConnState::Handshake { .. } | ConnState::Datagram { .. }
            ) {
                return;
            }
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => {
                    self.last_recv = now;
                    self.handle_frame(now, frame);
                }
                Ok(None) => return,
                Err(e) => {
                    return self.fail(
                        e.wire_code(),
                        Some(&e.to_string()),
                        SessionError::protocol(e),
                    );
                }
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        let ConnState::Handshake { deadline } = self.state else {
            return self.handle_datagram_mode(frame);
        };
        self.claimed_app = match &frame {
            Frame::AllocateRequest(r) => Some(r.app_id.clone()),
            Frame::Refresh(Refresh { ticket, .. }) | Frame::Bind(Bind { ticket, .. }) => {
                Ticket::parse_unverified(ticket.as_bytes())
                    .ok()
                    .map(|(t, _)| t.app_id)
            }
            _ => None,
        };
        let result = match (self.role, frame) {
            (Role::Allocation, Frame::AllocateRequest(r)) => {
                self.server.check_allocate(now, &r).map(|request| {
                    self.events
                        .push_back(ServerEvent::AllocationRequested(request.clone()));
                    ConnState::PendingAllocation { deadline, request }
                })
            }
            (Role::Allocation, Frame::Refresh(r)) => {
                self.server.check_refresh(now, &r).map(|request| {
                    self.events
                        .push_back(ServerEvent::AllocationRequested(request.clone()));
                    ConnState::PendingAllocation { deadline, request }
                })
            }
            (Role::Relay, Frame::Bind(b)) => {
                if b.rebind.is_some() {
                    Err(ErrorFrame::with_message(
                        ErrorCode::UNEXPECTED_FRAME,
                        "rebind is only for UDP bindings",
                    ))
                } else {
                    self.server.check_bind(now, &b, Path::Tcp).map(|request| {
                        self.events
                            .push_back(ServerEvent::BindRequested(request.clone()));
                        ConnState::PendingBind { deadline, request }
                    })
                }
            }
            (_, Frame::Close) => {
                self.state = ConnState::Closed;
                self.events
                    .push_back(ServerEvent::Closed(SessionError::ClosedByPeer));
                return;
            }
            (_, other) => {
                let found = other.frame_type();
                return self.fail(
                    ErrorCode::UNEXPECTED_FRAME,
                    None,
                    SessionError::UnexpectedFrame {
                        found,
                        state: "waiting for the first request",
                    },
                );
            }
        };
        match result {
            Ok(state) => self.state = state,
            Err(e) => {
                let code = e.code;
                self.fail(
                    code,
                    Some(e.message.as_str()),
                    SessionError::Rejected { code },
                );
            }
        }
    }

    fn handle_datagram_mode(&mut self, frame: Frame) {
        match frame {
            Frame::Datagram(p) => self.events.push_back(ServerEvent::Datagram(p)),
            Frame::Ping(n) => self.queue(&Frame::Pong(n)),
            Frame::Pong(_) => {}
            Frame::Close => {
                self.state = ConnState::Closed;
                self.events
                    .push_back(ServerEvent::Closed(SessionError::ClosedByPeer));
            }
            Frame::Error(e) => {
                self.state = ConnState::Closed;
                self.events
                    .push_back(ServerEvent::Closed(SessionError::Refused {
                        code: e.code,
                        message: e.message.as_str().to_owned(),
                    }));
            }
            other => {
                let found = other.frame_type();
                self.fail(
                    ErrorCode::UNEXPECTED_FRAME,
                    None,
                    SessionError::UnexpectedFrame {
                        found,
                        state: "bound in datagram mode",
                    },
                );
            }
        }
    }

    fn queue(&mut self, f: &Frame) {
        self.out.reserve(f.encoded_len());
        f.encode(&mut self.out);
        let b = self.out.split().freeze();
        self.transmits.push_back(b);
    }

    fn fail(&mut self, code: ErrorCode, message: Option<&str>, reason: SessionError) {
        if matches!(self.state, ConnState::Closed) {
            return;
        }
        let e = match message {
            Some(m) => ErrorFrame::with_message(code, m),
            None => ErrorFrame::new(code),
        };
        self.queue(&Frame::Error(e));
        self.state = ConnState::Closed;
        self.events.push_back(ServerEvent::Closed(reason));
    }

    /// Grants the pending allocation: `AllocateOk` is queued, then the
    /// connection closes.
    pub fn accept_allocation(&mut self, now: Instant) -> Result<(), SessionError> {
        let ConnState::PendingAllocation { request, .. } = &self.state else {
            return Err(SessionError::InvalidState("no allocation is pending"));
        };
        let ok = self.server.grant(now, request);
        let (session_id, app_id) = (request.session_id, request.app_id.clone());
        self.queue(&Frame::AllocateOk(ok));
        self.state = ConnState::Closed;
        self.events
            .push_back(ServerEvent::Allocated { session_id, app_id });
        self.events
            .push_back(ServerEvent::Closed(SessionError::ClosedLocally));
        Ok(())
    }

    /// Accepts the pending bind: `BindOk` is queued and [`ServerEvent::Bound`]
    /// follows.
    pub fn accept_bind(&mut self, now: Instant) -> Result<(), SessionError> {
        let ConnState::PendingBind { request, .. } = &self.state else {
            return Err(SessionError::InvalidState("no bind is pending"));
        };
        let request = request.clone();
        let cfg = &self.server.config;
        let ok = BindOk {
            binding_id: 0,
            binding_token: 0,
            mode: request.mode,
            keepalive_secs: secs_u16(cfg.keepalive_interval),
            idle_timeout_secs: secs_u16(cfg.idle_timeout),
        };
        self.queue(&Frame::BindOk(ok));
        self.last_recv = now;
        let early_data = match request.mode {
            BindMode::Stream => {
                self.state = ConnState::Streaming;
                self.buf.split().freeze()
            }
            BindMode::Datagram => {
                let unix = self.server.unix_at(now);
                let deadline =
                    now + Duration::from_secs(request.session_deadline.saturating_sub(unix));
                self.state = ConnState::Datagram { deadline };
                // The operator's limit, not the protocol's: a lower
                // configured limit is refused like the protocol maximum.
                self.codec = FrameCodec::with_max_payload(self.server.config.max_frame_len);
                Bytes::new()
            }
        };
        self.events.push_back(ServerEvent::Bound {
            request,
            early_data,
        });
        // Datagram frames that arrived behind the Bind.
        if matches!(self.state, ConnState::Datagram { .. }) && !self.buf.is_empty() {
            self.handle_input(now, &[]);
        }
        Ok(())
    }

    /// Refuses the pending request (or ends the connection at any time, for
    /// example with `SERVER_BUSY` on shutdown): an `Error` frame is queued and
    /// the connection closes.
    pub fn reject(&mut self, _now: Instant, code: ErrorCode, message: Option<&str>) {
        self.fail(code, message, SessionError::Rejected { code });
    }

    /// Datagram mode: queues a datagram from the destination to the client.
    pub fn send_datagram(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        if !matches!(self.state, ConnState::Datagram { .. }) {
            return Err(SessionError::InvalidState(
                "send_datagram needs a bound datagram-mode connection",
            ));
        }
        if payload.len() > MAX_DATAGRAM_PAYLOAD {
            return Err(SessionError::InvalidState(
                "datagram larger than MAX_DATAGRAM_PAYLOAD",
            ));
        }
        let f = Frame::Datagram(Bytes::copy_from_slice(payload));
        self.queue(&f);
        Ok(())
    }

    /// Closes the connection with a `Close` frame.
    pub fn close(&mut self) {
        if matches!(self.state, ConnState::Closed | ConnState::Streaming) {
            return;
        }
        self.queue(&Frame::Close);
        self.state = ConnState::Closed;
        self.events
            .push_back(ServerEvent::Closed(SessionError::ClosedLocally));
    }

    /// Next bytes to write, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// Next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            ConnState::Handshake { deadline }
            | ConnState::PendingAllocation { deadline, .. }
            | ConnState::PendingBind { deadline, .. } => Some(*deadline),
            ConnState::Datagram { deadline } => {
                Some((self.last_recv + self.server.config.idle_timeout).min(*deadline))
            }
            ConnState::Streaming | ConnState::Closed => None,
        }
    }

    /// Runs the timers: handshake deadline, idle timeout, session end.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg_idle = self.server.config.idle_timeout;
        let cfg_hs = self.server.config.handshake_timeout;
        match &self.state {
            ConnState::Handshake { deadline }
            | ConnState::PendingAllocation { deadline, .. }
            | ConnState::PendingBind { deadline, .. } => {
                if now >= *deadline {
                    self.fail(
                        ErrorCode::HANDSHAKE_TIMEOUT,
                        None,
                        SessionError::Timeout {
                            which: "handshake",
                            after: cfg_hs,
                        },
                    );
                }
            }
            ConnState::Datagram { deadline } => {
                if now >= self.last_recv + cfg_idle {
                    self.fail(
                        ErrorCode::IDLE_TIMEOUT,
                        None,
                        SessionError::Timeout {
                            which: "idle",
                            after: cfg_idle,
                        },
                    );
                } else if now >= *deadline {
                    self.fail(
                        ErrorCode::SESSION_TOO_OLD,
                        None,
                        SessionError::Timeout {
                            which: "session lifetime",
                            after: self.server.config.max_session_lifetime,
                        },
                    );
                }
            }
            ConnState::Streaming | ConnState::Closed => {}
        }
    }
}

/// A datagram the [`UdpRelay`] wants sent from the relay socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: Bytes,
}

/// Identifies a UDP bind waiting for the I/O layer's decision.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BindRequestId(u64);

/// Why [`UdpRelay::handle_datagram`] dropped a datagram (for counters).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum DropReason {
    /// Did not parse.
    Malformed,
    /// No binding with that id.
    UnknownBinding,
    /// The token did not match.
    BadToken,
    /// Right id and token but from another address (re-bind first).
    AddressMismatch,
    /// A bind from this address is already waiting for a decision.
    DuplicatePending,
    /// Too many binds waiting for decisions.
    TooManyPending,
    /// A bad bind whose error reply would be larger than the request.
    NoReplyFits,
}

/// Result of [`UdpRelay::handle_datagram`].
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayInput {
    /// Forward `payload` to the binding's destination (from the binding's own
    /// relay-side socket, so replies identify the binding).
    Forward {
        /// The binding.
        binding_id: u32,
        /// The media payload (a slice of the input, no copy).
        payload: Bytes,
    },
    /// A control datagram was handled: drain `poll_transmit` and `poll_event`.
    Handled,
    /// Dropped, and why.
    Dropped(DropReason),
}

/// Result of [`UdpRelay::handle_slice`]: [`RelayInput`] without a payload
/// buffer of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SliceInput {
    /// Forward `data[payload_start..]` to the binding's destination.
    Forward {
        /// The binding.
        binding_id: u32,
        /// Where the media payload starts in the datagram.
        payload_start: usize,
    },
    /// A control datagram was handled: drain `poll_transmit` and `poll_event`.
    Handled,
    /// Dropped, and why.
    Dropped(DropReason),
}

/// What the [`UdpRelay`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpRelayEvent {
    /// A ticket-checked bind: check the allowlist, open the binding's upstream
    /// socket, then call [`UdpRelay::accept_bind`] or [`UdpRelay::reject_bind`].
    BindRequested {
        /// Pass back to accept or reject.
        id: BindRequestId,
        /// The checked request.
        request: BindRequest,
        /// The client's address.
        client: SocketAddr,
    },
    /// A binding was created.
    Bound {
        /// Its id.
        binding_id: u32,
        /// The client's address.
        client: SocketAddr,
    },
    /// A binding moved to a new client address (NAT rebinding, ticket-proven).
    Rebound {
        /// Its id.
        binding_id: u32,
        /// The previous address.
        old: SocketAddr,
        /// The new address.
        new: SocketAddr,
    },
    /// A binding ended: close its upstream socket.
    BindingClosed {
        /// Its id.
        binding_id: u32,
        /// Why.
        reason: SessionError,
    },
    /// A control datagram was refused (malformed, or a `Bind` whose ticket
    /// did not verify), and its `Error` (if it fits) queued: for the I/O
    /// layer's log and its login-failure limit.
    Refused {
        /// The sender.
        client: SocketAddr,
        /// The refusal.
        code: ErrorCode,
    },
}

/// Public view of one UDP binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpBinding {
    /// The session.
    pub session_id: u64,
    /// The app.
    pub app_id: AppId,
    /// The client's current address.
    pub client: SocketAddr,
    /// The destination.
    pub destination: Address,
    token: u64,
    last_seen: Instant,
    deadline: Instant,
}

#[derive(Debug)]
struct PendingBind {
    request: BindRequest,
    client: SocketAddr,
    limit: usize,
    expires: Instant,
}

/// The binding table of the UDP media relay (all sockets of the range can
/// share one, or each socket can have its own).
#[derive(Debug)]
pub struct UdpRelay {
    server: Arc<Server>,
    bindings: HashMap<u32, UdpBinding>,
    by_client: HashMap<SocketAddr, u32>,
    pending: HashMap<BindRequestId, PendingBind>,
    pending_by_client: HashMap<SocketAddr, BindRequestId>,
    next_request: u64,
    next_sweep: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<UdpRelayEvent>,
}

impl UdpRelay {
    /// An empty binding table.
    #[must_use]
    pub fn new(server: Arc<Server>) -> Self {
        Self {
            server,
            bindings: HashMap::new(),
            by_client: HashMap::new(),
            pending: HashMap::new(),
            pending_by_client: HashMap::new(),
            next_request: 0,
            next_sweep: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Number of live bindings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// True when there is no binding.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// A binding by id.
    #[must_use]
    pub fn binding(&self, binding_id: u32) -> Option<&UdpBinding> {
        self.bindings.get(&binding_id)
    }

    fn sweep_interval(&self) -> Duration {
        (self.server.config.idle_timeout / 4).max(Duration::from_millis(250))
    }

    fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_interval());
        }
    }

    fn reply(&mut self, to: SocketAddr, contents: Bytes) {
        self.transmits.push_back(Transmit {
            destination: to,
            contents,
        });
    }

    fn reply_error(
        &mut self,
        to: SocketAddr,
        code: ErrorCode,
        message: Option<&str>,
        limit: usize,
    ) -> RelayInput {
        match error_reply(code, message, limit) {
            Some(b) => {
                self.reply(to, b);
                RelayInput::Handled
            }
            None => RelayInput::Dropped(DropReason::NoReplyFits),
        }
    }

    /// Handles one datagram received on a relay UDP port from `from`.
    ///
    /// Data from a bound client comes back as [`RelayInput::Forward`] with a
    /// zero-copy payload; everything else is answered through
    /// `poll_transmit`, never with more bytes than were received.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: Bytes) -> RelayInput {
        match self.handle_slice(now, from, &data) {
            SliceInput::Forward {
                binding_id,
                payload_start,
            } => RelayInput::Forward {
                binding_id,
                payload: data.slice(payload_start..),
            },
            SliceInput::Handled => RelayInput::Handled,
            SliceInput::Dropped(reason) => RelayInput::Dropped(reason),
        }
    }

    /// [`UdpRelay::handle_datagram`] for a borrowed datagram, as read into a
    /// reused batch buffer: data from a bound client comes back as
    /// [`SliceInput::Forward`] with where its payload starts in `data`.
    pub fn handle_slice(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> SliceInput {
        match classify(data) {
            DatagramClass::Relay => self.handle_relay(now, from, data),
            DatagramClass::Control => match self.handle_control(now, from, data) {
                RelayInput::Dropped(reason) => SliceInput::Dropped(reason),
                _ => SliceInput::Handled,
            },
            DatagramClass::Unknown => SliceInput::Dropped(DropReason::Malformed),
        }
    }

    fn handle_relay(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> SliceInput {
        let Ok((h, payload)) = UdpHeader::parse(data) else {
            return SliceInput::Dropped(DropReason::Malformed);
        };
        let payload_start = data.len() - payload.len();
        let Some(b) = self.bindings.get_mut(&h.binding_id) else {
            return SliceInput::Dropped(DropReason::UnknownBinding);
        };
        if !tokens_equal(b.token, h.binding_token) {
            return SliceInput::Dropped(DropReason::BadToken);
        }
        if b.client != from {
            return SliceInput::Dropped(DropReason::AddressMismatch);
        }
        b.last_seen = now;
        match h.kind {
            UdpKind::Data => SliceInput::Forward {
                binding_id: h.binding_id,
                payload_start,
            },
            UdpKind::Keepalive => {
                let ack = UdpHeader {
                    kind: UdpKind::KeepaliveAck,
                    ..h
                };
                self.reply(from, Bytes::copy_from_slice(&ack.to_array()));
                SliceInput::Handled
            }
            UdpKind::KeepaliveAck => SliceInput::Handled,
            UdpKind::Close => {
                self.remove(h.binding_id, SessionError::ClosedByPeer);
                SliceInput::Handled
            }
        }
    }

    /// [`UdpRelay::reply_error`], reported as [`UdpRelayEvent::Refused`].
    fn refuse(
        &mut self,
        from: SocketAddr,
        code: ErrorCode,
        message: Option<&str>,
        limit: usize,
    ) -> RelayInput {
        self.events
            .push_back(UdpRelayEvent::Refused { client: from, code });
        self.reply_error(from, code, message, limit)
    }

    fn handle_control(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> RelayInput {
        let limit = data.len();
        let bind = match Frame::parse(data) {
            Ok(Frame::Bind(b)) => b,
            Ok(_) => return self.refuse(from, ErrorCode::UNEXPECTED_FRAME, None, limit),
            Err(e) => {
                return self.refuse(from, e.wire_code(), Some(&e.to_string()), limit);
            }
        };
        let request = match self.server.check_bind(now, &bind, Path::Udp) {
            Ok(r) => r,
            Err(e) => return self.refuse(from, e.code, Some(e.message.as_str()), limit),
        };
        if let Some(rebind) = bind.rebind {
            return self.handle_rebind(
                now,
                from,
                &request,
                rebind.binding_id,
                rebind.binding_token,
                limit,
            );
        }
        // A retransmitted Bind whose BindOk was lost: answer again.
        if let Some(&id) = self.by_client.get(&from) {
            let b = &self.bindings[&id];
            if b.session_id == request.session_id && b.destination == request.destination {
                let ok = self.bind_ok(id, b.token);
                self.reply(from, ok);
                return RelayInput::Handled;
            }
            return self.reply_error(
                from,
                ErrorCode::UNEXPECTED_FRAME,
                Some("this address already has a binding; close it first"),
                limit,
            );
        }
        if self.pending_by_client.contains_key(&from) {
            return RelayInput::Dropped(DropReason::DuplicatePending);
        }
        if self.pending.len() >= self.server.config.max_pending_binds {
            return RelayInput::Dropped(DropReason::TooManyPending);
        }
        self.next_request += 1;
        let id = BindRequestId(self.next_request);
        self.pending.insert(
            id,
            PendingBind {
                request: request.clone(),
                client: from,
                limit,
                expires: now + self.server.config.handshake_timeout,
            },
        );
        self.pending_by_client.insert(from, id);
        self.arm_sweep(now);
        self.events.push_back(UdpRelayEvent::BindRequested {
            id,
            request,
            client: from,
        });
        RelayInput::Handled
    }

    fn handle_rebind(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: &BindRequest,
        binding_id: u32,
        token: u64,
        limit: usize,
    ) -> RelayInput {
        let valid = self
            .bindings
            .get(&binding_id)
            .is_some_and(|b| b.session_id == request.session_id && tokens_equal(b.token, token));
        if !valid {
            return self.reply_error(from, ErrorCode::BINDING_NOT_FOUND, None, limit);
        }
        if let Some(&other) = self.by_client.get(&from)
            && other != binding_id
        {
            return self.reply_error(
                from,
                ErrorCode::UNEXPECTED_FRAME,
                Some("this address already has another binding"),
                limit,
            );
        }
        let b = self.bindings.get_mut(&binding_id).expect("checked above");
        let old = b.client;
        b.client = from;
        b.last_seen = now;
        let tok = b.token;
        if old != from {
            self.by_client.remove(&old);
            self.by_client.insert(from, binding_id);
            self.events.push_back(UdpRelayEvent::Rebound {
                binding_id,
                old,
                new: from,
            });
        }
        let ok = self.bind_ok(binding_id, tok);
        self.reply(from, ok);
        RelayInput::Handled
    }

    fn bind_ok(&self, binding_id: u32, token: u64) -> Bytes {
        let cfg = &self.server.config;
        Frame::BindOk(BindOk {
            binding_id,
            binding_token: token,
            mode: BindMode::Datagram,
            keepalive_secs: secs_u16(cfg.keepalive_interval),
            idle_timeout_secs: secs_u16(cfg.idle_timeout),
        })
        .to_bytes()
    }

    /// Creates the binding for a pending bind and queues its `BindOk`.
    /// Returns the new binding id.
    pub fn accept_bind(&mut self, now: Instant, id: BindRequestId) -> Result<u32, SessionError> {
        let Some(p) = self.pending.remove(&id) else {
            return Err(SessionError::InvalidState(
                "no such pending bind (expired or answered)",
            ));
        };
        self.pending_by_client.remove(&p.client);
        let mut binding_id;
        loop {
            let mut b = [0u8; 4];
            self.server.entropy.fill(&mut b);
            binding_id = u32::from_be_bytes(b);
            if binding_id != 0 && !self.bindings.contains_key(&binding_id) {
                break;
            }
        }
        let token = random_u64(&*self.server.entropy);
        let unix = self.server.unix_at(now);
        let deadline = now + Duration::from_secs(p.request.session_deadline.saturating_sub(unix));
        self.bindings.insert(
            binding_id,
            UdpBinding {
                session_id: p.request.session_id,
                app_id: p.request.app_id,
                client: p.client,
                destination: p.request.destination,
                token,
                last_seen: now,
                deadline,
            },
        );
        self.by_client.insert(p.client, binding_id);
        let ok = self.bind_ok(binding_id, token);
        if ok.len() <= p.limit {
            self.reply(p.client, ok);
        }
        self.arm_sweep(now);
        self.events.push_back(UdpRelayEvent::Bound {
            binding_id,
            client: p.client,
        });
        Ok(binding_id)
    }

    /// Refuses a pending bind with an error (shortened to the request's size).
    pub fn reject_bind(&mut self, id: BindRequestId, code: ErrorCode, message: Option<&str>) {
        if let Some(p) = self.pending.remove(&id) {
            self.pending_by_client.remove(&p.client);
            if let Some(b) = error_reply(code, message, p.limit) {
                self.reply(p.client, b);
            }
        }
    }

    /// Writes the header and `payload` of a datagram from the destination to
    /// the binding's client into `out`, and returns where to send it.
    /// `None` when the binding does not exist (drop the datagram).
    pub fn encapsulate(
        &self,
        binding_id: u32,
        payload: &[u8],
        out: &mut impl BufMut,
    ) -> Option<SocketAddr> {
        let b = self.bindings.get(&binding_id)?;
        UdpHeader {
            kind: UdpKind::Data,
            binding_id,
            binding_token: b.token,
        }
        .encode(out);
        out.put_slice(payload);
        Some(b.client)
    }

    /// Ends a binding: a `Close` datagram goes to the client.
    pub fn close_binding(&mut self, binding_id: u32) {
        if let Some(b) = self.bindings.get(&binding_id) {
            let h = UdpHeader {
                kind: UdpKind::Close,
                binding_id,
                binding_token: b.token,
            };
            let to = b.client;
            self.reply(to, Bytes::copy_from_slice(&h.to_array()));
            self.remove(binding_id, SessionError::ClosedLocally);
        }
    }

    fn remove(&mut self, binding_id: u32, reason: SessionError) {
        if let Some(b) = self.bindings.remove(&binding_id) {
            self.by_client.remove(&b.client);
            self.events
                .push_back(UdpRelayEvent::BindingClosed { binding_id, reason });
        }
    }

    /// Next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<UdpRelayEvent> {
        self.events.pop_front()
    }

    /// When [`UdpRelay::handle_timeout`] must be called next (a periodic sweep
    /// every quarter of the idle timeout while anything is bound or pending).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Sweeps: drops bindings idle for the idle timeout or past their
    /// session's end (the latter get a `Close`), and expires pending binds.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_sweep {
            Some(t) if now >= t => {}
            _ => return,
        }
        let idle = self.server.config.idle_timeout;
        let mut idle_ids = Vec::new();
        let mut old_ids = Vec::new();
        for (&id, b) in &self.bindings {
            if now >= b.last_seen + idle {
                idle_ids.push(id);
            } else if now >= b.deadline {
                old_ids.push(id);
            }
        }
        idle_ids.sort_unstable();
        old_ids.sort_unstable();
        for id in idle_ids {
            self.remove(
                id,
                SessionError::Timeout {
                    which: "idle",
                    after: idle,
                },
            );
        }
        for id in old_ids {
            if let Some(b) = self.bindings.get(&id) {
                let h = UdpHeader {
                    kind: UdpKind::Close,
                    binding_id: id,
                    binding_token: b.token,
                };
                let to = b.client;
                self.reply(to, Bytes::copy_from_slice(&h.to_array()));
            }
            self.remove(
                id,
                SessionError::Timeout {
                    which: "session lifetime",
                    after: self.server.config.max_session_lifetime,
                },
            );
        }
        let expired: Vec<BindRequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.expires)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.pending_by_client.remove(&p.client);
            }
        }
        self.next_sweep = if self.bindings.is_empty() && self.pending.is_empty() {
            None
        } else {
            Some(now + self.sweep_interval())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_fits_limit() {
        for limit in 0..64 {
            match error_reply(
                ErrorCode::BAD_CREDENTIAL,
                Some("x".repeat(100).as_str()),
                limit,
            ) {
                Some(b) => assert!(b.len() <= limit),
                None => assert!(limit < HEADER_LEN + 3),
            }
        }
    }

    struct Counter(std::sync::atomic::AtomicU8);

    impl Entropy for Counter {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn apps(ids: &[&str]) -> Arc<HashMap<AppId, Arc<AppCredentials>>> {
        Arc::new(
            ids.iter()
                .map(|id| {
                    let credentials = AppCredentials {
                        secrets: vec![b"secret of sixteen".to_vec()],
                        transports: Transports::ALL,
                    };
                    (AppId::new(*id).unwrap(), Arc::new(credentials))
                })
                .collect(),
        )
    }

    fn code<T>(checked: Result<T, ErrorFrame>) -> ErrorCode {
        checked.map(|_| ()).unwrap_err().code
    }

    #[test]
    fn replaced_credentials_apply_to_the_next_check() {
        let now = Instant::now();
        let server = Server::new(
            ServerConfig::new(Timebase::new(now, 1_700_000_000)),
            TicketKeyRing::new(1, vec![1; 32]),
            apps(&["a"]),
            Arc::new(Counter(0.into())),
        );
        let app = AppId::new("a").unwrap();
        let ticket = server.grant(
            now,
            &AllocationRequest {
                app_id: app.clone(),
                session_id: 7,
                transports: Transports::ALL,
                capabilities: Capabilities::default(),
                refresh: false,
                client_version: Text::default(),
                created_at: 1_700_000_000,
            },
        );
        let refresh = Refresh {
            ticket: ticket.ticket.clone(),
            padding: 0,
        };
        assert!(server.open_ticket(now, &ticket.ticket).is_ok());

        // Key 1 removed, key 2 signs: the old ticket no longer opens.
        server.replace_credentials(TicketKeyRing::new(2, vec![2; 32]), apps(&["a"]));
        assert_eq!(
            code(server.open_ticket(now, &ticket.ticket)),
            ErrorCode::INVALID_TICKET
        );
        assert_eq!(server.ticket_keys().current_id(), 2);

        // The key back, the app removed: its ticket, its refresh and its
        // secret are refused.
        server.replace_credentials(TicketKeyRing::new(1, vec![1; 32]), apps(&["b"]));
        assert_eq!(
            code(server.open_ticket(now, &ticket.ticket)),
            ErrorCode::BAD_CREDENTIAL
        );
        assert_eq!(
            code(server.check_refresh(now, &refresh)),
            ErrorCode::BAD_CREDENTIAL
        );
        assert_eq!(
            code(server.check_secret(now, &app, b"secret of sixteen", 8)),
            ErrorCode::BAD_CREDENTIAL
        );
    }
}
