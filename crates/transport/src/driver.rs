//! The one driver for every sans-I/O [`Machine`] over a byte stream.
//!
//! [`Driver::next_event`] writes what the machine transmits, reads what the
//! stream delivers, runs the machine's timers, and returns as soon as the
//! machine has an event for its owner. It is generic over any
//! `AsyncRead + AsyncWrite` stream, so a TCP socket, a TLS session or an
//! HTTP CONNECT tunnel all use the same loop (quinn's `ConnectionDriver` is
//! the model). [`DatagramDriver`] is its counterpart over a connected UDP
//! socket, with the same [`Next`] contract.
//!
//! Writing and reading happen in the same poll, so a peer that sends while
//! our own writes wait for room is still read: neither side can deadlock
//! the other on full buffers. Every wait is cancel-safe: the bytes of a
//! half-written transmit stay in the driver, so callers can `select!` on
//! `next_event` against their own work (an app's send, a deadline) and call
//! it again.
//!
//! A peer that sends but does not read cannot make the driver queue without
//! bound: it takes the machine's transmits only while fewer than 64 KiB it
//! took are unwritten, so the rest waits in the machine, which sees it; and
//! it reads nothing while the machine does not
//! [want input](Machine::wants_input) (every read may queue an answer).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use std::time::Instant;
//! use bytes::Bytes;
//! use cloudproxy_proto::Machine;
//! use cloudproxy_transport::driver::{Driver, Next};
//!
//! /// Sends "hello" and reports each read.
//! struct Hello { greeting: Option<Bytes>, read: Vec<usize> }
//! impl Machine for Hello {
//!     type Event = usize;
//!     fn handle_input(&mut self, _now: Instant, data: &[u8]) { self.read.push(data.len()) }
//!     fn poll_transmit(&mut self) -> Option<Bytes> { self.greeting.take() }
//!     fn poll_event(&mut self) -> Option<usize> { self.read.pop() }
//!     fn poll_timeout(&self) -> Option<Instant> { None }
//!     fn handle_timeout(&mut self, _now: Instant) {}
//! }
//!
//! let (ours, mut theirs) = tokio::io::duplex(64);
//! let hello = Hello { greeting: Some(Bytes::from_static(b"hello")), read: Vec::new() };
//! let mut driver = Driver::new(hello, ours);
//! driver.flush().await?;
//! let mut got = [0u8; 5];
//! tokio::io::AsyncReadExt::read_exact(&mut theirs, &mut got).await?;
//! assert_eq!(&got, b"hello");
//! tokio::io::AsyncWriteExt::write_all(&mut theirs, b"hi").await?;
//! assert!(matches!(driver.next_event().await, Next::Event(2)));
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes};
use cloudproxy_proto::Machine;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

mod datagram;

pub use datagram::DatagramDriver;

/// The read buffer: one read feeds the machine up to this many bytes.
const READ_BUF: usize = 16 * 1024;

/// Transmits gathered into one vectored write at most.
const MAX_GATHER: usize = 64;

/// The driver takes the machine's transmits only while fewer than this many
/// bytes it took are unwritten: what a peer does not read beyond that stays
/// in the machine, which sees it and can bound it
/// ([`Machine::wants_input`]).
const TAKE_AHEAD: usize = 64 * 1024;

/// What ended a wait for the machine's next event.
#[derive(Debug)]
pub enum Next<E> {
    /// The machine has something for its owner.
    Event(E),
    /// The peer closed its sending side (end of stream). Transmits queued
    /// before it were written; later calls return this again.
    PeerClosed,
    /// Reading, writing or flushing the stream failed.
    Io(io::Error),
}

/// Runs a [`Machine`] over a byte stream `S`.
#[derive(Debug)]
pub struct Driver<M, S> {
    machine: M,
    stream: S,
    /// Transmits taken from the machine and not yet written, the first
    /// from its first unwritten byte; taken only while fewer than
    /// [`TAKE_AHEAD`] bytes wait here.
    outbox: VecDeque<Bytes>,
    /// Bytes in `outbox`.
    queued: usize,
    /// The owner asked not to read for now.
    reads_paused: bool,
    /// The machine did not want input after its last input (or when a
    /// read was due): when it wants it again, it is first given the chance
    /// to resume what it may have held back.
    held: bool,
    /// Bytes were written since the last completed `poll_flush`.
    unflushed: bool,
    /// The stream reached its end.
    eof: bool,
    read_buf: Box<[u8]>,
    timer: Timer,
}

impl<M: Machine, S: AsyncRead + AsyncWrite + Unpin> Driver<M, S> {
    /// A driver for `machine` over `stream`. Nothing happens until it is
    /// polled ([`next_event`](Self::next_event), [`flush`](Self::flush)).
    pub fn new(machine: M, stream: S) -> Self {
        Self::with_read_buf(machine, stream, READ_BUF)
    }

    /// A driver whose reads feed the machine at most `read_buf` bytes at a
    /// time (at least one): small for a handshake whose machine buffers
    /// little, large for a bulk relay.
    pub fn with_read_buf(machine: M, stream: S, read_buf: usize) -> Self {
        Self {
            machine,
            stream,
            outbox: VecDeque::new(),
            queued: 0,
            reads_paused: false,
            held: false,
            unflushed: false,
            eof: false,
            read_buf: vec![0; read_buf.max(1)].into_boxed_slice(),
            timer: Timer::default(),
        }
    }

    /// The machine, to read its state.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The machine, to act on it between waits (send, close, accept). What
    /// it queues is written by the next [`next_event`](Self::next_event) or
    /// [`flush`](Self::flush).
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// The stream, to read its addresses or options.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Whether the peer closed its sending side.
    pub fn peer_closed(&self) -> bool {
        self.eof
    }

    /// Whether a transmit is still unwritten (it would be lost by
    /// [`into_parts`](Self::into_parts)).
    pub fn has_pending_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Bytes taken from the machine and not yet written: how far a peer
    /// that does not read is behind (at most 64 KiB and one
    /// transmit; the rest waits in the machine).
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Stops (`true`) or resumes (`false`) reading; writes and timers go
    /// on. For an owner whose peer is backed up: every read may queue an
    /// answer, so a peer that does not read is not read either.
    pub fn pause_reads(&mut self, paused: bool) {
        self.reads_paused = paused;
    }

    /// Takes the driver apart, for a caller that hands the stream on (a
    /// relay that becomes a byte pipe). Call [`flush`](Self::flush) first:
    /// unwritten transmits are dropped.
    /// Every byte read so far went to the machine (as a stream-mode bind's
    /// early data, say), so nothing read is lost with the driver.
    pub fn into_parts(self) -> (M, S) {
        (self.machine, self.stream)
    }

    /// Runs I/O and timers until the machine has an event, the peer closes,
    /// or the stream fails. Cancel-safe.
    pub async fn next_event(&mut self) -> Next<M::Event> {
        poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// Writes every queued transmit and flushes the stream. Does not read
    /// and does not run timers. Cancel-safe.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush_all(cx)).await
    }

    /// Drops the first `n` written bytes from the outbox.
    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.outbox.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.outbox.pop_front();
        }
    }

    /// The poll form of [`next_event`](Self::next_event).
    pub fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Next<M::Event>> {
        loop {
            // Write as far as the stream takes; a blocked write leaves its
            // waker registered and falls through to reading.
            if let Poll::Ready(Err(e)) = self.poll_flush_all(cx) {
                return Poll::Ready(Next::Io(e));
            }
            if let Some(event) = self.machine.poll_event() {
                return Poll::Ready(Next::Event(event));
            }
            if self.timer.poll(cx, self.machine.poll_timeout()).is_ready() {
                self.machine.handle_timeout(now());
                continue;
            }
            if !self.machine.wants_input() {
                // Woken by the write that makes room (the machine says no
                // only while it has transmits), or by its timer.
                self.held = true;
                return Poll::Pending;
            }
            if self.held {
                // The machine may hold input it did not decode: let it
                // resume before anything new arrives (or if nothing does,
                // the peer's close included).
                self.feed(0);
                continue;
            }
            if self.eof {
                return Poll::Ready(Next::PeerClosed);
            }
            if self.reads_paused {
                return Poll::Pending;
            }
            let mut buf = ReadBuf::new(&mut self.read_buf);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.eof = true;
                    // Write what is queued before reporting the close.
                    continue;
                }
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    self.feed(n);
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Next::Io(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Gives the machine the first `n` bytes of the read buffer (none: a
    /// chance to resume input it held back).
    fn feed(&mut self, n: usize) {
        self.machine.handle_input(now(), &self.read_buf[..n]);
        // It may have stopped short of the end of its input: once its
        // transmits are taken, it gets to resume.
        self.held = !self.machine.wants_input();
    }

    /// Takes the machine's transmits while fewer than [`TAKE_AHEAD`] bytes
    /// wait unwritten.
    fn take_transmits(&mut self) {
        while self.queued < TAKE_AHEAD {
            let Some(bytes) = self.machine.poll_transmit() else {
                return;
            };
            if !bytes.is_empty() {
                self.queued += bytes.len();
                self.outbox.push_back(bytes);
            }
        }
    }

    /// Writes every queued transmit, gathered into one system call where
    /// the stream supports it, then flushes.
    fn poll_flush_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.take_transmits();
            let Some(first) = self.outbox.front() else {
                break;
            };
            let n = if self.outbox.len() > 1 && self.stream.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_GATHER];
                let mut count = 0;
                for (slot, bytes) in slices.iter_mut().zip(&self.outbox) {
                    *slot = IoSlice::new(bytes);
                    count += 1;
                }
                ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..count]))?
            } else {
                ready!(Pin::new(&mut self.stream).poll_write(cx, first))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// The time handed to a machine: tokio's clock, so a test with a paused
/// clock moves the machine's time with the driver's timers.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A machine's timer, re-armed when its deadline moves.
#[derive(Debug, Default)]
struct Timer(Option<(Instant, Pin<Box<Sleep>>)>);

impl Timer {
    /// Ready when `deadline` has passed; `None` disarms the timer.
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> Poll<()> {
        let Some(deadline) = deadline else {
            self.0 = None;
            return Poll::Pending;
        };
        let at = tokio::time::Instant::from_std(deadline);
        match &mut self.0 {
            Some((armed, sleep)) if *armed == deadline => sleep.as_mut().poll(cx),
            Some((armed, sleep)) => {
                *armed = deadline;
                sleep.as_mut().reset(at);
                sleep.as_mut().poll(cx)
            }
            None => {
                let mut sleep = Box::pin(tokio::time::sleep_until(at));
                let polled = sleep.as_mut().poll(cx);
                self.0 = Some((deadline, sleep));
                polled
            }
        }
    }
}
