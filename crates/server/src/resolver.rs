//! The node's name resolver: `/etc/hosts`, then DNS, asynchronously, so
//! that a lookup the relay stops waiting for really stops.
//!
//! [`DnsResolver`] answers a name from the hosts file when it is there (all
//! its addresses, both families, as `getaddrinfo` does with `files` before
//! `dns`), and otherwise asks the name servers of `/etc/resolv.conf` (its
//! search list, `ndots`, `timeout` and `attempts` included) for A and AAAA
//! records in parallel. The queries are sockets and timers polled by the
//! lookup's own future: dropping it — at the lookup deadline, when the
//! session ends, at shutdown — closes them, so no query is sent again and
//! the app's place among its lookups in flight is given back at once.
//!
//! Both files are read once, when the resolver is made (at node start).

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Hosts, TokioResolver};

use crate::lookups::{LookupFuture, LookupHold, Resolve};

/// Where the system's resolver configuration is read from.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where the system's static names are read from.
const HOSTS: &str = "/etc/hosts";

/// The node's default resolver: the hosts file, then DNS (see the
/// [module documentation](self)). Lookups are cancelled when their future is
/// dropped.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use cloudproxy_server::config::ServerConfig;
/// use cloudproxy_server::ProxyNode;
/// use cloudproxy_server::resolver::DnsResolver;
///
/// let config = ServerConfig::from_file("proxy.toml".as_ref())?;
/// // What `ProxyNode::start` does.
/// let node = ProxyNode::start_with_resolver(&config, Arc::new(DnsResolver::from_system())).await?;
/// # Ok(()) }
/// ```
pub struct DnsResolver {
    hosts: Hosts,
    dns: Arc<TokioResolver>,
    /// Whether any name server is configured (else only the hosts file and
    /// the special-use names such as `localhost` resolve).
    has_servers: bool,
}

/// Parses `resolv.conf` text (hickory reads it on unix only).
#[cfg(unix)]
fn parse_resolv_conf(text: String) -> io::Result<(ResolverConfig, ResolverOpts)> {
    hickory_resolver::system_conf::parse_resolv_conf(text).map_err(io::Error::other)
}

/// Off unix there is no `resolv.conf` to parse: names resolve from the
/// hosts file only, as for a missing one (the node is built, not run, there).
#[cfg(not(unix))]
fn parse_resolv_conf(_text: String) -> io::Result<(ResolverConfig, ResolverOpts)> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "resolv.conf is read on unix only",
    ))
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver")
            .field("name_servers", &self.dns.config().name_servers().len())
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// The system's configuration: `/etc/hosts`, then the name servers,
    /// search list and options of `/etc/resolv.conf`.
    ///
    /// Never fails. Without a usable `resolv.conf` (missing, unreadable, no
    /// `nameserver` line) names resolve from the hosts file only, and a
    /// warning says why; without a hosts file, from DNS only.
    #[must_use]
    pub fn from_system() -> Self {
        let hosts = match File::open(HOSTS).and_then(|file| {
            let mut hosts = Hosts::default();
            hosts.read_hosts_conf(file)?;
            Ok(hosts)
        }) {
            Ok(hosts) => hosts,
            Err(e) => {
                tracing::info!(path = HOSTS, error = %e, "no hosts file: destination names resolve through DNS only");
                Hosts::default()
            }
        };
        Self::from_conf(
            Path::new(RESOLV_CONF),
            std::fs::read_to_string(RESOLV_CONF),
            hosts,
        )
    }

    /// A resolver that asks only `servers`, over UDP, with no hosts file
    /// and no search list: each query is given up after `query_timeout` and
    /// sent again up to `attempts` more times while the lookup lasts. For
    /// tests (a local server on 127.0.0.1) and for nodes that must not use
    /// the host's configuration.
    #[must_use]
    pub fn with_name_servers(
        servers: &[SocketAddr],
        query_timeout: Duration,
        attempts: usize,
    ) -> Self {
        let mut config = ResolverConfig::new();
        for &server in servers {
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
        }
        let mut options = ResolverOpts::default();
        options.timeout = query_timeout;
        options.attempts = attempts;
        Self::build(config, options, Hosts::default())
    }

    /// The resolver for a `resolv.conf` read from `path` (or why it could
    /// not be read) and a parsed hosts file.
    fn from_conf(path: &Path, resolv_conf: io::Result<String>, hosts: Hosts) -> Self {
        let parsed = resolv_conf.and_then(parse_resolv_conf);
        match parsed {
            Ok((config, options)) => {
                // Each server is listed once per protocol (UDP, TCP).
                let mut servers: Vec<SocketAddr> = config
                    .name_servers()
                    .iter()
                    .map(|s| s.socket_addr)
                    .collect();
                servers.sort_unstable();
                servers.dedup();
                tracing::info!(
                    path = %path.display(),
                    name_servers = servers.len(),
                    search = config.search().len(),
                    "destination names resolve from the hosts file, then DNS"
                );
                Self::build(config, options, hosts)
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "no usable resolver configuration: destination names resolve from the hosts file only"
                );
                Self::build(ResolverConfig::new(), ResolverOpts::default(), hosts)
            }
        }
    }

    fn build(config: ResolverConfig, mut options: ResolverOpts, hosts: Hosts) -> Self {
        // Both families, as getaddrinfo gives them; the allowlist keeps the
        // allowed ones.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The hosts file is consulted here, on the name as given, before
        // any query (hickory would ask DNS for the family the file lacks).
        options.use_hosts_file = ResolveHosts::Never;
        let has_servers = !config.name_servers().is_empty();
        let dns = hickory_resolver::Resolver::builder_with_config(
            config,
            TokioConnectionProvider::default(),
        )
        .with_options(options)
        .build();
        Self {
            hosts,
            dns: Arc::new(dns),
            has_servers,
        }
    }

    /// Every address the hosts file gives `host`, or `None` when it has none.
    fn in_hosts_file(&self, host: &str) -> Option<Vec<IpAddr>> {
        let name = Name::from_str(&host.to_ascii_lowercase()).ok()?;
        let found: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|rtype| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), rtype))
            })
            .flat_map(|lookup| {
                lookup
                    .iter()
                    .filter_map(hickory_resolver::proto::rr::RData::ip_addr)
                    .collect::<Vec<_>>()
            })
            .collect();
        (!found.is_empty()).then_some(found)
    }
}

impl Resolve for DnsResolver {
    fn lookup(&self, host: String, port: u16, hold: LookupHold) -> LookupFuture {
        if let Some(ips) = self.in_hosts_file(&host) {
            drop(hold);
            let addrs = ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect();
            return Box::pin(std::future::ready(Ok(addrs)));
        }
        let dns = Arc::clone(&self.dns);
        let has_servers = self.has_servers;
        Box::pin(async move {
            // The app's place lives exactly as long as the lookup: dropping
            // this future drops the queries' sockets and timers, and it.
            let _hold = hold;
            let found = dns.lookup_ip(host.as_str()).await.map_err(|e| {
                let kind = if e.is_no_records_found() {
                    io::ErrorKind::NotFound
                } else {
                    io::ErrorKind::Other
                };
                if has_servers {
                    io::Error::new(kind, e)
                } else {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "{host} is not in the hosts file, and no name server is configured: {e}"
                        ),
                    )
                }
            })?;
            Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> Hosts {
        let mut hosts = Hosts::default();
        hosts.read_hosts_conf(text.as_bytes()).unwrap();
        hosts
    }

    #[test]
    fn a_missing_or_empty_resolv_conf_leaves_the_hosts_file() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        for conf in [
            Err(missing),
            Ok(String::new()),
            Ok("search corp.test\n".into()),
        ] {
            let resolver =
                DnsResolver::from_conf(Path::new("/nowhere"), conf, hosts("192.0.2.7 box\n"));
            assert!(!resolver.has_servers);
            assert_eq!(
                resolver.in_hosts_file("box"),
                Some(vec![IpAddr::from([192, 0, 2, 7])])
            );
        }
    }

    #[tokio::test]
    async fn without_name_servers_the_hosts_file_and_localhost_still_resolve() {
        let resolver = DnsResolver::from_conf(
            Path::new("/nowhere"),
            Err(io::Error::from(io::ErrorKind::NotFound)),
            hosts("192.0.2.7 box\n"),
        );
        let lookup = |host: &str| resolver.lookup(host.to_owned(), 443, LookupHold::unbudgeted());
        assert_eq!(
            lookup("box").await.unwrap(),
            vec![SocketAddr::from(([192, 0, 2, 7], 443))]
        );
        // Not in this hosts file, answered without a query.
        let localhost = lookup("localhost").await.unwrap();
        assert!(
            localhost.contains(&SocketAddr::from(([127, 0, 0, 1], 443))),
            "{localhost:?}"
        );
        // Anything else fails at once, saying why (for the log).
        let err = lookup("elsewhere.test").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains("no name server is configured"),
            "{err}"
        );
    }

    #[test]
    fn the_hosts_file_gives_every_address_of_a_name_ignoring_case() {
        let resolver = DnsResolver::from_conf(
            Path::new("/nowhere"),
            Ok("nameserver 192.0.2.53\n".into()),
            hosts("127.0.0.1 localhost\n::1 localhost\n192.0.2.8 Box.Corp.Test\n"),
        );
        assert!(resolver.has_servers);
        assert_eq!(
            resolver.in_hosts_file("LOCALHOST"),
            Some(vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            ])
        );
        assert_eq!(
            resolver.in_hosts_file("box.corp.test."),
            Some(vec![IpAddr::from([192, 0, 2, 8])])
        );
        assert_eq!(resolver.in_hosts_file("other.corp.test"), None);
        assert_eq!(resolver.in_hosts_file("not a name\n"), None);
    }
}
