//! Tokio I/O for the cloud proxy.
//!
//! - [`allowlist`]: the default-deny destination policy, with address
//!   canonicalisation.
//! - [`config`]: the proxy service's configuration file.
//! - [`client`]: what the client library uses to reach a proxy.
//! - [`pump`]: the two-way byte copy behind every TCP relay session.
//! - [`server`]: the proxy service.
//! - [`edge`]: the reference media edge that stands in for the media network.
//! - [`net`]: small socket helpers.

pub mod allowlist;
pub mod client;
pub mod config;
pub mod edge;
pub mod net;
pub mod pump;
pub mod server;
