//! The two-way copy, on real loopback sockets: every byte arrives, FIN is
//! forwarded, and each way of ending is reported. Every case runs twice:
//! with buffer copies and with splice(2) (which on other systems than Linux
//! falls back to copies).

use std::time::Duration;

use cloudproxy_server::pump::{PumpEnd, PumpOptions, PumpReport, pump};
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

fn options(idle: Duration, splice: bool) -> PumpOptions {
    PumpOptions {
        buffer_len: 16 * 1024,
        idle_timeout: idle,
        splice,
        deadline: None,
    }
}

/// Runs the async test case `$name(splice: bool)` once per method.
macro_rules! both_methods {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn copy() {
                super::$name(false).await;
            }
            #[tokio::test]
            async fn splice() {
                super::$name(true).await;
            }
        }
    )*};
}

both_methods!(
    request_response_with_half_close_both_ways,
    server_closing_first_still_delivers_the_app_bytes,
    pending_bytes_go_first,
    idle_session_ends_with_idle_timeout,
    cancel_ends_the_session,
    a_reset_is_reported_against_the_side_that_reset,
    a_client_reset_is_reported_against_the_client,
    large_transfers_both_ways_at_once_arrive_in_order,
    large_pending_bytes_then_a_large_stream_keep_their_order,
    a_reset_while_bytes_flow_is_the_upstreams_error,
    a_client_reset_while_bytes_flow_is_the_clients_error,
    sessions_one_after_another_get_only_their_own_bytes,
);

/// app ⇄ [relay_client | pump | relay_upstream] ⇄ server
struct Rig {
    app: TcpStream,
    server: TcpStream,
    pump: JoinHandle<PumpReport>,
    cancel: Option<oneshot::Sender<()>>,
}

async fn rig(pending: &'static [u8], idle: Duration, splice: bool) -> Rig {
    rig_with(pending.to_vec(), idle, splice).await
}

async fn rig_with(pending: Vec<u8>, idle: Duration, splice: bool) -> Rig {
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
            &pending,
            &options(idle, splice),
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

async fn request_response_with_half_close_both_ways(splice: bool) {
    let mut rig = rig(b"", LONG, splice).await;
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

async fn server_closing_first_still_delivers_the_app_bytes(splice: bool) {
    let mut rig = rig(b"", LONG, splice).await;
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

async fn pending_bytes_go_first(splice: bool) {
    let mut rig = rig(b"already read ", LONG, splice).await;
    rig.app.write_all(b"then streamed").await.unwrap();
    rig.app.shutdown().await.unwrap();
    let mut got = Vec::new();
    rig.server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"already read then streamed");
    drop(rig.server);
    let report = rig.pump.await.unwrap();
    assert_eq!(report.client_to_upstream, 26);
}

async fn idle_session_ends_with_idle_timeout(splice: bool) {
    let mut rig = rig(b"", Duration::from_millis(100), splice).await;
    let report = rig.pump.await.unwrap();
    assert_eq!(report.end, PumpEnd::IdleTimeout);
    // Both sockets were dropped by the relay: the ends see EOF.
    assert_eq!(rig.app.read(&mut [0u8; 1]).await.unwrap(), 0);
    assert_eq!(rig.server.read(&mut [0u8; 1]).await.unwrap(), 0);
}

async fn cancel_ends_the_session(splice: bool) {
    let mut rig = rig(b"", LONG, splice).await;
    rig.app.write_all(b"x").await.unwrap();
    let mut x = [0u8; 1];
    rig.server.read_exact(&mut x).await.unwrap();
    rig.cancel.take().unwrap().send(()).unwrap();
    let report = rig.pump.await.unwrap();
    assert_eq!(report.end, PumpEnd::Cancelled);
    assert_eq!(report.client_to_upstream, 1);
}

async fn a_reset_is_reported_against_the_side_that_reset(splice: bool) {
    let rig = rig(b"", LONG, splice).await;
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

async fn a_client_reset_is_reported_against_the_client(splice: bool) {
    let rig = rig(b"", LONG, splice).await;
    socket2::SockRef::from(&rig.app)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(rig.app);
    let report = rig.pump.await.unwrap();
    assert_eq!(
        report.end,
        PumpEnd::ClientError(std::io::ErrorKind::ConnectionReset)
    );
    drop(rig.server);
}

/// A position-dependent byte stream: a reordered, lost or repeated chunk
/// anywhere shows up as a mismatch at its offset.
struct Pattern {
    state: u64,
    offset: u64,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            offset: 0,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            // One xorshift step per 8 bytes, mixed with the offset.
            if self.offset % 8 == 0 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
            }
            *b = (self.state >> (8 * (self.offset % 8))) as u8 ^ (self.offset >> 16) as u8;
            self.offset += 1;
        }
    }
}

/// Writes `total` pattern bytes in uneven chunks, then half-closes.
async fn send_pattern(mut to: impl AsyncWriteExt + Unpin, seed: u64, total: usize) {
    let mut pattern = Pattern::new(seed);
    let mut chunk = vec![0u8; 100_003];
    let mut left = total;
    let mut round = 0usize;
    while left > 0 {
        // Chunk sizes vary from 1 byte to 100 kB.
        let n = left.min(1 + (round * 7_919) % chunk.len());
        pattern.fill(&mut chunk[..n]);
        to.write_all(&chunk[..n]).await.unwrap();
        left -= n;
        round += 1;
    }
    to.shutdown().await.unwrap();
}

/// Reads to EOF in small reads (so the relay meets back-pressure), checking
/// every byte against the pattern; returns the count.
async fn expect_pattern(mut from: impl AsyncReadExt + Unpin, seed: u64) -> usize {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 7_000];
    let mut want = vec![0u8; buf.len()];
    let mut got = 0usize;
    loop {
        let n = from.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        pattern.fill(&mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "bytes {got}..{} differ from what was sent",
            got + n
        );
        got += n;
    }
}

const LARGE: usize = 24 << 20;

async fn large_transfers_both_ways_at_once_arrive_in_order(splice: bool) {
    let mut rig = rig(b"", LONG, splice).await;
    let (app_read, app_write) = rig.app.split();
    let (server_read, server_write) = rig.server.split();
    let (up, down, (), ()) = tokio::join!(
        expect_pattern(server_read, 1),
        expect_pattern(app_read, 2),
        send_pattern(app_write, 1, LARGE),
        send_pattern(server_write, 2, LARGE + 5),
    );
    assert_eq!((up, down), (LARGE, LARGE + 5));
    let report = rig.pump.await.unwrap();
    assert_eq!(report.end, PumpEnd::Closed);
    assert_eq!(report.client_to_upstream, LARGE as u64);
    assert_eq!(report.upstream_to_client, LARGE as u64 + 5);
}

/// Sessions pumped one after another on the same thread (where emptied
/// pipes are pooled and reused) each deliver exactly their own bytes, and a
/// session that ends mid-flow by reset leaves nothing behind for the next.
async fn sessions_one_after_another_get_only_their_own_bytes(splice: bool) {
    for seed in 10..14u64 {
        if seed == 11 {
            // The server resets while bytes flow: the pipe in use may hold
            // bytes then, and must not be reused.
            a_reset_while_bytes_flow_is_the_upstreams_error(splice).await;
            continue;
        }
        let mut rig = rig(b"", LONG, splice).await;
        let (_, app_write) = rig.app.split();
        let (server_read, _) = rig.server.split();
        let size = (4 << 20) + seed as usize;
        let (got, ()) = tokio::join!(
            expect_pattern(server_read, seed),
            send_pattern(app_write, seed, size),
        );
        assert_eq!(got, size, "session {seed}");
        rig.server.shutdown().await.unwrap();
        let report = rig.pump.await.unwrap();
        assert_eq!(report.end, PumpEnd::Closed, "session {seed}");
        assert_eq!(report.client_to_upstream, size as u64, "session {seed}");
    }
}

async fn large_pending_bytes_then_a_large_stream_keep_their_order(splice: bool) {
    // The first 3 MB of the pattern were "read with the handshake"; the
    // app then sends the rest.
    const PENDING: usize = 3_000_000;
    let mut pending = vec![0u8; PENDING];
    let mut pattern = Pattern::new(3);
    pattern.fill(&mut pending);
    let mut rig = rig_with(pending, LONG, splice).await;
    let (_, app_write) = rig.app.split();
    let (server_read, _) = rig.server.split();
    let send_rest = async move {
        let mut app_write = app_write;
        let mut chunk = vec![0u8; 65_536];
        for _ in 0..200 {
            pattern.fill(&mut chunk);
            app_write.write_all(&chunk).await.unwrap();
        }
        app_write.shutdown().await.unwrap();
    };
    let (got, ()) = tokio::join!(expect_pattern(server_read, 3), send_rest);
    assert_eq!(got, PENDING + 200 * 65_536);
    drop(rig.server);
    drop(rig.app);
    let report = rig.pump.await.unwrap();
    assert_eq!(report.client_to_upstream, (PENDING + 200 * 65_536) as u64);
}

/// The app keeps sending until the relay gives up; returns what it sent.
async fn send_until_refused(mut to: impl AsyncWriteExt + Unpin) -> u64 {
    let chunk = vec![0x42u8; 64 * 1024];
    let mut sent = 0u64;
    // Bounded: the relay closes both sockets when the pump ends.
    for _ in 0..1_000_000 {
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    sent
}

async fn a_reset_while_bytes_flow_is_the_upstreams_error(splice: bool) {
    let Rig {
        mut app,
        mut server,
        pump,
        cancel: _cancel,
    } = rig(b"", LONG, splice).await;
    let sender = tokio::spawn(async move {
        let (_, write) = app.split();
        send_until_refused(write).await
    });
    // Take a megabyte, so the relay is mid-stream, then reset.
    let mut first = vec![0u8; 1 << 20];
    server.read_exact(&mut first).await.unwrap();
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);
    let report = pump.await.unwrap();
    assert!(
        matches!(report.end, PumpEnd::UpstreamError(_)),
        "{:?}",
        report.end
    );
    assert!(report.client_to_upstream >= 1 << 20);
    sender.await.unwrap();
}

async fn a_client_reset_while_bytes_flow_is_the_clients_error(splice: bool) {
    let Rig {
        mut app,
        mut server,
        pump,
        cancel: _cancel,
    } = rig(b"", LONG, splice).await;
    let sender = tokio::spawn(async move {
        let (_, write) = server.split();
        send_until_refused(write).await
    });
    let mut first = vec![0u8; 1 << 20];
    app.read_exact(&mut first).await.unwrap();
    socket2::SockRef::from(&app)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(app);
    let report = pump.await.unwrap();
    assert!(
        matches!(report.end, PumpEnd::ClientError(_)),
        "{:?}",
        report.end
    );
    assert!(report.upstream_to_client >= 1 << 20);
    sender.await.unwrap();
}

both_methods!(the_session_deadline_ends_a_pump_stuck_on_a_client_that_does_not_read);

/// The upstream streams to an app that never reads: the pump's write to the
/// app waits, yet the session still ends at its deadline.
async fn the_session_deadline_ends_a_pump_stuck_on_a_client_that_does_not_read(splice: bool) {
    let (_app, relay_client) = pair().await;
    let (relay_upstream, mut server) = pair().await;
    let mut options = options(LONG, splice);
    options.deadline = Some(std::time::Instant::now() + Duration::from_millis(300));
    // Bounded: 64 MiB at most, far more than the sockets can buffer.
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        for _ in 0..1024 {
            if server.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        pump(
            &relay_client,
            &relay_upstream,
            &[],
            &options,
            std::future::pending(),
        ),
    )
    .await
    .expect("the pump ends at its deadline");
    assert_eq!(report.end, PumpEnd::SessionLifetime);
    assert!(report.upstream_to_client > 0);
    drop((relay_client, relay_upstream));
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer sees the close")
        .unwrap();
}
