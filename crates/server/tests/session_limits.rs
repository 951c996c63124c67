//! Every session ends at its deadlines, whatever its client does: a client
//! that stops reading, a binding that outlives its session, an association
//! taken by a stranger, a frame larger than the operator allows.

mod proxy_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cloudproxy_proto::client::Allocation;
use cloudproxy_proto::frame::{Bind, BindMode, Frame, HEADER_LEN};
use cloudproxy_proto::{Address, ErrorCode};
use cloudproxy_transport::lifecycle::DrainOutcome;
use proxy_support::{
    APP, NODE_QUEUE_BOUND, Rig, SECRET_HEX, bind_tcp_raw, echo_back, hex, kernel_buffers_bound,
    ping_without_reading, socks_request, soon, tcp_echo, udp_echo, until, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const SOCKS: &str = "[socks5]\nenabled = true\nport = 0\n";

/// A datagram-mode binding on a connection whose receive buffer is tiny, so
/// that a client which does not read backs the relay up quickly.
async fn datagram_binding(rig: &Rig, allocation: &Allocation) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(rig.node.addrs().tcp_relay).await.unwrap();
    let bind = Frame::Bind(Bind {
        ticket: allocation.ticket.clone(),
        mode: BindMode::Datagram,
        destination: Address::Ip(udp_echo().await),
        rebind: None,
    });
    stream.write_all(&bind.to_bytes()).await.unwrap();
    let mut header = [0u8; HEADER_LEN];
    within("BindOk", stream.read_exact(&mut header))
        .await
        .unwrap();
    let len = usize::from(header[5]) << 16 | usize::from(header[6]) << 8 | usize::from(header[7]);
    let mut frame = header.to_vec();
    frame.resize(HEADER_LEN + len, 0);
    within("BindOk", stream.read_exact(&mut frame[HEADER_LEN..]))
        .await
        .unwrap();
    assert!(
        matches!(Frame::parse(&frame), Ok(Frame::BindOk(_))),
        "{frame:?}"
    );
    stream
}

/// 64 MiB: more pings than any test's node reads.
const PINGS_CAP: u64 = 64 << 20;

#[tokio::test]
async fn datagram_client_that_stops_reading_is_closed_at_idle_timeout() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[limits]\nidle_timeout_ms = 1000\n").await;
    let allocation = rig.allocate().await;
    let stream = datagram_binding(&rig, &allocation).await;
    let (_never_read, writer) = stream.into_split();
    let started = Instant::now();
    let pinger = ping_without_reading(writer, PINGS_CAP, Arc::default());
    // The relay stops reading a client whose answers back up, so its idle
    // timer runs out and the connection closes: the pinger's writes fail.
    // Before the relay's buffers fill, it answers megabytes of pings: seconds
    // in a debug build on a loaded machine. The bound only catches a hang.
    within("the pinger's end", pinger).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    until("the session's end", || {
        rig.node.stats().tcp_sessions_active == 0
    })
    .await;
}

#[tokio::test]
async fn datagram_client_that_stops_reading_is_closed_at_session_lifetime() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        10,
        "[limits]\nmax_session_lifetime_secs = 3\n",
    )
    .await;
    let allocation = rig.allocate().await;
    let stream = datagram_binding(&rig, &allocation).await;
    let (_never_read, writer) = stream.into_split();
    let pinger = ping_without_reading(writer, PINGS_CAP, Arc::default());
    within("the pinger's end", pinger).await.unwrap();
    until("the session's end", || {
        rig.node.stats().tcp_sessions_active == 0
    })
    .await;
}

#[tokio::test]
async fn drain_completes_with_a_datagram_client_that_stops_reading() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[limits]\ndrain_timeout_ms = 1000\n").await;
    let allocation = rig.allocate().await;
    let stream = datagram_binding(&rig, &allocation).await;
    let (_never_read, writer) = stream.into_split();
    let written = Arc::new(AtomicU64::new(0));
    let pinger = ping_without_reading(writer, PINGS_CAP, Arc::clone(&written));
    // Under way (the relay has answered pings) before the node is told to
    // stop; within the drain's second the relay is stuck behind answers the
    // client does not read.
    until("64 KiB of pings", || written.load(Relaxed) >= 64 << 10).await;
    let outcome = soon("the drain", rig.node.shutdown()).await;
    assert!(
        matches!(outcome, DrainOutcome::ForcedClose(n) if n >= 1),
        "{outcome:?}"
    );
    soon("the pinger's end", pinger).await.unwrap();
}

/// Issue 23: a client that floods `Ping`s and never reads the `Pong`s makes
/// the node queue no more than a bound (it stops decoding, and reading, that
/// client), and is closed at its idle timeout as not reading: its pings are
/// no activity.
#[tokio::test]
async fn a_ping_flood_that_is_never_read_is_bounded_and_cut_as_not_reading() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[limits]\nidle_timeout_ms = 1000\n").await;
    let allocation = rig.allocate().await;
    let stream = datagram_binding(&rig, &allocation).await;
    let (_never_read, writer) = stream.into_split();
    let written = Arc::new(AtomicU64::new(0));
    // Far more than the kernel's buffers and the node's bound can take: a
    // node that went on reading (and answering) would take it all.
    let bound = kernel_buffers_bound() + NODE_QUEUE_BOUND;
    let started = Instant::now();
    let pinger = ping_without_reading(writer, bound + (16 << 20), Arc::clone(&written));
    let ended = within("the pinger's end", pinger).await.unwrap();
    assert!(
        ended.is_some(),
        "the node took {} bytes of pings and never cut the client",
        written.load(Relaxed)
    );
    assert!(
        written.load(Relaxed) <= bound,
        "{} bytes of pings taken, more than the kernel's buffers and the node's bound ({bound})",
        written.load(Relaxed)
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    until("the session's end", || {
        rig.node.stats().tcp_sessions_active == 0
    })
    .await;
    let stats = rig.node.stats();
    assert_eq!(stats.tcp_sessions_not_reading, 1, "{stats}");
    assert_eq!(stats.tcp_sessions_idle_timeout, 0, "{stats}");
}

/// Issue 23: pings alone, read or not, do not keep a datagram-mode session
/// past its idle timeout; only datagrams for the destination do.
#[tokio::test]
async fn a_client_that_only_pings_is_closed_at_the_idle_timeout() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[limits]\nidle_timeout_ms = 1000\n").await;
    let allocation = rig.allocate().await;
    let mut stream = datagram_binding(&rig, &allocation).await;
    let started = Instant::now();
    let mut n = 0u64;
    let code = within("the idle close", async {
        loop {
            n += 1;
            if stream.write_all(&Frame::Ping(n).to_bytes()).await.is_err() {
                return None;
            }
            let mut frame = vec![0u8; HEADER_LEN];
            if stream.read_exact(&mut frame).await.is_err() {
                return None;
            }
            let len =
                usize::from(frame[5]) << 16 | usize::from(frame[6]) << 8 | usize::from(frame[7]);
            frame.resize(HEADER_LEN + len, 0);
            stream.read_exact(&mut frame[HEADER_LEN..]).await.unwrap();
            match Frame::parse(&frame).unwrap() {
                Frame::Pong(m) => assert_eq!(m, n),
                Frame::Error(e) => return Some(e.code),
                other => panic!("unexpected {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(code, Some(ErrorCode::IDLE_TIMEOUT));
    assert!(n >= 5, "the pings were answered meanwhile ({n})");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    until("the session's end", || {
        rig.node.stats().tcp_sessions_active == 0
    })
    .await;
    assert_eq!(rig.node.stats().tcp_sessions_idle_timeout, 1);
}

/// Reads until the relay closes the connection (EOF or reset).
async fn closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    soon("the close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A SOCKS5 greeting with user/password and a request; returns the stream
/// after the proxy's method choice, auth status and reply, and the reply's
/// code and bound address.
async fn socks5_request(
    socks: SocketAddr,
    password: &str,
    request: &[u8],
) -> (TcpStream, u8, SocketAddr) {
    let mut s = TcpStream::connect(socks).await.unwrap();
    let mut hello = vec![5, 1, 2, 1, APP.len() as u8];
    hello.extend_from_slice(APP.as_bytes());
    hello.push(password.len() as u8);
    hello.extend_from_slice(password.as_bytes());
    hello.extend_from_slice(request);
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 2 + 2 + 10];
    within("the socks5 reply", s.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer[..4], &[5, 2, 1, 0], "method, auth ok");
    assert_eq!(answer[7], 1, "an IPv4 bound address");
    let bound = SocketAddr::new(
        std::net::Ipv4Addr::new(answer[8], answer[9], answer[10], answer[11]).into(),
        u16::from_be_bytes([answer[12], answer[13]]),
    );
    (s, answer[5], bound)
}

#[tokio::test]
async fn stream_bindings_end_at_session_lifetime() {
    // A few seconds: whole-second ticket deadlines leave the binds below
    // at least two, even on a loaded machine; the idle timeout stays far
    // away.
    let rig = Rig::start(
        r#""127.0.0.1""#,
        10,
        &format!("{SOCKS}[limits]\nmax_session_lifetime_secs = 3\n"),
    )
    .await;
    let socks = rig.node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;

    // Native stream binding.
    let (mut native, _) = rig.bind_stream(&allocation, echo).await;
    echo_back(&mut native, b"native").await;

    // SOCKS5 CONNECT with the same session's ticket as the password.
    let ticket = hex(allocation.ticket.as_bytes());
    let (mut with_ticket, code, _) = socks5_request(socks, &ticket, &socks_request(1, echo)).await;
    assert_eq!(code, 0);
    echo_back(&mut with_ticket, b"ticket").await;

    // SOCKS5 CONNECT with the app secret: a new session, with the same
    // maximum lifetime from its login.
    let (mut with_secret, code, _) =
        socks5_request(socks, SECRET_HEX, &socks_request(1, echo)).await;
    assert_eq!(code, 0);
    echo_back(&mut with_secret, b"secret").await;

    closed(&mut native).await;
    closed(&mut with_ticket).await;
    closed(&mut with_secret).await;
    until("the sessions' end", || {
        rig.node.stats().tcp_sessions_active == 0
    })
    .await;
}

#[tokio::test]
async fn socks5_udp_association_ends_at_session_lifetime() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        10,
        &format!("{SOCKS}[limits]\nmax_session_lifetime_secs = 3\n"),
    )
    .await;
    let socks = rig.node.addrs().socks5.unwrap();
    let allocation = rig.allocate().await;
    let ticket = hex(allocation.ticket.as_bytes());
    let unspecified: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let (mut control, code, _) =
        socks5_request(socks, &ticket, &socks_request(3, unspecified)).await;
    assert_eq!(code, 0);
    assert_eq!(rig.node.stats().udp_bindings_active, 1);
    closed(&mut control).await;
    until("the association's end", || {
        rig.node.stats().udp_bindings_active == 0
    })
    .await;
}

/// A SOCKS5 UDP request header for `to`.
fn udp_header(to: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = to else {
        unreachable!()
    };
    let mut h = vec![0, 0, 0, 1];
    h.extend_from_slice(&v4.ip().octets());
    h.extend_from_slice(&v4.port().to_be_bytes());
    h
}

#[tokio::test]
async fn socks5_udp_association_only_accepts_declared_client_port() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, SOCKS).await;
    let socks = rig.node.addrs().socks5.unwrap();
    let echo = udp_echo().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let declared = client.local_addr().unwrap();
    let (_control, code, relay) =
        socks5_request(socks, SECRET_HEX, &socks_request(3, declared)).await;
    assert_eq!(code, 0);

    let mut datagram = udp_header(echo);
    datagram.extend_from_slice(b"mine");
    // Another socket of the same host sends first: it is not the declared
    // client, so it does not take the association.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&datagram, relay).await.unwrap();
    until("the stranger's datagram dropped", || {
        rig.node.stats().udp_dropped >= 1
    })
    .await;

    client.send_to(&datagram, relay).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = within("the echo", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[10..n], b"echo:mine");
    let stats = rig.node.stats();
    assert_eq!(
        stats.udp_packets_up, 1,
        "only the declared client's went out"
    );
    assert_eq!(stats.udp_packets_down, 1);
    // The reply went to the client only (it would have left first).
    assert_eq!(
        stranger.try_recv_from(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );

    // A declared address that is not the client's own is refused outright:
    // nothing could ever use such an association.
    let elsewhere: SocketAddr = "127.0.0.2:4000".parse().unwrap();
    let (_refused, code, _) = socks5_request(socks, SECRET_HEX, &socks_request(3, elsewhere)).await;
    assert_eq!(code, 2, "not allowed");
}

#[tokio::test]
async fn configured_max_frame_len_is_enforced_in_datagram_mode() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[limits]\nmax_frame_len = 4096\n").await;
    let allocation = rig.allocate().await;
    let (mut stream, _) = bind_tcp_raw(
        rig.node.addrs().tcp_relay,
        &rig.client,
        &allocation,
        BindMode::Datagram,
        Address::Ip(udp_echo().await),
    )
    .await
    .unwrap();

    // At the limit: an ignorable frame of an unknown type with a 4096-byte
    // body is read and skipped; the Ping behind it is answered.
    let mut at_limit = vec![0x43, 0x50, 1, 0x7f, 0x80, 0x00, 0x10, 0x00];
    at_limit.resize(HEADER_LEN + 4096, 0);
    at_limit.extend_from_slice(&Frame::Ping(7).to_bytes());
    stream.write_all(&at_limit).await.unwrap();
    let pong = Frame::Pong(7).to_bytes();
    let mut got = vec![0u8; pong.len()];
    within("the pong", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, pong);

    // Over it: a Datagram header announcing 32 768 bytes is refused with
    // Error 100 at once, without waiting for (or reserving) its body.
    stream
        .write_all(&[0x43, 0x50, 1, 0x12, 0, 0x00, 0x80, 0x00])
        .await
        .unwrap();
    let mut rest = Vec::new();
    soon("the refusal", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    match Frame::parse(&rest) {
        Ok(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::MALFORMED_FRAME);
            assert!(
                e.message.as_str().contains("4096"),
                "{}",
                e.message.as_str()
            );
        }
        other => panic!("expected an Error frame, got {other:?}"),
    }
}
