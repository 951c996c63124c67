//! What each rung of the ladder does, up to the point that proves it works:
//! the media path bound at the proxy (an allocation, then a relay that
//! answered the media `Bind` over the rung's transport). The message channel
//! and the join run afterwards, once, on the winner only, so a losing rung
//! never joins the channel.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use cloudproxy_params::{DEFAULT_TLS_PORT, ProxyKind};
use cloudproxy_proto::Address;
use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_transport::http_proxy::{BasicAuth, HttpProxy};
use cloudproxy_transport::resolve::candidates;
use cloudproxy_transport::tunnel::{
    MediaPath, MediaPolicy, MediaTransport, TunnelError, allocate, open_media,
};

use crate::config::Config;
use crate::error::EngineError;
use crate::ladder::{Attempt, NetworkKey, RUNG_STAGGER, RaceLost, Rung, race, rungs};
use crate::settings::{ProxyMode, Settings};
use crate::tls_rung::{TlsOpener, TlsTarget, tls_rung};

/// A rung that won: its media path is bound.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) rung: Rung,
    pub(crate) allocation: Allocation,
    pub(crate) media: MediaPath,
    /// Why UDP was not used, when the TCP rung won over the UDP rung.
    pub(crate) fallback: Option<String>,
    /// How to open the message channel on the winner's transport.
    pub(crate) route: ChannelRoute,
}

/// Where the winner's message channel goes.
#[derive(Debug)]
pub(crate) enum ChannelRoute {
    /// The allocation's TCP relays, over plain TCP.
    Relay,
    /// The proxy's TLS address (directly or through the HTTP proxy).
    Tls(TlsOpener),
}

/// One join's ladder: the rungs in order and what they need.
pub(crate) struct Ladder {
    config: Arc<Config>,
    client: ClientConfig,
    order: Vec<Rung>,
    /// The proxy's addresses (allocation ports); empty when the name did
    /// not resolve (then only the HTTP proxy rung, which needs no DNS here,
    /// can run).
    addrs: Vec<SocketAddr>,
    tls: TlsTarget,
    key: NetworkKey,
}

/// Plans the ladder for `mode` under `settings`: resolves the proxy server,
/// picks the HTTP proxy and the TLS trust, and orders the rungs (the one
/// remembered for this network first).
pub(crate) async fn plan(
    config: &Config,
    settings: &Settings,
    mode: ProxyMode,
    client: &ClientConfig,
) -> Result<Ladder, EngineError> {
    let server = settings
        .proxy_server
        .clone()
        .unwrap_or_else(|| config.default_server.clone());
    // The parameter, else the builder, else the environment (unless
    // `NO_PROXY` exempts the proxy server).
    let http_proxy: Option<HttpProxy> =
        match settings.http_proxy.as_ref().or(config.http_proxy.as_ref()) {
            Some(proxy) => Some(HttpProxy {
                host: proxy.host.clone(),
                port: proxy.port,
                auth: proxy.credentials.as_ref().map(|c| BasicAuth {
                    user: c.user.clone(),
                    password: c.password.clone(),
                }),
            }),
            None => {
                let host = match server.kind() {
                    ProxyKind::Domain(host) => host.clone(),
                    ProxyKind::IpList(ips) => {
                        ips.first().map(ToString::to_string).unwrap_or_default()
                    }
                };
                // Checked when the engine was built.
                config.proxy_env.proxy_for(&host).ok().flatten()
            }
        };
    let tls_port = settings.tls_port.unwrap_or(DEFAULT_TLS_PORT);
    let allowed = rungs(mode, http_proxy.is_some(), None);
    let addrs = match candidates(&server, config.dns_timeout).await {
        Ok(addrs) => addrs,
        // Behind an HTTP proxy there may be no DNS at all: the proxy
        // resolves the name, so only that rung is left.
        Err(e) if allowed.contains(&Rung::HttpProxy) => {
            tracing::info!(error = %e, "the proxy server does not resolve here; only the HTTP proxy rung is tried");
            Vec::new()
        }
        Err(e) => return Err(EngineError::Resolve(e)),
    };
    let key = NetworkKey::new(
        &server,
        http_proxy.as_ref().map(HttpProxy::addr),
        addrs.first().copied(),
    );
    let mut order = rungs(mode, http_proxy.is_some(), config.rungs.get(&key));
    if addrs.is_empty() {
        order.retain(|r| *r == Rung::HttpProxy);
    }
    let ips: BTreeSet<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    let tls = TlsTarget {
        server,
        endpoints: ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, tls_port))
            .collect(),
        port: tls_port,
        pin: settings.tls_pin.clone(),
        trust: config.tls_trust.clone(),
        http_proxy,
    };
    Ok(Ladder {
        config: Arc::new(config.clone()),
        client: client.clone(),
        order,
        addrs,
        tls,
        key,
    })
}

impl Ladder {
    /// Runs the rungs, staggered, and returns the first bound one; the
    /// others are cancelled.
    pub(crate) async fn climb(&self) -> Result<Bound, EngineError> {
        let mut attempts: Vec<(std::time::Duration, Attempt<Bound>)> = Vec::new();
        let mut delay = std::time::Duration::ZERO;
        let mut rest = self.order.as_slice();
        while let Some(&rung) = rest.first() {
            let (attempt, used): (Attempt<Bound>, usize) = if rung.is_plain() {
                let plain: Vec<Rung> = rest.iter().copied().take_while(|r| r.is_plain()).collect();
                let used = plain.len();
                (self.relay_rungs(plain), used)
            } else {
                let attempt = tls_rung(
                    rung,
                    self.client.clone(),
                    self.tls.clone(),
                    self.config.clone(),
                );
                (attempt, 1)
            };
            attempts.push((delay, attempt));
            delay = RUNG_STAGGER * u32::try_from(used).unwrap_or(1);
            rest = &rest[used..];
        }
        race(attempts)
            .await
            .map(|won| won.value)
            .map_err(RaceLost::first)
    }

    /// The UDP and TCP rungs (in `plain`'s order): one allocation over plain
    /// TCP, then the media binds raced, the second 250 ms after the first.
    fn relay_rungs(&self, plain: Vec<Rung>) -> Attempt<Bound> {
        let (config, client, addrs) =
            (self.config.clone(), self.client.clone(), self.addrs.clone());
        Box::pin(async move {
            let (service, allocation) = allocate(&client, &addrs, &config.dial)
                .await
                .map_err(|e| refine(&config, EngineError::Tunnel(e)))?;
            tracing::debug!(%service, session = allocation.session_id, "proxy session allocated");
            let mut attempts: Vec<(std::time::Duration, Attempt<(Rung, MediaPath)>)> = Vec::new();
            for (n, &rung) in plain.iter().enumerate() {
                let policy = MediaPolicy {
                    transport: if rung == Rung::Udp {
                        MediaTransport::UdpOnly
                    } else {
                        MediaTransport::TcpOnly
                    },
                    udp_probe_timeout: config.udp_probe_timeout,
                    tcp_dial: config.dial.clone(),
                    queue_len: config.media_queue,
                };
                let (client, allocation, edge) =
                    (client.clone(), allocation.clone(), config.edge_udp);
                let delay = if n == 0 {
                    std::time::Duration::ZERO
                } else {
                    RUNG_STAGGER
                };
                attempts.push((
                    delay,
                    Box::pin(async move {
                        open_media(&client, &allocation, Address::Ip(edge), &policy)
                            .await
                            .map(|path| (rung, path))
                            .map_err(EngineError::Tunnel)
                    }),
                ));
            }
            let udp_index = plain.iter().position(|r| *r == Rung::Udp);
            let won = race(attempts)
                .await
                // The last rung's error: with UDP and TCP, TCP's (UDP's
                // failure is the reason TCP was needed).
                .map_err(|lost| refine(&config, lost.last()))?;
            let (rung, media) = won.value;
            let fallback = match (rung, udp_index) {
                (Rung::Tcp, Some(udp)) => Some(match &won.failed[udp] {
                    Some(why) => why.to_string(),
                    None if udp > 0 => "UDP did not get through on this network last time, so the TCP relay was tried first".to_owned(),
                    None => format!(
                        "the UDP relay had not answered when the TCP relay was bound, {RUNG_STAGGER:?} later (UDP blocked or slow?)"
                    ),
                }),
                _ => None,
            };
            Ok(Bound {
                rung,
                allocation,
                media,
                fallback,
                route: ChannelRoute::Relay,
            })
        })
    }

    /// Remembers `rung` as the winner on this network.
    pub(crate) fn remember(&self, rung: Rung) {
        self.config.rungs.remember(self.key.clone(), rung);
    }
}

/// A refused credential, said as such (with a hint when it looks like the
/// hex text passed as bytes), and a blocked UDP said for `ForceUdp`; other
/// errors as they are.
pub(crate) fn refine(config: &Config, e: EngineError) -> EngineError {
    match e {
        EngineError::Tunnel(TunnelError::Refused {
            proxy,
            code: code @ cloudproxy_proto::ErrorCode::BAD_CREDENTIAL,
            ..
        }) => EngineError::CredentialRefused {
            app_id: config.app_id.as_str().to_owned(),
            proxy,
            code,
            hint: crate::link::credential_hint(&config.credential),
        },
        EngineError::Tunnel(TunnelError::UdpBlocked(probe)) => EngineError::UdpBlocked { probe },
        EngineError::Tunnel(TunnelError::UntrustedCertificate { addr, cause, .. }) => {
            EngineError::UntrustedCertificate {
                proxy: addr.to_string(),
                detail: match *cause {
                    cloudproxy_transport::tls::TlsError::Untrusted { server, reason } => {
                        format!("{reason} (checked as {server})")
                    }
                    other => other.to_string(),
                },
            }
        }
        EngineError::Tunnel(TunnelError::ProxyAuthFailed { addr, cause, .. }) => {
            // The transport's words (the scheme, the reason) go to the log;
            // the engine's error names the scheme in a fixed hint, as its
            // shape is shared with the C ABI.
            tracing::info!(proxy = %addr, error = %cause, "HTTP proxy authentication failed");
            EngineError::ProxyAuthFailed {
                http_proxy: addr.to_string(),
                hint: proxy_auth_hint(&cause),
            }
        }
        other => other,
    }
}

/// What to check after a 407, naming the scheme that was tried.
fn proxy_auth_hint(cause: &cloudproxy_transport::http_proxy::HttpProxyError) -> &'static str {
    use cloudproxy_transport::http_proxy::HttpProxyError;
    use cloudproxy_transport::proxy_auth::AuthScheme;
    match cause {
        HttpProxyError::AuthFailed {
            had_credentials: false,
            ..
        } => ": it wants credentials; give them as http://[DOMAIN%5C]user:password@host:port",
        HttpProxyError::AuthFailed {
            scheme: Some(AuthScheme::Negotiate),
            ..
        } => {
            ": Negotiate (Kerberos, else NTLM) failed; check the user name (REALM\\user) and password, and that the KDC of the realm is reachable"
        }
        HttpProxyError::AuthFailed {
            scheme: Some(AuthScheme::Ntlm),
            ..
        } => ": NTLM failed; check the user name (DOMAIN\\user) and password",
        HttpProxyError::AuthFailed {
            scheme: Some(AuthScheme::Basic),
            ..
        } => ": Basic failed; check the user name and password",
        HttpProxyError::AuthFailed { scheme: None, .. } => {
            ": it offered no scheme the client can do (Negotiate, NTLM, Basic)"
        }
        _ => ": check the user name and password",
    }
}
