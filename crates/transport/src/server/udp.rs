//! The UDP side of a node: allocation requests, and the media relay.
//!
//! Each relay socket owns its own binding table ([`UdpRelay`]): a client binds
//! on one socket and stays there, so the hot path takes no lock. Every binding
//! has its own upstream socket, connected to the destination, so the
//! destination's answers identify the binding by the socket they arrive on,
//! and nobody but the destination can send through it. The upstream → client
//! direction runs in a small task per binding that prepends the binding's
//! header and sends straight from the relay socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use bytes::BytesMut;
use cloudproxy_proto::frame::MAX_DATAGRAM_PAYLOAD;
use cloudproxy_proto::server::{
    BindRequest, BindRequestId, DropReason, RelayInput, UdpAllocation, UdpRelay, UdpRelayEvent,
};
use cloudproxy_proto::udp::UDP_HEADER_LEN;
use cloudproxy_proto::{ErrorCode, SessionError};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::net::{connected_udp, sleep_until_opt};
use crate::server::node::Shared;
use crate::server::quota::QuotaGuard;
use crate::server::stats::{Active, Stats};
use crate::server::tcp::{check_destination, quota_code};

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
        let reply = match shared
            .proto
            .handle_allocation_datagram(Instant::now(), &buf[..n])
        {
            UdpAllocation::Drop => {
                Stats::bump(&shared.stats.malformed);
                None
            }
            UdpAllocation::Reply(bytes) => {
                Stats::bump(&shared.stats.allocations_refused);
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
                        Some(pending.accept())
                    }
                    Err(e) => {
                        Stats::bump(&shared.stats.allocations_refused);
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

/// The outcome of checking a bind off the socket's task (DNS may be slow).
struct Decision {
    id: BindRequestId,
    outcome: Result<Setup, (ErrorCode, String)>,
}

/// What a binding needs once accepted.
struct Setup {
    request: BindRequest,
    upstream: Arc<UdpSocket>,
    quota: QuotaGuard<u64>,
}

/// A live binding's I/O.
struct BindingIo {
    request: BindRequest,
    upstream: Arc<UdpSocket>,
    client: watch::Sender<SocketAddr>,
    downstream: AbortHandle,
    started: Instant,
    packets_up: u64,
    bytes_up: u64,
    down: Arc<DownCounters>,
    _quota: QuotaGuard<u64>,
    _active: Active,
}

#[derive(Default)]
struct DownCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl Drop for BindingIo {
    fn drop(&mut self) {
        self.downstream.abort();
    }
}

/// Datagrams handled per wake-up before the relay task looks at its timers
/// and bind decisions again.
const DRAIN_BATCH: usize = 64;

/// Kernel receive buffer asked for on each relay socket (the kernel caps it
/// at `net.core.rmem_max`): absorbs bursts while the task is not running.
const RELAY_SOCKET_BUFFER: usize = 4 << 20;

/// Client → destination for one received datagram of `n` bytes in `buf`.
fn relay_datagram(
    shared: &Shared,
    table: &mut UdpRelay,
    bindings: &mut HashMap<u32, BindingIo>,
    buf: &mut BytesMut,
    n: usize,
    from: SocketAddr,
) {
    let data = buf.split_to(n).freeze();
    match table.handle_datagram(Instant::now(), from, data) {
        RelayInput::Forward {
            binding_id,
            payload,
        } => {
            if let Some(io) = bindings.get_mut(&binding_id) {
                match io.upstream.try_send(&payload) {
                    Ok(_) => {
                        io.packets_up += 1;
                        io.bytes_up += payload.len() as u64;
                        Stats::bump(&shared.stats.udp_packets_up);
                        Stats::add(&shared.stats.udp_bytes_up, payload.len() as u64);
                    }
                    Err(_) => Stats::bump(&shared.stats.udp_dropped),
                }
            }
        }
        RelayInput::Dropped(DropReason::Malformed) => Stats::bump(&shared.stats.malformed),
        RelayInput::Dropped(_) => Stats::bump(&shared.stats.udp_dropped),
        _ => {}
    }
}

/// One relay UDP socket and its bindings.
pub(crate) async fn relay(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let _ = socket2::SockRef::from(&*socket).set_recv_buffer_size(RELAY_SOCKET_BUFFER);
    let _ = socket2::SockRef::from(&*socket).set_send_buffer_size(RELAY_SOCKET_BUFFER);
    let mut table = UdpRelay::new(Arc::clone(&shared.proto));
    let mut bindings: HashMap<u32, BindingIo> = HashMap::new();
    // Binds being checked off this task; shutdown waits for their answers.
    let mut in_flight = 0usize;
    let (decide_tx, mut decide_rx) = mpsc::unbounded_channel::<Decision>();
    let mut buf = BytesMut::with_capacity(RECV_BUF);
    let stop = shared.lifecycle.stopped_accepting();
    let force = shared.lifecycle.force_closed();
    tokio::pin!(stop, force);
    let mut stopping = false;

    loop {
        // Apply what the table wants done.
        while let Some(event) = table.poll_event() {
            if let Some(checking) = handle_event(
                &shared,
                &mut table,
                &mut bindings,
                &decide_tx,
                stopping,
                event,
            ) {
                in_flight += usize::from(checking);
            }
        }
        while let Some(transmit) = table.poll_transmit() {
            let _ = socket.try_send_to(&transmit.contents, transmit.destination);
        }
        if stopping && table.is_empty() && in_flight == 0 {
            return;
        }

        let deadline = table.poll_timeout().map(tokio::time::Instant::from_std);
        buf.reserve(RECV_BUF);
        tokio::select! {
            received = socket.recv_buf_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                relay_datagram(&shared, &mut table, &mut bindings, &mut buf, n, from);
                // Drain what else is queued before going back to `select!`
                // (which re-arms a timer and three wakers per pass): bounded,
                // so timers and decisions still run between bursts.
                for _ in 0..DRAIN_BATCH {
                    buf.reserve(RECV_BUF);
                    match socket.try_recv_buf_from(&mut buf) {
                        Ok((n, from)) => relay_datagram(&shared, &mut table, &mut bindings, &mut buf, n, from),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {}
                    }
                }
            }
            Some(decision) = decide_rx.recv() => {
                in_flight -= 1;
                match decision.outcome {
                    Ok(setup) if !stopping => {
                        // Fails only if the pending bind expired meanwhile;
                        // dropping the setup then releases its quota.
                        if let Ok(binding_id) = table.accept_bind(Instant::now(), decision.id) {
                            start_binding(&shared, &socket, &table, &mut bindings, binding_id, setup);
                        }
                    }
                    Ok(_) => table.reject_bind(decision.id, ErrorCode::SERVER_BUSY, Some("the relay is shutting down")),
                    Err((code, message)) => {
                        Stats::bump(&shared.stats.bindings_refused);
                        table.reject_bind(decision.id, code, Some(&message));
                    }
                }
            }
            () = sleep_until_opt(deadline) => table.handle_timeout(Instant::now()),
            () = &mut stop, if !stopping => stopping = true,
            () = &mut force => {
                let ids: Vec<u32> = bindings.keys().copied().collect();
                for id in ids {
                    table.close_binding(id);
                }
                while let Some(event) = table.poll_event() {
                    let _ = handle_event(&shared, &mut table, &mut bindings, &decide_tx, true, event);
                }
                while let Some(transmit) = table.poll_transmit() {
                    let _ = socket.try_send_to(&transmit.contents, transmit.destination);
                }
                return;
            }
        }
    }
}

/// Applies one table event; returns `Some(true)` when a bind check was
/// started off the task.
fn handle_event(
    shared: &Arc<Shared>,
    table: &mut UdpRelay,
    bindings: &mut HashMap<u32, BindingIo>,
    decide_tx: &mpsc::UnboundedSender<Decision>,
    stopping: bool,
    event: UdpRelayEvent,
) -> Option<bool> {
    match event {
        UdpRelayEvent::BindRequested {
            id,
            request,
            client,
        } => {
            if stopping {
                table.reject_bind(
                    id,
                    ErrorCode::SERVER_BUSY,
                    Some("the relay is shutting down"),
                );
                return None;
            }
            let shared = Arc::clone(shared);
            let decide_tx = decide_tx.clone();
            tokio::spawn(async move {
                let outcome = check_bind(&shared, request).await;
                if let Err((code, message)) = &outcome {
                    tracing::info!(%client, code = ?code, %message, "udp bind refused");
                }
                let _ = decide_tx.send(Decision { id, outcome });
            });
            return Some(true);
        }
        UdpRelayEvent::Rebound {
            binding_id,
            old,
            new,
        } => {
            if let Some(io) = bindings.get(&binding_id) {
                let _ = io.client.send(new);
                tracing::info!(session = format_args!("{:016x}", io.request.session_id), %old, %new, "udp binding moved to a new client address");
            }
        }
        UdpRelayEvent::BindingClosed { binding_id, reason } => {
            if let Some(io) = bindings.remove(&binding_id) {
                end_binding(io, &reason);
            }
        }
        _ => {}
    }
    None
}

async fn check_bind(shared: &Shared, request: BindRequest) -> Result<Setup, (ErrorCode, String)> {
    let targets = check_destination(shared, &request.destination).await?;
    let quota = shared
        .quotas
        .acquire(request.app_id.as_str(), request.session_id)
        .map_err(|e| (quota_code(&e), e.to_string()))?;
    let target = targets[0];
    let upstream = connected_udp(target).await.map_err(|e| {
        (
            ErrorCode::DESTINATION_UNREACHABLE,
            format!("cannot open a UDP path to {target}: {e}"),
        )
    })?;
    Ok(Setup {
        request,
        upstream: Arc::new(upstream),
        quota,
    })
}

fn start_binding(
    shared: &Arc<Shared>,
    socket: &Arc<UdpSocket>,
    table: &UdpRelay,
    bindings: &mut HashMap<u32, BindingIo>,
    binding_id: u32,
    setup: Setup,
) {
    // The header is fixed for the binding's life; the table writes it.
    let mut header = Vec::with_capacity(UDP_HEADER_LEN);
    let Some(client) = table.encapsulate(binding_id, &[], &mut header) else {
        return;
    };
    let (client_tx, client_rx) = watch::channel(client);
    let down = Arc::new(DownCounters::default());
    let task = tokio::spawn(downstream(
        Arc::clone(&setup.upstream),
        Arc::clone(socket),
        header,
        client_rx,
        Arc::clone(&down),
        Arc::clone(&shared.stats),
    ));
    tracing::info!(%client, session = format_args!("{:016x}", setup.request.session_id), app = %setup.request.app_id, destination = %setup.request.destination, "udp binding created");
    bindings.insert(
        binding_id,
        BindingIo {
            request: setup.request,
            upstream: setup.upstream,
            client: client_tx,
            downstream: task.abort_handle(),
            started: Instant::now(),
            packets_up: 0,
            bytes_up: 0,
            down,
            _quota: setup.quota,
            _active: Active::new(
                &shared.stats,
                |s| &s.udp_bindings_active,
                Some(|s| &s.udp_bindings_total),
            ),
        },
    );
}

fn end_binding(io: BindingIo, reason: &SessionError) {
    let packets_down = io.down.packets.load(Relaxed);
    let bytes_down = io.down.bytes.load(Relaxed);
    tracing::info!(
        session = format_args!("{:016x}", io.request.session_id),
        app = %io.request.app_id,
        transport = "udp",
        destination = %io.request.destination,
        packets_up = io.packets_up,
        packets_down,
        bytes_up = io.bytes_up,
        bytes_down,
        duration_ms = io.started.elapsed().as_millis() as u64,
        reason = %reason,
        "session ended"
    );
}

thread_local! {
    /// One receive buffer per worker thread, so an idle binding holds none.
    static DOWN_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; UDP_HEADER_LEN + RECV_BUF]);
}

/// Destination → client for one binding.
async fn downstream(
    upstream: Arc<UdpSocket>,
    relay: Arc<UdpSocket>,
    header: Vec<u8>,
    client: watch::Receiver<SocketAddr>,
    counters: Arc<DownCounters>,
    stats: Arc<Stats>,
) {
    loop {
        if upstream.readable().await.is_err() {
            return;
        }
        DOWN_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf[..header.len()].copy_from_slice(&header);
            loop {
                match upstream.try_recv(&mut buf[header.len()..]) {
                    Ok(n) if n <= MAX_DATAGRAM_PAYLOAD => {
                        let to = *client.borrow();
                        match relay.try_send_to(&buf[..header.len() + n], to) {
                            Ok(_) => {
                                counters.packets.fetch_add(1, Relaxed);
                                counters.bytes.fetch_add(n as u64, Relaxed);
                                Stats::bump(&stats.udp_packets_down);
                                Stats::add(&stats.udp_bytes_down, n as u64);
                            }
                            Err(_) => Stats::bump(&stats.udp_dropped),
                        }
                    }
                    Ok(_) => Stats::bump(&stats.udp_dropped),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // An ICMP error for an earlier send: not fatal.
                    Err(_) => Stats::bump(&stats.udp_dropped),
                }
            }
        });
    }
}
