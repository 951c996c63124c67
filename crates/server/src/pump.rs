//! Copying bytes both ways between two TCP streams: the data path of the TCP
//! relay and of SOCKS5 CONNECT.
//!
//! - Nothing is lost: bytes that arrived with the handshake are written first,
//!   every read is written in full, and a side that ends its sending is
//!   half-closed on the other side (FIN is forwarded) while the other
//!   direction goes on.
//! - An idle session holds no copy buffer and no pipe: a direction waits for
//!   readiness first and borrows a buffer (or, on Linux, a pipe) only while
//!   there is data to move, which keeps idle sessions to a few hundred bytes
//!   of user-space memory and two descriptors.
//! - On Linux with [`PumpOptions::splice`], bytes move socket → pipe → socket
//!   with splice(2) and never enter user space: about half the relay's CPU
//!   per byte of a copy (see `docs/decisions.md`). Without a pipe (the
//!   process-wide pipe budget is spent, or the system refuses one) a burst is
//!   copied instead; other systems always copy.
//! - It ends when both directions have closed, when neither moved a byte for
//!   the idle timeout, at [`PumpOptions::deadline`] (the session's maximum
//!   lifetime), on an I/O error, or when `cancel` completes. The timers run
//!   beside the copies, so a peer that stops reading cannot hold the pump
//!   past them while a write waits.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

use cloudproxy_transport::net::{try_read_drained, write_all};

#[cfg(target_os = "linux")]
mod splice;

/// How a pump runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpOptions {
    /// Bytes read per system call, per direction, while data flows.
    pub buffer_len: usize,
    /// The session ends when no byte has moved either way for this long.
    pub idle_timeout: Duration,
    /// On Linux, move bytes with splice(2) through a pipe of about
    /// `buffer_len` bytes instead of copying them through user space.
    /// Ignored elsewhere.
    pub splice: bool,
    /// The session ends here whatever the traffic (its maximum lifetime);
    /// `None` for no such limit.
    pub deadline: Option<std::time::Instant>,
}

/// Why a pump ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpEnd {
    /// Both sides closed their sending direction; every byte was delivered.
    Closed,
    /// No traffic either way for the idle timeout.
    IdleTimeout,
    /// [`PumpOptions::deadline`] passed: the session reached its maximum
    /// lifetime.
    SessionLifetime,
    /// Reading from or writing to the client failed.
    ClientError(io::ErrorKind),
    /// Reading from or writing to the upstream failed.
    UpstreamError(io::ErrorKind),
    /// The caller's cancel future completed (shutdown, session revoked…).
    Cancelled,
}

impl PumpEnd {
    /// A short word for logs.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle-timeout",
            Self::SessionLifetime => "session-lifetime",
            Self::ClientError(_) => "client-error",
            Self::UpstreamError(_) => "upstream-error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What a pump moved, and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpReport {
    /// Bytes written to the upstream, including the pending bytes.
    pub client_to_upstream: u64,
    /// Bytes written to the client.
    pub upstream_to_client: u64,
    /// Why it ended.
    pub end: PumpEnd,
}

/// Node-wide byte counters that a pump adds to with every write it makes,
/// so that totals climb while sessions run rather than when they end.
#[derive(Debug, Clone, Copy)]
pub struct LiveTotals<'a> {
    /// Bytes written to upstreams.
    pub client_to_upstream: &'a AtomicU64,
    /// Bytes written to clients.
    pub upstream_to_client: &'a AtomicU64,
}

/// One direction's byte count, and the node's total it also adds to.
pub(crate) struct Counted<'a> {
    moved: &'a AtomicU64,
    total: Option<&'a AtomicU64>,
}

impl<'a> Counted<'a> {
    fn new(moved: &'a AtomicU64, total: Option<&'a AtomicU64>) -> Self {
        Self { moved, total }
    }

    /// Counts `n` bytes written: this session's count and, when given, the
    /// node's total, so both move during the session. Two relaxed adds per
    /// write system call, never per byte.
    pub(crate) fn add(&self, n: u64) {
        self.moved.fetch_add(n, Relaxed);
        if let Some(total) = self.total {
            total.fetch_add(n, Relaxed);
        }
    }
}

/// Copies between `client` and `upstream` until the session ends; see the
/// module docs. `client_pending` are bytes already read from the client
/// (for instance behind a handshake frame) that go to the upstream first.
pub async fn pump(
    client: &TcpStream,
    upstream: &TcpStream,
    client_pending: &[u8],
    options: &PumpOptions,
    cancel: impl Future<Output = ()>,
) -> PumpReport {
    pump_with_totals(client, upstream, client_pending, options, cancel, None).await
}

/// [`pump`], adding the bytes it moves to `totals` with every write as well
/// as to its report (the report's counts are this session's alone).
pub async fn pump_with_totals(
    client: &TcpStream,
    upstream: &TcpStream,
    client_pending: &[u8],
    options: &PumpOptions,
    cancel: impl Future<Output = ()>,
    totals: Option<LiveTotals<'_>>,
) -> PumpReport {
    // Atomics only so the future is `Send`: both directions run in this one
    // task, so there is never contention.
    let last_activity = Activity::new();
    let up_bytes = AtomicU64::new(0);
    let down_bytes = AtomicU64::new(0);
    let up_counted = Counted::new(&up_bytes, totals.map(|t| t.client_to_upstream));
    let down_counted = Counted::new(&down_bytes, totals.map(|t| t.upstream_to_client));

    let upward = async {
        if !client_pending.is_empty() {
            write_all(upstream, client_pending)
                .await
                .map_err(|e| PumpEnd::UpstreamError(e.kind()))?;
            up_counted.add(client_pending.len() as u64);
        }
        copy_one_way(
            client,
            upstream,
            options.buffer_len,
            options.splice,
            &up_counted,
            &last_activity,
            Side::Client,
        )
        .await
    };
    let downward = copy_one_way(
        upstream,
        client,
        options.buffer_len,
        options.splice,
        &down_counted,
        &last_activity,
        Side::Upstream,
    );
    let both = async {
        // try_join: the first error ends the session; both Ok means both
        // directions reached EOF and were half-closed onward.
        tokio::try_join!(upward, downward).map(|_| ())
    };
    let idle = async {
        loop {
            let due = last_activity.last() + options.idle_timeout;
            if Instant::now() >= due {
                return;
            }
            sleep_until(due).await;
        }
    };

    let end = tokio::select! {
        result = both => match result {
            Ok(()) => PumpEnd::Closed,
            Err(end) => end,
        },
        () = idle => PumpEnd::IdleTimeout,
        () = cloudproxy_transport::net::sleep_until_opt(options.deadline.map(Instant::from_std)) => {
            PumpEnd::SessionLifetime
        }
        () = cancel => PumpEnd::Cancelled,
    };
    PumpReport {
        client_to_upstream: up_bytes.load(Relaxed),
        upstream_to_client: down_bytes.load(Relaxed),
        end,
    }
}

/// When a byte last moved, as an offset from the pump's start (atomics, so
/// a pump's future stays `Send`; both pumps share it).
pub(crate) struct Activity {
    start: Instant,
    nanos: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Relaxed);
    }

    pub(crate) fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.nanos.load(Relaxed))
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn error(self, on_source: bool, kind: io::ErrorKind) -> PumpEnd {
        match (self, on_source) {
            (Self::Client, true) | (Self::Upstream, false) => PumpEnd::ClientError(kind),
            (Self::Client, false) | (Self::Upstream, true) => PumpEnd::UpstreamError(kind),
        }
    }
}

/// How a burst of data ended.
enum Burst {
    /// The source has nothing more for now; wait for readiness again.
    Drained,
    /// The source ended its sending (FIN).
    Eof,
}

/// Moves bytes `from` → `to` until `from` reaches EOF, then half-closes `to`.
async fn copy_one_way(
    from: &TcpStream,
    to: &TcpStream,
    buffer_len: usize,
    splice: bool,
    moved: &Counted<'_>,
    last_activity: &Activity,
    source: Side,
) -> Result<(), PumpEnd> {
    loop {
        from.readable()
            .await
            .map_err(|e| source.error(true, e.kind()))?;
        // Data is (probably) there. Most bursts of an interactive session are
        // small (a message, a keepalive): move those with one read and one
        // write, without a pipe or a large buffer.
        let (rest, bulk) = match first_read(from, to, moved, last_activity, source)? {
            First::Drained => continue,
            First::Eof => return half_close(to, source),
            First::Small(rest) => (rest, false),
            First::Bulk(rest) => (rest, true),
        };
        if !rest.is_empty() {
            // Boxed, like the bursts: rare, and kept out of idle tasks.
            Box::pin(finish_write(to, &rest, moved, last_activity, source)).await?;
        }
        if !bulk {
            continue;
        }
        // A bulk burst: borrow a pipe or, without one, a buffer for as long
        // as it flows. The burst futures are boxed so that their state is on
        // the heap only during a burst, not in every idle session's task.
        #[cfg(target_os = "linux")]
        let spliced = match splice.then(|| splice::Pipe::take(buffer_len)).flatten() {
            Some(pipe) => {
                // On an error the pipe may hold bytes: it is dropped with the
                // `?`, never pooled.
                let burst =
                    Box::pin(splice::burst(from, to, &pipe, moved, last_activity, source)).await?;
                // `burst` returns `Ok` only with the pipe empty.
                pipe.put_back();
                Some(burst)
            }
            None => None,
        };
        #[cfg(not(target_os = "linux"))]
        let spliced = {
            let _ = splice; // no splice(2) here: always copy
            None
        };
        let burst = match spliced {
            Some(burst) => burst,
            None => {
                Box::pin(copy_burst(
                    from,
                    to,
                    buffer_len,
                    moved,
                    last_activity,
                    source,
                ))
                .await?
            }
        };
        if let Burst::Eof = burst {
            return half_close(to, source);
        }
    }
}

/// EOF from the source: forward the FIN; the other direction carries on.
fn half_close(to: &TcpStream, source: Side) -> Result<(), PumpEnd> {
    socket2::SockRef::from(to)
        .shutdown(Shutdown::Write)
        .map_err(|e| source.error(false, e.kind()))
}

/// Bytes read first in each burst, into a per-thread buffer. A read that
/// fills it marks a bulk burst (splice or the large buffer take over).
const FIRST_READ_LEN: usize = 16 * 1024;

thread_local! {
    /// The first-read buffer: per worker thread, borrowed only for the
    /// synchronous read and write below, never across an `.await`.
    static FIRST_READ: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; FIRST_READ_LEN].into_boxed_slice());
}

/// How the first read of a burst went.
enum First {
    /// Nothing was queued after all.
    Drained,
    /// The source ended its sending.
    Eof,
    /// A short read: the source is drained. Holds what the destination did
    /// not take at once (usually nothing).
    Small(Vec<u8>),
    /// The read filled the buffer: more is probably queued. Holds what the
    /// destination did not take at once.
    Bulk(Vec<u8>),
}

/// Reads up to [`FIRST_READ_LEN`] bytes and writes what the destination
/// takes without waiting; the rest is returned to be written before anything
/// else. No allocation unless the destination's send buffer is full.
fn first_read(
    from: &TcpStream,
    to: &TcpStream,
    moved: &Counted<'_>,
    last_activity: &Activity,
    source: Side,
) -> Result<First, PumpEnd> {
    FIRST_READ.with(|cell| {
        let mut buf = cell.borrow_mut();
        let n = loop {
            match try_read_drained(from, &mut buf) {
                Ok(0) => return Ok(First::Eof),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(First::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(source.error(true, e.kind())),
            }
        };
        last_activity.touch();
        let mut written = 0;
        while written < n {
            match to.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(source.error(false, e.kind())),
            }
        }
        moved.add(written as u64);
        let rest = buf[written..n].to_vec();
        Ok(if n < buf.len() {
            First::Small(rest)
        } else {
            First::Bulk(rest)
        })
    })
}

/// Writes what [`first_read`] could not, waiting for the destination.
async fn finish_write(
    to: &TcpStream,
    rest: &[u8],
    moved: &Counted<'_>,
    last_activity: &Activity,
    source: Side,
) -> Result<(), PumpEnd> {
    write_all(to, rest)
        .await
        .map_err(|e| source.error(false, e.kind()))?;
    moved.add(rest.len() as u64);
    last_activity.touch();
    Ok(())
}

/// Copies `from` → `to` through a buffer until `from` would block or ends.
async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    buffer_len: usize,
    moved: &Counted<'_>,
    last_activity: &Activity,
    source: Side,
) -> Result<Burst, PumpEnd> {
    let mut buffer = vec![0u8; buffer_len];
    loop {
        match from.try_read(&mut buffer) {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => {
                last_activity.touch();
                write_all(to, &buffer[..n])
                    .await
                    .map_err(|e| source.error(false, e.kind()))?;
                moved.add(n as u64);
                last_activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(source.error(true, e.kind())),
        }
    }
}
