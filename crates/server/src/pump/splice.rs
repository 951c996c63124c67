//! Linux: moving a burst with splice(2), socket → pipe → socket, so the
//! bytes never enter user space (the pipe holds references to the kernel's
//! socket pages).
//!
//! A session holds a pipe only while a burst flows (readiness-first, like
//! the copy buffer): idle sessions hold no pipe and no extra descriptors.
//! An emptied pipe goes back to a small per-thread pool for the next burst
//! of any session, so flowing sessions do not create one per burst. Pipes are
//! budgeted process-wide to an eighth of the descriptor limit; over the
//! budget, or when a pipe cannot be made or enlarged, the burst is copied
//! instead.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Activity, Burst, PumpEnd, Side};

/// Pipes alive in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many pipes may be alive at once: an eighth of the soft descriptor
/// limit (two descriptors each, so a quarter of the descriptors), leaving the
/// rest to sockets.
fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n / 8).unwrap_or(usize::MAX))
    })
}

/// A non-blocking pipe, counted against the budget while it lives.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes to ask for per splice: the pipe's capacity.
    chunk: usize,
    /// The size asked for, to match pooled pipes to later requests.
    len: usize,
}

/// Empty pipes kept per worker thread for the next burst, so a flowing
/// session does not pay `pipe2`, `F_SETPIPE_SZ` and two `close`s per burst.
/// A handful per thread: enough for the bursts a thread interleaves, and a
/// bound on what sits unused (still counted in the budget).
const POOL_PER_THREAD: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe of about `len` bytes from this thread's pool or a new
    /// one, or `None` when over the budget or the system refuses one (the
    /// caller then copies).
    pub(super) fn take(len: usize) -> Option<Self> {
        let pooled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let at = pool.iter().position(|p| p.len == len)?;
            Some(pool.swap_remove(at))
        });
        pooled.or_else(|| Self::new(len))
    }

    /// Gives an empty pipe back for a later burst (or closes it when the
    /// pool is full). Only for a pipe known to be empty: the next burst
    /// must not find another session's bytes in it.
    pub(super) fn put_back(self) {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.push(self);
            }
        });
    }

    /// A pipe of about `len` bytes, or `None` when over the budget or the
    /// system refuses one (the caller then copies).
    fn new(len: usize) -> Option<Self> {
        if LIVE.fetch_add(1, Relaxed) >= budget() {
            LIVE.fetch_sub(1, Relaxed);
            return None;
        }
        let Ok((read, write)) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) else {
            LIVE.fetch_sub(1, Relaxed);
            return None;
        };
        // An unprivileged user over /proc/sys/fs/pipe-user-pages-soft gets
        // two-page pipes that cannot grow: splicing through those is slower
        // than copying, so copy.
        let Ok(chunk) = fcntl_setpipe_size(&write, len) else {
            LIVE.fetch_sub(1, Relaxed);
            return None;
        };
        Some(Self {
            read,
            write,
            chunk,
            len,
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Relaxed);
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

/// Splices `from` → `to` through `pipe` until `from` would block or ends.
/// The pipe is empty whenever this returns `Ok`.
pub(super) async fn burst(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    moved: &super::Counted<'_>,
    last_activity: &Activity,
    source: Side,
) -> Result<Burst, PumpEnd> {
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has
        // nothing queued: `try_io` then clears the readiness.
        let spliced = from.try_io(Interest::READABLE, || {
            rustix::pipe::splice(from, None, &pipe.write, None, pipe.chunk, flags())
                .map_err(io::Error::from)
        });
        let mut left = match spliced {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(source.error(true, e.kind())),
        };
        last_activity.touch();
        while left > 0 {
            to.writable()
                .await
                .map_err(|e| source.error(false, e.kind()))?;
            // The pipe holds `left` bytes, so EAGAIN means the socket's send
            // buffer is full.
            let written = to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, to, None, left, flags())
                    .map_err(io::Error::from)
            });
            match written {
                Ok(0) => return Err(source.error(false, io::ErrorKind::WriteZero)),
                Ok(n) => {
                    left -= n;
                    moved.add(n as u64);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(source.error(false, e.kind())),
            }
        }
        last_activity.touch();
    }
}
