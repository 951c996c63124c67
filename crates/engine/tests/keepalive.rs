//! Keepalive: pings go out when idle, and a media network that goes silent
//! is detected within the keepalive timeout and the membership resumed.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use cloudproxy_engine::{ConnectionState, StateReason};
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{Frame, Joined};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// A media network that answers the first `Join` and then says nothing
/// more (not even `Pong`), and answers a resume normally. Records what each
/// connection sent.
async fn silent_edge(log: mpsc::UnboundedSender<(usize, Frame)>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut codec = FrameCodec::new();
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some(frame)) = codec.decode(&mut buf) {
                        let reply = match &frame {
                            Frame::Join(join) => Some(Frame::Joined(Joined {
                                member_id: 7,
                                resume_token: 11,
                                media_token: 13,
                                last_received: 0,
                                resumed: join.resume.is_some(),
                            })),
                            Frame::Ping(v) if n > 0 => Some(Frame::Pong(*v)),
                            _ => None,
                        };
                        let _ = log.send((n, frame));
                        if let Some(reply) = reply {
                            if stream.write_all(&reply.to_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_media_network_is_detected_and_the_membership_resumed() {
    let (log_tx, mut log_rx) = mpsc::unbounded_channel();
    let tcp = silent_edge(log_tx).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    confirm_media_registrations(udp);
    let engine = builder(tcp, udp_addr)
        .keepalive(Duration::from_millis(100), Duration::from_millis(500))
        .build()
        .unwrap();
    let mut events = engine.events();
    engine.join_channel("silent", 5).await.unwrap();
    let (_, before) = wait_for(&mut events, "Reconnecting", |e| {
        is_state(
            e,
            ConnectionState::Reconnecting,
            StateReason::KeepaliveTimeout,
        )
    })
    .await;
    assert!(
        !before.iter().any(|e| is_state(
            e,
            ConnectionState::Reconnecting,
            StateReason::Interrupted
        )),
        "{before:?}"
    );
    wait_for(&mut events, "Resumed", |e| {
        is_state(e, ConnectionState::Connected, StateReason::Resumed)
    })
    .await;
    {
        let mut log = Vec::new();
        while let Ok(entry) = log_rx.try_recv() {
            log.push(entry);
        }
        // The first connection was pinged while idle.
        assert!(
            log.iter()
                .any(|(n, f)| *n == 0 && matches!(f, Frame::Ping(_))),
            "{log:?}"
        );
        // The second one resumed member 7 with its token.
        let resume = log.iter().find_map(|(n, f)| match f {
            Frame::Join(join) if *n == 1 => join.resume,
            _ => None,
        });
        let resume = resume.unwrap_or_else(|| panic!("no resume in {log:?}"));
        assert_eq!((resume.member_id, resume.resume_token), (7, 11));
    }
    // Answered pings keep the resumed connection up: no second timeout
    // before leaving.
    engine.leave_channel().await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(
        !seen.iter().any(|e| is_state(
            e,
            ConnectionState::Reconnecting,
            StateReason::KeepaliveTimeout
        )),
        "{seen:?}"
    );
    // The resumed connection carries the Leave.
    tokio::time::timeout(WAIT, async {
        while let Some((n, frame)) = log_rx.recv().await {
            if n == 1 && matches!(frame, Frame::Leave) {
                return;
            }
        }
        panic!("the fake edge stopped without seeing Leave");
    })
    .await
    .expect("Leave reaches the media network");
}
