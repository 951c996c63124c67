//! One established connection to a channel: the framed message channel and
//! the media path, direct or through the proxy; and how it is established.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cloudproxy_proto::client::ClientConfig;
use cloudproxy_proto::frame::{Frame, Joined, Media, Member};
use cloudproxy_proto::session::{ClientEvent, ClientSession, ClientSessionConfig};
use cloudproxy_proto::{Address, ErrorCode, Machine, Timebase};
use cloudproxy_transport::connector::BoxedStream;
use cloudproxy_transport::driver::{Driver, Next};
use cloudproxy_transport::tunnel::MediaPath;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::broadcast;

use crate::config::Config;
use crate::credential::Credential;
use crate::error::{DirectFailure, EngineError, MediaClosed, MediaUnconfirmed};
use crate::event::{ConnectionState, Event, ProxyType, StateReason};
use crate::rungs::{Bound, ChannelRoute, plan, refine};
use crate::settings::{ProxyMode, Settings};

/// The message channel: the member's session machine driven over the
/// stream (direct TCP, a relay's stream pipe over TCP or TLS).
pub(crate) type Channel = Driver<ClientSession, BoxedStream>;

/// The session machine's timers, from the engine's configuration.
pub(crate) fn session_config(config: &Config) -> ClientSessionConfig {
    ClientSessionConfig {
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        silence: config.silence,
        ..ClientSessionConfig::default()
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
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> Result<Bytes, MediaClosed> {
        match self {
            Self::Direct(socket) => loop {
                // ICMP errors (nothing listening yet) are not fatal for UDP.
                if let Ok(n) = socket.recv(buf).await {
                    return Ok(Bytes::copy_from_slice(&buf[..n]));
                }
            },
            Self::Relay(path) => match path.recv().await {
                Some(datagram) => Ok(datagram),
                None => Err(MediaClosed {
                    reason: path.closed_reason(),
                }),
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
    pub(crate) channel: Channel,
    pub(crate) media: MediaLink,
    pub(crate) joined: Joined,
    /// Whether the membership was resumed (false: a new one).
    pub(crate) resumed: bool,
    /// Members of the earlier membership that a new one forgot.
    pub(crate) forgotten: Vec<Member>,
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
) -> Result<Vec<Bytes>, MediaUnconfirmed> {
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
            return Err(MediaUnconfirmed::NoConfirmation);
        }
        media.send(registration.clone()).await;
        let resend_at = (now + retry).min(deadline);
        retry = (retry * 2).min(Duration::from_secs(1));
        loop {
            tokio::select! {
                datagram = media.recv(&mut buf) => {
                    let datagram = datagram.map_err(MediaUnconfirmed::Closed)?;
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
    join: Join<'_>,
    events: &broadcast::Sender<Event>,
) -> Result<Link, EngineError> {
    let started = Instant::now();
    match settings.mode {
        ProxyMode::Off => direct(config, join).await,
        ProxyMode::Auto => match direct(config, join).await {
            Ok(link) => Ok(link),
            // The media network answered: the path works, the join did not.
            Err(e @ EngineError::JoinRefused { .. }) => Err(e),
            Err(direct_error) => {
                let why = direct_error.to_string();
                let direct = Box::new(direct_error);
                tracing::info!(%why, "direct path failed; trying the proxy");
                let _ = events.send(Event::DirectPathFailed { why: why.clone() });
                proxy(config, settings, ProxyMode::On, join, events, started)
                    .await
                    .map_err(|proxy| match proxy {
                        e @ EngineError::JoinRefused { .. } => e,
                        proxy => EngineError::AutoFailed {
                            direct,
                            proxy: Box::new(proxy),
                        },
                    })
            }
        },
        mode
        @ (ProxyMode::On | ProxyMode::ForceUdp | ProxyMode::ForceTcp | ProxyMode::ForceTls) => {
            proxy(config, settings, mode, join, events, started).await
        }
    }
}

/// Straight to the media network, bounded by `direct_timeout` as a whole
/// (joining and confirming the media path).
async fn direct(config: &Config, join: Join<'_>) -> Result<Link, EngineError> {
    let addr = config.edge_tcp;
    let deadline = tokio::time::Instant::now() + config.direct_timeout;
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| EngineError::Direct {
                addr,
                reason: DirectFailure::Connect(e),
            })?;
        let _ = stream.set_nodelay(true);
        let mut channel = join.channel(Box::new(stream), &[]);
        let joined = handshake(&mut channel).await?;
        let socket = udp_to(config.edge_udp)
            .await
            .map_err(|cause| EngineError::Io {
                what: "opening the direct media socket",
                cause,
            })?;
        Ok::<_, EngineError>((channel, joined, socket))
    };
    let (channel, (joined, resumed, forgotten), socket) =
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(EngineError::Direct {
                    addr,
                    reason: DirectFailure::NoAnswer(config.direct_timeout),
                });
            }
        };
    let mut media = MediaLink::Direct(socket);
    let early_media = confirm_media(&mut media, &joined, deadline)
        .await
        .map_err(|why| EngineError::Direct {
            addr: config.edge_udp,
            reason: DirectFailure::MediaUnconfirmed {
                after: config.direct_timeout,
                why,
            },
        })?;
    Ok(Link {
        channel,
        media,
        joined,
        resumed,
        forgotten,
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

/// Through the proxy: the transport ladder (resolve, allocate, bind the
/// media path on each allowed rung, staggered; the first bound wins), then
/// the message channel and the join on the winner's transport.
async fn proxy(
    config: &Config,
    settings: &Settings,
    mode: ProxyMode,
    join: Join<'_>,
    events: &broadcast::Sender<Event>,
    started: Instant,
) -> Result<Link, EngineError> {
    let _ = events.send(Event::ConnectionStateChanged {
        state: ConnectionState::Connecting,
        reason: StateReason::SettingProxyServer,
    });
    let client = client_config(config);
    let ladder = plan(config, settings, mode, &client).await?;
    let Bound {
        rung,
        allocation,
        media,
        fallback,
        route,
    } = ladder.climb().await.map_err(|e| refine(config, e))?;
    tracing::debug!(
        ?rung,
        session = allocation.session_id,
        "proxy session bound"
    );
    let (stream, early) = match route {
        ChannelRoute::Relay => {
            let (stream, early) = cloudproxy_transport::tunnel::open_stream(
                &client,
                &allocation,
                Address::Ip(config.edge_tcp),
                &config.dial,
            )
            .await
            .map_err(|e| refine(config, EngineError::Tunnel(e)))?;
            (Box::new(stream) as BoxedStream, early)
        }
        ChannelRoute::Tls(opener) => opener
            .open_stream(&client, &allocation, Address::Ip(config.edge_tcp))
            .await
            .map_err(|e| refine(config, e))?,
    };
    let mut channel = join.channel(stream, &early);
    // The join and the media path's confirmation share one deadline.
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let (joined, resumed, forgotten) = tokio::time::timeout_at(deadline, handshake(&mut channel))
        .await
        .map_err(|_| EngineError::Timeout {
            what: "joining the channel through the proxy",
            after: config.handshake_timeout,
        })??;
    let proxy_type = rung.proxy_type();
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
    ladder.remember(rung);
    if let Some(why) = fallback {
        let _ = events.send(Event::MediaFallbackToTcp { why });
    }
    let _ = events.send(Event::ProxyConnected {
        proxy_type,
        elapsed: started.elapsed(),
    });
    Ok(Link {
        channel,
        media,
        joined,
        resumed,
        forgotten,
        route: Route::Proxy(proxy_type),
        early_media,
    })
}

/// A hint for a refused credential that looks like the printed hex string
/// passed as raw bytes.
pub(crate) fn credential_hint(credential: &Credential) -> String {
    if credential.looks_like_hex_text() {
        format!(
            "; the credential given is {} bytes that are all hex digits: it looks like the hex string passed as raw bytes (Credential::from_bytes or a Vec<u8>) instead of parsed",
            credential.len()
        )
    } else {
        String::new()
    }
}

pub(crate) fn client_config(config: &Config) -> ClientConfig {
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

/// What a connection attempt joins with: a copy of the member's session
/// machine (so an attempt that fails or is abandoned leaves the session
/// as it was), fresh or resuming.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Join<'a> {
    pub(crate) session: &'a ClientSession,
    pub(crate) resume: bool,
}

impl Join<'_> {
    /// The message channel over `stream`, `Join` queued, with the bytes
    /// that arrived with the stream's opening already fed in.
    fn channel(self, stream: BoxedStream, early: &[u8]) -> Channel {
        let mut session = self.session.clone();
        let now = Instant::now();
        session.connect(now, self.resume);
        if !early.is_empty() {
            session.handle_input(now, early);
        }
        Driver::new(session, stream)
    }
}

/// Runs the channel until the edge answers the queued `Join`: the
/// membership, whether it was resumed, and the members a new membership
/// forgot.
async fn handshake(channel: &mut Channel) -> Result<(Joined, bool, Vec<Member>), EngineError> {
    let what = "joining the channel";
    let expected = "Joined or JoinRefused";
    loop {
        match channel.next_event().await {
            Next::Event(ClientEvent::Joined {
                joined,
                resumed,
                forgotten,
            }) => return Ok((joined, resumed, forgotten)),
            Next::Event(ClientEvent::Refused { code, message }) => {
                return Err(EngineError::JoinRefused { code, message });
            }
            Next::Event(ClientEvent::Lost(e)) => {
                return Err(EngineError::Protocol {
                    what,
                    expected,
                    found: e.to_string(),
                });
            }
            // Nothing else comes before `Joined`.
            Next::Event(_) => {}
            Next::PeerClosed => {
                return Err(EngineError::Protocol {
                    what,
                    expected,
                    found: "the connection closed".into(),
                });
            }
            Next::Io(cause) => return Err(EngineError::Io { what, cause }),
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
