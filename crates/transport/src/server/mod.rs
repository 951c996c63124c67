//! The proxy service that operators run: allocation service, TCP relay and
//! UDP relay.

pub mod destination;
pub mod lifecycle;
pub mod quota;
pub mod stats;
