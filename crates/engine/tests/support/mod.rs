//! A loopback proxy node and reference media edge, engines configured for
//! them, and waiting on events with a timeout as a safety net.
//!
//! No test here resolves a name other than `localhost` (the builder's default
//! domain is set to it), so nothing leaves the machine.

#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cloudproxy_edge::{Edge, EdgeConfig, RunningEdge};
use cloudproxy_engine::{
    ConnectionState, Engine, EngineBuilder, Event, Events, IncomingMedia, IncomingMessage,
    StateReason,
};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;
use tokio::net::{TcpListener, TcpStream};

pub const APP: &str = "engine-test-app";
pub const SECRET: &[u8] = b"engine-test-secret-0123";
const TICKET_KEY_HEX: &str = "7469636b65742d6b65792d666f722d74657374732d3332206279746573212121";

/// A safety net for every wait: a hang fails the test instead of stalling CI.
pub const WAIT: Duration = Duration::from_secs(20);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A proxy node on `bind`, allocation port `alloc_port` (0: any), relaying
/// to loopback, closing sessions at once on shutdown. `advertise` overrides
/// the relay address given to clients.
pub async fn proxy_node_with(bind: &str, alloc_port: u16, advertise: Option<&str>) -> ProxyNode {
    proxy_node_with_extra(bind, alloc_port, advertise, "").await
}

/// A node on loopback with its TLS port on (port 0) and a fresh self-signed
/// certificate for 127.0.0.1 and localhost, written under a scratch
/// directory named after `test`; also its relays advertised at `advertise`.
pub async fn tls_proxy_node(test: &str, advertise: Option<&str>) -> ProxyNode {
    let dir = std::env::temp_dir().join(format!(
        "cloudproxy-engine-tls-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let made = cloudproxy_server::tls::SelfSigned::generate(&[
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
    ])
    .expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    made.write(&cert, &key, true).expect("PEM files");
    let tls = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    proxy_node_with_extra("127.0.0.1", 0, advertise, &tls).await
}

async fn proxy_node_with_extra(
    bind: &str,
    alloc_port: u16,
    advertise: Option<&str>,
    extra: &str,
) -> ProxyNode {
    let advertise = advertise.map_or(String::new(), |a| format!("advertise = \"{a}\""));
    let text = format!(
        r#"
[listeners]
bind = "{bind}"
{advertise}
allocation_ports = [{alloc_port}]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "{APP}"
max_sessions = 100
secrets = ["{secret}"]

[[ticket_keys]]
key_id = 1
secret = "{TICKET_KEY_HEX}"

[allowlist]
allow = ["127.0.0.1"]

[limits]
drain_timeout_ms = 0

{extra}
"#,
        secret = hex(SECRET)
    );
    let config = ServerConfig::from_toml_str("engine-test.toml", &text).expect("test config");
    ProxyNode::start(&config).await.expect("proxy node starts")
}

pub async fn proxy_node() -> ProxyNode {
    proxy_node_with("127.0.0.1", 0, None).await
}

pub fn alloc_addr(node: &ProxyNode) -> SocketAddr {
    node.addrs().allocation_tcp[0]
}

/// The guide's type-2 setting for `ips` on `port`, in the documented
/// JSON-in-a-string form.
pub fn proxy_server_param(ips: &[&str], port: u16) -> String {
    let list: Vec<String> = ips.iter().map(|ip| format!("\\\"{ip}\\\"")).collect();
    format!(
        r#"{{"rtc.proxy_server":[2, "[{}]", {port}]}}"#,
        list.join(",")
    )
}

pub async fn edge() -> RunningEdge {
    Edge::bind(EdgeConfig::loopback())
        .await
        .expect("edge binds")
        .spawn()
}

/// A builder for the test app against `edge`, with the default proxy domain
/// pointed at `localhost` so no test ever resolves a public name.
pub fn builder(tcp: SocketAddr, udp: SocketAddr) -> EngineBuilder {
    Engine::builder(APP, SECRET.to_vec())
        .media_network(tcp, udp)
        .default_proxy_domain("localhost")
}

pub fn engine(edge: &RunningEdge) -> Engine {
    builder(edge.tcp_addr(), edge.udp_addr())
        .build()
        .expect("engine builds")
}

/// An engine using the proxy `node` (the guide's two strings).
pub fn proxied_engine(edge: &RunningEdge, node: &ProxyNode) -> Engine {
    let engine = engine(edge);
    let addr = alloc_addr(node);
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .expect("enable");
    engine
        .set_parameters(&proxy_server_param(&[&addr.ip().to_string()], addr.port()))
        .expect("server");
    engine
}

/// Waits for the first event matching `pred`, returning it and every event
/// seen before it.
pub async fn wait_for(
    events: &mut Events,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> (Event, Vec<Event>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("engine alive");
            if pred(&event) {
                return event;
            }
            seen.push(event);
        }
    })
    .await;
    match found {
        Ok(event) => (event, seen),
        Err(_) => panic!("no {what} within {WAIT:?}; events seen: {seen:?}"),
    }
}

pub fn is_state(event: &Event, state: ConnectionState, reason: StateReason) -> bool {
    matches!(event, Event::ConnectionStateChanged { state: s, reason: r } if *s == state && *r == reason)
}

pub async fn wait_user_joined(events: &mut Events, uid: u32) {
    wait_for(
        events,
        "UserJoined",
        |e| matches!(e, Event::UserJoined { uid: u, .. } if *u == uid),
    )
    .await;
}

pub async fn recv_message(engine: &Engine) -> IncomingMessage {
    tokio::time::timeout(WAIT, engine.recv_message())
        .await
        .expect("a message within the wait")
        .expect("engine alive")
}

/// Sends media from `from` every 20 ms until `to` receives one (media is
/// unreliable, so the first datagrams may precede the path being ready).
pub async fn media_gets_through(
    from: &Engine,
    to: &Engine,
    payload: &'static [u8],
) -> IncomingMedia {
    tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => from.send_media(bytes::Bytes::from_static(payload)).expect("send_media"),
                got = to.recv_media() => return got.expect("engine alive"),
            }
        }
    })
    .await
    .expect("media within 5 s")
}

/// A TCP front for `target`: each accepted connection is either forwarded
/// (`forward(n)` true for the n-th connection, from 0) or, like a firewall
/// that drops, held open and never answered.
pub async fn tcp_front(
    bind: IpAddr,
    port: u16,
    target: SocketAddr,
    forward: fn(usize) -> bool,
) -> SocketAddr {
    let listener = TcpListener::bind((bind, port)).await.expect("front binds");
    let addr = listener.local_addr().expect("front addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0.. {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if forward(n) {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            } else {
                held.push(inbound);
            }
        }
    });
    addr
}

/// For a fake media network: answers every media registration (an empty
/// `Media`) received on `socket` with its confirmation, as the reference
/// edge does (`docs/protocol.md` §9.3), so engines can join it.
pub fn confirm_media_registrations(socket: tokio::net::UdpSocket) {
    use cloudproxy_proto::frame::{Frame, Media};
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Ok(Frame::Media(m)) = Frame::parse(&buf[..n]) {
                if m.payload.is_empty() {
                    let confirmation = Frame::Media(Media { token: 0, ..m });
                    let _ = socket.send_to(&confirmation.to_bytes(), from).await;
                }
            }
        }
    });
}
