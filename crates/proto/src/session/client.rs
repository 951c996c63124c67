//! The member's side of the client ↔ media edge message channel
//! (`docs/protocol.md` §9): join or resume, reliable numbered messages with
//! cumulative acks, ping and keepalive deadlines, member notices.
//!
//! One [`ClientSession`] lives as long as the membership, across as many
//! connections as failovers need: [`ClientSession::connect`] starts each
//! connection (a fresh `Join` or a resume carrying `last_received`), and
//! what the edge did not acknowledge is resent after its `Joined`, so every
//! message arrives exactly once and in order.
//!
//! A connection whose edge stops answering without closing (black-holed,
//! crashed host, dead route) is noticed within about a second when there is
//! evidence that the edge should have spoken (see [`SilenceDetection`]), not
//! only at the keepalive timeout.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::reader::FrameReader;
use crate::ErrorCode;
use crate::SessionError;
use crate::frame::{Frame, Join, Joined, MAX_PAYLOAD, Member, Message, Resume};
use crate::reliable::{Inbox, Outbox, Received};

/// Timers of the member's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSessionConfig {
    /// A `Ping` goes out when nothing was sent for this long.
    pub keepalive_interval: Duration,
    /// The connection is declared dead when nothing arrived for this long.
    pub keepalive_timeout: Duration,
    /// Longest an in-order delivery waits for its `Ack` (`docs/protocol.md`
    /// §9.2: at most 200 ms).
    pub ack_delay: Duration,
    /// Early detection of an edge gone silent; `None`: only the keepalive
    /// timeout ends a silent connection.
    pub silence: Option<SilenceDetection>,
}

/// Early detection of an edge that stopped answering without closing.
///
/// Silence is *suspected* only with evidence that the edge should have
/// spoken: a message we sent has been waiting for its `Ack` (the edge acks
/// within 200 ms, `docs/protocol.md` §9.2) for `suspect_after` with nothing
/// arriving, or the edge had been talking at least every `suspect_after / 2`
/// and then nothing arrived for `suspect_after`. An idle connection (nothing
/// sent, nothing expected) is never suspected; keepalive pings are not
/// evidence either, so idle stays on the keepalive timeout. A suspicion is
/// confirmed by a probe: a `Ping` right away; when nothing at all arrives
/// within `probe_timeout`, the connection is [`Lost`](ClientEvent::Lost)
/// with [`SessionError::Silent`]. Anything arriving clears the suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilenceDetection {
    /// Silence this long with evidence makes the edge suspect.
    pub suspect_after: Duration,
    /// How long the probe waits for anything from the edge.
    pub probe_timeout: Duration,
}

impl SilenceDetection {
    /// The default suspicion threshold: 3.5× the edge's longest ack delay,
    /// so a slow ack plus a few hundred ms of round trip is not suspected.
    pub const SUSPECT_AFTER: Duration = Duration::from_millis(700);
    /// The default probe deadline: a live edge answers a `Ping` at once;
    /// 800 ms tolerates a congested path, and leaves room to fail over
    /// within 3 s of the silence.
    pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

    /// Longest time from the last frame received to the connection being
    /// declared lost, when there is evidence from the start.
    #[must_use]
    pub fn bound(&self) -> Duration {
        self.suspect_after + self.probe_timeout
    }
}

impl Default for SilenceDetection {
    fn default() -> Self {
        Self {
            suspect_after: Self::SUSPECT_AFTER,
            probe_timeout: Self::PROBE_TIMEOUT,
        }
    }
}

impl Default for ClientSessionConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(15),
            ack_delay: Duration::from_millis(200),
            silence: Some(SilenceDetection::default()),
        }
    }
}

/// What the member's side reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The edge accepted the `Join`. Messages it had not received are
    /// already queued again.
    Joined {
        /// The edge's answer.
        joined: Joined,
        /// Whether the earlier membership continued (false: a new one, with
        /// new numbering on both sides).
        resumed: bool,
        /// Members known before that the new membership forgot (only when a
        /// resume was refused and a fresh join followed).
        forgotten: Vec<Member>,
    },
    /// The edge refused the `Join` (`JoinRefused`, or an `Error` before
    /// `Joined`). The connection is over.
    Refused {
        /// The edge's code (`RESUME_FAILED`: join afresh).
        code: ErrorCode,
        /// The edge's explanation.
        message: String,
    },
    /// The next message in order from another member, delivered once.
    Message(Message),
    /// A member is (newly) present.
    MemberJoined(Member),
    /// A member left.
    MemberLeft(Member),
    /// A `Ping` went out (the owner refreshes its media registration).
    KeepaliveSent,
    /// The connection is unusable: nothing arrived in time, the edge sent an
    /// `Error`, or it broke the protocol. Drop it and [`connect`](ClientSession::connect)
    /// again.
    Lost(SessionError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection.
    Idle,
    /// `Join` sent, waiting for `Joined`.
    Joining,
    /// In the channel.
    Joined,
    /// This connection ended (lost, refused or left).
    Closed,
}

/// The member's side of the message channel, over a byte stream.
///
/// Implements [`Machine`](crate::Machine): feed it the stream's bytes, write
/// what it transmits.
#[derive(Debug, Clone)]
pub struct ClientSession {
    config: ClientSessionConfig,
    join: Join,
    phase: Phase,
    /// The membership, once joined.
    joined: Option<Joined>,
    /// Whether the current connection asked to resume.
    resuming: bool,
    outbox: Outbox,
    inbox: Inbox,
    /// Members present (member id → user id).
    members: HashMap<u32, u32>,
    reader: FrameReader,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
    ping_value: u64,
    last_tx: Instant,
    last_rx: Instant,
    /// When an unacknowledged delivery must be acked at the latest.
    ack_at: Option<Instant>,
    /// Since when we wait for the edge to acknowledge a message (reset by
    /// every frame that arrives while messages remain unacknowledged).
    awaiting_ack_since: Option<Instant>,
    /// Whether the edge has been talking often (its last frame came within
    /// half the suspicion threshold of the one before).
    edge_chatty: bool,
    /// The deadline of the probe sent on suspicion of silence.
    probe_deadline: Option<Instant>,
}

impl ClientSession {
    /// A session that will join with `join` (its `resume` is ignored: the
    /// session fills it in). Nothing is sent before
    /// [`connect`](Self::connect).
    #[must_use]
    pub fn new(config: ClientSessionConfig, mut join: Join, now: Instant) -> Self {
        join.resume = None;
        Self {
            config,
            join,
            phase: Phase::Idle,
            joined: None,
            resuming: false,
            outbox: Outbox::new(0),
            inbox: Inbox::new(),
            members: HashMap::new(),
            reader: FrameReader::new(MAX_PAYLOAD),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            ping_value: 0,
            last_tx: now,
            last_rx: now,
            ack_at: None,
            awaiting_ack_since: None,
            edge_chatty: false,
            probe_deadline: None,
        }
    }

    /// Starts a new connection: forgets what the previous one had buffered
    /// and queues `Join`, resuming the membership when `resume` is set and
    /// there is one.
    pub fn connect(&mut self, now: Instant, resume: bool) {
        self.reader.clear();
        self.transmits.clear();
        self.ack_at = None;
        self.clear_silence();
        let mut join = self.join.clone();
        self.resuming = false;
        if let (true, Some(joined)) = (resume, &self.joined) {
            join.resume = Some(Resume {
                member_id: joined.member_id,
                resume_token: joined.resume_token,
                last_received: self.inbox.last_received(),
            });
            self.resuming = true;
        }
        self.phase = Phase::Joining;
        self.last_tx = now;
        self.last_rx = now;
        self.queue(&Frame::Join(join));
    }

    /// Sends a message to the channel (numbered now; queued until the next
    /// `Joined` when not connected). Returns its sequence number.
    pub fn send(&mut self, now: Instant, payload: Bytes) -> u64 {
        let message = self.outbox.push(payload);
        let seq = message.seq;
        if self.phase == Phase::Joined {
            self.queue(&Frame::Message(message));
            self.awaiting_ack_since.get_or_insert(now);
        }
        seq
    }

    /// Queues `Leave`; the connection is over once it is written.
    pub fn leave(&mut self) {
        if self.phase == Phase::Joined {
            self.queue(&Frame::Leave);
        }
        self.phase = Phase::Closed;
    }

    /// The membership, once joined.
    #[must_use]
    pub fn joined(&self) -> Option<&Joined> {
        self.joined.as_ref()
    }

    /// Whether the current connection is in the channel.
    #[must_use]
    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Joined
    }

    /// The user id of a present member.
    #[must_use]
    pub fn user_id(&self, member_id: u32) -> Option<u32> {
        self.members.get(&member_id).copied()
    }

    /// Highest sequence number received in order from the edge.
    #[must_use]
    pub fn last_received(&self) -> u64 {
        self.inbox.last_received()
    }

    /// Messages sent and not yet acknowledged by the edge.
    #[must_use]
    pub fn unacked(&self) -> usize {
        self.outbox.unacked()
    }

    fn queue(&mut self, frame: &Frame) {
        let mut buf = BytesMut::with_capacity(frame.encoded_len());
        frame.encode(&mut buf);
        self.transmits.push_back(buf.freeze());
    }

    fn queue_now(&mut self, now: Instant, frame: &Frame) {
        self.queue(frame);
        self.last_tx = now;
    }

    fn lose(&mut self, error: SessionError) {
        self.phase = Phase::Closed;
        self.transmits.clear();
        self.ack_at = None;
        self.clear_silence();
        self.events.push_back(ClientEvent::Lost(error));
    }

    fn clear_silence(&mut self) {
        self.awaiting_ack_since = None;
        self.edge_chatty = false;
        self.probe_deadline = None;
    }

    /// When silence becomes suspect (`None`: no evidence, or a probe is
    /// already out).
    fn suspect_at(&self) -> Option<Instant> {
        let silence = self.config.silence?;
        if self.probe_deadline.is_some() {
            return None;
        }
        let quiet = self
            .edge_chatty
            .then(|| self.last_rx + silence.suspect_after);
        let unacked = self.awaiting_ack_since.map(|t| t + silence.suspect_after);
        match (quiet, unacked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn send_ack(&mut self, now: Instant) {
        let ack = self.inbox.ack();
        self.ack_at = None;
        self.queue_now(now, &Frame::Ack(ack));
    }

    fn on_joined(&mut self, now: Instant, joined: Joined) {
        let resumed = self.resuming && joined.resumed;
        let mut forgotten = Vec::new();
        if !resumed {
            // A new membership: new numbering on both sides; unacknowledged
            // messages are sent again under the new member id.
            let pending: Vec<Bytes> = self.outbox.resend_after(0).map(|m| m.payload).collect();
            self.outbox = Outbox::new(joined.member_id);
            for payload in pending {
                self.outbox.push(payload);
            }
            self.inbox = Inbox::new();
            let mut members: Vec<_> = self.members.drain().collect();
            members.sort_unstable();
            forgotten = members
                .into_iter()
                .map(|(member_id, user_id)| Member { member_id, user_id })
                .collect();
        }
        self.joined = Some(joined);
        self.phase = Phase::Joined;
        let resend: Vec<Message> = self.outbox.resend_after(joined.last_received).collect();
        for message in resend {
            self.queue_now(now, &Frame::Message(message));
            self.awaiting_ack_since.get_or_insert(now);
        }
        self.events.push_back(ClientEvent::Joined {
            joined,
            resumed,
            forgotten,
        });
    }

    fn on_frame(&mut self, now: Instant, frame: Frame) {
        match (self.phase, frame) {
            (_, Frame::Ping(v)) => self.queue(&Frame::Pong(v)),
            (Phase::Joining, Frame::Joined(joined)) => self.on_joined(now, joined),
            (Phase::Joining, Frame::JoinRefused(e) | Frame::Error(e)) => {
                self.phase = Phase::Closed;
                self.transmits.clear();
                self.events.push_back(ClientEvent::Refused {
                    code: e.code,
                    message: e.message.as_str().to_owned(),
                });
            }
            (Phase::Joined, Frame::Message(message)) => match self.inbox.receive(&message) {
                Received::Deliver => {
                    if self.ack_at.is_none() {
                        self.ack_at = Some(now + self.config.ack_delay);
                    }
                    self.events.push_back(ClientEvent::Message(message));
                    if self.inbox.ack_due() {
                        self.send_ack(now);
                    }
                }
                Received::Duplicate => {}
                // Cannot happen on one stream; the edge resends in order.
                Received::Gap => {}
            },
            (Phase::Joined, Frame::Ack(seq)) => self.outbox.acknowledge(seq),
            (Phase::Joined, Frame::Pong(_)) => {}
            (Phase::Joined, Frame::MemberJoined(m)) => {
                if self.members.insert(m.member_id, m.user_id).is_none() {
                    self.events.push_back(ClientEvent::MemberJoined(m));
                }
            }
            (Phase::Joined, Frame::MemberLeft(m)) => {
                if self.members.remove(&m.member_id).is_some() {
                    self.events.push_back(ClientEvent::MemberLeft(m));
                }
            }
            (Phase::Joined, Frame::Error(e)) => self.lose(SessionError::Refused {
                code: e.code,
                message: e.message.as_str().to_owned(),
            }),
            (phase, other) => self.lose(SessionError::UnexpectedFrame {
                found: other.frame_type(),
                state: match phase {
                    Phase::Joining => "joining the channel",
                    _ => "in the channel",
                },
            }),
        }
    }
}

impl crate::Machine for ClientSession {
    type Event = ClientEvent;

    fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if !matches!(self.phase, Phase::Joining | Phase::Joined) {
            return;
        }
        self.reader.extend(data);
        let previous_rx = self.last_rx;
        // The join's answer does not count as the edge talking often.
        let was_joined = self.phase == Phase::Joined;
        let mut arrived = false;
        while matches!(self.phase, Phase::Joining | Phase::Joined) {
            match self.reader.next_frame() {
                Ok(Some(frame)) => {
                    self.last_rx = now;
                    arrived = true;
                    self.on_frame(now, frame);
                }
                Ok(None) => break,
                Err(e) => return self.lose(SessionError::protocol(e)),
            }
        }
        if arrived && self.phase == Phase::Joined {
            // The edge is alive: the suspicion (if any) is over, and what we
            // still wait for is waited for from now.
            self.probe_deadline = None;
            self.edge_chatty = was_joined
                && self.config.silence.is_some_and(|s| {
                    now.saturating_duration_since(previous_rx) <= s.suspect_after / 2
                });
            self.awaiting_ack_since = (self.outbox.unacked() > 0).then_some(now);
        }
        // Everything that arrived is handled: acknowledge it now, unless a
        // frame is half-read (its rest is likely close behind).
        if self.phase == Phase::Joined && self.inbox.has_unacked() && self.reader.is_empty() {
            self.send_ack(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Joined {
            return None;
        }
        let ping_at = self.last_tx + self.config.keepalive_interval;
        let dead_at = self.last_rx + self.config.keepalive_timeout;
        [self.ack_at, self.suspect_at(), self.probe_deadline]
            .into_iter()
            .flatten()
            .chain([ping_at, dead_at])
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Joined {
            return;
        }
        if now >= self.last_rx + self.config.keepalive_timeout {
            return self.lose(SessionError::Timeout {
                which: "keepalive",
                after: self.config.keepalive_timeout,
            });
        }
        if let (Some(at), Some(silence)) = (self.probe_deadline, self.config.silence) {
            if now >= at {
                return self.lose(SessionError::Silent {
                    after: now.saturating_duration_since(self.last_rx),
                    probe: silence.probe_timeout,
                });
            }
        }
        if let (Some(at), Some(silence)) = (self.suspect_at(), self.config.silence) {
            if now >= at {
                // Suspected: probe at once with a short deadline.
                self.ping_value += 1;
                self.queue_now(now, &Frame::Ping(self.ping_value));
                self.probe_deadline = Some(now + silence.probe_timeout);
            }
        }
        if self.ack_at.is_some_and(|at| now >= at) {
            self.send_ack(now);
        }
        if now >= self.last_tx + self.config.keepalive_interval {
            self.ping_value += 1;
            self.queue_now(now, &Frame::Ping(self.ping_value));
            self.events.push_back(ClientEvent::KeepaliveSent);
        }
    }
}
