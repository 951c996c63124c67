//! The async transport a cloud proxy client needs, on tokio: no server here.
//!
//! - [`resolve`]: a configured proxy (name, address list) into candidates.
//! - [`dial`]: race candidates, happy-eyeballs style.
//! - [`tunnel`]: allocate, open the message channel and the media path, with
//!   automatic TCP fallback, over any [`connector`].
//! - [`connector`]: the byte stream a proxy connection runs over: plain TCP,
//!   TLS ([`tls`]), or TLS through an HTTP CONNECT proxy ([`http_proxy`]).
//! - [`driver`]: the one loop that runs any sans-I/O machine of
//!   `cloudproxy-proto` over any byte stream (TCP, TLS, HTTP CONNECT).
//! - [`lifecycle`]: task tracking with drain and force-close, for anything
//!   that accepts connections (the proxy node, the reference edge).
//! - [`net`]: small socket helpers.

mod cancelled_bind;
pub mod connector;
pub mod dial;
pub mod driver;
pub mod http_proxy;
pub mod lifecycle;
pub mod net;
pub mod proxy_auth;
pub mod resolve;
pub mod tls;
pub mod tunnel;
