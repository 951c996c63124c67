//! One message-channel TCP connection: handshake (`Join`), then a reader and
//! a writer running side by side until the connection ends.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cloudproxy_proto::CodecError;
use cloudproxy_proto::ErrorCode;
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{ErrorFrame, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::state::{ConnHandle, Flow, Shared};
use super::stats::bump;
use cloudproxy_transport::lifecycle::Lifecycle;

/// Largest frame body before `Join` (`docs/protocol.md` §3.1).
const HANDSHAKE_MAX_BODY: usize = 2048;
/// How long a last frame (an `Error`, `JoinRefused`) may take to write before
/// the connection is dropped anyway.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Spare room kept in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// A write buffer that grew past this is released after use.
const WRITE_BUF_KEEP: usize = 512 * 1024;

/// Frames from the read half, decoded with [`FrameCodec`].
struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
}

enum ReadError {
    Codec(CodecError),
    Io(std::io::Error),
}

impl FrameReader {
    fn new(rd: OwnedReadHalf, max_body: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::new(),
            codec: FrameCodec::with_max_payload(max_body),
        }
    }

    /// Reads more bytes; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next complete frame already buffered, if any.
    fn decode(&mut self) -> Result<Option<Frame>, CodecError> {
        self.codec.decode(&mut self.buf)
    }

    /// The next frame, reading as needed; `None` at a clean end of stream.
    async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(f) = self.decode().map_err(ReadError::Codec)? {
                return Ok(Some(f));
            }
            if self.fill().await.map_err(ReadError::Io)? == 0 {
                return Ok(None);
            }
        }
    }
}

/// How a joined connection ended.
enum End {
    /// `Leave`: remove the member.
    Leave,
    /// Transport loss (close, reset, idle): the member lingers.
    Lost(String),
    /// Protocol violation: answer with this error, remove the member.
    Protocol(ErrorFrame),
    /// The client sent an `Error`: remove the member.
    PeerError(ErrorFrame),
    /// Another connection took the member over, or it was removed.
    Replaced,
    /// The edge is shutting down.
    Shutdown,
}

/// Writes one last frame, bounded in time, then closes the write side.
async fn write_final(wr: &mut OwnedWriteHalf, frame: &Frame) {
    let bytes = frame.to_bytes();
    let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, async {
        wr.write_all(&bytes).await?;
        wr.shutdown().await
    })
    .await;
}

fn error_frame(code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(ErrorFrame::with_message(code, message))
}

/// Serves one accepted TCP connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    lifecycle: Lifecycle,
    stream: TcpStream,
    peer: SocketAddr,
) {
    bump(&shared.counters.connections);
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, HANDSHAKE_MAX_BODY);
    let force_closed = lifecycle.force_closed();
    tokio::pin!(force_closed);

    let handshake = shared.config.handshake_timeout();
    let first = tokio::select! {
        () = &mut force_closed => return,
        r = tokio::time::timeout(handshake, reader.next()) => r,
    };
    let join = match first {
        Ok(Ok(Some(Frame::Join(join)))) => join,
        Ok(Ok(Some(other))) => {
            bump(&shared.counters.protocol_errors);
            tracing::debug!(%peer, frame = %other.frame_type(), "first frame is not Join");
            let msg = format!("the first frame must be Join, got {}", other.frame_type());
            write_final(&mut wr, &error_frame(ErrorCode::NOT_JOINED, msg)).await;
            return;
        }
        Ok(Ok(None)) => {
            tracing::debug!(%peer, "connection closed before Join");
            return;
        }
        Ok(Err(ReadError::Codec(e))) => {
            bump(&shared.counters.protocol_errors);
            tracing::debug!(%peer, error = %e, "malformed frame before Join");
            write_final(&mut wr, &error_frame(e.wire_code(), e.to_string())).await;
            return;
        }
        Ok(Err(ReadError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "connection failed before Join");
            return;
        }
        Err(_elapsed) => {
            bump(&shared.counters.handshake_timeouts);
            tracing::debug!(%peer, "no Join within the handshake deadline");
            let msg = format!("no Join within {} ms", handshake.as_millis());
            write_final(&mut wr, &error_frame(ErrorCode::HANDSHAKE_TIMEOUT, msg)).await;
            return;
        }
    };

    let handle = match shared.join(&join, peer) {
        Ok(handle) => handle,
        Err(refusal) => {
            write_final(&mut wr, &Frame::JoinRefused(refusal)).await;
            return;
        }
    };
    reader.codec = FrameCodec::with_max_payload(shared.config.max_frame_len);

    let end = tokio::select! {
        biased;
        () = &mut force_closed => End::Shutdown,
        () = handle.cancel.cancelled() => End::Replaced,
        end = read_loop(&shared, &handle, &mut reader) => end,
        end = write_loop(&shared, &handle, &mut wr) => end,
    };

    match end {
        End::Leave => {
            shared.remove(&handle, "left");
            let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, wr.shutdown()).await;
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
            write_final(&mut wr, &Frame::Error(err)).await;
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
            write_final(&mut wr, &error_frame(ErrorCode::SERVER_BUSY, msg)).await;
        }
    }
}

/// Reads frames until the connection ends or the member's state says stop.
async fn read_loop(shared: &Shared, handle: &ConnHandle, reader: &mut FrameReader) -> End {
    let idle = shared.config.idle_timeout();
    let mut frames = Vec::new();
    loop {
        // Everything complete in the buffer is handled as one batch (one
        // lock, one Ack), then the first decode error if there was one.
        let mut error = None;
        loop {
            match reader.decode() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if !frames.is_empty() {
            match shared.on_frames(handle, &mut frames) {
                Flow::Continue => {}
                Flow::Leave => return End::Leave,
                Flow::Gone => return End::Replaced,
                Flow::Protocol(e) => return End::Protocol(e),
                Flow::PeerError(e) => return End::PeerError(e),
            }
        }
        if let Some(e) = error {
            return End::Protocol(ErrorFrame::with_message(e.wire_code(), e.to_string()));
        }
        match tokio::time::timeout(idle, reader.fill()).await {
            Err(_) => return End::Lost(format!("no frame for {} ms", idle.as_millis())),
            Ok(Err(e)) => return End::Lost(format!("read failed: {e}")),
            Ok(Ok(0)) if reader.buf.is_empty() => return End::Lost("connection closed".into()),
            Ok(Ok(0)) => return End::Lost("connection closed inside a frame".into()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes whatever the member's pending queue holds, in order.
async fn write_loop(shared: &Shared, handle: &ConnHandle, wr: &mut OwnedWriteHalf) -> End {
    let mut batch = VecDeque::new();
    let mut buf = BytesMut::new();
    loop {
        if !shared.take_pending(handle, &mut batch) {
            return End::Replaced;
        }
        if batch.is_empty() {
            handle.notify.notified().await;
            continue;
        }
        buf.clear();
        for frame in batch.drain(..) {
            // Every frame the edge builds is within limits; a message is no
            // larger than the one the sender's connection accepted.
            if frame.validate().is_ok() {
                frame.encode(&mut buf);
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            return End::Lost(format!("write failed: {e}"));
        }
        if buf.capacity() > WRITE_BUF_KEEP {
            buf = BytesMut::new();
        }
    }
}
