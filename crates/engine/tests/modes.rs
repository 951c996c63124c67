//! Every proxy mode against a real proxy node and media edge on loopback:
//! join, messages and media both ways, and which path was taken.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_engine::{
    ConnectionState, Engine, EngineError, Event, ProxyMode, ProxyType, StateReason,
};
use support::*;

/// Two engines in one channel exchange messages (both ways, in order) and
/// media (both ways); then one leaves and the other is told.
async fn call(a: &Engine, b: &Engine, channel: &str) {
    let mut a_events = a.events();
    let mut b_events = b.events();
    a.join_channel(channel, 1).await.expect("a joins");
    b.join_channel(channel, 2).await.expect("b joins");
    wait_user_joined(&mut a_events, 2).await;
    wait_user_joined(&mut b_events, 1).await;

    for i in 0..20u32 {
        a.send_message(Bytes::from(format!("a{i}"))).unwrap();
        b.send_message(Bytes::from(format!("b{i}"))).unwrap();
    }
    for i in 0..20u32 {
        let m = recv_message(b).await;
        assert_eq!(m.payload, format!("a{i}").as_bytes());
        assert_eq!(m.uid, Some(1));
        let m = recv_message(a).await;
        assert_eq!(m.payload, format!("b{i}").as_bytes());
        assert_eq!(m.uid, Some(2));
    }
    let media = media_gets_through(a, b, b"rtp from a").await;
    assert_eq!(media.payload, &b"rtp from a"[..]);
    assert_eq!(media.uid, Some(1));
    let media = media_gets_through(b, a, b"rtp from b").await;
    assert_eq!(media.uid, Some(2));

    b.leave_channel().await.unwrap();
    wait_for(&mut a_events, "UserLeft", |e| {
        matches!(e, Event::UserLeft { uid: 2, .. })
    })
    .await;
    wait_for(&mut b_events, "Left", |e| {
        is_state(e, ConnectionState::Disconnected, StateReason::Left)
    })
    .await;
    a.leave_channel().await.unwrap();
}

fn proxy_connected(events: &[Event]) -> Option<ProxyType> {
    events.iter().find_map(|e| match e {
        Event::ProxyConnected { proxy_type, .. } => Some(*proxy_type),
        _ => None,
    })
}

/// Joins `engine` and returns the events up to `Connected/Joined`.
async fn join_events(engine: &Engine, channel: &str, uid: u32) -> Vec<Event> {
    let mut events = engine.events();
    engine.join_channel(channel, uid).await.expect("joins");
    let (_, mut seen) = wait_for(&mut events, "Connected", |e| {
        is_state(e, ConnectionState::Connected, StateReason::Joined)
    })
    .await;
    seen.push(Event::ConnectionStateChanged {
        state: ConnectionState::Connected,
        reason: StateReason::Joined,
    });
    seen
}

#[tokio::test]
async fn off_goes_straight_to_the_media_network() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (engine(&edge), engine(&edge));
    let events = join_events(&a, "probe-off", 9).await;
    assert_eq!(proxy_connected(&events), None, "{events:?}");
    assert!(matches!(
        events[0],
        Event::ConnectionStateChanged {
            state: ConnectionState::Connecting,
            reason: StateReason::Joining
        }
    ));
    a.leave_channel().await.unwrap();
    call(&a, &b, "off").await;
    assert_eq!(node.stats().allocations, 0, "the proxy was not used");
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn the_guides_strings_carry_a_call_through_the_proxy_over_udp() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (proxied_engine(&edge, &node), proxied_engine(&edge, &node));
    assert_eq!(a.proxy_mode(), ProxyMode::On);
    let events = join_events(&a, "probe-on", 9).await;
    assert_eq!(proxy_connected(&events), Some(ProxyType::Udp), "{events:?}");
    assert!(
        events.iter().any(|e| is_state(
            e,
            ConnectionState::Connecting,
            StateReason::SettingProxyServer
        )),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::MediaFallbackToTcp { .. }))
    );
    a.leave_channel().await.unwrap();
    call(&a, &b, "on").await;
    let stats = node.stats();
    assert!(stats.allocations >= 3, "{stats:?}");
    assert!(
        stats.udp_packets_up > 0 && stats.udp_packets_down > 0,
        "{stats:?}"
    );
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn the_guides_unescaped_sample_works_as_the_server_setting() {
    let edge = edge().await;
    let node = proxy_node().await;
    let a = engine(&edge);
    a.set_parameters(r#"{"rtc.enable_proxy":true}"#).unwrap();
    // The guide's sample, with a dead first address and the node's port.
    let port = alloc_addr(&node).port();
    a.set_parameters(&format!(
        r#"{{"rtc.proxy_server":[2, "["127.0.0.2","127.0.0.1"]", {port}]}}"#
    ))
    .unwrap();
    let events = join_events(&a, "unescaped", 1).await;
    assert_eq!(proxy_connected(&events), Some(ProxyType::Udp));
    a.leave_channel().await.unwrap();
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn auto_stays_direct_when_the_direct_path_works() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (proxied_engine(&edge, &node), proxied_engine(&edge, &node));
    a.set_cloud_proxy(ProxyMode::Auto).unwrap();
    b.set_cloud_proxy(ProxyMode::Auto).unwrap();
    let events = join_events(&a, "probe-auto", 9).await;
    assert_eq!(proxy_connected(&events), None, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::DirectPathFailed { .. }))
    );
    a.leave_channel().await.unwrap();
    call(&a, &b, "auto-direct").await;
    assert_eq!(node.stats().allocations, 0);
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn auto_falls_back_to_the_proxy_when_the_direct_path_is_unreachable() {
    let edge = edge().await;
    let node = proxy_node().await;
    // A front for the edge's message port that never answers the first two
    // connections — the two engines' direct attempts, made before any proxy
    // step — like a firewall that drops, and forwards the rest (the relay's).
    let front = tcp_front("127.0.0.1".parse().unwrap(), 0, edge.tcp_addr(), |n| n >= 2).await;
    let make = || {
        let engine = builder(front, edge.udp_addr()).build().unwrap();
        let addr = alloc_addr(&node);
        engine
            .set_parameters(&proxy_server_param(&[&addr.ip().to_string()], addr.port()))
            .unwrap();
        engine.set_cloud_proxy(ProxyMode::Auto).unwrap();
        engine
    };
    let (a, b) = (make(), make());
    let mut events = a.events();
    let started = Instant::now();
    let (ra, rb) = tokio::join!(
        a.join_channel("auto-fallback", 1),
        b.join_channel("auto-fallback", 2)
    );
    ra.expect("a joins through the proxy");
    rb.expect("b joins through the proxy");
    let elapsed = started.elapsed();
    let (_, before) = wait_for(&mut events, "ProxyConnected", |e| {
        matches!(e, Event::ProxyConnected { .. })
    })
    .await;
    assert!(
        before.iter().any(
            |e| matches!(e, Event::DirectPathFailed { why } if why.contains("no answer within"))
        ),
        "{before:?}"
    );
    // The documented bound: 3 s of direct attempt, then the proxy.
    assert!(
        elapsed >= Duration::from_secs(3),
        "the direct attempt ran its course: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let mut a_events = a.events();
    b.send_message(Bytes::from_static(b"via proxy")).unwrap();
    assert_eq!(recv_message(&a).await.payload, &b"via proxy"[..]);
    media_gets_through(&a, &b, b"media via proxy").await;
    b.leave_channel().await.unwrap();
    wait_for(&mut a_events, "UserLeft", |e| {
        matches!(e, Event::UserLeft { uid: 2, .. })
    })
    .await;
    a.leave_channel().await.unwrap();
    assert!(node.stats().allocations >= 2);
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn auto_with_nothing_reachable_fails_with_both_reasons() {
    let edge = edge().await;
    let dead_tcp = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let engine = builder(dead_tcp, edge.udp_addr()).build().unwrap();
    // A proxy address where nothing listens.
    engine
        .set_parameters(&proxy_server_param(&["127.0.0.1"], dead_tcp.port()))
        .unwrap();
    engine.set_cloud_proxy(ProxyMode::Auto).unwrap();
    let err = engine.join_channel("nothing", 1).await.unwrap_err();
    assert!(matches!(err, EngineError::AutoFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("direct path failed") && text.contains("proxy"),
        "{text}"
    );
    edge.shutdown().await;
}

#[tokio::test]
async fn off_fails_within_the_direct_bound_when_the_network_drops() {
    let edge = edge().await;
    // A front that answers nothing, like a firewall that drops.
    let front = tcp_front("127.0.0.1".parse().unwrap(), 0, edge.tcp_addr(), |_| false).await;
    let engine = builder(front, edge.udp_addr())
        .direct_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = engine.join_channel("dropped", 1).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, EngineError::Direct { .. }), "{err:?}");
    assert!(err.to_string().contains("no answer within 500ms"), "{err}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    edge.shutdown().await;
}

#[tokio::test]
async fn force_udp_carries_media_over_the_udp_relay() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (proxied_engine(&edge, &node), proxied_engine(&edge, &node));
    a.set_cloud_proxy(ProxyMode::ForceUdp).unwrap();
    b.set_cloud_proxy(ProxyMode::ForceUdp).unwrap();
    let events = join_events(&a, "probe-udp", 9).await;
    assert_eq!(proxy_connected(&events), Some(ProxyType::Udp), "{events:?}");
    a.leave_channel().await.unwrap();
    call(&a, &b, "force-udp").await;
    let stats = node.stats();
    assert!(stats.udp_packets_up > 0, "{stats:?}");
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn force_tcp_carries_media_over_the_tcp_relay() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (proxied_engine(&edge, &node), proxied_engine(&edge, &node));
    a.set_cloud_proxy(ProxyMode::ForceTcp).unwrap();
    b.set_cloud_proxy(ProxyMode::ForceTcp).unwrap();
    let events = join_events(&a, "probe-tcp", 9).await;
    assert_eq!(proxy_connected(&events), Some(ProxyType::Tcp), "{events:?}");
    // Forced, not a fallback.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::MediaFallbackToTcp { .. })),
        "{events:?}"
    );
    a.leave_channel().await.unwrap();
    call(&a, &b, "force-tcp").await;
    let stats = node.stats();
    assert_eq!(
        stats.udp_bindings_total, 0,
        "no UDP relay binding: {stats:?}"
    );
    node.shutdown().await;
    edge.shutdown().await;
}

/// A node whose relays are advertised on 127.0.0.3: its TCP relay is
/// reachable there through a forwarder, its UDP relay is not (nothing
/// answers UDP on 127.0.0.3), as behind a firewall that blocks UDP.
async fn udp_blocked_node() -> cloudproxy_server::ProxyNode {
    let node = proxy_node_with("127.0.0.1", 0, Some("127.0.0.3")).await;
    let relay = node.addrs().tcp_relay;
    tcp_front("127.0.0.3".parse().unwrap(), relay.port(), relay, |_| true).await;
    node
}

#[tokio::test]
async fn force_udp_fails_clearly_when_udp_is_blocked() {
    let edge = edge().await;
    let node = udp_blocked_node().await;
    let addr = alloc_addr(&node);
    let engine = builder(edge.tcp_addr(), edge.udp_addr())
        .udp_probe_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    engine
        .set_parameters(&proxy_server_param(&["127.0.0.1"], addr.port()))
        .unwrap();
    engine.set_cloud_proxy(ProxyMode::ForceUdp).unwrap();
    let mut events = engine.events();
    let started = Instant::now();
    let err = engine.join_channel("udp-blocked", 1).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, EngineError::UdpBlocked { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("UDP looks blocked") && text.contains("ForceTcp"),
        "{text}"
    );
    wait_for(&mut events, "Failed", |e| {
        is_state(e, ConnectionState::Failed, StateReason::JoinFailed)
    })
    .await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn on_falls_back_to_tcp_when_udp_is_blocked_and_says_why() {
    let edge = edge().await;
    let node = udp_blocked_node().await;
    let addr = alloc_addr(&node);
    let make = || {
        let engine = builder(edge.tcp_addr(), edge.udp_addr())
            .udp_probe_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        engine
            .set_parameters(r#"{"rtc.enable_proxy":true}"#)
            .unwrap();
        engine
            .set_parameters(&proxy_server_param(&["127.0.0.1"], addr.port()))
            .unwrap();
        engine
    };
    let (a, b) = (make(), make());
    let events = join_events(&a, "udp-blocked-probe", 9).await;
    let why = events.iter().find_map(|e| match e {
        Event::MediaFallbackToTcp { why } => Some(why.clone()),
        _ => None,
    });
    let why = why.unwrap_or_else(|| panic!("no MediaFallbackToTcp in {events:?}"));
    assert!(why.contains("UDP"), "{why}");
    assert_eq!(proxy_connected(&events), Some(ProxyType::Tcp), "{events:?}");
    a.leave_channel().await.unwrap();
    call(&a, &b, "udp-blocked").await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn join_rules_and_payload_limits() {
    let edge = edge().await;
    let engine = engine(&edge);
    assert!(matches!(
        engine.send_message(Bytes::from_static(b"x")).unwrap_err(),
        EngineError::InvalidState {
            operation: "send_message",
            ..
        }
    ));
    assert!(matches!(
        engine.join_channel("", 1).await.unwrap_err(),
        EngineError::InvalidArgument { .. }
    ));
    engine.join_channel("limits", 1).await.unwrap();
    let err = engine.join_channel("other", 1).await.unwrap_err();
    assert!(
        err.to_string().contains("leave the current one first"),
        "{err}"
    );
    let err = engine
        .send_message(Bytes::from(vec![
            0u8;
            cloudproxy_engine::MAX_MESSAGE_LEN + 1
        ]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::PayloadTooLarge {
                what: "message",
                ..
            }
        ),
        "{err:?}"
    );
    let err = engine
        .send_media(Bytes::from(vec![0u8; cloudproxy_engine::MAX_MEDIA_LEN + 1]))
        .unwrap_err();
    assert!(
        matches!(err, EngineError::PayloadTooLarge { what: "media", .. }),
        "{err:?}"
    );
    assert!(matches!(
        engine.send_media(Bytes::new()).unwrap_err(),
        EngineError::InvalidArgument { .. }
    ));
    engine
        .send_message(Bytes::from(vec![7u8; cloudproxy_engine::MAX_MESSAGE_LEN]))
        .unwrap();
    engine.leave_channel().await.unwrap();
    // Leaving twice is harmless.
    engine.leave_channel().await.unwrap();
    edge.shutdown().await;
}

/// Joins `a` and `b` together `rounds` times; right after both joins return,
/// each sends exactly one media datagram, which the other must receive (a
/// loss fails within `LOSS_WAIT`, not after the general safety net).
async fn media_right_after_join(a: &Engine, b: &Engine, channel: &str, rounds: u32) {
    const LOSS_WAIT: Duration = Duration::from_secs(3);
    let bound = Duration::from_secs(90);
    let all = async {
        for round in 0..rounds {
            let (ja, jb) = tokio::join!(a.join_channel(channel, 1), b.join_channel(channel, 2));
            ja.expect("a joins");
            jb.expect("b joins");
            let (to_b, to_a) = (format!("a{round}"), format!("b{round}"));
            a.send_media(Bytes::from(to_b.clone())).unwrap();
            b.send_media(Bytes::from(to_a.clone())).unwrap();
            for (receiver, want) in [(b, &to_b), (a, &to_a)] {
                let got = tokio::time::timeout(LOSS_WAIT, receiver.recv_media())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("round {round}: the first media datagram {want:?} was lost")
                    })
                    .expect("engine alive");
                assert_eq!(got.payload, want.as_bytes(), "round {round}");
            }
            a.leave_channel().await.unwrap();
            b.leave_channel().await.unwrap();
        }
    };
    tokio::time::timeout(bound, all)
        .await
        .unwrap_or_else(|_| panic!("{rounds} rounds did not finish within {bound:?}"));
}

#[tokio::test]
async fn media_sent_right_after_join_is_never_lost_over_the_udp_relay() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (proxied_engine(&edge, &node), proxied_engine(&edge, &node));
    media_right_after_join(&a, &b, "first-media-udp", 50).await;
    assert_eq!(node.stats().allocations, 100, "every join used the proxy");
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn media_sent_right_after_join_is_never_lost_over_udp_over_tcp() {
    let edge = edge().await;
    let node = proxy_node().await;
    let (a, b) = (proxied_engine(&edge, &node), proxied_engine(&edge, &node));
    a.set_cloud_proxy(ProxyMode::ForceTcp).unwrap();
    b.set_cloud_proxy(ProxyMode::ForceTcp).unwrap();
    media_right_after_join(&a, &b, "first-media-tcp", 50).await;
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn media_sent_right_after_join_is_never_lost_on_the_direct_path() {
    let edge = edge().await;
    let (a, b) = (engine(&edge), engine(&edge));
    media_right_after_join(&a, &b, "first-media-direct", 50).await;
    edge.shutdown().await;
}
