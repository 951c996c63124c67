//! Tokio I/O for the cloud proxy.
//!
//! - [`allowlist`]: the default-deny destination policy, with address
//!   canonicalisation.
//! - [`config`]: the proxy service's configuration file.

pub mod allowlist;
pub mod config;
