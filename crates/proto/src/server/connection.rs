//! One TCP connection on an allocation port or the relay port, as a
//! sans-I/O [`Machine`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::FrameCodec;
use crate::error::{ErrorCode, SessionError};
use crate::frame::{Bind, BindMode, BindOk, ErrorFrame, Frame, MAX_DATAGRAM_PAYLOAD, Refresh};
use crate::ticket::Ticket;
use crate::types::AppId;
use crate::{Machine, Path};

use super::admission::secs_u16;
use super::{AllocationRequest, BindRequest, Server};

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
    /// When the binding last carried traffic (from the bind on): in
    /// datagram mode a `Datagram` frame either way. A `Ping` keeps no
    /// binding alive.
    last_recv: Instant,
    buf: BytesMut,
    codec: FrameCodec,
    /// Every frame queued for the client and not yet taken by
    /// [`poll_transmit`](Machine::poll_transmit), in order, in one buffer:
    /// a burst of small answers costs its bytes and nothing per frame. Its
    /// length is what `max_queued_bytes` bounds.
    out: BytesMut,
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

    /// Bytes of frames queued for the client and not yet taken by
    /// [`poll_transmit`](Machine::poll_transmit).
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }

    /// Whether a bound datagram-mode connection has reached its bound of
    /// queued bytes
    /// ([`ServerConfig::max_queued_bytes`](super::ServerConfig::max_queued_bytes)):
    /// it then decodes no further input, asks not to be read
    /// ([`wants_input`](Machine::wants_input)) and refuses datagrams for the
    /// client ([`send_datagram`](Self::send_datagram)) until its transmits
    /// are taken.
    #[must_use]
    pub fn is_backed_up(&self) -> bool {
        matches!(self.state, ConnState::Datagram { .. })
            && self.out.len() >= self.server.config.max_queued_bytes
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        let ConnState::Handshake { deadline } = self.state else {
            return self.handle_datagram_mode(now, frame);
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

    fn handle_datagram_mode(&mut self, now: Instant, frame: Frame) {
        match frame {
            Frame::Datagram(p) => {
                // Only the binding's traffic (this, or a datagram for the
                // client) is activity: a client that only pings goes idle.
                self.last_recv = now;
                self.events.push_back(ServerEvent::Datagram(p));
            }
            // Answered through the same bounded queue as everything else;
            // `handle_input` decodes no `Ping` while that queue is full.
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

    /// Queues a frame for the client: the one way anything is sent.
    fn queue(&mut self, f: &Frame) {
        self.out.reserve(f.encoded_len());
        f.encode(&mut self.out);
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
    /// Refused with [`SessionError::NotReading`] while the connection
    /// [is backed up](Self::is_backed_up): the datagram is dropped, as UDP
    /// may drop it. A datagram queued is the binding's traffic: it keeps
    /// the binding alive (a client that only listens is not idle).
    pub fn send_datagram(&mut self, now: Instant, payload: &[u8]) -> Result<(), SessionError> {
        if !matches!(self.state, ConnState::Datagram { .. }) {
            return Err(SessionError::InvalidState(
                "send_datagram needs a bound datagram-mode connection",
            ));
        }
        if self.is_backed_up() {
            return Err(SessionError::NotReading {
                queued: self.out.len(),
            });
        }
        if payload.len() > MAX_DATAGRAM_PAYLOAD {
            return Err(SessionError::InvalidState(
                "datagram larger than MAX_DATAGRAM_PAYLOAD",
            ));
        }
        let f = Frame::Datagram(Bytes::copy_from_slice(payload));
        self.queue(&f);
        self.last_recv = self.last_recv.max(now);
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
}

impl Machine for Connection {
    type Event = ServerEvent;
    fn handle_input(&mut self, now: Instant, data: &[u8]) {
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
            // So do frames that arrive while the client does not read what
            // it was sent: a `Ping` decoded now would add to that queue.
            // They are decoded once it is taken (`wants_input`).
            if self.is_backed_up() {
                return;
            }
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => self.handle_frame(now, frame),
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

    fn poll_transmit(&mut self) -> Option<Bytes> {
        // Everything queued, as one transmit.
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    fn wants_input(&self) -> bool {
        !self.is_backed_up()
    }

    fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
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

    fn handle_timeout(&mut self, now: Instant) {
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
                    // Idle either way; a client that also left its queue
                    // full (and so was not read) gets the reason that says so.
                    let reason = if self.is_backed_up() {
                        SessionError::NotReading {
                            queued: self.out.len(),
                        }
                    } else {
                        SessionError::Timeout {
                            which: "idle",
                            after: cfg_idle,
                        }
                    };
                    self.fail(ErrorCode::IDLE_TIMEOUT, None, reason);
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
