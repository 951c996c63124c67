//! The whole path of the design brief: two clients reach the reference media
//! edge only through the proxy — one with media over the UDP relay, one with
//! media over UDP-over-TCP — join one channel, and exchange reliable messages
//! and media both ways.

mod proxy_support;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use cloudproxy_edge::{Edge, EdgeConfig};
use cloudproxy_proto::client::Allocation;
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{Frame, Join, Joined, Media, Message};
use cloudproxy_proto::{Address, AppId, ChannelName};
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tunnel::{
    MediaPath, MediaPathKind, MediaPolicy, MediaTransport, open_media, open_stream,
};
use proxy_support::{APP, Rig, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

/// A member's message channel: frames over the relayed TCP stream.
struct Channel {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Channel {
    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(&frame, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn next(&mut self) -> Frame {
        within("a frame from the edge", async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                    return frame;
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the edge closed the channel");
            }
        })
        .await
    }

    /// The next frame that `pick` accepts, skipping acks and notices.
    async fn next_matching<T>(&mut self, pick: impl Fn(Frame) -> Option<T>) -> T {
        loop {
            if let Some(found) = pick(self.next().await) {
                return found;
            }
        }
    }
}

struct Member {
    channel: Channel,
    joined: Joined,
    media: MediaPath,
}

async fn join(
    rig: &Rig,
    edge: (SocketAddr, SocketAddr),
    allocation: &Allocation,
    user_id: u32,
    media: MediaTransport,
) -> Member {
    let (stream, early) = open_stream(
        &rig.client,
        allocation,
        Address::Ip(edge.0),
        &DialPolicy::default(),
    )
    .await
    .unwrap();
    let mut channel = Channel {
        stream,
        buf: BytesMut::from(&early[..]),
        codec: FrameCodec::new(),
    };
    channel
        .send(Frame::Join(Join {
            app_id: AppId::new(APP).unwrap(),
            channel: ChannelName::new("room").unwrap(),
            user_id,
            resume: None,
        }))
        .await;
    let joined = channel
        .next_matching(|f| {
            if let Frame::Joined(j) = f {
                Some(j)
            } else {
                None
            }
        })
        .await;
    let policy = MediaPolicy {
        transport: media,
        ..MediaPolicy::default()
    };
    let media = open_media(&rig.client, allocation, Address::Ip(edge.1), &policy)
        .await
        .unwrap();
    Member {
        channel,
        joined,
        media,
    }
}

fn media_frame(member: &Member, payload: &'static [u8]) -> Bytes {
    Frame::Media(Media {
        member_id: member.joined.member_id,
        token: member.joined.media_token,
        payload: Bytes::from_static(payload),
    })
    .to_bytes()
}

#[tokio::test]
async fn two_members_talk_through_the_proxy_over_udp_and_over_tcp() {
    let rig = Rig::loopback().await;
    let edge = Edge::bind(EdgeConfig::loopback()).await.unwrap().spawn();
    let edge_addrs = (edge.tcp_addr(), edge.udp_addr());

    // Two sessions of the same app, each with its own allocation.
    let alice_session = rig.allocate().await;
    let bob_session = rig.allocate().await;
    let mut alice = join(&rig, edge_addrs, &alice_session, 1, MediaTransport::UdpOnly).await;
    let mut bob = join(&rig, edge_addrs, &bob_session, 2, MediaTransport::TcpOnly).await;
    assert_eq!(alice.media.kind(), MediaPathKind::Udp);
    assert_eq!(bob.media.kind(), MediaPathKind::UdpOverTcp);

    // Reliable messages, in order, both ways.
    for seq in 1..=3u64 {
        alice
            .channel
            .send(Frame::Message(Message {
                seq,
                from: alice.joined.member_id,
                payload: Bytes::from(format!("alice {seq}")),
            }))
            .await;
    }
    for seq in 1..=3u64 {
        let got = bob
            .channel
            .next_matching(|f| {
                if let Frame::Message(m) = f {
                    Some(m)
                } else {
                    None
                }
            })
            .await;
        assert_eq!(got.from, alice.joined.member_id);
        assert_eq!(got.payload, Bytes::from(format!("alice {seq}")));
    }
    bob.channel
        .send(Frame::Message(Message {
            seq: 1,
            from: bob.joined.member_id,
            payload: Bytes::from_static(b"hi alice"),
        }))
        .await;
    let got = alice
        .channel
        .next_matching(|f| {
            if let Frame::Message(m) = f {
                Some(m)
            } else {
                None
            }
        })
        .await;
    assert_eq!(got.payload, Bytes::from_static(b"hi alice"));

    // Media: each side sends until the other's first datagram arrives (the
    // edge learns a member's media address from what it sends).
    within("media both ways", async {
        let from_alice = media_frame(&alice, b"alice's voice");
        let from_bob = media_frame(&bob, b"bob's voice");
        let (mut alice_heard, mut bob_heard) = (false, false);
        // Paced like a media sender (one datagram per 5 ms), and bounded.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
        for _ in 0..2000 {
            if alice_heard && bob_heard {
                break;
            }
            tokio::select! {
                Some(datagram) = alice.media.recv() => {
                    let Frame::Media(m) = Frame::parse(&datagram).unwrap() else { panic!("not media") };
                    assert_eq!((m.member_id, &m.payload[..]), (bob.joined.member_id, &b"bob's voice"[..]));
                    alice_heard = true;
                }
                Some(datagram) = bob.media.recv() => {
                    let Frame::Media(m) = Frame::parse(&datagram).unwrap() else { panic!("not media") };
                    assert_eq!((m.member_id, &m.payload[..]), (alice.joined.member_id, &b"alice's voice"[..]));
                    bob_heard = true;
                }
                _ = tick.tick() => {
                    alice.media.try_send(from_alice.clone()).unwrap();
                    bob.media.try_send(from_bob.clone()).unwrap();
                }
            }
        }
        assert!(alice_heard && bob_heard, "media did not flow both ways");
    })
    .await;

    let stats = rig.node.stats();
    assert!(
        stats.udp_packets_up > 0,
        "alice's media went over the UDP relay"
    );
    assert_eq!(
        stats.tcp_sessions_active, 3,
        "two message channels and bob's UDP-over-TCP"
    );
    assert_eq!(edge.stats().members, 2);
    edge.shutdown().await;
}
