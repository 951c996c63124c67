//! SOCKS5 UDP ASSOCIATE: datagrams are accepted only from the client of the
//! control connection, fragments are dropped and counted, replies are
//! relayed only from destinations the client has sent to, and the
//! association dies with its control connection.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use cloudproxy_proto::Address;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

use super::wire::{self, Reply, Target, UdpHeader};
use super::{Client, reply};
use crate::conn::close_after_refusal;
use crate::destination::DestinationError;
use crate::quota::QuotaGuard;
use crate::shared::Shared;
use crate::stats::{Active, Stats};
use crate::upstream::note_destination_error;

/// Destinations a UDP association remembers (decisions and contacted
/// addresses); more are refused, so one client cannot grow memory without
/// bound.
const MAX_UDP_DESTINATIONS: usize = 1024;

/// A UDP ASSOCIATE that declares a source address other than its control
/// connection's: nothing could send from there to this association.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("declared UDP source {declared} is not the control connection's address {control}")]
struct ForeignSource {
    /// The address the request declared.
    declared: IpAddr,
    /// The control connection's address.
    control: IpAddr,
}

/// The source a UDP association accepts datagrams from: the control
/// connection's IP, and the port the client declared in its request (RFC
/// 1928 §7), or else the port of its first datagram. A declared address that
/// is not the control connection's is refused: nothing could use it.
fn declared_source(
    peer: SocketAddr,
    declared: &Target,
) -> Result<Option<SocketAddr>, ForeignSource> {
    let (ip, port) = match declared {
        Target::Address(Address::Ip(a)) => {
            (Some(a.ip()).filter(|ip| !ip.is_unspecified()), a.port())
        }
        // A name says nothing about where datagrams come from; its port does.
        Target::Address(Address::Domain(_, port)) | Target::Name(_, port) => (None, *port),
    };
    if let Some(ip) = ip {
        let canonical = crate::allowlist::canonical_ip;
        if canonical(ip) != canonical(peer.ip()) {
            return Err(ForeignSource {
                declared: ip,
                control: peer.ip(),
            });
        }
    }
    Ok((port != 0).then(|| SocketAddr::new(peer.ip(), port)))
}

/// UDP ASSOCIATE: the relay socket is answered in the reply, then the
/// association runs until its control connection ends, it idles out, its
/// session's lifetime ends, or shutdown.
pub(super) async fn associate(
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
                let Ok((UdpHeader { frag, destination: target }, payload)) = wire::parse_udp(&buf[..n]) else {
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
                        note_destination_error(shared, &e);
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
    wire::write_udp_header(&mut out, from);
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
    use cloudproxy_proto::DomainName;

    #[test]
    fn declared_udp_sources() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let addr = |s: &str| Target::Address(Address::Ip(s.parse().unwrap()));
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
            declared_source(
                peer,
                &Target::Address(Address::Domain(
                    DomainName::new("client.example").unwrap(),
                    5000
                ))
            ),
            pinned
        );
        // Another address could never send here: refused.
        let err = declared_source(peer, &addr("10.0.0.5:5000"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.0.0.5") && err.contains("127.0.0.1"),
            "{err}"
        );
        assert!(declared_source(peer, &addr("10.0.0.5:0")).is_err());
    }
}
