//! The client side: finding and reaching a proxy.

pub mod dial;
pub mod resolve;
pub mod tunnel;
