//! The proxy service end to end on loopback: allocation, the TCP relay, the
//! UDP relay and UDP-over-TCP, through real sockets.

mod proxy_support;

use std::time::Instant;

use bytes::Bytes;
use cloudproxy_proto::Machine;
use cloudproxy_proto::client::{BindingEvent, RelayBinding};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, Path};
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tunnel::{
    MediaPathKind, MediaPolicy, MediaTransport, open_media, open_stream,
};
use proxy_support::{Rig, tcp_echo, udp_echo, until, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

#[tokio::test]
async fn tcp_echo_through_the_relay() {
    let rig = Rig::loopback().await;
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let (mut stream, early) = open_stream(
        &rig.client,
        &allocation,
        Address::Ip(echo),
        &DialPolicy::default(),
    )
    .await
    .unwrap();
    assert!(early.is_empty());
    stream.write_all(b"hello through the proxy").await.unwrap();
    let mut got = [0u8; 23];
    within("echo", stream.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"hello through the proxy");

    // Half-close: our FIN reaches the echo server, which then closes too.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within("close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());

    let stats = rig.node.stats();
    assert_eq!(stats.allocations, 1);
    assert_eq!(stats.tcp_sessions_total, 1);
}

/// Bytes pipelined in the same write as the `Bind` are kept through the
/// ticket check and the upstream connect, reach the destination first, and
/// come back in order with what follows (protocol §7.1).
#[tokio::test]
async fn bytes_pipelined_behind_the_bind_reach_the_destination() {
    let rig = Rig::loopback().await;
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let mut binding = RelayBinding::new(
        &rig.client,
        &allocation,
        Path::Tcp,
        BindMode::Stream,
        Address::Ip(echo),
        Instant::now(),
    )
    .unwrap();
    let mut first_write = Vec::new();
    while let Some(bytes) = binding.poll_transmit() {
        first_write.extend_from_slice(&bytes);
    }
    first_write.extend_from_slice(b"pipelined ");
    let mut stream = tokio::net::TcpStream::connect(allocation.tcp_relays[0])
        .await
        .unwrap();
    stream.write_all(&first_write).await.unwrap();
    stream.write_all(b"then more").await.unwrap();

    let mut echoed = Vec::new();
    let mut buf = [0u8; 256];
    while !binding.is_bound() {
        let n = within("BindOk", stream.read(&mut buf)).await.unwrap();
        assert_ne!(n, 0, "the relay closed before BindOk");
        binding.handle_input(Instant::now(), &buf[..n]);
        match binding.poll_event() {
            Some(BindingEvent::Bound { early_data, .. }) => echoed.extend_from_slice(&early_data),
            Some(BindingEvent::Closed(reason)) => panic!("bind refused: {reason}"),
            _ => {}
        }
    }
    while echoed.len() < b"pipelined then more".len() {
        let n = within("echo", stream.read(&mut buf)).await.unwrap();
        assert_ne!(n, 0, "the relay closed before the echo");
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(echoed, b"pipelined then more");
}

#[tokio::test]
async fn media_over_udp_both_ways() {
    let rig = Rig::loopback().await;
    let echo = udp_echo().await;
    let allocation = rig.allocate().await;
    let policy = MediaPolicy {
        transport: MediaTransport::UdpOnly,
        ..MediaPolicy::default()
    };
    let mut media = open_media(&rig.client, &allocation, Address::Ip(echo), &policy)
        .await
        .unwrap();
    assert_eq!(media.kind(), MediaPathKind::Udp);
    for i in 0..20u8 {
        media.send(Bytes::from(vec![i; 200])).await.unwrap();
        let reply = within("udp echo", media.recv()).await.unwrap();
        assert_eq!(&reply[..5], b"echo:");
        assert_eq!(&reply[5..], &[i; 200][..]);
    }
}

/// A UDP bind given up on while its `Bind` is in flight (the ladder's UDP
/// rung losing to TCP) leaves no binding on the node: the `BindOk` that
/// arrives afterwards is answered with the binding's `Close`. A relay in
/// the middle holds the `Bind` until the caller has given up, so the order
/// is certain.
#[tokio::test]
async fn a_udp_bind_given_up_in_flight_leaves_no_binding() {
    let rig = Rig::loopback().await;
    let echo = udp_echo().await;
    let allocation = rig.allocate().await;
    let node_relay = allocation.udp_relays[0];
    let middle = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to_node = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    to_node.connect(node_relay).await.unwrap();
    let mut through_middle = allocation.clone();
    through_middle.udp_relays = vec![middle.local_addr().unwrap()];

    let client = rig.client.clone();
    let policy = MediaPolicy {
        transport: MediaTransport::UdpOnly,
        ..MediaPolicy::default()
    };
    let open = tokio::spawn(async move {
        open_media(&client, &through_middle, Address::Ip(echo), &policy).await
    });
    let mut bind = [0u8; 2048];
    let (len, client_addr) = within("the Bind", middle.recv_from(&mut bind))
        .await
        .unwrap();
    open.abort();
    assert!(open.await.unwrap_err().is_cancelled());

    // Only now does the Bind reach the node; everything after it is passed
    // both ways.
    to_node.send(&bind[..len]).await.unwrap();
    let forward = tokio::spawn(async move {
        let (mut up, mut down) = ([0u8; 2048], [0u8; 2048]);
        loop {
            tokio::select! {
                Ok((n, _)) = middle.recv_from(&mut up) => {
                    let _ = to_node.send(&up[..n]).await;
                }
                Ok(n) = to_node.recv(&mut down) => {
                    let _ = middle.send_to(&down[..n], client_addr).await;
                }
            }
        }
    });
    until("the node made the binding, then closed it", || {
        let stats = rig.node.stats();
        stats.udp_bindings_total == 1 && stats.udp_bindings_active == 0
    })
    .await;
    forward.abort();
}

#[tokio::test]
async fn media_over_tcp_both_ways() {
    let rig = Rig::loopback().await;
    let echo = udp_echo().await;
    let allocation = rig.allocate().await;
    let policy = MediaPolicy {
        transport: MediaTransport::TcpOnly,
        ..MediaPolicy::default()
    };
    let mut media = open_media(&rig.client, &allocation, Address::Ip(echo), &policy)
        .await
        .unwrap();
    assert_eq!(media.kind(), MediaPathKind::UdpOverTcp);
    for i in 0..20u8 {
        media.send(Bytes::from(vec![i; 1200])).await.unwrap();
        let reply = within("udp-over-tcp echo", media.recv()).await.unwrap();
        assert_eq!(&reply[5..], &[i; 1200][..]);
    }
}

/// The client's address changes (a NAT rebinding): a re-bind from the new
/// socket, proven by the binding's token and the ticket, moves the binding,
/// and replies follow it there.
#[tokio::test]
async fn nat_rebinding_moves_the_binding() {
    let rig = Rig::loopback().await;
    let echo = udp_echo().await;
    let allocation = rig.allocate().await;
    let relay = allocation.udp_relays[0];
    let mut binding = RelayBinding::new(
        &rig.client,
        &allocation,
        Path::Udp,
        BindMode::Datagram,
        Address::Ip(echo),
        Instant::now(),
    )
    .unwrap();

    let old = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    old.connect(relay).await.unwrap();
    let mut buf = vec![0u8; 2048];
    pump_until(&old, &mut binding, &mut buf, |e| {
        matches!(e, BindingEvent::Bound { .. })
    })
    .await;
    binding
        .send_datagram(Instant::now(), b"from the old address")
        .unwrap();
    let reply = pump_until(&old, &mut binding, &mut buf, |e| {
        matches!(e, BindingEvent::Datagram(_))
    })
    .await;
    assert_eq!(
        reply,
        BindingEvent::Datagram(Bytes::from_static(b"echo:from the old address"))
    );

    // Same binding, new source address.
    let new = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    new.connect(relay).await.unwrap();
    binding.rebind(Instant::now()).unwrap();
    pump_until(&new, &mut binding, &mut buf, |e| {
        *e == BindingEvent::Rebound
    })
    .await;
    binding
        .send_datagram(Instant::now(), b"from the new address")
        .unwrap();
    let reply = pump_until(&new, &mut binding, &mut buf, |e| {
        matches!(e, BindingEvent::Datagram(_))
    })
    .await;
    assert_eq!(
        reply,
        BindingEvent::Datagram(Bytes::from_static(b"echo:from the new address"))
    );
}

/// Sends the binding's transmits on `socket` and feeds it what comes back
/// until an event matches.
async fn pump_until(
    socket: &UdpSocket,
    binding: &mut RelayBinding,
    buf: &mut [u8],
    wanted: impl Fn(&BindingEvent) -> bool,
) -> BindingEvent {
    within("binding event", async {
        loop {
            while let Some(bytes) = binding.poll_transmit() {
                socket.send(&bytes).await.unwrap();
            }
            while let Some(event) = binding.poll_event() {
                if wanted(&event) {
                    return event;
                }
                assert!(!matches!(event, BindingEvent::Closed(_)), "binding closed: {event:?}");
            }
            let deadline = binding.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                n = socket.recv(buf) => binding.handle_input(Instant::now(), &buf[..n.unwrap()]),
                () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    binding.handle_timeout(Instant::now());
                }
            }
        }
    })
    .await
}

/// The dialer at work: the first allocation address has nothing listening,
/// the second is the node; the allocation comes from the second.
#[tokio::test]
async fn a_dead_first_allocation_address_is_skipped() {
    let rig = Rig::loopback().await;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (used, allocation) = cloudproxy_transport::tunnel::allocate(
        &rig.client,
        &[dead, rig.allocation_addr()],
        &DialPolicy::default(),
    )
    .await
    .unwrap();
    assert_eq!(used, rig.allocation_addr());
    assert!(!allocation.tcp_relays.is_empty());

    // Nothing alive at all: the error lists each address and what happened.
    let err =
        cloudproxy_transport::tunnel::allocate(&rig.client, &[dead, dead], &DialPolicy::default())
            .await
            .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("allocating a proxy session: could not reach any of 2 address(es)"),
        "{shown}"
    );
    assert_eq!(shown.matches(&dead.to_string()).count(), 2, "{shown}");
}

/// The allocation's UDP relays are tried in order: a silent first one (a
/// socket that never answers, as behind a dropping firewall) is skipped; when
/// every one is silent, UDP counts as blocked within the probe bound.
#[tokio::test]
async fn a_silent_first_udp_relay_is_skipped() {
    let rig = Rig::loopback().await;
    let echo = udp_echo().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut allocation = rig.allocate().await;
    let real = allocation.udp_relays[0];
    allocation.udp_relays = vec![silent.local_addr().unwrap(), real];
    let policy = MediaPolicy {
        transport: MediaTransport::UdpOnly,
        udp_probe_timeout: std::time::Duration::from_millis(800),
        ..MediaPolicy::default()
    };
    let mut media = open_media(&rig.client, &allocation, Address::Ip(echo), &policy)
        .await
        .unwrap();
    assert_eq!(media.relay(), real);
    media
        .send(Bytes::from_static(b"via the second relay"))
        .await
        .unwrap();
    assert_eq!(
        within("echo", media.recv()).await.unwrap(),
        Bytes::from_static(b"echo:via the second relay")
    );

    allocation.udp_relays = vec![silent.local_addr().unwrap()];
    let started = std::time::Instant::now();
    let err = open_media(&rig.client, &allocation, Address::Ip(echo), &policy)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            cloudproxy_transport::tunnel::TunnelError::UdpBlocked(_)
        ),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// A proxy that answers and refuses is reported as a refusal by that proxy,
/// once, not as an address that could not be reached.
#[tokio::test]
async fn a_refused_allocation_says_refused_once() {
    let rig = Rig::loopback().await;
    let mut client = rig.client.clone();
    client.secret = b"not-the-secret".to_vec();
    let err = cloudproxy_transport::tunnel::allocate(
        &client,
        &[rig.allocation_addr()],
        &DialPolicy::default(),
    )
    .await
    .unwrap_err();
    let shown = err.to_string();
    assert_eq!(
        shown,
        format!(
            "allocating a proxy session: the proxy at {} refused: The app id or credential was not accepted by the proxy; check them. (200)",
            rig.allocation_addr()
        )
    );
    assert!(
        std::error::Error::source(&err).is_none(),
        "the cause is in the message already"
    );
}
