//! The proxy service that operators run: allocation service, TCP relay and
//! UDP relay, and the optional SOCKS5 listener.

mod conn;
pub mod destination;
pub mod lifecycle;
mod node;
pub mod quota;
mod socks5;
pub mod stats;
mod tcp;
mod udp;
mod udp_batch;

pub use node::{BoundAddrs, OsEntropy, ProxyNode, ServeError};
