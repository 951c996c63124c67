//! [`EdgeError`]: why an edge could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why an edge could not be configured or started.
///
/// Each message is complete: the causes it prints (the TOML or operating
/// system error) are not also returned by `source()`, so walking the chain
/// prints each once (see `docs/decisions.md`, "Error causes are printed
/// once").
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
    /// The configuration text does not describe an [`EdgeConfig`](super::EdgeConfig):
    /// TOML syntax, an unknown key or a wrong type (the message has the line
    /// and column).
    #[error("{origin}: {cause}")]
    Parse {
        /// The file name, or `"edge configuration"` for a string.
        origin: String,
        /// The TOML error, with line, column and key.
        cause: toml::de::Error,
    },
    /// The configuration file could not be read.
    #[error("cannot read edge configuration {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen on {transport} {addr}: {cause}")]
    Bind {
        /// `"TCP"` or `"UDP"`.
        transport: &'static str,
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's error.
        cause: std::io::Error,
    },
}
