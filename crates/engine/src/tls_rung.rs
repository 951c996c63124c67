//! The TLS rungs: allocation, media (UDP-over-TLS) and later the message
//! channel, each on its own TLS connection to the proxy's TLS address,
//! directly or through an HTTP proxy's `CONNECT` tunnel.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cloudproxy_params::{HttpProxy, ProxyServer};
use cloudproxy_proto::Address;
use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_transport::dial::DialPolicy;

use crate::config::Config;
use crate::error::EngineError;
use crate::ladder::{Attempt, Rung};
use crate::link::ByteStream;
use crate::rungs::Bound;
use crate::trust::TlsTrust;

/// Where and how the TLS rungs connect.
#[derive(Debug, Clone)]
pub(crate) struct TlsTarget {
    /// The proxy server as configured (its name is the TLS server name of a
    /// type-1 server, and what the HTTP proxy is asked to connect to).
    pub(crate) server: ProxyServer,
    /// The proxy's addresses on its TLS port.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The TLS port.
    pub(crate) port: u16,
    pub(crate) trust: TlsTrust,
    pub(crate) http_proxy: Option<HttpProxy>,
    pub(crate) dial: DialPolicy,
}

/// Opens the winner's message channel on its TLS route.
#[derive(Debug)]
pub(crate) struct TlsOpener {
    target: TlsTarget,
    rung: Rung,
}

impl TlsOpener {
    /// The message channel over a new TLS connection, bound in stream mode
    /// to `destination`.
    pub(crate) async fn open_stream(
        &self,
        _client: &ClientConfig,
        _allocation: &Allocation,
        _destination: Address,
    ) -> Result<(Box<dyn ByteStream>, Bytes), EngineError> {
        Err(unavailable(self.rung, &self.target))
    }
}

/// The attempt of a TLS rung (`Tls` or `HttpProxy`).
pub(crate) fn tls_rung(
    rung: Rung,
    _client: ClientConfig,
    target: TlsTarget,
    _config: Arc<Config>,
) -> Attempt<Bound> {
    Box::pin(async move { Err(unavailable(rung, &target)) })
}

fn unavailable(rung: Rung, target: &TlsTarget) -> EngineError {
    EngineError::InvalidConfig {
        what: "the TLS rungs",
        expected: "a transport with client TLS",
        found: format!(
            "none yet for {rung:?} to port {} of {}",
            target.port, target.server
        ),
    }
}
