//! Drives a sans-I/O [`Connection`] over its stream with the transport's
//! one [`Driver`]: feeds it what the stream reads, writes what it
//! transmits, runs its timers.
//!
//! Before a connection is a session, every wait — reading, writing, and the
//! caller's own work such as the destination check — is bounded by the
//! [`Bounds`]: the handshake deadline and shutdown's force-close. A client
//! that stops reading cannot hold a write, nor a shutdown, past them.

use std::future::Future;
use std::io;
use std::time::Instant;

use cloudproxy_proto::server::{Connection, ServerEvent};
use cloudproxy_transport::driver::{self, Driver};
use cloudproxy_transport::lifecycle::Lifecycle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What ended a wait for the next event.
#[derive(Debug)]
pub(crate) enum Next {
    /// The state machine has something for the I/O layer.
    Event(ServerEvent),
    /// The peer closed its side before the state machine finished.
    PeerClosed,
    /// Reading or writing failed.
    Io(io::Error),
    /// A write waited past the handshake deadline, or shutdown forced the
    /// connection closed.
    Cut(Cut),
}

/// Why pre-session work was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The handshake deadline passed.
    Deadline,
    /// Shutdown's force-close fired.
    Shutdown,
}

impl Cut {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "the handshake deadline passed",
            Self::Shutdown => "the relay is shutting down",
        }
    }
}

/// The limits on a connection's work before it is a session.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    deadline: tokio::time::Instant,
    lifecycle: Lifecycle,
}

impl Bounds {
    /// Bounds ending at `deadline` (the handshake deadline) or at the
    /// lifecycle's force-close, whichever comes first.
    pub(crate) fn new(deadline: Instant, lifecycle: &Lifecycle) -> Self {
        Self {
            deadline: tokio::time::Instant::from_std(deadline),
            lifecycle: lifecycle.clone(),
        }
    }

    /// Runs `work` unless the deadline or shutdown comes first. Work that
    /// is ready at once (a write the socket takes) always completes.
    pub(crate) async fn run<T>(&self, work: impl Future<Output = T>) -> Result<T, Cut> {
        tokio::select! {
            biased;
            done = work => Ok(done),
            () = self.lifecycle.force_closed() => Err(Cut::Shutdown),
            () = tokio::time::sleep_until(self.deadline) => Err(Cut::Deadline),
        }
    }

    /// Runs `work` unless shutdown comes first (for work with a deadline of
    /// its own that may outlast the handshake's, such as the final flush).
    pub(crate) async fn until_shutdown<T>(&self, work: impl Future<Output = T>) -> Result<T, Cut> {
        tokio::select! {
            biased;
            done = work => Ok(done),
            () = self.lifecycle.force_closed() => Err(Cut::Shutdown),
        }
    }
}

/// Reads fed to a connection before it is a session: handshake frames
/// are small, and a handshake's buffer lives only while it runs.
const HANDSHAKE_READ: usize = 4096;

/// A connection's handshake: the sans-I/O [`Connection`] on its stream,
/// which may be any byte stream (TCP today; TLS can plug in here).
pub(crate) type Handshake<S> = Driver<Connection, S>;

/// Starts driving `conn` over `stream`.
pub(crate) fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    conn: Connection,
    stream: S,
) -> Handshake<S> {
    Driver::with_read_buf(conn, stream, HANDSHAKE_READ)
}

/// Writes every queued transmit, within `bounds`.
pub(crate) async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &mut Handshake<S>,
    bounds: &Bounds,
) -> Result<(), Next> {
    match bounds.run(driver.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Next::Io(e)),
        Err(cut) => Err(Next::Cut(cut)),
    }
}

/// Runs the connection until it has an event, flushing its output and
/// honouring its timers on the way, all within `bounds` (the driver's wait
/// is cancel-safe, so a cut loses nothing that matters: the connection
/// ends).
pub(crate) async fn next_event<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &mut Handshake<S>,
    bounds: &Bounds,
) -> Next {
    match bounds.run(driver.next_event()).await {
        Ok(driver::Next::Event(event)) => Next::Event(event),
        Ok(driver::Next::PeerClosed) => Next::PeerClosed,
        Ok(driver::Next::Io(e)) => Next::Io(e),
        Err(cut) => Next::Cut(cut),
    }
}

/// How long the frame that ends a connection (`Error`, `Close`) may wait
/// for a client that is not reading before the connection is closed
/// without it; shutdown cuts it short.
pub(crate) const CLOSING_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the closing frames, within [`CLOSING_FLUSH`] and shutdown.
pub(crate) async fn closing_flush<S: AsyncRead + AsyncWrite + Unpin>(
    driver: &mut Handshake<S>,
    bounds: &Bounds,
) {
    let _ = bounds
        .until_shutdown(tokio::time::timeout(CLOSING_FLUSH, driver.flush()))
        .await;
}

/// Closes a connection after a refusal so that the refusal arrives: client
/// bytes left unread at close would make the kernel answer with a reset,
/// which can discard the refusal before the client reads it. So: FIN first,
/// then drain briefly (at most 4 KiB, at most 500 ms) what the client had
/// already sent. Used by every listener that refuses (native, SOCKS5).
pub(crate) async fn close_after_refusal(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut sink = [0u8; 512];
        let mut left = 4096usize;
        while left > 0 {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}

/// [`close_after_refusal`] for any byte stream (a native connection before
/// its handshake): the same FIN, then the same bounded drain.
pub(crate) async fn close_stream_after_refusal<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 512];
        let mut left = 4096usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
}
