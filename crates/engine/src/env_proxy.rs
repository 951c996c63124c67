//! The HTTP proxy of the environment: `HTTPS_PROXY` / `https_proxy` and
//! `NO_PROXY` / `no_proxy`, as curl and most tools read them.

use cloudproxy_params::{HttpProxy, ProxyKind, ProxyServer};

use crate::error::EngineError;

/// The environment's HTTPS proxy and its `NO_PROXY` list, if set.
///
/// # Errors
/// [`EngineError::InvalidConfig`] for an `HTTPS_PROXY` that does not parse.
pub(crate) fn proxy_from_env() -> Result<(Option<HttpProxy>, Option<String>), EngineError> {
    let read = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    };
    let Some(url) = read(["HTTPS_PROXY", "https_proxy"]) else {
        return Ok((None, None));
    };
    let proxy = HttpProxy::parse(&url).map_err(|e| EngineError::InvalidConfig {
        what: "HTTPS_PROXY (environment)",
        expected: "http://[user:password@]host:port",
        found: e.to_string(),
    })?;
    Ok((Some(proxy), read(["NO_PROXY", "no_proxy"])))
}

/// Whether `NO_PROXY` exempts `server` from the proxy: `*`, or an entry
/// that equals one of its IP addresses or is a suffix of its domain
/// (`example.com` and `.example.com` both match `proxy.example.com`).
pub(crate) fn exempt(no_proxy: &str, server: &ProxyServer) -> bool {
    no_proxy
        .split(',')
        .map(|entry| entry.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            entry == "*"
                || match server.kind() {
                    ProxyKind::Domain(host) => {
                        let host = host.to_ascii_lowercase();
                        host == entry || host.ends_with(&format!(".{entry}"))
                    }
                    ProxyKind::IpList(ips) => ips.iter().any(|ip| ip.to_string() == entry),
                }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_matches_domains_by_suffix_and_ips_exactly() {
        let domain = ProxyServer::domain("proxy.example.com", 0).unwrap();
        assert!(exempt("localhost, .example.com", &domain));
        assert!(exempt("example.com", &domain));
        assert!(exempt("*", &domain));
        assert!(!exempt("ample.com,other.org", &domain));
        let ips = ProxyServer::ip_list(vec!["10.0.0.1".parse().unwrap()], 0).unwrap();
        assert!(exempt("10.0.0.1", &ips));
        assert!(!exempt("10.0.0.2", &ips));
    }
}
