//! What every long-running subcommand shares: the tokio runtime, logging and
//! the shutdown signal.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A multi-threaded runtime with every driver enabled.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Logs to stderr with `filter` (overridden by `RUST_LOG` when set).
pub(crate) fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
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
