//! The two-way copy, on real loopback sockets: every byte arrives, FIN is
//! forwarded, and each way of ending is reported.

use std::time::Duration;

use cloudproxy_transport::pump::{PumpEnd, PumpOptions, PumpReport, pump};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

fn options(idle: Duration) -> PumpOptions {
    PumpOptions {
        buffer_len: 16 * 1024,
        idle_timeout: idle,
    }
}

/// app ⇄ [relay_client | pump | relay_upstream] ⇄ server
struct Rig {
    app: TcpStream,
    server: TcpStream,
    pump: JoinHandle<PumpReport>,
    cancel: Option<oneshot::Sender<()>>,
}

async fn rig(pending: &'static [u8], idle: Duration) -> Rig {
    let (app, relay_client) = pair().await;
    let (relay_upstream, server) = pair().await;
    let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
    let pump = tokio::spawn(async move {
        let cancel = async {
            let _ = cancel_rx.await;
        };
        pump(
            &relay_client,
            &relay_upstream,
            pending,
            &options(idle),
            cancel,
        )
        .await
    });
    Rig {
        app,
        server,
        pump,
        cancel: Some(cancel_tx),
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn request_response_with_half_close_both_ways() {
    let mut rig = rig(b"", LONG).await;
    rig.app.write_all(b"GET / please").await.unwrap();
    rig.app.shutdown().await.unwrap(); // half-close: app is done sending

    let mut request = Vec::new();
    rig.server.read_to_end(&mut request).await.unwrap(); // sees the FIN
    assert_eq!(request, b"GET / please");

    // The other direction still works after the app's FIN.
    let response = vec![7u8; 300_000];
    rig.server.write_all(&response).await.unwrap();
    rig.server.shutdown().await.unwrap();
    let mut got = Vec::new();
    rig.app.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, response);

    let report = rig.pump.await.unwrap();
    assert_eq!(report.end, PumpEnd::Closed);
    assert_eq!(report.client_to_upstream, 12);
    assert_eq!(report.upstream_to_client, 300_000);
}

#[tokio::test]
async fn server_closing_first_still_delivers_the_app_bytes() {
    let mut rig = rig(b"", LONG).await;
    rig.server.write_all(b"banner").await.unwrap();
    rig.server.shutdown().await.unwrap();
    let mut banner = [0u8; 6];
    rig.app.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"banner");
    assert_eq!(
        rig.app.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "FIN forwarded"
    );

    rig.app.write_all(b"late words").await.unwrap();
    rig.app.shutdown().await.unwrap();
    let mut got = Vec::new();
    rig.server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"late words");
    assert_eq!(rig.pump.await.unwrap().end, PumpEnd::Closed);
}

#[tokio::test]
async fn pending_bytes_go_first() {
    let mut rig = rig(b"already read ", LONG).await;
    rig.app.write_all(b"then streamed").await.unwrap();
    rig.app.shutdown().await.unwrap();
    let mut got = Vec::new();
    rig.server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"already read then streamed");
    drop(rig.server);
    let report = rig.pump.await.unwrap();
    assert_eq!(report.client_to_upstream, 26);
}

#[tokio::test]
async fn idle_session_ends_with_idle_timeout() {
    let mut rig = rig(b"", Duration::from_millis(100)).await;
    let report = rig.pump.await.unwrap();
    assert_eq!(report.end, PumpEnd::IdleTimeout);
    // Both sockets were dropped by the relay: the ends see EOF.
    assert_eq!(rig.app.read(&mut [0u8; 1]).await.unwrap(), 0);
    assert_eq!(rig.server.read(&mut [0u8; 1]).await.unwrap(), 0);
}

#[tokio::test]
async fn cancel_ends_the_session() {
    let mut rig = rig(b"", LONG).await;
    rig.app.write_all(b"x").await.unwrap();
    let mut x = [0u8; 1];
    rig.server.read_exact(&mut x).await.unwrap();
    rig.cancel.take().unwrap().send(()).unwrap();
    let report = rig.pump.await.unwrap();
    assert_eq!(report.end, PumpEnd::Cancelled);
    assert_eq!(report.client_to_upstream, 1);
}

#[tokio::test]
async fn a_reset_is_reported_against_the_side_that_reset() {
    let rig = rig(b"", LONG).await;
    // SO_LINGER 0 makes close() send RST instead of FIN.
    socket2::SockRef::from(&rig.server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rig.server);
    let report = rig.pump.await.unwrap();
    assert_eq!(
        report.end,
        PumpEnd::UpstreamError(std::io::ErrorKind::ConnectionReset)
    );
    drop(rig.app);
}
