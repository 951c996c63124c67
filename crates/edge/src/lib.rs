//! The reference media edge: a small channel relay that stands in for the
//! media network in tests, demos and benchmarks (`docs/protocol.md` §9).
//!
//! # The model
//!
//! Clients reach the edge *through* the proxy, never directly: the TCP relay
//! in stream mode is a raw byte pipe to the edge's TCP port, and the UDP relay
//! (or a UDP-over-TCP connection) delivers media to the edge's UDP port as
//! plain datagrams from a relay socket of the client's binding. So the edge
//! speaks only the edge protocol:
//!
//! * **Message channel (TCP)** — framed with the 8-byte header
//!   ([`cloudproxy_proto::codec::FrameCodec`]). The first frame is `Join`;
//!   the edge answers `Joined` (or `JoinRefused` and closes), then a
//!   `MemberJoined` for every member already in the channel; every member is
//!   told `MemberJoined` / `MemberLeft` as others come and go. `Message`s are
//!   reliable and ordered: the edge numbers each client's incoming messages
//!   with [`cloudproxy_proto::reliable::Inbox`], answers with cumulative
//!   `Ack`s (after every batch read from the socket, and at least every 16
//!   messages), and queues each message to every *other* member of the
//!   channel with that recipient's own sequence numbers and `from` = the
//!   sender's member id, keeping it until the recipient acknowledges it.
//!   `Ping` gets `Pong`. `Leave` removes the member (others get `MemberLeft`).
//! * **Media (UDP)** — one `Media` frame per datagram, at most 1 400 bytes.
//!   A datagram whose member id and media token match a live member is
//!   forwarded to every other member of its channel as
//!   `Media { member_id: sender, token: 0, payload }`, to the address that
//!   recipient last sent valid media from. A member that has not sent media
//!   yet has no address and receives none; a wrong token or an unknown member
//!   is dropped and counted. Nothing is ever sent to an address that has not
//!   proven membership (no reflection, no amplification). A `Media` with an
//!   empty payload is a *registration*: it sets the member's address, is not
//!   forwarded, and is confirmed with the same empty frame (token 0) sent
//!   back to its source, so a client knows media will reach it before it
//!   reports the channel joined.
//! * **Resume (§9.6)** — when a connection drops without `Leave` (close,
//!   reset, or no frame for `idle_timeout_ms`), the membership lingers for
//!   `member_linger_ms`, with its unacknowledged messages. A `Join` with
//!   `resume` (member id, resume token, the client's `last_received`) on a new
//!   connection restores it: `Joined { resumed: true, last_received }` with
//!   the highest seq the edge got in order from that client, then
//!   `MemberJoined` for every member present (the client may already know
//!   some), then every message above the client's `last_received`, then
//!   `MemberLeft` for members it was told about that left meanwhile. The
//!   client resends its own unacknowledged messages above the edge's
//!   `last_received`; duplicates are dropped by seq (and acknowledged), so
//!   every message arrives exactly once, in order. A resume with an unknown
//!   member or a wrong token gets `JoinRefused` 401 (RESUME_FAILED). When the
//!   linger time runs out the member is removed and the others get
//!   `MemberLeft`. If the old connection is still open when a resume arrives,
//!   the new connection takes over and the old one is closed.
//!
//! # Bounds
//!
//! Channels, members per channel, frame size (2 KiB before `Join`, then
//! `max_frame_len`), the handshake deadline, the idle timeout and the linger
//! time are all in [`EdgeConfig`]. Each member's unacknowledged messages
//! (count and bytes) and the frames queued for its connection are bounded: a
//! member that stops acknowledging or reading is removed (and counted in
//! [`EdgeStats::members_evicted`]) instead of growing memory. Malformed input
//! gets an `Error` frame (100/101, 102 for a frame in the wrong place, 402
//! when the first frame is not `Join`, 103 at the handshake deadline) and a
//! close of that connection only.
//!
//! # Use
//!
//! ```no_run
//! use cloudproxy_edge::{Edge, EdgeConfig};
//!
//! # async fn demo() -> Result<(), cloudproxy_edge::EdgeError> {
//! let edge = Edge::bind(EdgeConfig::loopback()).await?;
//! println!("edge: TCP {}, UDP {}", edge.tcp_addr(), edge.udp_addr());
//! let handle = edge.handle();
//! tokio::spawn(async move {
//!     loop {
//!         tokio::time::sleep(std::time::Duration::from_secs(10)).await;
//!         println!("{:?}", handle.stats());
//!     }
//! });
//! edge.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```
//!
//! Logs (`tracing`, target `cloudproxy_edge`): one `info` line per
//! join, resume, lost connection and removal, with app, channel, member id,
//! user id, message and media counts and the reason.

mod config;
mod conn;
mod error;
mod media;
mod state;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::EdgeConfig;
pub use error::EdgeError;
pub use stats::EdgeStats;

use cloudproxy_transport::lifecycle::{Lifecycle, accept_tcp};
use state::Shared;

/// A bound, not yet running media edge. See the [module docs](self).
#[derive(Debug)]
pub struct Edge {
    handle: EdgeHandle,
    tcp: TcpListener,
    udp: Arc<UdpSocket>,
}

/// A cheap, cloneable view of an edge: its addresses and counters, usable
/// while [`Edge::run`] owns the edge.
#[derive(Debug, Clone)]
pub struct EdgeHandle {
    shared: Arc<Shared>,
    tcp_addr: SocketAddr,
    udp_addr: SocketAddr,
}

impl EdgeHandle {
    /// The bound TCP (message channel) address.
    #[must_use]
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// The bound UDP (media) address.
    #[must_use]
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> EdgeStats {
        self.shared.counters.snapshot()
    }
}

impl Edge {
    /// Checks `config` and opens the TCP listener and the UDP socket.
    pub async fn bind(config: EdgeConfig) -> Result<Self, EdgeError> {
        config.validate()?;
        let app_ids = config.app_id_list()?;
        let tcp_want = config.tcp_bind_addr();
        let udp_want = config.udp_bind_addr();
        let bind_err = |transport, addr| {
            move |cause| EdgeError::Bind {
                transport,
                addr,
                cause,
            }
        };
        let tcp = TcpListener::bind(tcp_want)
            .await
            .map_err(bind_err("TCP", tcp_want))?;
        let udp = UdpSocket::bind(udp_want)
            .await
            .map_err(bind_err("UDP", udp_want))?;
        let tcp_addr = tcp.local_addr().map_err(bind_err("TCP", tcp_want))?;
        let udp_addr = udp.local_addr().map_err(bind_err("UDP", udp_want))?;
        let shared = Arc::new(Shared::new(config, app_ids));
        Ok(Self {
            handle: EdgeHandle {
                shared,
                tcp_addr,
                udp_addr,
            },
            tcp,
            udp: Arc::new(udp),
        })
    }

    /// The bound TCP (message channel) address.
    #[must_use]
    pub fn tcp_addr(&self) -> SocketAddr {
        self.handle.tcp_addr
    }

    /// The bound UDP (media) address.
    #[must_use]
    pub fn udp_addr(&self) -> SocketAddr {
        self.handle.udp_addr
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> EdgeStats {
        self.handle.stats()
    }

    /// A handle for addresses and counters that outlives [`Edge::run`]'s
    /// borrow of the edge.
    #[must_use]
    pub fn handle(&self) -> EdgeHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` completes, then stops: the listener closes,
    /// every connected client gets `Error` 105 (SERVER_BUSY) and its
    /// connection is closed, and every task of the edge has ended when this
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self { handle, tcp, udp } = self;
        let shared = handle.shared;
        let lifecycle = Lifecycle::new();
        tracing::info!(tcp = %handle.tcp_addr, udp = %handle.udp_addr, "media edge listening");

        let conn_shared = shared.clone();
        let conn_lifecycle = lifecycle.clone();
        lifecycle.spawn(accept_tcp(tcp, lifecycle.clone(), move |stream, peer| {
            conn::serve(conn_shared.clone(), conn_lifecycle.clone(), stream, peer)
        }));
        lifecycle.spawn(media::run(shared.clone(), udp, lifecycle.force_closed()));

        shutdown.await;
        // Edge sessions never end by themselves: close them now.
        let outcome = lifecycle.drain(Duration::ZERO).await;
        tracing::info!(%outcome, stats = %shared.counters.snapshot(), "media edge stopped");
    }

    /// Runs the edge on a tokio task; it stops when the returned
    /// [`RunningEdge`] is shut down or dropped.
    #[must_use = "dropping the RunningEdge stops the edge"]
    pub fn spawn(self) -> RunningEdge {
        let handle = self.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.run(stop.clone().cancelled_owned()));
        RunningEdge { handle, stop, task }
    }
}

/// An edge running on its own task (from [`Edge::spawn`]).
#[derive(Debug)]
pub struct RunningEdge {
    handle: EdgeHandle,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningEdge {
    /// Addresses and counters.
    #[must_use]
    pub fn handle(&self) -> &EdgeHandle {
        &self.handle
    }

    /// The bound TCP (message channel) address.
    #[must_use]
    pub fn tcp_addr(&self) -> SocketAddr {
        self.handle.tcp_addr
    }

    /// The bound UDP (media) address.
    #[must_use]
    pub fn udp_addr(&self) -> SocketAddr {
        self.handle.udp_addr
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> EdgeStats {
        self.handle.stats()
    }

    /// Stops the edge and waits until every one of its tasks has ended.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningEdge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
