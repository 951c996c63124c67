//! The proxy service that operators run: allocation service, TCP relay and
//! UDP relay, the optional SOCKS5 listener, and the admin listener
//! (metrics, health, drain).

pub mod admin;
mod admission;
pub mod allowlist;
mod bucket;
pub mod config;
mod conn;
mod descriptors;
pub mod destination;
mod log_limit;
mod login_limit;
pub mod lookups;
mod metrics;
mod node;
pub mod pump;
pub mod quota;
mod reload;
pub mod resolver;
mod socks5;
pub mod stats;
mod tcp;
mod udp;
mod udp_batch;

pub use node::{BoundAddrs, OsEntropy, ProxyNode, ServeError};
pub use reload::{FixedChange, ReloadError, ReloadSummary};
