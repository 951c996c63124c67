//! The reference media edge over real sockets on 127.0.0.1 (no proxy):
//! membership, reliable messages, media forwarding, refusals, deadlines,
//! resume after a broken connection, and bad input.

#[path = "support/edge_client.rs"]
mod edge_client;

use std::collections::HashSet;

use bytes::Bytes;
use cloudproxy_edge::{Edge, EdgeConfig, EdgeError, RunningEdge};
use cloudproxy_proto::frame::{Frame, MAX_PAYLOAD, Media, Message, Resume};
use edge_client::{APP, Client, FramedConn, Notice, join_frame, join_frame_app, wait_stats};
use tokio::net::UdpSocket;

async fn start(config: EdgeConfig) -> RunningEdge {
    Edge::bind(config).await.expect("edge binds").spawn()
}

async fn start_default() -> RunningEdge {
    start(EdgeConfig::loopback()).await
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn two_clients_see_each_other_join_and_leave() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 100).await;
    let mut b = Client::join(edge.handle(), "room", 200).await;
    assert_ne!(a.member_id(), b.member_id());
    assert_ne!(a.joined.resume_token, a.joined.media_token);

    // B learns the member already present; A learns the newcomer.
    b.wait_notice(Notice::Joined(a.member())).await;
    a.wait_notice(Notice::Joined(b.member())).await;
    assert_eq!(b.notices, vec![Notice::Joined(a.member())]);
    let s = edge.stats();
    assert_eq!((s.members, s.channels, s.joins), (2, 1, 2));

    // Leave: the others are told, the leaver's connection is closed.
    b.conn().send(&Frame::Leave).await;
    b.conn().expect_closed().await;
    a.wait_notice(Notice::Left(b.member())).await;
    let s = wait_stats(edge.handle(), "one member", |s| s.members == 1).await;
    assert_eq!(s.members_lingering, 0);

    // The last member leaving closes the channel.
    a.conn().send(&Frame::Leave).await;
    a.conn().expect_closed().await;
    wait_stats(edge.handle(), "no channel", |s| {
        s.members == 0 && s.channels == 0
    })
    .await;
    edge.shutdown().await;
}

#[tokio::test]
async fn channels_are_separate_per_name_and_app() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "one", 1).await;
    let mut b = Client::join(edge.handle(), "two", 2).await;
    // Same channel name, other app.
    let mut c = FramedConn::connect(edge.tcp_addr()).await;
    c.send(&join_frame_app("other-app", "one", 3, None)).await;
    assert!(matches!(c.recv().await, Some(Frame::Joined(_))));
    assert_eq!(edge.stats().channels, 3);

    a.send_message("only me").await;
    a.wait_acked(1).await;
    b.conn().send(&Frame::Ping(1)).await;
    b.wait_until("pong", |b| !b.pongs.is_empty()).await;
    assert!(a.notices.is_empty() && b.notices.is_empty());
    assert!(b.delivered.is_empty());
    assert_eq!(edge.stats().messages_out, 0);
    edge.shutdown().await;
}

#[tokio::test]
async fn messages_reach_every_other_member_in_order_and_are_acked() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    let mut c = Client::join(edge.handle(), "room", 3).await;
    a.wait_notice(Notice::Joined(c.member())).await;
    b.wait_notice(Notice::Joined(c.member())).await;

    for t in texts("a", 20) {
        a.send_message(&t).await;
    }
    // Cumulative acks from the edge clear A's outbox.
    a.wait_acked(20).await;
    assert_eq!(a.outbox.unacked(), 0);

    for t in texts("b", 5) {
        b.send_message(&t).await;
    }
    b.wait_acked(5).await;

    // C gets everything, numbered in its own sequence, `from` = the sender.
    c.wait_delivered(25).await;
    let seqs: Vec<u64> = c.delivered.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    let from_a: Vec<String> = c
        .delivered
        .iter()
        .filter(|m| m.from == a.member_id())
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(from_a, texts("a", 20));
    let from_b: Vec<&Message> = c
        .delivered
        .iter()
        .filter(|m| m.from == b.member_id())
        .collect();
    assert_eq!(from_b.len(), 5);

    // A and B each get the other's messages, never their own.
    b.wait_delivered(20).await;
    assert_eq!(b.delivered_text(), texts("a", 20));
    a.wait_delivered(5).await;
    assert_eq!(a.delivered_text(), texts("b", 5));
    assert!(a.delivered.iter().all(|m| m.from == b.member_id()));

    let s = edge.stats();
    assert_eq!(s.messages_in, 25);
    assert_eq!(s.messages_out, 20 * 2 + 5 * 2);
    edge.shutdown().await;
}

#[tokio::test]
async fn ping_gets_pong_with_the_same_value() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    a.conn().send(&Frame::Ping(0xfeed)).await;
    a.wait_until("pong", |a| a.pongs == [0xfeed]).await;
    edge.shutdown().await;
}

#[tokio::test]
async fn media_goes_to_other_members_once_their_address_is_known() {
    let edge = start_default().await;
    let h = edge.handle();
    let a = Client::join(h, "room", 1).await;
    let b = Client::join(h, "room", 2).await;
    let c = Client::join(h, "room", 3).await;

    // Nobody has sent media yet: A's datagram goes nowhere (but A's address
    // is learned).
    a.send_media(b"a1").await;
    let s = wait_stats(h, "media from A", |s| s.media_in == 1).await;
    assert_eq!(s.media_out, 0);

    // B's media reaches A only: C has not sent any.
    b.send_media(b"b1").await;
    let m = a.recv_media().await;
    assert_eq!(
        m,
        Media {
            member_id: b.member_id(),
            token: 0,
            payload: "b1".into()
        }
    );

    // C starts sending: A and B get it.
    c.send_media(b"c1").await;
    for r in [&a, &b] {
        let m = r.recv_media().await;
        assert_eq!(
            (m.member_id, m.token, &m.payload[..]),
            (c.member_id(), 0, &b"c1"[..])
        );
    }
    // Now everyone has an address: A reaches B and C. C's first datagram is
    // this one, so it never got B's earlier media.
    a.send_media(b"a2").await;
    for r in [&b, &c] {
        let m = r.recv_media().await;
        assert_eq!((m.member_id, &m.payload[..]), (a.member_id(), &b"a2"[..]));
    }
    let s = wait_stats(h, "counters", |s| s.media_out == 5).await;
    assert_eq!((s.media_in, s.media_dropped), (4, 0));
    edge.shutdown().await;
}

/// An empty `Media` registers the sender's address: the edge confirms it to
/// the sender with the same empty frame and forwards it to nobody.
#[tokio::test]
async fn a_media_registration_is_confirmed_to_its_sender_and_not_forwarded() {
    let edge = start_default().await;
    let h = edge.handle();
    let a = Client::join(h, "room", 1).await;
    let b = Client::join(h, "room", 2).await;
    b.send_media(b"b0").await;
    wait_stats(h, "media from B", |s| s.media_in == 1).await;

    a.send_media(b"").await;
    let confirmation = a.recv_media().await;
    assert_eq!(
        confirmation,
        Media {
            member_id: a.member_id(),
            token: 0,
            payload: Bytes::new()
        }
    );
    // A's address is known now: B's next datagram reaches it, and the
    // registration itself never reached B (B's next datagram is this one).
    b.send_media(b"b1").await;
    assert_eq!(&a.recv_media().await.payload[..], b"b1");
    a.send_media(b"a1").await;
    assert_eq!(&b.recv_media().await.payload[..], b"a1");
    let s = wait_stats(h, "counters", |s| s.media_out == 2).await;
    assert_eq!(
        (s.media_in, s.media_registrations, s.media_dropped),
        (3, 1, 0)
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn bad_media_is_dropped_and_never_answered_or_redirected() {
    let edge = start_default().await;
    let h = edge.handle();
    let a = Client::join(h, "room", 1).await;
    let b = Client::join(h, "room", 2).await;
    a.send_media(b"a0").await;
    wait_stats(h, "media from A", |s| s.media_in == 1).await;
    b.send_media(b"b0").await;
    assert_eq!(&a.recv_media().await.payload[..], b"b0");

    // A stranger who knows A's member id but not its token.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let send = |frame: Frame| {
        let stranger = &stranger;
        async move {
            stranger
                .send_to(&frame.to_bytes(), h.udp_addr())
                .await
                .unwrap();
        }
    };
    let media = |member_id, token, payload: &[u8]| {
        Frame::Media(Media {
            member_id,
            token,
            payload: bytes::Bytes::copy_from_slice(payload),
        })
    };
    send(media(a.member_id(), a.joined.media_token ^ 1, b"hijack")).await;
    send(media(a.member_id(), 0, b"zero token")).await;
    send(media(
        a.member_id().wrapping_add(1),
        a.joined.media_token,
        b"unknown member",
    ))
    .await;
    send(Frame::Ping(1)).await;
    // Valid id and token, but larger than a relay datagram may be.
    send(media(a.member_id(), a.joined.media_token, &[0u8; 1400])).await;
    stranger
        .send_to(b"GET / HTTP/1.1\r\n\r\n", h.udp_addr())
        .await
        .unwrap();
    let s = wait_stats(h, "six drops", |s| s.media_dropped == 6).await;
    assert_eq!(s.media_in, 2);

    // A's media address did not move: B's next datagram still reaches A,
    // and the stranger never got a byte.
    b.send_media(b"b1").await;
    assert_eq!(&a.recv_media().await.payload[..], b"b1");
    let mut buf = [0u8; 2048];
    assert_eq!(
        stranger.try_recv_from(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn media_follows_the_latest_valid_source_address() {
    let edge = start_default().await;
    let h = edge.handle();
    let mut a = Client::join(h, "room", 1).await;
    let b = Client::join(h, "room", 2).await;
    a.send_media(b"a0").await;
    wait_stats(h, "media from A", |s| s.media_in == 1).await;
    // A's relay path changes: its media now comes from another socket.
    a.media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.send_media(b"a1").await;
    wait_stats(h, "media from A's new address", |s| s.media_in == 2).await;
    b.send_media(b"b0").await;
    assert_eq!(&a.recv_media().await.payload[..], b"b0");
    edge.shutdown().await;
}

#[tokio::test]
async fn join_refused_for_an_app_the_edge_does_not_serve() {
    let edge = start(EdgeConfig {
        app_ids: Some(vec![APP.to_owned()]),
        ..EdgeConfig::loopback()
    })
    .await;
    let mut c = FramedConn::connect(edge.tcp_addr()).await;
    c.send(&join_frame_app("other-app", "room", 1, None)).await;
    match c.recv().await {
        Some(Frame::JoinRefused(e)) => {
            assert_eq!(e.code.0, 400);
            assert!(e.message.as_str().contains("other-app"), "{}", e.message);
        }
        other => panic!("expected JoinRefused, got {other:?}"),
    }
    assert!(c.recv().await.is_none());
    // The listed app joins.
    Client::join(edge.handle(), "room", 1).await;
    let s = edge.stats();
    assert_eq!((s.joins, s.joins_refused, s.members), (1, 1, 1));
    edge.shutdown().await;
}

#[tokio::test]
async fn join_refused_when_the_channel_is_full_or_too_many_channels() {
    let edge = start(EdgeConfig {
        max_members_per_channel: 2,
        max_channels: 1,
        ..EdgeConfig::loopback()
    })
    .await;
    let _a = Client::join(edge.handle(), "room", 1).await;
    let _b = Client::join(edge.handle(), "room", 2).await;
    for (channel, why) in [("room", "full"), ("second", "channel limit")] {
        let mut c = FramedConn::connect(edge.tcp_addr()).await;
        c.send(&join_frame(channel, 3, None)).await;
        match c.recv().await {
            Some(Frame::JoinRefused(e)) => {
                assert_eq!(e.code.0, 400);
                assert!(e.message.as_str().contains(why), "{}", e.message);
            }
            other => panic!("expected JoinRefused, got {other:?}"),
        }
        assert!(c.recv().await.is_none());
    }
    assert_eq!(edge.stats().joins_refused, 2);
    edge.shutdown().await;
}

#[tokio::test]
async fn a_first_frame_other_than_join_gets_not_joined() {
    let edge = start_default().await;
    let mut c = FramedConn::connect(edge.tcp_addr()).await;
    c.send(&Frame::Message(Message {
        seq: 1,
        from: 0,
        payload: "early".into(),
    }))
    .await;
    c.expect_error_and_close(402).await;
    assert_eq!(edge.stats().protocol_errors, 1);
    edge.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_joins_is_closed_at_the_handshake_deadline() {
    let edge = start(EdgeConfig {
        handshake_timeout_ms: 150,
        ..EdgeConfig::loopback()
    })
    .await;
    let mut silent = FramedConn::connect(edge.tcp_addr()).await;
    // Half a header is not a Join either.
    let mut partial = FramedConn::connect(edge.tcp_addr()).await;
    partial.send_raw(&[0x43, 0x50, 0x01]).await;
    silent.expect_error_and_close(103).await;
    partial.expect_error_and_close(103).await;
    assert_eq!(edge.stats().handshake_timeouts, 2);
    edge.shutdown().await;
}

#[tokio::test]
async fn a_first_frame_that_is_not_join_is_named_in_words() {
    let edge = start_default().await;
    let mut early = FramedConn::connect(edge.tcp_addr()).await;
    early.send(&Frame::Ping(1)).await;
    let e = early.expect_error_and_close(402).await;
    assert_eq!(
        e.message.as_str(),
        "the first frame must be Join, got Ping (0x13)"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn garbage_closes_only_the_offending_connection() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    let mut c = Client::join(edge.handle(), "room", 3).await;
    a.wait_notice(Notice::Joined(c.member())).await;

    // Before joining: an HTTP request, a wrong version, a header that
    // announces more than the handshake limit.
    let mut http = FramedConn::connect(edge.tcp_addr()).await;
    http.send_raw(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    http.expect_error_and_close(100).await;
    let mut version = FramedConn::connect(edge.tcp_addr()).await;
    version
        .send_raw(&[0x43, 0x50, 0x09, 0x40, 0, 0, 0, 0])
        .await;
    version.expect_error_and_close(101).await;
    let mut huge = FramedConn::connect(edge.tcp_addr()).await;
    huge.send_raw(&[0x43, 0x50, 0x01, 0x40, 0, 0x00, 0x08, 0x01])
        .await;
    huge.expect_error_and_close(100).await;

    // After joining: C sends garbage; it is closed and removed, and the
    // others are told.
    c.conn()
        .send_raw(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0])
        .await;
    c.conn().expect_error_and_close(100).await;
    a.wait_notice(Notice::Left(c.member())).await;
    b.wait_notice(Notice::Left(c.member())).await;

    // A and B carry on.
    a.send_message("still here").await;
    b.wait_delivered(1).await;
    assert_eq!(b.delivered_text(), ["still here"]);
    let s = edge.stats();
    assert_eq!((s.members, s.protocol_errors), (2, 4));
    edge.shutdown().await;
}

#[tokio::test]
async fn frames_in_the_wrong_place_or_too_large_end_the_membership() {
    let edge = start(EdgeConfig {
        max_frame_len: 1024,
        ..EdgeConfig::loopback()
    })
    .await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    let mut c = Client::join(edge.handle(), "room", 3).await;
    a.wait_notice(Notice::Joined(c.member())).await;

    // A second Join on a joined connection.
    b.conn().send(&join_frame("room", 2, None)).await;
    b.conn().expect_error_and_close(102).await;
    a.wait_notice(Notice::Left(b.member())).await;

    // A message above the configured frame limit.
    let big = "x".repeat(2000);
    c.send_message(&big).await;
    c.conn().expect_error_and_close(100).await;
    a.wait_notice(Notice::Left(c.member())).await;
    assert!(a.delivered.is_empty());
    let _ = MAX_PAYLOAD;
    edge.shutdown().await;
}

/// The §9.6 failover: A's connection breaks with messages in flight both
/// ways; A resumes on a new connection; every message is delivered exactly
/// once and in order in both directions.
#[tokio::test]
async fn resume_after_a_broken_connection_delivers_every_message_exactly_once() {
    let edge = start_default().await;
    let h = edge.handle();
    let mut a = Client::join(h, "room", 1).await;
    let mut b = Client::join(h, "room", 2).await;
    a.wait_notice(Notice::Joined(b.member())).await;
    let a_member = a.member();

    // A → B: a1..a3 reach the edge (B sees them) but A never reads their
    // acks; a4, a5 are lost in the breaking connection.
    for t in texts("a", 3) {
        a.send_message(&t).await;
    }
    b.wait_delivered(3).await;
    a.lose_message("a4");
    a.lose_message("a5");

    // B → A: b1, b2 are queued to A (B's acks prove the edge has them);
    // A reads b1 and does not acknowledge it, b2 stays unread in the
    // socket.
    a.auto_ack = false;
    b.send_message("b1").await;
    b.send_message("b2").await;
    b.wait_acked(2).await;
    a.wait_delivered(1).await;
    assert_eq!(a.delivered_text(), ["b1"]);

    // The connection breaks; B keeps talking meanwhile.
    a.drop_connection();
    b.send_message("b3").await;
    b.send_message("b4").await;
    b.wait_acked(4).await;

    // Resume: the edge has a1..a3 from A; A has b1 from the edge.
    a.auto_ack = true;
    let joined = a.resume().await.expect("resume accepted");
    assert!(joined.resumed);
    assert_eq!(joined.member_id, a_member.member_id);
    assert_eq!(joined.last_received, 3);
    // A duplicate on top of the resend: dropped by the edge, but acked.
    a.conn()
        .send(&Frame::Message(Message {
            seq: 3,
            from: a_member.member_id,
            payload: "a3".into(),
        }))
        .await;
    a.send_message("a6").await;

    a.wait_delivered(4).await;
    a.wait_acked(6).await;
    b.wait_delivered(6).await;
    assert_eq!(a.delivered_text(), texts("b", 4));
    assert_eq!(b.delivered_text(), texts("a", 6));
    let seqs: Vec<u64> = b.delivered.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());

    // One more round trip each way: nothing extra arrives.
    b.send_message("b5").await;
    a.wait_delivered(5).await;
    a.send_message("a7").await;
    b.wait_delivered(7).await;
    assert_eq!(a.delivered_text(), texts("b", 5));
    assert_eq!(b.delivered_text(), texts("a", 7));

    // B never saw A leave; A was re-told who is present.
    assert!(!b.notices.contains(&Notice::Left(a_member)));
    assert!(a.notices.contains(&Notice::Joined(b.member())));
    let s = edge.stats();
    assert_eq!((s.resumes, s.members, s.members_lingering), (1, 2, 0));
    assert_eq!(s.messages_in, 7 + 5);
    assert!(s.messages_dropped >= 1);
    edge.shutdown().await;
}

#[tokio::test]
async fn resume_takes_over_a_connection_that_still_looks_open() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    a.wait_notice(Notice::Joined(b.member())).await;
    // A resumes from a second connection while the first is still open.
    let mut old = FramedConn::connect(edge.tcp_addr()).await;
    std::mem::swap(&mut old, a.conn());
    let joined = a.resume().await.expect("resume accepted");
    assert!(joined.resumed);
    // The old connection is closed by the edge; the membership lives on.
    old.expect_closed().await;
    b.send_message("hello").await;
    a.wait_delivered(1).await;
    assert!(!b.notices.contains(&Notice::Left(a.member())));
    assert_eq!(edge.stats().members, 2);
    edge.shutdown().await;
}

#[tokio::test]
async fn resume_with_a_wrong_token_or_unknown_member_is_refused() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let cases = [
        (a.member_id(), a.joined.resume_token ^ 0x1, "room", 1),
        (
            a.member_id().wrapping_add(1),
            a.joined.resume_token,
            "room",
            1,
        ),
        (a.member_id(), a.joined.resume_token, "other-room", 1),
        (a.member_id(), a.joined.resume_token, "room", 2),
    ];
    for (member_id, resume_token, channel, user) in cases {
        let mut c = FramedConn::connect(edge.tcp_addr()).await;
        let resume = Resume {
            member_id,
            resume_token,
            last_received: 0,
        };
        c.send(&join_frame(channel, user, Some(resume))).await;
        match c.recv().await {
            Some(Frame::JoinRefused(e)) => assert_eq!(e.code.0, 401),
            other => panic!("expected JoinRefused 401, got {other:?}"),
        }
        assert!(c.recv().await.is_none());
    }
    // The real membership is untouched.
    a.conn().send(&Frame::Ping(9)).await;
    a.wait_until("pong", |a| a.pongs == [9]).await;
    let s = edge.stats();
    assert_eq!((s.joins_refused, s.resumes, s.members), (4, 0, 1));
    edge.shutdown().await;
}

#[tokio::test]
async fn a_member_that_does_not_come_back_is_removed_after_the_linger_time() {
    let edge = start(EdgeConfig {
        member_linger_ms: 150,
        ..EdgeConfig::loopback()
    })
    .await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    a.wait_notice(Notice::Joined(b.member())).await;
    a.drop_connection();
    wait_stats(edge.handle(), "A lingering", |s| s.members_lingering == 1).await;
    assert_eq!(edge.stats().members, 2);
    b.wait_notice(Notice::Left(a.member())).await;
    let s = edge.stats();
    assert_eq!(
        (s.members, s.members_lingering, s.linger_expired),
        (1, 0, 1)
    );
    // Too late to resume.
    let e = a.resume().await.expect_err("resume after linger");
    assert_eq!(e.code.0, 401);
    edge.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_lost_after_the_idle_timeout_and_can_resume() {
    let edge = start(EdgeConfig {
        idle_timeout_ms: 150,
        ..EdgeConfig::loopback()
    })
    .await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    a.wait_notice(Notice::Joined(b.member())).await;
    b.wait_notice(Notice::Joined(a.member())).await;
    // A stays silent: the edge closes its connection, A lingers.
    a.conn().expect_closed().await;
    wait_stats(edge.handle(), "A lingering", |s| s.members_lingering >= 1).await;
    b.drop_connection(); // B is silent too; do not let it race the test.
    let joined = a.resume().await.expect("resume after idle loss");
    assert!(joined.resumed);
    edge.shutdown().await;
}

#[tokio::test]
async fn a_recipient_that_stops_acknowledging_is_evicted() {
    let edge = start(EdgeConfig {
        max_unacked_messages: 4,
        ..EdgeConfig::loopback()
    })
    .await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut b = Client::join(edge.handle(), "room", 2).await;
    a.wait_notice(Notice::Joined(b.member())).await;
    b.auto_ack = false;
    for t in texts("m", 5) {
        a.send_message(&t).await;
    }
    a.wait_notice(Notice::Left(b.member())).await;
    // B gets at most what was queued before the eviction, then the close.
    while b.pump().await {}
    assert!(b.delivered.len() <= 4);
    let s = edge.stats();
    assert_eq!((s.members_evicted, s.members), (1, 1));
    let e = b.resume().await.expect_err("evicted members cannot resume");
    assert_eq!(e.code.0, 401);
    edge.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_connected_clients_and_closes() {
    let edge = start_default().await;
    let mut a = Client::join(edge.handle(), "room", 1).await;
    let mut silent = FramedConn::connect(edge.tcp_addr()).await;
    let h = edge.handle().clone();
    edge.shutdown().await;
    a.conn().expect_error_and_close(105).await;
    silent.expect_closed().await;
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(h.tcp_addr()).await.is_err());
}

#[tokio::test]
async fn many_members_and_channels_concurrently() {
    let edge = start_default().await;
    let h = edge.handle().clone();
    let mut tasks = Vec::new();
    for ch in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let channel = format!("room-{ch}");
            let mut members = Vec::new();
            for u in 0..4 {
                members.push(Client::join(&h, &channel, u).await);
            }
            for m in &mut members {
                m.wait_until("3 others", |m| m.notices.len() >= 3).await;
            }
            for m in &mut members {
                for i in 0..10 {
                    m.send_message(&format!("{}-{i}", m.user_id)).await;
                }
            }
            for m in &mut members {
                m.wait_delivered(30).await;
                let froms: HashSet<u32> = m.delivered.iter().map(|d| d.from).collect();
                assert_eq!(froms.len(), 3);
                assert!(!froms.contains(&m.member_id()));
                m.wait_acked(10).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = edge.stats();
    assert_eq!(
        (s.members, s.channels, s.messages_in, s.messages_out),
        (32, 8, 320, 960)
    );
    edge.shutdown().await;
}

#[test]
fn config_from_toml_with_defaults_and_checks() {
    let c = EdgeConfig::from_toml_str("tcp_port = 0\nudp_port = 0\nmember_linger_ms = 5").unwrap();
    assert_eq!(c.member_linger_ms, 5);
    assert_eq!(
        c.max_members_per_channel,
        EdgeConfig::default().max_members_per_channel
    );
    assert_eq!(EdgeConfig::default().tcp_port, 7000);

    let e = EdgeConfig::from_toml_str("tcp_prot = 1").unwrap_err();
    assert!(matches!(e, EdgeError::Parse { .. }), "{e}");
    assert!(e.to_string().contains("tcp_prot"), "{e}");
    let e = EdgeConfig::from_toml_str("max_channels = 0").unwrap_err();
    assert!(e.to_string().contains("max_channels"), "{e}");
    let e = EdgeConfig::from_toml_str("max_frame_len = 70000").unwrap_err();
    assert!(e.to_string().contains("max_frame_len"), "{e}");
    let e = EdgeConfig::from_toml_str("app_ids = [\"has space\"]").unwrap_err();
    assert!(e.to_string().contains("app_ids"), "{e}");
}

#[test]
fn config_from_a_file_names_the_file_in_errors() {
    let dir = std::env::temp_dir().join(format!("cloudproxy-edge-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("edge.toml");
    std::fs::write(&good, "bind = \"0.0.0.0\"\napp_ids = [\"demo-app\"]\n").unwrap();
    let c = EdgeConfig::from_file(&good).unwrap();
    assert_eq!(c.app_ids, Some(vec!["demo-app".to_owned()]));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "max_members_per_channel = \"many\"\n").unwrap();
    let e = EdgeConfig::from_file(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.toml") && e.contains("max_members_per_channel"),
        "{e}"
    );
    let e = EdgeConfig::from_file(&dir.join("missing.toml")).unwrap_err();
    assert!(matches!(e, EdgeError::Read { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bind_reports_the_address_in_use() {
    let edge = start_default().await;
    let e = Edge::bind(EdgeConfig {
        tcp_port: edge.tcp_addr().port(),
        ..EdgeConfig::loopback()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            EdgeError::Bind {
                transport: "TCP",
                ..
            }
        ),
        "{e}"
    );
    edge.shutdown().await;
}
