//! One message-channel TCP connection: proto's `EdgeSession` machine run by
//! the one `Driver`, `select!`-ed against the member's pending frames, its
//! replacement and the edge's shutdown.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudproxy_proto::ErrorCode;
use cloudproxy_proto::frame::{ErrorFrame, Frame};
use cloudproxy_proto::session::{EdgeEvent, EdgeSession, EdgeSessionConfig, HandshakeFailure};
use cloudproxy_transport::driver::{Driver, Next};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::state::{ConnHandle, ConnSignal, Flow, Shared};
use super::stats::bump;
use cloudproxy_transport::lifecycle::Lifecycle;

/// How long a last frame (an `Error`, `JoinRefused`) may take to write before
/// the connection is dropped anyway.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

type Channel = Driver<EdgeSession, TcpStream>;

/// What the membership table signals to this connection's task.
#[derive(Debug, Default)]
struct Signal {
    queued: Notify,
    superseded: CancellationToken,
}

impl ConnSignal for Signal {
    fn frames_queued(&self) {
        self.queued.notify_one();
    }

    fn superseded(&self) {
        self.superseded.cancel();
    }
}

/// Why a member's connection was lost (the member lingers).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Lost {
    /// Nothing arrived for the idle timeout.
    #[error("no frame for {} ms", .0.as_millis())]
    Idle(Duration),
    /// Reading or writing failed.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    /// The client closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The client closed the connection in the middle of a frame.
    #[error("connection closed inside a frame")]
    ClosedInsideFrame,
}

/// How a joined connection ended.
enum End {
    /// `Leave`: remove the member.
    Leave,
    /// Transport loss (close, reset, idle): the member lingers.
    Lost(Lost),
    /// Protocol violation: answer with this error, remove the member.
    Protocol(ErrorFrame),
    /// The client sent an `Error`: remove the member.
    PeerError(ErrorFrame),
    /// Another connection took the member over, or it was removed.
    Replaced,
    /// The edge is shutting down.
    Shutdown,
}

/// Writes what the machine still has queued, bounded in time, then closes
/// the write side.
async fn finish(mut channel: Channel) {
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, async {
        channel.flush().await?;
        let (_, mut stream) = channel.into_parts();
        stream.shutdown().await
    })
    .await;
}

/// Serves one accepted TCP connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    stream: TcpStream,
    peer: SocketAddr,
) {
    bump(&shared.counters.connections);
    let config = EdgeSessionConfig {
        handshake_timeout: shared.config.handshake_timeout(),
        idle_timeout: shared.config.idle_timeout(),
        max_frame_len: shared.config.max_frame_len,
    };
    let mut channel = Driver::new(EdgeSession::new(config, Instant::now()), stream);
    let force_closed = lifecycle.force_closed();
    tokio::pin!(force_closed);

    let join = loop {
        let next = tokio::select! {
            () = &mut force_closed => return,
            next = channel.next_event() => next,
        };
        match next {
            Next::Event(EdgeEvent::Join(join)) => break join,
            Next::Event(EdgeEvent::HandshakeFailed(failure)) => {
                match failure {
                    HandshakeFailure::Timeout(_) => {
                        bump(&shared.counters.handshake_timeouts);
                        tracing::debug!(%peer, "no Join within the handshake deadline");
                    }
                    HandshakeFailure::NotJoin(found) => {
                        bump(&shared.counters.protocol_errors);
                        tracing::debug!(%peer, frame = %found, "first frame is not Join");
                    }
                    HandshakeFailure::Malformed(e) => {
                        bump(&shared.counters.protocol_errors);
                        tracing::debug!(%peer, error = %e, "malformed frame before Join");
                    }
                    _ => {}
                }
                finish(channel).await;
                return;
            }
            Next::Event(_) => {}
            Next::PeerClosed => {
                tracing::debug!(%peer, "connection closed before Join");
                return;
            }
            Next::Io(e) => {
                tracing::debug!(%peer, error = %e, "connection failed before Join");
                return;
            }
        }
    };

    let signal = Arc::new(Signal::default());
    let handle = match shared.join(&join, peer, signal.clone()) {
        Ok(handle) => handle,
        Err(refusal) => {
            channel.machine_mut().refuse(refusal);
            finish(channel).await;
            return;
        }
    };
    channel.machine_mut().accept(Instant::now());

    let end = run(&shared, &handle, &signal, &mut channel, &mut force_closed).await;

    match end {
        End::Leave => {
            shared.remove(&handle, "left");
            channel.machine_mut().close();
            finish(channel).await;
        }
        End::Lost(reason) => {
            if let Some(generation) = shared.connection_lost(&handle, &reason) {
                let linger = shared.config.member_linger();
                let shared = shared.clone();
                let force_closed = lifecycle.force_closed();
                let member_id = handle.member_id;
                lifecycle.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(linger) => shared.expire(member_id, generation),
                        () = force_closed => {}
                    }
                });
            }
        }
        End::Protocol(err) => {
            bump(&shared.counters.protocol_errors);
            shared.remove(&handle, &format!("protocol error: {}", err.message));
            channel.machine_mut().close_with(&Frame::Error(err));
            finish(channel).await;
        }
        End::PeerError(err) => {
            let reason = format!("client sent error {}: {}", err.code, err.message);
            shared.remove(&handle, &reason);
        }
        End::Replaced => {
            tracing::debug!(%peer, member_id = handle.member_id, "connection superseded or member removed");
        }
        End::Shutdown => {
            let msg = "the media edge is shutting down";
            let error = ErrorFrame::with_message(ErrorCode::SERVER_BUSY, msg);
            channel.machine_mut().close_with(&Frame::Error(error));
            finish(channel).await;
        }
    }
}

/// Runs a joined connection: hands the member's pending frames to the
/// machine one batch at a time (the next once the last is written), and
/// applies the frames it reads to the shared state.
async fn run(
    shared: &Shared,
    handle: &ConnHandle,
    signal: &Signal,
    channel: &mut Channel,
    force_closed: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> End {
    let mut batch = VecDeque::new();
    loop {
        let drained = channel.machine().is_drained();
        if drained {
            if !shared.take_pending(handle, &mut batch) {
                return End::Replaced;
            }
            if !batch.is_empty() {
                channel.machine_mut().send(batch.drain(..));
                continue;
            }
        }
        tokio::select! {
            biased;
            () = force_closed.as_mut() => return End::Shutdown,
            () = signal.superseded.cancelled() => return End::Replaced,
            () = signal.queued.notified(), if drained => {}
            next = channel.next_event() => match next {
                Next::Event(EdgeEvent::Frames(mut frames)) => {
                    match shared.on_frames(handle, &mut frames) {
                        Flow::Continue => {}
                        Flow::Leave => return End::Leave,
                        Flow::Gone => return End::Replaced,
                        Flow::Protocol(e) => return End::Protocol(e),
                        Flow::PeerError(e) => return End::PeerError(e),
                    }
                }
                Next::Event(EdgeEvent::Malformed(e)) => {
                    return End::Protocol(ErrorFrame::with_message(e.wire_code(), e.to_string()));
                }
                Next::Event(EdgeEvent::Idle(after)) => return End::Lost(Lost::Idle(after)),
                Next::Event(_) => {}
                Next::PeerClosed if channel.machine().is_mid_frame() => {
                    return End::Lost(Lost::ClosedInsideFrame);
                }
                Next::PeerClosed => return End::Lost(Lost::Closed),
                Next::Io(e) => return End::Lost(Lost::Io(e)),
            },
        }
    }
}
