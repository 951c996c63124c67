//! A proxy node on loopback ports with echo destinations behind it, and a
//! client configured for it. Shared by the proxy integration tests.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_proto::{AppId, Timebase};
use cloudproxy_transport::client::dial::DialPolicy;
use cloudproxy_transport::client::tunnel::allocate;
use cloudproxy_transport::config::ServerConfig;
use cloudproxy_transport::server::ProxyNode;
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
                let mut buf = vec![0u8; 64 * 1024];
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
