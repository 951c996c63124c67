//! A path that goes silent mid-call without closing (black-holed both
//! ways): the engine suspects the silence from the acknowledgements its
//! messages lack, confirms it with a probe, reports `RelaySilent` and
//! re-establishes the connection long before the keepalive timeout; every
//! reliable message arrives exactly once, in order.
//!
//! How fast is measured and printed here; the bound (≤ 3 s) is asserted by
//! `cargo xtask e2e` scenario 12, on real nodes behind nftables.

mod support;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use cloudproxy_engine::{ConnectionState, Engine, Event, StateReason};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP forwarder to `target` that can black-hole: on
/// [`BlackHole::drop_all`] every connection open at that moment stops
/// forwarding both ways and is held open, never closed (a firewall that
/// drops); connections accepted later forward normally.
struct BlackHole {
    addr: SocketAddr,
    epoch: watch::Sender<u64>,
}

impl BlackHole {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let (epoch, _) = watch::channel(0u64);
        let watched = epoch.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut epoch = watched.subscribe();
                let born = *epoch.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let silenced = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        changed = epoch.wait_for(|&e| e != born) => changed.is_ok(),
                    };
                    if silenced {
                        // Silent from now on: held open, nothing moves.
                        std::future::pending::<()>().await;
                    }
                    drop((inbound, outbound));
                });
            }
        });
        Self { addr, epoch }
    }

    fn drop_all(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }
}

fn send_numbered(engine: &Engine, range: std::ops::Range<u32>) {
    for i in range {
        engine
            .send_message(Bytes::from(format!("m{i:05}")))
            .expect("send_message is accepted while connected or reconnecting");
    }
}

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
async fn a_black_holed_path_is_left_for_a_new_connection_and_no_message_is_lost() {
    let edge = edge().await;
    let hole = BlackHole::start(edge.tcp_addr()).await;
    let make = || {
        builder(hole.addr, edge.udp_addr())
            .build()
            .expect("engine builds")
    };
    let (a, b) = (make(), make());
    let mut a_events = a.events();
    let mut b_events = b.events();
    a.join_channel("silent", 1).await.unwrap();
    b.join_channel("silent", 2).await.unwrap();
    wait_user_joined(&mut a_events, 2).await;
    wait_user_joined(&mut b_events, 1).await;

    send_numbered(&a, 0..200);
    send_numbered(&b, 0..200);
    expect_numbered(&b, 1, 0..100).await;
    let silent_at = Instant::now();
    hole.drop_all();
    // Sent into the silence: unacknowledged, the evidence of it.
    send_numbered(&a, 200..300);
    send_numbered(&b, 200..300);

    for (who, events) in [("a", &mut a_events), ("b", &mut b_events)] {
        let (_, before) = wait_for(events, "Connected/Resumed", |e| {
            is_state(e, ConnectionState::Connected, StateReason::Resumed)
        })
        .await;
        assert!(
            before.iter().any(|e| matches!(
                e,
                Event::ConnectionStateChanged {
                    state: ConnectionState::Reconnecting,
                    reason: StateReason::RelaySilent,
                }
            )),
            "{who}: {before:?}"
        );
        println!(
            "{who}: resumed {:?} after the black hole",
            silent_at.elapsed()
        );
    }

    send_numbered(&a, 300..400);
    send_numbered(&b, 300..400);
    a.send_message(Bytes::from_static(b"end")).unwrap();
    b.send_message(Bytes::from_static(b"end")).unwrap();
    expect_numbered(&b, 1, 100..400).await;
    expect_numbered(&a, 2, 0..400).await;
    assert_eq!(recv_message(&b).await.payload, &b"end"[..]);
    assert_eq!(recv_message(&a).await.payload, &b"end"[..]);

    a.leave_channel().await.unwrap();
    b.leave_channel().await.unwrap();
    edge.shutdown().await;
}
