//! The TCP side of a node: the allocation service and the relay (stream mode
//! and UDP-over-TCP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cloudproxy_proto::frame::{BindMode, MAX_DATAGRAM_PAYLOAD};
use cloudproxy_proto::server::{BindRequest, Connection, Role, ServerEvent};
use cloudproxy_proto::{ErrorCode, Machine, SessionError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::admission::{
    Channel, LoginFailure, admit, bind_grant, bind_transport, is_login_failure, login_failed,
    quota_code, source_allowed,
};
use crate::conn::{
    Bounds, CLOSING_FLUSH, Cut, Next, close_stream_after_refusal, closing_flush, flush, handshake,
    next_event,
};
use crate::quota::QuotaGuard;
use crate::relay_session::{StreamSession, relay_stream};
use crate::shared::Shared;
use crate::stats::{Active, Stats};
use crate::udp_batch::{Tally, UpstreamRuns, with_batch};
use crate::upstream::{check_destination, connect_upstream, upstream_socket_failure};
use cloudproxy_transport::driver::{self, Driver};
use cloudproxy_transport::net::connected_udp;

/// A native connection's byte stream up to its session: TCP today, any
/// stream (TLS) later. Only a stream-mode session needs the TCP socket
/// itself, for the splice pump.
pub(crate) trait NativeStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> NativeStream for S {}

/// Refuses a connection from a source over its login-failure limit before
/// its request is looked at: one `Error` frame, then a close that lets the
/// frame arrive ([`close_stream_after_refusal`]), within [`CLOSING_FLUSH`]
/// and shutdown.
async fn refuse_limited_source<S: NativeStream>(
    shared: &Shared,
    stream: &mut S,
    peer: SocketAddr,
) -> bool {
    if source_allowed(shared, Channel::Tcp, peer) {
        return false;
    }
    shared.refusal_log.log(|| {
        tracing::info!(%peer, app = %"-", reason = %"the source is over the login-failure limit", "connection refused");
    });
    let frame =
        cloudproxy_proto::frame::Frame::Error(cloudproxy_proto::frame::ErrorFrame::with_message(
            ErrorCode::SERVER_BUSY,
            "too many failed logins from this address; retry later",
        ));
    let refuse = async {
        if tokio::time::timeout(CLOSING_FLUSH, stream.write_all(&frame.to_bytes()))
            .await
            .is_ok_and(|written| written.is_ok())
        {
            close_stream_after_refusal(stream).await;
        }
    };
    tokio::select! {
        () = refuse => {}
        () = shared.lifecycle.force_closed() => {}
    }
    true
}

/// Logs why a native connection ended before it became a session (failed
/// login, malformed input, timeout), within the node's log budget, and
/// counts a failed login against its source.
fn note_refusal(shared: &Shared, conn: &Connection, peer: SocketAddr, reason: &SessionError) {
    let failed_login = match reason {
        SessionError::Rejected { code } => LoginFailure::from_code(*code),
        _ => None,
    };
    if let Some(why) = failed_login {
        login_failed(shared, Channel::Tcp, peer, why);
    }
    let failed_login = failed_login.is_some();
    let app = conn.claimed_app().map_or("-", |a| a.as_str());
    let what = if conn.role() == Role::Allocation {
        "allocation"
    } else {
        "bind"
    };
    let log = match reason {
        SessionError::Protocol(_) | SessionError::UnexpectedFrame { .. } => Some(true),
        SessionError::Rejected { .. } | SessionError::Timeout { .. } => Some(false),
        // A client that closed or said `Close` is no refusal.
        _ => None,
    };
    let Some(malformed) = log else { return };
    shared.refusal_log.log(|| {
        if malformed {
            tracing::warn!(%peer, app = %app, %reason, "{what} connection closed: malformed input");
        } else if failed_login {
            tracing::warn!(%peer, app = %app, %reason, "{what} refused: failed login");
        } else {
            tracing::info!(%peer, app = %app, %reason, "{what} refused");
        }
    });
}

/// One connection on an allocation port: `AllocateRequest` or `Refresh` in,
/// `AllocateOk` or `Error` out, then close. `accepted` starts the handshake
/// deadline; `transport` (`tcp`, `tls`) is for the log.
pub(crate) async fn allocation<S: NativeStream>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    accepted: Instant,
    transport: &'static str,
) {
    if refuse_limited_source(&shared, &mut stream, peer).await {
        return;
    }
    let conn = Connection::new(Arc::clone(&shared.proto), Role::Allocation, accepted);
    let bounds = handshake_bounds(&shared, &conn);
    let mut driver = handshake(conn, stream);
    let mut requested = None;
    loop {
        match next_event(&mut driver, &bounds).await {
            Next::Event(ServerEvent::AllocationRequested(request)) => {
                requested = Some(Instant::now());
                let room = if request.refresh {
                    Ok(())
                } else {
                    shared.quotas.has_room(request.app_id.as_str())
                };
                match room {
                    Ok(()) => {
                        // Only fails when nothing is pending, which the event rules out.
                        let _ = driver.machine_mut().accept_allocation(Instant::now());
                    }
                    Err(e) => {
                        shared.stats.note_quota(&e);
                        driver.machine_mut().reject(
                            Instant::now(),
                            quota_code(&e),
                            Some(&e.to_string()),
                        );
                    }
                }
            }
            Next::Event(ServerEvent::Allocated { session_id, app_id }) => {
                Stats::bump(&shared.stats.allocations);
                if let Some(requested) = requested {
                    shared
                        .timings
                        .allocation_latency
                        .observe(requested.elapsed().as_secs_f64());
                }
                tracing::info!(%peer, session = format_args!("{session_id:016x}"), app = %app_id, transport, "allocated");
            }
            Next::Event(ServerEvent::Closed(reason)) => {
                note_close(&shared.stats, &reason, true);
                note_refusal(&shared, driver.machine(), peer, &reason);
                closing_flush(&mut driver, &bounds).await;
                break;
            }
            Next::Event(other) => {
                tracing::debug!(%peer, event = event_name(&other), "unexpected event on an allocation connection");
                break;
            }
            Next::PeerClosed => break,
            Next::Io(e) => {
                tracing::debug!(%peer, error = %e, "allocation connection failed");
                break;
            }
            Next::Cut(cut) => {
                note_cut(&shared, peer, cut);
                break;
            }
        }
    }
}

/// One connection on the relay port.
pub(crate) async fn relay(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Boxed: the handshake's state (its read buffer, the state machine, the
    // connect) lives on the heap only while it runs, so an idle session's
    // task holds just what the session itself needs.
    let Some((stream, bound)) = Box::pin(bind(&shared, stream, peer, Instant::now())).await else {
        return;
    };
    match bound {
        Bound::Stream {
            upstream,
            early,
            request,
            quota,
        } => {
            let session = StreamSession {
                peer,
                session: request.session_id,
                app: request.app_id.as_str(),
                transport: "tcp",
                destination: &request.destination,
                deadline: request.session_deadline,
            };
            relay_stream(&shared, &stream, &upstream, &early, &session, quota).await;
        }
        Bound::Datagram {
            upstream,
            conn,
            request,
            quota,
        } => {
            let session = DatagramSession {
                peer,
                request: &request,
                transport: "udp-over-tcp",
            };
            datagram_session(&shared, stream, *conn, &upstream, &session, quota).await;
        }
    }
}

/// An accepted bind, ready for its session.
pub(crate) enum Bound {
    Stream {
        upstream: TcpStream,
        /// Client bytes that followed the `Bind`, for the destination.
        early: Vec<u8>,
        request: BindRequest,
        quota: QuotaGuard<u64>,
    },
    Datagram {
        upstream: UdpSocket,
        /// Boxed: the stream variant, the common one, then stays small.
        conn: Box<Connection>,
        request: BindRequest,
        quota: QuotaGuard<u64>,
    },
}

/// Runs the relay handshake until a bind is accepted (and `BindOk` sent), or
/// the connection ends; refusals are answered here. Returns the stream with
/// the accepted bind: every byte read past the `Bind` is in the bind's
/// early data (stream mode) or still in its connection (datagram mode).
/// `accepted` starts the handshake deadline.
pub(crate) async fn bind<S: NativeStream>(
    shared: &Shared,
    mut stream: S,
    peer: SocketAddr,
    accepted: Instant,
) -> Option<(S, Bound)> {
    if refuse_limited_source(shared, &mut stream, peer).await {
        return None;
    }
    let conn = Connection::new(Arc::clone(&shared.proto), Role::Relay, accepted);
    let bounds = handshake_bounds(shared, &conn);
    let mut driver = handshake(conn, stream);
    loop {
        match next_event(&mut driver, &bounds).await {
            Next::Event(ServerEvent::BindRequested(request)) => {
                // The checks and the connect are pre-session work too.
                let prepared = bounds
                    .run(prepare(shared, &request))
                    .await
                    .unwrap_or_else(|cut| Err(cut_refusal(shared, cut)));
                match prepared {
                    Ok(upstream) => {
                        let conn = driver.machine_mut();
                        let _ = conn.accept_bind(Instant::now());
                        let early = match conn.poll_event() {
                            Some(ServerEvent::Bound { early_data, .. }) => early_data,
                            _ => bytes::Bytes::new(),
                        };
                        if let Err(next) = flush(&mut driver, &bounds).await {
                            if let Next::Cut(cut) = next {
                                note_cut(shared, peer, cut);
                            }
                            return None;
                        }
                        let (conn, stream) = driver.into_parts();
                        return Some((
                            stream,
                            match upstream {
                                Upstream::Stream(upstream, quota) => Bound::Stream {
                                    upstream,
                                    // A copy of just these bytes: the read buffer
                                    // behind `early` goes with the handshake.
                                    early: early.to_vec(),
                                    request,
                                    quota,
                                },
                                Upstream::Datagram(upstream, quota) => Bound::Datagram {
                                    upstream,
                                    conn: Box::new(conn),
                                    request,
                                    quota,
                                },
                            },
                        ));
                    }
                    Err((code, message)) => {
                        shared.refusal_log.log(|| {
                            tracing::info!(%peer, session = format_args!("{:016x}", request.session_id), app = %request.app_id, destination = %request.destination, reason = %code, %message, "bind refused");
                        });
                        driver
                            .machine_mut()
                            .reject(Instant::now(), code, Some(&message));
                    }
                }
            }
            Next::Event(ServerEvent::Closed(reason)) => {
                note_close(&shared.stats, &reason, false);
                // Our own refusals (quota, destination) were logged above.
                if !matches!(reason, SessionError::Rejected { .. }) || is_login_failure(&reason) {
                    note_refusal(shared, driver.machine(), peer, &reason);
                }
                closing_flush(&mut driver, &bounds).await;
                return None;
            }
            Next::Event(other) => {
                tracing::debug!(%peer, event = event_name(&other), "unexpected event before bind");
                return None;
            }
            Next::PeerClosed => return None,
            Next::Io(e) => {
                tracing::debug!(%peer, error = %e, "relay connection failed before bind");
                return None;
            }
            Next::Cut(cut) => {
                note_cut(shared, peer, cut);
                return None;
            }
        }
    }
}

/// The bounds on a connection's pre-session work: its handshake deadline
/// and shutdown.
fn handshake_bounds(shared: &Shared, conn: &Connection) -> Bounds {
    let deadline = conn
        .poll_timeout()
        .unwrap_or_else(|| Instant::now() + shared.limits.handshake_timeout());
    Bounds::new(deadline, &shared.lifecycle)
}

/// The refusal for a bind whose checks or connect were cut short.
fn cut_refusal(shared: &Shared, cut: Cut) -> (ErrorCode, String) {
    let code = match cut {
        Cut::Deadline => ErrorCode::HANDSHAKE_TIMEOUT,
        Cut::Shutdown => {
            Stats::bump(&shared.stats.server_busy_refused);
            ErrorCode::SERVER_BUSY
        }
    };
    (code, cut.as_str().to_owned())
}

/// Counts and logs (at debug) a connection cut short before its session.
fn note_cut(shared: &Shared, peer: SocketAddr, cut: Cut) {
    if cut == Cut::Deadline {
        Stats::bump(&shared.stats.handshake_timeouts);
    }
    tracing::debug!(%peer, reason = cut.as_str(), "connection closed before its session");
}

enum Upstream {
    Stream(TcpStream, QuotaGuard<u64>),
    Datagram(UdpSocket, QuotaGuard<u64>),
}

/// The checks and the connect behind a bind: admission (transport, session
/// deadline, quota), then the destination (its name lookups count against
/// an app already within its quota), then the relay's own socket to it.
async fn prepare(shared: &Shared, request: &BindRequest) -> Result<Upstream, (ErrorCode, String)> {
    let needed = bind_transport(request.mode, request.path);
    let admitted = admit(shared, &bind_grant(request), needed, 1)?;
    let quota = admitted.quota;
    let targets = check_destination(shared, request.app_id.as_str(), &request.destination).await?;
    match request.mode {
        BindMode::Stream => {
            let up = connect_upstream(shared, &targets).await.map_err(|e| {
                tracing::debug!(destination = %request.destination, error = %e, "upstream connect failed");
                (ErrorCode::DESTINATION_UNREACHABLE, e.client_message().to_owned())
            })?;
            Ok(Upstream::Stream(up, quota))
        }
        BindMode::Datagram => {
            let target = targets[0];
            let up = connected_udp(target)
                .await
                .map_err(|e| upstream_socket_failure(&e, target))?;
            Ok(Upstream::Datagram(up, quota))
        }
    }
}

/// Who a datagram-mode session belongs to, for its log line.
#[derive(Clone, Copy)]
pub(crate) struct DatagramSession<'a> {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The accepted bind.
    pub(crate) request: &'a BindRequest,
    /// The log's `transport` field: `udp-over-tcp` or `udp-over-tls`.
    pub(crate) transport: &'static str,
}

/// UDP-over-TCP: `Datagram` frames from the client go to the destination as
/// UDP datagrams, and the destination's datagrams come back as frames.
///
/// Every wait — the client's reads and writes and the connection's idle
/// and lifetime timers (all in the driver), the destination, the forced
/// close on shutdown — is one arm of the same `select!`: a client that
/// stops reading holds no write open past any of them. What the client is
/// sent is bounded by the connection itself: the driver takes at most
/// 64 KiB ahead of the socket, and once another
/// `max_queued_bytes` (64 KiB) wait in the connection — answers to its
/// pings included — the connection decodes and reads no more of the
/// client (so its idle timer runs out: `NotReading`) and refuses the
/// destination's datagrams, which are dropped and counted.
pub(crate) async fn datagram_session<S: NativeStream>(
    shared: &Shared,
    client: S,
    conn: Connection,
    upstream: &UdpSocket,
    session: &DatagramSession<'_>,
    quota: QuotaGuard<u64>,
) {
    let DatagramSession {
        peer,
        request,
        transport,
    } = *session;
    let _active = Active::new(
        &shared.stats,
        |s| &s.tcp_sessions_active,
        Some(|s| &s.tcp_sessions_total),
    );
    // Declared after `_active`, so dropped before it: once the stats show
    // the session gone, its quota is free too.
    let _quota = quota;
    let started = Instant::now();
    Stats::bump(&shared.stats.media_fallbacks);
    let (mut packets_up, mut packets_down, mut bytes_up, mut bytes_down) = (0u64, 0u64, 0u64, 0u64);
    let force_closed = shared.lifecycle.force_closed();
    tokio::pin!(force_closed);
    let mut datagram = vec![0u8; MAX_DATAGRAM_PAYLOAD + 1];
    // Connected when the bind was prepared; unknown only if the socket broke.
    let destination = upstream.peer_addr().ok();
    let mut driver = Driver::new(conn, client);
    let reason: String = loop {
        let closed = tokio::select! {
            next = driver.next_event() => match next {
                driver::Next::Event(ServerEvent::Datagram(first)) => {
                    // Every datagram the same read brought goes up now, in
                    // GSO runs: one system call per run, not per datagram.
                    let (tally, closed) = with_batch(|batch| {
                        let Some(destination) = destination else {
                            return (Tally { dropped: 1, ..Tally::default() }, None);
                        };
                        let mut runs = UpstreamRuns::new(upstream, destination, &mut batch.gather);
                        runs.push(&first);
                        let mut closed = None;
                        while let Some(event) = driver.machine_mut().poll_event() {
                            match event {
                                ServerEvent::Datagram(payload) => runs.push(&payload),
                                ServerEvent::Closed(reason) => {
                                    closed = Some(reason);
                                    break;
                                }
                                _ => {}
                            }
                        }
                        (runs.finish(), closed)
                    });
                    packets_up += tally.packets;
                    bytes_up += tally.bytes;
                    Stats::add(&shared.stats.udp_packets_up, tally.packets);
                    Stats::add(&shared.stats.udp_bytes_up, tally.bytes);
                    Stats::add(&shared.stats.udp_dropped, tally.dropped);
                    closed
                }
                driver::Next::Event(ServerEvent::Closed(reason)) => Some(reason),
                driver::Next::Event(_) => None,
                driver::Next::PeerClosed => {
                    shared
                        .stats
                        .note_datagram_session_end(Some(&SessionError::ClosedByPeer));
                    break "client closed".into();
                }
                driver::Next::Io(e) => {
                    shared.stats.note_datagram_session_end(None);
                    break format!("client connection failed: {e}");
                }
            },
            received = upstream.recv(&mut datagram) => {
                match received {
                    // Refused while the client is not keeping up (UDP may
                    // drop): counted below.
                    Ok(n) if n <= MAX_DATAGRAM_PAYLOAD
                        && driver.machine_mut().send_datagram(Instant::now(), &datagram[..n]).is_ok() =>
                    {
                        packets_down += 1;
                        bytes_down += n as u64;
                        Stats::bump(&shared.stats.udp_packets_down);
                        Stats::add(&shared.stats.udp_bytes_down, n as u64);
                    }
                    // Too large for a Datagram frame, refused, or an ICMP
                    // error surfacing: count it and go on.
                    Ok(_) | Err(_) => Stats::bump(&shared.stats.udp_dropped),
                }
                None
            }
            () = &mut force_closed => {
                // Shutdown: a Close if the socket takes it now, no waiting
                // (a zero timeout still polls the flush once).
                driver.machine_mut().close();
                let _ = tokio::time::timeout(std::time::Duration::ZERO, driver.flush()).await;
                shared
                    .stats
                    .note_datagram_session_end(Some(&SessionError::ClosedLocally));
                break "shutdown".into();
            }
        };
        if let Some(reason) = closed {
            // The closing frame gets a short, bounded chance to leave;
            // shutdown cuts even that short.
            tokio::select! {
                _ = tokio::time::timeout(CLOSING_FLUSH, driver.flush()) => {}
                () = &mut force_closed => {}
            }
            shared.stats.note_datagram_session_end(Some(&reason));
            break reason.to_string();
        }
    };
    shared
        .timings
        .session_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        %peer,
        session = format_args!("{:016x}", request.session_id),
        app = %request.app_id,
        transport,
        destination = %request.destination,
        packets_up,
        packets_down,
        bytes_up,
        bytes_down,
        duration_ms = started.elapsed().as_millis() as u64,
        %reason,
        "session ended"
    );
}

/// Counts how a connection that never became a session ended. Every refusal
/// — the state machine's (bad credential, bad ticket) and ours (quota,
/// destination) — arrives here as `Rejected`, so each is counted once.
fn note_close(stats: &Stats, reason: &SessionError, allocation: bool) {
    match reason {
        SessionError::Timeout {
            which: "handshake", ..
        } => Stats::bump(&stats.handshake_timeouts),
        SessionError::Protocol(_) | SessionError::UnexpectedFrame { .. } => {
            Stats::bump(&stats.malformed)
        }
        SessionError::Rejected { code } if allocation => {
            Stats::bump(&stats.allocations_refused);
            stats.note_refusal_code(*code);
        }
        SessionError::Rejected { code } => {
            Stats::bump(&stats.bindings_refused);
            stats.note_refusal_code(*code);
        }
        _ => {}
    }
}

/// A server event's name, for logs (its fields may be large or secret).
fn event_name(event: &ServerEvent) -> &'static str {
    match event {
        ServerEvent::AllocationRequested(_) => "allocation requested",
        ServerEvent::Allocated { .. } => "allocated",
        ServerEvent::BindRequested(_) => "bind requested",
        ServerEvent::Bound { .. } => "bound",
        ServerEvent::Datagram(_) => "datagram",
        ServerEvent::Closed(_) => "closed",
        _ => "other",
    }
}
