//! The proxy service that operators run: allocation service, TCP relay and
//! UDP relay.

mod conn;
pub mod destination;
pub mod lifecycle;
mod node;
pub mod quota;
pub mod stats;
mod tcp;
mod udp;

pub use node::{BoundAddrs, OsEntropy, ProxyNode, ServeError};
