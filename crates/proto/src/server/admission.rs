//! The [`Server`]: checks credential proofs and tickets and issues
//! tickets; the checked requests and grants it hands to the connections.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::Path;
use crate::error::ErrorCode;
use crate::frame::{
    AllocateOk, AllocateRequest, Bind, BindMode, ErrorFrame, Frame, HEADER_LEN, Refresh,
};
use crate::ticket::{Ticket, TicketKeyRing, verify_credential_proof};
use crate::types::{Address, AppId, Capabilities, SealedTicket, Text, Transports};

use super::config::random_u64;
use super::{CredentialStore, Entropy, ServerConfig};

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
pub(super) fn error_reply(code: ErrorCode, message: Option<&str>, limit: usize) -> Option<Bytes> {
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
    pub(super) config: ServerConfig,
    auth: RwLock<Arc<Auth>>,
    pub(super) entropy: Arc<dyn Entropy>,
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

pub(super) fn secs_u16(d: Duration) -> u16 {
    u16::try_from(d.as_secs()).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::Timebase;
    use crate::server::AppCredentials;

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
