//! The `--server` argument: which proxy to use, written as on the command
//! line rather than as a `setParameters` array.

use std::net::IpAddr;

use cloudproxy_params::ProxyServer;

/// Parses `HOST[:PORT]` or `IP,IP,...[:PORT]` (IPv6 in brackets:
/// `[::1]:9700`); no port, or port 0, means the default allocation ports. A
/// list of addresses is a type-2 server, a name a type-1 server.
pub(crate) fn parse_server(text: &str) -> Result<ProxyServer, String> {
    let (hosts, port) = split_port(text)?;
    let names: Vec<&str> = hosts.split(',').map(str::trim).collect();
    let ips: Result<Vec<IpAddr>, _> = names
        .iter()
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
        })
        .collect();
    match (ips, names.as_slice()) {
        (Ok(ips), _) => ProxyServer::ip_list(ips, port).map_err(|e| e.to_string()),
        (Err(_), [name]) => ProxyServer::domain(*name, port).map_err(|e| e.to_string()),
        (Err(_), _) => Err(format!(
            "expected one host name or a list of IP addresses, found {hosts:?}"
        )),
    }
}

fn split_port(text: &str) -> Result<(&str, u16), String> {
    let port_at = match text.rfind(':') {
        // `[v6]:port`, `v4:port`, `name:port`; a bare IPv6 address has more
        // than one colon and no brackets.
        Some(i) if text[..i].ends_with(']') || !text[..i].contains(':') => i,
        _ => return Ok((text, 0)),
    };
    let port = text[port_at + 1..].parse::<u16>().map_err(|_| {
        format!(
            "expected a port from 0 to 65535 after the last `:`, found {:?}",
            &text[port_at + 1..]
        )
    })?;
    Ok((&text[..port_at], port))
}

/// Parses the media network's addresses, `TCP_ADDR,UDP_ADDR`.
pub(crate) fn parse_edge(
    text: &str,
) -> Result<(std::net::SocketAddr, std::net::SocketAddr), String> {
    let (tcp, udp) = text
        .split_once(',')
        .ok_or_else(|| format!("expected TCP_ADDR,UDP_ADDR, found {text:?}"))?;
    let addr = |a: &str| {
        a.trim()
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("expected an IP:PORT address, found {a:?}"))
    };
    Ok((addr(tcp)?, addr(udp)?))
}

#[cfg(test)]
mod tests {
    use cloudproxy_params::ProxyKind;

    use super::*;

    #[test]
    fn server_forms() {
        let s = parse_server("127.0.0.1:9700").unwrap();
        assert_eq!(
            s.kind(),
            &ProxyKind::IpList(vec!["127.0.0.1".parse().unwrap()])
        );
        assert_eq!(s.port(), 9700);
        let s = parse_server("10.0.0.1,10.0.0.2").unwrap();
        assert_eq!(s.ports(), [1080, 8000, 25000, 9700]);
        let s = parse_server("[::1]:4000").unwrap();
        assert_eq!(s.kind(), &ProxyKind::IpList(vec!["::1".parse().unwrap()]));
        let s = parse_server("::1").unwrap();
        assert_eq!(s.port(), 0);
        let s = parse_server("proxy.example.com:25000").unwrap();
        assert_eq!(s.kind(), &ProxyKind::Domain("proxy.example.com".into()));
        assert!(
            parse_server("a.example,b.example")
                .unwrap_err()
                .contains("one host name")
        );
        assert!(
            parse_server("127.0.0.1:http")
                .unwrap_err()
                .contains("expected a port")
        );
    }
}
