//! The proxy service that operators run: allocation service, TCP relay and
//! UDP relay, the optional TLS port and SOCKS5 listener, and the admin
//! listener (metrics, health, drain).

pub mod admin;
mod admission;
pub mod allowlist;
mod bucket;
pub mod config;
mod conn;
mod copy_pump;
mod descriptors;
pub mod destination;
mod entropy;
mod log_limit;
mod login_limit;
pub mod lookups;
mod metrics;
mod node;
mod policy;
pub mod pump;
pub mod quota;
mod relay_session;
mod reload;
pub mod resolver;
mod shared;
mod socks5;
pub mod stats;
mod tcp;
pub mod tls;
mod udp;
mod udp_batch;
mod upstream;

pub use entropy::OsEntropy;
pub use log_limit::LogBudget;
pub use node::{BoundAddrs, ProxyNode, ServeError};
pub use reload::{FixedChange, ReloadError, ReloadSummary};
