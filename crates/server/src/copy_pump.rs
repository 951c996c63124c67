//! Copying bytes both ways between any client byte stream (a TLS session)
//! and a TCP upstream: the stream-mode data path where splice(2) cannot
//! reach, because the client's bytes must pass through user space to be
//! decrypted and encrypted.
//!
//! The same contract as [`pump`](crate::pump): bytes that arrived with the
//! handshake go first, nothing is lost, a side that ends its sending is
//! half-closed on the other side, and the session ends on both closes, the
//! idle timeout, the session's lifetime, an I/O error or `cancel`. Bytes
//! are counted with every write, so live totals climb during the session.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, sleep_until};

use crate::pump::{Activity, LiveTotals, PumpEnd, PumpOptions, PumpReport};

/// Bytes per read in each direction: one TLS record's plaintext, so a
/// session holds two such buffers rather than two of the splice pump's
/// `relay_buffer_len`.
const COPY_BUF: usize = 16 * 1024;

/// Copies between `client` and `upstream` until the session ends (see the
/// module docs). `client_pending` goes to the upstream first.
pub(crate) async fn copy_pump<C, U>(
    client: &mut C,
    upstream: &mut U,
    client_pending: &[u8],
    options: &PumpOptions,
    cancel: impl Future<Output = ()>,
    totals: Option<LiveTotals<'_>>,
) -> PumpReport
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let idle = async {
        loop {
            let due = activity.last() + options.idle_timeout;
            if Instant::now() >= due {
                return;
            }
            sleep_until(due).await;
        }
    };
    let (activity_ref, up_ref, down_ref) = (&activity, &up, &down);
    let copy = async move {
        let mut client = Watched {
            stream: client,
            written: down_ref,
            total: totals.map(|t| t.upstream_to_client),
            activity: activity_ref,
            failed: None,
        };
        let mut upstream = Watched {
            stream: upstream,
            written: up_ref,
            total: totals.map(|t| t.client_to_upstream),
            activity: activity_ref,
            failed: None,
        };
        let copied = async {
            if !client_pending.is_empty() {
                upstream.write_all(client_pending).await?;
            }
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUF, COPY_BUF)
                .await
        }
        .await;
        match copied {
            Ok(_) => PumpEnd::Closed,
            // The side whose own I/O failed; a failure neither side noted
            // cannot happen, but is the client's.
            Err(e) => client
                .failed
                .map(PumpEnd::ClientError)
                .or(upstream.failed.map(PumpEnd::UpstreamError))
                .unwrap_or(PumpEnd::ClientError(e.kind())),
        }
    };
    let end = tokio::select! {
        end = copy => end,
        () = idle => PumpEnd::IdleTimeout,
        () = cloudproxy_transport::net::sleep_until_opt(options.deadline.map(Instant::from_std)) => {
            PumpEnd::SessionLifetime
        }
        () = cancel => PumpEnd::Cancelled,
    };
    PumpReport {
        client_to_upstream: up.load(Relaxed),
        upstream_to_client: down.load(Relaxed),
        end,
    }
}

/// One side of the copy: counts what is written to it, notes activity,
/// and remembers its own I/O error so the session's end names the side.
struct Watched<'a, S> {
    stream: &'a mut S,
    written: &'a AtomicU64,
    total: Option<&'a AtomicU64>,
    activity: &'a Activity,
    failed: Option<io::ErrorKind>,
}

impl<S> Watched<'_, S> {
    fn note<T>(&mut self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result {
            self.failed.get_or_insert(e.kind());
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        this.note(polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            let n64 = n as u64;
            this.written.fetch_add(n64, Relaxed);
            if let Some(total) = this.total {
                total.fetch_add(n64, Relaxed);
            }
            this.activity.touch();
        }
        this.note(polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.stream).poll_flush(cx);
        this.note(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.stream).poll_shutdown(cx);
        this.note(polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn options() -> PumpOptions {
        PumpOptions {
            buffer_len: 4096,
            idle_timeout: Duration::from_secs(30),
            splice: false,
            deadline: None,
        }
    }

    #[tokio::test]
    async fn pending_bytes_first_both_ways_then_closed() {
        let (mut client, mut client_peer) = tokio::io::duplex(1024);
        let (mut upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let peers = async {
            client_peer.write_all(b" world").await.unwrap();
            client_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            upstream_peer.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello world");
            upstream_peer.write_all(b"back").await.unwrap();
            upstream_peer.shutdown().await.unwrap();
            let mut back = Vec::new();
            client_peer.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"back");
        };
        let options = options();
        let pump = copy_pump(
            &mut client,
            &mut upstream,
            b"hello",
            &options,
            std::future::pending(),
            None,
        );
        let (report, ()) = tokio::join!(pump, peers);
        assert_eq!(report.end, PumpEnd::Closed);
        assert_eq!(report.client_to_upstream, 11);
        assert_eq!(report.upstream_to_client, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_ends_at_the_idle_timeout() {
        let (mut client, _client_peer) = tokio::io::duplex(64);
        let (mut upstream, _upstream_peer) = tokio::io::duplex(64);
        let report = copy_pump(
            &mut client,
            &mut upstream,
            b"",
            &options(),
            std::future::pending(),
            None,
        )
        .await;
        assert_eq!(report.end, PumpEnd::IdleTimeout);
    }
}
