//! Sans-I/O client state machines.
//!
//! * [`Allocator`]: one allocation (or ticket refresh) exchange with an
//!   allocation service, over one TCP connection or one UDP socket.
//! * [`RelayBinding`]: one relay binding — a TCP stream (message data), a TCP
//!   connection in datagram mode (UDP-over-TCP) or a UDP path (media) —
//!   including its keepalives, NAT re-binding and close.
//!
//! Both follow the quinn-proto pattern. The I/O layer:
//! 1. feeds received bytes with `handle_input(now, bytes)`;
//! 2. sends everything `poll_transmit()` returns (for TCP, in order on the
//!    connection; for UDP, one datagram each);
//! 3. arms a timer for `poll_timeout()` and calls `handle_timeout(now)` when
//!    it fires;
//! 4. drains `poll_event()`.
//!
//! Neither reads a clock nor touches a socket.
//!
//! ```
//! use std::time::Instant;
//! use cloudproxy_proto::client::{Allocator, AllocatorEvent, ClientConfig};
//! use cloudproxy_proto::{AppId, Machine, Path, Timebase};
//!
//! let now = Instant::now();
//! let config = ClientConfig::new(
//!     AppId::new("demo-app").unwrap(),
//!     b"demo-secret".to_vec(),
//!     Timebase::new(now, 1_700_000_000),
//! );
//! let mut alloc = Allocator::new(&config, Path::Udp, [7; 16], now);
//! let request = alloc.poll_transmit().expect("the request is queued at once");
//! assert!(request.len() >= cloudproxy_proto::MIN_UDP_REQUEST); // padded over UDP
//! assert!(alloc.poll_timeout().is_some()); // retransmit / deadline timer
//! assert!(alloc.poll_event().is_none());
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::FrameCodec;
use crate::error::{ErrorCode, SessionError};
use crate::frame::{
    AllocateOk, AllocateRequest, Bind, BindMode, ErrorFrame, Frame, MAX_DATAGRAM_PAYLOAD, Rebind,
    Refresh,
};
use crate::ticket::credential_proof;
use crate::time::Timebase;
use crate::types::{Address, AppId, Capabilities, SealedTicket, Text, Transports};
use crate::udp::{DatagramClass, UDP_HEADER_LEN, UdpHeader, UdpKind, classify};
use crate::{MIN_UDP_REQUEST, Machine, Path};

/// Client settings shared by [`Allocator`] and [`RelayBinding`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The app id.
    pub app_id: AppId,
    /// The app secret (the "credential"); never sent, only used for the proof.
    pub secret: Vec<u8>,
    /// Version string sent for the service's logs.
    pub client_version: Text,
    /// Transports to ask for.
    pub transports: Transports,
    /// Capabilities to offer.
    pub capabilities: Capabilities,
    /// Maps `Instant`s to unix time for the request timestamp.
    pub timebase: Timebase,
    /// Deadline for a whole allocation or bind exchange (default 10 s).
    pub handshake_timeout: Duration,
    /// First UDP retransmission interval; doubles each time (default 250 ms).
    pub udp_retransmit: Duration,
    /// Size UDP requests are padded to (default and minimum [`MIN_UDP_REQUEST`]).
    pub udp_pad_to: usize,
}

impl ClientConfig {
    /// A configuration with the defaults of `docs/protocol.md`.
    #[must_use]
    pub fn new(app_id: AppId, secret: Vec<u8>, timebase: Timebase) -> Self {
        Self {
            app_id,
            secret,
            client_version: Text::truncated(concat!(
                "cloudproxy-proto/",
                env!("CARGO_PKG_VERSION")
            )),
            transports: Transports::ALL,
            capabilities: Capabilities::ALL,
            timebase,
            handshake_timeout: Duration::from_secs(10),
            udp_retransmit: Duration::from_millis(250),
            udp_pad_to: MIN_UDP_REQUEST,
        }
    }
}

/// What an allocation gave the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The session id.
    pub session_id: u64,
    /// The ticket to present in every `Bind` (and `Refresh`).
    pub ticket: SealedTicket,
    /// Capabilities both sides support.
    pub capabilities: Capabilities,
    /// Transports the ticket allows.
    pub transports: Transports,
    /// When the ticket expires (client's monotonic time).
    pub expires_at: Instant,
    /// When to refresh the ticket: two thirds of its lifetime.
    pub refresh_at: Instant,
    /// Keepalive interval for idle bindings.
    pub keepalive_interval: Duration,
    /// The relay's idle timeout.
    pub idle_timeout: Duration,
    /// TCP relay endpoints, in preference order.
    pub tcp_relays: Vec<SocketAddr>,
    /// UDP relay endpoints, in preference order.
    pub udp_relays: Vec<SocketAddr>,
}

impl Allocation {
    fn from_ok(ok: AllocateOk, now: Instant) -> Self {
        let lifetime = Duration::from_secs(u64::from(ok.lifetime_secs));
        Self {
            session_id: ok.session_id,
            ticket: ok.ticket,
            capabilities: ok.capabilities,
            transports: ok.transports,
            expires_at: now + lifetime,
            refresh_at: now + lifetime * 2 / 3,
            keepalive_interval: Duration::from_secs(u64::from(ok.keepalive_secs.max(1))),
            idle_timeout: Duration::from_secs(u64::from(ok.idle_timeout_secs.max(1))),
            tcp_relays: ok.tcp_relays,
            udp_relays: ok.udp_relays,
        }
    }
}

/// Outcome of an [`Allocator`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocatorEvent {
    /// The service granted the allocation (or refresh).
    Allocated(Allocation),
    /// The exchange failed; try the next address / port, or report.
    Failed(SessionError),
}

#[derive(Debug)]
enum AllocState {
    Waiting {
        deadline: Instant,
        retransmit_at: Option<Instant>,
        rto: Duration,
    },
    Done,
}

/// One allocation or refresh exchange with an allocation service.
#[derive(Debug)]
pub struct Allocator {
    path: Path,
    request: Bytes,
    state: AllocState,
    handshake_timeout: Duration,
    buf: BytesMut,
    codec: FrameCodec,
    transmits: VecDeque<Bytes>,
    events: VecDeque<AllocatorEvent>,
}

impl Allocator {
    /// Starts an allocation: the `AllocateRequest` is queued at once.
    /// `nonce` must be 16 fresh random bytes.
    #[must_use]
    pub fn new(config: &ClientConfig, path: Path, nonce: [u8; 16], now: Instant) -> Self {
        let timestamp = config.timebase.unix_at(now);
        let mut req = AllocateRequest {
            capabilities: config.capabilities,
            transports: config.transports,
            timestamp,
            nonce,
            app_id: config.app_id.clone(),
            proof: credential_proof(&config.secret, &config.app_id, &nonce, timestamp),
            client_version: config.client_version.clone(),
            padding: 0,
        };
        if path == Path::Udp {
            let pad_to = config.udp_pad_to.max(MIN_UDP_REQUEST);
            let len = Frame::AllocateRequest(req.clone()).encoded_len();
            req.padding = pad_to.saturating_sub(len);
        }
        Self::start(config, path, Frame::AllocateRequest(req), now)
    }

    /// Starts a ticket refresh for the same session: a `Refresh` is queued.
    #[must_use]
    pub fn refresh(config: &ClientConfig, path: Path, ticket: SealedTicket, now: Instant) -> Self {
        let mut r = Refresh { ticket, padding: 0 };
        if path == Path::Udp {
            let pad_to = config.udp_pad_to.max(MIN_UDP_REQUEST);
            r.padding = pad_to.saturating_sub(Frame::Refresh(r.clone()).encoded_len());
        }
        Self::start(config, path, Frame::Refresh(r), now)
    }

    fn start(config: &ClientConfig, path: Path, frame: Frame, now: Instant) -> Self {
        let request = frame.to_bytes();
        let mut transmits = VecDeque::new();
        transmits.push_back(request.clone());
        Self {
            path,
            request,
            state: AllocState::Waiting {
                deadline: now + config.handshake_timeout,
                retransmit_at: (path == Path::Udp).then(|| now + config.udp_retransmit),
                rto: config.udp_retransmit,
            },
            handshake_timeout: config.handshake_timeout,
            buf: BytesMut::new(),
            codec: FrameCodec::new(),
            transmits,
            events: VecDeque::new(),
        }
    }

    fn fail(&mut self, e: SessionError) {
        self.state = AllocState::Done;
        self.events.push_back(AllocatorEvent::Failed(e));
    }

    /// True once the exchange succeeded or failed.
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.state, AllocState::Done)
    }
}

impl Machine for Allocator {
    type Event = AllocatorEvent;
    fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, AllocState::Done) {
            return;
        }
        let frame = match self.path {
            Path::Udp => match Frame::parse(data) {
                Ok(f) => f,
                // A stray or forged datagram must not end the exchange.
                Err(_) => return,
            },
            Path::Tcp => {
                self.buf.extend_from_slice(data);
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => return,
                    Err(e) => return self.fail(SessionError::protocol(e)),
                }
            }
        };
        match frame {
            Frame::AllocateOk(ok) => {
                self.state = AllocState::Done;
                self.events
                    .push_back(AllocatorEvent::Allocated(Allocation::from_ok(ok, now)));
            }
            Frame::Error(e) => self.fail(SessionError::Refused {
                code: e.code,
                message: e.message.as_str().to_owned(),
            }),
            other if self.path == Path::Tcp => self.fail(SessionError::UnexpectedFrame {
                found: other.frame_type(),
                state: "waiting for AllocateOk",
            }),
            _ => {}
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<AllocatorEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            AllocState::Waiting {
                deadline,
                retransmit_at,
                ..
            } => Some(retransmit_at.map_or(deadline, |r| r.min(deadline))),
            AllocState::Done => None,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let AllocState::Waiting {
            deadline,
            retransmit_at,
            rto,
        } = &mut self.state
        {
            if now >= *deadline {
                let after = self.handshake_timeout;
                return self.fail(SessionError::Timeout {
                    which: "allocation",
                    after,
                });
            }
            if let Some(at) = retransmit_at
                && now >= *at
            {
                *rto *= 2;
                *at = now + *rto;
                self.transmits.push_back(self.request.clone());
            }
        }
    }
}

/// What a [`RelayBinding`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingEvent {
    /// The relay accepted the bind.
    Bound {
        /// Binding id (0 on TCP).
        binding_id: u32,
        /// The bound mode.
        mode: BindMode,
        /// Stream mode only: bytes that arrived after `BindOk` in the same
        /// read; they are the first bytes from the destination.
        early_data: Bytes,
    },
    /// The relay accepted a NAT re-bind from the new address.
    Rebound,
    /// A datagram from the destination (datagram mode).
    Datagram(Bytes),
    /// The binding ended; the reason says why (peer close, refusal, timeout, …).
    Closed(SessionError),
}

#[derive(Debug)]
enum BindState {
    Binding {
        deadline: Instant,
        retransmit_at: Option<Instant>,
        rto: Duration,
    },
    Bound {
        binding_id: u32,
        token: u64,
        rebinding: Option<(Instant, Instant, Duration)>,
    },
    /// Stream mode after `BindOk`: the I/O layer owns the byte pipe.
    Streaming,
    Closed,
}

/// One binding with a relay: TCP stream, TCP datagram (UDP-over-TCP) or UDP.
#[derive(Debug)]
pub struct RelayBinding {
    path: Path,
    mode: BindMode,
    ticket: SealedTicket,
    destination: Address,
    state: BindState,
    handshake_timeout: Duration,
    udp_retransmit: Duration,
    keepalive_interval: Duration,
    dead_after: Duration,
    last_sent: Instant,
    last_recv: Instant,
    last_keepalive: Instant,
    ping_seq: u64,
    buf: BytesMut,
    codec: FrameCodec,
    transmits: VecDeque<Bytes>,
    events: VecDeque<BindingEvent>,
    out: BytesMut,
}

impl RelayBinding {
    /// Starts a bind: the `Bind` frame is queued at once.
    ///
    /// `Stream` mode needs [`Path::Tcp`]; the ticket must allow the transport
    /// (TCP for stream, UDP for datagram over UDP, UDP_OVER_TCP for datagram
    /// over TCP) or the relay will refuse it.
    pub fn new(
        config: &ClientConfig,
        allocation: &Allocation,
        path: Path,
        mode: BindMode,
        destination: Address,
        now: Instant,
    ) -> Result<Self, SessionError> {
        if path == Path::Udp && mode == BindMode::Stream {
            return Err(SessionError::InvalidState(
                "stream mode needs a TCP relay connection",
            ));
        }
        let keepalive = allocation.keepalive_interval;
        let mut b = Self {
            path,
            mode,
            ticket: allocation.ticket.clone(),
            destination,
            state: BindState::Binding {
                deadline: now + config.handshake_timeout,
                retransmit_at: (path == Path::Udp).then(|| now + config.udp_retransmit),
                rto: config.udp_retransmit,
            },
            handshake_timeout: config.handshake_timeout,
            udp_retransmit: config.udp_retransmit,
            keepalive_interval: keepalive,
            dead_after: (keepalive * 3).min(allocation.idle_timeout),
            last_sent: now,
            last_recv: now,
            last_keepalive: now,
            ping_seq: 0,
            buf: BytesMut::new(),
            codec: FrameCodec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            out: BytesMut::new(),
        };
        b.send_bind(None);
        Ok(b)
    }

    fn bind_frame(&self, rebind: Option<Rebind>) -> Bytes {
        Frame::Bind(Bind {
            ticket: self.ticket.clone(),
            mode: self.mode,
            destination: self.destination.clone(),
            rebind,
        })
        .to_bytes()
    }

    fn send_bind(&mut self, rebind: Option<Rebind>) {
        let f = self.bind_frame(rebind);
        self.transmits.push_back(f);
    }

    /// Replaces the ticket used for later re-binds (after a refresh).
    pub fn set_ticket(&mut self, ticket: SealedTicket) {
        self.ticket = ticket;
    }

    /// The binding's UDP header for data, once bound over UDP (lets an I/O
    /// layer encapsulate media itself without going through the queue).
    #[must_use]
    pub fn udp_header(&self) -> Option<UdpHeader> {
        match self.state {
            BindState::Bound {
                binding_id, token, ..
            } if self.path == Path::Udp => Some(UdpHeader {
                kind: UdpKind::Data,
                binding_id,
                binding_token: token,
            }),
            _ => None,
        }
    }

    /// True once `BindOk` arrived (and until the binding closes).
    #[must_use]
    pub fn is_bound(&self) -> bool {
        matches!(self.state, BindState::Bound { .. } | BindState::Streaming)
    }

    /// True once the binding closed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self.state, BindState::Closed)
    }

    fn handle_udp(&mut self, now: Instant, data: &[u8]) {
        match classify(data) {
            DatagramClass::Relay => {
                let BindState::Bound {
                    binding_id, token, ..
                } = self.state
                else {
                    return;
                };
                let Ok((h, payload)) = UdpHeader::parse(data) else {
                    return;
                };
                if h.binding_id != binding_id
                    || !crate::ticket::tokens_equal(h.binding_token, token)
                {
                    return;
                }
                self.last_recv = now;
                match h.kind {
                    UdpKind::Data => {
                        self.events
                            .push_back(BindingEvent::Datagram(Bytes::copy_from_slice(payload)));
                    }
                    UdpKind::KeepaliveAck | UdpKind::Keepalive => {}
                    UdpKind::Close => self.close_with(SessionError::ClosedByPeer),
                }
            }
            DatagramClass::Control => {
                if let Ok(f) = Frame::parse(data) {
                    self.handle_frame(now, f);
                }
            }
            DatagramClass::Unknown => {}
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        match (&mut self.state, frame) {
            (BindState::Binding { .. }, Frame::BindOk(ok)) => {
                if ok.mode != self.mode {
                    return self.close_with(SessionError::Protocol(
                        crate::error::PeerMisbehaved::BindModeMismatch {
                            requested: self.mode,
                            found: ok.mode,
                        },
                    ));
                }
                self.last_recv = now;
                if ok.keepalive_secs > 0 {
                    self.keepalive_interval = Duration::from_secs(u64::from(ok.keepalive_secs));
                }
                if ok.idle_timeout_secs > 0 {
                    self.dead_after = (self.keepalive_interval * 3)
                        .min(Duration::from_secs(u64::from(ok.idle_timeout_secs)));
                }
                let early_data = if self.mode == BindMode::Stream {
                    self.state = BindState::Streaming;
                    self.buf.split().freeze()
                } else {
                    self.state = BindState::Bound {
                        binding_id: ok.binding_id,
                        token: ok.binding_token,
                        rebinding: None,
                    };
                    Bytes::new()
                };
                self.events.push_back(BindingEvent::Bound {
                    binding_id: ok.binding_id,
                    mode: ok.mode,
                    early_data,
                });
            }
            (
                BindState::Bound {
                    binding_id,
                    token,
                    rebinding,
                },
                Frame::BindOk(ok),
            ) => {
                // Answer to a re-bind (UDP) or a duplicate of the first BindOk.
                if ok.binding_id == *binding_id
                    && crate::ticket::tokens_equal(ok.binding_token, *token)
                {
                    self.last_recv = now;
                    if rebinding.take().is_some() {
                        self.events.push_back(BindingEvent::Rebound);
                    }
                }
            }
            (BindState::Bound { .. }, Frame::Datagram(p)) if self.path == Path::Tcp => {
                self.last_recv = now;
                self.events.push_back(BindingEvent::Datagram(p));
            }
            (BindState::Bound { .. }, Frame::Ping(n)) if self.path == Path::Tcp => {
                self.last_recv = now;
                self.queue_frame(&Frame::Pong(n));
            }
            (BindState::Bound { .. }, Frame::Pong(_)) if self.path == Path::Tcp => {
                self.last_recv = now;
            }
            // Over UDP an Error is only expected in answer to a (re-)bind: a
            // forged one must not tear down a working binding.
            (BindState::Binding { .. }, Frame::Error(e))
            | (
                BindState::Bound {
                    rebinding: Some(_), ..
                },
                Frame::Error(e),
            ) => {
                self.close_with(SessionError::Refused {
                    code: e.code,
                    message: e.message.as_str().to_owned(),
                });
            }
            (BindState::Bound { .. }, Frame::Error(e)) if self.path == Path::Tcp => {
                self.close_with(SessionError::Refused {
                    code: e.code,
                    message: e.message.as_str().to_owned(),
                });
            }
            (BindState::Bound { .. }, Frame::Close) if self.path == Path::Tcp => {
                self.close_with(SessionError::ClosedByPeer);
            }
            (_, other) => {
                if self.path == Path::Tcp {
                    self.queue_frame(&Frame::Error(ErrorFrame::new(ErrorCode::UNEXPECTED_FRAME)));
                    self.close_with(SessionError::UnexpectedFrame {
                        found: other.frame_type(),
                        state: "binding",
                    });
                }
                // Over UDP, stray control datagrams are ignored.
            }
        }
    }

    fn queue_frame(&mut self, f: &Frame) {
        self.out.reserve(f.encoded_len());
        f.encode(&mut self.out);
        let b = self.out.split().freeze();
        self.transmits.push_back(b);
    }

    fn queue_udp(&mut self, kind: UdpKind, payload: &[u8]) {
        if let BindState::Bound {
            binding_id, token, ..
        } = self.state
        {
            self.out.reserve(UDP_HEADER_LEN + payload.len());
            UdpHeader {
                kind,
                binding_id,
                binding_token: token,
            }
            .encode(&mut self.out);
            self.out.put_slice(payload);
            let b = self.out.split().freeze();
            self.transmits.push_back(b);
        }
    }

    fn close_with(&mut self, reason: SessionError) {
        if !matches!(self.state, BindState::Closed) {
            self.state = BindState::Closed;
            self.events.push_back(BindingEvent::Closed(reason));
        }
    }

    /// Queues one media datagram toward the destination (datagram mode, bound).
    pub fn send_datagram(&mut self, now: Instant, payload: &[u8]) -> Result<(), SessionError> {
        if !matches!(self.state, BindState::Bound { .. }) {
            return Err(SessionError::InvalidState(
                "send_datagram before BindOk or after close",
            ));
        }
        if payload.len() > MAX_DATAGRAM_PAYLOAD {
            return Err(SessionError::InvalidState(
                "datagram larger than MAX_DATAGRAM_PAYLOAD",
            ));
        }
        self.last_sent = now;
        match self.path {
            Path::Udp => self.queue_udp(UdpKind::Data, payload),
            Path::Tcp => {
                self.queue_frame(&Frame::Datagram(Bytes::copy_from_slice(payload)));
            }
        }
        Ok(())
    }

    /// UDP only: the local address changed (or the path seems dead); send a
    /// `Bind` with the binding's id and token so the relay moves the binding
    /// to the new source address. Answered by [`BindingEvent::Rebound`].
    pub fn rebind(&mut self, now: Instant) -> Result<(), SessionError> {
        let BindState::Bound {
            binding_id,
            token,
            rebinding,
        } = &mut self.state
        else {
            return Err(SessionError::InvalidState("rebind needs a bound binding"));
        };
        if self.path != Path::Udp {
            return Err(SessionError::InvalidState("rebind is for UDP bindings"));
        }
        let r = Rebind {
            binding_id: *binding_id,
            binding_token: *token,
        };
        *rebinding = Some((
            now + self.handshake_timeout,
            now + self.udp_retransmit,
            self.udp_retransmit,
        ));
        self.last_sent = now;
        self.send_bind(Some(r));
        Ok(())
    }

    /// Closes the binding: a `Close` goes to the relay and
    /// [`BindingEvent::Closed`] with [`SessionError::ClosedLocally`] follows.
    pub fn close(&mut self, _now: Instant) {
        match (&self.state, self.path) {
            (BindState::Bound { .. }, Path::Udp) => self.queue_udp(UdpKind::Close, &[]),
            (BindState::Bound { .. } | BindState::Binding { .. }, Path::Tcp) => {
                self.queue_frame(&Frame::Close);
            }
            _ => {}
        }
        self.close_with(SessionError::ClosedLocally);
    }

    /// A keepalive is due when nothing was sent or nothing was received for
    /// one interval, and at most once per interval.
    fn keepalive_at(&self) -> Instant {
        self.last_sent.min(self.last_recv).max(self.last_keepalive) + self.keepalive_interval
    }
}

impl Machine for RelayBinding {
    type Event = BindingEvent;
    fn handle_input(&mut self, now: Instant, data: &[u8]) {
        match self.path {
            Path::Udp => self.handle_udp(now, data),
            Path::Tcp => {
                if matches!(self.state, BindState::Closed | BindState::Streaming) {
                    return;
                }
                self.buf.extend_from_slice(data);
                loop {
                    if matches!(self.state, BindState::Closed | BindState::Streaming) {
                        return;
                    }
                    match self.codec.decode(&mut self.buf) {
                        Ok(Some(f)) => self.handle_frame(now, f),
                        Ok(None) => return,
                        Err(e) => {
                            let code = e.wire_code();
                            self.queue_frame(&Frame::Error(ErrorFrame::new(code)));
                            return self.close_with(SessionError::protocol(e));
                        }
                    }
                }
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<BindingEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            BindState::Binding {
                deadline,
                retransmit_at,
                ..
            } => Some(retransmit_at.map_or(*deadline, |r| r.min(*deadline))),
            BindState::Bound { rebinding, .. } => {
                let keepalive = self.keepalive_at();
                let dead = self.last_recv + self.dead_after;
                let mut t = keepalive.min(dead);
                if let Some((deadline, rtx, _)) = rebinding {
                    t = t.min(*deadline).min(*rtx);
                }
                Some(t)
            }
            BindState::Streaming | BindState::Closed => None,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            BindState::Binding {
                deadline,
                retransmit_at,
                rto,
            } => {
                if now >= *deadline {
                    let after = self.handshake_timeout;
                    return self.close_with(SessionError::Timeout {
                        which: "bind",
                        after,
                    });
                }
                if let Some(at) = retransmit_at
                    && now >= *at
                {
                    *rto *= 2;
                    *at = now + *rto;
                    self.send_bind(None);
                }
            }
            BindState::Bound {
                binding_id,
                token,
                rebinding,
            } => {
                if now >= self.last_recv + self.dead_after {
                    let after = self.dead_after;
                    return self.close_with(SessionError::Timeout {
                        which: "keepalive",
                        after,
                    });
                }
                let mut resend = None;
                if let Some((deadline, rtx, rto)) = rebinding {
                    if now >= *deadline {
                        *rebinding = None;
                    } else if now >= *rtx {
                        *rto *= 2;
                        *rtx = now + *rto;
                        resend = Some(Rebind {
                            binding_id: *binding_id,
                            binding_token: *token,
                        });
                    }
                }
                if resend.is_some() {
                    self.send_bind(resend);
                }
                if now >= self.keepalive_at() {
                    self.last_sent = now;
                    self.last_keepalive = now;
                    match self.path {
                        Path::Udp => self.queue_udp(UdpKind::Keepalive, &[]),
                        Path::Tcp => {
                            self.ping_seq += 1;
                            let n = self.ping_seq;
                            self.queue_frame(&Frame::Ping(n));
                        }
                    }
                }
            }
            BindState::Streaming | BindState::Closed => {}
        }
    }
}
