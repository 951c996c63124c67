//! The UDP side of a node: allocation requests, and the media relay.
//!
//! Each relay socket owns its own binding table ([`UdpRelay`]) and one task
//! that runs both directions for all its bindings: a client binds on one
//! socket and stays there, so the hot path takes no lock. Every binding has
//! its own upstream socket, connected to the destination, so the
//! destination's answers identify the binding by the socket they arrive on,
//! and nobody but the destination can send through it.
//!
//! Client → destination: the relay socket is read in batches (`recvmmsg`,
//! and GRO where the kernel has it, through quinn-udp); consecutive payloads
//! of one binding leave in one GSO send. Destination → client: a binding
//! holds no task, no buffer and no tokio registration. Its upstream socket
//! is a plain non-blocking socket in the relay socket's own mio `Poll` (an
//! epoll set keyed by binding id), which tokio watches as one file
//! descriptor; the relay task asks that set which bindings are readable,
//! reads them, prepends each one's header and sends from the relay socket.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cloudproxy_proto::frame::MAX_DATAGRAM_PAYLOAD;
use cloudproxy_proto::server::{
    BindRequest, BindRequestId, DropReason, SliceInput, UdpAllocation, UdpRelay, UdpRelayEvent,
};
use cloudproxy_proto::udp::{DatagramClass, UDP_HEADER_LEN, classify};
use cloudproxy_proto::{ErrorCode, SessionError};
use quinn_udp::{UdpSockRef, UdpSocketState};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::admission::{
    Channel, LoginFailure, admit, bind_grant, bind_transport, login_failed, quota_code,
    source_allowed,
};
use crate::quota::QuotaGuard;
use crate::shared::Shared;
use crate::stats::{Active, Stats};
use crate::udp_batch::{BATCH, GSO_MAX_BYTES, with_batch};
use crate::upstream::{check_destination, upstream_socket_failure};
use cloudproxy_transport::net::{any_local_for, sleep_until_opt};
use upstreams::{Registrar, upstream_set};

mod upstreams;

/// Largest datagram read from any socket; bigger ones are truncated by the
/// kernel and then dropped as oversized.
const RECV_BUF: usize = 64 * 1024;

/// One allocation UDP port: requests in, answers out, never more bytes out
/// than came in.
pub(crate) async fn allocation(shared: Arc<Shared>, socket: UdpSocket) {
    let stop = shared.lifecycle.stopped_accepting();
    tokio::pin!(stop);
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = tokio::select! {
            () = &mut stop => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                // ICMP errors from earlier replies surface here; not fatal.
                Err(_) => continue,
            },
        };
        // A source over its login-failure limit gets nothing (not even an
        // error: no reply to an unauthenticated source is safest).
        if !source_allowed(&shared, Channel::Udp, from) {
            continue;
        }
        let received = Instant::now();
        let reply = match shared.proto.handle_allocation_datagram(received, &buf[..n]) {
            UdpAllocation::Drop => {
                Stats::bump(&shared.stats.malformed);
                shared.refusal_log.log(|| {
                    tracing::warn!(peer = %from, app = %"-", reason = %"not an allocation request", bytes = n, "allocation datagram dropped: malformed input");
                });
                None
            }
            UdpAllocation::Reply(bytes) => {
                Stats::bump(&shared.stats.allocations_refused);
                note_udp_refusal(&shared, from, &buf[..n], &bytes);
                Some(bytes)
            }
            UdpAllocation::Pending(pending) => {
                let room = if pending.request.refresh {
                    Ok(())
                } else {
                    shared.quotas.has_room(pending.request.app_id.as_str())
                };
                match room {
                    Ok(()) => {
                        Stats::bump(&shared.stats.allocations);
                        tracing::info!(%from, session = format_args!("{:016x}", pending.request.session_id), app = %pending.request.app_id, transport = "udp", "allocated");
                        let reply = pending.accept();
                        shared
                            .timings
                            .allocation_latency
                            .observe(received.elapsed().as_secs_f64());
                        Some(reply)
                    }
                    Err(e) => {
                        Stats::bump(&shared.stats.allocations_refused);
                        shared.stats.note_quota(&e);
                        shared.refusal_log.log(|| {
                            tracing::info!(peer = %from, app = %pending.request.app_id, reason = %e, "allocation refused");
                        });
                        pending.reject(quota_code(&e), Some(&e.to_string()))
                    }
                }
            }
            _ => None,
        };
        if let Some(reply) = reply {
            debug_assert!(reply.len() <= n, "no amplification");
            let _ = socket.try_send_to(&reply, from);
        }
    }
}

/// Logs a refused allocation datagram (within the node's log budget) and
/// counts a failed login against its source.
fn note_udp_refusal(shared: &Shared, from: SocketAddr, request: &[u8], reply: &[u8]) {
    use cloudproxy_proto::frame::Frame;
    let code = match Frame::parse(reply) {
        Ok(Frame::Error(e)) => e.code,
        _ => ErrorCode::INTERNAL,
    };
    shared.stats.note_refusal_code(code);
    let failed_login = LoginFailure::from_code(code);
    if let Some(why) = failed_login {
        login_failed(shared, Channel::Udp, from, why);
    }
    let failed_login = failed_login.is_some();
    shared.refusal_log.log(|| {
        let app = match Frame::parse(request) {
            Ok(Frame::AllocateRequest(r)) => r.app_id.as_str().to_owned(),
            _ => "-".to_owned(),
        };
        if failed_login {
            tracing::warn!(peer = %from, app = %app, reason = %code, "allocation refused: failed login");
        } else {
            tracing::info!(peer = %from, app = %app, reason = %code, "allocation refused");
        }
    });
}

/// The outcome of checking a bind off the socket's task (DNS may be slow).
struct Decision {
    id: BindRequestId,
    outcome: Result<Setup, (ErrorCode, String)>,
}

/// What a binding needs once accepted.
struct Setup {
    request: BindRequest,
    upstream: mio::net::UdpSocket,
    /// The address `upstream` is connected to (GSO sends name it).
    target: SocketAddr,
    quota: QuotaGuard<u64>,
}

/// A live binding's I/O. Its client address and header live in the table.
struct BindingIo {
    request: BindRequest,
    /// Registered in the relay's mio `Poll` with the binding id as token.
    upstream: mio::net::UdpSocket,
    target: SocketAddr,
    started: Instant,
    packets_up: u64,
    bytes_up: u64,
    packets_down: u64,
    bytes_down: u64,
    _quota: QuotaGuard<u64>,
    _active: Active,
}

/// `recvmmsg` calls per wake-up of the relay socket before the task looks at
/// its timers, bind decisions and destinations' answers again.
const RECV_ROUNDS: usize = 4;

/// Datagrams read from one destination per turn before the next binding's.
const DOWN_BATCH: usize = 64;

/// Kernel receive buffer asked for on each relay socket (the kernel caps it
/// at `net.core.rmem_max`): absorbs bursts while the task is not running.
const RELAY_SOCKET_BUFFER: usize = 4 << 20;

/// Consecutive payloads of one binding waiting to leave in one GSO send:
/// all `segment` bytes long but the last, which may be shorter.
#[derive(Default)]
struct Run {
    binding_id: u32,
    segment: usize,
    count: usize,
    /// A shorter segment was added: it must be the last.
    closed: bool,
}

/// One relay socket's state, owned by its task.
struct Relay {
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    state: UdpSocketState,
    table: UdpRelay,
    bindings: HashMap<u32, Box<BindingIo>>,
    /// Where bindings' upstream sockets are registered (the `Poll` itself
    /// is watched by the task's loop).
    registry: Registrar,
    /// Bindings whose last turn ended with datagrams maybe left unread
    /// (the `Poll` is edge-triggered: it will not report them again).
    unfinished: Vec<u32>,
}

impl Relay {
    /// Client → destination: reads the relay socket in batches until it is
    /// empty or `RECV_ROUNDS` reads were made.
    fn read_clients(&mut self) {
        with_batch(|batch| {
            for _ in 0..RECV_ROUNDS {
                let n = match batch.recv(&self.state, &self.socket) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    // ICMP errors from earlier replies surface here; not fatal.
                    Err(_) => continue,
                };
                let now = Instant::now();
                let mut run = Run::default();
                batch.for_each(n, |from, datagram, gather| {
                    self.client_datagram(now, from, datagram, &mut run, gather);
                });
                self.flush(&mut run, &mut batch.gather);
                if n < BATCH {
                    // The queue is drained; the next read would say so.
                    return;
                }
            }
        });
    }

    fn client_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        run: &mut Run,
        gather: &mut Vec<u8>,
    ) {
        let stats = &self.shared.stats;
        // A control datagram (a `Bind`) from a source over its login-failure
        // limit is dropped unread; data datagrams never take the lock.
        if classify(datagram) == DatagramClass::Control
            && !source_allowed(&self.shared, Channel::Udp, from)
        {
            return;
        }
        match self.table.handle_slice(now, from, datagram) {
            SliceInput::Forward {
                binding_id,
                payload_start,
            } => self.gather(binding_id, &datagram[payload_start..], run, gather),
            SliceInput::Dropped(DropReason::Malformed) => {
                Stats::bump(&stats.malformed);
                self.shared.refusal_log.log(|| {
                    tracing::warn!(peer = %from, app = %"-", reason = %"not a relay datagram", bytes = datagram.len(), "relay datagram dropped: malformed input");
                });
            }
            SliceInput::Dropped(_) => Stats::bump(&stats.udp_dropped),
            _ => {}
        }
    }

    /// Adds a payload for `binding_id` to the pending GSO run, sending the
    /// run first when the payload cannot join it.
    fn gather(&mut self, binding_id: u32, payload: &[u8], run: &mut Run, gather: &mut Vec<u8>) {
        let len = payload.len();
        let fits = run.binding_id == binding_id
            && !run.closed
            && len > 0
            && len <= run.segment
            && run.count < self.state.max_gso_segments()
            && gather.len() + len <= GSO_MAX_BYTES;
        if run.count > 0 && !fits {
            self.flush(run, gather);
        }
        if run.count == 0 {
            *run = Run {
                binding_id,
                segment: len,
                count: 0,
                closed: false,
            };
        }
        gather.extend_from_slice(payload);
        run.count += 1;
        // A segment shorter than the first ends the run; an empty payload
        // would vanish inside a GSO send, so it always goes alone.
        run.closed = len < run.segment || len == 0;
    }

    /// Sends the pending run upstream: one `send` for one payload, one GSO
    /// `sendmsg` for several.
    fn flush(&mut self, run: &mut Run, gather: &mut Vec<u8>) {
        let count = std::mem::take(&mut run.count) as u64;
        if count == 0 {
            return;
        }
        let stats = &self.shared.stats;
        let sent = self.bindings.get_mut(&run.binding_id).is_some_and(|io| {
            let result = if count == 1 {
                io.upstream.send(gather).map(|_| ())
            } else {
                self.state.try_send(
                    UdpSockRef::from(&io.upstream),
                    &quinn_udp::Transmit {
                        destination: io.target,
                        ecn: None,
                        contents: gather,
                        segment_size: Some(run.segment),
                        src_ip: None,
                    },
                )
            };
            if result.is_ok() {
                io.packets_up += count;
                io.bytes_up += gather.len() as u64;
            }
            result.is_ok()
        });
        if sent {
            Stats::add(&stats.udp_packets_up, count);
            Stats::add(&stats.udp_bytes_up, gather.len() as u64);
        } else {
            Stats::add(&stats.udp_dropped, count);
        }
        gather.clear();
    }

    /// Destination → client for the bindings reported readable.
    fn read_destinations(&mut self, ready: impl Iterator<Item = u32>) {
        for binding_id in ready {
            self.read_destination(binding_id);
        }
    }

    /// Another turn for the bindings whose last turn did not finish.
    fn read_unfinished(&mut self) {
        let ids = std::mem::take(&mut self.unfinished);
        for id in ids {
            self.read_destination(id);
        }
    }

    /// Reads up to `DOWN_BATCH` datagrams from one binding's destination and
    /// sends each, behind the binding's header, to its client; if the socket
    /// may hold more, the binding gets another turn after the others.
    fn read_destination(&mut self, binding_id: u32) {
        let Some(io) = self.bindings.get_mut(&binding_id) else {
            // Closed meanwhile (its event was already taken).
            return;
        };
        let stats = &self.shared.stats;
        let (mut packets, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
        let finished = with_batch(|batch| {
            let buf = &mut batch.down;
            let mut header = &mut buf[..UDP_HEADER_LEN];
            let Some(client) = self.table.encapsulate(binding_id, &[], &mut header) else {
                return true;
            };
            for _ in 0..DOWN_BATCH {
                match io.upstream.recv(&mut buf[UDP_HEADER_LEN..]) {
                    Ok(n) if n <= MAX_DATAGRAM_PAYLOAD => {
                        match self.socket.try_send_to(&buf[..UDP_HEADER_LEN + n], client) {
                            Ok(_) => {
                                packets += 1;
                                bytes += n as u64;
                            }
                            Err(_) => dropped += 1,
                        }
                    }
                    // Longer than a relay datagram may carry (the buffer
                    // holds one byte more, so a longer one reads as that).
                    Ok(_) => dropped += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    // An ICMP error for an earlier send: not fatal.
                    Err(_) => dropped += 1,
                }
            }
            false
        });
        io.packets_down += packets;
        io.bytes_down += bytes;
        Stats::add(&stats.udp_packets_down, packets);
        Stats::add(&stats.udp_bytes_down, bytes);
        Stats::add(&stats.udp_dropped, dropped);
        if !finished {
            self.unfinished.push(binding_id);
        }
    }

    /// Sends what the table wants sent, and applies its events; returns how
    /// many bind checks were started off the task.
    fn apply(&mut self, decide_tx: &mpsc::UnboundedSender<Decision>, stopping: bool) -> usize {
        let mut checking = 0;
        while let Some(event) = self.table.poll_event() {
            checking += usize::from(self.handle_event(decide_tx, stopping, event));
        }
        while let Some(transmit) = self.table.poll_transmit() {
            let _ = self
                .socket
                .try_send_to(&transmit.contents, transmit.destination);
        }
        checking
    }

    /// Applies one table event; returns true when a bind check was started
    /// off the task.
    fn handle_event(
        &mut self,
        decide_tx: &mpsc::UnboundedSender<Decision>,
        stopping: bool,
        event: UdpRelayEvent,
    ) -> bool {
        match event {
            UdpRelayEvent::BindRequested {
                id,
                request,
                client,
            } => {
                if stopping {
                    Stats::bump(&self.shared.stats.bindings_refused);
                    Stats::bump(&self.shared.stats.server_busy_refused);
                    self.table.reject_bind(
                        id,
                        ErrorCode::SERVER_BUSY,
                        Some("the relay is shutting down"),
                    );
                    return false;
                }
                let shared = Arc::clone(&self.shared);
                let decide_tx = decide_tx.clone();
                tokio::spawn(async move {
                    let app = request.app_id.clone();
                    let outcome = check_bind(&shared, request).await;
                    if let Err((code, message)) = &outcome {
                        shared.refusal_log.log(|| {
                            tracing::info!(peer = %client, app = %app, reason = %code, %message, "udp bind refused");
                        });
                    }
                    let _ = decide_tx.send(Decision { id, outcome });
                });
                return true;
            }
            UdpRelayEvent::Rebound {
                binding_id,
                old,
                new,
            } => {
                // Nothing to move: answers go to the table's current address.
                if let Some(io) = self.bindings.get(&binding_id) {
                    tracing::info!(session = format_args!("{:016x}", io.request.session_id), %old, %new, "udp binding moved to a new client address");
                }
            }
            UdpRelayEvent::Refused { client, code } => {
                Stats::bump(&self.shared.stats.bindings_refused);
                // A control datagram that did not parse.
                if matches!(
                    code,
                    ErrorCode::MALFORMED_FRAME | ErrorCode::UNSUPPORTED_VERSION
                ) {
                    Stats::bump(&self.shared.stats.malformed);
                }
                self.shared.stats.note_refusal_code(code);
                let failed_login = LoginFailure::from_code(code);
                if let Some(why) = failed_login {
                    login_failed(&self.shared, Channel::Udp, client, why);
                }
                let failed_login = failed_login.is_some();
                // Refused before its ticket could be read: no app to name.
                self.shared.refusal_log.log(|| {
                    if failed_login {
                        tracing::warn!(peer = %client, app = %"-", reason = %code, "udp bind refused: failed login");
                    } else {
                        tracing::info!(peer = %client, app = %"-", reason = %code, "udp bind refused");
                    }
                });
            }
            UdpRelayEvent::BindingClosed { binding_id, reason } => {
                if let Some(mut io) = self.bindings.remove(&binding_id) {
                    // Closing the socket would also take it out of the set.
                    let _ = self.registry.deregister(&mut io.upstream);
                    end_binding(&self.shared, &io, &reason);
                }
            }
            _ => {}
        }
        false
    }

    /// A bind check came back.
    fn decided(&mut self, decision: Decision, stopping: bool) {
        match decision.outcome {
            Ok(setup) if !stopping => {
                // Fails only if the pending bind expired meanwhile;
                // dropping the setup then releases its quota.
                if let Ok(binding_id) = self.table.accept_bind(Instant::now(), decision.id) {
                    self.start_binding(binding_id, setup);
                }
            }
            Ok(_) => {
                Stats::bump(&self.shared.stats.bindings_refused);
                Stats::bump(&self.shared.stats.server_busy_refused);
                self.table.reject_bind(
                    decision.id,
                    ErrorCode::SERVER_BUSY,
                    Some("the relay is shutting down"),
                );
            }
            Err((code, message)) => {
                Stats::bump(&self.shared.stats.bindings_refused);
                self.shared.stats.note_refusal_code(code);
                self.table.reject_bind(decision.id, code, Some(&message));
            }
        }
    }

    fn start_binding(&mut self, binding_id: u32, mut setup: Setup) {
        let Some(client) = self.table.binding(binding_id).map(|b| b.client) else {
            return;
        };
        // Registering reports what already arrived, as a first event.
        if let Err(e) = self.registry.register(&mut setup.upstream, binding_id) {
            tracing::warn!(error = %e, "cannot watch a binding's upstream socket; closing it");
            self.table.close_binding(binding_id);
            return;
        }
        tracing::info!(%client, session = format_args!("{:016x}", setup.request.session_id), app = %setup.request.app_id, destination = %setup.request.destination, "udp binding created");
        self.bindings.insert(
            binding_id,
            Box::new(BindingIo {
                request: setup.request,
                upstream: setup.upstream,
                target: setup.target,
                started: Instant::now(),
                packets_up: 0,
                bytes_up: 0,
                packets_down: 0,
                bytes_down: 0,
                _quota: setup.quota,
                _active: Active::new(
                    &self.shared.stats,
                    |s| &s.udp_bindings_active,
                    Some(|s| &s.udp_bindings_total),
                ),
            }),
        );
    }
}

/// One relay UDP socket and its bindings.
pub(crate) async fn relay(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let state = match UdpSocketState::new(UdpSockRef::from(&*socket)) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up a UDP relay socket");
            return;
        }
    };
    let _ = state.set_recv_buffer_size(UdpSockRef::from(&*socket), RELAY_SOCKET_BUFFER);
    let _ = state.set_send_buffer_size(UdpSockRef::from(&*socket), RELAY_SOCKET_BUFFER);
    // The bindings' upstream sockets, as one descriptor for tokio.
    let (registry, mut upstreams) = match upstream_set() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up a UDP relay socket's upstream set");
            return;
        }
    };
    let mut relay = Relay {
        table: UdpRelay::new(Arc::clone(&shared.proto)),
        shared: Arc::clone(&shared),
        socket: Arc::clone(&socket),
        state,
        bindings: HashMap::new(),
        registry,
        unfinished: Vec::new(),
    };
    // Binds being checked off this task; shutdown waits for their answers.
    let mut in_flight = 0usize;
    let (decide_tx, mut decide_rx) = mpsc::unbounded_channel::<Decision>();
    let stop = shared.lifecycle.stopped_accepting();
    let force = shared.lifecycle.force_closed();
    tokio::pin!(stop, force);
    let mut stopping = false;

    loop {
        in_flight += relay.apply(&decide_tx, stopping);
        if stopping && relay.table.is_empty() && in_flight == 0 {
            return;
        }
        let deadline = relay
            .table
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            readable = socket.readable() => {
                if readable.is_ok() {
                    relay.read_clients();
                }
            }
            ready = upstreams.ready() => {
                if let Ok(ready) = ready {
                    relay.read_destinations(ready);
                }
            }
            () = std::future::ready(()), if !relay.unfinished.is_empty() => relay.read_unfinished(),
            Some(decision) = decide_rx.recv() => {
                in_flight -= 1;
                relay.decided(decision, stopping);
            }
            () = sleep_until_opt(deadline) => relay.table.handle_timeout(Instant::now()),
            () = &mut stop, if !stopping => stopping = true,
            () = &mut force => {
                let ids: Vec<u32> = relay.bindings.keys().copied().collect();
                for id in ids {
                    relay.table.close_binding(id);
                }
                let _ = relay.apply(&decide_tx, true);
                return;
            }
        }
    }
}

/// Admission (transport, session deadline, quota) first, so name lookups
/// only run for an app within its quota; then the destination and the
/// binding's own upstream socket.
async fn check_bind(shared: &Shared, request: BindRequest) -> Result<Setup, (ErrorCode, String)> {
    let needed = bind_transport(request.mode, request.path);
    let quota = admit(shared, &bind_grant(&request), needed, 1)?.quota;
    let targets = check_destination(shared, request.app_id.as_str(), &request.destination).await?;
    let target = targets[0];
    let upstream = connected_upstream(target).map_err(|e| upstream_socket_failure(&e, target))?;
    Ok(Setup {
        request,
        upstream,
        target,
        quota,
    })
}

/// A non-blocking UDP socket on an ephemeral port, connected to `target`,
/// for the relay's own `Poll` rather than tokio's.
fn connected_upstream(target: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(any_local_for(target))?;
    socket.connect(target)?;
    socket.set_nonblocking(true)?;
    Ok(mio::net::UdpSocket::from_std(socket))
}

fn end_binding(shared: &Shared, io: &BindingIo, reason: &SessionError) {
    shared.stats.note_udp_end(reason);
    shared
        .timings
        .session_duration
        .observe(io.started.elapsed().as_secs_f64());
    tracing::info!(
        session = format_args!("{:016x}", io.request.session_id),
        app = %io.request.app_id,
        transport = "udp",
        destination = %io.request.destination,
        packets_up = io.packets_up,
        packets_down = io.packets_down,
        bytes_up = io.bytes_up,
        bytes_down = io.bytes_down,
        duration_ms = io.started.elapsed().as_millis() as u64,
        reason = %reason,
        "session ended"
    );
}
