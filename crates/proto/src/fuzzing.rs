//! Hooks for the cargo-fuzz targets in `fuzz/` and for the `fuzz_corpus`
//! test that replays the committed seeds on stable. Not a stable API.
//!
//! Each hook takes arbitrary bytes, must never panic on them, and panics only
//! when an invariant of the protocol implementation is broken (a frame that
//! parses does not re-encode to an equal frame, a UDP reply larger than its
//! request, a state machine that emits unparseable bytes, …).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::Machine;
use crate::client::{Allocator, BindingEvent, ClientConfig, RelayBinding};
use crate::codec::FrameCodec;
use crate::frame::{Bind, BindMode, Frame};
use crate::server::{
    AppCredentials, Connection, Entropy, Role, Server, ServerConfig, ServerEvent, UdpAllocation,
    UdpRelay, UdpRelayEvent,
};
use crate::ticket::{Ticket, TicketKeyRing};
use crate::udp::UdpHeader;
use crate::{AppId, Path, SealedTicket, Timebase, Transports};

/// A deterministic [`Entropy`] (splitmix64) for tests and fuzzing.
#[derive(Debug, Default)]
pub struct TestEntropy(AtomicU64);

impl TestEntropy {
    /// A generator starting at `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }
}

impl Entropy for TestEntropy {
    fn fill(&self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut z = self
                .0
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
        }
    }
}

/// Frame hook: parse; when it parses, encode → same length as predicted →
/// reparse → equal (both copying and zero-copy); then feed the bytes through
/// the stream codec split at an input-chosen point.
pub fn frame(data: &[u8]) {
    if let Ok(f) = Frame::parse(data) {
        check_frame_roundtrip(&f);
        let zero_copy = Frame::decode(Bytes::copy_from_slice(data)).expect("parse ok => decode ok");
        assert_eq!(zero_copy, f, "parse and decode disagree");
    }
    // Stream decoding: whatever frames come out must round-trip too.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    for part in [&data[..split], &data[split..]] {
        buf.extend_from_slice(part);
        let before = buf.capacity();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => check_frame_roundtrip(&f),
                Ok(None) => break,
                Err(_) => {
                    // A rejected length never reserved more than the limit.
                    assert!(
                        buf.capacity()
                            <= before.max(crate::frame::HEADER_LEN + crate::frame::MAX_PAYLOAD)
                    );
                    return;
                }
            }
        }
    }
}

fn check_frame_roundtrip(f: &Frame) {
    f.validate().expect("a parsed frame satisfies the limits");
    let mut out = Vec::new();
    f.encode(&mut out);
    assert_eq!(out.len(), f.encoded_len(), "encoded_len mismatch for {f:?}");
    let again = Frame::parse(&out).expect("re-encoded frame parses");
    assert_eq!(&again, f, "round trip changed the frame");
}

/// UDP header hook: parse; when it parses, encode header + payload → reparse → equal.
pub fn udp_header(data: &[u8]) {
    let _ = crate::udp::classify(data);
    if let Ok((h, payload)) = UdpHeader::parse(data) {
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), h.encoded_len());
        out.extend_from_slice(payload);
        let (h2, p2) = UdpHeader::parse(&out).expect("re-encoded header parses");
        assert_eq!((h2, p2), (h, payload));
        assert_eq!(out, data, "a valid header encodes to the same bytes");
    }
}

const FUZZ_KEY: &[u8] = b"fuzzing ticket key, 32 bytes ...";

/// Ticket hook: unverified parse round trip; `open` never accepts bytes that
/// the key did not seal; a sealed ticket made from the input opens, and any
/// one-byte change makes it fail.
pub fn ticket(data: &[u8]) {
    let keys = TicketKeyRing::new(7, FUZZ_KEY.to_vec());
    if let Ok((t, mac)) = Ticket::parse_unverified(data) {
        let enc = t.encode_with_mac(&mac);
        let (t2, mac2) = Ticket::parse_unverified(&enc).expect("re-encoded ticket parses");
        assert_eq!((t2, mac2), (t.clone(), mac));
        // Whatever opens must be exactly what seal produces.
        if let Ok(sealed) = SealedTicket::new(Bytes::copy_from_slice(data))
            && let Ok(opened) = keys.open(&sealed, 0)
        {
            assert_eq!(
                keys.seal(&opened).as_bytes(),
                data,
                "a forged ticket verified"
            );
        }
    }
    // Build a real ticket from the input and check tampering is detected.
    if data.len() >= 26 {
        let app: String = data[25..]
            .iter()
            .take(64)
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        let Ok(app_id) = AppId::new(if app.is_empty() { "a".into() } else { app }) else {
            return;
        };
        let u = |i: usize| u64::from_be_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        let t = Ticket {
            key_id: 7,
            session_id: u(0),
            created_at: u(8),
            expires_at: u(16).max(1),
            transports: Transports::from_bits_truncate(data[24]),
            app_id,
        };
        let sealed = keys.seal(&t);
        let now = t.expires_at - 1;
        assert_eq!(keys.open(&sealed, now).expect("fresh ticket opens"), t);
        assert!(
            keys.open(&sealed, t.expires_at).is_err(),
            "expired ticket opened"
        );
        let mut tampered = sealed.as_bytes().to_vec();
        let i = usize::from(data[0]) % tampered.len();
        tampered[i] ^= 1 << (data[1] % 8);
        if let Ok(s) = SealedTicket::new(Bytes::from(tampered)) {
            assert!(keys.open(&s, now).is_err(), "tampered ticket opened");
        }
        let other = TicketKeyRing::new(7, b"another key".to_vec());
        assert!(
            other.open(&sealed, now).is_err(),
            "ticket opened with wrong key"
        );
    }
}

/// Everything the session hook drives.
struct Harness {
    now: Instant,
    server: Arc<Server>,
    alloc_conn: Connection,
    relay_conn: Connection,
    udp: UdpRelay,
    client_cfg: ClientConfig,
    allocator: Allocator,
    binding: Option<RelayBinding>,
    ticket: SealedTicket,
}

fn check_stream(bytes: &[Bytes]) {
    let mut buf = BytesMut::new();
    for b in bytes {
        buf.extend_from_slice(b);
    }
    let mut codec = FrameCodec::new();
    while !buf.is_empty() {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => {}
            other => panic!("state machine emitted bytes that do not decode: {other:?}"),
        }
    }
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let tb = Timebase::new(now, 1_700_000_000);
        let mut apps = HashMap::new();
        let app = AppId::new("fuzz-app").expect("valid");
        apps.insert(
            app.clone(),
            Arc::new(AppCredentials {
                secrets: vec![b"fuzz-secret".to_vec()],
                transports: Transports::ALL,
            }),
        );
        let mut cfg = ServerConfig::new(tb);
        cfg.tcp_relays = vec![SocketAddr::from(([192, 0, 2, 1], 4000))];
        cfg.udp_relays = vec![SocketAddr::from(([192, 0, 2, 1], 4500))];
        let keys = TicketKeyRing::new(1, FUZZ_KEY.to_vec());
        let server = Arc::new(Server::new(
            cfg,
            keys.clone(),
            Arc::new(apps),
            Arc::new(TestEntropy::new(1)),
        ));
        let ticket = keys.seal(&Ticket {
            key_id: 1,
            session_id: 99,
            app_id: app.clone(),
            transports: Transports::ALL,
            created_at: 1_700_000_000,
            expires_at: 1_700_000_600,
        });
        let client_cfg = ClientConfig::new(app, b"fuzz-secret".to_vec(), tb);
        let allocator = Allocator::new(&client_cfg, Path::Tcp, [3; 16], now);
        Self {
            now,
            alloc_conn: Connection::new(server.clone(), Role::Allocation, now),
            relay_conn: Connection::new(server.clone(), Role::Relay, now),
            udp: UdpRelay::new(server.clone()),
            server,
            client_cfg,
            allocator,
            binding: None,
            ticket,
        }
    }

    fn drain_conn(conn: &mut Connection, now: Instant) {
        let mut out = Vec::new();
        let mut closed = false;
        for _ in 0..64 {
            let mut progressed = false;
            while let Some(t) = conn.poll_transmit() {
                out.push(t);
                progressed = true;
            }
            while let Some(e) = conn.poll_event() {
                progressed = true;
                assert!(!closed, "event after Closed: {e:?}");
                match e {
                    ServerEvent::AllocationRequested(_) => {
                        conn.accept_allocation(now).expect("pending allocation");
                    }
                    ServerEvent::BindRequested(r) => {
                        if r.destination.port() % 2 == 0 {
                            conn.accept_bind(now).expect("pending bind");
                        } else {
                            conn.reject(now, crate::ErrorCode::DESTINATION_NOT_ALLOWED, None);
                        }
                    }
                    ServerEvent::Datagram(p) => {
                        let _ = conn.send_datagram(now, &p);
                    }
                    ServerEvent::Closed(_) => closed = true,
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
        // Streaming-mode bytes after Bound are raw, so only check while framed.
        check_stream(&out);
    }

    fn step(&mut self, op: u8, chunk: &[u8]) {
        let now = self.now;
        match op % 10 {
            0 => {
                if self.alloc_conn.is_closed() {
                    self.alloc_conn = Connection::new(self.server.clone(), Role::Allocation, now);
                }
                self.alloc_conn.handle_input(now, chunk);
                Self::drain_conn(&mut self.alloc_conn, now);
            }
            1 => {
                if self.relay_conn.is_closed() {
                    self.relay_conn = Connection::new(self.server.clone(), Role::Relay, now);
                }
                self.relay_conn.handle_input(now, chunk);
                Self::drain_conn(&mut self.relay_conn, now);
            }
            2 => {
                // A valid Bind with an input-chosen destination, then the chunk.
                let port = u16::from(chunk.first().copied().unwrap_or(0));
                let f = Frame::Bind(Bind {
                    ticket: self.ticket.clone(),
                    mode: if port % 3 == 0 {
                        BindMode::Stream
                    } else {
                        BindMode::Datagram
                    },
                    destination: SocketAddr::from(([198, 51, 100, 7], port)).into(),
                    rebind: None,
                });
                let mut conn = Connection::new(self.server.clone(), Role::Relay, now);
                conn.handle_input(now, &f.to_bytes());
                conn.handle_input(now, chunk);
                Self::drain_conn(&mut conn, now);
                self.relay_conn = conn;
            }
            3 => {
                let from =
                    SocketAddr::from(([203, 0, 113, chunk.first().copied().unwrap_or(1)], 5000));
                let len = chunk.len();
                let _ = self
                    .udp
                    .handle_datagram(now, from, Bytes::copy_from_slice(chunk));
                self.drain_udp(Some(len));
            }
            4 => {
                // A valid UDP bind from an input-chosen address.
                let from =
                    SocketAddr::from(([203, 0, 113, chunk.first().copied().unwrap_or(1)], 5000));
                let f = Frame::Bind(Bind {
                    ticket: self.ticket.clone(),
                    mode: BindMode::Datagram,
                    destination: SocketAddr::from(([198, 51, 100, 7], 9000)).into(),
                    rebind: None,
                });
                let bytes = f.to_bytes();
                let len = bytes.len();
                let _ = self.udp.handle_datagram(now, from, bytes);
                self.drain_udp(Some(len));
            }
            5 => match self.server.handle_allocation_datagram(now, chunk) {
                UdpAllocation::Reply(b) => assert!(b.len() <= chunk.len(), "UDP amplification"),
                UdpAllocation::Pending(p) => {
                    let b = p.accept();
                    assert!(b.len() <= chunk.len(), "UDP amplification");
                }
                _ => {}
            },
            6 => {
                let ms = u64::from(chunk.first().copied().unwrap_or(0)) * 500;
                self.now += Duration::from_millis(ms);
                let now = self.now;
                for conn in [&mut self.alloc_conn, &mut self.relay_conn] {
                    if let Some(t) = conn.poll_timeout()
                        && t <= now
                    {
                        conn.handle_timeout(now);
                        assert!(
                            conn.poll_timeout().is_none_or(|t| t > now),
                            "timer did not advance"
                        );
                    }
                    Self::drain_conn(conn, now);
                }
                self.udp.handle_timeout(now);
                assert!(self.udp.poll_timeout().is_none_or(|t| t > now));
                self.drain_udp(None);
                self.allocator.handle_timeout(now);
                if let Some(b) = &mut self.binding {
                    b.handle_timeout(now);
                    assert!(
                        b.poll_timeout().is_none_or(|t| t > now),
                        "binding timer did not advance"
                    );
                }
                self.drain_clients();
            }
            7 => {
                self.allocator.handle_input(now, chunk);
                self.drain_clients();
            }
            8 => {
                if let Some(b) = &mut self.binding {
                    b.handle_input(now, chunk);
                } else {
                    let alloc = crate::client::Allocation {
                        session_id: 99,
                        ticket: self.ticket.clone(),
                        capabilities: crate::Capabilities::ALL,
                        transports: Transports::ALL,
                        expires_at: now + Duration::from_secs(600),
                        refresh_at: now + Duration::from_secs(400),
                        keepalive_interval: Duration::from_secs(15),
                        idle_timeout: Duration::from_secs(60),
                        tcp_relays: vec![],
                        udp_relays: vec![],
                    };
                    let path = if chunk.first().is_some_and(|b| b % 2 == 0) {
                        Path::Udp
                    } else {
                        Path::Tcp
                    };
                    let dest = SocketAddr::from(([198, 51, 100, 7], 9000)).into();
                    self.binding = RelayBinding::new(
                        &self.client_cfg,
                        &alloc,
                        path,
                        BindMode::Datagram,
                        dest,
                        now,
                    )
                    .ok();
                }
                self.drain_clients();
            }
            _ => {
                if let Some(b) = &mut self.binding {
                    let _ = b.send_datagram(now, chunk);
                    if chunk.len() % 5 == 0 {
                        let _ = b.rebind(now);
                    }
                    if chunk.len() % 7 == 0 {
                        b.close(now);
                    }
                }
                self.drain_clients();
            }
        }
    }

    fn drain_udp(&mut self, limit: Option<usize>) {
        let now = self.now;
        for _ in 0..64 {
            let Some(e) = self.udp.poll_event() else {
                break;
            };
            if let UdpRelayEvent::BindRequested { id, request, .. } = e {
                if request.destination.port() % 2 == 0 {
                    let _ = self.udp.accept_bind(now, id);
                } else {
                    self.udp
                        .reject_bind(id, crate::ErrorCode::DESTINATION_NOT_ALLOWED, None);
                }
            }
        }
        while let Some(t) = self.udp.poll_transmit() {
            if let Some(limit) = limit {
                assert!(
                    t.contents.len() <= limit.max(crate::udp::UDP_HEADER_LEN),
                    "UDP relay amplification"
                );
            }
        }
    }

    fn drain_clients(&mut self) {
        while let Some(t) = self.allocator.poll_transmit() {
            Frame::parse(&t).expect("allocator emits whole frames");
        }
        let _ = self.allocator.poll_event();
        if let Some(b) = &mut self.binding {
            let mut closed = false;
            while let Some(e) = b.poll_event() {
                assert!(!closed, "binding event after Closed");
                if matches!(e, BindingEvent::Closed(_)) {
                    closed = true;
                }
            }
            while b.poll_transmit().is_some() {}
        }
    }
}

/// Session hook: the input is a sequence of `[op, len, bytes…]` steps that
/// drive the server connections, the UDP relay, the UDP allocation handler,
/// the client state machines and the simulated clock. Invariants: no UDP
/// reply larger than its request, server output always decodes, timers
/// advance, no event after `Closed`.
pub fn session(data: &[u8]) {
    let mut h = Harness::new();
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 2 && steps < 256 {
        let op = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let chunk = &rest[2..2 + len];
        h.step(op, chunk);
        rest = &rest[2 + len..];
        steps += 1;
    }
}
