//! The UDP relay's batched paths on loopback: GRO/GSO bursts from a client,
//! several bindings in one batch, answers beyond one turn of a binding,
//! and the awkward sizes (empty, oversized). Each relay socket runs both
//! directions of all its bindings in one task, so these check that no
//! binding's traffic leaks into, delays or drops another's.

mod proxy_support;

use std::net::SocketAddr;

use cloudproxy_proto::Address;
use cloudproxy_proto::client::Allocation;
use proxy_support::{Rig, bind_udp_raw, within};
use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};
use tokio::net::UdpSocket;

/// A bound client socket (connected to its relay) and its 16-byte header.
async fn bound(rig: &Rig, allocation: &Allocation, to: SocketAddr) -> (UdpSocket, Vec<u8>) {
    let relay = allocation.udp_relays[0];
    let (socket, binding) = bind_udp_raw(relay, &rig.client, allocation, Address::Ip(to))
        .await
        .unwrap();
    let header = binding.udp_header().unwrap().to_array().to_vec();
    (socket, header)
}

fn datagram(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut d = header.to_vec();
    d.extend_from_slice(payload);
    d
}

/// A payload of `len` bytes that says which one it is.
fn numbered(n: u16, len: usize) -> Vec<u8> {
    let mut p = vec![(n % 251) as u8; len];
    if len >= 2 {
        p[..2].copy_from_slice(&n.to_be_bytes());
    }
    p
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = within("datagram", socket.recv_from(&mut buf))
        .await
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Sends `segments` as one GSO send when the kernel has GSO, one by one
/// otherwise (all the same size but the last, which may be shorter).
fn send_burst(socket: &UdpSocket, state: &UdpSocketState, to: SocketAddr, segments: &[Vec<u8>]) {
    if state.max_gso_segments() < segments.len() {
        for s in segments {
            socket.try_send(s).unwrap();
        }
        return;
    }
    let contents: Vec<u8> = segments.concat();
    state
        .try_send(
            UdpSockRef::from(socket),
            &Transmit {
                destination: to,
                ecn: None,
                contents: &contents,
                segment_size: Some(segments[0].len()),
                src_ip: None,
            },
        )
        .unwrap();
}

/// A GSO burst reaches the relay as one GRO read: every datagram of it is
/// forwarded, whole and in order, and a forged one inside it is dropped
/// without taking its neighbours along.
#[tokio::test]
async fn a_gso_burst_arrives_whole_and_in_order() {
    let rig = Rig::loopback().await;
    let allocation = rig.allocate().await;
    let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (client, header) = bound(&rig, &allocation, dest.local_addr().unwrap()).await;
    let relay = client.peer_addr().unwrap();
    let state = UdpSocketState::new(UdpSockRef::from(&client)).unwrap();

    // Ten of 200 bytes and a shorter last one; then five longer ones.
    let mut first: Vec<Vec<u8>> = (0..10)
        .map(|i| datagram(&header, &numbered(i, 200)))
        .collect();
    first.push(datagram(&header, &numbered(10, 50)));
    send_burst(&client, &state, relay, &first);
    let second: Vec<Vec<u8>> = (11..16)
        .map(|i| datagram(&header, &numbered(i, 300)))
        .collect();
    send_burst(&client, &state, relay, &second);
    // The fourth of these carries a wrong token.
    let mut third: Vec<Vec<u8>> = (16..21)
        .map(|i| datagram(&header, &numbered(i, 200)))
        .collect();
    third[3][15] ^= 0xff;
    send_burst(&client, &state, relay, &third);

    let mut expected: Vec<Vec<u8>> = (0..10).map(|i| numbered(i, 200)).collect();
    expected.push(numbered(10, 50));
    expected.extend((11..16).map(|i| numbered(i, 300)));
    expected.extend([16, 17, 18, 20].map(|i| numbered(i, 200)));
    for (i, want) in expected.iter().enumerate() {
        let (got, _) = recv(&dest).await;
        assert_eq!(&got, want, "datagram {i}");
    }
    let stats = rig.node.stats();
    assert_eq!(stats.udp_packets_up, expected.len() as u64);
    assert_eq!(stats.udp_dropped, 1);
}

/// Datagrams of three bindings, interleaved and queued before the relay
/// reads (so they share its batched reads): each destination gets its own,
/// in order, and an empty payload stays one empty datagram.
#[tokio::test]
async fn bindings_interleaved_in_one_batch_keep_their_own_order() {
    let rig = Rig::loopback().await;
    let allocation = rig.allocate().await;
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (client, header) = bound(&rig, &allocation, dest.local_addr().unwrap()).await;
        pairs.push((dest, client, header));
    }
    let per_binding = 40u16;
    for i in 0..per_binding {
        for (_, client, header) in &pairs {
            // Sizes vary, so runs of one binding break and restart.
            let len = if i == 7 {
                0
            } else {
                100 + usize::from(i % 3) * 50
            };
            client
                .try_send(&datagram(header, &numbered(i, len)))
                .unwrap();
        }
    }
    for (b, (dest, _, _)) in pairs.iter().enumerate() {
        for i in 0..per_binding {
            let len = if i == 7 {
                0
            } else {
                100 + usize::from(i % 3) * 50
            };
            let (got, _) = recv(dest).await;
            assert_eq!(got, numbered(i, len), "binding {b}, datagram {i}");
        }
    }
    assert_eq!(rig.node.stats().udp_packets_up, 3 * u64::from(per_binding));
}

/// An empty payload right behind equal-sized ones of the same binding (so
/// they may share one GSO run upstream) still arrives as its own empty
/// datagram, and the run after it is whole.
#[tokio::test]
async fn an_empty_payload_after_a_run_is_not_swallowed() {
    let rig = Rig::loopback().await;
    let allocation = rig.allocate().await;
    let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (client, header) = bound(&rig, &allocation, dest.local_addr().unwrap()).await;
    let lens = [100, 100, 100, 0, 100, 100];
    for (i, len) in lens.iter().enumerate() {
        client
            .try_send(&datagram(&header, &numbered(i as u16, *len)))
            .unwrap();
    }
    for (i, len) in lens.iter().enumerate() {
        let (got, _) = recv(&dest).await;
        assert_eq!(got, numbered(i as u16, *len), "datagram {i}");
    }
    assert_eq!(rig.node.stats().udp_packets_up, lens.len() as u64);
}

/// More answers than one binding reads per turn, for two bindings at once:
/// all reach their own client, in order, behind the right header.
#[tokio::test]
async fn answers_beyond_one_turn_all_reach_the_client() {
    let rig = Rig::loopback().await;
    let allocation = rig.allocate().await;
    let mut pairs = Vec::new();
    for _ in 0..2 {
        let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (client, header) = bound(&rig, &allocation, dest.local_addr().unwrap()).await;
        // The destination learns the binding's upstream address.
        client.send(&datagram(&header, b"hello")).await.unwrap();
        let (_, upstream) = recv(&dest).await;
        pairs.push((dest, upstream, client, header));
    }
    let answers = 100u16;
    for i in 0..answers {
        for (dest, upstream, _, _) in &pairs {
            dest.try_send_to(&numbered(i, 100), *upstream).unwrap();
        }
    }
    for (b, (_, _, client, header)) in pairs.iter().enumerate() {
        for i in 0..answers {
            let (got, _) = recv(client).await;
            assert_eq!(
                got,
                datagram(header, &numbered(i, 100)),
                "binding {b}, answer {i}"
            );
        }
    }
    assert_eq!(rig.node.stats().udp_packets_down, 2 * u64::from(answers));
}

/// An answer longer than a relay datagram may carry is dropped (not
/// truncated), and the binding goes on.
#[tokio::test]
async fn an_oversized_answer_is_dropped_and_the_next_passes() {
    let rig = Rig::loopback().await;
    let allocation = rig.allocate().await;
    let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (client, header) = bound(&rig, &allocation, dest.local_addr().unwrap()).await;
    client.send(&datagram(&header, b"hello")).await.unwrap();
    let (_, upstream) = recv(&dest).await;

    dest.send_to(&[1u8; 1401], upstream).await.unwrap();
    dest.send_to(&[2u8; 60_000], upstream).await.unwrap();
    dest.send_to(&[3u8; 1400], upstream).await.unwrap();
    dest.send_to(&[], upstream).await.unwrap();
    let (got, _) = recv(&client).await;
    assert_eq!(got, datagram(&header, &[3u8; 1400]));
    let (got, _) = recv(&client).await;
    assert_eq!(got, header, "an empty answer is a bare header");
    let stats = rig.node.stats();
    assert_eq!(stats.udp_packets_down, 2);
    assert_eq!(stats.udp_dropped, 2);
}

/// More bindings answered at once than the relay takes readiness events per
/// look (256): every client still gets its own answer.
#[tokio::test]
async fn many_bindings_answered_at_once_each_get_their_own() {
    // One session holds all 300 bindings: lift the per-session bound.
    let rig = Rig::start(
        r#""127.0.0.1""#,
        2000,
        "[limits]\nmax_bindings_per_session = 300\n",
    )
    .await;
    let allocation = rig.allocate().await;
    let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = dest.local_addr().unwrap();
    let mut clients = Vec::new();
    for i in 0..300u16 {
        let (client, header) = bound(&rig, &allocation, to).await;
        client
            .send(&datagram(&header, &numbered(i, 20)))
            .await
            .unwrap();
        let (got, upstream) = recv(&dest).await;
        assert_eq!(got, numbered(i, 20));
        clients.push((client, header, upstream));
    }
    for (i, (_, _, upstream)) in clients.iter().enumerate() {
        dest.try_send_to(&numbered(i as u16, 30), *upstream)
            .unwrap();
    }
    for (i, (client, header, _)) in clients.iter().enumerate() {
        let (got, _) = recv(client).await;
        assert_eq!(
            got,
            datagram(header, &numbered(i as u16, 30)),
            "binding {i}"
        );
    }
}
