//! From a configured proxy server to the addresses to dial.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cloudproxy_params::{ProxyKind, ProxyServer};

/// The host name of a type-1 server could not be turned into addresses.
/// Each message is complete: no variant returns its cause again as
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolver answered with an error.
    #[error("resolving proxy host {host:?}: {cause}")]
    Lookup {
        /// The host name.
        host: String,
        /// The resolver's error.
        cause: std::io::Error,
    },
    /// The resolver did not answer in time.
    #[error("resolving proxy host {host:?}: no answer within {timeout:?}")]
    Timeout {
        /// The host name.
        host: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The resolver answered with no address.
    #[error("resolving proxy host {host:?}: the name has no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
}

/// The addresses to try for `server`, in the order to try them.
///
/// Type 1 names are resolved through the system resolver (so `/etc/hosts`
/// applies) within `dns_timeout`; type 2 lists are used as given. Port 0
/// expands to the default allocation ports. The order is port-major — every
/// address on the first port, then every address on the second — so a dead
/// address costs one stagger, not one per port; within a port, IPv6 and IPv4
/// addresses alternate (RFC 8305 §4).
pub async fn candidates(
    server: &ProxyServer,
    dns_timeout: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let ips = match server.kind() {
        ProxyKind::IpList(ips) => ips.clone(),
        ProxyKind::Domain(host) => resolve(host, dns_timeout).await?,
    };
    let ips = interleave_families(ips);
    Ok(server
        .ports()
        .iter()
        .flat_map(|&port| ips.iter().map(move |&ip| SocketAddr::new(ip, port)))
        .collect())
}

/// The addresses of `server` on one `port` (its TLS port, for the TLS
/// rung), IPv6 and IPv4 alternating; type 1 names resolved as in
/// [`candidates`].
pub async fn endpoints(
    server: &ProxyServer,
    port: u16,
    dns_timeout: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let ips = match server.kind() {
        ProxyKind::IpList(ips) => ips.clone(),
        ProxyKind::Domain(host) => resolve(host, dns_timeout).await?,
    };
    Ok(interleave_families(ips)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// The addresses of `host` (a name, or an IP address literal, brackets
/// allowed) on `port`, IPv6 and IPv4 alternating: an HTTP proxy's
/// addresses.
pub async fn host_endpoints(
    host: &str,
    port: u16,
    dns_timeout: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ips = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolve(bare, dns_timeout).await?,
    };
    Ok(interleave_families(ips)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

async fn resolve(host: &str, timeout: Duration) -> Result<Vec<IpAddr>, ResolveError> {
    let lookup = tokio::net::lookup_host((host, 0));
    let addrs = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| ResolveError::Timeout {
            host: host.to_owned(),
            timeout,
        })?
        .map_err(|cause| ResolveError::Lookup {
            host: host.to_owned(),
            cause,
        })?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        if !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
    }
    if ips.is_empty() {
        return Err(ResolveError::NoAddress {
            host: host.to_owned(),
        });
    }
    Ok(ips)
}

/// Alternates families, starting with the family of the first address, and
/// keeps the order within each family.
fn interleave_families(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let Some(first) = ips.first() else { return ips };
    let first_is_v6 = first.is_ipv6();
    let (mut primary, mut secondary): (Vec<_>, Vec<_>) =
        ips.into_iter().partition(|ip| ip.is_ipv6() == first_is_v6);
    let mut out = Vec::with_capacity(primary.len() + secondary.len());
    primary.reverse();
    secondary.reverse();
    loop {
        match (primary.pop(), secondary.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_keeping_their_own_order() {
        assert_eq!(
            interleave_families(ips(&["::1", "::2", "::3", "10.0.0.1"])),
            ips(&["::1", "10.0.0.1", "::2", "::3"])
        );
        assert_eq!(
            interleave_families(ips(&["10.0.0.1", "10.0.0.2", "::1"])),
            ips(&["10.0.0.1", "::1", "10.0.0.2"])
        );
        assert!(interleave_families(vec![]).is_empty());
    }
}
