//! A proxy node on loopback ports with echo destinations behind it, and a
//! client configured for it. Shared by the proxy integration tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudproxy_proto::Machine;
use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_proto::{AppId, Timebase};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tunnel::allocate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

pub const APP: &str = "test-app";
pub const SECRET_HEX: &str = "6170702d7365637265742d666f722d7465737473";
pub const TICKET_KEY_HEX: &str = "7469636b65742d6b65792d666f722d74657374732d3332206279746573212121";

pub fn secret() -> Vec<u8> {
    (0..SECRET_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&SECRET_HEX[i..i + 2], 16).unwrap())
        .collect()
}

pub fn ticket_key() -> Vec<u8> {
    (0..TICKET_KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TICKET_KEY_HEX[i..i + 2], 16).unwrap())
        .collect()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Configuration text for a loopback node; `extra` is appended (limits…).
pub fn config_text(allow: &str, max_sessions: u32, extra: &str) -> String {
    format!(
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "{APP}"
max_sessions = {max_sessions}
secrets = ["{SECRET_HEX}"]

[[ticket_keys]]
key_id = 1
secret = "{TICKET_KEY_HEX}"

[allowlist]
allow = [{allow}]

{extra}
"#
    )
}

pub struct Rig {
    pub node: ProxyNode,
    pub client: ClientConfig,
}

impl Rig {
    pub async fn start(allow: &str, max_sessions: u32, extra: &str) -> Self {
        let config =
            ServerConfig::from_toml_str("test.toml", &config_text(allow, max_sessions, extra))
                .unwrap();
        let node = ProxyNode::start(&config).await.unwrap();
        Self {
            node,
            client: client_config(SECRET_HEX),
        }
    }

    /// Allows every loopback destination (the echo servers live there).
    pub async fn loopback() -> Self {
        Self::start(r#""127.0.0.1""#, 2000, "").await
    }

    pub fn allocation_addr(&self) -> SocketAddr {
        self.node.addrs().allocation_tcp[0]
    }

    /// A stream binding to `destination` over the TCP relay, bound.
    pub async fn bind_stream(
        &self,
        allocation: &Allocation,
        destination: SocketAddr,
    ) -> (TcpStream, RelayBinding) {
        bind_tcp_raw(
            self.node.addrs().tcp_relay,
            &self.client,
            allocation,
            BindMode::Stream,
            Address::Ip(destination),
        )
        .await
        .unwrap()
    }

    pub async fn allocate(&self) -> Allocation {
        allocate(
            &self.client,
            &[self.allocation_addr()],
            &DialPolicy::default(),
        )
        .await
        .unwrap()
        .1
    }
}

pub fn client_config(secret_hex: &str) -> ClientConfig {
    let secret: Vec<u8> = (0..secret_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).unwrap())
        .collect();
    let mut config = ClientConfig::new(
        AppId::new(APP).unwrap(),
        secret,
        Timebase::new(Instant::now(), unix_now()),
    );
    config.handshake_timeout = Duration::from_secs(5);
    config
}

/// A TCP server that echoes each connection until EOF, then closes.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP server that echoes each datagram back to its sender, prefixed with
/// `echo:`.
pub async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

/// Bounds a test step: a hang fails the test instead of stalling CI.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}

use cloudproxy_proto::client::{Allocator, AllocatorEvent, BindingEvent, RelayBinding};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, ErrorCode, Path, SessionError};
use tokio::net::TcpStream;

/// Bounds a wait for an end that the code under test owes well before it:
/// shorter than `within`, so a session that never ends fails the test soon.
pub async fn soon<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 10 s"))
}

/// Waits (bounded) until `done` holds. The short pause between looks only
/// spares the CPU during second-long waits; the condition is what is awaited.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    soon(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The refusal code inside a session error, if it is a refusal.
pub fn refusal(e: &SessionError) -> Option<ErrorCode> {
    match e {
        SessionError::Refused { code, .. } => Some(*code),
        _ => None,
    }
}

/// One allocation over TCP with the state machine, keeping its typed error.
pub async fn allocate_raw(
    addr: SocketAddr,
    config: &ClientConfig,
) -> Result<Allocation, SessionError> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut allocator = Allocator::new(config, Path::Tcp, [9; 16], Instant::now());
    let mut buf = vec![0u8; 4096];
    within("allocation", async {
        loop {
            while let Some(bytes) = allocator.poll_transmit() {
                stream.write_all(&bytes).await.unwrap();
            }
            match allocator.poll_event() {
                Some(AllocatorEvent::Allocated(a)) => return Ok(a),
                Some(AllocatorEvent::Failed(e)) => return Err(e),
                _ => {}
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the service closed without an answer");
            allocator.handle_input(Instant::now(), &buf[..n]);
        }
    })
    .await
}

/// One TCP bind with the state machine; on success the stream is bound.
pub async fn bind_tcp_raw(
    relay: SocketAddr,
    config: &ClientConfig,
    allocation: &Allocation,
    mode: BindMode,
    destination: Address,
) -> Result<(TcpStream, RelayBinding), SessionError> {
    let mut stream = TcpStream::connect(relay).await.unwrap();
    let mut binding = RelayBinding::new(
        config,
        allocation,
        Path::Tcp,
        mode,
        destination,
        Instant::now(),
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    within("tcp bind", async {
        loop {
            while let Some(bytes) = binding.poll_transmit() {
                stream.write_all(&bytes).await.unwrap();
            }
            match binding.poll_event() {
                Some(BindingEvent::Bound { .. }) => return Ok(()),
                Some(BindingEvent::Closed(e)) => return Err(e),
                _ => {}
            }
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return Err(SessionError::ClosedByPeer);
            }
            binding.handle_input(Instant::now(), &buf[..n]);
        }
    })
    .await?;
    Ok((stream, binding))
}

/// One UDP bind with the state machine.
pub async fn bind_udp_raw(
    relay: SocketAddr,
    config: &ClientConfig,
    allocation: &Allocation,
    destination: Address,
) -> Result<(UdpSocket, RelayBinding), SessionError> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(relay).await.unwrap();
    let mut binding = RelayBinding::new(
        config,
        allocation,
        Path::Udp,
        BindMode::Datagram,
        destination,
        Instant::now(),
    )
    .unwrap();
    let mut buf = vec![0u8; 2048];
    within("udp bind", async {
        loop {
            while let Some(bytes) = binding.poll_transmit() {
                socket.send(&bytes).await.unwrap();
            }
            match binding.poll_event() {
                Some(BindingEvent::Bound { .. }) => return Ok(()),
                Some(BindingEvent::Closed(e)) => return Err(e),
                _ => {}
            }
            let deadline = binding.poll_timeout().map(tokio::time::Instant::from_std).unwrap();
            tokio::select! {
                n = socket.recv(&mut buf) => binding.handle_input(Instant::now(), &buf[..n.unwrap()]),
                () = tokio::time::sleep_until(deadline) => binding.handle_timeout(Instant::now()),
            }
        }
    })
    .await?;
    Ok((socket, binding))
}

/// Log lines written while installed on this thread (a current-thread
/// test runtime runs the node's tasks here too).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures `info` and above on this thread until the guard drops.
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `what` into the relayed stream and reads the same bytes back.
pub async fn echo_back(stream: &mut TcpStream, what: &[u8]) {
    stream.write_all(what).await.unwrap();
    let mut back = vec![0u8; what.len()];
    within("echo", stream.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, what);
}

/// A SOCKS5 request: CMD, then an IPv4 address and port.
pub fn socks_request(cmd: u8, addr: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let mut r = vec![5, cmd, 0, 1];
    r.extend_from_slice(&v4.ip().octets());
    r.extend_from_slice(&v4.port().to_be_bytes());
    r
}

/// Sends `Ping` frames, never reading the `Pong`s, until a write fails (the
/// node closed the connection: the error is returned) or `cap` bytes went
/// out (`None`). Counts the bytes written in `written`.
pub fn ping_without_reading<W>(
    mut writer: W,
    cap: u64,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<Option<std::io::Error>>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::sync::atomic::Ordering::Relaxed;
    tokio::spawn(async move {
        let chunk: Vec<u8> = (0..1024u64)
            .flat_map(|i| cloudproxy_proto::frame::Frame::Ping(i).to_bytes())
            .collect();
        while written.load(Relaxed) < cap {
            if let Err(e) = writer.write_all(&chunk).await {
                return Some(e);
            }
            written.fetch_add(chunk.len() as u64, Relaxed);
        }
        None
    })
}

/// The most bytes the kernel may hold for one loopback TCP connection whose
/// receiver stopped reading, both ways, at the system's buffer maxima
/// (`tcp_rmem` and `tcp_wmem`): what a client that floods a node which
/// reads no more can still get written, whatever the node keeps itself.
pub fn kernel_buffers_bound() -> u64 {
    let max = |path: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(64 << 20)
    };
    // The node's receive and the client's send buffer (requests), the
    // node's send and the client's receive buffer (answers).
    2 * (max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem"))
}

/// What a node keeps for one datagram-mode connection at most, beside the
/// kernel's buffers, with room to spare: the driver's 64 KiB take-ahead,
/// the connection's 64 KiB queue, a read, TLS records.
pub const NODE_QUEUE_BOUND: u64 = 1 << 20;
