//! Failover: a dead proxy address is skipped; a proxy killed mid-call is
//! replaced by the next one without the app doing anything, and every
//! reliable message arrives exactly once, in order.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_engine::{ConnectionState, Engine, Event, ProxyType, StateReason};
use support::*;

#[tokio::test]
async fn a_dead_first_proxy_address_is_skipped() {
    let edge = edge().await;
    let node = proxy_node().await;
    let port = alloc_addr(&node).port();
    let engine = engine(&edge);
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    // Nothing listens on 127.0.0.2 at the node's port.
    engine
        .set_parameters(&proxy_server_param(&["127.0.0.2", "127.0.0.1"], port))
        .unwrap();
    let mut events = engine.events();
    engine.join_channel("dead-first", 1).await.unwrap();
    let (event, _) = wait_for(&mut events, "ProxyConnected", |e| {
        matches!(e, Event::ProxyConnected { .. })
    })
    .await;
    let Event::ProxyConnected {
        proxy_type,
        elapsed,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(proxy_type, ProxyType::Udp);
    // A refused address costs no more than one stagger (250 ms).
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(node.stats().allocations, 1);
    engine.leave_channel().await.unwrap();
    node.shutdown().await;
    edge.shutdown().await;
}

/// Sends `range` as numbered messages.
fn send_numbered(engine: &Engine, range: std::ops::Range<u32>) {
    for i in range {
        engine
            .send_message(Bytes::from(format!("m{i:05}")))
            .expect("send_message is accepted while connected or reconnecting");
    }
}

/// Receives exactly `range`, in order, from `from_uid`.
async fn expect_numbered(engine: &Engine, from_uid: u32, range: std::ops::Range<u32>) {
    for i in range {
        let m = recv_message(engine).await;
        assert_eq!(m.uid, Some(from_uid));
        assert_eq!(
            std::str::from_utf8(&m.payload).unwrap(),
            format!("m{i:05}"),
            "message {i} missing, duplicated or out of order"
        );
    }
}

#[tokio::test]
async fn a_proxy_killed_mid_call_is_replaced_and_no_message_is_lost_or_duplicated() {
    let edge = edge().await;
    // Two nodes of one fleet (same ticket key and app), on the same port of
    // two loopback addresses, listed in order.
    let first = proxy_node().await;
    let port = alloc_addr(&first).port();
    let second = proxy_node_with("127.0.0.2", port, None).await;
    let make = || {
        let engine = engine(&edge);
        engine
            .set_parameters(r#"{"rtc.enable_proxy":true}"#)
            .unwrap();
        engine
            .set_parameters(&proxy_server_param(&["127.0.0.1", "127.0.0.2"], port))
            .unwrap();
        engine
    };
    let (a, b) = (make(), make());
    let mut a_events = a.events();
    let mut b_events = b.events();
    a.join_channel("failover", 1).await.unwrap();
    b.join_channel("failover", 2).await.unwrap();
    wait_user_joined(&mut a_events, 2).await;
    wait_user_joined(&mut b_events, 1).await;
    assert_eq!(first.sessions(APP), 2);
    assert_eq!(second.stats().allocations, 0);

    // Both directions, before, during and after the failover.
    send_numbered(&a, 0..300);
    send_numbered(&b, 0..300);
    expect_numbered(&b, 1, 0..100).await;
    let killed = Instant::now();
    first.shutdown().await;
    // Sent while the relay is gone: queued, then resent after the resume.
    send_numbered(&a, 300..400);
    send_numbered(&b, 300..400);

    for events in [&mut a_events, &mut b_events] {
        let (_, before) = wait_for(events, "Connected/Resumed", |e| {
            is_state(e, ConnectionState::Connected, StateReason::Resumed)
        })
        .await;
        assert!(
            before.iter().any(|e| is_state(
                e,
                ConnectionState::Reconnecting,
                StateReason::Interrupted
            )),
            "{before:?}"
        );
        assert!(
            before
                .iter()
                .any(|e| matches!(e, Event::ProxyConnected { .. })),
            "{before:?}"
        );
    }
    let failover = killed.elapsed();
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    assert!(second.stats().allocations >= 2, "{:?}", second.stats());

    send_numbered(&a, 400..500);
    send_numbered(&b, 400..500);
    // A sentinel after the last: a duplicate would show up before it.
    a.send_message(Bytes::from_static(b"end")).unwrap();
    b.send_message(Bytes::from_static(b"end")).unwrap();
    expect_numbered(&b, 1, 100..500).await;
    expect_numbered(&a, 2, 0..500).await;
    assert_eq!(recv_message(&b).await.payload, &b"end"[..]);
    assert_eq!(recv_message(&a).await.payload, &b"end"[..]);

    // Media flows again, through the second node.
    media_gets_through(&a, &b, b"after failover").await;
    media_gets_through(&b, &a, b"after failover too").await;

    a.leave_channel().await.unwrap();
    b.leave_channel().await.unwrap();
    second.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn the_engine_gives_up_after_the_reconnect_window_and_can_join_again() {
    let edge = edge().await;
    let node = proxy_node().await;
    let engine = builder(edge.tcp_addr(), edge.udp_addr())
        .reconnect_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let addr = alloc_addr(&node);
    engine
        .set_parameters(&proxy_server_param(&["127.0.0.1"], addr.port()))
        .unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    let mut events = engine.events();
    engine.join_channel("give-up", 1).await.unwrap();
    node.shutdown().await;
    wait_for(&mut events, "Reconnecting", |e| {
        is_state(e, ConnectionState::Reconnecting, StateReason::Interrupted)
    })
    .await;
    wait_for(&mut events, "Failed", |e| {
        is_state(e, ConnectionState::Failed, StateReason::ReconnectFailed)
    })
    .await;
    // Idle again: parameters may change and a new join works.
    engine
        .set_parameters(r#"{"rtc.enable_proxy":false}"#)
        .unwrap();
    engine.join_channel("give-up", 1).await.unwrap();
    engine.leave_channel().await.unwrap();
    edge.shutdown().await;
}
