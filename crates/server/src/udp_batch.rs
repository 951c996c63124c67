//! Batched reads of a relay socket: one `recvmmsg` fills up to [`BATCH`]
//! slots, and with GRO each slot may hold several datagrams of one sender
//! (quinn-udp does the system calls). The buffers are per worker thread, so
//! neither a relay socket nor a binding holds one while idle.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use cloudproxy_proto::frame::MAX_DATAGRAM_PAYLOAD;
use cloudproxy_proto::udp::UDP_HEADER_LEN;
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Slots per read (quinn-udp's `recvmmsg` batch).
pub(crate) const BATCH: usize = quinn_udp::BATCH_SIZE;

/// One slot: the largest UDP payload, which is also the most GRO coalesces.
const SLOT: usize = 64 * 1024;

/// Largest GSO send (an IPv4 UDP payload is at most 65 507 bytes).
pub(crate) const GSO_MAX_BYTES: usize = 65_000;

/// The buffers one worker thread lends to whichever relay task it runs.
pub(crate) struct Batch {
    /// `BATCH` slots of `SLOT` bytes (zero pages until first written).
    storage: Vec<u8>,
    meta: Vec<RecvMeta>,
    /// Payloads gathered for one GSO send upstream.
    pub(crate) gather: Vec<u8>,
    /// A datagram from a destination, after room for the binding's header;
    /// one byte more than allowed, so an oversized one shows as too long.
    pub(crate) down: Vec<u8>,
}

thread_local! {
    static BATCH_BUFS: RefCell<Batch> = RefCell::new(Batch {
        storage: vec![0u8; BATCH * SLOT],
        meta: vec![RecvMeta::default(); BATCH],
        gather: Vec::with_capacity(GSO_MAX_BYTES),
        down: vec![0u8; UDP_HEADER_LEN + MAX_DATAGRAM_PAYLOAD + 1],
    });
}

/// Runs `f` with this thread's buffers. `f` must not await (it cannot: it
/// is a plain closure) and must not call `with_batch` again.
pub(crate) fn with_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    BATCH_BUFS.with(|cell| f(&mut cell.borrow_mut()))
}

impl Batch {
    /// One non-blocking batched read; returns how many slots were filled
    /// (`WouldBlock` when none, which also re-arms tokio's readiness).
    pub(crate) fn recv(&mut self, state: &UdpSocketState, socket: &UdpSocket) -> io::Result<usize> {
        let mut chunks = self.storage.chunks_mut(SLOT);
        let mut bufs: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let meta = &mut self.meta;
        socket.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(socket), &mut bufs, meta)
        })
    }

    /// Calls `f(from, datagram, gather)` for every datagram of the first `n`
    /// slots, in order; a GRO slot is split at its stride. An empty datagram
    /// is passed on too (the caller counts it as malformed).
    pub(crate) fn for_each(
        &mut self,
        n: usize,
        mut f: impl FnMut(SocketAddr, &[u8], &mut Vec<u8>),
    ) {
        let Self {
            storage,
            meta,
            gather,
            ..
        } = self;
        for (m, slot) in meta.iter().zip(storage.chunks(SLOT)).take(n) {
            let data = &slot[..m.len.min(SLOT)];
            if data.is_empty() {
                f(m.addr, data, gather);
                continue;
            }
            let stride = if m.stride == 0 { data.len() } else { m.stride };
            for datagram in data.chunks(stride) {
                f(m.addr, datagram, gather);
            }
        }
    }
}

/// The kernel's UDP send offload as quinn-udp found it, probed once on a
/// socket of its own: the sockets it is used with (a UDP-over-TCP
/// session's upstream) keep their ordinary options, so a datagram too large
/// for the path is still fragmented as before rather than refused.
fn send_offload() -> Option<&'static UdpSocketState> {
    static STATE: std::sync::OnceLock<Option<UdpSocketState>> = std::sync::OnceLock::new();
    STATE
        .get_or_init(|| {
            let probe = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).ok()?;
            UdpSocketState::new(UdpSockRef::from(&probe)).ok()
        })
        .as_ref()
}

/// What a run of sends carried: datagrams and bytes sent, datagrams lost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) dropped: u64,
}

/// Datagrams for one connected upstream socket, sent in runs of equal-sized
/// segments, one GSO `sendmsg` per run instead of one `send` per datagram:
/// a UDP-over-TCP read brings dozens of datagrams at once, and their system
/// calls were the session's whole cost.
pub(crate) struct UpstreamRuns<'a> {
    socket: &'a UdpSocket,
    /// The address `socket` is connected to.
    destination: SocketAddr,
    gather: &'a mut Vec<u8>,
    max_segments: usize,
    /// The run's segment size (its first datagram's length).
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run (it may only be the last segment).
    closed: bool,
    tally: Tally,
}

impl<'a> UpstreamRuns<'a> {
    /// Runs to `socket`, connected to `destination`, gathered in `gather`
    /// (emptied first).
    pub(crate) fn new(
        socket: &'a UdpSocket,
        destination: SocketAddr,
        gather: &'a mut Vec<u8>,
    ) -> Self {
        gather.clear();
        Self {
            socket,
            destination,
            gather,
            max_segments: send_offload().map_or(1, UdpSocketState::max_gso_segments),
            segment: 0,
            count: 0,
            closed: false,
            tally: Tally::default(),
        }
    }

    /// Adds a datagram, sending the pending run first when it cannot join.
    pub(crate) fn push(&mut self, payload: &[u8]) {
        let len = payload.len();
        let joins = !self.closed
            && len > 0
            && len <= self.segment
            && self.count < self.max_segments
            && self.gather.len() + len <= GSO_MAX_BYTES;
        if self.count > 0 && !joins {
            self.send();
        }
        if self.count == 0 {
            self.segment = len;
        }
        self.gather.extend_from_slice(payload);
        self.count += 1;
        // An empty payload would vanish inside a GSO send: it goes alone.
        self.closed = len < self.segment || len == 0;
    }

    /// Sends what is pending and says what all runs carried.
    pub(crate) fn finish(mut self) -> Tally {
        self.send();
        self.tally
    }

    fn send(&mut self) {
        let count = std::mem::take(&mut self.count) as u64;
        if count == 0 {
            return;
        }
        let Some(state) = send_offload() else {
            self.send_each(|socket, datagram| socket.try_send(datagram).map(drop));
            return;
        };
        let destination = self.destination;
        if count > 1
            && state
                .try_send(
                    UdpSockRef::from(self.socket),
                    &transmit(destination, self.gather, Some(self.segment)),
                )
                .is_ok()
        {
            self.tally.packets += count;
            self.tally.bytes += self.gather.len() as u64;
            self.gather.clear();
            return;
        }
        // One at a time: a lone datagram, or a run the offload refused (a
        // segment larger than the route's MTU is refused in a GSO send but
        // fragmented in a plain one). quinn-udp sends without waiting for
        // tokio to have seen the socket writable.
        self.send_each(|socket, datagram| {
            state.try_send(
                UdpSockRef::from(socket),
                &transmit(destination, datagram, None),
            )
        });
    }

    /// Sends the gathered datagrams one by one with `send`, counting each.
    fn send_each(&mut self, send: impl Fn(&UdpSocket, &[u8]) -> io::Result<()>) {
        let (socket, tally) = (self.socket, &mut self.tally);
        let mut send_one = |datagram: &[u8]| match send(socket, datagram) {
            Ok(()) => {
                tally.packets += 1;
                tally.bytes += datagram.len() as u64;
            }
            Err(_) => tally.dropped += 1,
        };
        if self.gather.is_empty() {
            send_one(&[]);
        } else {
            self.gather.chunks(self.segment).for_each(send_one);
        }
        self.gather.clear();
    }
}

/// One send of `contents` to `destination`, in `segment_size` pieces if set.
fn transmit(
    destination: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> quinn_udp::Transmit<'_> {
    quinn_udp::Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every datagram arrives once, whole and in order, however the runs
    /// split them: equal sizes join, a shorter one ends its run, a longer
    /// one and an empty one start anew.
    #[tokio::test]
    async fn upstream_runs_deliver_every_datagram_whole_and_in_order() {
        let receiver = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let destination = receiver.local_addr().unwrap();
        let upstream = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        upstream.connect(destination).await.unwrap();
        let sizes = [100, 100, 100, 60, 100, 0, 1200, 1200, 1200, 1200, 7, 300];
        let datagrams: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| vec![i as u8; len])
            .collect();
        let mut gather = vec![9u8; 3];
        let mut runs = UpstreamRuns::new(&upstream, destination, &mut gather);
        for datagram in &datagrams {
            runs.push(datagram);
        }
        let tally = runs.finish();
        let total: usize = sizes.iter().sum();
        assert_eq!(
            tally,
            Tally {
                packets: sizes.len() as u64,
                bytes: total as u64,
                dropped: 0
            }
        );
        let mut buf = [0u8; 2048];
        for expected in &datagrams {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &expected[..]);
        }
        assert!(gather.is_empty(), "the gather buffer is left empty");
    }
}
