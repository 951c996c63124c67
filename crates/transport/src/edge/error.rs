//! [`EdgeError`]: why an edge could not start.

use std::net::SocketAddr;

/// Why an edge could not be configured or started.
///
/// Problems with one client (bad frames, refused joins, timeouts) are not
/// errors of the edge: they end that client's connection, are counted in
/// [`EdgeStats`](super::EdgeStats) and logged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// A configuration value is invalid.
    #[error("invalid edge configuration key `{key}`: {reason}")]
    Config {
        /// The configuration key (as written in the TOML file).
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen on {transport} {addr}: {source}")]
    Bind {
        /// `"TCP"` or `"UDP"`.
        transport: &'static str,
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}
