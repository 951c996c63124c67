//! The transport ladder against a real proxy node (with its TLS port) and
//! media edge on loopback: which rung wins, that the losers leave nothing
//! on the node, that the winner is tried first next time, `ForceTls`, the
//! HTTP proxy rung, and the fast typed failures (untrusted certificate,
//! 407).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_engine::{Engine, EngineError, Event, ProxyMode, ProxyType};
use cloudproxy_server::ProxyNode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The first `ProxyConnected` of a join, and every event before it.
async fn join_via(engine: &Engine, channel: &str, uid: u32) -> (ProxyType, Duration, Vec<Event>) {
    let mut events = engine.events();
    engine.join_channel(channel, uid).await.expect("joins");
    let (event, before) = wait_for(&mut events, "ProxyConnected", |e| {
        matches!(e, Event::ProxyConnected { .. })
    })
    .await;
    match event {
        Event::ProxyConnected {
            proxy_type,
            elapsed,
        } => (proxy_type, elapsed, before),
        _ => unreachable!(),
    }
}

/// An engine through `node` by IP 127.0.0.1 on `alloc_port`, with the TLS
/// port and pin of the node as parameters, UDP probed for `probe`.
fn tls_engine(
    edge: &cloudproxy_edge::RunningEdge,
    node: &ProxyNode,
    alloc_port: u16,
    probe: Duration,
) -> Engine {
    tls_engine_at(edge, node, "127.0.0.1", alloc_port, probe)
}

/// As [`tls_engine`], with the proxy server at `ip`.
fn tls_engine_at(
    edge: &cloudproxy_edge::RunningEdge,
    node: &ProxyNode,
    ip: &str,
    alloc_port: u16,
    probe: Duration,
) -> Engine {
    let engine = builder(edge.tcp_addr(), edge.udp_addr())
        .udp_probe_timeout(probe)
        .http_proxy_from_env(false)
        .build()
        .expect("builds");
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    engine
        .set_parameters(&proxy_server_param(&[ip], alloc_port))
        .unwrap();
    let tls = node.addrs().tls.expect("TLS port on");
    let pin = node.tls_fingerprint().expect("fingerprint");
    engine
        .set_parameters(&format!(
            r#"{{"rtc.proxy_tls_pin":"{pin}","rtc.proxy_tls_port":{}}}"#,
            tls.port()
        ))
        .unwrap();
    engine
}

/// Polls `node` until no relay session is left (bounded by the safety net).
async fn no_sessions_left(node: &ProxyNode) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = node.stats();
        if stats.tcp_sessions_active == 0 && stats.udp_bindings_active == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "sessions left: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_ladder_picks_udp_when_it_is_open() {
    let edge = edge().await;
    let node = tls_proxy_node("udp-open", None).await;
    let engine = tls_engine(
        &edge,
        &node,
        alloc_addr(&node).port(),
        Duration::from_secs(2),
    );
    let (proxy_type, _, _) = join_via(&engine, "ladder-udp", 1).await;
    assert_eq!(proxy_type, ProxyType::Udp);
    let stats = node.stats();
    assert_eq!(stats.udp_bindings_active, 1, "{stats:?}");
    // The message channel only: no TCP or TLS media session was left.
    assert_eq!(stats.tcp_sessions_active, 1, "{stats:?}");
    engine.leave_channel().await.unwrap();
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn tcp_wins_when_udp_is_blocked_and_the_cancelled_udp_rung_leaves_nothing() {
    let edge = edge().await;
    // Relays advertised on 127.0.0.3: TCP forwarded there, UDP not.
    let node = tls_proxy_node("udp-blocked", Some("127.0.0.3")).await;
    let relay = node.addrs().tcp_relay;
    tcp_front("127.0.0.3".parse().unwrap(), relay.port(), relay, |_| true).await;
    let engine = tls_engine(
        &edge,
        &node,
        alloc_addr(&node).port(),
        Duration::from_secs(2),
    );
    let (proxy_type, first, events) = join_via(&engine, "ladder-tcp", 1).await;
    assert_eq!(proxy_type, ProxyType::Tcp);
    assert!(first >= Duration::from_millis(250), "{first:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::MediaFallbackToTcp { why } if why.contains("UDP"))),
        "{events:?}"
    );
    let stats = node.stats();
    assert_eq!(stats.udp_bindings_active, 0, "{stats:?}");
    assert_eq!(
        stats.tcp_sessions_active, 2,
        "media and messages: {stats:?}"
    );
    engine.leave_channel().await.unwrap();
    no_sessions_left(&node).await;

    // Same network: TCP is remembered and tried first, without waiting for
    // UDP's stagger.
    let (proxy_type, second, _) = join_via(&engine, "ladder-tcp", 1).await;
    assert_eq!(proxy_type, ProxyType::Tcp);
    assert!(
        second < Duration::from_millis(250),
        "{second:?} (first {first:?})"
    );
    engine.leave_channel().await.unwrap();
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn tls_wins_when_plain_ports_drop_and_the_cancelled_rungs_leave_nothing() {
    let edge = edge().await;
    let node = tls_proxy_node("plain-dropped", None).await;
    // The allocation port behind a front that never answers, like a
    // firewall that drops: the UDP and TCP rungs hang until cancelled.
    let dropped = tcp_front("127.0.0.1".parse().unwrap(), 0, alloc_addr(&node), |_| {
        false
    })
    .await;
    let (a, b) = (
        tls_engine(&edge, &node, dropped.port(), Duration::from_secs(2)),
        tls_engine(&edge, &node, dropped.port(), Duration::from_secs(2)),
    );
    let started = Instant::now();
    let (proxy_type, _, _) = join_via(&a, "ladder-tls", 1).await;
    assert_eq!(proxy_type, ProxyType::Tls);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut a_events = a.events();
    b.join_channel("ladder-tls", 2).await.unwrap();
    wait_user_joined(&mut a_events, 2).await;
    b.send_message(Bytes::from_static(b"over tls")).unwrap();
    assert_eq!(recv_message(&a).await.payload, &b"over tls"[..]);
    media_gets_through(&a, &b, b"media over tls").await;
    a.leave_channel().await.unwrap();
    b.leave_channel().await.unwrap();
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn force_tls_carries_a_call_over_the_tls_port() {
    let edge = edge().await;
    let node = tls_proxy_node("force-tls", None).await;
    let port = alloc_addr(&node).port();
    let (a, b) = (
        tls_engine(&edge, &node, port, Duration::from_secs(2)),
        tls_engine(&edge, &node, port, Duration::from_secs(2)),
    );
    a.set_cloud_proxy(ProxyMode::ForceTls).unwrap();
    b.set_cloud_proxy(ProxyMode::ForceTls).unwrap();
    let (proxy_type, _, _) = join_via(&a, "force-tls", 1).await;
    assert_eq!(proxy_type, ProxyType::Tls);
    let (proxy_type, _, _) = join_via(&b, "force-tls", 2).await;
    assert_eq!(proxy_type, ProxyType::Tls);
    a.send_message(Bytes::from_static(b"hello")).unwrap();
    assert_eq!(recv_message(&b).await.payload, &b"hello"[..]);
    media_gets_through(&b, &a, b"rtp").await;
    let stats = node.stats();
    assert_eq!(stats.udp_bindings_total, 0, "{stats:?}");
    a.leave_channel().await.unwrap();
    b.leave_channel().await.unwrap();
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_fails_fast_and_says_so() {
    let edge = edge().await;
    let node = tls_proxy_node("untrusted", None).await;
    let engine = tls_engine(
        &edge,
        &node,
        alloc_addr(&node).port(),
        Duration::from_secs(2),
    );
    // A pin that is not the node's certificate: as if a TLS-intercepting
    // proxy presented its own.
    engine
        .set_parameters(&format!(r#"{{"rtc.proxy_tls_pin":"{}"}}"#, "AB".repeat(32)))
        .unwrap();
    engine.set_cloud_proxy(ProxyMode::ForceTls).unwrap();
    let started = Instant::now();
    let err = engine.join_channel("untrusted", 1).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, EngineError::UntrustedCertificate { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not trusted") && text.contains("TLS-intercepting"),
        "{text}"
    );
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}

/// A minimal HTTP proxy: `CONNECT` with Basic credentials `user:pw`
/// (`dXNlcjpwdw==`), else 407. It reaches 127.0.0.2 (where nothing
/// listens) at 127.0.0.1, so a proxy server configured as 127.0.0.2 is
/// reachable only through it.
async fn connect_proxy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if inbound.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                if !text.contains("Proxy-Authorization: Basic dXNlcjpwdw==") {
                    let _ = inbound
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let target = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .replace("127.0.0.2", "127.0.0.1");
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = inbound
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_http_proxy_rung_carries_a_call_and_a_407_fails_fast() {
    let edge = edge().await;
    let node = tls_proxy_node("http-proxy", None).await;
    let proxy = connect_proxy().await;
    let port = alloc_addr(&node).port();
    // The proxy server at 127.0.0.2: no direct route (nothing listens
    // there), only through the HTTP proxy.
    let (a, b) = (
        tls_engine_at(&edge, &node, "127.0.0.2", port, Duration::from_secs(2)),
        tls_engine(&edge, &node, port, Duration::from_secs(2)),
    );
    a.set_parameters(&format!(r#"{{"rtc.http_proxy":"http://user:pw@{proxy}"}}"#))
        .unwrap();
    let (proxy_type, _, _) = join_via(&a, "http-proxy", 1).await;
    assert_eq!(proxy_type, ProxyType::HttpProxy);
    b.join_channel("http-proxy", 2).await.unwrap();
    b.send_message(Bytes::from_static(b"through the proxy"))
        .unwrap();
    assert_eq!(recv_message(&a).await.payload, &b"through the proxy"[..]);
    media_gets_through(&a, &b, b"media through the proxy").await;
    a.leave_channel().await.unwrap();
    b.leave_channel().await.unwrap();

    // A wrong password: the typed 407 error, at once.
    let wrong = tls_engine_at(&edge, &node, "127.0.0.2", port, Duration::from_secs(2));
    wrong
        .set_parameters(&format!(
            r#"{{"rtc.http_proxy":"http://user:wrong@{proxy}"}}"#
        ))
        .unwrap();
    let started = Instant::now();
    let err = wrong.join_channel("http-proxy", 3).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, EngineError::ProxyAuthFailed { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("(407"), "{err}");
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}

/// Through an HTTP proxy, a server given as several addresses is tried at
/// each: the proxy cannot reach the first (nothing listens at 127.0.0.3),
/// the second carries the call.
#[tokio::test]
async fn the_http_proxy_rung_tries_each_address_of_the_server() {
    let edge = edge().await;
    let node = tls_proxy_node("http-proxy-addresses", None).await;
    let proxy = connect_proxy().await;
    let port = alloc_addr(&node).port();
    let engine = tls_engine_at(&edge, &node, "127.0.0.2", port, Duration::from_secs(2));
    engine
        .set_parameters(&proxy_server_param(&["127.0.0.3", "127.0.0.2"], port))
        .unwrap();
    engine
        .set_parameters(&format!(r#"{{"rtc.http_proxy":"http://user:pw@{proxy}"}}"#))
        .unwrap();
    let (proxy_type, _, _) = join_via(&engine, "http-proxy-addresses", 1).await;
    assert_eq!(proxy_type, ProxyType::HttpProxy);
    engine.leave_channel().await.unwrap();
    no_sessions_left(&node).await;
    node.shutdown().await;
    edge.shutdown().await;
}
