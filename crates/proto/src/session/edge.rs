//! The media edge's side of one message-channel connection
//! (`docs/protocol.md` §9): the `Join` handshake with its deadline and size
//! limit, frame batches while joined, the idle deadline, and the last frame
//! before closing.
//!
//! The channel and membership table (who is in which channel, each member's
//! reliable outbox and inbox across its connections) spans connections and
//! stays with the edge; this machine is what one connection does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::reader::FrameReader;
use crate::frame::{ErrorFrame, Frame, FrameType, Join};
use crate::{CodecError, ErrorCode};

/// Largest frame body before `Join` (`docs/protocol.md` §3.1).
pub const HANDSHAKE_MAX_BODY: usize = 2048;

/// Limits of the edge's side of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeSessionConfig {
    /// `Join` must arrive within this long of the connection opening.
    pub handshake_timeout: Duration,
    /// A joined connection that receives nothing for this long is lost.
    pub idle_timeout: Duration,
    /// Largest frame body once joined.
    pub max_frame_len: usize,
}

/// Why a connection ended before its `Join` was accepted. The machine has
/// queued the `Error` frame to send.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The first frame was not `Join` (`NOT_JOINED` queued).
    NotJoin(FrameType),
    /// The first bytes did not decode (an `Error` with the codec's code queued).
    Malformed(CodecError),
    /// No `Join` within the handshake deadline (`HANDSHAKE_TIMEOUT` queued).
    Timeout(Duration),
}

/// What one edge connection reports to the edge.
#[derive(Debug)]
pub enum EdgeEvent {
    /// The client's `Join`: answer with [`EdgeSession::accept`] or
    /// [`EdgeSession::refuse`]. Frames that follow wait until then.
    Join(Join),
    /// The handshake failed; close the connection once the queued frame is
    /// written.
    HandshakeFailed(HandshakeFailure),
    /// Every whole frame that arrived in one read, in order (one batch: one
    /// lock of the membership table, one `Ack`).
    Frames(Vec<Frame>),
    /// The client's bytes did not decode, after the frames before them were
    /// reported. The edge answers with an `Error` and removes the member.
    Malformed(CodecError),
    /// Nothing arrived for the idle timeout.
    Idle(Duration),
    /// Every queued frame was handed to the transport: the edge may queue
    /// more.
    Drained,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `Join` until the deadline.
    AwaitingJoin { deadline: Instant },
    /// `Join` reported; waiting for the edge's decision.
    Deciding,
    /// Joined: frames flow.
    Serving,
    /// Over: only what is queued is still written.
    Closed,
}

/// The edge's side of one message-channel connection, over a byte stream.
#[derive(Debug)]
pub struct EdgeSession {
    config: EdgeSessionConfig,
    phase: Phase,
    reader: FrameReader,
    last_rx: Instant,
    transmits: VecDeque<Bytes>,
    events: VecDeque<EdgeEvent>,
    /// A transmit was taken since the queue was last empty.
    report_drained: bool,
}

impl EdgeSession {
    /// A connection that just opened at `now`.
    #[must_use]
    pub fn new(config: EdgeSessionConfig, now: Instant) -> Self {
        Self {
            config,
            phase: Phase::AwaitingJoin {
                deadline: now + config.handshake_timeout,
            },
            reader: FrameReader::new(HANDSHAKE_MAX_BODY),
            last_rx: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            report_drained: false,
        }
    }

    /// Accepts the reported `Join`: the connection serves the member, with
    /// the joined frame limit. Frames that arrived meanwhile are reported.
    pub fn accept(&mut self, now: Instant) {
        if self.phase != Phase::Deciding {
            return;
        }
        self.phase = Phase::Serving;
        self.last_rx = now;
        self.reader.set_max_payload(self.config.max_frame_len);
        self.read_frames();
    }

    /// Refuses the reported `Join` with this `JoinRefused`; the connection
    /// closes once it is written.
    pub fn refuse(&mut self, refusal: ErrorFrame) {
        self.close_with(&Frame::JoinRefused(refusal));
    }

    /// Queues frames to write, in order. Frames that break the protocol's
    /// limits are skipped (the edge builds none).
    pub fn send(&mut self, frames: impl IntoIterator<Item = Frame>) {
        if self.phase != Phase::Closed {
            self.queue(frames);
        }
    }

    fn queue(&mut self, frames: impl IntoIterator<Item = Frame>) {
        let mut buf = BytesMut::new();
        for frame in frames {
            if frame.validate().is_ok() {
                frame.encode(&mut buf);
            }
        }
        if !buf.is_empty() {
            self.transmits.push_back(buf.freeze());
        }
    }

    /// Queues a last frame (even after the machine stopped reading) and
    /// stops reading.
    pub fn close_with(&mut self, frame: &Frame) {
        self.queue([frame.clone()]);
        self.phase = Phase::Closed;
        self.events.clear();
    }

    /// Stops reading; what is queued is still written.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }

    /// Whether part of a frame is buffered (the peer closed mid-frame).
    #[must_use]
    pub fn is_mid_frame(&self) -> bool {
        !self.reader.is_empty()
    }

    /// Whether every queued frame was handed to the transport.
    #[must_use]
    pub fn is_drained(&self) -> bool {
        self.transmits.is_empty()
    }

    fn fail_handshake(&mut self, failure: HandshakeFailure, error: ErrorFrame) {
        self.close_with(&Frame::Error(error));
        self.events.push_back(EdgeEvent::HandshakeFailed(failure));
    }

    fn read_join(&mut self) {
        match self.reader.next_frame() {
            Ok(None) => {}
            Ok(Some(Frame::Join(join))) => {
                self.phase = Phase::Deciding;
                self.events.push_back(EdgeEvent::Join(join));
            }
            Ok(Some(other)) => {
                let found = other.frame_type();
                let message = format!("the first frame must be Join, got {found}");
                self.fail_handshake(
                    HandshakeFailure::NotJoin(found),
                    ErrorFrame::with_message(ErrorCode::NOT_JOINED, message),
                );
            }
            Err(e) => {
                let error = ErrorFrame::with_message(e.wire_code(), e.to_string());
                self.fail_handshake(HandshakeFailure::Malformed(e), error);
            }
        }
    }

    fn read_frames(&mut self) {
        let mut frames = Vec::new();
        let mut error = None;
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if !frames.is_empty() {
            self.events.push_back(EdgeEvent::Frames(frames));
        }
        if let Some(e) = error {
            self.phase = Phase::Closed;
            self.events.push_back(EdgeEvent::Malformed(e));
        }
    }
}

impl crate::Machine for EdgeSession {
    type Event = EdgeEvent;

    fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        self.reader.extend(data);
        match self.phase {
            Phase::AwaitingJoin { .. } => self.read_join(),
            Phase::Serving => {
                self.last_rx = now;
                self.read_frames();
            }
            Phase::Deciding | Phase::Closed => {}
        }
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        let bytes = self.transmits.pop_front()?;
        self.report_drained = true;
        Some(bytes)
    }

    fn poll_event(&mut self) -> Option<EdgeEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if self.report_drained && self.transmits.is_empty() {
            self.report_drained = false;
            return Some(EdgeEvent::Drained);
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingJoin { deadline } => Some(deadline),
            Phase::Serving => Some(self.last_rx + self.config.idle_timeout),
            Phase::Deciding | Phase::Closed => None,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingJoin { deadline } if now >= deadline => {
                let after = self.config.handshake_timeout;
                let message = format!("no Join within {} ms", after.as_millis());
                self.fail_handshake(
                    HandshakeFailure::Timeout(after),
                    ErrorFrame::with_message(ErrorCode::HANDSHAKE_TIMEOUT, message),
                );
            }
            Phase::Serving if now >= self.last_rx + self.config.idle_timeout => {
                self.phase = Phase::Closed;
                self.events
                    .push_back(EdgeEvent::Idle(self.config.idle_timeout));
            }
            _ => {}
        }
    }
}
