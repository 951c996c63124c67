//! Accept loops and the two-phase shutdown.

use std::time::Duration;

use cloudproxy_transport::lifecycle::{DrainOutcome, Lifecycle, accept_tcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[tokio::test]
async fn accepts_until_stopped_then_refuses() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lifecycle = Lifecycle::new();
    let accept_loop = tokio::spawn(accept_tcp(
        listener,
        lifecycle.clone(),
        |mut stream, _peer| async move {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            stream.write_all(&[byte[0] + 1]).await.unwrap();
        },
    ));

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&[41]).await.unwrap();
    let mut reply = [0u8; 1];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [42]);

    lifecycle.stop_accepting();
    accept_loop.await.unwrap(); // the listener is dropped when the loop ends
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        lifecycle.drain(Duration::from_secs(5)).await,
        DrainOutcome::Drained
    );
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_sessions_that_finish() {
    let lifecycle = Lifecycle::new();
    let (finish_tx, mut finish_rx) = mpsc::channel::<()>(1);
    lifecycle.spawn(async move {
        finish_rx.recv().await;
    });
    let drain = tokio::spawn({
        let lifecycle = lifecycle.clone();
        async move { lifecycle.drain(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await; // virtual time
    assert!(!lifecycle.is_accepting());
    finish_tx.send(()).await.unwrap();
    assert_eq!(drain.await.unwrap(), DrainOutcome::Drained);
}

#[tokio::test(start_paused = true)]
async fn drain_force_closes_sessions_past_the_deadline() {
    let lifecycle = Lifecycle::new();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    for _ in 0..2 {
        let force_closed = lifecycle.force_closed();
        let closed_tx = closed_tx.clone();
        lifecycle.spawn(async move {
            force_closed.await;
            closed_tx.send("closed by force").unwrap();
        });
    }
    let started = tokio::time::Instant::now();
    assert_eq!(
        lifecycle.drain(Duration::from_secs(10)).await,
        DrainOutcome::ForcedClose(2)
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(closed_rx.recv().await, Some("closed by force"));
    assert_eq!(closed_rx.recv().await, Some("closed by force"));
}

#[tokio::test(start_paused = true)]
async fn drain_abandons_a_task_that_ignores_the_forced_close() {
    use cloudproxy_transport::lifecycle::FORCE_CLOSE_GRACE;
    let lifecycle = Lifecycle::new();
    // Pre-session work stuck on something that never ends, deaf to shutdown.
    lifecycle.spawn(std::future::pending::<()>());
    let started = tokio::time::Instant::now();
    assert_eq!(
        lifecycle.drain(Duration::from_secs(10)).await,
        DrainOutcome::ForcedClose(1)
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10) + FORCE_CLOSE_GRACE,
        "the deadline, then the grace, and no longer"
    );
}
