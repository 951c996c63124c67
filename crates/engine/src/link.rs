//! One established connection to a channel: the framed message channel and
//! the media path, direct or through the proxy; and how it is established.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cloudproxy_proto::client::ClientConfig;
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{Frame, Join, Joined, Media};
use cloudproxy_proto::{Address, ErrorCode, Timebase};
use cloudproxy_transport::resolve::candidates;
use cloudproxy_transport::tunnel::{
    MediaPath, MediaPathKind, MediaPolicy, MediaTransport, TunnelError, allocate, open_media,
    open_stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::broadcast;

use crate::config::Config;
use crate::credential::Credential;
use crate::error::EngineError;
use crate::event::{ConnectionState, Event, ProxyType, StateReason};
use crate::settings::{ProxyMode, Settings};

/// The framed message channel (TCP, direct or a relay's stream pipe).
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    codec: FrameCodec,
}

impl Conn {
    fn new(stream: TcpStream, early: &[u8]) -> Self {
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        rbuf.extend_from_slice(early);
        Self {
            stream,
            rbuf,
            codec: FrameCodec::new(),
        }
    }

    /// The next frame; `Ok(None)` at end of stream. Cancel-safe: a frame is
    /// taken from the buffer only when it is returned.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Frame>, String> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(format!("malformed data from the media network: {e}")),
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(format!("reading the message channel: {e}")),
            }
        }
    }

    /// Whether a whole frame or part of one is already buffered.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.rbuf.is_empty()
    }

    pub(crate) async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.stream.write_all(&frame.to_bytes()).await
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// The media path.
#[derive(Debug)]
pub(crate) enum MediaLink {
    /// A UDP socket connected to the media network.
    Direct(UdpSocket),
    /// Through the proxy (UDP relay or UDP-over-TCP).
    Relay(MediaPath),
}

impl MediaLink {
    /// Best effort: a full queue or a failed send drops the datagram.
    /// (`try_send` is not used on the socket: a fresh tokio socket reports
    /// `WouldBlock` until it has been polled once.)
    pub(crate) async fn send(&self, datagram: Bytes) {
        match self {
            Self::Direct(socket) => {
                let _ = socket.send(&datagram).await;
            }
            Self::Relay(path) => {
                let _ = path.try_send(datagram);
            }
        }
    }

    /// The next datagram; `Err` with the reason once the path has closed.
    /// Cancel-safe.
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> Result<Bytes, String> {
        match self {
            Self::Direct(socket) => loop {
                // ICMP errors (nothing listening yet) are not fatal for UDP.
                if let Ok(n) = socket.recv(buf).await {
                    return Ok(Bytes::copy_from_slice(&buf[..n]));
                }
            },
            Self::Relay(path) => match path.recv().await {
                Some(datagram) => Ok(datagram),
                None => Err(format!(
                    "the media path closed: {}",
                    path.closed_reason()
                        .unwrap_or_else(|| "no reason given".into())
                )),
            },
        }
    }
}

/// How a link reaches the media network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Direct,
    Proxy(ProxyType),
}

/// A joined connection, its media path confirmed by the media network.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) conn: Conn,
    pub(crate) media: MediaLink,
    pub(crate) joined: Joined,
    pub(crate) route: Route,
    /// Media from other members that arrived while the registration was
    /// being confirmed; delivered first.
    pub(crate) early_media: Vec<Bytes>,
}

/// Most media datagrams kept from before the registration was confirmed.
const EARLY_MEDIA_MAX: usize = 64;

/// Registers this member's media address with the media network (an empty
/// `Media`, `docs/protocol.md` §9.3) and waits until the edge confirms it,
/// retransmitting at 50 ms doubling to 1 s, until `deadline`. Until it is
/// confirmed, media other members send is dropped at the edge for want of
/// an address: so a join is reported only after this. Returns the media of
/// others that arrived meanwhile (at most [`EARLY_MEDIA_MAX`]).
async fn confirm_media(
    media: &mut MediaLink,
    joined: &Joined,
    deadline: tokio::time::Instant,
) -> Result<Vec<Bytes>, String> {
    let registration = Frame::Media(Media {
        member_id: joined.member_id,
        token: joined.media_token,
        payload: Bytes::new(),
    })
    .to_bytes();
    let mut early = Vec::new();
    let mut retry = Duration::from_millis(50);
    let mut buf = vec![0u8; 2048];
    // Bounded: every pass sends once and waits at least 50 ms, until the
    // deadline.
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err("no confirmation of the media registration".into());
        }
        media.send(registration.clone()).await;
        let resend_at = (now + retry).min(deadline);
        retry = (retry * 2).min(Duration::from_secs(1));
        loop {
            tokio::select! {
                datagram = media.recv(&mut buf) => {
                    let datagram = datagram?;
                    match Frame::decode(datagram.clone()) {
                        // The confirmation: our own empty registration back.
                        Ok(Frame::Media(m))
                            if m.payload.is_empty() && m.member_id == joined.member_id =>
                        {
                            return Ok(early);
                        }
                        Ok(Frame::Media(m))
                            if !m.payload.is_empty() && early.len() < EARLY_MEDIA_MAX =>
                        {
                            early.push(datagram);
                        }
                        _ => {}
                    }
                }
                () = tokio::time::sleep_until(resend_at) => break,
            }
        }
    }
}

/// Establishes a link under `settings`, sending `join` (fresh or resume);
/// reports progress on `events`. Every step is bounded (see the crate docs).
pub(crate) async fn connect(
    config: &Config,
    settings: &Settings,
    join: Join,
    events: &broadcast::Sender<Event>,
) -> Result<Link, EngineError> {
    let started = Instant::now();
    match settings.mode {
        ProxyMode::Off => direct(config, join).await,
        ProxyMode::Auto => match direct(config, join.clone()).await {
            Ok(link) => Ok(link),
            // The media network answered: the path works, the join did not.
            Err(e @ EngineError::JoinRefused { .. }) => Err(e),
            Err(direct_error) => {
                let why = direct_error.to_string();
                tracing::info!(%why, "direct path failed; trying the proxy");
                let _ = events.send(Event::DirectPathFailed { why: why.clone() });
                proxy(
                    config,
                    settings,
                    MediaTransport::Auto,
                    join,
                    events,
                    started,
                )
                .await
                .map_err(|proxy| match proxy {
                    e @ EngineError::JoinRefused { .. } => e,
                    proxy => EngineError::AutoFailed {
                        direct: why,
                        proxy: Box::new(proxy),
                    },
                })
            }
        },
        ProxyMode::On => {
            proxy(
                config,
                settings,
                MediaTransport::Auto,
                join,
                events,
                started,
            )
            .await
        }
        ProxyMode::ForceUdp => {
            proxy(
                config,
                settings,
                MediaTransport::UdpOnly,
                join,
                events,
                started,
            )
            .await
        }
        ProxyMode::ForceTcp => {
            proxy(
                config,
                settings,
                MediaTransport::TcpOnly,
                join,
                events,
                started,
            )
            .await
        }
    }
}

/// Straight to the media network, bounded by `direct_timeout` as a whole
/// (joining and confirming the media path).
async fn direct(config: &Config, join: Join) -> Result<Link, EngineError> {
    let addr = config.edge_tcp;
    let deadline = tokio::time::Instant::now() + config.direct_timeout;
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| EngineError::Direct {
                addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn::new(stream, &[]);
        let joined = handshake(&mut conn, join).await?;
        let socket = udp_to(config.edge_udp)
            .await
            .map_err(|cause| EngineError::Io {
                what: "opening the direct media socket",
                cause,
            })?;
        Ok::<_, EngineError>((conn, joined, socket))
    };
    let (conn, joined, socket) = match tokio::time::timeout_at(deadline, attempt).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(EngineError::Direct {
                addr,
                reason: format!("no answer within {:?}", config.direct_timeout),
            });
        }
    };
    let mut media = MediaLink::Direct(socket);
    let early_media = confirm_media(&mut media, &joined, deadline)
        .await
        .map_err(|why| EngineError::Direct {
            addr: config.edge_udp,
            reason: format!(
                "the media path (UDP) was not confirmed within {:?}: {why}; UDP may be blocked",
                config.direct_timeout
            ),
        })?;
    Ok(Link {
        conn,
        media,
        joined,
        route: Route::Direct,
        early_media,
    })
}

async fn udp_to(peer: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

/// Through the proxy: resolve, allocate, open media, open the message
/// channel, join.
async fn proxy(
    config: &Config,
    settings: &Settings,
    transport: MediaTransport,
    join: Join,
    events: &broadcast::Sender<Event>,
    started: Instant,
) -> Result<Link, EngineError> {
    let _ = events.send(Event::ConnectionStateChanged {
        state: ConnectionState::Connecting,
        reason: StateReason::SettingProxyServer,
    });
    let server = settings
        .proxy_server
        .clone()
        .unwrap_or_else(|| config.default_server.clone());
    let addrs = candidates(&server, config.dns_timeout).await?;
    let client = client_config(config);
    let (service, allocation) =
        allocate(&client, &addrs, &config.dial)
            .await
            .map_err(|e| match e {
                TunnelError::Refused {
                    proxy,
                    code: code @ ErrorCode::BAD_CREDENTIAL,
                    ..
                } => EngineError::CredentialRefused {
                    app_id: config.app_id.as_str().to_owned(),
                    proxy,
                    code,
                    hint: credential_hint(&config.credential),
                },
                other => EngineError::Tunnel(other),
            })?;
    tracing::debug!(%service, session = allocation.session_id, "proxy session allocated");
    let policy = MediaPolicy {
        transport,
        udp_probe_timeout: config.udp_probe_timeout,
        tcp_dial: config.dial.clone(),
        queue_len: config.media_queue,
    };
    let media = open_media(&client, &allocation, Address::Ip(config.edge_udp), &policy)
        .await
        .map_err(|e| match e {
            TunnelError::UdpBlocked(probe) => EngineError::UdpBlocked { probe },
            other => EngineError::Tunnel(other),
        })?;
    let (stream, early) = open_stream(
        &client,
        &allocation,
        Address::Ip(config.edge_tcp),
        &config.dial,
    )
    .await?;
    let mut conn = Conn::new(stream, &early);
    // The join and the media path's confirmation share one deadline.
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let joined = tokio::time::timeout_at(deadline, handshake(&mut conn, join))
        .await
        .map_err(|_| EngineError::Timeout {
            what: "joining the channel through the proxy",
            after: config.handshake_timeout,
        })??;
    let proxy_type = match media.kind() {
        MediaPathKind::Udp => ProxyType::Udp,
        MediaPathKind::UdpOverTcp => ProxyType::Tcp,
    };
    let fallback = media.fallback_reason().map(str::to_owned);
    let mut media = MediaLink::Relay(media);
    let early_media = confirm_media(&mut media, &joined, deadline)
        .await
        .map_err(|why| {
            tracing::warn!(%why, "the media path through the proxy was not confirmed");
            EngineError::Timeout {
                what: "confirming the media path through the proxy with the media network",
                after: config.handshake_timeout,
            }
        })?;
    if let (Some(why), MediaTransport::Auto) = (fallback, transport) {
        let _ = events.send(Event::MediaFallbackToTcp { why });
    }
    let _ = events.send(Event::ProxyConnected {
        proxy_type,
        elapsed: started.elapsed(),
    });
    Ok(Link {
        conn,
        media,
        joined,
        route: Route::Proxy(proxy_type),
        early_media,
    })
}

/// A hint for a refused credential that looks like the printed hex string
/// passed as raw bytes.
fn credential_hint(credential: &Credential) -> String {
    if credential.looks_like_hex_text() {
        format!(
            "; the credential given is {} bytes that are all hex digits: it looks like the hex string passed as raw bytes (Credential::from_bytes or a Vec<u8>) instead of parsed",
            credential.len()
        )
    } else {
        String::new()
    }
}

fn client_config(config: &Config) -> ClientConfig {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut client = ClientConfig::new(
        config.app_id.clone(),
        config.credential.as_bytes().to_vec(),
        Timebase::new(Instant::now(), unix),
    );
    client.client_version =
        cloudproxy_proto::Text::truncated(concat!("cloudproxy-engine/", env!("CARGO_PKG_VERSION")));
    client.handshake_timeout = config.handshake_timeout;
    client
}

/// Sends `join` and waits for `Joined`.
async fn handshake(conn: &mut Conn, join: Join) -> Result<Joined, EngineError> {
    let what = "joining the channel";
    conn.write_frame(&Frame::Join(join))
        .await
        .map_err(|cause| EngineError::Io { what, cause })?;
    loop {
        let frame = conn
            .read_frame()
            .await
            .map_err(|found| EngineError::Protocol {
                what,
                expected: "Joined or JoinRefused",
                found,
            })?;
        match frame {
            Some(Frame::Joined(joined)) => return Ok(joined),
            Some(Frame::JoinRefused(e) | Frame::Error(e)) => {
                return Err(EngineError::JoinRefused {
                    code: e.code,
                    message: e.message.as_str().to_owned(),
                });
            }
            Some(Frame::Ping(v)) => conn
                .write_frame(&Frame::Pong(v))
                .await
                .map_err(|cause| EngineError::Io { what, cause })?,
            Some(other) => {
                return Err(EngineError::Protocol {
                    what,
                    expected: "Joined or JoinRefused",
                    found: format!("{other:?}"),
                });
            }
            None => {
                return Err(EngineError::Protocol {
                    what,
                    expected: "Joined or JoinRefused",
                    found: "the connection closed".into(),
                });
            }
        }
    }
}

/// The refusal code of a failed resume.
pub(crate) fn is_resume_refused(e: &EngineError) -> bool {
    matches!(e, EngineError::JoinRefused { code, .. } if *code == ErrorCode::RESUME_FAILED)
}

/// A bound for one whole (re)connection attempt, used by the reconnect loop.
pub(crate) fn attempt_bound(config: &Config) -> Duration {
    config.direct_timeout
        + config.dial.overall_timeout * 3
        + config.udp_probe_timeout
        + config.handshake_timeout
        + config.dns_timeout
}
