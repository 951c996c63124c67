//! Shared test helpers: proptest strategies for every frame, and a simulated
//! two-endpoint network (`Pair`) driven by a simulated clock.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_proto::client::{
    Allocation, Allocator, AllocatorEvent, BindingEvent, ClientConfig, RelayBinding,
};
use cloudproxy_proto::frame::*;
use cloudproxy_proto::fuzzing::TestEntropy;
use cloudproxy_proto::server::{
    AppCredentials, Connection, Role, Server, ServerConfig, ServerEvent, UdpRelay, UdpRelayEvent,
};
use cloudproxy_proto::ticket::TicketKeyRing;
use cloudproxy_proto::*;
use proptest::prelude::*;

// ---------- strategies ----------

pub fn app_id() -> impl Strategy<Value = AppId> {
    "[a-zA-Z0-9._~!-]{1,64}".prop_map(|s| AppId::new(s).unwrap())
}

pub fn channel() -> impl Strategy<Value = ChannelName> {
    "[^\\p{C}]{1,16}".prop_map(|s| ChannelName::new(s).unwrap())
}

pub fn text() -> impl Strategy<Value = Text> {
    "[^\\p{C}]{0,60}".prop_map(|s| Text::new(s).unwrap())
}

pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

pub fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        socket_addr().prop_map(Address::Ip),
        ("[a-z0-9]{1,20}(\\.[a-z0-9_]{1,20}){0,3}", any::<u16>())
            .prop_map(|(d, p)| Address::Domain(DomainName::new(&d).unwrap(), p)),
    ]
}

pub fn ticket() -> impl Strategy<Value = SealedTicket> {
    prop::collection::vec(any::<u8>(), 1..=255)
        .prop_map(|v| SealedTicket::new(Bytes::from(v)).unwrap())
}

pub fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

pub fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    (any::<u16>(), text()).prop_map(|(c, message)| ErrorFrame {
        code: ErrorCode(c),
        message,
    })
}

pub fn mode() -> impl Strategy<Value = BindMode> {
    prop_oneof![Just(BindMode::Stream), Just(BindMode::Datagram)]
}

pub fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u32>(),
            0u8..8,
            any::<u64>(),
            any::<[u8; 16]>(),
            app_id(),
            any::<[u8; 32]>(),
            text(),
            0usize..1300
        )
            .prop_map(
                |(c, t, timestamp, nonce, app_id, proof, client_version, padding)| {
                    Frame::AllocateRequest(AllocateRequest {
                        capabilities: Capabilities(c),
                        transports: Transports::from_bits_truncate(t),
                        timestamp,
                        nonce,
                        app_id,
                        proof,
                        client_version,
                        padding,
                    })
                }
            ),
        (
            any::<u64>(),
            any::<u32>(),
            0u8..8,
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            ticket(),
            prop::collection::vec(socket_addr(), 0..=MAX_RELAYS),
            prop::collection::vec(socket_addr(), 0..=MAX_RELAYS)
        )
            .prop_map(|(session_id, c, t, l, k, i, ticket, tcp, udp)| {
                Frame::AllocateOk(AllocateOk {
                    session_id,
                    capabilities: Capabilities(c),
                    transports: Transports::from_bits_truncate(t),
                    lifetime_secs: l,
                    keepalive_secs: k,
                    idle_timeout_secs: i,
                    ticket,
                    tcp_relays: tcp,
                    udp_relays: udp,
                })
            }),
        error_frame().prop_map(Frame::Error),
        (ticket(), 0usize..1300)
            .prop_map(|(ticket, padding)| Frame::Refresh(Refresh { ticket, padding })),
        (
            ticket(),
            mode(),
            address(),
            proptest::option::of((any::<u32>(), any::<u64>()))
        )
            .prop_map(|(ticket, mode, destination, r)| Frame::Bind(Bind {
                ticket,
                mode,
                destination,
                rebind: r.map(|(binding_id, binding_token)| Rebind {
                    binding_id,
                    binding_token
                }),
            })),
        (
            any::<u32>(),
            any::<u64>(),
            mode(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(
                |(binding_id, binding_token, mode, keepalive_secs, idle_timeout_secs)| {
                    Frame::BindOk(BindOk {
                        binding_id,
                        binding_token,
                        mode,
                        keepalive_secs,
                        idle_timeout_secs,
                    })
                }
            ),
        payload(MAX_DATAGRAM_PAYLOAD).prop_map(Frame::Datagram),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        Just(Frame::Close),
        (
            app_id(),
            channel(),
            any::<u32>(),
            proptest::option::of((any::<u32>(), any::<u64>(), any::<u64>()))
        )
            .prop_map(|(app_id, channel, user_id, r)| Frame::Join(Join {
                app_id,
                channel,
                user_id,
                resume: r.map(|(member_id, resume_token, last_received)| Resume {
                    member_id,
                    resume_token,
                    last_received
                }),
            })),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(member_id, resume_token, media_token, last_received, resumed)| {
                    Frame::Joined(Joined {
                        member_id,
                        resume_token,
                        media_token,
                        last_received,
                        resumed,
                    })
                }
            ),
        error_frame().prop_map(Frame::JoinRefused),
        Just(Frame::Leave),
        (any::<u64>(), any::<u32>(), payload(20_000))
            .prop_map(|(seq, from, payload)| Frame::Message(Message { seq, from, payload })),
        any::<u64>().prop_map(Frame::Ack),
        (any::<u32>(), any::<u64>(), payload(1400)).prop_map(|(member_id, token, payload)| {
            Frame::Media(Media {
                member_id,
                token,
                payload,
            })
        }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(member_id, user_id)| Frame::MemberJoined(Member { member_id, user_id })),
        (any::<u32>(), any::<u32>())
            .prop_map(|(member_id, user_id)| Frame::MemberLeft(Member { member_id, user_id })),
    ]
}

// ---------- simulated endpoints ----------

pub const UNIX0: u64 = 1_700_000_000;
pub const APP: &str = "demo-app";
pub const SECRET: &[u8] = b"demo-secret";
pub const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn client_addr() -> SocketAddr {
    "203.0.113.10:40000".parse().unwrap()
}

pub fn edge_udp() -> Address {
    Address::Ip("198.51.100.20:5000".parse().unwrap())
}

pub fn edge_tcp() -> Address {
    Address::Ip("198.51.100.20:7000".parse().unwrap())
}

/// Builds a server whose clock says `unix` at `now`.
pub fn make_server(now: Instant, unix: u64, key: &[u8], seed: u64) -> Arc<Server> {
    make_server_with(now, unix, key, seed, |_| {})
}

/// [`make_server`] with the configuration adjusted by `adjust`.
pub fn make_server_with(
    now: Instant,
    unix: u64,
    key: &[u8],
    seed: u64,
    adjust: impl FnOnce(&mut ServerConfig),
) -> Arc<Server> {
    let mut apps = HashMap::new();
    apps.insert(
        AppId::new(APP).unwrap(),
        Arc::new(AppCredentials {
            secrets: vec![b"old-secret".to_vec(), SECRET.to_vec()],
            transports: Transports::ALL,
        }),
    );
    let mut cfg = ServerConfig::new(Timebase::new(now, unix));
    cfg.tcp_relays = vec!["192.0.2.1:4000".parse().unwrap()];
    cfg.udp_relays = (4500..=4650)
        .map(|p| SocketAddr::from(([192, 0, 2, 1], p)))
        .collect();
    adjust(&mut cfg);
    Arc::new(Server::new(
        cfg,
        TicketKeyRing::new(1, key.to_vec()),
        Arc::new(apps),
        Arc::new(TestEntropy::new(seed)),
    ))
}

/// A client and a server on one simulated network, with one clock.
pub struct Pair {
    pub start: Instant,
    pub now: Instant,
    pub server: Arc<Server>,
    pub client: ClientConfig,
    pub udp: UdpRelay,
    pub client_addr: SocketAddr,
    /// Every datagram the relay sent to a client, with its size.
    pub udp_replies: Vec<(SocketAddr, Bytes)>,
    /// Payloads the relay forwarded toward destinations.
    pub forwarded: Vec<(u32, Bytes)>,
    pub udp_events: Vec<UdpRelayEvent>,
    /// When false, the relay's answers are lost (a dead path).
    pub deliver_to_client: bool,
    /// Answer UDP bind requests with this (None = accept).
    pub udp_bind_verdict: Option<ErrorCode>,
}

impl Pair {
    pub fn new() -> Self {
        let now = Instant::now();
        let server = make_server(now, UNIX0, KEY, 1);
        let client = ClientConfig::new(
            AppId::new(APP).unwrap(),
            SECRET.to_vec(),
            Timebase::new(now, UNIX0),
        );
        Self {
            start: now,
            now,
            udp: UdpRelay::new(server.clone()),
            server,
            client,
            client_addr: client_addr(),
            udp_replies: Vec::new(),
            forwarded: Vec::new(),
            udp_events: Vec::new(),
            deliver_to_client: true,
            udp_bind_verdict: None,
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Replaces the server (a restart, possibly with another key); the clock
    /// of the new process is anchored afresh but agrees on the wall time.
    pub fn restart_server(&mut self, key: &[u8]) {
        let unix_now = UNIX0 + (self.now - self.start).as_secs();
        self.server = make_server(self.now, unix_now, key, 2);
        self.udp = UdpRelay::new(self.server.clone());
    }

    /// Pumps bytes between a client machine and a server connection until
    /// both are quiet. The server's decisions are made by `decide`.
    pub fn pump_tcp<C: TcpClient>(
        &mut self,
        client: &mut C,
        conn: &mut Connection,
        decide: &mut dyn FnMut(&ServerEvent, &mut Connection, Instant),
    ) -> Vec<ServerEvent> {
        let mut events = Vec::new();
        for _ in 0..100 {
            let mut progressed = false;
            while let Some(b) = client.transmit() {
                conn.handle_input(self.now, &b);
                progressed = true;
            }
            while let Some(e) = conn.poll_event() {
                decide(&e, conn, self.now);
                events.push(e);
                progressed = true;
            }
            while let Some(b) = conn.poll_transmit() {
                client.input(self.now, b);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        events
    }

    /// Delivers every datagram a UDP client binding wants to send to the relay
    /// and the relay's answers back, until quiet.
    pub fn pump_udp(&mut self, b: &mut RelayBinding) {
        for _ in 0..100 {
            let mut progressed = false;
            while let Some(d) = b.poll_transmit() {
                progressed = true;
                let len = d.len();
                if let cloudproxy_proto::server::RelayInput::Forward {
                    binding_id,
                    payload,
                } = self.udp.handle_datagram(self.now, self.client_addr, d)
                {
                    self.forwarded.push((binding_id, payload));
                }
                while let Some(e) = self.udp.poll_event() {
                    if let UdpRelayEvent::BindRequested { id, .. } = &e {
                        match self.udp_bind_verdict {
                            None => {
                                self.udp.accept_bind(self.now, *id).unwrap();
                            }
                            Some(code) => self.udp.reject_bind(*id, code, None),
                        }
                    }
                    self.udp_events.push(e);
                }
                while let Some(t) = self.udp.poll_transmit() {
                    assert!(
                        t.contents.len() <= len,
                        "relay answered {} bytes to a {len}-byte datagram",
                        t.contents.len()
                    );
                    self.udp_replies.push((t.destination, t.contents.clone()));
                    if self.deliver_to_client && t.destination == self.client_addr {
                        b.handle_input(self.now, &t.contents);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Allocates over TCP, accepting the quota check.
    pub fn allocate(&mut self) -> Allocation {
        let mut a = Allocator::new(&self.client, Path::Tcp, [9; 16], self.now);
        let mut conn = Connection::new(self.server.clone(), Role::Allocation, self.now);
        self.pump_tcp(&mut a, &mut conn, &mut accept_all);
        match a.poll_event() {
            Some(AllocatorEvent::Allocated(al)) => al,
            other => panic!("allocation failed: {other:?}"),
        }
    }

    /// Runs all timers due up to `self.now` on a binding and the relay.
    pub fn fire_timers(&mut self, b: &mut RelayBinding) {
        for _ in 0..100 {
            let mut fired = false;
            if let Some(t) = b.poll_timeout() {
                if t <= self.now {
                    b.handle_timeout(self.now);
                    fired = true;
                }
            }
            if let Some(t) = self.udp.poll_timeout() {
                if t <= self.now {
                    self.udp.handle_timeout(self.now);
                    fired = true;
                }
            }
            while let Some(e) = self.udp.poll_event() {
                self.udp_events.push(e);
            }
            self.pump_udp(b);
            if !fired {
                break;
            }
        }
    }

    /// Advances the clock in steps of at most `step`, firing timers on the way.
    pub fn run_for(&mut self, b: &mut RelayBinding, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            let next = [b.poll_timeout(), self.udp.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .min(self.now + step)
                .min(end)
                .max(self.now);
            self.now = if next == self.now {
                self.now + step.min(end - self.now)
            } else {
                next
            };
            self.fire_timers(b);
        }
    }
}

pub fn accept_all(e: &ServerEvent, conn: &mut Connection, now: Instant) {
    match e {
        ServerEvent::AllocationRequested(_) => conn.accept_allocation(now).unwrap(),
        ServerEvent::BindRequested(_) => conn.accept_bind(now).unwrap(),
        _ => {}
    }
}

/// The client side of a TCP exchange.
pub trait TcpClient {
    fn transmit(&mut self) -> Option<Bytes>;
    fn input(&mut self, now: Instant, data: Bytes);
}

impl TcpClient for Allocator {
    fn transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn input(&mut self, now: Instant, data: Bytes) {
        self.handle_input(now, &data);
    }
}

impl TcpClient for RelayBinding {
    fn transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn input(&mut self, now: Instant, data: Bytes) {
        self.handle_input(now, &data);
    }
}

pub fn events(b: &mut RelayBinding) -> Vec<BindingEvent> {
    std::iter::from_fn(|| b.poll_event()).collect()
}
