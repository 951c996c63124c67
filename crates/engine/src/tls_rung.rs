//! The TLS rungs: allocation, media (UDP-over-TLS) and then the message
//! channel, each on its own TLS connection to the proxy's TLS address,
//! directly or through an HTTP proxy's `CONNECT` tunnel.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use cloudproxy_params::{ProxyKind, ProxyServer, TlsPin};
use cloudproxy_proto::Address;
use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_transport::connector::{BoxedStream, Connector};
use cloudproxy_transport::http_proxy::HttpProxy;
use cloudproxy_transport::resolve::host_endpoints;
use cloudproxy_transport::tls::{Fingerprint, TlsClient, TlsTrust};
use cloudproxy_transport::tunnel::{
    MediaPolicy, MediaTransport, allocate_via, open_media_via, open_stream_via,
};

use crate::config::Config;
use crate::error::EngineError;
use crate::ladder::{Attempt, RaceLost, Rung, race};
use crate::rungs::{Bound, ChannelRoute, refine};

/// Where and how the TLS rungs connect.
#[derive(Debug, Clone)]
pub(crate) struct TlsTarget {
    /// The proxy server as configured: its name is the TLS name of a type-1
    /// server, and what the HTTP proxy is asked to connect to.
    pub(crate) server: ProxyServer,
    /// The proxy's addresses on its TLS port (empty when its name did not
    /// resolve here).
    pub(crate) endpoints: Vec<SocketAddr>,
    /// The TLS port.
    pub(crate) port: u16,
    /// `rtc.proxy_tls_pin`, which replaces the builder's trust.
    pub(crate) pin: Option<TlsPin>,
    /// The builder's trust.
    pub(crate) trust: TlsTrust,
    /// The HTTP proxy, for the `HttpProxy` rung.
    pub(crate) http_proxy: Option<HttpProxy>,
}

impl TlsTarget {
    /// The TLS client for the configured trust (a CA file is read now).
    fn client(&self) -> Result<TlsClient, EngineError> {
        let trust = match &self.pin {
            None => self.trust.clone(),
            Some(TlsPin::Fingerprint(bytes)) => TlsTrust::PinnedFingerprint(Fingerprint(*bytes)),
            Some(TlsPin::CaFile(path)) => {
                let pem = std::fs::read(path).map_err(|cause| EngineError::InvalidConfig {
                    what: "rtc.proxy_tls_pin",
                    expected: "a SHA-256 fingerprint or a readable PEM file of CA certificates",
                    found: format!("{}: {cause}", path.display()),
                })?;
                TlsTrust::pinned_ca_pem(&pem).map_err(|e| EngineError::InvalidConfig {
                    what: "rtc.proxy_tls_pin",
                    expected: "a PEM file of CA certificates",
                    found: format!("{}: {e}", path.display()),
                })?
            }
        };
        TlsClient::new(&trust).map_err(|e| EngineError::InvalidConfig {
            what: "tls_trust",
            expected: "usable TLS trust anchors",
            found: e.to_string(),
        })
    }

    /// The connectors of `rung`: TLS straight to the endpoints (one
    /// connector racing them), or through the HTTP proxy to the server's
    /// name, or to each of its addresses (one connector each: the proxy
    /// is asked for one target per tunnel).
    async fn connectors(&self, rung: Rung, config: &Config) -> Result<Vec<Connector>, EngineError> {
        // The first use of the system roots parses the platform's store (a
        // few hundred certificates): off the runtime's worker (the SDK's
        // runtime has one), so the rungs already running keep going.
        let target = self.clone();
        let tls = tokio::task::spawn_blocking(move || target.client())
            .await
            .map_err(|e| EngineError::Io {
                what: "setting up TLS to the proxy",
                cause: std::io::Error::other(e),
            })??;
        let bad_name = |e: cloudproxy_transport::tls::InvalidTlsName| EngineError::InvalidConfig {
            what: "proxy server",
            expected: "a name or address TLS can check",
            found: e.to_string(),
        };
        match (rung, self.server.kind()) {
            (Rung::HttpProxy, kind) => {
                let Some(proxy) = self.http_proxy.clone() else {
                    return Err(EngineError::InvalidConfig {
                        what: "rtc.http_proxy",
                        expected: "an HTTP proxy for the HTTP proxy rung",
                        found: "none".into(),
                    });
                };
                let targets = match kind {
                    ProxyKind::Domain(host) => vec![host.clone()],
                    ProxyKind::IpList(ips) => ips.iter().map(ToString::to_string).collect(),
                };
                let proxy_addrs =
                    host_endpoints(&proxy.host, proxy.port, config.dns_timeout).await?;
                targets
                    .iter()
                    .map(|target| {
                        Connector::http_proxy(
                            tls.clone(),
                            proxy.clone(),
                            proxy_addrs.clone(),
                            target,
                            self.port,
                        )
                        .map_err(bad_name)
                    })
                    .collect()
            }
            (_, ProxyKind::Domain(host)) => Ok(vec![
                Connector::tls(tls, Some(host), self.endpoints.clone()).map_err(bad_name)?,
            ]),
            (_, ProxyKind::IpList(_)) => Ok(vec![
                Connector::tls(tls, None, self.endpoints.clone()).map_err(bad_name)?,
            ]),
        }
    }
}

/// Opens the winner's message channel on its TLS route.
#[derive(Debug)]
pub(crate) struct TlsOpener {
    connector: Connector,
    config: Arc<Config>,
}

impl TlsOpener {
    /// The message channel over a new connection on the rung's route, bound
    /// in stream mode to `destination`.
    pub(crate) async fn open_stream(
        &self,
        client: &ClientConfig,
        allocation: &Allocation,
        destination: Address,
    ) -> Result<(BoxedStream, Bytes), EngineError> {
        let (stream, early) = open_stream_via(
            client,
            &self.connector,
            allocation,
            destination,
            &self.config.dial,
        )
        .await
        .map_err(|e| refine(&self.config, EngineError::Tunnel(e)))?;
        Ok((stream, early))
    }
}

/// The attempt of a TLS rung (`Tls` or `HttpProxy`): allocate and bind the
/// media path (UDP-over-TLS) over its connector. Through an HTTP proxy to
/// a server given as several addresses, one attempt per address, started
/// the dial's stagger apart: the first to bind wins, the rest are aborted.
pub(crate) fn tls_rung(
    rung: Rung,
    client: ClientConfig,
    target: TlsTarget,
    config: Arc<Config>,
) -> Attempt<Bound> {
    Box::pin(async move {
        let mut connectors = target.connectors(rung, &config).await?;
        if connectors.is_empty() {
            return Err(EngineError::InvalidConfig {
                what: "proxy server",
                expected: "at least one address for the TLS rungs",
                found: "an empty address list".into(),
            });
        }
        if connectors.len() == 1
            && let Some(connector) = connectors.pop()
        {
            return bind_over(rung, client, connector, config).await;
        }
        let attempts = connectors
            .into_iter()
            .map(|connector| {
                let attempt = bind_over(rung, client.clone(), connector, Arc::clone(&config));
                (config.dial.stagger, Box::pin(attempt) as Attempt<Bound>)
            })
            .collect();
        race(attempts)
            .await
            .map(|won| won.value)
            .map_err(RaceLost::first)
    })
}

/// Allocates and binds the media path over one connector.
async fn bind_over(
    rung: Rung,
    client: ClientConfig,
    connector: Connector,
    config: Arc<Config>,
) -> Result<Bound, EngineError> {
    let (service, allocation) = allocate_via(&client, &connector, &config.dial)
        .await
        .map_err(|e| refine(&config, EngineError::Tunnel(e)))?;
    tracing::debug!(%service, ?rung, session = allocation.session_id, "proxy session allocated over TLS");
    let policy = MediaPolicy {
        transport: MediaTransport::TcpOnly,
        udp_probe_timeout: config.udp_probe_timeout,
        tcp_dial: config.dial.clone(),
        queue_len: config.media_queue,
    };
    let media = open_media_via(
        &client,
        &connector,
        &allocation,
        Address::Ip(config.edge_udp),
        &policy,
    )
    .await
    .map_err(|e| refine(&config, EngineError::Tunnel(e)))?;
    Ok(Bound {
        rung,
        allocation,
        media,
        fallback: None,
        route: ChannelRoute::Tls(TlsOpener { connector, config }),
    })
}
