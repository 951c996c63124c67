//! UDP media load: a paced, batched sender (GSO through quinn-udp or
//! `sendmmsg`, or length-framed writes for UDP-over-TCP), a sink that
//! timestamps arrivals with the same clock, and the ways to reach the sink:
//! direct, socat, coturn (TURN ChannelData), cloudproxy's UDP relay and
//! UDP-over-TCP.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cloudproxy_proto::client::{Allocation, BindingEvent, ClientConfig, RelayBinding};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, Machine, Path};
use cloudproxy_transport::driver::{DatagramDriver, Driver, Next};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Payload bytes of every media datagram, as seen by the destination.
pub(crate) const PAYLOAD: usize = 200;

fn clock_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the sink counted for one run.
pub(crate) struct RunResult {
    pub(crate) received: u64,
    /// One-way latency of each datagram, nanoseconds (capped sample).
    pub(crate) latencies: Vec<u32>,
}

struct SinkShared {
    run: AtomicU32,
    stop: AtomicBool,
    done: Mutex<HashMap<u32, RunResult>>,
}

/// The destination: counts datagrams of the current run and their latency.
pub(crate) struct Sink {
    pub(crate) addr: SocketAddr,
    shared: Arc<SinkShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    pub(crate) fn start() -> io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        // Non-blocking from here on (quinn-udp sets it): the sink waits in
        // poll(2), never by spinning, so it leaves the CPU to the path it
        // measures.
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), 4 << 20);
        let addr = socket.local_addr()?;
        let shared = Arc::new(SinkShared {
            run: AtomicU32::new(0),
            stop: AtomicBool::new(false),
            done: Mutex::new(HashMap::new()),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::spawn(move || sink_loop(&socket, &state, &s));
        Ok(Self {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// Counts run `run` from now on.
    pub(crate) fn begin(&self, run: u32) {
        self.shared.run.store(run, Relaxed);
    }

    /// Stops counting after a drain time and returns what arrived.
    pub(crate) fn finish(&self, run: u32) -> RunResult {
        std::thread::sleep(Duration::from_millis(150));
        self.shared.run.store(0, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(r) = self.shared.done.lock().unwrap().remove(&run) {
                return r;
            }
            if Instant::now() > deadline {
                return RunResult {
                    received: 0,
                    latencies: Vec::new(),
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sink_loop(socket: &UdpSocket, state: &UdpSocketState, shared: &SinkShared) {
    const CAP: usize = 4_000_000;
    let batch = quinn_udp::BATCH_SIZE.min(32);
    let mut storage = vec![[0u8; 65536]; batch];
    let mut meta = vec![RecvMeta::default(); batch];
    let mut current = 0u32;
    let mut received = 0u64;
    let mut lats: Vec<u32> = Vec::new();
    while !shared.stop.load(Relaxed) {
        let want = shared.run.load(Relaxed);
        if want != current {
            if current != 0 {
                shared.done.lock().unwrap().insert(
                    current,
                    RunResult {
                        received,
                        latencies: std::mem::take(&mut lats),
                    },
                );
            }
            current = want;
            received = 0;
        }
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match state.recv(UdpSockRef::from(socket), &mut bufs, &mut meta) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(socket);
                continue;
            }
            Err(_) => continue,
        };
        let now = clock_ns();
        for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
            let stride = m.stride.max(1);
            for dgram in buf[..m.len].chunks(stride) {
                if dgram.len() < 24 || current == 0 {
                    continue;
                }
                let run = u32::from_le_bytes(dgram[0..4].try_into().unwrap());
                if run != current {
                    continue;
                }
                received += 1;
                if lats.len() < CAP {
                    let sent = u64::from_le_bytes(dgram[16..24].try_into().unwrap());
                    lats.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                }
            }
        }
    }
}

/// Blocks until `socket` has a datagram, or 20 ms pass so the caller sees
/// a new run or the stop flag.
fn wait_readable(socket: &UdpSocket) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(socket, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    // An interrupted or failed wait only means one more turn of the loop.
    let _ = poll(&mut fds, Some(&timeout));
}

/// How datagrams leave the load generator.
pub(crate) enum Wire {
    /// UDP to `dest`, in bursts as [`Batching`] says.
    Udp {
        socket: UdpSocket,
        state: UdpSocketState,
        dest: SocketAddr,
    },
    /// Frames on a TCP stream.
    Tcp(TcpStream),
    /// Frames on a TLS connection: rustls encrypts, the blocking socket
    /// writes (nothing is read back; the sink hears UDP).
    Tls {
        conn: Box<rustls::ClientConnection>,
        stream: TcpStream,
    },
}

/// How the sender hands a burst of datagrams to the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batching {
    /// One GSO `sendmsg` per burst: the receiver's GRO gets the burst as
    /// one buffer, so a relay can read and forward it in one go. The
    /// highest rate this sender reaches.
    Gso,
    /// One `sendmmsg` per burst, each datagram its own message: every
    /// datagram crosses the stack alone, as from many independent clients.
    Separate,
}

/// A way to the sink: the wire and the bytes each datagram carries before
/// its payload (relay header, TURN channel header, frame header).
pub(crate) struct SendPath {
    pub(crate) wire: Wire,
    pub(crate) prefix: Vec<u8>,
}

impl SendPath {
    pub(crate) fn udp(dest: SocketAddr, prefix: Vec<u8>) -> io::Result<Self> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        Self::udp_from(socket, dest, prefix)
    }

    fn udp_from(socket: UdpSocket, dest: SocketAddr, prefix: Vec<u8>) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), 4 << 20);
        // quinn-udp made it non-blocking; a real sender waits for its own
        // socket buffer instead of dropping, so any loss is the path's.
        socket.set_nonblocking(false)?;
        Ok(Self {
            wire: Wire::Udp {
                socket,
                state,
                dest,
            },
            prefix,
        })
    }

    /// Whether datagrams travel as frames on a TCP stream.
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self.wire, Wire::Tcp(_) | Wire::Tls { .. })
    }

    /// Sends run `run` at `rate` datagrams/s for `secs`; returns how many
    /// were sent.
    pub(crate) fn send_run(
        &mut self,
        run: u32,
        rate: f64,
        secs: f64,
        batching: Batching,
    ) -> io::Result<u64> {
        let seg = self.prefix.len() + PAYLOAD;
        let max_batch = match &self.wire {
            Wire::Udp { state, .. } if batching == Batching::Gso => {
                state.max_gso_segments().clamp(1, 64)
            }
            _ => 64,
        };
        let mut buf = vec![0u8; seg * max_batch];
        for chunk in buf.chunks_mut(seg) {
            chunk[..self.prefix.len()].copy_from_slice(&self.prefix);
            chunk[self.prefix.len()..self.prefix.len() + 4].copy_from_slice(&run.to_le_bytes());
        }
        let start = Instant::now();
        let end = Duration::from_secs_f64(secs);
        let mut sent = 0u64;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= end {
                break;
            }
            let due = ((rate * elapsed.as_secs_f64()) as u64).saturating_sub(sent);
            if due == 0 {
                std::thread::sleep(Duration::from_micros(10));
                continue;
            }
            let k = (due as usize).min(max_batch);
            let now = clock_ns();
            for (i, chunk) in buf.chunks_mut(seg).take(k).enumerate() {
                let p = &mut chunk[self.prefix.len()..];
                p[8..16].copy_from_slice(&(sent + i as u64).to_le_bytes());
                p[16..24].copy_from_slice(&now.to_le_bytes());
            }
            let contents = &buf[..k * seg];
            match &mut self.wire {
                Wire::Udp { socket, dest, .. } if batching == Batching::Separate => {
                    send_separately(socket, *dest, contents, seg)?;
                }
                Wire::Udp {
                    socket,
                    state,
                    dest,
                } => {
                    let transmit = Transmit {
                        destination: *dest,
                        ecn: None,
                        contents,
                        segment_size: (k > 1).then_some(seg),
                        src_ip: None,
                    };
                    match state.try_send(UdpSockRef::from(&*socket), &transmit) {
                        Ok(()) => {}
                        // An ICMP error from an earlier datagram: these
                        // are lost, as on a real sender.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                        Err(e) => return Err(e),
                    }
                }
                Wire::Tcp(stream) => stream.write_all(contents)?,
                Wire::Tls { conn, stream } => {
                    conn.writer().write_all(contents)?;
                    while conn.wants_write() {
                        conn.write_tls(stream)?;
                    }
                }
            }
            sent += k as u64;
        }
        Ok(sent)
    }
}

/// Sends `contents` as `seg`-byte datagrams, one `sendmmsg` message each.
fn send_separately(
    socket: &UdpSocket,
    dest: SocketAddr,
    contents: &[u8],
    seg: usize,
) -> io::Result<()> {
    use rustix::net::addr::SocketAddrArg as _;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};
    let dest = dest.as_any();
    let iovs: Vec<[IoSlice<'_>; 1]> = contents.chunks(seg).map(|c| [IoSlice::new(c)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = iovs
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut messages: Vec<MMsgHdr<'_>> = iovs
        .iter()
        .zip(controls.iter_mut())
        .map(|(iov, control)| MMsgHdr::new_with_addr(&dest, iov, control))
        .collect();
    let mut done = 0;
    while done < messages.len() {
        match sendmmsg(socket, &mut messages[done..], SendFlags::empty()) {
            Ok(n) => done += n.max(1),
            // An ICMP error from an earlier datagram: the rest of this
            // burst is lost, as on a real sender (and as with GSO).
            Err(rustix::io::Errno::CONNREFUSED) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bound UDP socket to cloudproxy's UDP relay; returns the socket (connected to the relay) and the
/// binding's 16-byte data header.
pub(crate) async fn cloudproxy_bind_udp(
    config: &ClientConfig,
    allocation: &Allocation,
    relay_index: usize,
    to: SocketAddr,
) -> io::Result<(tokio::net::UdpSocket, SocketAddr, Vec<u8>)> {
    let relays = &allocation.udp_relays;
    let relay = relays[relay_index % relays.len()];
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.connect(relay).await?;
    let binding = RelayBinding::new(
        config,
        allocation,
        Path::Udp,
        BindMode::Datagram,
        Address::Ip(to),
        std::time::Instant::now(),
    )
    .map_err(io::Error::other)?;
    let mut driver = DatagramDriver::new(binding, socket);
    tokio::time::timeout(Duration::from_secs(10), bound(driver.next_event()))
        .await
        .map_err(|_| io::Error::other("UDP bind timed out"))??;
    let (binding, socket) = driver.into_parts();
    let header = binding
        .udp_header()
        .ok_or_else(|| io::Error::other("no UDP header after BindOk"))?
        .to_array()
        .to_vec();
    Ok((socket, relay, header))
}

/// Waits for `BindOk`: the first event of a bind is `Bound` or its end.
async fn bound(next: impl Future<Output = Next<BindingEvent>>) -> io::Result<()> {
    match next.await {
        Next::Event(BindingEvent::Bound { .. }) => Ok(()),
        Next::Event(BindingEvent::Closed(e)) => Err(io::Error::other(e.to_string())),
        Next::Event(other) => Err(io::Error::other(format!(
            "unexpected {other:?} before BindOk"
        ))),
        Next::PeerClosed => Err(io::Error::other("relay closed during bind")),
        Next::Io(e) => Err(e),
    }
}

/// The cloudproxy UDP relay as a send path.
pub(crate) async fn cloudproxy_udp_path(
    config: &ClientConfig,
    allocation: &Allocation,
    to: SocketAddr,
) -> io::Result<SendPath> {
    let (socket, relay, header) = cloudproxy_bind_udp(config, allocation, 0, to).await?;
    SendPath::udp_from(socket.into_std()?, relay, header)
}

/// Binds `stream` in datagram mode to `to` and returns the constant frame
/// header of a `PAYLOAD`-byte datagram (the sender writes it before each
/// payload itself) with the stream, every byte of the bind written.
async fn bind_datagram_mode<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    config: &ClientConfig,
    allocation: &Allocation,
    to: SocketAddr,
    stream: S,
    over: &str,
) -> io::Result<(Vec<u8>, S)> {
    let binding = RelayBinding::new(
        config,
        allocation,
        Path::Tcp,
        BindMode::Datagram,
        Address::Ip(to),
        std::time::Instant::now(),
    )
    .map_err(io::Error::other)?;
    let mut driver = Driver::new(binding, stream);
    let work = async {
        bound(driver.next_event()).await?;
        driver.flush().await
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| io::Error::other(format!("{over} datagram bind timed out")))??;
    let (mut binding, stream) = driver.into_parts();
    binding
        .send_datagram(std::time::Instant::now(), &[0u8; PAYLOAD])
        .map_err(io::Error::other)?;
    let frame = binding
        .poll_transmit()
        .ok_or_else(|| io::Error::other("no frame for a datagram"))?;
    if frame.len() <= PAYLOAD || frame[frame.len() - PAYLOAD..].iter().any(|b| *b != 0) {
        return Err(io::Error::other("unexpected datagram frame layout"));
    }
    let prefix = frame[..frame.len() - PAYLOAD].to_vec();
    Ok((prefix, stream))
}

/// cloudproxy's UDP-over-TCP (a TCP connection in datagram mode) as a send
/// path: the frame header of a `PAYLOAD`-byte datagram is constant, so the
/// sender writes it before each payload itself.
pub(crate) async fn cloudproxy_tcp_path(
    config: &ClientConfig,
    allocation: &Allocation,
    to: SocketAddr,
) -> io::Result<SendPath> {
    let relay = allocation.tcp_relays[0];
    let stream = tokio::net::TcpStream::connect(relay).await?;
    stream.set_nodelay(true)?;
    let (prefix, stream) = bind_datagram_mode(config, allocation, to, stream, "TCP").await?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(SendPath {
        wire: Wire::Tcp(stream),
        prefix,
    })
}

/// cloudproxy's UDP-over-TLS: [`cloudproxy_tcp_path`] on a TLS connection
/// to the node's TLS port (`at`), the client pinned as the TLS rows'.
pub(crate) async fn cloudproxy_tls_path(
    config: &ClientConfig,
    allocation: &Allocation,
    to: SocketAddr,
    at: SocketAddr,
    client: &cloudproxy_transport::tls::TlsClient,
) -> io::Result<SendPath> {
    let stream = crate::tls::handshake(client, at).await?;
    let (prefix, stream) = bind_datagram_mode(config, allocation, to, stream, "TLS").await?;
    let (tcp, conn) = stream.into_inner();
    let stream = tcp.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(SendPath {
        wire: Wire::Tls {
            conn: Box::new(conn),
            stream,
        },
        prefix,
    })
}

/// coturn with `--no-auth`: Allocate, ChannelBind 0x4000 to `peer`, then
/// ChannelData (4-byte header) per datagram.
pub(crate) fn turn_path(server: SocketAddr, peer: SocketAddr) -> io::Result<SendPath> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    // Allocate, REQUESTED-TRANSPORT = UDP.
    stun_transaction(
        &socket,
        server,
        0x0003,
        &[(0x0019, vec![17, 0, 0, 0])],
        0x0103,
    )?;
    let SocketAddr::V4(p) = peer else {
        return Err(io::Error::other("IPv4 peer only"));
    };
    let mut xpeer = vec![0, 1];
    xpeer.extend_from_slice(&(p.port() ^ 0x2112).to_be_bytes());
    let ip = u32::from(*p.ip()) ^ 0x2112_A442;
    xpeer.extend_from_slice(&ip.to_be_bytes());
    stun_transaction(
        &socket,
        server,
        0x0009,
        &[(0x000C, vec![0x40, 0, 0, 0]), (0x0012, xpeer)],
        0x0109,
    )?;
    let len = u16::try_from(PAYLOAD).unwrap_or(0).to_be_bytes();
    SendPath::udp_from(socket, server, vec![0x40, 0x00, len[0], len[1]])
}

fn stun_transaction(
    socket: &UdpSocket,
    server: SocketAddr,
    method: u16,
    attrs: &[(u16, Vec<u8>)],
    success: u16,
) -> io::Result<()> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&method.to_be_bytes());
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    let mut txid = [0u8; 12];
    getrandom::fill(&mut txid).map_err(|e| io::Error::other(e.to_string()))?;
    msg.extend_from_slice(&txid);
    msg.extend_from_slice(&body);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        socket.send_to(&msg, server)?;
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if n >= 20 && buf[8..20] == txid {
            let kind = u16::from_be_bytes([buf[0], buf[1]]);
            return if kind == success {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "TURN method {method:#06x} answered {kind:#06x}"
                )))
            };
        }
    }
    Err(io::Error::other(format!(
        "TURN method {method:#06x}: no answer from {server}"
    )))
}

/// Percentile (0..=100) of latencies in nanoseconds, as microseconds.
pub(crate) fn percentile_us(lats: &mut [u32], pct: f64) -> f64 {
    if lats.is_empty() {
        return f64::NAN;
    }
    lats.sort_unstable();
    let i = ((lats.len() as f64 - 1.0) * pct / 100.0).round() as usize;
    f64::from(lats[i]) / 1000.0
}
