//! The client ↔ media edge message channel machines (`session::client` and
//! `session::edge`) against each other, on a simulated clock and network:
//! keepalive, resume, and exactly-once in-order delivery across a failover.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_proto::frame::{ErrorFrame, Frame, Join, Joined, Member};
use cloudproxy_proto::reliable::{Inbox, Outbox, Received};
use cloudproxy_proto::session::{
    ClientEvent, ClientSession, ClientSessionConfig, EdgeEvent, EdgeSession, EdgeSessionConfig,
    HandshakeFailure, SilenceDetection,
};
use cloudproxy_proto::{AppId, ChannelName, ErrorCode, Machine, SessionError};
use proptest::prelude::*;

const CLIENT: ClientSessionConfig = ClientSessionConfig {
    keepalive_interval: Duration::from_secs(5),
    keepalive_timeout: Duration::from_secs(15),
    ack_delay: Duration::from_millis(200),
    silence: None,
};

const EDGE: EdgeSessionConfig = EdgeSessionConfig {
    handshake_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_frame_len: 64 * 1024,
};

fn join(user_id: u32) -> Join {
    Join {
        app_id: AppId::new("app").unwrap(),
        channel: ChannelName::new("room").unwrap(),
        user_id,
        resume: None,
    }
}

/// A member as the simulated edge keeps it across connections.
struct Record {
    user_id: u32,
    resume_token: u64,
    inbox: Inbox,
    /// Messages to this member (all from the one other member).
    outbox: Outbox,
    conn: Option<usize>,
}

/// One TCP connection between a client (by index) and the edge.
struct Conn {
    client: usize,
    edge: EdgeSession,
    member: Option<u32>,
    to_edge: VecDeque<Bytes>,
    to_client: VecDeque<Bytes>,
    alive: bool,
}

/// Two clients and one edge with a two-member channel, on a simulated clock.
struct Net {
    now: Instant,
    clients: Vec<ClientSession>,
    /// Each client's current connection.
    current: Vec<Option<usize>>,
    conns: Vec<Conn>,
    members: HashMap<u32, Record>,
    next_member: u32,
    /// What each client received, in order: (from, payload).
    delivered: Vec<Vec<(u32, Bytes)>>,
    events: Vec<Vec<ClientEvent>>,
    /// Whether the edge's bytes reach each client.
    edge_to_client: Vec<bool>,
}

impl Net {
    fn with_config(clients: usize, config: ClientSessionConfig) -> Self {
        let now = Instant::now();
        Self {
            now,
            clients: (0..clients)
                .map(|i| ClientSession::new(config, join(100 + i as u32), now))
                .collect(),
            current: vec![None; clients],
            conns: Vec::new(),
            members: HashMap::new(),
            next_member: 1,
            delivered: vec![Vec::new(); clients],
            events: vec![Vec::new(); clients],
            edge_to_client: vec![true; clients],
        }
    }

    /// Opens a connection for client `c` and starts its join.
    fn connect(&mut self, c: usize, resume: bool) -> usize {
        let id = self.conns.len();
        self.conns.push(Conn {
            client: c,
            edge: EdgeSession::new(EDGE, self.now),
            member: None,
            to_edge: VecDeque::new(),
            to_client: VecDeque::new(),
            alive: true,
        });
        self.current[c] = Some(id);
        self.clients[c].connect(self.now, resume);
        id
    }

    /// The connection breaks: bytes in flight both ways are lost.
    fn kill(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        conn.alive = false;
        conn.to_edge.clear();
        conn.to_client.clear();
        if let Some(m) = conn.member {
            if let Some(r) = self.members.get_mut(&m) {
                if r.conn == Some(id) {
                    r.conn = None;
                }
            }
        }
        let c = conn.client;
        if self.current[c] == Some(id) {
            self.current[c] = None;
        }
    }

    fn member_of(&self, c: usize) -> Option<u32> {
        self.clients[c].joined().map(|j| j.member_id)
    }

    /// Runs every machine until nothing moves (at most `budget` byte
    /// hand-overs, for partial runs).
    fn run(&mut self, mut budget: usize) -> usize {
        loop {
            let mut moved = false;
            for c in 0..self.clients.len() {
                while let Some(e) = self.clients[c].poll_event() {
                    if let ClientEvent::Message(m) = &e {
                        self.delivered[c].push((m.from, m.payload.clone()));
                    }
                    if matches!(e, ClientEvent::Lost(_)) {
                        if let Some(id) = self.current[c] {
                            self.kill(id);
                        }
                    }
                    self.events[c].push(e);
                }
                while let Some(bytes) = self.clients[c].poll_transmit() {
                    if let Some(id) = self.current[c] {
                        self.conns[id].to_edge.push_back(bytes);
                    }
                }
            }
            for id in 0..self.conns.len() {
                self.edge_events(id);
                while let Some(bytes) = self.conns[id].edge.poll_transmit() {
                    if self.conns[id].alive {
                        self.conns[id].to_client.push_back(bytes);
                    }
                }
            }
            for id in 0..self.conns.len() {
                if budget == 0 {
                    return 0;
                }
                if !self.conns[id].alive {
                    continue;
                }
                if let Some(bytes) = self.conns[id].to_edge.pop_front() {
                    self.conns[id].edge.handle_input(self.now, &bytes);
                    budget -= 1;
                    moved = true;
                }
                let c = self.conns[id].client;
                if budget > 0 && self.edge_to_client[c] {
                    if let Some(bytes) = self.conns[id].to_client.pop_front() {
                        self.clients[c].handle_input(self.now, &bytes);
                        budget -= 1;
                        moved = true;
                    }
                }
            }
            if !moved {
                return budget;
            }
        }
    }

    /// Advances the clock to `at`, running every timer due on the way.
    fn advance_to(&mut self, at: Instant) {
        loop {
            let next = self
                .clients
                .iter()
                .filter_map(Machine::poll_timeout)
                .chain(
                    self.conns
                        .iter()
                        .filter(|c| c.alive)
                        .filter_map(|c| c.edge.poll_timeout()),
                )
                .filter(|&t| t <= at)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            for client in &mut self.clients {
                if client.poll_timeout().is_some_and(|d| d <= self.now) {
                    client.handle_timeout(self.now);
                }
            }
            for conn in &mut self.conns {
                if conn.edge.poll_timeout().is_some_and(|d| d <= self.now) {
                    conn.edge.handle_timeout(self.now);
                }
            }
            self.run(usize::MAX);
        }
        self.now = at;
    }

    fn edge_events(&mut self, id: usize) {
        while let Some(event) = self.conns[id].edge.poll_event() {
            match event {
                EdgeEvent::Join(join) => self.edge_join(id, &join),
                EdgeEvent::Frames(frames) => self.edge_frames(id, frames),
                EdgeEvent::Drained => {}
                other => panic!("edge event {other:?} in a healthy run"),
            }
        }
    }

    fn edge_join(&mut self, id: usize, join: &Join) {
        let now = self.now;
        let (member_id, joined, mut frames) = match join.resume {
            Some(resume) => {
                let Some(r) = self
                    .members
                    .get_mut(&resume.member_id)
                    .filter(|r| r.resume_token == resume.resume_token)
                else {
                    let refusal = ErrorFrame::with_message(ErrorCode::RESUME_FAILED, "unknown");
                    self.conns[id].edge.refuse(refusal);
                    return;
                };
                r.conn = Some(id);
                let joined = Joined {
                    member_id: resume.member_id,
                    resume_token: r.resume_token,
                    media_token: 7,
                    last_received: r.inbox.last_received(),
                    resumed: true,
                };
                let resend: Vec<Frame> = r
                    .outbox
                    .resend_after(resume.last_received)
                    .map(Frame::Message)
                    .collect();
                (resume.member_id, joined, resend)
            }
            None => {
                let member_id = self.next_member;
                self.next_member += 1;
                let others: Vec<u32> = self.members.keys().copied().collect();
                let mut frames = Vec::new();
                for other in others {
                    let r = self.members.get_mut(&other).unwrap();
                    frames.push(Frame::MemberJoined(Member {
                        member_id: other,
                        user_id: r.user_id,
                    }));
                    r.outbox = Outbox::new(member_id);
                    if let Some(conn) = r.conn {
                        let notice = Member {
                            member_id,
                            user_id: join.user_id,
                        };
                        self.conns[conn].edge.send([Frame::MemberJoined(notice)]);
                    }
                }
                let sender = self.members.keys().next().copied().unwrap_or(0);
                self.members.insert(
                    member_id,
                    Record {
                        user_id: join.user_id,
                        resume_token: 1000 + u64::from(member_id),
                        inbox: Inbox::new(),
                        outbox: Outbox::new(sender),
                        conn: Some(id),
                    },
                );
                let joined = Joined {
                    member_id,
                    resume_token: 1000 + u64::from(member_id),
                    media_token: 7,
                    last_received: 0,
                    resumed: false,
                };
                (member_id, joined, frames)
            }
        };
        frames.insert(0, Frame::Joined(joined));
        let conn = &mut self.conns[id];
        conn.member = Some(member_id);
        conn.edge.accept(now);
        conn.edge.send(frames);
    }

    fn edge_frames(&mut self, id: usize, frames: Vec<Frame>) {
        let Some(member_id) = self.conns[id].member else {
            return;
        };
        let mut ack = false;
        for frame in frames {
            match frame {
                Frame::Message(m) => {
                    ack = true;
                    let r = self.members.get_mut(&member_id).unwrap();
                    if r.inbox.receive(&m) == Received::Deliver {
                        let others: Vec<u32> = self
                            .members
                            .keys()
                            .copied()
                            .filter(|&o| o != member_id)
                            .collect();
                        for other in others {
                            let o = self.members.get_mut(&other).unwrap();
                            let relayed = o.outbox.push(m.payload.clone());
                            if let Some(conn) = o.conn {
                                self.conns[conn].edge.send([Frame::Message(relayed)]);
                            }
                        }
                    }
                }
                Frame::Ack(seq) => self
                    .members
                    .get_mut(&member_id)
                    .unwrap()
                    .outbox
                    .acknowledge(seq),
                Frame::Ping(v) => self.conns[id].edge.send([Frame::Pong(v)]),
                Frame::Pong(_) | Frame::Leave => {}
                other => panic!("unexpected {other:?} at the edge"),
            }
        }
        if ack {
            let r = self.members.get_mut(&member_id).unwrap();
            let ack = r.inbox.ack();
            self.conns[id].edge.send([Frame::Ack(ack)]);
        }
    }
}

fn payload(client: usize, i: usize) -> Bytes {
    Bytes::from(format!("{client}:{i}"))
}

/// Two members joined, each on its first connection.
fn joined_pair() -> Net {
    joined_pair_with(CLIENT)
}

fn joined_pair_with(config: ClientSessionConfig) -> Net {
    let mut net = Net::with_config(2, config);
    net.connect(0, false);
    net.run(usize::MAX);
    net.connect(1, false);
    net.run(usize::MAX);
    assert!(net.clients.iter().all(ClientSession::is_joined));
    net
}

#[test]
fn keepalive_pings_on_time_and_declares_the_edge_dead_at_the_deadline() {
    let mut net = joined_pair();
    let start = net.now;
    // Nothing is sent: the first ping is due one interval after the last
    // transmit (the join's ack or notice), not before.
    let due = net.clients[0].poll_timeout().unwrap();
    assert!(due <= start + CLIENT.keepalive_interval, "{due:?}");
    net.advance_to(due - Duration::from_millis(1));
    assert!(!net.events[0].contains(&ClientEvent::KeepaliveSent));
    net.advance_to(due);
    assert!(net.events[0].contains(&ClientEvent::KeepaliveSent));
    // Pongs keep the connection alive for a long quiet time.
    net.advance_to(start + CLIENT.keepalive_timeout * 4);
    assert!(net.clients[0].is_joined());

    // The edge's bytes stop reaching client 0: dead exactly one keepalive
    // timeout after the last thing it received.
    net.edge_to_client[0] = false;
    let silent_from = net.now;
    net.advance_to(silent_from + CLIENT.keepalive_timeout - Duration::from_millis(1));
    assert!(net.clients[0].is_joined());
    let last_rx_deadline = net.clients[0].poll_timeout().unwrap();
    net.advance_to(silent_from + CLIENT.keepalive_timeout);
    let lost = net.events[0].iter().find_map(|e| match e {
        ClientEvent::Lost(err) => Some(err.clone()),
        _ => None,
    });
    assert_eq!(
        lost,
        Some(SessionError::Timeout {
            which: "keepalive",
            after: CLIENT.keepalive_timeout
        })
    );
    assert!(last_rx_deadline <= silent_from + CLIENT.keepalive_timeout);
    assert!(!net.clients[0].is_joined());
    // Client 1 still hears from the edge and stays.
    assert!(net.clients[1].is_joined());
}

#[test]
fn an_ack_waits_for_a_half_read_frame_at_most_the_ack_delay() {
    let mut client = ClientSession::new(CLIENT, join(1), Instant::now());
    let t0 = Instant::now();
    client.connect(t0, false);
    while client.poll_transmit().is_some() {}
    let joined = Frame::Joined(Joined {
        member_id: 5,
        resume_token: 9,
        media_token: 7,
        last_received: 0,
        resumed: false,
    });
    let message = Frame::Message(cloudproxy_proto::frame::Message {
        seq: 1,
        from: 6,
        payload: Bytes::from_static(b"hi"),
    });
    let bytes = [
        joined.to_bytes(),
        message.to_bytes(),
        Frame::Ping(1).to_bytes(),
    ]
    .concat();
    // Joined, the message and half a ping: the ack waits.
    client.handle_input(t0, &bytes[..bytes.len() - 3]);
    assert_eq!(client.poll_transmit(), None);
    assert_eq!(client.poll_timeout(), Some(t0 + CLIENT.ack_delay));
    client.handle_timeout(t0 + CLIENT.ack_delay);
    assert_eq!(client.poll_transmit(), Some(Frame::Ack(1).to_bytes()));
    // The rest of the ping: a pong, and no second ack.
    client.handle_input(t0 + CLIENT.ack_delay, &bytes[bytes.len() - 3..]);
    assert_eq!(client.poll_transmit(), Some(Frame::Pong(1).to_bytes()));
    assert_eq!(client.poll_transmit(), None);
}

#[test]
fn resume_resends_only_what_the_edge_lacks_and_reports_last_received() {
    let mut net = joined_pair();
    // Client 1 sends two messages that reach client 0.
    for i in 0..2 {
        net.clients[1].send(net.now, payload(1, i));
    }
    net.run(usize::MAX);
    assert_eq!(net.delivered[0].len(), 2);
    // Client 0 sends three; only the first reaches the edge before its
    // connection breaks.
    for i in 0..3 {
        net.clients[0].send(net.now, payload(0, i));
    }
    let old = net.current[0].unwrap();
    net.clients[0].poll_event();
    let first = net.clients[0].poll_transmit().unwrap();
    net.conns[old].edge.handle_input(net.now, &first);
    net.edge_events(old);
    while net.clients[0].poll_transmit().is_some() {}
    net.kill(old);

    let new = net.connect(0, true);
    let join_bytes = net.clients[0].poll_transmit().unwrap();
    match Frame::decode(join_bytes.clone()).unwrap() {
        Frame::Join(join) => assert_eq!(join.resume.map(|r| r.last_received), Some(2)),
        other => panic!("{other:?}"),
    }
    net.conns[new].to_edge.push_back(join_bytes);
    net.run(usize::MAX);
    let resumed = net.events[0].iter().any(|e| {
        matches!(e, ClientEvent::Joined { resumed: true, joined, .. } if joined.last_received == 1)
    });
    assert!(resumed, "{:?}", net.events[0]);
    let to_1: Vec<_> = net.delivered[1].iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(to_1, (0..3).map(|i| payload(0, i)).collect::<Vec<_>>());
    assert_eq!(net.clients[0].unacked(), 0);
}

/// Both members send `count` messages; client 0's connection dies after
/// `drop_after` byte hand-overs (unacked messages in flight both ways) and
/// it resumes on a new connection.
fn failover(count: usize, drop_after: usize, resend_at: usize) {
    let mut net = joined_pair();
    let me = net.member_of(0).unwrap();
    let peer = net.member_of(1).unwrap();
    for i in 0..count {
        net.clients[0].send(net.now, payload(0, i));
        net.clients[1].send(net.now, payload(1, i));
        if i == resend_at {
            net.run(drop_after);
            let old = net.current[0].unwrap();
            net.kill(old);
        }
    }
    net.run(usize::MAX);
    if net.current[0].is_none() {
        net.connect(0, true);
    }
    net.run(usize::MAX);
    net.advance_to(net.now + Duration::from_secs(1));
    let expect = |c: usize| (0..count).map(|i| payload(c, i)).collect::<Vec<_>>();
    let got0: Vec<_> = net.delivered[0]
        .iter()
        .map(|(f, p)| (*f, p.clone()))
        .collect();
    assert!(got0.iter().all(|(f, _)| *f == peer));
    assert_eq!(
        got0.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        expect(1)
    );
    let got1: Vec<_> = net.delivered[1]
        .iter()
        .map(|(f, p)| (*f, p.clone()))
        .collect();
    assert!(got1.iter().all(|(f, _)| *f == me));
    assert_eq!(
        got1.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        expect(0)
    );
    assert_eq!((net.clients[0].unacked(), net.clients[1].unacked()), (0, 0));
}

#[test]
fn failover_mid_stream_delivers_every_message_once_and_in_order() {
    failover(40, 7, 20);
}

proptest! {
    #[test]
    fn failover_at_any_point_delivers_exactly_once_in_order(
        count in 1usize..30,
        drop_after in 0usize..40,
        at in 0usize..30,
    ) {
        failover(count, drop_after, at.min(count - 1));
    }
}

#[test]
fn a_refused_resume_reports_the_code_and_a_fresh_join_renumbers() {
    let mut net = joined_pair();
    net.clients[0].send(net.now, payload(0, 0));
    let old = net.current[0].unwrap();
    net.kill(old);
    // The edge forgot the membership.
    let me = net.member_of(0).unwrap();
    net.members.get_mut(&me).unwrap().resume_token = 0;
    net.connect(0, true);
    net.run(usize::MAX);
    let refused = net.events[0].iter().any(
        |e| matches!(e, ClientEvent::Refused { code, .. } if *code == ErrorCode::RESUME_FAILED),
    );
    assert!(refused, "{:?}", net.events[0]);
    net.connect(0, false);
    net.run(usize::MAX);
    let rejoined = net.events[0].iter().find_map(|e| match e {
        ClientEvent::Joined {
            resumed: false,
            forgotten,
            joined,
        } if joined.member_id != me => Some(forgotten.clone()),
        _ => None,
    });
    assert_eq!(rejoined.map(|f| f.len()), Some(1));
    // The queued message went out under the new membership.
    assert_eq!(
        net.delivered[1].last().map(|(_, p)| p.clone()),
        Some(payload(0, 0))
    );
}

#[test]
fn the_edge_side_refuses_a_first_frame_that_is_not_join() {
    let now = Instant::now();
    let mut edge = EdgeSession::new(EDGE, now);
    edge.handle_input(now, &Frame::Ping(1).to_bytes());
    match edge.poll_event() {
        Some(EdgeEvent::HandshakeFailed(HandshakeFailure::NotJoin(_))) => {}
        other => panic!("{other:?}"),
    }
    let sent = Frame::decode(edge.poll_transmit().unwrap()).unwrap();
    assert!(matches!(sent, Frame::Error(e) if e.code == ErrorCode::NOT_JOINED));
}

#[test]
fn the_edge_side_times_out_the_handshake_and_an_idle_connection() {
    let now = Instant::now();
    let mut edge = EdgeSession::new(EDGE, now);
    assert_eq!(edge.poll_timeout(), Some(now + EDGE.handshake_timeout));
    edge.handle_timeout(now + EDGE.handshake_timeout);
    assert!(matches!(
        edge.poll_event(),
        Some(EdgeEvent::HandshakeFailed(HandshakeFailure::Timeout(_)))
    ));
    let sent = Frame::decode(edge.poll_transmit().unwrap()).unwrap();
    assert!(matches!(sent, Frame::Error(e) if e.code == ErrorCode::HANDSHAKE_TIMEOUT));

    let mut edge = EdgeSession::new(EDGE, now);
    edge.handle_input(now, &Frame::Join(join(1)).to_bytes());
    assert!(matches!(edge.poll_event(), Some(EdgeEvent::Join(_))));
    edge.accept(now);
    let t = now + Duration::from_secs(1);
    edge.handle_input(t, &Frame::Ping(3).to_bytes());
    assert!(matches!(edge.poll_event(), Some(EdgeEvent::Frames(f)) if f == vec![Frame::Ping(3)]));
    assert_eq!(edge.poll_timeout(), Some(t + EDGE.idle_timeout));
    edge.handle_timeout(t + EDGE.idle_timeout);
    assert!(matches!(edge.poll_event(), Some(EdgeEvent::Idle(_))));
}

const SILENCE: SilenceDetection = SilenceDetection {
    suspect_after: SilenceDetection::SUSPECT_AFTER,
    probe_timeout: SilenceDetection::PROBE_TIMEOUT,
};

const WATCHFUL: ClientSessionConfig = ClientSessionConfig {
    silence: Some(SILENCE),
    ..CLIENT
};

/// Whether client `c` reported its connection lost to silence.
fn lost_to_silence(net: &Net, c: usize) -> bool {
    net.events[c]
        .iter()
        .any(|e| matches!(e, ClientEvent::Lost(SessionError::Silent { .. })))
}

fn lost(net: &Net, c: usize) -> bool {
    net.events[c]
        .iter()
        .any(|e| matches!(e, ClientEvent::Lost(_)))
}

/// The edge goes silent (no close) under client 0 mid-stream, with
/// unacknowledged messages both ways: suspicion at `suspect_after`, the
/// probe times out, `Lost(Silent)` exactly at the machine's bound; the
/// resume on a second connection delivers every message once, in order.
#[test]
fn a_silent_edge_is_lost_at_the_bound_and_the_resume_delivers_exactly_once() {
    let mut net = joined_pair_with(WATCHFUL);
    let count = 30;
    for i in 0..count / 2 {
        net.clients[0].send(net.now, payload(0, i));
        net.clients[1].send(net.now, payload(1, i));
    }
    // Part of it moves, then the edge goes silent for client 0: bytes in
    // flight are lost both ways and nothing tells the client.
    net.run(9);
    let silent_at = net.now;
    let old = net.current[0].unwrap();
    net.kill(old);
    assert!(
        net.clients[0].unacked() > 0,
        "messages of client 0 in flight"
    );
    // Both keep sending; client 0's messages go nowhere.
    for i in count / 2..count {
        net.clients[0].send(net.now, payload(0, i));
        net.clients[1].send(net.now, payload(1, i));
    }
    net.run(usize::MAX);

    net.advance_to(silent_at + SILENCE.bound() - Duration::from_millis(1));
    assert!(!lost(&net, 0), "lost before the bound: {:?}", net.events[0]);
    net.advance_to(silent_at + SILENCE.bound());
    assert!(lost_to_silence(&net, 0), "{:?}", net.events[0]);

    net.connect(0, true);
    net.run(usize::MAX);
    net.advance_to(net.now + Duration::from_secs(1));
    let payloads =
        |c: usize| -> Vec<Bytes> { net.delivered[c].iter().map(|(_, p)| p.clone()).collect() };
    let expect = |c: usize| (0..count).map(|i| payload(c, i)).collect::<Vec<_>>();
    assert_eq!(payloads(0), expect(1));
    assert_eq!(payloads(1), expect(0));
    assert_eq!((net.clients[0].unacked(), net.clients[1].unacked()), (0, 0));
    assert!(!lost(&net, 1), "{:?}", net.events[1]);
}

/// A member that only receives: the edge had been talking every 20 ms,
/// then nothing; the silence is suspected and confirmed the same way.
#[test]
fn a_receiver_notices_an_edge_that_stopped_talking() {
    let mut net = joined_pair_with(WATCHFUL);
    for i in 0..10 {
        net.clients[1].send(net.now, payload(1, i));
        net.run(usize::MAX);
        net.advance_to(net.now + Duration::from_millis(20));
    }
    let silent_at = net.now - Duration::from_millis(20);
    let old = net.current[0].unwrap();
    net.kill(old);
    net.advance_to(silent_at + SILENCE.bound() - Duration::from_millis(1));
    assert!(!lost(&net, 0), "{:?}", net.events[0]);
    net.advance_to(silent_at + SILENCE.bound());
    assert!(lost_to_silence(&net, 0), "{:?}", net.events[0]);
}

/// An idle call (nothing sent, nothing expected) is not declared dead
/// early: only the keepalive timeout ends it.
#[test]
fn an_idle_call_waits_for_the_keepalive_timeout() {
    let mut net = joined_pair_with(WATCHFUL);
    // The join's notices may cost one probe, answered while the edge lives.
    net.advance_to(net.now + Duration::from_secs(2));
    assert!(!lost(&net, 0), "{:?}", net.events[0]);
    let last_rx = net.now;
    let old = net.current[0].unwrap();
    net.kill(old);
    net.advance_to(last_rx + CLIENT.keepalive_timeout - Duration::from_secs(3));
    assert!(!lost(&net, 0), "{:?}", net.events[0]);
    net.advance_to(net.now + Duration::from_secs(5));
    assert!(
        lost(&net, 0) && !lost_to_silence(&net, 0),
        "{:?}",
        net.events[0]
    );
}

/// A live edge answers the probe: a false suspicion costs one `Ping`.
#[test]
fn a_live_edge_answers_the_probe_and_the_call_goes_on() {
    let mut net = joined_pair_with(WATCHFUL);
    for i in 0..10 {
        net.clients[1].send(net.now, payload(1, i));
        net.run(usize::MAX);
        net.advance_to(net.now + Duration::from_millis(20));
    }
    // The sender pauses: the receiver suspects, probes, gets its pong.
    net.advance_to(net.now + Duration::from_secs(10));
    assert!(!lost(&net, 0) && !lost(&net, 1), "{:?}", net.events);
    net.clients[1].send(net.now, payload(1, 10));
    net.run(usize::MAX);
    assert_eq!(net.delivered[0].len(), 11);
}
