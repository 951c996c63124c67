//! TCP load: helper servers (sink, echo, HTTP), the throughput blaster, the
//! new-session loop and the idle-session holder.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_proto::client::{Allocation, BindingEvent, ClientConfig, RelayBinding};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, Machine, Path};
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::driver::{Driver, Next};
use cloudproxy_transport::tunnel::open_stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a load client reaches the destination.
#[derive(Clone)]
pub(crate) enum Connector {
    /// A plain TCP connect (direct, or a port-forwarding relay).
    Plain(SocketAddr),
    /// SOCKS5 CONNECT without authentication.
    Socks5 { proxy: SocketAddr, to: SocketAddr },
    /// cloudproxy's native TCP relay (stream bind with a ticket).
    Native {
        config: Arc<ClientConfig>,
        allocation: Arc<Allocation>,
        to: SocketAddr,
    },
}

impl Connector {
    pub(crate) async fn connect(&self) -> io::Result<TcpStream> {
        let stream = match self {
            Self::Plain(addr) => TcpStream::connect(addr).await?,
            Self::Socks5 { proxy, to } => socks5_connect(*proxy, *to).await?,
            Self::Native {
                config,
                allocation,
                to,
            } => {
                let (stream, _early) =
                    open_stream(config, allocation, Address::Ip(*to), &DialPolicy::default())
                        .await
                        .map_err(io::Error::other)?;
                stream
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens a session, sends one byte and reads its echo: the unit of the
    /// session-rate figure. The native relay pipelines the byte behind its
    /// `Bind` (the relay forwards bytes that follow a `Bind` once it accepts
    /// it, `docs/protocol.md` §7.1), so it costs the client one write and one
    /// round trip, like a plain connect through haproxy; SOCKS5 keeps its
    /// greeting and CONNECT round trips, as curl does.
    pub(crate) async fn echo_one_byte(&self) -> io::Result<TcpStream> {
        let (mut stream, echoed) = match self {
            Self::Native {
                config,
                allocation,
                to,
            } => native_pipelined(config, allocation, *to, b"x").await?,
            _ => {
                let mut s = self.connect().await?;
                s.write_all(b"x").await?;
                (s, Bytes::new())
            }
        };
        if echoed.is_empty() {
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await?;
        }
        Ok(stream)
    }
}

/// A stream bind to `to` on the allocation's first TCP relay with `first`
/// sent in the same write as the `Bind`; returns the stream and the
/// destination's bytes that arrived with `BindOk`.
async fn native_pipelined(
    config: &ClientConfig,
    allocation: &Allocation,
    to: SocketAddr,
    first: &[u8],
) -> io::Result<(TcpStream, Bytes)> {
    let relay = *allocation
        .tcp_relays
        .first()
        .ok_or_else(|| io::Error::other("the allocation lists no TCP relay"))?;
    let mut stream = TcpStream::connect(relay).await?;
    stream.set_nodelay(true)?;
    let mut binding = RelayBinding::new(
        config,
        allocation,
        Path::Tcp,
        BindMode::Stream,
        Address::Ip(to),
        std::time::Instant::now(),
    )
    .map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(256);
    while let Some(bytes) = binding.poll_transmit() {
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(first);
    stream.write_all(&out).await?;
    let mut driver = Driver::new(binding, stream);
    loop {
        match driver.next_event().await {
            Next::Event(BindingEvent::Bound { early_data, .. }) => {
                driver.flush().await?;
                let (_, stream) = driver.into_parts();
                return Ok((stream, early_data));
            }
            Next::Event(BindingEvent::Closed(reason)) => return Err(io::Error::other(reason)),
            Next::Event(_) => {}
            Next::PeerClosed => return Err(io::Error::other("the relay closed before BindOk")),
            Next::Io(e) => return Err(e),
        }
    }
}

async fn socks5_connect(proxy: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await?;
    if choice != [5, 0] {
        return Err(io::Error::other(format!(
            "SOCKS5 method refused: {choice:?}"
        )));
    }
    let SocketAddr::V4(v4) = to else {
        return Err(io::Error::other("IPv4 only"));
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(io::Error::other(format!(
            "SOCKS5 CONNECT refused: {}",
            head[1]
        )));
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        _ => return Err(io::Error::other("unexpected SOCKS5 address type")),
    };
    let mut skip = [0u8; 18];
    s.read_exact(&mut skip[..rest]).await?;
    Ok(s)
}

/// Helper servers in their own process: a sink (read and discard), an echo,
/// and an HTTP server that answers `GET /N` with N zero bytes.
pub(crate) async fn serve_helpers(sink: u16, echo: u16, http: u16, once: u16) -> io::Result<()> {
    let bind = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let sink = TcpListener::bind(bind(sink)).await?;
    let echo = TcpListener::bind(bind(echo)).await?;
    let http = TcpListener::bind(bind(http)).await?;
    let once = TcpListener::bind(bind(once)).await?;
    // Echo one read, then reset: the session-rate loop then leaves no
    // TIME_WAIT on any relay's upstream side (which would exhaust the
    // ephemeral ports within seconds at 10k sessions/s).
    tokio::spawn(accept_loop(once, |mut s| async move {
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf).await {
            if n > 0 && s.write_all(&buf[..n]).await.is_ok() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
    }));
    tokio::spawn(accept_loop(sink, |mut s| async move {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }));
    tokio::spawn(accept_loop(echo, |mut s| async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }));
    accept_loop(http, |s| async move {
        let _ = http_one(s).await;
    })
    .await;
    Ok(())
}

async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handle(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn http_one(mut s: TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let len: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.trim_start_matches('/').parse().ok())
        .unwrap_or(0);
    s.write_all(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let chunk = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await
}

/// `streams` connections write as fast as they can for `secs`, then close;
/// the figure is bytes delivered (every stream read to the sink's EOF) over
/// the time from the first write to the last EOF, in Gbit/s.
pub(crate) async fn blast(connector: &Connector, streams: usize, secs: f64) -> Result<f64, String> {
    let mut conns = Vec::new();
    for _ in 0..streams {
        conns.push(
            connector
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    blast_streams(conns, secs).await.map(|b| b.gbit_per_s())
}

/// [`blast`] over streams already open (plain TCP or TLS).
pub(crate) async fn blast_streams<S>(conns: Vec<S>, secs: f64) -> Result<Blasted, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for mut s in conns {
        tasks.push(tokio::spawn(async move {
            let buf = vec![0x5au8; 256 * 1024];
            let mut sent = 0u64;
            while Instant::now() < deadline {
                s.write_all(&buf).await?;
                sent += buf.len() as u64;
            }
            s.shutdown().await?;
            let mut rest = [0u8; 64];
            // The sink closes after reading our EOF: every byte is delivered.
            tokio::time::timeout(Duration::from_secs(30), s.read(&mut rest))
                .await
                .map_err(|_| io::Error::other("no EOF from the sink"))??;
            Ok::<u64, io::Error>(sent)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("stream: {e}"))?;
    }
    Ok(Blasted {
        bytes: total,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// What [`blast_streams`] moved, every byte delivered.
pub(crate) struct Blasted {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

impl Blasted {
    pub(crate) fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
}

/// Sessions per second: `workers` loops each connect, send one byte, read
/// the echo, and close with a reset (no TIME_WAIT pile-up), for `secs`.
pub(crate) async fn session_rate(
    connector: &Connector,
    workers: usize,
    secs: f64,
) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (connector, done, failed) = (connector.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let one = async {
                    let s = connector.echo_one_byte().await?;
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
                    Ok::<(), io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), one).await {
                    Ok(Ok(())) => done.fetch_add(1, Relaxed),
                    _ => failed.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ok, bad) = (done.load(Relaxed), failed.load(Relaxed));
    if bad * 100 > ok {
        return Err(format!("{bad} of {} sessions failed", ok + bad));
    }
    Ok(ok as f64 / elapsed)
}

/// Opens `n` sessions (each echoes one byte) and keeps them open; returns
/// them and how long opening took.
pub(crate) async fn open_idle(connector: &Connector, n: usize) -> Result<Vec<TcpStream>, String> {
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (connector, sem) = (connector.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let one = connector.echo_one_byte();
            tokio::time::timeout(Duration::from_secs(10), one)
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// Closes sessions with a reset so nothing lingers for the next contender.
pub(crate) fn close_reset(streams: Vec<TcpStream>) {
    for s in streams {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    }
}
