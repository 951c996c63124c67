//! Starting and stopping: the accept loops and graceful shutdown.
//!
//! Shutdown has two phases. [`Lifecycle::stop_accepting`] closes the
//! listeners while live sessions go on; [`Lifecycle::drain`] waits for them up
//! to a deadline and then fires the force-close signal every session listens
//! to, so the process exits in bounded time without cutting a transfer that
//! was about to finish.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Lifecycle::drain`] waits, after the forced close, for tasks
/// to finish closing before it abandons them.
pub const FORCE_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The shared start/stop state of one proxy node.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    accepting: CancellationToken,
    force_close: CancellationToken,
    tasks: TaskTracker,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every session ended by itself.
    Drained,
    /// The deadline passed; this many tasks were told to close.
    ForcedClose(usize),
}

impl fmt::Display for DrainOutcome {
    /// `Drained`, or `ForcedClose` with how many tasks were closed: the
    /// outcome's name first, so logs can be searched for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Drained => f.write_str("Drained"),
            Self::ForcedClose(n) => write!(f, "ForcedClose, {n} still running at the deadline"),
        }
    }
}

impl Lifecycle {
    /// A fresh lifecycle: accepting, nothing running.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a session or listener task that shutdown waits for.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Completes when listeners should stop accepting.
    pub fn stopped_accepting(&self) -> impl Future<Output = ()> + Send + 'static {
        self.accepting.clone().cancelled_owned()
    }

    /// Completes when sessions must close now.
    pub fn force_closed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.force_close.clone().cancelled_owned()
    }

    /// Whether the node is still accepting.
    #[must_use]
    pub fn is_accepting(&self) -> bool {
        !self.accepting.is_cancelled()
    }

    /// Phase one: listeners close; sessions go on.
    pub fn stop_accepting(&self) {
        self.accepting.cancel();
    }

    /// Phase two: waits up to `deadline` for every task, then force-closes the
    /// rest and waits up to [`FORCE_CLOSE_GRACE`] for them to finish
    /// closing. Tasks still running after that are abandoned (logged with
    /// their number): the process can exit, and they end with the runtime.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        self.stop_accepting();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return DrainOutcome::Drained;
        }
        let left = self.tasks.len();
        self.force_close.cancel();
        if tokio::time::timeout(FORCE_CLOSE_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                abandoned = self.tasks.len(),
                grace_ms = FORCE_CLOSE_GRACE.as_millis() as u64,
                "tasks did not close after the forced close; abandoning them"
            );
        }
        DrainOutcome::ForcedClose(left)
    }
}

/// Accepts TCP connections until the lifecycle stops accepting, handing each
/// to `handle` in its own tracked task.
///
/// A failed `accept` (out of file descriptors, say) is logged and retried
/// after a short pause instead of ending the listener: the node keeps serving
/// the sessions it has and takes new ones again when it can.
pub async fn accept_tcp<H, Fut>(listener: TcpListener, lifecycle: Lifecycle, handle: H)
where
    H: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
    let stop = lifecycle.stopped_accepting();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Relay traffic is interactive: never wait to coalesce.
                    let _ = stream.set_nodelay(true);
                    lifecycle.spawn(handle(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = %local, error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::debug!(listener = %local, "stopped accepting");
}
