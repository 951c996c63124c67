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
