//! The edge's shared state: channels, members, and what each member's
//! connection still has to write.
//!
//! One `std::sync::Mutex` guards it; it is never held across an `.await`.
//! The message channel takes it once per read batch and once per write batch,
//! the media path once per datagram. Everything a connection writes goes
//! through its member's `pending` queue, in order, so a `MemberLeft` never
//! overtakes the messages its member sent before leaving.
//!
//! The table holds no runtime types: it reaches a connection's task through
//! [`ConnSignal`], and each connection's protocol is proto's `EdgeSession`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use cloudproxy_proto::frame::{ErrorFrame, Frame, Join, Joined, Media, Member, Message};
use cloudproxy_proto::reliable::{Inbox, Outbox, Received};
use cloudproxy_proto::{AppId, ChannelName, ErrorCode};

use super::config::EdgeConfig;
use super::conn::Lost;
use super::stats::{Counters, add, bump, set};

/// Most frames moved from `pending` into one write batch, by encoded size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// A channel is named by its app and its name: two apps may use the same name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ChannelKey {
    app: AppId,
    channel: ChannelName,
}

#[derive(Debug, Default)]
struct Channel {
    /// Member ids in join order.
    members: Vec<u32>,
}

/// How the membership table reaches the task serving a connection, without
/// knowing the runtime it runs on (no tokio types in the table).
pub(crate) trait ConnSignal: Send + Sync + std::fmt::Debug {
    /// Frames were queued for the connection to write.
    fn frames_queued(&self);
    /// The connection no longer serves its member (another took over, or
    /// the member was removed).
    fn superseded(&self);
}

/// The connection currently serving a member.
#[derive(Debug)]
struct ConnSlot {
    id: u64,
    signal: Arc<dyn ConnSignal>,
}

#[derive(Debug, Default, Clone, Copy)]
struct MemberCounts {
    messages_in: u64,
    messages_out: u64,
    media_in: u64,
    media_out: u64,
}

#[derive(Debug)]
struct MemberState {
    member_id: u32,
    user_id: u32,
    key: Arc<ChannelKey>,
    resume_token: u64,
    media_token: u64,
    /// Messages from this member's client.
    inbox: Inbox,
    /// Messages to this member's client, each with its sender's id.
    outbox: Outbox,
    /// `None` while the member lingers.
    conn: Option<ConnSlot>,
    /// Frames the current connection still has to write, in order.
    pending: VecDeque<Frame>,
    /// Members this client has been told are present (member id → user id).
    announced: HashMap<u32, u32>,
    /// Where this member's media goes: the source of its latest valid `Media`.
    media_addr: Option<SocketAddr>,
    /// Bumped at each disconnection and resume; a linger timer only removes
    /// the member when the generation it was armed with is still current.
    linger_gen: u64,
    joined_at: Instant,
    counts: MemberCounts,
}

impl MemberState {
    /// Queues a frame on the current connection. Returns false when the
    /// queue is full (the member is then evicted by the caller). Without a
    /// connection the frame is dropped: messages stay in the outbox for a
    /// resume, notices are reconciled at resume.
    fn enqueue(&mut self, frame: Frame, max_queued: usize) -> bool {
        let Some(conn) = &self.conn else {
            return true;
        };
        if self.pending.len() >= max_queued {
            return false;
        }
        self.pending.push_back(frame);
        conn.signal.frames_queued();
        true
    }
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<u32, MemberState>,
    channels: HashMap<ChannelKey, Channel>,
    lingering: u64,
}

/// What a connection task holds once its `Join` is accepted.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub(crate) member_id: u32,
    pub(crate) conn_id: u64,
}

/// What the reader does after a batch of frames.
#[derive(Debug)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// The client sent `Leave`.
    Leave,
    /// This connection no longer serves the member (resumed elsewhere, or
    /// the member was removed).
    Gone,
    /// The client broke the protocol: send this error, remove the member.
    Protocol(ErrorFrame),
    /// The client sent an `Error`: remove the member, no answer.
    PeerError(ErrorFrame),
}

/// Why a media datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaDrop {
    UnknownMember,
    BadToken,
}

/// The edge's state and counters, shared by every task of one edge.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EdgeConfig,
    app_ids: Option<Vec<AppId>>,
    pub(crate) counters: Counters,
    state: Mutex<State>,
    next_conn_id: AtomicU64,
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> ErrorFrame {
    ErrorFrame::with_message(code, message)
}

/// Compares two secrets without an early exit.
fn ct_eq(a: u64, b: u64) -> bool {
    std::hint::black_box(a ^ b) == 0
}

fn random_nonzero_u64() -> Result<u64, ErrorFrame> {
    loop {
        let v = getrandom::u64().map_err(|e| {
            refusal(
                ErrorCode::INTERNAL,
                format!("no randomness for member tokens: {e}"),
            )
        })?;
        if v != 0 {
            return Ok(v);
        }
    }
}

impl Shared {
    pub(crate) fn new(config: EdgeConfig, app_ids: Option<Vec<AppId>>) -> Self {
        Self {
            config,
            app_ids,
            counters: Counters::default(),
            state: Mutex::new(State::default()),
            next_conn_id: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving anyway
        // rather than take every other member down with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update_gauges(&self, st: &State) {
        set(&self.counters.members, st.members.len() as u64);
        set(&self.counters.channels, st.channels.len() as u64);
        set(&self.counters.members_lingering, st.lingering);
    }

    fn new_slot(&self, signal: Arc<dyn ConnSignal>, member_id: u32) -> (ConnSlot, ConnHandle) {
        let id = self.next_conn_id.fetch_add(1, Relaxed);
        (
            ConnSlot { id, signal },
            ConnHandle {
                member_id,
                conn_id: id,
            },
        )
    }

    /// Handles a `Join` (fresh or resume). On success the member's pending
    /// queue already holds `Joined` and the notices that follow it.
    pub(crate) fn join(
        &self,
        join: &Join,
        peer: SocketAddr,
        signal: Arc<dyn ConnSignal>,
    ) -> Result<ConnHandle, ErrorFrame> {
        if let Some(apps) = &self.app_ids {
            if !apps.contains(&join.app_id) {
                bump(&self.counters.joins_refused);
                tracing::info!(app = %join.app_id, channel = %join.channel, user_id = join.user_id,
                    %peer, "join refused: app not served by this edge");
                return Err(refusal(
                    ErrorCode::JOIN_REFUSED,
                    format!("app id {} is not served by this edge", join.app_id),
                ));
            }
        }
        let key = ChannelKey {
            app: join.app_id.clone(),
            channel: join.channel.clone(),
        };
        let mut st = self.lock();
        let result = match join.resume {
            Some(resume) => self.resume(&mut st, &key, join.user_id, resume, peer, signal),
            None => self.fresh_join(&mut st, key, join.user_id, peer, signal),
        };
        if result.is_err() {
            bump(&self.counters.joins_refused);
        }
        self.update_gauges(&st);
        result
    }

    fn fresh_join(
        &self,
        st: &mut State,
        key: ChannelKey,
        user_id: u32,
        peer: SocketAddr,
        signal: Arc<dyn ConnSignal>,
    ) -> Result<ConnHandle, ErrorFrame> {
        let refuse = |why: String| {
            tracing::info!(app = %key.app, channel = %key.channel, user_id, %peer,
                reason = %why, "join refused");
            refusal(ErrorCode::JOIN_REFUSED, why)
        };
        match st.channels.get(&key) {
            Some(ch) if ch.members.len() >= self.config.max_members_per_channel => {
                return Err(refuse(format!(
                    "channel is full ({} members)",
                    ch.members.len()
                )));
            }
            None if st.channels.len() >= self.config.max_channels => {
                return Err(refuse(format!(
                    "edge is at its channel limit ({})",
                    st.channels.len()
                )));
            }
            _ => {}
        }
        let member_id = loop {
            let id = random_nonzero_u64()? as u32;
            if id != 0 && !st.members.contains_key(&id) {
                break id;
            }
        };
        let resume_token = random_nonzero_u64()?;
        let media_token = random_nonzero_u64()?;
        let (slot, handle) = self.new_slot(signal, member_id);
        let max_queued = self.config.max_queued_frames;

        let mut member = MemberState {
            member_id,
            user_id,
            key: Arc::new(key.clone()),
            resume_token,
            media_token,
            inbox: Inbox::new(),
            outbox: Outbox::new(0),
            conn: Some(slot),
            pending: VecDeque::new(),
            announced: HashMap::new(),
            media_addr: None,
            linger_gen: 0,
            joined_at: Instant::now(),
            counts: MemberCounts::default(),
        };
        member.pending.push_back(Frame::Joined(Joined {
            member_id,
            resume_token,
            media_token,
            last_received: 0,
            resumed: false,
        }));

        let channel = st.channels.entry(key.clone()).or_default();
        let others = channel.members.clone();
        channel.members.push(member_id);
        let mut evict = Vec::new();
        for other_id in others {
            let Some(other) = st.members.get_mut(&other_id) else {
                continue;
            };
            member.pending.push_back(Frame::MemberJoined(Member {
                member_id: other_id,
                user_id: other.user_id,
            }));
            member.announced.insert(other_id, other.user_id);
            if other.conn.is_some() {
                let notice = Frame::MemberJoined(Member { member_id, user_id });
                if other.enqueue(notice, max_queued) {
                    other.announced.insert(member_id, user_id);
                } else {
                    evict.push(other_id);
                }
            }
        }
        st.members.insert(member_id, member);
        bump(&self.counters.joins);
        tracing::info!(app = %key.app, channel = %key.channel, member_id, user_id, %peer,
            members = st.channels.get(&key).map_or(0, |c| c.members.len()), "member joined");
        for id in evict {
            self.remove_member(st, id, "connection not draining (queue full)");
            bump(&self.counters.members_evicted);
        }
        Ok(handle)
    }

    fn resume(
        &self,
        st: &mut State,
        key: &ChannelKey,
        user_id: u32,
        resume: cloudproxy_proto::frame::Resume,
        peer: SocketAddr,
        signal: Arc<dyn ConnSignal>,
    ) -> Result<ConnHandle, ErrorFrame> {
        let member_id = resume.member_id;
        let valid = st.members.get(&member_id).is_some_and(|m| {
            // Check every field, token in constant time, before deciding.
            let token_ok = ct_eq(m.resume_token, resume.resume_token);
            token_ok & (*m.key == *key) & (m.user_id == user_id)
        });
        if !valid {
            tracing::info!(app = %key.app, channel = %key.channel, member_id, user_id, %peer,
                "resume refused: unknown member, expired membership or wrong token");
            return Err(refusal(
                ErrorCode::RESUME_FAILED,
                "no membership to resume with this member id and token",
            ));
        }
        let (slot, handle) = self.new_slot(signal, member_id);

        // Snapshot of the other members, for the notices below.
        let present: Vec<(u32, u32)> = st
            .channels
            .get(key)
            .map(|c| {
                c.members
                    .iter()
                    .filter(|&&id| id != member_id)
                    .filter_map(|id| st.members.get(id).map(|m| (*id, m.user_id)))
                    .collect()
            })
            .unwrap_or_default();

        let Some(m) = st.members.get_mut(&member_id) else {
            return Err(refusal(ErrorCode::RESUME_FAILED, "membership vanished"));
        };
        let took_over = match m.conn.replace(slot) {
            Some(old) => {
                // The old connection is still open (its loss not noticed
                // yet): the new one takes over and the old one is closed.
                old.signal.superseded();
                true
            }
            None => false,
        };
        m.linger_gen += 1;
        m.pending.clear();
        m.pending.push_back(Frame::Joined(Joined {
            member_id,
            resume_token: m.resume_token,
            media_token: m.media_token,
            last_received: m.inbox.last_received(),
            resumed: true,
        }));
        for &(id, uid) in &present {
            m.pending.push_back(Frame::MemberJoined(Member {
                member_id: id,
                user_id: uid,
            }));
            m.announced.insert(id, uid);
        }
        let resend: Vec<Message> = m.outbox.resend_after(resume.last_received).collect();
        let resent = resend.len();
        m.pending.extend(resend.into_iter().map(Frame::Message));
        let gone: Vec<(u32, u32)> = m
            .announced
            .iter()
            .filter(|(id, _)| !present.iter().any(|(p, _)| p == *id))
            .map(|(&id, &uid)| (id, uid))
            .collect();
        for (id, uid) in gone {
            m.announced.remove(&id);
            m.pending.push_back(Frame::MemberLeft(Member {
                member_id: id,
                user_id: uid,
            }));
        }
        if let Some(conn) = &m.conn {
            conn.signal.frames_queued();
        }
        let edge_last = m.inbox.last_received();
        if !took_over {
            st.lingering = st.lingering.saturating_sub(1);
        }
        bump(&self.counters.resumes);
        tracing::info!(app = %key.app, channel = %key.channel, member_id, user_id, %peer,
            client_last_received = resume.last_received, edge_last_received = edge_last,
            resent, took_over, "member resumed");
        Ok(handle)
    }

    /// Moves up to a write batch of pending frames into `out`. `false` when
    /// this connection no longer serves the member.
    pub(crate) fn take_pending(&self, h: &ConnHandle, out: &mut VecDeque<Frame>) -> bool {
        let mut st = self.lock();
        let Some(m) = st.members.get_mut(&h.member_id) else {
            return false;
        };
        if m.conn.as_ref().map(|c| c.id) != Some(h.conn_id) {
            return false;
        }
        let mut bytes = 0;
        while bytes < WRITE_BATCH_BYTES {
            let Some(f) = m.pending.pop_front() else {
                break;
            };
            bytes += f.encoded_len();
            out.push_back(f);
        }
        true
    }

    /// Applies a batch of frames read from a member's connection.
    pub(crate) fn on_frames(&self, h: &ConnHandle, frames: &mut Vec<Frame>) -> Flow {
        let mut st = self.lock();
        let flow = self.on_frames_locked(&mut st, h, frames);
        self.update_gauges(&st);
        flow
    }

    fn on_frames_locked(&self, st: &mut State, h: &ConnHandle, frames: &mut Vec<Frame>) -> Flow {
        let max_queued = self.config.max_queued_frames;
        let mut ack_needed = false;
        let mut evict = Vec::new();
        let mut flow = Flow::Continue;
        for frame in frames.drain(..) {
            let Some(m) = st.members.get_mut(&h.member_id) else {
                return Flow::Gone;
            };
            if m.conn.as_ref().map(|c| c.id) != Some(h.conn_id) {
                return Flow::Gone;
            }
            match frame {
                Frame::Message(msg) => match m.inbox.receive(&msg) {
                    Received::Deliver => {
                        ack_needed = true;
                        m.counts.messages_in += 1;
                        bump(&self.counters.messages_in);
                        let key = m.key.clone();
                        self.relay_message(st, &key, h.member_id, msg.payload, &mut evict);
                        let Some(m) = st.members.get_mut(&h.member_id) else {
                            return Flow::Gone;
                        };
                        if m.inbox.ack_due() {
                            let ack = Frame::Ack(m.inbox.ack());
                            ack_needed = false;
                            if !m.enqueue(ack, max_queued) {
                                evict.push(h.member_id);
                            }
                        }
                    }
                    Received::Duplicate | Received::Gap => {
                        // Duplicates are acknowledged again (the client may
                        // have missed the first ack); a gap cannot happen on
                        // one TCP connection and is dropped.
                        ack_needed = true;
                        bump(&self.counters.messages_dropped);
                    }
                },
                Frame::Ack(seq) => m.outbox.acknowledge(seq),
                Frame::Ping(v) => {
                    if !m.enqueue(Frame::Pong(v), max_queued) {
                        evict.push(h.member_id);
                    }
                }
                Frame::Pong(_) => {}
                Frame::Leave => {
                    flow = Flow::Leave;
                    break;
                }
                Frame::Error(e) => {
                    flow = Flow::PeerError(e);
                    break;
                }
                Frame::Join(_) => {
                    flow = Flow::Protocol(refusal(
                        ErrorCode::UNEXPECTED_FRAME,
                        "Join on a connection that already joined",
                    ));
                    break;
                }
                other => {
                    flow = Flow::Protocol(refusal(
                        ErrorCode::UNEXPECTED_FRAME,
                        format!(
                            "{} frame is not allowed on the edge message channel",
                            other.frame_type()
                        ),
                    ));
                    break;
                }
            }
        }
        if ack_needed {
            if let Some(m) = st.members.get_mut(&h.member_id) {
                let ack = Frame::Ack(m.inbox.ack());
                if !m.enqueue(ack, max_queued) {
                    evict.push(h.member_id);
                }
            }
        }
        evict.sort_unstable();
        evict.dedup();
        for id in evict {
            self.remove_member(
                st,
                id,
                "too far behind (unacknowledged or unsent backlog full)",
            );
            bump(&self.counters.members_evicted);
            if id == h.member_id {
                flow = Flow::Gone;
            }
        }
        flow
    }

    /// Queues a message from `sender` to every other member of its channel.
    fn relay_message(
        &self,
        st: &mut State,
        key: &ChannelKey,
        sender: u32,
        payload: Bytes,
        evict: &mut Vec<u32>,
    ) {
        let Some(channel) = st.channels.get(key) else {
            return;
        };
        let max_queued = self.config.max_queued_frames;
        let mut delivered = 0u64;
        for &rid in &channel.members {
            if rid == sender {
                continue;
            }
            let Some(r) = st.members.get_mut(&rid) else {
                continue;
            };
            let msg = r.outbox.push_from(sender, payload.clone());
            r.counts.messages_out += 1;
            delivered += 1;
            let over = r.outbox.unacked() > self.config.max_unacked_messages
                || r.outbox.unacked_bytes() > self.config.max_unacked_bytes;
            if over || !r.enqueue(Frame::Message(msg), max_queued) {
                evict.push(rid);
            }
        }
        add(&self.counters.messages_out, delivered);
    }

    /// The member's connection ended without `Leave`: it lingers. Returns the
    /// linger generation to arm the removal timer with, or `None` when this
    /// connection no longer served the member.
    pub(crate) fn connection_lost(&self, h: &ConnHandle, reason: &Lost) -> Option<u64> {
        let mut st = self.lock();
        let m = st.members.get_mut(&h.member_id)?;
        if m.conn.as_ref().map(|c| c.id) != Some(h.conn_id) {
            return None;
        }
        m.conn = None;
        m.pending.clear();
        m.linger_gen += 1;
        let generation = m.linger_gen;
        tracing::info!(app = %m.key.app, channel = %m.key.channel, member_id = m.member_id,
            user_id = m.user_id, %reason, linger_ms = self.config.member_linger_ms,
            unacked_to_client = m.outbox.unacked(), "member connection lost; lingering");
        st.lingering += 1;
        self.update_gauges(&st);
        Some(generation)
    }

    /// Removes the member this connection serves (after `Leave` or a protocol
    /// error). Nothing happens if the connection no longer serves it.
    pub(crate) fn remove(&self, h: &ConnHandle, reason: &str) {
        let mut st = self.lock();
        let current = st
            .members
            .get(&h.member_id)
            .is_some_and(|m| m.conn.as_ref().map(|c| c.id) == Some(h.conn_id));
        if current {
            self.remove_member(&mut st, h.member_id, reason);
        }
        self.update_gauges(&st);
    }

    /// The linger timer armed with `generation` fired.
    pub(crate) fn expire(&self, member_id: u32, generation: u64) {
        let mut st = self.lock();
        let due = st
            .members
            .get(&member_id)
            .is_some_and(|m| m.conn.is_none() && m.linger_gen == generation);
        if due {
            self.remove_member(&mut st, member_id, "linger time expired");
            bump(&self.counters.linger_expired);
        }
        self.update_gauges(&st);
    }

    fn remove_member(&self, st: &mut State, member_id: u32, reason: &str) {
        let Some(m) = st.members.remove(&member_id) else {
            return;
        };
        match &m.conn {
            Some(conn) => conn.signal.superseded(),
            None => st.lingering = st.lingering.saturating_sub(1),
        }
        let mut others = Vec::new();
        if let Entry::Occupied(mut e) = st.channels.entry(ChannelKey::clone(&m.key)) {
            e.get_mut().members.retain(|&id| id != member_id);
            if e.get().members.is_empty() {
                e.remove();
            } else {
                others = e.get().members.clone();
            }
        }
        let max_queued = self.config.max_queued_frames;
        let mut evict = Vec::new();
        for id in others {
            let Some(o) = st.members.get_mut(&id) else {
                continue;
            };
            // A lingering member keeps the entry and is told at resume.
            if o.conn.is_some() && o.announced.remove(&member_id).is_some() {
                let notice = Frame::MemberLeft(Member {
                    member_id,
                    user_id: m.user_id,
                });
                if !o.enqueue(notice, max_queued) {
                    evict.push(id);
                }
            }
        }
        tracing::info!(app = %m.key.app, channel = %m.key.channel, member_id, user_id = m.user_id,
            messages_in = m.counts.messages_in, messages_out = m.counts.messages_out,
            media_in = m.counts.media_in, media_out = m.counts.media_out,
            unacked_to_client = m.outbox.unacked(),
            duration_ms = m.joined_at.elapsed().as_millis() as u64, reason, "member left");
        for id in evict {
            self.remove_member(st, id, "connection not draining (queue full)");
            bump(&self.counters.members_evicted);
        }
    }

    /// Checks a media datagram from `src` and fills `out` with the addresses
    /// to forward it to. Learns `src` as the sender's media address. An empty
    /// payload is a registration: it is learnt, not forwarded (`out` stays
    /// empty), and the caller confirms it to `src`.
    pub(crate) fn media(
        &self,
        media: &Media,
        src: SocketAddr,
        out: &mut Vec<SocketAddr>,
    ) -> Result<(), MediaDrop> {
        out.clear();
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(m) = st.members.get_mut(&media.member_id) else {
            return Err(MediaDrop::UnknownMember);
        };
        if !ct_eq(m.media_token, media.token) {
            return Err(MediaDrop::BadToken);
        }
        m.media_addr = Some(src);
        if media.payload.is_empty() {
            return Ok(());
        }
        m.counts.media_in += 1;
        let key = m.key.clone();
        let Some(channel) = st.channels.get(&*key) else {
            return Ok(());
        };
        for &id in &channel.members {
            if id == media.member_id {
                continue;
            }
            if let Some(r) = st.members.get_mut(&id) {
                if let Some(addr) = r.media_addr {
                    r.counts.media_out += 1;
                    out.push(addr);
                }
            }
        }
        Ok(())
    }
}
