//! The byte stream a proxy connection runs over: plain TCP, TLS to the
//! proxy's TLS port, or TLS through an HTTP CONNECT proxy.
//!
//! A [`Connector`] knows which addresses the tunnel's steps race
//! ([`Connector::candidates`]) and makes one connection to one of them
//! ([`Connector::connect`]). Over TCP, allocation goes to the allocation
//! services and the relay steps go to the allocation's relays; over TLS
//! (direct or through an HTTP proxy) every step goes to the same TLS
//! address, which serves allocation and relaying on one port (the server
//! tells them apart by the first frame), and the allocation's relay list is
//! not used.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use cloudproxy_proto::client::Allocation;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::http_proxy::{self, HttpProxy, HttpProxyError};
use crate::tls::{InvalidTlsName, TlsClient, TlsError, TlsName};

/// Any byte stream a proxy connection can run over.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> AsyncStream for T {}

/// A connection's byte stream, whatever carries it.
pub type BoxedStream = Box<dyn AsyncStream>;

/// What carries a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    /// Plain TCP to the allocation service or a relay.
    Tcp,
    /// TLS to the proxy's TLS port.
    Tls,
    /// TLS to the proxy's TLS port through an HTTP CONNECT proxy.
    HttpProxy,
}

impl fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::HttpProxy => "TLS through an HTTP proxy",
        })
    }
}

/// How each connection of a tunnel is made; cheap to clone.
#[derive(Debug, Clone)]
pub struct Connector {
    route: Route,
}

#[derive(Debug, Clone)]
enum Route {
    Tcp {
        services: Vec<SocketAddr>,
    },
    Tls {
        endpoints: Vec<SocketAddr>,
        /// `None`: each endpoint is checked against its own IP address.
        name: Option<TlsName>,
        tls: TlsClient,
    },
    HttpProxy {
        proxy: HttpProxy,
        proxy_addrs: Vec<SocketAddr>,
        target_host: String,
        target_port: u16,
        name: TlsName,
        tls: TlsClient,
    },
}

/// One connection could not be made. Each message is complete: no variant
/// returns its cause again as [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("{0}")]
    Io(io::Error),
    /// The TLS handshake failed (including an untrusted certificate).
    #[error("{0}")]
    Tls(TlsError),
    /// The HTTP proxy did not open the tunnel.
    #[error("{0}")]
    HttpProxy(HttpProxyError),
}

impl Connector {
    /// Plain TCP: allocation races `services` (the allocation ports), the
    /// relay steps race the allocation's relays.
    #[must_use]
    pub fn tcp(services: Vec<SocketAddr>) -> Self {
        Self {
            route: Route::Tcp { services },
        }
    }

    /// TLS to `endpoints` (the proxy's TLS port on each of its addresses),
    /// every step on them. `host` is the proxy's host name (SNI and the name
    /// checked); `None` when it is known by IP addresses only, and then
    /// each endpoint is checked against its own address.
    pub fn tls(
        tls: TlsClient,
        host: Option<&str>,
        endpoints: Vec<SocketAddr>,
    ) -> Result<Self, InvalidTlsName> {
        let name = host.map(TlsName::new).transpose()?;
        Ok(Self {
            route: Route::Tls {
                endpoints,
                name,
                tls,
            },
        })
    }

    /// TLS to `target_host:target_port` (the proxy server's name, or one of
    /// its IP addresses, and its TLS port) through the HTTP proxy `proxy`,
    /// reached at `proxy_addrs` (its resolved addresses, raced). The target
    /// name goes to the HTTP proxy unresolved; it is also the TLS name.
    pub fn http_proxy(
        tls: TlsClient,
        proxy: HttpProxy,
        proxy_addrs: Vec<SocketAddr>,
        target_host: &str,
        target_port: u16,
    ) -> Result<Self, InvalidTlsName> {
        let name = TlsName::new(target_host)?;
        Ok(Self {
            route: Route::HttpProxy {
                proxy,
                proxy_addrs,
                target_host: target_host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                target_port,
                name,
                tls,
            },
        })
    }

    /// What carries its connections.
    #[must_use]
    pub fn kind(&self) -> ConnectionKind {
        match self.route {
            Route::Tcp { .. } => ConnectionKind::Tcp,
            Route::Tls { .. } => ConnectionKind::Tls,
            Route::HttpProxy { .. } => ConnectionKind::HttpProxy,
        }
    }

    /// The addresses allocation races: the allocation services (TCP), the
    /// TLS endpoints (TLS), or the HTTP proxy's addresses.
    #[must_use]
    pub fn candidates(&self) -> &[SocketAddr] {
        match &self.route {
            Route::Tcp { services } => services,
            Route::Tls { endpoints, .. } => endpoints,
            Route::HttpProxy { proxy_addrs, .. } => proxy_addrs,
        }
    }

    /// The addresses the relay steps (message channel, media over TCP)
    /// race: the allocation's TCP relays over TCP, else
    /// [`candidates`](Self::candidates).
    #[must_use]
    pub fn relay_candidates(&self, allocation: &Allocation) -> Vec<SocketAddr> {
        match &self.route {
            Route::Tcp { .. } => allocation.tcp_relays.clone(),
            Route::Tls { .. } | Route::HttpProxy { .. } => self.candidates().to_vec(),
        }
    }

    /// One connection to `addr` (one of the candidates), ready for the
    /// protocol's first frame: TCP connected (no Nagle), then the HTTP
    /// CONNECT and the TLS handshake where the route has them. Not bounded
    /// in time: callers bound it with the dial's attempt timeout (the
    /// tunnel functions do).
    pub async fn connect(&self, addr: SocketAddr) -> Result<BoxedStream, ConnectError> {
        let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Io)?;
        let _ = tcp.set_nodelay(true);
        match &self.route {
            Route::Tcp { .. } => Ok(Box::new(tcp)),
            Route::Tls { name, tls, .. } => {
                let name = name.clone().unwrap_or_else(|| TlsName::ip(addr.ip()));
                let stream = tls.handshake(&name, tcp).await.map_err(ConnectError::Tls)?;
                Ok(Box::new(stream))
            }
            Route::HttpProxy {
                proxy,
                target_host,
                target_port,
                name,
                tls,
                ..
            } => {
                // A proxy that closes after a 407 gets a new connection
                // for the next leg.
                let redial = || async move {
                    let tcp = TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    Ok(tcp)
                };
                let tunnel =
                    http_proxy::connect_with(tcp, redial, proxy, target_host, *target_port)
                        .await
                        .map_err(ConnectError::HttpProxy)?;
                let stream = tls
                    .handshake(name, tunnel)
                    .await
                    .map_err(ConnectError::Tls)?;
                Ok(Box::new(stream))
            }
        }
    }
}
