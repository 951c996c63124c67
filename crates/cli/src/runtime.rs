//! What every long-running subcommand shares: the tokio runtime and the
//! shutdown signal (logging is in `logging`).

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long, once a subcommand's work is done, the runtime waits for its
/// blocking threads (a `getaddrinfo` that does not answer, say) before the
/// process exits without them.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A multi-threaded runtime with every driver enabled.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Runs `work` to completion on a fresh runtime, then shuts the runtime
/// down within [`SHUTDOWN_GRACE`]. Dropping a runtime instead waits for
/// every blocking thread still running, without limit, so a stuck name
/// lookup would keep the process alive after SIGTERM.
pub(crate) fn block_on<F: Future>(work: F) -> F::Output {
    let runtime = runtime();
    let output = runtime.block_on(work);
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    output
}

/// SIGINT (Ctrl-C) and SIGTERM, watched from the moment this is created.
/// Create it before telling anyone the process is ready: until then the
/// signals keep their default action, which kills the process without a
/// drain.
pub(crate) struct ShutdownSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignal {
    /// Starts watching; needs the runtime.
    pub(crate) fn install() -> Self {
        let watch = |kind| signal(kind).expect("the signal driver is enabled in the runtime");
        Self {
            interrupt: watch(SignalKind::interrupt()),
            terminate: watch(SignalKind::terminate()),
        }
    }

    /// Completes on the first SIGINT or SIGTERM.
    pub(crate) async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// SIGUSR2, which asks for a drain on demand (the process stays up), watched
/// from the moment this is created.
pub(crate) struct DrainSignal {
    user2: Signal,
}

impl DrainSignal {
    /// Starts watching; needs the runtime.
    pub(crate) fn install() -> Self {
        Self {
            user2: signal(SignalKind::user_defined2())
                .expect("the signal driver is enabled in the runtime"),
        }
    }

    /// Completes on the next SIGUSR2.
    pub(crate) async fn recv(&mut self) {
        // `None` only when the runtime shuts down; then wait forever.
        if self.user2.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::{SHUTDOWN_GRACE, block_on};

    #[test]
    fn a_blocking_thread_still_running_does_not_hold_up_the_exit() {
        // A blocking task that outlives the work, as a stuck getaddrinfo
        // would; bounded (it gives up after a minute) so nothing hangs.
        let (release, held) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            block_on(async move {
                tokio::task::spawn_blocking(move || held.recv_timeout(Duration::from_secs(60)));
            });
            let _ = done_tx.send(started.elapsed());
        });
        let took = done.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
            panic!("block_on waited more than 10 s for a blocking thread (expected at most {SHUTDOWN_GRACE:?})")
        });
        drop(release);
        assert!(
            took < SHUTDOWN_GRACE + Duration::from_secs(5),
            "expected the runtime gone within about {SHUTDOWN_GRACE:?}, it took {took:?}"
        );
    }
}
