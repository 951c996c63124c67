//! The client's way through a proxy: allocate, then open the message channel
//! (a byte stream to the destination) and the media path (UDP datagrams,
//! or UDP-over-TCP when UDP is blocked).
//!
//! Each step's connections are made by a [`Connector`]: plain TCP (the
//! allocation services, then the allocation's relays), TLS to the proxy's
//! TLS port, or TLS through an HTTP CONNECT proxy (every step to the one
//! TLS address; media is then UDP-over-TCP only). [`allocate`],
//! [`open_stream`] and [`open_media`] are the plain-TCP forms;
//! [`allocate_via`], [`open_stream_via`] and [`open_media_via`] take any
//! connector.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
//! use cloudproxy_proto::client::ClientConfig;
//! use cloudproxy_proto::{Address, AppId, Timebase};
//! use cloudproxy_transport::dial::DialPolicy;
//! use cloudproxy_transport::tunnel::{MediaPolicy, allocate, open_media, open_stream};
//!
//! let unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
//! let config = ClientConfig::new(AppId::new("my-app")?, b"my-secret".to_vec(), Timebase::new(Instant::now(), unix));
//! let candidates = ["192.0.2.10:9700".parse()?];
//! let (_, allocation) = allocate(&config, &candidates, &DialPolicy::default()).await?;
//! let edge_tcp = Address::Ip("198.51.100.1:5000".parse()?);
//! let (stream, _early) = open_stream(&config, &allocation, edge_tcp, &DialPolicy::default()).await?;
//! let edge_udp = Address::Ip("198.51.100.1:5001".parse()?);
//! let mut media = open_media(&config, &allocation, edge_udp, &MediaPolicy::default()).await?;
//! media.send(bytes::Bytes::from_static(b"hello")).await?;
//! # Ok(()) }
//! ```
//!
//! Over TLS:
//!
//! ```no_run
//! # async fn example(config: cloudproxy_proto::client::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use cloudproxy_proto::Address;
//! use cloudproxy_transport::connector::Connector;
//! use cloudproxy_transport::dial::DialPolicy;
//! use cloudproxy_transport::tls::{TlsClient, TlsTrust};
//! use cloudproxy_transport::tunnel::{MediaPolicy, allocate_via, open_media_via, open_stream_via};
//!
//! let tls = TlsClient::new(&TlsTrust::SystemRoots)?;
//! let connector = Connector::tls(tls, Some("proxy.example.com"), vec!["192.0.2.10:443".parse()?])?;
//! let policy = DialPolicy::default();
//! let (_, allocation) = allocate_via(&config, &connector, &policy).await?;
//! let edge_tcp = Address::Ip("198.51.100.1:5000".parse()?);
//! let (stream, _early) = open_stream_via(&config, &connector, &allocation, edge_tcp, &policy).await?;
//! let edge_udp = Address::Ip("198.51.100.1:5001".parse()?);
//! let media = open_media_via(&config, &connector, &allocation, edge_udp, &MediaPolicy::default()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_proto::client::{
    Allocation, Allocator, AllocatorEvent, BindingEvent, ClientConfig, RelayBinding,
};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, ErrorCode, Path, SessionError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::cancelled_bind::InFlightUdpBind;
use crate::connector::{BoxedStream, ConnectError, ConnectionKind, Connector};
use crate::dial::{DialError, DialPolicy, Outcome, race};
use crate::driver::{DatagramDriver, Driver, Next};
use crate::http_proxy::HttpProxyError;
use crate::net::connected_udp;
use crate::tls::TlsError;

/// A tunnel step failed. Each message says what happened once: a variant's
/// `Display` includes its cause, so none returns that cause again as
/// [`std::error::Error::source`] (the typed cause stays in the variant).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// No allocation service or relay could be reached or agreed.
    #[error("{what}: {cause}")]
    Dial {
        /// Which step.
        what: &'static str,
        /// Every attempt and how it ended.
        cause: DialError<AttemptError>,
    },
    /// A proxy was reached and refused the step with an error code (a
    /// wrong app id or credential, a quota, …).
    #[error("{what}: the proxy at {proxy} refused: {}", refusal_text(*code, message))]
    Refused {
        /// Which step.
        what: &'static str,
        /// The proxy address that answered.
        proxy: SocketAddr,
        /// The code it sent.
        code: ErrorCode,
        /// Its explanation (often empty or the code's own text).
        message: String,
    },
    /// The proxy's TLS certificate was not trusted (the first such attempt
    /// of the race; a TLS-intercepting proxy is the likely cause).
    #[error("{what}: {cause}")]
    UntrustedCertificate {
        /// Which step.
        what: &'static str,
        /// The address whose certificate it was.
        addr: SocketAddr,
        /// The handshake's error ([`TlsError::Untrusted`]), boxed to keep
        /// the error small.
        cause: Box<TlsError>,
    },
    /// The HTTP proxy refused or required credentials (407).
    #[error("{what}: {cause}")]
    ProxyAuthFailed {
        /// Which step.
        what: &'static str,
        /// The HTTP proxy's address that answered.
        addr: SocketAddr,
        /// The error ([`HttpProxyError::AuthFailed`]), boxed to keep the
        /// error small.
        cause: Box<HttpProxyError>,
    },
    /// The relay or service broke the exchange off.
    #[error("{what}: {cause}")]
    Session {
        /// Which step.
        what: &'static str,
        /// Why.
        cause: SessionError,
    },
    /// A socket operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// Which step.
        what: &'static str,
        /// The operating system's error.
        cause: io::Error,
    },
    /// Media over UDP was required but UDP does not get through.
    #[error(
        "media over UDP was required, but the UDP relay did not answer within {0:?} (UDP blocked?)"
    )]
    UdpBlocked(Duration),
    /// The media path has closed.
    #[error("the media path is closed")]
    MediaClosed,
}

impl TunnelError {
    /// Whether the proxy's TLS certificate was not trusted.
    #[must_use]
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(self, Self::UntrustedCertificate { .. })
    }

    /// Whether an HTTP proxy refused or required credentials (407).
    #[must_use]
    pub fn is_proxy_auth_failed(&self) -> bool {
        matches!(self, Self::ProxyAuthFailed { .. })
    }
}

/// A refusal's code with its text, and the peer's message only when it adds
/// something (proxies often send the code's own text again).
fn refusal_text(code: ErrorCode, message: &str) -> String {
    let message = message.trim();
    if message.is_empty() || message == code.user_text() {
        code.to_string()
    } else {
        format!("{code}; it said: {message}")
    }
}

/// An attempt's failure that decides the step (the peer answered, and more
/// attempts will not change the answer): reported as itself, not folded
/// into "could not reach any of N address(es)".
#[derive(Debug)]
enum Decisive {
    Refused(SocketAddr, ErrorCode, String),
    Untrusted(SocketAddr, TlsError),
    ProxyAuth(SocketAddr, HttpProxyError),
}

/// The first decisive failure among a race's attempts (a refusal with a
/// code, an untrusted certificate, a 407). Shared by the attempts of one
/// race.
#[derive(Debug, Clone, Default)]
struct FirstRefusal(Arc<Mutex<Option<Decisive>>>);

impl FirstRefusal {
    fn keep(&self, decisive: Decisive) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(decisive);
    }

    /// The attempt at `addr` ended with `reason`: remember it if it is a
    /// refusal, and give the attempt's error.
    fn note(&self, addr: SocketAddr, reason: SessionError) -> AttemptError {
        match reason {
            SessionError::Refused { code, message } => {
                self.keep(Decisive::Refused(addr, code, message.clone()));
                AttemptError::Refused { code, message }
            }
            other => AttemptError::Session(other),
        }
    }

    /// The connection to `addr` failed: remember an untrusted certificate
    /// or a 407, and give the attempt's error.
    fn note_connect(&self, addr: SocketAddr, error: ConnectError) -> AttemptError {
        match error {
            ConnectError::Io(e) => AttemptError::Io(e),
            ConnectError::Tls(TlsError::Untrusted { server, reason }) => {
                self.keep(Decisive::Untrusted(
                    addr,
                    TlsError::Untrusted {
                        server: server.clone(),
                        reason: reason.clone(),
                    },
                ));
                AttemptError::Tls(TlsError::Untrusted { server, reason })
            }
            ConnectError::Tls(e) => AttemptError::Tls(e),
            ConnectError::HttpProxy(e @ HttpProxyError::AuthFailed { .. }) => {
                self.keep(Decisive::ProxyAuth(addr, e.duplicate()));
                AttemptError::HttpProxy(e)
            }
            ConnectError::HttpProxy(e) => AttemptError::HttpProxy(e),
        }
    }

    /// The race failed: the decisive failure if there was one, else `Dial`.
    fn error(&self, what: &'static str, cause: DialError<AttemptError>) -> TunnelError {
        match self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(Decisive::Refused(proxy, code, message)) => TunnelError::Refused {
                what,
                proxy,
                code,
                message,
            },
            Some(Decisive::Untrusted(addr, cause)) => TunnelError::UntrustedCertificate {
                what,
                addr,
                cause: Box::new(cause),
            },
            Some(Decisive::ProxyAuth(addr, cause)) => TunnelError::ProxyAuthFailed {
                what,
                addr,
                cause: Box::new(cause),
            },
            None => TunnelError::Dial { what, cause },
        }
    }
}

/// Why one attempt of a race (one allocation service, one relay) failed,
/// shown in its [`DialError`] line. Each message includes its cause, so
/// none is returned again as [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptError {
    /// Connecting, reading or writing failed.
    #[error("{0}")]
    Io(io::Error),
    /// The TLS handshake failed (an untrusted certificate among others).
    #[error("{0}")]
    Tls(TlsError),
    /// The HTTP proxy did not open the tunnel.
    #[error("{0}")]
    HttpProxy(HttpProxyError),
    /// No random nonce for the request.
    #[error("{0}")]
    Entropy(getrandom::Error),
    /// The proxy answered with a refusal.
    #[error("refused: {}", refusal_text(*code, message))]
    Refused {
        /// The code it sent.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The exchange broke off (timeout, protocol error, close).
    #[error("{0}")]
    Session(SessionError),
    /// The allocation service closed the connection before answering.
    #[error("the service closed the connection")]
    ServiceClosed,
    /// The relay closed the connection before answering.
    #[error("the relay closed the connection")]
    RelayClosed,
}

/// Allocates a session from the first allocation service that answers among
/// `candidates` (over TCP), racing them under `policy`. Returns the service's
/// address and the allocation.
pub async fn allocate(
    config: &ClientConfig,
    candidates: &[SocketAddr],
    policy: &DialPolicy,
) -> Result<(SocketAddr, Allocation), TunnelError> {
    allocate_via(config, &Connector::tcp(candidates.to_vec()), policy).await
}

/// Allocates a session from the first of the connector's
/// [candidates](Connector::candidates) that answers, racing them under
/// `policy` (the attempt timeout bounds each connection, TLS handshake and
/// HTTP CONNECT included). Returns the address that answered and the
/// allocation.
pub async fn allocate_via(
    config: &ClientConfig,
    connector: &Connector,
    policy: &DialPolicy,
) -> Result<(SocketAddr, Allocation), TunnelError> {
    let (config, connector_c) = (config.clone(), connector.clone());
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    race(connector.candidates(), policy, move |addr| {
        let (config, connector, seen) = (config.clone(), connector_c.clone(), seen.clone());
        async move {
            let stream = connector
                .connect(addr)
                .await
                .map_err(|e| seen.note_connect(addr, e))?;
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).map_err(AttemptError::Entropy)?;
            let allocator = Allocator::new(&config, Path::Tcp, nonce, Instant::now());
            let mut driver = Driver::new(allocator, stream);
            let result = drive_allocator(&mut driver, addr, &seen).await;
            let (_, mut stream) = driver.into_parts();
            let _ = stream.shutdown().await;
            result
        }
    })
    .await
    .map_err(|cause| refusal.error("allocating a proxy session", cause))
}

/// Runs an allocation until the service answers; a refusal is noted in
/// `refusal`.
async fn drive_allocator<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &mut Driver<Allocator, S>,
    addr: SocketAddr,
    refusal: &FirstRefusal,
) -> Result<Allocation, AttemptError> {
    loop {
        match driver.next_event().await {
            Next::Event(AllocatorEvent::Allocated(allocation)) => return Ok(allocation),
            Next::Event(AllocatorEvent::Failed(reason)) => return Err(refusal.note(addr, reason)),
            Next::Event(_) => {}
            Next::PeerClosed => return Err(AttemptError::ServiceClosed),
            Next::Io(e) => return Err(AttemptError::Io(e)),
        }
    }
}

/// Opens the message channel: a TCP connection to one of the allocation's
/// relays, bound in stream mode to `destination`. After it returns, the
/// stream is a plain byte pipe to the destination; `early` holds the first
/// bytes the destination already sent.
pub async fn open_stream(
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
    policy: &DialPolicy,
) -> Result<(TcpStream, Bytes), TunnelError> {
    let dial = |addr: SocketAddr| async move {
        let stream = TcpStream::connect(addr).await.map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    };
    open_stream_on(
        config,
        allocation.tcp_relays.clone(),
        allocation,
        destination,
        policy,
        dial,
    )
    .await
}

/// Opens the message channel over `connector`: a connection to one of its
/// [relay candidates](Connector::relay_candidates), bound in stream mode to
/// `destination`. After it returns, the stream is a plain byte pipe to the
/// destination; `early` holds the first bytes the destination already
/// sent.
pub async fn open_stream_via(
    config: &ClientConfig,
    connector: &Connector,
    allocation: &Allocation,
    destination: Address,
    policy: &DialPolicy,
) -> Result<(BoxedStream, Bytes), TunnelError> {
    let connector_c = connector.clone();
    let dial = move |addr: SocketAddr| {
        let connector = connector_c.clone();
        async move { connector.connect(addr).await }
    };
    open_stream_on(
        config,
        connector.relay_candidates(allocation),
        allocation,
        destination,
        policy,
        dial,
    )
    .await
}

/// The message channel's race over `relays`, each connection made by
/// `dial`.
async fn open_stream_on<S, D, Fut>(
    config: &ClientConfig,
    relays: Vec<SocketAddr>,
    allocation: &Allocation,
    destination: Address,
    policy: &DialPolicy,
    dial: D,
) -> Result<(S, Bytes), TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Fn(SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<S, ConnectError>> + Send + 'static,
{
    let (config, allocation) = (config.clone(), allocation.clone());
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    let (_, opened) = race(&relays, policy, move |addr| {
        let (config, allocation, destination, seen, dial) = (
            config.clone(),
            allocation.clone(),
            destination.clone(),
            seen.clone(),
            dial.clone(),
        );
        async move {
            let stream = dial(addr).await.map_err(|e| seen.note_connect(addr, e))?;
            let binding = RelayBinding::new(
                &config,
                &allocation,
                Path::Tcp,
                BindMode::Stream,
                destination,
                Instant::now(),
            )
            .map_err(AttemptError::Session)?;
            let mut driver = Driver::new(binding, stream);
            let early = drive_tcp_bind(&mut driver, addr, &seen).await?;
            // `Bound` comes after the last transmit of the bind was written:
            // nothing is left half-written, and every byte read past
            // `BindOk` is in `early`.
            let (_, stream) = driver.into_parts();
            Ok((stream, early))
        }
    })
    .await
    .map_err(|cause| refusal.error("opening the message channel through the relay", cause))?;
    Ok(opened)
}

/// Runs a TCP bind to the relay at `addr` until `Bound` (its early data
/// returned) or failure (a refusal is noted in `refusal`).
async fn drive_tcp_bind<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &mut Driver<RelayBinding, S>,
    addr: SocketAddr,
    refusal: &FirstRefusal,
) -> Result<Bytes, AttemptError> {
    loop {
        match driver.next_event().await {
            Next::Event(BindingEvent::Bound { early_data, .. }) => {
                driver.flush().await.map_err(AttemptError::Io)?;
                return Ok(early_data);
            }
            Next::Event(BindingEvent::Closed(reason)) => return Err(refusal.note(addr, reason)),
            Next::Event(_) => {}
            Next::PeerClosed => return Err(AttemptError::RelayClosed),
            Next::Io(e) => return Err(AttemptError::Io(e)),
        }
    }
}

/// Which path media may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTransport {
    /// UDP if it gets through within the probe time, else UDP-over-TCP.
    #[default]
    Auto,
    /// UDP only; fail if it is blocked.
    UdpOnly,
    /// UDP-over-TCP only.
    TcpOnly,
}

/// How the media path is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPolicy {
    /// Allowed transports.
    pub transport: MediaTransport,
    /// How long a UDP bind may go unanswered before UDP counts as blocked.
    pub udp_probe_timeout: Duration,
    /// Dialing policy for the TCP relay (UDP-over-TCP).
    pub tcp_dial: DialPolicy,
    /// Datagrams buffered each way before new ones are dropped.
    pub queue_len: usize,
}

impl Default for MediaPolicy {
    /// Auto, 2 s UDP probe (eight retransmissions of the bind), 256 queued.
    fn default() -> Self {
        Self {
            transport: MediaTransport::Auto,
            udp_probe_timeout: Duration::from_secs(2),
            tcp_dial: DialPolicy::default(),
            queue_len: 256,
        }
    }
}

/// Which path media took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPathKind {
    /// Native UDP through the UDP relay.
    Udp,
    /// Datagram frames on a TCP relay connection.
    UdpOverTcp,
}

/// An open media path: send and receive datagrams; a background task keeps
/// the binding alive. Dropping it closes the binding (a `Close` goes to the
/// relay).
#[derive(Debug)]
pub struct MediaPath {
    kind: MediaPathKind,
    fallback_reason: Option<String>,
    relay: SocketAddr,
    outgoing: mpsc::Sender<Bytes>,
    incoming: mpsc::Receiver<Bytes>,
    closed: watch::Receiver<Option<String>>,
}

impl MediaPath {
    /// UDP or UDP-over-TCP.
    #[must_use]
    pub fn kind(&self) -> MediaPathKind {
        self.kind
    }

    /// Why UDP was not used, when the path fell back to TCP.
    #[must_use]
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The relay endpoint in use.
    #[must_use]
    pub fn relay(&self) -> SocketAddr {
        self.relay
    }

    /// Queues a datagram (at most `MAX_DATAGRAM_PAYLOAD` bytes); waits while
    /// the queue is full.
    pub async fn send(&self, datagram: Bytes) -> Result<(), TunnelError> {
        self.outgoing
            .send(datagram)
            .await
            .map_err(|_| TunnelError::MediaClosed)
    }

    /// Queues a datagram unless the queue is full (media is better dropped
    /// than late). Returns whether it was queued.
    pub fn try_send(&self, datagram: Bytes) -> Result<bool, TunnelError> {
        match self.outgoing.try_send(datagram) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TunnelError::MediaClosed),
        }
    }

    /// The next datagram from the destination; `None` once the path closed.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.incoming.recv().await
    }

    /// Why the path closed, once it has.
    #[must_use]
    pub fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }
}

/// Opens the media path to `destination` under `policy`, over plain
/// sockets (UDP, else UDP-over-TCP to the allocation's TCP relays).
pub async fn open_media(
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
    policy: &MediaPolicy,
) -> Result<MediaPath, TunnelError> {
    open_media_via(
        config,
        &Connector::tcp(Vec::new()),
        allocation,
        destination,
        policy,
    )
    .await
}

/// Opens the media path to `destination` over `connector` under `policy`.
/// Over TCP as [`open_media`]; over TLS (direct or through an HTTP proxy)
/// media is UDP-over-TCP on its own connection to the TLS address whatever
/// `policy.transport` allows, except that [`MediaTransport::UdpOnly`] fails.
pub async fn open_media_via(
    config: &ClientConfig,
    connector: &Connector,
    allocation: &Allocation,
    destination: Address,
    policy: &MediaPolicy,
) -> Result<MediaPath, TunnelError> {
    if connector.kind() != ConnectionKind::Tcp {
        if policy.transport == MediaTransport::UdpOnly {
            return Err(TunnelError::Session {
                what: "opening the UDP media path",
                cause: SessionError::InvalidState(
                    "UDP-only media was requested, but the connection to the proxy is TLS (datagrams go as UDP-over-TCP there)",
                ),
            });
        }
        return open_udp_over_tcp(config, connector, allocation, destination, policy).await;
    }
    let udp_failure = match policy.transport {
        MediaTransport::TcpOnly => Some("UDP-over-TCP was requested".to_owned()),
        MediaTransport::Auto | MediaTransport::UdpOnly => {
            match open_udp(config, allocation, destination.clone(), policy).await {
                Ok(path) => return Ok(path),
                Err(e) if policy.transport == MediaTransport::UdpOnly => return Err(e),
                Err(e) => Some(e.to_string()),
            }
        }
    };
    let mut path = open_udp_over_tcp(config, connector, allocation, destination, policy).await?;
    path.fallback_reason = udp_failure;
    Ok(path)
}

/// Tries the allocation's UDP relays in order, staggered (each gets the full
/// probe time; the next starts a quarter second later), and keeps the first
/// that binds. When none answers, UDP counts as blocked.
async fn open_udp(
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
    policy: &MediaPolicy,
) -> Result<MediaPath, TunnelError> {
    const STAGGER: Duration = Duration::from_millis(250);
    let relays = allocation.udp_relays.clone();
    if relays.is_empty() {
        return Err(TunnelError::Session {
            what: "opening the UDP media path",
            cause: SessionError::InvalidState("the allocation lists no UDP relay"),
        });
    }
    let extra = u32::try_from(relays.len() - 1).unwrap_or(u32::MAX);
    let race_policy = DialPolicy {
        stagger: STAGGER,
        attempt_timeout: policy.udp_probe_timeout,
        overall_timeout: policy.udp_probe_timeout + STAGGER.saturating_mul(extra),
    };
    let (config, allocation) = (config.clone(), allocation.clone());
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    let raced = race(&relays, &race_policy, move |relay| {
        let (config, allocation, destination, seen) = (
            config.clone(),
            allocation.clone(),
            destination.clone(),
            seen.clone(),
        );
        async move { bind_udp(relay, &config, &allocation, destination, &seen).await }
    })
    .await;
    match raced {
        Ok((relay, driver)) => Ok(spawn_media(
            MediaDriver::Udp(driver),
            MediaPathKind::Udp,
            relay,
            policy.queue_len,
        )),
        // Nothing answered at all: a firewall dropping UDP.
        Err(e)
            if e.attempts
                .iter()
                .all(|(_, o)| !matches!(o, Outcome::Failed(_))) =>
        {
            Err(TunnelError::UdpBlocked(race_policy.overall_timeout))
        }
        Err(cause) => Err(refusal.error("binding the UDP media path", cause)),
    }
}

/// One UDP bind to `relay`, until `BindOk` or a refusal; unanswered
/// datagrams and ICMP errors just wait (the race's timeout ends it). Given
/// up on in flight, it leaves no binding behind ([`crate::cancelled_bind`]).
async fn bind_udp(
    relay: SocketAddr,
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
    refusal: &FirstRefusal,
) -> Result<DatagramDriver<RelayBinding>, AttemptError> {
    let socket = connected_udp(relay).await.map_err(AttemptError::Io)?;
    let binding = RelayBinding::new(
        config,
        allocation,
        Path::Udp,
        BindMode::Datagram,
        destination,
        Instant::now(),
    )
    .map_err(AttemptError::Session)?;
    // Dropped before the bind ends (the race moved on), this closes a
    // binding the node may have made meanwhile.
    let mut in_flight = InFlightUdpBind::new(DatagramDriver::new(binding, socket));
    loop {
        match in_flight.driver().next_event().await {
            Next::Event(BindingEvent::Bound { .. }) => return Ok(in_flight.finish()),
            Next::Event(BindingEvent::Closed(reason)) => {
                in_flight.finish();
                return Err(refusal.note(relay, reason));
            }
            // ICMP port unreachable and the like: keep waiting, as a
            // firewall that drops would make us.
            Next::Event(_) | Next::Io(_) | Next::PeerClosed => {}
        }
    }
}

async fn open_udp_over_tcp(
    config: &ClientConfig,
    connector: &Connector,
    allocation: &Allocation,
    destination: Address,
    policy: &MediaPolicy,
) -> Result<MediaPath, TunnelError> {
    let (config, allocation_c, connector_c) =
        (config.clone(), allocation.clone(), connector.clone());
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    let relays = connector.relay_candidates(allocation);
    let (relay, driver) = race(&relays, &policy.tcp_dial, move |addr| {
        let (config, allocation, connector, destination, seen) = (
            config.clone(),
            allocation_c.clone(),
            connector_c.clone(),
            destination.clone(),
            seen.clone(),
        );
        async move {
            let stream = connector
                .connect(addr)
                .await
                .map_err(|e| seen.note_connect(addr, e))?;
            let binding = RelayBinding::new(
                &config,
                &allocation,
                Path::Tcp,
                BindMode::Datagram,
                destination,
                Instant::now(),
            )
            .map_err(AttemptError::Session)?;
            let mut driver = Driver::new(binding, stream);
            drive_tcp_bind(&mut driver, addr, &seen).await?;
            Ok::<_, AttemptError>(driver)
        }
    })
    .await
    .map_err(|cause| refusal.error("opening the UDP-over-TCP media path", cause))?;
    Ok(spawn_media(
        MediaDriver::Tcp(driver),
        MediaPathKind::UdpOverTcp,
        relay,
        policy.queue_len,
    ))
}

/// A bound media binding on its transport.
enum MediaDriver {
    Udp(DatagramDriver<RelayBinding>),
    Tcp(Driver<RelayBinding, BoxedStream>),
}

impl MediaDriver {
    fn binding(&mut self) -> &mut RelayBinding {
        match self {
            Self::Udp(d) => d.machine_mut(),
            Self::Tcp(d) => d.machine_mut(),
        }
    }

    async fn next_event(&mut self) -> Next<BindingEvent> {
        match self {
            Self::Udp(d) => d.next_event().await,
            Self::Tcp(d) => d.next_event().await,
        }
    }

    /// Sends what the binding queued (its `Close`).
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Udp(d) => d.flush().await,
            Self::Tcp(d) => d.flush().await,
        }
    }
}

fn spawn_media(
    driver: MediaDriver,
    kind: MediaPathKind,
    relay: SocketAddr,
    queue_len: usize,
) -> MediaPath {
    let (out_tx, out_rx) = mpsc::channel(queue_len);
    let (in_tx, in_rx) = mpsc::channel(queue_len);
    let (closed_tx, closed_rx) = watch::channel(None);
    tokio::spawn(async move {
        let reason = drive_media(driver, out_rx, in_tx).await;
        let _ = closed_tx.send(Some(reason));
    });
    MediaPath {
        kind,
        fallback_reason: None,
        relay,
        outgoing: out_tx,
        incoming: in_rx,
        closed: closed_rx,
    }
}

/// Keeps a bound media binding going until it closes or the app drops the
/// path; returns why it ended.
async fn drive_media(
    mut driver: MediaDriver,
    mut outgoing: mpsc::Receiver<Bytes>,
    incoming: mpsc::Sender<Bytes>,
) -> String {
    loop {
        tokio::select! {
            next = driver.next_event() => match next {
                // A full queue means the app is not reading: drop, as UDP would.
                Next::Event(BindingEvent::Datagram(datagram)) => {
                    let _ = incoming.try_send(datagram);
                }
                Next::Event(BindingEvent::Closed(reason)) => return reason.to_string(),
                Next::Event(_) => {}
                Next::PeerClosed => return "the relay closed the connection".into(),
                // A datagram socket's errors are per datagram (ICMP): go on.
                Next::Io(_) if matches!(driver, MediaDriver::Udp(_)) => {}
                Next::Io(e) => return format!("the relay connection failed: {e}"),
            },
            to_send = outgoing.recv() => match to_send {
                Some(datagram) => {
                    if let Err(e) = driver.binding().send_datagram(Instant::now(), &datagram) {
                        tracing::debug!(error = %e, "media datagram not sent");
                    }
                }
                None => {
                    driver.binding().close(Instant::now());
                    let _ = driver.flush().await;
                    return "closed by the application".into();
                }
            },
        }
    }
}
