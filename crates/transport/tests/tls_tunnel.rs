//! End to end over TLS against a real node: a TLS terminator in the test
//! (what the node's own TLS listener does, built elsewhere) routes each
//! connection by its first frame to the node's plain allocation or relay
//! port, and allocate + message channel + UDP-over-TCP media all run over
//! TLS connections to its one address.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cloudproxy_proto::client::ClientConfig;
use cloudproxy_proto::frame::{FrameHeader, FrameType, HEADER_LEN, MAX_PAYLOAD};
use cloudproxy_proto::{Address, AppId, Timebase};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;
use cloudproxy_transport::connector::Connector;
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tls::{Fingerprint, TlsClient, TlsTrust};
use cloudproxy_transport::tunnel::{
    MediaPathKind, MediaPolicy, allocate_via, open_media_via, open_stream_via,
};
use support::Leaf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const SECRET_HEX: &str = "6170702d7365637265742d666f722d7465737473";
const BOUND: Duration = Duration::from_secs(10);

fn secret() -> Vec<u8> {
    (0..SECRET_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&SECRET_HEX[i..i + 2], 16).unwrap())
        .collect()
}

async fn node() -> ProxyNode {
    let text = format!(
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "test-app"
max_sessions = 10
secrets = ["{SECRET_HEX}"]

[[ticket_keys]]
key_id = 1
secret = "7469636b65742d6b65792d666f722d74657374732d3332206279746573212121"

[allowlist]
allow = ["127.0.0.1"]
"#
    );
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    ProxyNode::start(&config).await.unwrap()
}

/// The one TLS port: reads the first frame's header and forwards the
/// connection to the node's allocation service or its relay.
async fn tls_front(leaf: &Leaf, allocation: SocketAddr, relay: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = leaf.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut header = [0u8; HEADER_LEN];
                if tls.read_exact(&mut header).await.is_err() {
                    return;
                }
                let Ok(parsed) = FrameHeader::parse(&header, MAX_PAYLOAD) else {
                    return;
                };
                let upstream = if parsed.frame_type == FrameType::Bind as u8 {
                    relay
                } else {
                    allocation
                };
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                if plain.write_all(&header).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

#[tokio::test]
async fn allocate_stream_and_media_run_over_one_tls_address() {
    let node = node().await;
    let leaf = Leaf::self_signed(&["localhost"]);
    let front = tls_front(
        &leaf,
        node.addrs().allocation_tcp[0],
        node.addrs().tcp_relay,
    )
    .await;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let config = ClientConfig::new(
        AppId::new("test-app").unwrap(),
        secret(),
        Timebase::new(Instant::now(), unix),
    );
    let tls = TlsClient::new(&TlsTrust::PinnedFingerprint(Fingerprint::of(&leaf.der))).unwrap();
    let connector = Connector::tls(tls, None, vec![front]).unwrap();
    let policy = DialPolicy::default();

    let run = async {
        let (service, allocation) = allocate_via(&config, &connector, &policy).await.unwrap();
        assert_eq!(service, front);

        let echo = tcp_echo().await;
        let (mut stream, early) =
            open_stream_via(&config, &connector, &allocation, Address::Ip(echo), &policy)
                .await
                .unwrap();
        assert!(early.is_empty());
        stream.write_all(b"over tls").await.unwrap();
        let mut back = [0u8; 8];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"over tls");

        let echo = udp_echo().await;
        let mut media = open_media_via(
            &config,
            &connector,
            &allocation,
            Address::Ip(echo),
            &MediaPolicy::default(),
        )
        .await
        .unwrap();
        assert_eq!(media.kind(), MediaPathKind::UdpOverTcp);
        assert_eq!(media.relay(), front);
        media.send(Bytes::from_static(b"datagram")).await.unwrap();
        assert_eq!(media.recv().await.unwrap(), Bytes::from_static(b"datagram"));
    };
    tokio::time::timeout(BOUND, run)
        .await
        .expect("within the bound");
}
