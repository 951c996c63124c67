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

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use cloudproxy_proto::Transports;
use cloudproxy_proto::server::Grant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::admission::{self, LoginRefused};
use crate::conn::close_after_refusal;
use crate::destination::{Destination, DestinationError};
use crate::pump::{LiveTotals, PumpOptions, pump_with_totals};
use crate::quota::QuotaGuard;
use crate::shared::Shared;
use crate::stats::{Active, Stats};
use crate::upstream::connect_upstream;

const VERSION: u8 = 5;
const AUTH_VERSION: u8 = 1;
const METHOD_NONE: u8 = 0x00;
const METHOD_PASSWORD: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 1;
const CMD_UDP_ASSOCIATE: u8 = 3;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;

/// RFC 1928 §6 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

impl std::fmt::Display for Reply {
    /// RFC 1928's wording for the reply code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Succeeded => "succeeded",
            Self::GeneralFailure => "general SOCKS server failure",
            Self::NotAllowed => "connection not allowed by ruleset",
            Self::NetworkUnreachable => "network unreachable",
            Self::HostUnreachable => "host unreachable",
            Self::ConnectionRefused => "connection refused",
            Self::TtlExpired => "TTL expired",
            Self::CommandNotSupported => "command not supported",
            Self::AddressTypeNotSupported => "address type not supported",
        })
    }
}

/// Destinations a UDP association remembers (decisions and contacted
/// addresses); more are refused, so one client cannot grow memory without
/// bound.
const MAX_UDP_DESTINATIONS: usize = 1024;

/// Why a handshake ended without a session (for the log).
#[derive(Debug)]
enum Refused {
    Io(io::Error),
    Malformed(&'static str),
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

/// Who the client proved to be.
struct Client {
    app: String,
    session: u64,
    /// Unix seconds when the session must end (max session lifetime), as
    /// admission decided it.
    session_deadline: u64,
}

/// A request after authentication.
enum Request {
    Connect(Target),
    /// With the address the client says it will send its datagrams from.
    UdpAssociate(Target),
}

/// A destination as a SOCKS5 client writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl Target {
    fn as_destination(&self) -> Destination<'_> {
        match self {
            Self::Addr(a) => Destination::Addr(*a),
            Self::Name(h, p) => Destination::Name(h, *p),
        }
    }
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
    let (grant, request) = match handshake {
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
        Request::Connect(target) => connect(&shared, stream, peer, &client, &target, quota).await,
        Request::UdpAssociate(declared) => {
            associate(&shared, stream, peer, &client, &declared, quota).await;
        }
    }
}

async fn handshake(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(Grant, Request), Refused> {
    // Greeting: VER NMETHODS METHODS...
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Refused::Malformed("greeting: not SOCKS version 5"));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    let client = if methods.contains(&METHOD_PASSWORD) {
        stream.write_all(&[VERSION, METHOD_PASSWORD]).await?;
        authenticate(shared, stream, peer).await?
    } else if let (true, Some(app)) = (
        methods.contains(&METHOD_NONE),
        &shared.policy.load().socks5_no_auth_app,
    ) {
        stream.write_all(&[VERSION, METHOD_NONE]).await?;
        admission::no_auth(shared, app, new_session_id()).map_err(Refused::Auth)?
    } else {
        stream.write_all(&[VERSION, METHOD_UNACCEPTABLE]).await?;
        return Err(Refused::NoMethod);
    };

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Refused::Malformed("request: not SOCKS version 5"));
    }
    let target = match read_target(stream, head[3]).await? {
        Some(target) => target,
        None => {
            reply(stream, Reply::AddressTypeNotSupported, None).await?;
            return Err(Refused::Command(Reply::AddressTypeNotSupported));
        }
    };
    match head[1] {
        CMD_CONNECT => Ok((client, Request::Connect(target))),
        // The address a UDP client names is where it will send from
        // (zeros when it does not know); `associate` holds it to that.
        CMD_UDP_ASSOCIATE => Ok((client, Request::UdpAssociate(target))),
        _ => {
            reply(stream, Reply::CommandNotSupported, None).await?;
            Err(Refused::Command(Reply::CommandNotSupported))
        }
    }
}

/// RFC 1929: VER ULEN UNAME PLEN PASSWD, checked by admission.
async fn authenticate(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Grant, Refused> {
    let mut ver = [0u8; 2];
    stream.read_exact(&mut ver).await?;
    if ver[0] != AUTH_VERSION {
        return Err(Refused::Malformed(
            "user/password: wrong sub-negotiation version",
        ));
    }
    let mut user = vec![0u8; usize::from(ver[1])];
    stream.read_exact(&mut user).await?;
    let mut plen = [0u8; 1];
    stream.read_exact(&mut plen).await?;
    let mut password = vec![0u8; usize::from(plen[0])];
    stream.read_exact(&mut password).await?;

    match admission::login(shared, peer, &user, &password, new_session_id) {
        Ok(grant) => {
            stream.write_all(&[AUTH_VERSION, 0]).await?;
            Ok(grant)
        }
        Err(refused) => {
            stream.write_all(&[AUTH_VERSION, 1]).await?;
            Err(Refused::Auth(refused))
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

/// Reads ATYP's address and the port; `None` for an unknown ATYP.
async fn read_target(stream: &mut TcpStream, atyp: u8) -> Result<Option<Target>, Refused> {
    let target = match atyp {
        ATYP_IPV4 => {
            let mut b = [0u8; 6];
            stream.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(),
                u16::from_be_bytes([b[4], b[5]]),
            ))
        }
        ATYP_IPV6 => {
            let mut b = [0u8; 18];
            stream.read_exact(&mut b).await?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Target::Addr(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                u16::from_be_bytes([b[16], b[17]]),
            ))
        }
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0]) + 2];
            stream.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            name.truncate(name.len() - 2);
            let name = String::from_utf8(name)
                .map_err(|_| Refused::Malformed("domain name is not UTF-8"))?;
            Target::Name(name, port)
        }
        _ => return Ok(None),
    };
    Ok(Some(target))
}

/// VER REP RSV ATYP BND.ADDR BND.PORT
async fn reply(stream: &mut TcpStream, code: Reply, bound: Option<SocketAddr>) -> io::Result<()> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut out = vec![VERSION, code as u8, 0];
    encode_addr(&mut out, bound);
    stream.write_all(&out).await
}

fn encode_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn destination_reply(e: &DestinationError) -> Reply {
    if e.is_policy() {
        Reply::NotAllowed
    } else {
        Reply::HostUnreachable
    }
}

fn connect_reply(kind: io::ErrorKind) -> Reply {
    match kind {
        io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
        io::ErrorKind::TimedOut => Reply::TtlExpired,
        io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
        _ => Reply::GeneralFailure,
    }
}

async fn connect(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    client: &Client,
    target: &Target,
    quota: QuotaGuard<u64>,
) {
    let destination = target.as_destination();
    let policy = shared.policy.load();
    let lookup = shared
        .lookups
        .permitted(&client.app, &destination, &policy.allowlist);
    let checked = tokio::select! {
        checked = lookup => checked,
        () = shared.lifecycle.force_closed() => return,
    };
    let targets = match checked {
        Ok(t) => t,
        Err(e) => {
            crate::upstream::note_destination_error(shared, &e);
            Stats::bump(&shared.stats.bindings_refused);
            shared.refusal_log.log(|| {
                tracing::info!(%peer, app = %client.app, destination = %target, reason = %e, "socks5 connect refused");
            });
            let _ = reply(&mut stream, destination_reply(&e), None).await;
            close_after_refusal(&stream).await;
            return;
        }
    };
    // The same staggered race, overall timeout and shutdown as a native
    // stream bind.
    let upstream = match connect_upstream(shared, &targets).await {
        Ok(upstream) => upstream,
        Err(e) => {
            Stats::bump(&shared.stats.bindings_refused);
            shared.refusal_log.log(|| {
                tracing::info!(%peer, app = %client.app, destination = %target, reason = %e, "socks5 connect failed");
            });
            let _ = reply(&mut stream, connect_reply(e.kind()), None).await;
            close_after_refusal(&stream).await;
            return;
        }
    };
    if reply(&mut stream, Reply::Succeeded, upstream.local_addr().ok())
        .await
        .is_err()
    {
        return;
    }
    let _active = Active::new(
        &shared.stats,
        |s| &s.tcp_sessions_active,
        Some(|s| &s.tcp_sessions_total),
    );
    // Declared after `_active`, so dropped before it: once the stats show
    // the session gone, its quota is free too.
    let _quota = quota;
    let started = Instant::now();
    let options = PumpOptions {
        buffer_len: shared.limits.relay_buffer_len as usize,
        idle_timeout: shared.limits.idle_timeout(),
        splice: shared.limits.relay_splice,
        deadline: Some(shared.session_deadline(client.session_deadline)),
    };
    let report = pump_with_totals(
        &stream,
        &upstream,
        &[],
        &options,
        shared.lifecycle.force_closed(),
        Some(LiveTotals {
            client_to_upstream: &shared.stats.tcp_bytes_up,
            upstream_to_client: &shared.stats.tcp_bytes_down,
        }),
    )
    .await;
    shared.stats.note_pump_end(&report.end);
    shared
        .timings
        .session_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        %peer,
        session = format_args!("{:016x}", client.session),
        app = %client.app,
        transport = "socks5-tcp",
        destination = %target,
        bytes_up = report.client_to_upstream,
        bytes_down = report.upstream_to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = report.end.as_str(),
        "session ended"
    );
}

/// A parsed SOCKS5 UDP request header: RSV RSV FRAG ATYP DST.ADDR DST.PORT.
fn parse_udp(datagram: &[u8]) -> Option<(u8, Target, &[u8])> {
    let (&[0, 0, frag, atyp], rest) = datagram.split_first_chunk::<4>()? else {
        return None;
    };
    let (target, payload) = match atyp {
        ATYP_IPV4 => {
            let (a, rest) = rest.split_first_chunk::<6>()?;
            (
                Target::Addr(SocketAddr::new(
                    Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(),
                    u16::from_be_bytes([a[4], a[5]]),
                )),
                rest,
            )
        }
        ATYP_IPV6 => {
            let (a, rest) = rest.split_first_chunk::<18>()?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            (
                Target::Addr(SocketAddr::new(
                    Ipv6Addr::from(ip).into(),
                    u16::from_be_bytes([a[16], a[17]]),
                )),
                rest,
            )
        }
        ATYP_DOMAIN => {
            let (&len, rest) = rest.split_first()?;
            let len = usize::from(len);
            if rest.len() < len + 2 {
                return None;
            }
            let name = std::str::from_utf8(&rest[..len]).ok()?.to_owned();
            let port = u16::from_be_bytes([rest[len], rest[len + 1]]);
            (Target::Name(name, port), &rest[len + 2..])
        }
        _ => return None,
    };
    Some((frag, target, payload))
}

/// The source a UDP association accepts datagrams from: the control
/// connection's IP, and the port the client declared in its request (RFC
/// 1928 §7), or else the port of its first datagram. A declared address that
/// is not the control connection's is refused: nothing could use it.
fn declared_source(peer: SocketAddr, declared: &Target) -> Result<Option<SocketAddr>, String> {
    let (ip, port) = match declared {
        Target::Addr(a) => (Some(a.ip()).filter(|ip| !ip.is_unspecified()), a.port()),
        // A name says nothing about where datagrams come from; its port does.
        Target::Name(_, port) => (None, *port),
    };
    if let Some(ip) = ip {
        let canonical = crate::allowlist::canonical_ip;
        if canonical(ip) != canonical(peer.ip()) {
            return Err(format!(
                "declared UDP source {ip} is not the control connection's address {}",
                peer.ip()
            ));
        }
    }
    Ok((port != 0).then(|| SocketAddr::new(peer.ip(), port)))
}

async fn associate(
    shared: &Arc<Shared>,
    mut control: TcpStream,
    peer: SocketAddr,
    client: &Client,
    declared: &Target,
    quota: QuotaGuard<u64>,
) {
    // A declared port locks the association to that one address from the
    // start, so another socket of the same host (or NAT) cannot take it by
    // sending first.
    let mut client_addr = match declared_source(peer, declared) {
        Ok(source) => source,
        Err(problem) => {
            Stats::bump(&shared.stats.bindings_refused);
            shared.refusal_log.log(|| {
                tracing::info!(%peer, app = %client.app, reason = %problem, "socks5 udp associate refused");
            });
            let _ = reply(&mut control, Reply::NotAllowed, None).await;
            close_after_refusal(&control).await;
            return;
        }
    };
    let local_ip = control
        .local_addr()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
    let sockets = async {
        let relay = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
        let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await.ok();
        io::Result::Ok((relay, v4, v6))
    };
    let (relay, up_v4, up_v6) = match sockets.await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "socks5 udp associate: cannot open sockets");
            let _ = reply(&mut control, Reply::GeneralFailure, None).await;
            return;
        }
    };
    if reply(&mut control, Reply::Succeeded, relay.local_addr().ok())
        .await
        .is_err()
    {
        return;
    }
    let _active = Active::new(
        &shared.stats,
        |s| &s.udp_bindings_active,
        Some(|s| &s.udp_bindings_total),
    );
    // Declared after `_active`, so dropped before it: once the stats show
    // the session gone, its quota is free too.
    let _quota = quota;
    let started = Instant::now();
    let idle = shared.limits.idle_timeout();
    let lifetime_end =
        tokio::time::Instant::from_std(shared.session_deadline(client.session_deadline));
    let force_closed = shared.lifecycle.force_closed();
    tokio::pin!(force_closed);

    // `client_addr` (above): the client's UDP address, its control
    // connection's IP with the declared port, or else the port learned from
    // its first datagram.
    let mut decisions: HashMap<Target, Option<SocketAddr>> = HashMap::new();
    // Name lookups run off the association's loop, so that while one is
    // pending the association still answers its timers, shutdown and the
    // end of its control connection (dropping the set aborts them).
    let mut lookups: tokio::task::JoinSet<(Target, Result<Vec<SocketAddr>, DestinationError>)> =
        tokio::task::JoinSet::new();
    let mut waiting = Waiting::default();
    let mut lookup_targets: HashMap<tokio::task::Id, Target> = HashMap::new();
    let mut contacted: HashSet<SocketAddr> = HashSet::new();
    let (mut packets_up, mut packets_down) = (0u64, 0u64);
    let mut last_activity = tokio::time::Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut down_v4 = vec![0u8; 65_536];
    let mut down_v6 = vec![0u8; 65_536];
    let mut control_byte = [0u8; 64];

    let reason = loop {
        tokio::select! {
            read = control.read(&mut control_byte) => match read {
                Ok(0) => break "control connection closed",
                Ok(_) => {} // nothing is expected on it; ignore
                Err(_) => break "control connection failed",
            },
            received = relay.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                if from.ip() != peer.ip() || client_addr.is_some_and(|c| c != from) {
                    Stats::bump(&shared.stats.udp_dropped);
                    continue;
                }
                let Some((frag, target, payload)) = parse_udp(&buf[..n]) else {
                    Stats::bump(&shared.stats.malformed);
                    continue;
                };
                if frag != 0 {
                    Stats::bump(&shared.stats.socks5_fragments_dropped);
                    continue;
                }
                client_addr = Some(from);
                last_activity = tokio::time::Instant::now();
                match decisions.get(&target) {
                    Some(Some(dest)) => {
                        packets_up += u64::from(send_up(shared, &up_v4, up_v6.as_ref(), &mut contacted, *dest, payload));
                    }
                    Some(None) => Stats::bump(&shared.stats.udp_dropped),
                    // Its lookup is running: the datagram waits for it
                    // (within a bound), and the association goes on.
                    None if waiting.contains_key(&target) => waiting.hold(&target, payload, shared),
                    None if decisions.len() + waiting.targets() >= MAX_UDP_DESTINATIONS => {
                        Stats::bump(&shared.stats.udp_dropped);
                    }
                    None => {
                        waiting.start(target.clone());
                        waiting.hold(&target, payload, shared);
                        let shared = Arc::clone(shared);
                        let app = client.app.clone();
                        let looked_up = target.clone();
                        let task = lookups.spawn(async move {
                            let checked = shared
                                .lookups
                                .permitted(&app, &looked_up.as_destination(), &shared.policy.load().allowlist)
                                .await;
                            (looked_up, checked)
                        });
                        lookup_targets.insert(task.id(), target);
                    }
                }
            }
            Some(joined) = lookups.join_next_with_id(), if !lookups.is_empty() => {
                let (target, checked) = match joined {
                    Ok((id, done)) => {
                        lookup_targets.remove(&id);
                        done
                    }
                    // The lookup task failed (a panic): what waited for it
                    // is dropped, and the name may be tried again.
                    Err(e) => {
                        if let Some(target) = lookup_targets.remove(&e.id()) {
                            let held = waiting.finish(&target);
                            Stats::add(&shared.stats.udp_dropped, held.len() as u64);
                        }
                        continue;
                    }
                };
                // Over the app's lookup budget is for now, not for good:
                // not remembered.
                let keep = !matches!(checked, Err(DestinationError::LookupsInFlight { .. } | DestinationError::LookupRate { .. }));
                let decision = match checked {
                    Ok(addrs) => addrs.first().copied(),
                    Err(e) => {
                        crate::upstream::note_destination_error(shared, &e);
                        shared.refusal_log.log(|| {
                            tracing::info!(%peer, app = %client.app, destination = %target, reason = %e, "socks5 udp destination refused");
                        });
                        None
                    }
                };
                let held = waiting.finish(&target);
                match decision {
                    Some(dest) => {
                        for payload in &held {
                            packets_up += u64::from(send_up(shared, &up_v4, up_v6.as_ref(), &mut contacted, dest, payload));
                        }
                    }
                    None => Stats::add(&shared.stats.udp_dropped, held.len() as u64),
                }
                if keep {
                    decisions.insert(target, decision);
                }
            }
            received = up_v4.recv_from(&mut down_v4) => {
                if let Ok((n, from)) = received {
                    if relay_down(shared, &relay, client_addr, &contacted, from, &down_v4[..n]) {
                        packets_down += 1;
                        last_activity = tokio::time::Instant::now();
                    }
                }
            }
            received = recv_opt(up_v6.as_ref(), &mut down_v6) => {
                if let Ok((n, from)) = received {
                    if relay_down(shared, &relay, client_addr, &contacted, from, &down_v6[..n]) {
                        packets_down += 1;
                        last_activity = tokio::time::Instant::now();
                    }
                }
            }
            () = tokio::time::sleep_until(last_activity + idle) => break "idle-timeout",
            () = tokio::time::sleep_until(lifetime_end) => break "session-lifetime",
            () = &mut force_closed => break "shutdown",
        }
    };
    // Counted with the UDP bindings (`sessions{transport="udp"}`).
    let stats = &shared.stats;
    Stats::bump(match reason {
        "idle-timeout" => &stats.udp_sessions_idle_timeout,
        "session-lifetime" => &stats.udp_sessions_lifetime,
        "shutdown" => &stats.udp_sessions_shutdown,
        _ => &stats.udp_sessions_closed,
    });
    shared
        .timings
        .session_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        %peer,
        session = format_args!("{:016x}", client.session),
        app = %client.app,
        transport = "socks5-udp",
        packets_up,
        packets_down,
        destinations = contacted.len(),
        duration_ms = started.elapsed().as_millis() as u64,
        reason,
        "session ended"
    );
}

/// Bytes of datagrams a UDP association holds while their destinations'
/// lookups run; more are dropped (counted).
const MAX_WAITING_BYTES: usize = 64 * 1024;

/// Datagrams waiting for their destination's lookup.
#[derive(Default)]
struct Waiting {
    held: HashMap<Target, Vec<Vec<u8>>>,
    bytes: usize,
}

impl Waiting {
    fn contains_key(&self, target: &Target) -> bool {
        self.held.contains_key(target)
    }

    fn targets(&self) -> usize {
        self.held.len()
    }

    /// A lookup for `target` started.
    fn start(&mut self, target: Target) {
        self.held.entry(target).or_default();
    }

    /// Keeps `payload` until `target`'s lookup ends, if within the bound.
    fn hold(&mut self, target: &Target, payload: &[u8], shared: &Shared) {
        match self.held.get_mut(target) {
            Some(queue) if self.bytes + payload.len() <= MAX_WAITING_BYTES => {
                self.bytes += payload.len();
                queue.push(payload.to_vec());
            }
            _ => Stats::bump(&shared.stats.udp_dropped),
        }
    }

    /// `target`'s lookup ended: what waited for it.
    fn finish(&mut self, target: &Target) -> Vec<Vec<u8>> {
        let held = self.held.remove(target).unwrap_or_default();
        self.bytes -= held.iter().map(Vec::len).sum::<usize>();
        held
    }
}

/// Sends a client's payload to `dest` from the upstream socket of its
/// family; returns whether it was sent.
fn send_up(
    shared: &Shared,
    up_v4: &UdpSocket,
    up_v6: Option<&UdpSocket>,
    contacted: &mut HashSet<SocketAddr>,
    dest: SocketAddr,
    payload: &[u8],
) -> bool {
    let socket = if dest.is_ipv4() { Some(up_v4) } else { up_v6 };
    let sent = socket.is_some_and(|socket| socket.try_send_to(payload, dest).is_ok());
    if sent {
        if contacted.len() < MAX_UDP_DESTINATIONS {
            contacted.insert(dest);
        }
        Stats::bump(&shared.stats.udp_packets_up);
        Stats::add(&shared.stats.udp_bytes_up, payload.len() as u64);
    }
    sent
}

async fn recv_opt(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Wraps a destination's datagram for the client; only destinations the
/// client has sent to are relayed. Returns whether it was sent.
fn relay_down(
    shared: &Shared,
    relay: &UdpSocket,
    client: Option<SocketAddr>,
    contacted: &HashSet<SocketAddr>,
    from: SocketAddr,
    payload: &[u8],
) -> bool {
    let from = SocketAddr::new(crate::allowlist::canonical_ip(from.ip()), from.port());
    let Some(client) = client.filter(|_| contacted.contains(&from)) else {
        Stats::bump(&shared.stats.udp_dropped);
        return false;
    };
    let mut out = Vec::with_capacity(payload.len() + 22);
    out.extend_from_slice(&[0, 0, 0]);
    encode_addr(&mut out, from);
    out.extend_from_slice(payload);
    if relay.try_send_to(&out, client).is_ok() {
        Stats::bump(&shared.stats.udp_packets_down);
        Stats::add(&shared.stats.udp_bytes_down, payload.len() as u64);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_hex;

    #[test]
    fn udp_headers() {
        let mut d = vec![0, 0, 0, ATYP_IPV4, 10, 0, 0, 1, 0x1f, 0x90];
        d.extend_from_slice(b"payload");
        let (frag, target, payload) = parse_udp(&d).unwrap();
        assert_eq!((frag, payload), (0, &b"payload"[..]));
        assert_eq!(target, Target::Addr("10.0.0.1:8080".parse().unwrap()));

        let mut d = vec![0, 0, 1, ATYP_DOMAIN, 9];
        d.extend_from_slice(b"localhost");
        d.extend_from_slice(&[0, 53]);
        let (frag, target, payload) = parse_udp(&d).unwrap();
        assert_eq!((frag, payload), (1, &b""[..]));
        assert_eq!(target, Target::Name("localhost".into(), 53));

        assert!(parse_udp(&[0, 0, 0]).is_none());
        assert!(parse_udp(&[0, 0, 0, ATYP_DOMAIN, 200, b'a']).is_none());
        assert!(
            parse_udp(&[1, 0, 0, ATYP_IPV4, 1, 2, 3, 4, 0, 1]).is_none(),
            "RSV must be zero"
        );
        assert!(parse_udp(&[0, 0, 0, 9]).is_none());
    }

    #[test]
    fn declared_udp_sources() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let addr = |s: &str| Target::Addr(s.parse().unwrap());
        // Zeros: the port of the first datagram will be kept.
        assert_eq!(declared_source(peer, &addr("0.0.0.0:0")), Ok(None));
        assert_eq!(declared_source(peer, &addr("[::]:0")), Ok(None));
        // A port (with or without the address): only that port of the peer.
        let pinned = Ok(Some("127.0.0.1:5000".parse().unwrap()));
        assert_eq!(declared_source(peer, &addr("0.0.0.0:5000")), pinned);
        assert_eq!(declared_source(peer, &addr("127.0.0.1:5000")), pinned);
        assert_eq!(
            declared_source(peer, &addr("[::ffff:127.0.0.1]:5000")),
            pinned
        );
        assert_eq!(
            declared_source(peer, &Target::Name("client.example".into(), 5000)),
            pinned
        );
        // Another address could never send here: refused.
        let err = declared_source(peer, &addr("10.0.0.5:5000")).unwrap_err();
        assert!(
            err.contains("10.0.0.5") && err.contains("127.0.0.1"),
            "{err}"
        );
        assert!(declared_source(peer, &addr("10.0.0.5:0")).is_err());
    }

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
