//! The SOCKS5 listener (RFC 1928, with RFC 1929 user/password): standard
//! clients — curl, browsers, other SDKs — use the relay with no new code,
//! under the same credentials, allowlist, quotas, deadlines, logs and
//! counters as the native protocol (the checks are the same functions).
//!
//! - Username = app id; password = the app secret in hex, or a ticket in hex
//!   (then the SOCKS session *is* that ticket's session for the quota).
//!   Logins go through [`admission`](crate::admission), the same
//!   rules as the native protocol: constant-time secrets, tickets, the
//!   per-session transports (CONNECT needs TCP, UDP ASSOCIATE needs UDP),
//!   the max session lifetime, quotas, and the login-failure limit.
//! - CONNECT to IPv4, IPv6 and domain destinations; names are resolved by the
//!   relay and the resolved address is what the allowlist checks.
//! - UDP ASSOCIATE: datagrams are accepted only from the client of the
//!   control connection, fragments are dropped and counted, replies are
//!   relayed only from destinations the client has sent to, and the
//!   association dies with its control connection.
//! - BIND is answered "command not supported".
//!
//! [`wire`] parses and writes the messages without I/O; this module runs the
//! listener's handshake (greeting, login, request) and admission, then hands
//! the connection to [`connect`] or [`associate`].

mod associate;
mod connect;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use cloudproxy_proto::Transports;
use cloudproxy_proto::server::Grant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admission::{self, LoginRefused};
use crate::conn::close_after_refusal;
use crate::shared::Shared;
use crate::stats::Stats;
use wire::{METHOD_NONE, METHOD_PASSWORD, METHOD_UNACCEPTABLE, Parsed, Reply, Request, WireError};

/// Why a handshake ended without a session (for the log).
#[derive(Debug)]
enum Refused {
    Io(io::Error),
    Malformed(WireError),
    Auth(LoginRefused),
    NoMethod,
    Command(Reply),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connection failed during the handshake: {e}"),
            Self::Malformed(what) => write!(f, "malformed {what}"),
            Self::Auth(why) => write!(f, "login refused: {why}"),
            Self::NoMethod => f.write_str(
                "no acceptable authentication method offered (user/password is required)",
            ),
            Self::Command(reply) => {
                write!(f, "request refused: {reply} (reply {})", *reply as u8)
            }
        }
    }
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<WireError> for Refused {
    fn from(e: WireError) -> Self {
        Self::Malformed(e)
    }
}

/// Who the client proved to be.
struct Client {
    app: String,
    session: u64,
    /// Unix seconds when the session must end (max session lifetime), as
    /// admission decided it.
    session_deadline: u64,
}

/// A handshake's outcome: who, what, and the client's bytes that followed
/// the request (for the destination of a CONNECT).
struct Handshake {
    grant: Grant,
    request: Request,
    early: Vec<u8>,
}

/// One connection on the SOCKS5 port.
pub(crate) async fn connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    // Bounded by the handshake deadline and by shutdown's force-close.
    let handshake = tokio::select! {
        done = tokio::time::timeout(
            shared.limits.handshake_timeout(),
            handshake(&shared, &mut stream, peer),
        ) => done,
        () = shared.lifecycle.force_closed() => return,
    };
    let Handshake {
        grant,
        request,
        early,
    } = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(refused)) => {
            match &refused {
                Refused::Malformed(_) => Stats::bump(&shared.stats.malformed),
                Refused::Auth(_) => Stats::bump(&shared.stats.socks5_auth_refused),
                _ => {}
            }
            // The handshake's refusals name no app the node vouches for.
            shared.refusal_log.log(|| match &refused {
                Refused::Auth(LoginRefused::Bad(_)) => {
                    tracing::warn!(%peer, app = %"-", reason = %refused, "socks5 connection refused: failed login");
                }
                Refused::Malformed(_) => {
                    tracing::warn!(%peer, app = %"-", reason = %refused, "socks5 connection refused: malformed input");
                }
                _ => {
                    tracing::info!(%peer, app = %"-", reason = %refused, "socks5 connection refused");
                }
            });
            close_after_refusal(&stream).await;
            return;
        }
        Err(_) => {
            Stats::bump(&shared.stats.handshake_timeouts);
            return;
        }
    };
    // CONNECT holds one upstream socket; an association its relay socket
    // and one upstream socket per address family.
    let (needed, sockets) = match request {
        Request::Connect(_) => (Transports::TCP, 1),
        Request::UdpAssociate(_) => (Transports::UDP, 3),
    };
    let (quota, client) = match admission::admit(&shared, &grant, needed, sockets) {
        Ok(admitted) => (
            admitted.quota,
            Client {
                app: grant.app_id.as_str().to_owned(),
                session: grant.session_id,
                session_deadline: admitted.session_deadline,
            },
        ),
        Err((code, message)) => {
            Stats::bump(&shared.stats.bindings_refused);
            shared.refusal_log.log(|| {
                tracing::info!(%peer, app = %grant.app_id, reason = %code, %message, "socks5 request refused");
            });
            let _ = reply(&mut stream, Reply::NotAllowed, None).await;
            close_after_refusal(&stream).await;
            return;
        }
    };
    match request {
        Request::Connect(target) => {
            connect::connect(&shared, stream, peer, &client, &target, &early, quota).await;
        }
        Request::UdpAssociate(declared) => {
            associate::associate(&shared, stream, peer, &client, &declared, quota).await;
        }
    }
}

async fn handshake(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Handshake, Refused> {
    let mut inbound = Inbound::default();
    let greeting = inbound.next(stream, wire::parse_greeting).await?;
    let grant = if greeting.offers(METHOD_PASSWORD) {
        stream
            .write_all(&wire::method_selection(METHOD_PASSWORD))
            .await?;
        authenticate(shared, stream, &mut inbound, peer).await?
    } else if let (true, Some(app)) = (
        greeting.offers(METHOD_NONE),
        &shared.policy.load().socks5_no_auth_app,
    ) {
        stream
            .write_all(&wire::method_selection(METHOD_NONE))
            .await?;
        admission::no_auth(shared, app, new_session_id()).map_err(Refused::Auth)?
    } else {
        stream
            .write_all(&wire::method_selection(METHOD_UNACCEPTABLE))
            .await?;
        return Err(Refused::NoMethod);
    };
    // The address a UDP client names is where it will send from (zeros
    // when it does not know); `associate` holds it to that.
    let request = match inbound.next(stream, wire::parse_request).await {
        Ok(request) => request,
        Err(Refused::Malformed(e)) => {
            // A request the relay cannot serve is answered before the close.
            if let Some(code) = e.reply() {
                reply(stream, code, None).await?;
                if e.is_unsupported() {
                    return Err(Refused::Command(code));
                }
            }
            return Err(Refused::Malformed(e));
        }
        Err(other) => return Err(other),
    };
    Ok(Handshake {
        grant,
        request,
        early: inbound.buf,
    })
}

/// RFC 1929 user/password, checked by admission.
async fn authenticate(
    shared: &Shared,
    stream: &mut TcpStream,
    inbound: &mut Inbound,
    peer: SocketAddr,
) -> Result<Grant, Refused> {
    let login = inbound.next(stream, wire::parse_login).await?;
    match admission::login(shared, peer, &login.user, &login.password, new_session_id) {
        Ok(grant) => {
            stream.write_all(&wire::login_status(true)).await?;
            Ok(grant)
        }
        Err(refused) => {
            stream.write_all(&wire::login_status(false)).await?;
            Err(Refused::Auth(refused))
        }
    }
}

/// Bytes read from the client and not parsed yet: a client may send its
/// greeting, login and request (and its first bytes for the destination)
/// in one write.
#[derive(Default)]
struct Inbound {
    buf: Vec<u8>,
}

impl Inbound {
    /// Reads until `parse` has a whole message, and takes its bytes.
    async fn next<T>(
        &mut self,
        stream: &mut TcpStream,
        parse: impl Fn(&[u8]) -> Parsed<T>,
    ) -> Result<T, Refused> {
        loop {
            if let Some((message, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(message);
            }
            // Small reads: no message is longer than 515 bytes, and what
            // follows the request is the destination's anyway.
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(Refused::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A session id for a password login: a random start per process, then a
/// counter. Unique within the node like a ticket's random id, and no system
/// call per session (a `getrandom` each was measurable in the session rate).
fn new_session_id() -> u64 {
    static NEXT: LazyLock<AtomicU64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        // Without OS randomness, ids stay unique within the process; only
        // their start is predictable, and nothing relies on it being secret.
        let _ = getrandom::fill(&mut b);
        AtomicU64::new(u64::from_be_bytes(b))
    });
    NEXT.fetch_add(1, Relaxed)
}

/// Writes a reply: `code` and the address bound for the client, if any.
async fn reply(stream: &mut TcpStream, code: Reply, bound: Option<SocketAddr>) -> io::Result<()> {
    stream.write_all(&wire::reply(code, bound)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_hex;

    #[test]
    fn refusal_reasons_read_as_words_not_debug_forms() {
        let reason = Refused::Command(Reply::CommandNotSupported).to_string();
        assert_eq!(reason, "request refused: command not supported (reply 7)");
        let reason = Refused::Command(Reply::AddressTypeNotSupported).to_string();
        assert_eq!(
            reason,
            "request refused: address type not supported (reply 8)"
        );
    }

    #[test]
    fn hex_passwords() {
        assert_eq!(decode_hex("00ff"), Ok(vec![0, 255]));
        assert!(decode_hex("0").is_err());
        assert!(decode_hex("zz").is_err());
    }
}
