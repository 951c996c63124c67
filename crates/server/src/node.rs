//! One running proxy node: its sockets, its shared state, and its tasks.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cloudproxy_proto::Timebase;
use cloudproxy_proto::server::Server;
use tokio::net::{TcpListener, UdpSocket};

use crate::config::{ServerConfig, UnusableConfig};
use crate::descriptors::{raise_nofile, upstream_budget};
use crate::entropy::OsEntropy;
use crate::log_limit::LogBudget;
use crate::login_limit::{LoginLimiter, LoginLimits};
use crate::lookups::{LookupLimits, Lookups, Resolve};
use crate::policy::{Policy, PolicyCell};
use crate::quota::Quotas;
use crate::reload::{ReloadError, ReloadSummary, Reloader, app_limits, credentials, ticket_ring};
use crate::resolver::DnsResolver;
use crate::shared::Shared;
use crate::stats::{Stats, StatsSnapshot, Timings};
use crate::tls::{CertificateError, Identity, SelfSigned, TlsPort};
use crate::{socks5, tcp, tls, udp};
use cloudproxy_transport::lifecycle::{DrainOutcome, Lifecycle, accept_tcp};

/// The proxy service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {protocol} {addr}: {cause}")]
    Bind {
        /// "TCP" or "UDP".
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why; printed in the message, so not also `source()` (see
        /// `docs/decisions.md`, "Error causes are printed once").
        cause: io::Error,
    },
    /// The configuration cannot run (for instance an app id the protocol
    /// cannot carry).
    #[error("invalid configuration: {0}")]
    Config(UnusableConfig),
    /// The TLS port's certificate or key cannot be used.
    #[error("the TLS port cannot start: {0}")]
    Tls(CertificateError),
}

/// The addresses a node actually listens on (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Allocation service, TCP, in configuration order.
    pub allocation_tcp: Vec<SocketAddr>,
    /// Allocation service, UDP, in configuration order.
    pub allocation_udp: Vec<SocketAddr>,
    /// The TCP relay.
    pub tcp_relay: SocketAddr,
    /// The UDP relay sockets.
    pub udp_relays: Vec<SocketAddr>,
    /// The SOCKS5 listener, when enabled.
    pub socks5: Option<SocketAddr>,
    /// The TLS port, when enabled.
    pub tls: Option<SocketAddr>,
}

impl fmt::Display for BoundAddrs {
    /// `allocation tcp=A,B udp=A,B tcp_relay=A udp_relays=A,B socks5=A`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "allocation_tcp={} allocation_udp={} tcp_relay={} udp_relays={}",
            list(&self.allocation_tcp),
            list(&self.allocation_udp),
            self.tcp_relay,
            list(&self.udp_relays)
        )?;
        if let Some(socks5) = self.socks5 {
            write!(f, " socks5={socks5}")?;
        }
        if let Some(tls) = self.tls {
            write!(f, " tls={tls}")?;
        }
        Ok(())
    }
}

/// A running proxy node.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use cloudproxy_server::config::ServerConfig;
/// use cloudproxy_server::ProxyNode;
///
/// let config = ServerConfig::from_file("proxy.toml".as_ref())?;
/// let node = ProxyNode::start(&config).await?;
/// println!("allocation service on {:?}", node.addrs().allocation_tcp);
/// tokio::signal::ctrl_c().await?;
/// node.shutdown().await;
/// # Ok(()) }
/// ```
pub struct ProxyNode {
    shared: Arc<Shared>,
    addrs: BoundAddrs,
    reloader: Reloader,
}

impl std::fmt::Debug for ProxyNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyNode")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl ProxyNode {
    /// Binds every listener of `config` and starts serving. Destination
    /// names resolve with [`DnsResolver::from_system`].
    pub async fn start(config: &ServerConfig) -> Result<Self, ServeError> {
        Self::start_with_resolver(config, Arc::new(DnsResolver::from_system())).await
    }

    /// [`ProxyNode::start`] with another resolver for destination names
    /// (each app's lookups are still bounded by `[limits]`).
    pub async fn start_with_resolver(
        config: &ServerConfig,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Self, ServeError> {
        Self::start_with(config, resolver, LogBudget::new()).await
    }

    /// [`ProxyNode::start`] whose refusal lines (failed logins, malformed
    /// input) take from `log_budget`, which the process's logger may share
    /// so that what other crates log about unauthenticated peers counts
    /// against the same budget (`cloudproxy serve` does).
    pub async fn start_with_log_budget(
        config: &ServerConfig,
        log_budget: LogBudget,
    ) -> Result<Self, ServeError> {
        Self::start_with(config, Arc::new(DnsResolver::from_system()), log_budget).await
    }

    async fn start_with(
        config: &ServerConfig,
        resolver: Arc<dyn Resolve>,
        log_budget: LogBudget,
    ) -> Result<Self, ServeError> {
        let nofile = raise_nofile();
        let listeners = &config.listeners;
        let bind = listeners.bind;
        let mut addrs = BoundAddrs {
            allocation_tcp: Vec::new(),
            allocation_udp: Vec::new(),
            tcp_relay: SocketAddr::new(bind, listeners.tcp_relay_port),
            udp_relays: Vec::new(),
            socks5: None,
            tls: None,
        };
        let mut allocation_tcp = Vec::new();
        let mut allocation_udp = Vec::new();
        for &port in &listeners.allocation_ports {
            let (listener, socket) = bind_allocation_pair(SocketAddr::new(bind, port)).await?;
            addrs.allocation_tcp.push(listener.1);
            addrs.allocation_udp.push(socket.1);
            allocation_tcp.push(listener.0);
            allocation_udp.push(socket.0);
        }
        let (tcp_relay, local) = bind_tcp(addrs.tcp_relay).await?;
        addrs.tcp_relay = local;
        let range = &listeners.udp_relay_ports.0;
        let ports: Vec<u16> = if *range.start() == 0 {
            vec![0; usize::from(*range.end()) + 1]
        } else {
            range.clone().collect()
        };
        let socks5 = if config.socks5.enabled {
            let (listener, local) = bind_tcp(SocketAddr::new(bind, config.socks5.port)).await?;
            addrs.socks5 = Some(local);
            Some(listener)
        } else {
            None
        };
        let tls = match config.tls.listen_addr(listeners) {
            Some(addr) => {
                let port = TlsPort::new(tls_identity(config)?);
                let (listener, local) = bind_tcp(addr).await?;
                addrs.tls = Some(local);
                Some((port, listener))
            }
            None => None,
        };
        let mut udp_relays = Vec::new();
        for port in ports {
            let (socket, local) = bind_udp(SocketAddr::new(bind, port)).await?;
            udp_relays.push(socket);
            addrs.udp_relays.push(local);
        }
        let advertise = listeners.advertise.unwrap_or(if bind.is_unspecified() {
            // Only reachable without apps (see config validation): a local
            // development node.
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bind
        });
        let proto = proto_server(config, advertise, &addrs)?;
        let limits = &config.limits;
        let node_sockets = upstream_budget(nofile, u64::from(limits.reserved_fds));
        let app_limits = app_limits(config, node_sockets);
        tracing::info!(
            node = node_sockets,
            per_app = app_limits
                .first()
                .map_or(limits.max_upstream_sockets_per_app, |(_, l)| l
                    .max_upstream_sockets),
            per_session_bindings = limits.max_bindings_per_session,
            "upstream socket budget"
        );
        let quotas = Quotas::with_limits(
            app_limits.iter().map(|(id, limits)| (id.as_str(), *limits)),
            node_sockets,
        );
        let login_limits = LoginLimits {
            burst: limits.login_failure_burst,
            per_minute: limits.login_failures_per_minute,
            sources: limits.login_failure_sources as usize,
        };
        let shared = Arc::new(Shared {
            proto: Arc::new(proto),
            policy: PolicyCell::new(Policy::from_config(config)),
            quotas,
            stats: Arc::new(Stats::default()),
            timings: Timings::default(),
            nofile,
            lifecycle: Lifecycle::new(),
            limits: config.limits.clone(),
            lookups: Lookups::new(
                resolver,
                LookupLimits {
                    in_flight_per_app: limits.dns_lookups_in_flight_per_app,
                    per_sec_per_app: limits.dns_lookups_per_sec_per_app,
                    timeout: limits.dns_timeout(),
                },
            ),
            logins: LoginLimiter::new(login_limits),
            udp_logins: LoginLimiter::new(login_limits),
            refusal_log: log_budget,
            tls: tls.as_ref().map(|(port, _)| port.clone()),
        });

        for risky in config.allowlist.allow.risky_openings() {
            tracing::warn!("SECURITY: {risky}; make sure this is intended");
        }

        let lifecycle = &shared.lifecycle;
        for listener in allocation_tcp {
            let s = Arc::clone(&shared);
            lifecycle.spawn(accept_tcp(
                listener,
                lifecycle.clone(),
                move |stream, peer| {
                    tcp::allocation(Arc::clone(&s), stream, peer, Instant::now(), "tcp")
                },
            ));
        }
        let s = Arc::clone(&shared);
        lifecycle.spawn(accept_tcp(
            tcp_relay,
            lifecycle.clone(),
            move |stream, peer| tcp::relay(Arc::clone(&s), stream, peer),
        ));
        if let Some(listener) = socks5 {
            let s = Arc::clone(&shared);
            lifecycle.spawn(accept_tcp(
                listener,
                lifecycle.clone(),
                move |stream, peer| socks5::connection(Arc::clone(&s), stream, peer),
            ));
        }
        if let Some((port, listener)) = tls {
            let s = Arc::clone(&shared);
            let config = Arc::clone(port.config());
            lifecycle.spawn(accept_tcp(
                listener,
                lifecycle.clone(),
                move |stream, peer| {
                    tls::connection(Arc::clone(&s), Arc::clone(&config), stream, peer)
                },
            ));
            tracing::info!(
                listen = %addrs.tls.map_or_else(String::new, |a| a.to_string()),
                alpn = "cloudproxy/1",
                "TLS port: sha256 fingerprint: {}",
                port.fingerprint()
            );
        }
        for socket in allocation_udp {
            lifecycle.spawn(udp::allocation(Arc::clone(&shared), socket));
        }
        for socket in udp_relays {
            lifecycle.spawn(udp::relay(Arc::clone(&shared), Arc::new(socket)));
        }
        tracing::info!(%addrs, %advertise, "proxy node started");
        Ok(Self {
            shared,
            addrs,
            reloader: Reloader::new(config, node_sockets),
        })
    }

    /// Replaces the node's apps, secrets, ticket keys, allowlist and per-app
    /// limits with `config`'s, without dropping a session (the SIGHUP
    /// reload; `docs/operations.md`, "Reloading the configuration").
    ///
    /// All or nothing: a `config` that changes a setting fixed at start
    /// (listeners, the SOCKS5 listener, the `[limits]` other than
    /// `max_bindings_per_session` and `max_upstream_sockets_per_app`) is
    /// refused with [`ReloadError::Fixed`], naming each such key, and the
    /// node keeps its configuration. Bindings already admitted keep running;
    /// the new rules apply to every allocation, bind and login after this
    /// returns.
    ///
    /// ```no_run
    /// # fn example(node: &cloudproxy_server::ProxyNode) -> Result<(), Box<dyn std::error::Error>> {
    /// use cloudproxy_server::config::ServerConfig;
    ///
    /// let config = ServerConfig::from_file("proxy.toml".as_ref())?;
    /// match node.reload(&config) {
    ///     Ok(summary) => println!("configuration reloaded: {summary}"),
    ///     Err(e) => eprintln!("configuration not reloaded: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn reload(&self, config: &ServerConfig) -> Result<ReloadSummary, ReloadError> {
        self.reloader.reload(&self.shared, config)
    }

    /// Where the node listens.
    #[must_use]
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// The SHA-256 fingerprint (`AB:CD:…`) of the certificate the TLS port
    /// serves to new handshakes, when the port is on.
    #[must_use]
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.shared.tls.as_ref().map(TlsPort::fingerprint)
    }

    /// The node's counters now.
    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Live sessions of `app` on this node.
    #[must_use]
    pub fn sessions(&self, app: &str) -> usize {
        self.shared.quotas.sessions(app)
    }

    /// Starts a drain on demand and returns at once: readiness turns false
    /// and listeners stop accepting now (no new allocations, bindings or
    /// SOCKS5 clients); live sessions go on until they end or the
    /// configured drain deadline closes them. The process stays up; stop it
    /// with [`ProxyNode::shutdown`]. A second call does nothing. Call it
    /// within the tokio runtime: the drain runs as a task.
    pub fn begin_drain(&self) {
        begin_drain(&self.shared);
    }

    /// Whether a drain (on demand or for shutdown) has started.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        !self.shared.lifecycle.is_accepting()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful shutdown: stop accepting, let sessions drain up to the
    /// configured deadline, then close what is left.
    pub async fn shutdown(self) -> DrainOutcome {
        let outcome = self
            .shared
            .lifecycle
            .drain(self.shared.limits.drain_timeout())
            .await;
        tracing::info!(%outcome, stats = %self.shared.stats.snapshot(), "proxy node stopped");
        outcome
    }
}

/// [`ProxyNode::begin_drain`], for the admin listener too.
pub(crate) fn begin_drain(shared: &Arc<Shared>) {
    if !shared.lifecycle.is_accepting() {
        return;
    }
    shared.lifecycle.stop_accepting();
    let deadline = shared.limits.drain_timeout();
    tracing::info!(
        drain_timeout_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        "draining on demand: not ready, accepting nothing new; sessions finish or close at the deadline"
    );
    let lifecycle = shared.lifecycle.clone();
    let stats = Arc::clone(&shared.stats);
    tokio::spawn(async move {
        let outcome = lifecycle.drain(deadline).await;
        tracing::info!(%outcome, stats = %stats.snapshot(), "drain finished; the process stays up until stopped");
    });
}

fn proto_server(
    config: &ServerConfig,
    advertise: IpAddr,
    addrs: &BoundAddrs,
) -> Result<Server, ServeError> {
    let now = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut proto = cloudproxy_proto::server::ServerConfig::new(Timebase::new(now, unix));
    let limits = &config.limits;
    proto.ticket_lifetime = std::time::Duration::from_secs(limits.allocation_lifetime_secs);
    proto.max_session_lifetime = std::time::Duration::from_secs(limits.max_session_lifetime_secs);
    proto.handshake_timeout = limits.handshake_timeout();
    proto.idle_timeout = limits.idle_timeout();
    proto.keepalive_interval = std::time::Duration::from_secs(limits.keepalive_interval_secs);
    proto.max_frame_len = usize::try_from(limits.max_frame_len).unwrap_or(usize::MAX);
    proto.tcp_relays = vec![SocketAddr::new(advertise, addrs.tcp_relay.port())];
    proto.udp_relays = addrs
        .udp_relays
        .iter()
        .map(|a| SocketAddr::new(advertise, a.port()))
        .collect();

    let apps = credentials(config).map_err(ServeError::Config)?;
    let keys = ticket_ring(config);
    Ok(Server::new(
        proto,
        keys,
        Arc::new(apps),
        Arc::new(OsEntropy),
    ))
}

/// The TLS port's certificate: the configured PEM files, or a fresh
/// self-signed one in development mode.
fn tls_identity(config: &ServerConfig) -> Result<Identity, ServeError> {
    let tls = &config.tls;
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key).map_err(ServeError::Tls),
        _ => SelfSigned::development()
            .and_then(|made| made.identity())
            .map_err(ServeError::Tls),
    }
}

fn bind_error(protocol: &'static str, addr: SocketAddr, cause: io::Error) -> ServeError {
    ServeError::Bind {
        protocol,
        addr,
        cause,
    }
}

/// A listener and the address it really got.
async fn bind_tcp(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| bind_error("TCP", addr, e))?;
    // A restarted node must get its ports back while old connections linger
    // in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .map_err(|e| bind_error("TCP", addr, e))?;
    socket.bind(addr).map_err(|e| bind_error("TCP", addr, e))?;
    let listener = socket
        .listen(4096)
        .map_err(|e| bind_error("TCP", addr, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| bind_error("TCP", addr, e))?;
    Ok((listener, local))
}

/// The allocation service's TCP listener and UDP socket on one port number,
/// as clients expect. With port 0 the UDP socket takes the port the TCP
/// listener got, retrying with a new one if that UDP port is in use.
async fn bind_allocation_pair(
    addr: SocketAddr,
) -> Result<((TcpListener, SocketAddr), (UdpSocket, SocketAddr)), ServeError> {
    if addr.port() != 0 {
        return Ok((bind_tcp(addr).await?, bind_udp(addr).await?));
    }
    let mut last_error = None;
    for _ in 0..16 {
        let (listener, local) = bind_tcp(addr).await?;
        match bind_udp(local).await {
            Ok(udp) => return Ok(((listener, local), udp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("the loop ran"))
}

/// A UDP socket and the address it really got.
async fn bind_udp(addr: SocketAddr) -> Result<(UdpSocket, SocketAddr), ServeError> {
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|e| bind_error("UDP", addr, e))?;
    let local = socket
        .local_addr()
        .map_err(|e| bind_error("UDP", addr, e))?;
    Ok((socket, local))
}
