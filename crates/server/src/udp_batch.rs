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
