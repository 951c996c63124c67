//! A relay is an attack surface: every refusal the proxy owes, each with its
//! error code, and the guarantees that bad input harms nobody else.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cloudproxy_proto::frame::{AllocateRequest, Bind, BindMode, Frame};
use cloudproxy_proto::ticket::{Ticket, TicketKeyRing, credential_proof};
use cloudproxy_proto::{Address, AppId, Capabilities, ErrorCode, SealedTicket, Text, Transports};
use proxy_support::{
    APP, Rig, allocate_raw, bind_tcp_raw, bind_udp_raw, client_config, refusal, tcp_echo,
    ticket_key, udp_echo, unix_now, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn relay_of(rig: &Rig) -> SocketAddr {
    rig.node.addrs().tcp_relay
}

#[tokio::test]
async fn unknown_app_and_wrong_secret_are_bad_credentials() {
    let rig = Rig::loopback().await;
    let wrong_secret = client_config("00112233445566778899aabbccddeeff");
    let err = allocate_raw(rig.allocation_addr(), &wrong_secret)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::BAD_CREDENTIAL), "{err}");

    let mut unknown_app = rig.client.clone();
    unknown_app.app_id = AppId::new("someone-else").unwrap();
    let err = allocate_raw(rig.allocation_addr(), &unknown_app)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::BAD_CREDENTIAL), "{err}");

    // No credential at all: a Bind with no allocation behind it.
    let mut allocation = rig.allocate().await;
    allocation.ticket = SealedTicket::new(Bytes::from_static(b"not a ticket")).unwrap();
    let echo = tcp_echo().await;
    let err = bind_tcp_raw(
        relay_of(&rig),
        &rig.client,
        &allocation,
        BindMode::Stream,
        Address::Ip(echo),
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::INVALID_TICKET), "{err}");
    assert!(rig.node.stats().allocations_refused >= 2);
}

#[tokio::test]
async fn expired_tampered_and_foreign_tickets_are_refused() {
    let rig = Rig::loopback().await;
    let echo = tcp_echo().await;
    let good = rig.allocate().await;
    let bind = |allocation| {
        let rig = &rig;
        async move {
            bind_tcp_raw(
                relay_of(rig),
                &rig.client,
                &allocation,
                BindMode::Stream,
                Address::Ip(echo),
            )
            .await
            .map(|_| ())
        }
    };

    // Expired: signed with the node's own key, but in the past.
    let ring = TicketKeyRing::new(1, ticket_key());
    let ticket = Ticket {
        key_id: 1,
        session_id: 42,
        app_id: AppId::new(APP).unwrap(),
        transports: Transports::ALL,
        created_at: unix_now() - 3600,
        expires_at: unix_now() - 60,
    };
    let mut expired = good.clone();
    expired.ticket = ring.seal(&ticket);
    assert_eq!(
        refusal(&bind(expired).await.unwrap_err()),
        Some(ErrorCode::EXPIRED_TICKET)
    );

    // Tampered: one bit of the good ticket flipped, in the body and in the MAC.
    for index in [3, good.ticket.as_bytes().len() - 1] {
        let mut bytes = BytesMut::from(good.ticket.as_bytes());
        bytes[index] ^= 0x01;
        let mut tampered = good.clone();
        tampered.ticket = SealedTicket::new(bytes.freeze()).unwrap();
        assert_eq!(
            refusal(&bind(tampered).await.unwrap_err()),
            Some(ErrorCode::INVALID_TICKET),
            "byte {index}"
        );
    }

    // Foreign: a well-formed ticket signed with a key this node does not hold.
    let mut foreign = good.clone();
    foreign.ticket = TicketKeyRing::new(1, vec![0x42; 32]).seal(&Ticket {
        expires_at: unix_now() + 600,
        ..ticket
    });
    assert_eq!(
        refusal(&bind(foreign).await.unwrap_err()),
        Some(ErrorCode::INVALID_TICKET)
    );

    // And the good one still works.
    bind(good).await.unwrap();
}

/// With only 192.0.2.0/24 allowed, the loopback echo servers are out of
/// reach, however their address is written.
#[tokio::test]
async fn destinations_outside_the_allowlist_are_refused_in_every_disguise() {
    let rig = Rig::start(r#""192.0.2.0/24""#, 10, "").await;
    let tcp = tcp_echo().await;
    let udp = udp_echo().await;
    let allocation = rig.allocate().await;
    let udp_relay = allocation.udp_relays[0];
    let disguises = |port: u16| -> Vec<Address> {
        vec![
            Address::Ip(SocketAddr::from(([127, 0, 0, 1], port))),
            Address::Ip(format!("[::ffff:127.0.0.1]:{port}").parse().unwrap()),
            Address::Ip(SocketAddr::from(([0, 0, 0, 0], port))),
            Address::Ip(format!("[::]:{port}").parse().unwrap()),
            Address::Ip(format!("[::1]:{port}").parse().unwrap()),
            Address::Domain(
                cloudproxy_proto::DomainName::new("localhost").unwrap(),
                port,
            ),
        ]
    };
    for destination in disguises(tcp.port()) {
        for mode in [BindMode::Stream, BindMode::Datagram] {
            let err = bind_tcp_raw(
                relay_of(&rig),
                &rig.client,
                &allocation,
                mode,
                destination.clone(),
            )
            .await
            .unwrap_err();
            assert_eq!(
                refusal(&err),
                Some(ErrorCode::DESTINATION_NOT_ALLOWED),
                "{destination} {mode:?}: {err}"
            );
        }
    }
    for destination in disguises(udp.port()) {
        let err = bind_udp_raw(udp_relay, &rig.client, &allocation, destination.clone())
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&err),
            Some(ErrorCode::DESTINATION_NOT_ALLOWED),
            "{destination}: {err}"
        );
    }
    let stats = rig.node.stats();
    assert_eq!(stats.destinations_refused, 6 * 3);
    assert_eq!(stats.tcp_sessions_total + stats.udp_bindings_total, 0);
}

#[tokio::test]
async fn the_per_app_quota_holds_at_allocation_and_at_bind() {
    let rig = Rig::start(r#""127.0.0.1""#, 2, "").await;
    let echo = tcp_echo().await;
    let relay = relay_of(&rig);
    let first = rig.allocate().await;
    let second = rig.allocate().await;
    let third = rig.allocate().await; // allowed: nothing is bound yet

    let (_s1, _) = rig.bind_stream(&first, echo).await;
    let (s2, _) = rig.bind_stream(&second, echo).await;
    // A second binding of a live session is not a new session.
    let (_s1b, _) = bind_tcp_raw(
        relay,
        &rig.client,
        &first,
        BindMode::Datagram,
        Address::Ip(udp_echo().await),
    )
    .await
    .unwrap();
    assert_eq!(rig.node.sessions(APP), 2);

    let err = bind_tcp_raw(
        relay,
        &rig.client,
        &third,
        BindMode::Stream,
        Address::Ip(echo),
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::QUOTA_EXCEEDED), "{err}");
    let err = allocate_raw(rig.allocation_addr(), &rig.client)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::QUOTA_EXCEEDED), "{err}");

    // Closing a session frees its place.
    drop(s2);
    within("the freed place", async {
        while rig.node.sessions(APP) != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    rig.bind_stream(&third, echo).await;
}

/// Reads what the proxy sends until it closes; returns the error code of the
/// frame it sent, if any.
async fn closing_error(stream: &mut TcpStream) -> Option<ErrorCode> {
    let mut got = Vec::new();
    within("the close", stream.read_to_end(&mut got))
        .await
        .unwrap();
    match Frame::parse(&got) {
        Ok(Frame::Error(e)) => Some(e.code),
        _ => None,
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        10,
        "[limits]\nhandshake_timeout_ms = 300\n",
    )
    .await;
    for addr in [rig.allocation_addr(), relay_of(&rig)] {
        let started = std::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            closing_error(&mut silent).await,
            Some(ErrorCode::HANDSHAKE_TIMEOUT),
            "{addr}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    assert_eq!(rig.node.stats().handshake_timeouts, 2);
}

#[tokio::test]
async fn garbage_on_every_port_harms_no_other_session() {
    let rig = Rig::loopback().await;
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let (mut live, _) = bind_tcp_raw(
        relay_of(&rig),
        &rig.client,
        &allocation,
        BindMode::Stream,
        Address::Ip(echo),
    )
    .await
    .unwrap();

    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0u8; 64],
        &[0xff; 3000],
        b"CP\x01\xff\xff\xff\xff\xff",
    ];
    for addr in [rig.allocation_addr(), relay_of(&rig)] {
        for junk in garbage {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // The proxy may close before reading everything; that is fine.
            let _ = stream.write_all(junk).await;
            let code = closing_error(&mut stream).await;
            assert!(
                matches!(
                    code,
                    Some(
                        ErrorCode::MALFORMED_FRAME
                            | ErrorCode::UNSUPPORTED_VERSION
                            | ErrorCode::UNEXPECTED_FRAME
                    )
                ),
                "{addr} {junk:?}: {code:?}"
            );
        }
    }
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for addr in [rig.node.addrs().allocation_udp[0], allocation.udp_relays[0]] {
        for junk in garbage {
            udp.send_to(junk, addr).await.unwrap();
        }
    }
    // The live session is untouched.
    live.write_all(b"still here?").await.unwrap();
    let mut reply = [0u8; 11];
    within("echo after garbage", live.read_exact(&mut reply))
        .await
        .unwrap();
    assert_eq!(&reply, b"still here?");
    assert!(rig.node.stats().malformed >= 8);
}

/// Every answer to an unauthenticated UDP datagram is at most its size.
/// Each probe is followed by a fence — a request with a known answer — so
/// "no answer" is observed without waiting on a clock.
#[tokio::test]
async fn unauthenticated_udp_never_gets_a_larger_reply() {
    let rig = Rig::loopback().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let allocation_udp = rig.node.addrs().allocation_udp[0];

    let request = |padding: usize| {
        let nonce = [7u8; 16];
        let timestamp = unix_now();
        let app_id = AppId::new(APP).unwrap();
        Frame::AllocateRequest(AllocateRequest {
            capabilities: Capabilities::ALL,
            transports: Transports::ALL,
            timestamp,
            nonce,
            proof: credential_proof(&proxy_support::secret(), &app_id, &nonce, timestamp),
            app_id,
            client_version: Text::new("probe").unwrap(),
            padding,
        })
        .to_bytes()
    };
    // The fence: a full-size request, answered with AllocateOk.
    let fence = request(1200);
    let probes: Vec<Bytes> = vec![
        request(0),                      // valid but too small for AllocateOk
        Bytes::from_static(b"CP"),       // a header fragment
        Bytes::from_static(&[0xCA; 16]), // a relay header on the allocation port
        Bytes::from(vec![b'x'; 500]),    // junk
        request(0).slice(..40),          // a truncated request
    ];
    assert_no_larger_replies(&socket, allocation_udp, &probes, &fence, |f| {
        matches!(f, Frame::AllocateOk(_))
    })
    .await;

    // The relay's UDP port: here the fence is a valid Bind, which the relay
    // answers with the same BindOk each time it is repeated.
    let allocation = rig.allocate().await;
    let relay = allocation.udp_relays[0];
    let fence = Frame::Bind(Bind {
        ticket: allocation.ticket.clone(),
        mode: BindMode::Datagram,
        destination: Address::Ip(udp_echo().await),
        rebind: None,
    })
    .to_bytes();
    let bad_ticket = Frame::Bind(Bind {
        ticket: SealedTicket::new(Bytes::from_static(b"forged")).unwrap(),
        mode: BindMode::Datagram,
        destination: Address::Ip("127.0.0.1:9".parse().unwrap()),
        rebind: None,
    })
    .to_bytes();
    let mut unknown_binding = vec![0xCA, 1, 1, 0];
    unknown_binding.extend_from_slice(&[0x11; 12]);
    let probes: Vec<Bytes> = vec![
        bad_ticket.clone(),
        bad_ticket.slice(..12),
        Bytes::from(unknown_binding),
        Bytes::from_static(b"CP"),
        Bytes::from(vec![b'x'; 500]),
        request(0),
    ];
    assert_no_larger_replies(&socket, relay, &probes, &fence, |f| {
        matches!(f, Frame::BindOk(_))
    })
    .await;
}

/// Sends each probe to `target`, then the fence (a request with a known
/// answer), and checks every answer that comes before the fence's is no
/// larger than the probe: "no answer" is observed without a clock.
async fn assert_no_larger_replies(
    socket: &UdpSocket,
    target: SocketAddr,
    probes: &[Bytes],
    fence: &[u8],
    is_fence_answer: impl Fn(&Frame) -> bool,
) {
    let mut buf = vec![0u8; 65536];
    for probe in probes {
        socket.send_to(probe, target).await.unwrap();
        socket.send_to(fence, target).await.unwrap();
        loop {
            let (n, _) = within("udp answer", socket.recv_from(&mut buf))
                .await
                .unwrap();
            if Frame::parse(&buf[..n]).is_ok_and(|f| is_fence_answer(&f)) {
                assert!(n <= fence.len());
                break;
            }
            assert!(
                n <= probe.len(),
                "{target}: a {}-byte probe got a {n}-byte answer",
                probe.len()
            );
        }
    }
}
