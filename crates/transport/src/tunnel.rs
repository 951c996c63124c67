//! The client's way through a proxy: allocate, then open the message channel
//! (a TCP byte stream to the destination) and the media path (UDP datagrams,
//! or UDP-over-TCP when UDP is blocked).
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

use crate::dial::{DialError, DialPolicy, Outcome, race};
use crate::driver::{DatagramDriver, Driver, Next};
use crate::net::connected_udp;

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

/// The first refusal with a code among a race's attempts: a proxy that
/// answered and said no is reported as such ([`TunnelError::Refused`]), not
/// folded into "could not reach any of N address(es)". Shared by the
/// attempts of one race.
#[derive(Debug, Clone, Default)]
struct FirstRefusal(Arc<Mutex<Option<(SocketAddr, ErrorCode, String)>>>);

impl FirstRefusal {
    /// The attempt at `addr` ended with `reason`: remember it if it is a
    /// refusal, and give the attempt's error.
    fn note(&self, addr: SocketAddr, reason: SessionError) -> AttemptError {
        match reason {
            SessionError::Refused { code, message } => {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert((addr, code, message.clone()));
                AttemptError::Refused { code, message }
            }
            other => AttemptError::Session(other),
        }
    }

    /// The race failed: a refusal if there was one, else `Dial`.
    fn error(&self, what: &'static str, cause: DialError<AttemptError>) -> TunnelError {
        match self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some((proxy, code, message)) => TunnelError::Refused {
                what,
                proxy,
                code,
                message,
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
    let config = config.clone();
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    race(candidates, policy, move |addr| {
        let (config, seen) = (config.clone(), seen.clone());
        async move {
            let stream = TcpStream::connect(addr).await.map_err(AttemptError::Io)?;
            let _ = stream.set_nodelay(true);
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
    let (config, allocation) = (config.clone(), allocation.clone());
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    let (_, opened) = race(&allocation.tcp_relays.clone(), policy, move |addr| {
        let (config, allocation, destination, seen) = (
            config.clone(),
            allocation.clone(),
            destination.clone(),
            seen.clone(),
        );
        async move {
            let stream = TcpStream::connect(addr).await.map_err(AttemptError::Io)?;
            let _ = stream.set_nodelay(true);
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

/// Opens the media path to `destination` under `policy`.
pub async fn open_media(
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
    policy: &MediaPolicy,
) -> Result<MediaPath, TunnelError> {
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
    let mut path = open_udp_over_tcp(config, allocation, destination, policy).await?;
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
/// datagrams and ICMP errors just wait (the race's timeout ends it).
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
    let mut driver = DatagramDriver::new(binding, socket);
    loop {
        match driver.next_event().await {
            Next::Event(BindingEvent::Bound { .. }) => return Ok(driver),
            Next::Event(BindingEvent::Closed(reason)) => return Err(refusal.note(relay, reason)),
            // ICMP port unreachable and the like: keep waiting, as a
            // firewall that drops would make us.
            Next::Event(_) | Next::Io(_) | Next::PeerClosed => {}
        }
    }
}

async fn open_udp_over_tcp(
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
    policy: &MediaPolicy,
) -> Result<MediaPath, TunnelError> {
    let (config, allocation_c) = (config.clone(), allocation.clone());
    let refusal = FirstRefusal::default();
    let seen = refusal.clone();
    let (relay, driver) = race(&allocation.tcp_relays, &policy.tcp_dial, move |addr| {
        let (config, allocation, destination, seen) = (
            config.clone(),
            allocation_c.clone(),
            destination.clone(),
            seen.clone(),
        );
        async move {
            let stream = TcpStream::connect(addr).await.map_err(AttemptError::Io)?;
            let _ = stream.set_nodelay(true);
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
    Tcp(Driver<RelayBinding, TcpStream>),
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
