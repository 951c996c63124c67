//! What every long-running subcommand shares: the tokio runtime and the
//! shutdown signal (logging is in `logging`).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A multi-threaded runtime with every driver enabled.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
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
