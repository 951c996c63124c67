//! The binding table of the UDP media relay.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use crate::Path;
use crate::error::{ErrorCode, SessionError};
use crate::frame::{BindMode, BindOk, Frame};
use crate::ticket::tokens_equal;
use crate::types::{Address, AppId};
use crate::udp::{DatagramClass, UdpHeader, UdpKind, classify};

use super::admission::{error_reply, secs_u16};
use super::config::random_u64;
use super::{BindRequest, Server};

/// A datagram the [`UdpRelay`] wants sent from the relay socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: Bytes,
}

/// Identifies a UDP bind waiting for the I/O layer's decision.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BindRequestId(u64);

/// Why [`UdpRelay::handle_datagram`] dropped a datagram (for counters).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum DropReason {
    /// Did not parse.
    Malformed,
    /// No binding with that id.
    UnknownBinding,
    /// The token did not match.
    BadToken,
    /// Right id and token but from another address (re-bind first).
    AddressMismatch,
    /// A bind from this address is already waiting for a decision.
    DuplicatePending,
    /// Too many binds waiting for decisions.
    TooManyPending,
    /// A bad bind whose error reply would be larger than the request.
    NoReplyFits,
}

/// Result of [`UdpRelay::handle_datagram`].
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayInput {
    /// Forward `payload` to the binding's destination (from the binding's own
    /// relay-side socket, so replies identify the binding).
    Forward {
        /// The binding.
        binding_id: u32,
        /// The media payload (a slice of the input, no copy).
        payload: Bytes,
    },
    /// A control datagram was handled: drain `poll_transmit` and `poll_event`.
    Handled,
    /// Dropped, and why.
    Dropped(DropReason),
}

/// Result of [`UdpRelay::handle_slice`]: [`RelayInput`] without a payload
/// buffer of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SliceInput {
    /// Forward `data[payload_start..]` to the binding's destination.
    Forward {
        /// The binding.
        binding_id: u32,
        /// Where the media payload starts in the datagram.
        payload_start: usize,
    },
    /// A control datagram was handled: drain `poll_transmit` and `poll_event`.
    Handled,
    /// Dropped, and why.
    Dropped(DropReason),
}

/// What the [`UdpRelay`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpRelayEvent {
    /// A ticket-checked bind: check the allowlist, open the binding's upstream
    /// socket, then call [`UdpRelay::accept_bind`] or [`UdpRelay::reject_bind`].
    BindRequested {
        /// Pass back to accept or reject.
        id: BindRequestId,
        /// The checked request.
        request: BindRequest,
        /// The client's address.
        client: SocketAddr,
    },
    /// A binding was created.
    Bound {
        /// Its id.
        binding_id: u32,
        /// The client's address.
        client: SocketAddr,
    },
    /// A binding moved to a new client address (NAT rebinding, ticket-proven).
    Rebound {
        /// Its id.
        binding_id: u32,
        /// The previous address.
        old: SocketAddr,
        /// The new address.
        new: SocketAddr,
    },
    /// A binding ended: close its upstream socket.
    BindingClosed {
        /// Its id.
        binding_id: u32,
        /// Why.
        reason: SessionError,
    },
    /// A control datagram was refused (malformed, or a `Bind` whose ticket
    /// did not verify), and its `Error` (if it fits) queued: for the I/O
    /// layer's log and its login-failure limit.
    Refused {
        /// The sender.
        client: SocketAddr,
        /// The refusal.
        code: ErrorCode,
    },
}

/// Public view of one UDP binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpBinding {
    /// The session.
    pub session_id: u64,
    /// The app.
    pub app_id: AppId,
    /// The client's current address.
    pub client: SocketAddr,
    /// The destination.
    pub destination: Address,
    token: u64,
    last_seen: Instant,
    deadline: Instant,
}

#[derive(Debug)]
struct PendingBind {
    request: BindRequest,
    client: SocketAddr,
    limit: usize,
    expires: Instant,
}

/// The binding table of the UDP media relay (all sockets of the range can
/// share one, or each socket can have its own).
///
/// Not a [`Machine`](crate::Machine): one table serves every client of a
/// relay socket, so its input carries the sender's address, its transmits
/// carry their destination ([`Transmit`]), and a data datagram returns its
/// forwarding decision at once ([`RelayInput`]) rather than as a queued
/// event (the per-packet fast path allocates nothing). The relay's receive
/// loop (batched `recvmmsg`, one socket per port) drives it directly.
#[derive(Debug)]
pub struct UdpRelay {
    server: Arc<Server>,
    bindings: HashMap<u32, UdpBinding>,
    by_client: HashMap<SocketAddr, u32>,
    pending: HashMap<BindRequestId, PendingBind>,
    pending_by_client: HashMap<SocketAddr, BindRequestId>,
    next_request: u64,
    next_sweep: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<UdpRelayEvent>,
}

impl UdpRelay {
    /// An empty binding table.
    #[must_use]
    pub fn new(server: Arc<Server>) -> Self {
        Self {
            server,
            bindings: HashMap::new(),
            by_client: HashMap::new(),
            pending: HashMap::new(),
            pending_by_client: HashMap::new(),
            next_request: 0,
            next_sweep: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Number of live bindings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// True when there is no binding.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// A binding by id.
    #[must_use]
    pub fn binding(&self, binding_id: u32) -> Option<&UdpBinding> {
        self.bindings.get(&binding_id)
    }

    fn sweep_interval(&self) -> Duration {
        (self.server.config.idle_timeout / 4).max(Duration::from_millis(250))
    }

    fn arm_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.sweep_interval());
        }
    }

    fn reply(&mut self, to: SocketAddr, contents: Bytes) {
        self.transmits.push_back(Transmit {
            destination: to,
            contents,
        });
    }

    fn reply_error(
        &mut self,
        to: SocketAddr,
        code: ErrorCode,
        message: Option<&str>,
        limit: usize,
    ) -> RelayInput {
        match error_reply(code, message, limit) {
            Some(b) => {
                self.reply(to, b);
                RelayInput::Handled
            }
            None => RelayInput::Dropped(DropReason::NoReplyFits),
        }
    }

    /// Handles one datagram received on a relay UDP port from `from`.
    ///
    /// Data from a bound client comes back as [`RelayInput::Forward`] with a
    /// zero-copy payload; everything else is answered through
    /// `poll_transmit`, never with more bytes than were received.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: Bytes) -> RelayInput {
        match self.handle_slice(now, from, &data) {
            SliceInput::Forward {
                binding_id,
                payload_start,
            } => RelayInput::Forward {
                binding_id,
                payload: data.slice(payload_start..),
            },
            SliceInput::Handled => RelayInput::Handled,
            SliceInput::Dropped(reason) => RelayInput::Dropped(reason),
        }
    }

    /// [`UdpRelay::handle_datagram`] for a borrowed datagram, as read into a
    /// reused batch buffer: data from a bound client comes back as
    /// [`SliceInput::Forward`] with where its payload starts in `data`.
    pub fn handle_slice(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> SliceInput {
        match classify(data) {
            DatagramClass::Relay => self.handle_relay(now, from, data),
            DatagramClass::Control => match self.handle_control(now, from, data) {
                RelayInput::Dropped(reason) => SliceInput::Dropped(reason),
                _ => SliceInput::Handled,
            },
            DatagramClass::Unknown => SliceInput::Dropped(DropReason::Malformed),
        }
    }

    fn handle_relay(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> SliceInput {
        let Ok((h, payload)) = UdpHeader::parse(data) else {
            return SliceInput::Dropped(DropReason::Malformed);
        };
        let payload_start = data.len() - payload.len();
        let Some(b) = self.bindings.get_mut(&h.binding_id) else {
            return SliceInput::Dropped(DropReason::UnknownBinding);
        };
        if !tokens_equal(b.token, h.binding_token) {
            return SliceInput::Dropped(DropReason::BadToken);
        }
        if b.client != from {
            return SliceInput::Dropped(DropReason::AddressMismatch);
        }
        b.last_seen = now;
        match h.kind {
            UdpKind::Data => SliceInput::Forward {
                binding_id: h.binding_id,
                payload_start,
            },
            UdpKind::Keepalive => {
                let ack = UdpHeader {
                    kind: UdpKind::KeepaliveAck,
                    ..h
                };
                self.reply(from, Bytes::copy_from_slice(&ack.to_array()));
                SliceInput::Handled
            }
            UdpKind::KeepaliveAck => SliceInput::Handled,
            UdpKind::Close => {
                self.remove(h.binding_id, SessionError::ClosedByPeer);
                SliceInput::Handled
            }
        }
    }

    /// [`UdpRelay::reply_error`], reported as [`UdpRelayEvent::Refused`].
    fn refuse(
        &mut self,
        from: SocketAddr,
        code: ErrorCode,
        message: Option<&str>,
        limit: usize,
    ) -> RelayInput {
        self.events
            .push_back(UdpRelayEvent::Refused { client: from, code });
        self.reply_error(from, code, message, limit)
    }

    fn handle_control(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> RelayInput {
        let limit = data.len();
        let bind = match Frame::parse(data) {
            Ok(Frame::Bind(b)) => b,
            Ok(_) => return self.refuse(from, ErrorCode::UNEXPECTED_FRAME, None, limit),
            Err(e) => {
                return self.refuse(from, e.wire_code(), Some(&e.to_string()), limit);
            }
        };
        let request = match self.server.check_bind(now, &bind, Path::Udp) {
            Ok(r) => r,
            Err(e) => return self.refuse(from, e.code, Some(e.message.as_str()), limit),
        };
        if let Some(rebind) = bind.rebind {
            return self.handle_rebind(
                now,
                from,
                &request,
                rebind.binding_id,
                rebind.binding_token,
                limit,
            );
        }
        // A retransmitted Bind whose BindOk was lost: answer again.
        if let Some(&id) = self.by_client.get(&from) {
            let b = &self.bindings[&id];
            if b.session_id == request.session_id && b.destination == request.destination {
                let ok = self.bind_ok(id, b.token);
                self.reply(from, ok);
                return RelayInput::Handled;
            }
            return self.reply_error(
                from,
                ErrorCode::UNEXPECTED_FRAME,
                Some("this address already has a binding; close it first"),
                limit,
            );
        }
        if self.pending_by_client.contains_key(&from) {
            return RelayInput::Dropped(DropReason::DuplicatePending);
        }
        if self.pending.len() >= self.server.config.max_pending_binds {
            return RelayInput::Dropped(DropReason::TooManyPending);
        }
        self.next_request += 1;
        let id = BindRequestId(self.next_request);
        self.pending.insert(
            id,
            PendingBind {
                request: request.clone(),
                client: from,
                limit,
                expires: now + self.server.config.handshake_timeout,
            },
        );
        self.pending_by_client.insert(from, id);
        self.arm_sweep(now);
        self.events.push_back(UdpRelayEvent::BindRequested {
            id,
            request,
            client: from,
        });
        RelayInput::Handled
    }

    fn handle_rebind(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request: &BindRequest,
        binding_id: u32,
        token: u64,
        limit: usize,
    ) -> RelayInput {
        let valid = self
            .bindings
            .get(&binding_id)
            .is_some_and(|b| b.session_id == request.session_id && tokens_equal(b.token, token));
        if !valid {
            return self.reply_error(from, ErrorCode::BINDING_NOT_FOUND, None, limit);
        }
        if let Some(&other) = self.by_client.get(&from)
            && other != binding_id
        {
            return self.reply_error(
                from,
                ErrorCode::UNEXPECTED_FRAME,
                Some("this address already has another binding"),
                limit,
            );
        }
        let b = self.bindings.get_mut(&binding_id).expect("checked above");
        let old = b.client;
        b.client = from;
        b.last_seen = now;
        let tok = b.token;
        if old != from {
            self.by_client.remove(&old);
            self.by_client.insert(from, binding_id);
            self.events.push_back(UdpRelayEvent::Rebound {
                binding_id,
                old,
                new: from,
            });
        }
        let ok = self.bind_ok(binding_id, tok);
        self.reply(from, ok);
        RelayInput::Handled
    }

    fn bind_ok(&self, binding_id: u32, token: u64) -> Bytes {
        let cfg = &self.server.config;
        Frame::BindOk(BindOk {
            binding_id,
            binding_token: token,
            mode: BindMode::Datagram,
            keepalive_secs: secs_u16(cfg.keepalive_interval),
            idle_timeout_secs: secs_u16(cfg.idle_timeout),
        })
        .to_bytes()
    }

    /// Creates the binding for a pending bind and queues its `BindOk`.
    /// Returns the new binding id.
    pub fn accept_bind(&mut self, now: Instant, id: BindRequestId) -> Result<u32, SessionError> {
        let Some(p) = self.pending.remove(&id) else {
            return Err(SessionError::InvalidState(
                "no such pending bind (expired or answered)",
            ));
        };
        self.pending_by_client.remove(&p.client);
        let mut binding_id;
        loop {
            let mut b = [0u8; 4];
            self.server.entropy.fill(&mut b);
            binding_id = u32::from_be_bytes(b);
            if binding_id != 0 && !self.bindings.contains_key(&binding_id) {
                break;
            }
        }
        let token = random_u64(&*self.server.entropy);
        let unix = self.server.unix_at(now);
        let deadline = now + Duration::from_secs(p.request.session_deadline.saturating_sub(unix));
        self.bindings.insert(
            binding_id,
            UdpBinding {
                session_id: p.request.session_id,
                app_id: p.request.app_id,
                client: p.client,
                destination: p.request.destination,
                token,
                last_seen: now,
                deadline,
            },
        );
        self.by_client.insert(p.client, binding_id);
        let ok = self.bind_ok(binding_id, token);
        if ok.len() <= p.limit {
            self.reply(p.client, ok);
        }
        self.arm_sweep(now);
        self.events.push_back(UdpRelayEvent::Bound {
            binding_id,
            client: p.client,
        });
        Ok(binding_id)
    }

    /// Refuses a pending bind with an error (shortened to the request's size).
    pub fn reject_bind(&mut self, id: BindRequestId, code: ErrorCode, message: Option<&str>) {
        if let Some(p) = self.pending.remove(&id) {
            self.pending_by_client.remove(&p.client);
            if let Some(b) = error_reply(code, message, p.limit) {
                self.reply(p.client, b);
            }
        }
    }

    /// Writes the header and `payload` of a datagram from the destination to
    /// the binding's client into `out`, and returns where to send it.
    /// `None` when the binding does not exist (drop the datagram).
    pub fn encapsulate(
        &self,
        binding_id: u32,
        payload: &[u8],
        out: &mut impl BufMut,
    ) -> Option<SocketAddr> {
        let b = self.bindings.get(&binding_id)?;
        UdpHeader {
            kind: UdpKind::Data,
            binding_id,
            binding_token: b.token,
        }
        .encode(out);
        out.put_slice(payload);
        Some(b.client)
    }

    /// Ends a binding: a `Close` datagram goes to the client.
    pub fn close_binding(&mut self, binding_id: u32) {
        if let Some(b) = self.bindings.get(&binding_id) {
            let h = UdpHeader {
                kind: UdpKind::Close,
                binding_id,
                binding_token: b.token,
            };
            let to = b.client;
            self.reply(to, Bytes::copy_from_slice(&h.to_array()));
            self.remove(binding_id, SessionError::ClosedLocally);
        }
    }

    fn remove(&mut self, binding_id: u32, reason: SessionError) {
        if let Some(b) = self.bindings.remove(&binding_id) {
            self.by_client.remove(&b.client);
            self.events
                .push_back(UdpRelayEvent::BindingClosed { binding_id, reason });
        }
    }

    /// Next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<UdpRelayEvent> {
        self.events.pop_front()
    }

    /// When [`UdpRelay::handle_timeout`] must be called next (a periodic sweep
    /// every quarter of the idle timeout while anything is bound or pending).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Sweeps: drops bindings idle for the idle timeout or past their
    /// session's end (the latter get a `Close`), and expires pending binds.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_sweep {
            Some(t) if now >= t => {}
            _ => return,
        }
        let idle = self.server.config.idle_timeout;
        let mut idle_ids = Vec::new();
        let mut old_ids = Vec::new();
        for (&id, b) in &self.bindings {
            if now >= b.last_seen + idle {
                idle_ids.push(id);
            } else if now >= b.deadline {
                old_ids.push(id);
            }
        }
        idle_ids.sort_unstable();
        old_ids.sort_unstable();
        for id in idle_ids {
            self.remove(
                id,
                SessionError::Timeout {
                    which: "idle",
                    after: idle,
                },
            );
        }
        for id in old_ids {
            if let Some(b) = self.bindings.get(&id) {
                let h = UdpHeader {
                    kind: UdpKind::Close,
                    binding_id: id,
                    binding_token: b.token,
                };
                let to = b.client;
                self.reply(to, Bytes::copy_from_slice(&h.to_array()));
            }
            self.remove(
                id,
                SessionError::Timeout {
                    which: "session lifetime",
                    after: self.server.config.max_session_lifetime,
                },
            );
        }
        let expired: Vec<BindRequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.expires)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.pending_by_client.remove(&p.client);
            }
        }
        self.next_sweep = if self.bindings.is_empty() && self.pending.is_empty() {
            None
        } else {
            Some(now + self.sweep_interval())
        };
    }
}
