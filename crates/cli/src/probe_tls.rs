//! `cloudproxy probe`'s TLS checks: the proxy's TLS port (a TLS handshake
//! agreeing on ALPN `cloudproxy/1`, the certificate checked as the engine
//! checks it), directly and through an HTTP proxy's `CONNECT`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cloudproxy_params::{ProxyKind, ProxyServer};
use cloudproxy_transport::http_proxy::{HttpProxy, HttpProxyError, connect_with};
use cloudproxy_transport::tls::{ALPN, TlsClient, TlsError, TlsName};
use tokio::net::TcpStream;

use crate::probe_cmd::Outcome;

/// The TLS name the engine checks for `server` reached at `addr`.
fn tls_name(server: &ProxyServer, addr: SocketAddr) -> TlsName {
    match server.kind() {
        ProxyKind::Domain(host) => TlsName::new(host).unwrap_or_else(|_| TlsName::ip(addr.ip())),
        ProxyKind::IpList(_) => TlsName::ip(addr.ip()),
    }
}

/// What a finished handshake (or its failure) says about the port.
fn handshake_outcome<S>(
    result: Result<tokio_rustls::client::TlsStream<S>, TlsError>,
    started: Instant,
) -> Outcome {
    match result {
        Ok(stream) if stream.get_ref().1.alpn_protocol() == Some(ALPN) => Outcome::Open {
            latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        },
        Ok(_) => Outcome::Blocked {
            reason: "the TLS port answered but did not agree on ALPN cloudproxy/1: not a cloud proxy's TLS port".into(),
        },
        Err(e @ TlsError::Untrusted { .. }) => Outcome::Untrusted {
            reason: e.to_string(),
        },
        Err(e) => Outcome::Blocked {
            reason: e.to_string(),
        },
    }
}

/// A TLS handshake with `addr` (the proxy's TLS port), within `timeout`.
pub(crate) async fn tls_check(
    server: &ProxyServer,
    addr: SocketAddr,
    tls: &TlsClient,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let name = tls_name(server, addr);
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Outcome::Blocked {
                reason: e.to_string(),
            })?;
        Ok::<_, Outcome>(handshake_outcome(
            tls.handshake(&name, stream).await,
            started,
        ))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(outcome) | Err(outcome)) => outcome,
        Err(_) => Outcome::Timeout,
    }
}

/// `CONNECT` through `proxy` (at `proxy_addr`) to the proxy server's TLS
/// port, then the TLS handshake through the tunnel, within `timeout`.
pub(crate) async fn http_proxy_check(
    server: &ProxyServer,
    target: SocketAddr,
    proxy: &HttpProxy,
    proxy_addr: SocketAddr,
    tls: &TlsClient,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let host = match server.kind() {
        ProxyKind::Domain(host) => host.clone(),
        ProxyKind::IpList(_) => target.ip().to_string(),
    };
    let name = tls_name(server, target);
    let exchange = async {
        let stream = TcpStream::connect(proxy_addr)
            .await
            .map_err(|e| Outcome::Blocked {
                reason: format!("the HTTP proxy: {e}"),
            })?;
        // A proxy that closes after its 407 gets a new connection.
        let redial = || TcpStream::connect(proxy_addr);
        let tunnel = connect_with(stream, redial, proxy, &host, target.port())
            .await
            .map_err(|e| match e {
                // The message names the schemes offered and the one tried.
                HttpProxyError::AuthFailed { .. } => Outcome::Refused {
                    code: 407,
                    reason: e.to_string(),
                },
                other => Outcome::Blocked {
                    reason: other.to_string(),
                },
            })?;
        Ok::<_, Outcome>(handshake_outcome(
            tls.handshake(&name, tunnel).await,
            started,
        ))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(outcome) | Err(outcome)) => outcome,
        Err(_) => Outcome::Timeout,
    }
}
