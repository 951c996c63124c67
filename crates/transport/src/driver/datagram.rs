//! The datagram counterpart of [`Driver`](super::Driver): runs a
//! [`Machine`] over a connected UDP socket, one transmit per datagram and
//! one datagram per input, with the same [`next_event`](DatagramDriver::next_event)
//! contract.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use cloudproxy_proto::Machine;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

use super::{Next, Timer, now};

/// Room for the largest datagram a relay sends (a frame or a relay header
/// with its payload); a longer one is truncated by the kernel, and the
/// machine then drops it as malformed.
const RECV_BUF: usize = 64 * 1024;

/// Runs a [`Machine`] over a UDP socket connected to its peer.
///
/// A datagram socket's errors belong to one datagram. A failed send drops
/// that datagram, as the network would. A receive error (an ICMP answer to
/// an earlier send, such as port unreachable) comes back as [`Next::Io`],
/// and the driver can go on, so each caller
/// decides whether an unreachable peer ends its work. [`Next::PeerClosed`]
/// never happens: a datagram peer has no close.
#[derive(Debug)]
pub struct DatagramDriver<M> {
    machine: M,
    socket: UdpSocket,
    /// A datagram waiting for the socket to take it.
    pending: Option<Bytes>,
    recv_buf: Box<[u8]>,
    timer: Timer,
}

impl<M: Machine> DatagramDriver<M> {
    /// A driver for `machine` over `socket`, which must be connected to
    /// the peer (only its datagrams are received). Nothing happens until
    /// it is polled.
    pub fn new(machine: M, socket: UdpSocket) -> Self {
        Self {
            machine,
            socket,
            pending: None,
            recv_buf: vec![0; RECV_BUF].into_boxed_slice(),
            timer: Timer::default(),
        }
    }

    /// The machine, to read its state.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The machine, to act on it between waits; what it queues is sent by
    /// the next [`next_event`](Self::next_event) or [`flush`](Self::flush).
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// The socket, to read its addresses.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Takes the driver apart, for a caller that uses the socket itself
    /// afterwards. Call [`flush`](Self::flush) first: an unsent datagram
    /// is dropped.
    pub fn into_parts(self) -> (M, UdpSocket) {
        (self.machine, self.socket)
    }

    /// Runs I/O and timers until the machine has an event or a send or
    /// receive fails. Cancel-safe.
    pub async fn next_event(&mut self) -> Next<M::Event> {
        poll_fn(|cx| self.poll_next_event(cx)).await
    }

    /// Sends every queued transmit. Does not receive and does not run
    /// timers. Cancel-safe.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_send_all(cx)).await
    }

    /// The poll form of [`next_event`](Self::next_event).
    pub fn poll_next_event(&mut self, cx: &mut Context<'_>) -> Poll<Next<M::Event>> {
        loop {
            // A send that waits for room falls through to receiving.
            if let Poll::Ready(Err(e)) = self.poll_send_all(cx) {
                return Poll::Ready(Next::Io(e));
            }
            if let Some(event) = self.machine.poll_event() {
                return Poll::Ready(Next::Event(event));
            }
            if self.timer.poll(cx, self.machine.poll_timeout()).is_ready() {
                self.machine.handle_timeout(now());
                continue;
            }
            let mut buf = ReadBuf::new(&mut self.recv_buf);
            match self.socket.poll_recv(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    self.machine.handle_input(now(), &self.recv_buf[..n]);
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Next::Io(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Sends the pending datagram and every queued one. A failed send
    /// (a local firewall's EPERM, no route yet) drops its datagram as the
    /// network would and goes on: datagrams may be lost, and the machine's
    /// retransmit and deadline timers already handle loss. Only receive
    /// errors (ICMP answers from the peer's side) reach the owner.
    fn poll_send_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let datagram = match self.pending.take() {
                Some(datagram) => datagram,
                None => match self.machine.poll_transmit() {
                    Some(datagram) => datagram,
                    None => return Poll::Ready(Ok(())),
                },
            };
            match self.socket.poll_send(cx, &datagram) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {
                    self.pending = Some(datagram);
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => {
                    self.pending = Some(datagram);
                    return Poll::Pending;
                }
            }
        }
    }
}
