//! Writes the committed seed corpora of the `frame`, `udp_header`, `ticket`
//! and `session` fuzz targets from real encoded frames:
//!
//! ```text
//! cargo run -p cloudproxy-proto --example gen_corpus
//! ```
//!
//! Files are named by a hash of their contents, so re-running adds nothing new.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use cloudproxy_proto::client::{Allocator, ClientConfig};
use cloudproxy_proto::frame::*;
use cloudproxy_proto::ticket::{Ticket, TicketKeyRing};
use cloudproxy_proto::udp::{UdpHeader, UdpKind};
use cloudproxy_proto::*;

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn write(target: &str, data: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(format!("seed-{:016x}", fnv(data))), data).expect("write seed");
}

fn sample_frames(ticket: &SealedTicket) -> Vec<Frame> {
    let app = AppId::new("fuzz-app").unwrap();
    vec![
        Frame::AllocateRequest(AllocateRequest {
            capabilities: Capabilities::ALL,
            transports: Transports::ALL,
            timestamp: 1_700_000_000,
            nonce: [1; 16],
            app_id: app.clone(),
            proof: [2; 32],
            client_version: Text::new("sdk/1.0").unwrap(),
            padding: 16,
        }),
        Frame::AllocateOk(AllocateOk {
            session_id: 99,
            capabilities: Capabilities::ALL,
            transports: Transports::ALL,
            lifetime_secs: 600,
            keepalive_secs: 15,
            idle_timeout_secs: 60,
            ticket: ticket.clone(),
            tcp_relays: vec!["192.0.2.1:4000".parse().unwrap()],
            udp_relays: vec![
                "192.0.2.1:4500".parse().unwrap(),
                "[2001:db8::1]:4501".parse().unwrap(),
            ],
        }),
        Frame::Error(ErrorFrame::new(ErrorCode::EXPIRED_TICKET)),
        Frame::Refresh(Refresh {
            ticket: ticket.clone(),
            padding: 4,
        }),
        Frame::Bind(Bind {
            ticket: ticket.clone(),
            mode: BindMode::Stream,
            destination: Address::Domain(DomainName::new("edge.example.com").unwrap(), 7000),
            rebind: None,
        }),
        Frame::Bind(Bind {
            ticket: ticket.clone(),
            mode: BindMode::Datagram,
            destination: Address::Ip("[2001:db8::2]:5000".parse().unwrap()),
            rebind: Some(Rebind {
                binding_id: 5,
                binding_token: 6,
            }),
        }),
        Frame::BindOk(BindOk {
            binding_id: 5,
            binding_token: 6,
            mode: BindMode::Datagram,
            keepalive_secs: 15,
            idle_timeout_secs: 60,
        }),
        Frame::Datagram(Bytes::from(vec![0x80; 200])),
        Frame::Ping(1),
        Frame::Pong(1),
        Frame::Close,
        Frame::Join(Join {
            app_id: app,
            channel: ChannelName::new("room-1").unwrap(),
            user_id: 42,
            resume: Some(Resume {
                member_id: 3,
                resume_token: 4,
                last_received: 5,
            }),
        }),
        Frame::Joined(Joined {
            member_id: 3,
            resume_token: 4,
            media_token: 8,
            last_received: 0,
            resumed: false,
        }),
        Frame::JoinRefused(ErrorFrame::new(ErrorCode::JOIN_REFUSED)),
        Frame::Leave,
        Frame::Message(Message {
            seq: 1,
            from: 3,
            payload: Bytes::from_static(b"hello"),
        }),
        Frame::Ack(1),
        Frame::Media(Media {
            member_id: 3,
            token: 8,
            payload: Bytes::from(vec![0x90; 100]),
        }),
        Frame::MemberJoined(Member {
            member_id: 4,
            user_id: 43,
        }),
        Frame::MemberLeft(Member {
            member_id: 4,
            user_id: 43,
        }),
    ]
}

fn step(out: &mut Vec<u8>, op: u8, chunk: &[u8]) {
    out.push(op);
    out.push(chunk.len().min(255) as u8);
    out.extend_from_slice(&chunk[..chunk.len().min(255)]);
}

fn main() {
    let keys = TicketKeyRing::new(7, b"fuzzing ticket key, 32 bytes ...".to_vec());
    let ticket = keys.seal(&Ticket {
        key_id: 7,
        session_id: 99,
        app_id: AppId::new("fuzz-app").unwrap(),
        transports: Transports::ALL,
        created_at: 1_700_000_000,
        expires_at: 1_700_000_600,
    });

    // frame: every frame type, plus malformed neighbours.
    let frames = sample_frames(&ticket);
    for f in &frames {
        let b = f.to_bytes();
        write("frame", &b);
        write("frame", &b[..b.len() / 2]);
    }
    let two: Vec<u8> = [frames[8].to_bytes(), frames[7].to_bytes()].concat();
    write("frame", &two);
    write("frame", b"CP\x01\x7f\x80\x00\x00\x02zz");
    write(
        "frame",
        b"CP\x02\x13\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x01",
    );
    write("frame", b"CP\x01\x44\x00\x01\x00\x01");

    // udp_header: every kind, with and without payloads.
    for (kind, payload) in [
        (UdpKind::Data, &[0x80u8; 200][..]),
        (UdpKind::Data, &[][..]),
        (UdpKind::Keepalive, &[][..]),
        (UdpKind::KeepaliveAck, &[][..]),
        (UdpKind::Close, &[][..]),
    ] {
        let mut d = UdpHeader {
            kind,
            binding_id: 0x0102_0304,
            binding_token: 0x1122_3344_5566_7788,
        }
        .to_array()
        .to_vec();
        d.extend_from_slice(payload);
        write("udp_header", &d);
    }
    write(
        "udp_header",
        b"\xca\x01\x09\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01",
    );

    // ticket: real sealed tickets (verify with the hook's key) and raw seeds.
    write("ticket", ticket.as_bytes());
    let mut tampered = ticket.as_bytes().to_vec();
    tampered[10] ^= 1;
    write("ticket", &tampered);
    write("ticket", &[0u8; 40]);
    write("ticket", b"\x01\x00\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x63\x00\x00\x00\x00\x65\x53\xf1\x00\x00\x00\x00\x00\x65\x53\xf3\x58\x07\x01a");

    // session: op sequences that reach deep states.
    let now = Instant::now();
    let cfg = ClientConfig::new(
        AppId::new("fuzz-app").unwrap(),
        b"fuzz-secret".to_vec(),
        Timebase::new(now, 1_700_000_000),
    );
    let req = Allocator::new(&cfg, Path::Tcp, [3; 16], now)
        .poll_transmit()
        .unwrap();
    let udp_req = Allocator::new(&cfg, Path::Udp, [4; 16], now)
        .poll_transmit()
        .unwrap();
    let mut s = Vec::new();
    step(&mut s, 0, &req);
    step(&mut s, 6, &[30]);
    step(&mut s, 0, b"CP\x01\x04");
    write("session", &s);

    let mut s = Vec::new();
    step(&mut s, 2, &[2, 0, 0]);
    step(&mut s, 1, &frames[7].to_bytes());
    step(&mut s, 1, &frames[8].to_bytes());
    step(&mut s, 6, &[200]);
    write("session", &s);

    let mut s = Vec::new();
    step(&mut s, 4, &[10]);
    let data = UdpHeader {
        kind: UdpKind::Keepalive,
        binding_id: 1,
        binding_token: 2,
    }
    .to_array();
    step(&mut s, 3, &data);
    step(&mut s, 6, &[40]);
    step(&mut s, 6, &[255]);
    write("session", &s);

    let mut s = Vec::new();
    step(&mut s, 8, &[0]);
    step(&mut s, 9, b"media");
    step(&mut s, 6, &[31]);
    step(&mut s, 8, &frames[6].to_bytes());
    step(&mut s, 9, b"media!");
    step(&mut s, 6, &[100]);
    write("session", &s);

    let mut s = Vec::new();
    step(&mut s, 8, &[1]);
    step(&mut s, 8, &frames[6].to_bytes());
    step(&mut s, 7, &frames[1].to_bytes());
    step(&mut s, 6, &[255]);
    write("session", &s);

    // A padded UDP allocation request (longer than one step: split over steps
    // is not possible, so send its first 255 bytes — it is refused cleanly).
    let mut s = Vec::new();
    step(&mut s, 5, &udp_req);
    step(&mut s, 5, &req);
    write("session", &s);

    println!("corpora written under fuzz/corpus/");
}
