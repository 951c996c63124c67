//! A small test client of the media edge protocol (`docs/protocol.md` §9),
//! built on `cloudproxy_proto::reliable`. Every wait has a timeout as a
//! safety net; tests wait on frames and counters, never on the clock.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cloudproxy_edge::{EdgeHandle, EdgeStats};
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{ErrorFrame, Frame, Join, Joined, Media, Member, Message, Resume};
use cloudproxy_proto::reliable::{Inbox, Outbox, Received};
use cloudproxy_proto::{AppId, ChannelName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::Encoder;

/// Safety net for every wait.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) const APP: &str = "demo-app";

/// A membership notice as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice {
    Joined(Member),
    Left(Member),
}

/// Raw framed TCP connection.
pub(crate) struct FramedConn {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl FramedConn {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to edge");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(),
        }
    }

    pub(crate) async fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write raw");
    }

    /// The next frame, or `None` at end of stream (or a reset).
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = self
                    .codec
                    .decode(&mut self.buf)
                    .expect("edge sent a bad frame")
                {
                    return Some(f);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("timed out waiting for a frame from the edge")
    }

    /// Waits for the edge to close the connection, skipping frames.
    pub(crate) async fn expect_closed(&mut self) {
        while self.recv().await.is_some() {}
    }

    /// Expects an `Error` frame with `code`, then the close.
    pub(crate) async fn expect_error_and_close(&mut self, code: u16) -> ErrorFrame {
        // Frames queued before the error (notices, acks) may come first.
        let e = loop {
            match self.recv().await {
                Some(Frame::Error(e)) => break e,
                Some(Frame::MemberJoined(_) | Frame::MemberLeft(_) | Frame::Ack(_)) => {}
                other => panic!("expected Error {code}, got {other:?}"),
            }
        };
        assert_eq!(e.code.0, code, "error message: {}", e.message);
        assert!(
            self.recv().await.is_none(),
            "connection should be closed after Error"
        );
        e
    }
}

pub(crate) fn join_frame(channel: &str, user_id: u32, resume: Option<Resume>) -> Frame {
    join_frame_app(APP, channel, user_id, resume)
}

pub(crate) fn join_frame_app(
    app: &str,
    channel: &str,
    user_id: u32,
    resume: Option<Resume>,
) -> Frame {
    Frame::Join(Join {
        app_id: AppId::new(app).unwrap(),
        channel: ChannelName::new(channel).unwrap(),
        user_id,
        resume,
    })
}

/// A joined client: message channel plus a UDP media socket.
pub(crate) struct Client {
    conn: Option<FramedConn>,
    pub(crate) edge: SocketAddr,
    pub(crate) media_addr: SocketAddr,
    pub(crate) channel: String,
    pub(crate) user_id: u32,
    pub(crate) joined: Joined,
    pub(crate) outbox: Outbox,
    pub(crate) inbox: Inbox,
    /// Messages delivered in order (duplicates dropped by the inbox).
    pub(crate) delivered: Vec<Message>,
    pub(crate) notices: Vec<Notice>,
    pub(crate) pongs: Vec<u64>,
    /// Highest cumulative `Ack` seen from the edge.
    pub(crate) acked: u64,
    /// Acknowledge delivered messages (default true).
    pub(crate) auto_ack: bool,
    pub(crate) media: UdpSocket,
    pub(crate) closed: bool,
}

impl Client {
    /// Connects and joins; panics unless `Joined` comes back.
    pub(crate) async fn join(edge: &EdgeHandle, channel: &str, user_id: u32) -> Self {
        let mut conn = FramedConn::connect(edge.tcp_addr()).await;
        conn.send(&join_frame(channel, user_id, None)).await;
        let joined = match conn.recv().await {
            Some(Frame::Joined(j)) => j,
            other => panic!("expected Joined, got {other:?}"),
        };
        assert!(!joined.resumed);
        assert_eq!(joined.last_received, 0);
        Self {
            conn: Some(conn),
            edge: edge.tcp_addr(),
            media_addr: edge.udp_addr(),
            channel: channel.to_owned(),
            user_id,
            joined,
            outbox: Outbox::new(joined.member_id),
            inbox: Inbox::new(),
            delivered: Vec::new(),
            notices: Vec::new(),
            pongs: Vec::new(),
            acked: 0,
            auto_ack: true,
            media: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            closed: false,
        }
    }

    /// The current message channel.
    pub(crate) fn conn(&mut self) -> &mut FramedConn {
        self.conn.as_mut().expect("client is disconnected")
    }

    pub(crate) fn member_id(&self) -> u32 {
        self.joined.member_id
    }

    pub(crate) fn member(&self) -> Member {
        Member {
            member_id: self.joined.member_id,
            user_id: self.user_id,
        }
    }

    /// Sends a new reliable message.
    pub(crate) async fn send_message(&mut self, payload: &str) -> Message {
        let m = self.outbox.push(Bytes::copy_from_slice(payload.as_bytes()));
        self.conn().send(&Frame::Message(m.clone())).await;
        m
    }

    /// Numbers a message but "loses" it (never written): as if it had been
    /// in flight in a connection that broke.
    pub(crate) fn lose_message(&mut self, payload: &str) -> Message {
        self.outbox.push(Bytes::copy_from_slice(payload.as_bytes()))
    }

    /// Reads one frame and applies it. Returns false once the edge closed.
    pub(crate) async fn pump(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let Some(frame) = self.conn().recv().await else {
            self.closed = true;
            return false;
        };
        match frame {
            Frame::Message(m) => {
                if self.inbox.receive(&m) == Received::Deliver {
                    self.delivered.push(m);
                }
                if self.auto_ack {
                    let ack = self.inbox.ack();
                    self.conn().send(&Frame::Ack(ack)).await;
                }
            }
            Frame::Ack(n) => {
                self.outbox.acknowledge(n);
                self.acked = self.acked.max(n);
            }
            Frame::MemberJoined(m) => self.notices.push(Notice::Joined(m)),
            Frame::MemberLeft(m) => self.notices.push(Notice::Left(m)),
            Frame::Pong(v) => self.pongs.push(v),
            other => panic!("unexpected frame from the edge: {other:?}"),
        }
        true
    }

    /// Pumps frames until `cond` holds (panics if the edge closes first).
    pub(crate) async fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let r = tokio::time::timeout(WAIT, async {
            while !cond(self) {
                assert!(
                    self.pump().await,
                    "edge closed the connection while waiting for {what}"
                );
            }
        })
        .await;
        assert!(r.is_ok(), "timed out waiting for {what}");
    }

    pub(crate) async fn wait_delivered(&mut self, n: usize) {
        self.wait_until(&format!("{n} messages"), |c| c.delivered.len() >= n)
            .await;
    }

    pub(crate) async fn wait_acked(&mut self, seq: u64) {
        self.wait_until(&format!("Ack({seq})"), |c| c.acked >= seq)
            .await;
    }

    pub(crate) async fn wait_notice(&mut self, notice: Notice) {
        self.wait_until(&format!("{notice:?}"), |c| c.notices.contains(&notice))
            .await;
    }

    /// Payloads delivered so far, as strings.
    pub(crate) fn delivered_text(&self) -> Vec<String> {
        self.delivered
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    /// Closes the message channel without `Leave` (a broken relay path).
    pub(crate) fn drop_connection(&mut self) {
        self.conn = None;
        self.closed = true;
    }

    /// Resumes on a new connection (§9.6); returns the `Joined` or the refusal.
    pub(crate) async fn resume(&mut self) -> Result<Joined, ErrorFrame> {
        let mut conn = FramedConn::connect(self.edge).await;
        let resume = Resume {
            member_id: self.joined.member_id,
            resume_token: self.joined.resume_token,
            last_received: self.inbox.last_received(),
        };
        conn.send(&join_frame(&self.channel, self.user_id, Some(resume)))
            .await;
        let joined = match conn.recv().await {
            Some(Frame::Joined(j)) => j,
            Some(Frame::JoinRefused(e)) => return Err(e),
            other => panic!("expected Joined or JoinRefused, got {other:?}"),
        };
        self.conn = Some(conn);
        self.closed = false;
        self.joined = joined;
        // Resend, in order and with their numbers, what the edge lacks.
        let resend: Vec<Message> = self.outbox.resend_after(joined.last_received).collect();
        for m in resend {
            self.conn().send(&Frame::Message(m)).await;
        }
        Ok(joined)
    }

    /// Sends one media datagram with the member's token.
    pub(crate) async fn send_media(&self, payload: &[u8]) {
        self.send_media_with_token(self.joined.member_id, self.joined.media_token, payload)
            .await;
    }

    pub(crate) async fn send_media_with_token(&self, member_id: u32, token: u64, payload: &[u8]) {
        let f = Frame::Media(Media {
            member_id,
            token,
            payload: Bytes::copy_from_slice(payload),
        });
        self.media
            .send_to(&f.to_bytes(), self.media_addr)
            .await
            .unwrap();
    }

    /// The next media datagram received.
    pub(crate) async fn recv_media(&self) -> Media {
        let mut buf = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(WAIT, self.media.recv_from(&mut buf))
            .await
            .expect("timed out waiting for media")
            .unwrap();
        assert_eq!(
            from, self.media_addr,
            "media from somewhere else than the edge"
        );
        match Frame::parse(&buf[..n]) {
            Ok(Frame::Media(m)) => m,
            other => panic!("expected Media, got {other:?}"),
        }
    }
}

/// Polls the edge's counters until `cond` holds (the UDP path has no
/// acknowledgement to wait on; the poll interval is not a synchronisation).
pub(crate) async fn wait_stats(
    edge: &EdgeHandle,
    what: &str,
    cond: impl Fn(&EdgeStats) -> bool,
) -> EdgeStats {
    let r = tokio::time::timeout(WAIT, async {
        loop {
            let s = edge.stats();
            if cond(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    match r {
        Ok(s) => s,
        Err(_) => panic!("timed out waiting for {what}; stats: {:?}", edge.stats()),
    }
}
