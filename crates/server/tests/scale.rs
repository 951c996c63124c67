//! Many sessions on one node at once: every one correct, and the node's
//! memory bounded.

mod proxy_support;

use std::sync::Arc;

use cloudproxy_proto::Address;
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tunnel::{allocate, open_stream};
use proxy_support::{Rig, tcp_echo, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sessions() {
    const SESSIONS: usize = 1000;
    let rig = Arc::new(Rig::loopback().await);
    let echo = tcp_echo().await;
    let before = rss_kib();
    // Everyone holds their session open until all are up, so they really
    // are concurrent.
    let all_up = Arc::new(Barrier::new(SESSIONS + 1));
    let mut tasks = Vec::new();
    for i in 0..SESSIONS {
        let (rig, all_up) = (Arc::clone(&rig), Arc::clone(&all_up));
        tasks.push(tokio::spawn(async move {
            let policy = DialPolicy::default();
            let (_, allocation) = allocate(&rig.client, &[rig.allocation_addr()], &policy)
                .await
                .unwrap();
            let (mut stream, _) = open_stream(&rig.client, &allocation, Address::Ip(echo), &policy)
                .await
                .unwrap();
            let message = format!("session {i:04} says hello");
            stream.write_all(message.as_bytes()).await.unwrap();
            let mut reply = vec![0u8; message.len()];
            stream.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply, message.as_bytes());
            all_up.wait().await;
            stream
        }));
    }
    within("1000 sessions up", all_up.wait()).await;
    let at_peak = rig.node.stats();
    let peak_rss = rss_kib();
    assert_eq!(at_peak.allocations, SESSIONS as u64);
    assert_eq!(at_peak.tcp_sessions_active, SESSIONS as u64);
    assert_eq!(rig.node.sessions(proxy_support::APP), SESSIONS);

    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await.unwrap());
    }
    drop(streams);
    within("every session closed", async {
        while rig.node.stats().tcp_sessions_active != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(rig.node.sessions(proxy_support::APP), 0);
    // Client, proxy and echo server share this process: 1000 sessions are
    // 4000 sockets and their tasks. A generous bound that a leak or a
    // per-session buffer (64 KiB × 2 × 1000 = 128 MiB) would break.
    let growth = peak_rss.saturating_sub(before);
    eprintln!(
        "RSS {before} KiB before, {peak_rss} KiB with {SESSIONS} sessions (+{} KiB per session, all three parties)",
        growth / SESSIONS as u64
    );
    assert!(
        growth < 64 * 1024,
        "RSS grew {growth} KiB for {SESSIONS} sessions"
    );
}
