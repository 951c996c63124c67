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
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use crate::dial::{DialError, DialPolicy, Outcome, race};
use crate::net::{connected_udp, sleep_until_opt, write_all};

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
        cause: DialError,
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
    /// refusal, and give the attempt's line.
    fn note(&self, addr: SocketAddr, reason: SessionError) -> AttemptError {
        match reason {
            SessionError::Refused { code, message } => {
                let line = attempt_error(format!("refused: {}", refusal_text(code, &message)));
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert((addr, code, message));
                line
            }
            other => attempt_error(other),
        }
    }

    /// The race failed: a refusal if there was one, else `Dial`.
    fn error(&self, what: &'static str, cause: DialError) -> TunnelError {
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

/// An error of one attempt, shown in a [`DialError`] line.
#[derive(Debug)]
struct AttemptError(String);

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn attempt_error(e: impl std::fmt::Display) -> AttemptError {
    AttemptError(e.to_string())
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
            let mut stream = TcpStream::connect(addr).await.map_err(attempt_error)?;
            let _ = stream.set_nodelay(true);
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).map_err(attempt_error)?;
            let mut allocator = Allocator::new(&config, Path::Tcp, nonce, Instant::now());
            let result = drive_allocator(&mut stream, &mut allocator, addr, &seen).await;
            let _ = stream.shutdown().await;
            result
        }
    })
    .await
    .map_err(|cause| refusal.error("allocating a proxy session", cause))
}

async fn drive_allocator(
    stream: &mut TcpStream,
    allocator: &mut Allocator,
    addr: SocketAddr,
    refusal: &FirstRefusal,
) -> Result<Allocation, AttemptError> {
    let mut buf = [0u8; 4096];
    loop {
        while let Some(bytes) = allocator.poll_transmit() {
            stream.write_all(&bytes).await.map_err(attempt_error)?;
        }
        match allocator.poll_event() {
            Some(AllocatorEvent::Allocated(allocation)) => return Ok(allocation),
            Some(AllocatorEvent::Failed(reason)) => return Err(refusal.note(addr, reason)),
            _ => {}
        }
        let deadline = allocator.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            readable = stream.readable() => {
                readable.map_err(attempt_error)?;
                match stream.try_read(&mut buf) {
                    Ok(0) => return Err(attempt_error("the service closed the connection")),
                    Ok(n) => allocator.handle_input(Instant::now(), &buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(attempt_error(e)),
                }
            }
            () = sleep_until_opt(deadline) => allocator.handle_timeout(Instant::now()),
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
            let stream = TcpStream::connect(addr).await.map_err(attempt_error)?;
            let _ = stream.set_nodelay(true);
            let mut binding = RelayBinding::new(
                &config,
                &allocation,
                Path::Tcp,
                BindMode::Stream,
                destination,
                Instant::now(),
            )
            .map_err(attempt_error)?;
            match drive_tcp_bind(&stream, &mut binding, addr, &seen).await? {
                BindingEvent::Bound { early_data, .. } => Ok((stream, early_data)),
                other => Err(attempt_error(format!("unexpected {other:?}"))),
            }
        }
    })
    .await
    .map_err(|cause| refusal.error("opening the message channel through the relay", cause))?;
    Ok(opened)
}

/// Runs a TCP bind to the relay at `addr` until `Bound` (returned) or
/// failure (a refusal is noted in `refusal`).
async fn drive_tcp_bind(
    stream: &TcpStream,
    binding: &mut RelayBinding,
    addr: SocketAddr,
    refusal: &FirstRefusal,
) -> Result<BindingEvent, AttemptError> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(bytes) = binding.poll_transmit() {
            write_all(stream, &bytes).await.map_err(attempt_error)?;
        }
        match binding.poll_event() {
            Some(event @ BindingEvent::Bound { .. }) => return Ok(event),
            Some(BindingEvent::Closed(reason)) => return Err(refusal.note(addr, reason)),
            _ => {}
        }
        let deadline = binding.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            readable = stream.readable() => {
                readable.map_err(attempt_error)?;
                match stream.try_read(&mut buf) {
                    Ok(0) => return Err(attempt_error("the relay closed the connection")),
                    Ok(n) => binding.handle_input(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(attempt_error(e)),
                }
            }
            () = sleep_until_opt(deadline) => binding.handle_timeout(Instant::now()),
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
        Ok((relay, (socket, binding))) => Ok(spawn_driver(
            Driver::Udp(socket),
            binding,
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
) -> Result<(UdpSocket, RelayBinding), AttemptError> {
    let socket = connected_udp(relay).await.map_err(attempt_error)?;
    let mut binding = RelayBinding::new(
        config,
        allocation,
        Path::Udp,
        BindMode::Datagram,
        destination,
        Instant::now(),
    )
    .map_err(attempt_error)?;
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(bytes) = binding.poll_transmit() {
            let _ = socket.send(&bytes).await;
        }
        match binding.poll_event() {
            Some(BindingEvent::Bound { .. }) => return Ok((socket, binding)),
            Some(BindingEvent::Closed(reason)) => return Err(refusal.note(relay, reason)),
            _ => {}
        }
        let deadline = binding.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            received = socket.recv(&mut buf) => {
                // ICMP port unreachable and the like surface as errors: keep
                // waiting, as a firewall that drops would make us.
                if let Ok(n) = received {
                    binding.handle_input(Instant::now(), Bytes::copy_from_slice(&buf[..n]));
                }
            }
            () = sleep_until_opt(deadline) => binding.handle_timeout(Instant::now()),
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
    let (relay, (stream, binding)) = race(&allocation.tcp_relays, &policy.tcp_dial, move |addr| {
        let (config, allocation, destination, seen) = (
            config.clone(),
            allocation_c.clone(),
            destination.clone(),
            seen.clone(),
        );
        async move {
            let stream = TcpStream::connect(addr).await.map_err(attempt_error)?;
            let _ = stream.set_nodelay(true);
            let mut binding = RelayBinding::new(
                &config,
                &allocation,
                Path::Tcp,
                BindMode::Datagram,
                destination,
                Instant::now(),
            )
            .map_err(attempt_error)?;
            drive_tcp_bind(&stream, &mut binding, addr, &seen).await?;
            Ok::<_, AttemptError>((stream, binding))
        }
    })
    .await
    .map_err(|cause| refusal.error("opening the UDP-over-TCP media path", cause))?;
    Ok(spawn_driver(
        Driver::Tcp(stream),
        binding,
        MediaPathKind::UdpOverTcp,
        relay,
        policy.queue_len,
    ))
}

enum Driver {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

fn spawn_driver(
    driver: Driver,
    binding: RelayBinding,
    kind: MediaPathKind,
    relay: SocketAddr,
    queue_len: usize,
) -> MediaPath {
    let (out_tx, out_rx) = mpsc::channel(queue_len);
    let (in_tx, in_rx) = mpsc::channel(queue_len);
    let (closed_tx, closed_rx) = watch::channel(None);
    tokio::spawn(async move {
        let reason = drive_media(driver, binding, out_rx, in_tx).await;
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
    driver: Driver,
    mut binding: RelayBinding,
    mut outgoing: mpsc::Receiver<Bytes>,
    incoming: mpsc::Sender<Bytes>,
) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(bytes) = binding.poll_transmit() {
            let sent = match &driver {
                Driver::Udp(socket) => socket.send(&bytes).await.map(|_| ()),
                Driver::Tcp(stream) => write_all(stream, &bytes).await,
            };
            if let Err(e) = sent {
                if matches!(driver, Driver::Tcp(_)) {
                    return format!("writing to the relay failed: {e}");
                }
            }
        }
        while let Some(event) = binding.poll_event() {
            match event {
                // A full queue means the app is not reading: drop, as UDP would.
                BindingEvent::Datagram(datagram) => {
                    let _ = incoming.try_send(datagram);
                }
                BindingEvent::Closed(reason) => return reason.to_string(),
                _ => {}
            }
        }
        let deadline = binding.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            to_send = outgoing.recv() => match to_send {
                Some(datagram) => {
                    if let Err(e) = binding.send_datagram(Instant::now(), &datagram) {
                        tracing::debug!(error = %e, "media datagram not sent");
                    }
                }
                None => {
                    binding.close(Instant::now());
                    while let Some(bytes) = binding.poll_transmit() {
                        let _ = match &driver {
                            Driver::Udp(socket) => socket.send(&bytes).await.map(|_| ()),
                            Driver::Tcp(stream) => write_all(stream, &bytes).await,
                        };
                    }
                    return "closed by the application".into();
                }
            },
            received = read_driver(&driver, &mut buf) => match received {
                Ok(Some(n)) => binding.handle_input(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
                Ok(None) => return "the relay closed the connection".into(),
                Err(e) => {
                    if matches!(driver, Driver::Tcp(_)) {
                        return format!("reading from the relay failed: {e}");
                    }
                }
            },
            () = sleep_until_opt(deadline) => binding.handle_timeout(Instant::now()),
        }
    }
}

/// One read: a datagram, or a chunk of the TCP stream; `None` at EOF.
async fn read_driver(driver: &Driver, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match driver {
        Driver::Udp(socket) => socket.recv(buf).await.map(Some),
        Driver::Tcp(stream) => loop {
            stream.readable().await?;
            match stream.try_read(buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        },
    }
}
