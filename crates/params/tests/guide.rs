//! Every parameter string in the SDK guide (reference/cloud-proxy-guide.md),
//! verbatim after undoing the Java string escaping, with the typed values it
//! must give.

use std::net::IpAddr;

use cloudproxy_params::{DEFAULT_PORTS, ErrorKind, ProxyKind, ProxyServer, parse};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP literal")
}

/// `setParameters("{\"rtc.enable_proxy\":true}");`
#[test]
fn enable_proxy_true() {
    let p = parse(r#"{"rtc.enable_proxy":true}"#).unwrap();
    assert_eq!(p.enable_proxy(), Some(true));
    assert_eq!(p.proxy_server(), None);
    assert_eq!(p.others().count(), 0);
}

/// `setParameters("{\"rtc.enable_proxy\":false}");`
#[test]
fn enable_proxy_false() {
    let p = parse(r#"{"rtc.enable_proxy":false}"#).unwrap();
    assert_eq!(p.enable_proxy(), Some(false));
    assert_eq!(p.proxy_server(), None);
}

/// `setParameters("{\"rtc.proxy_server\":[1, \"ap-proxy.agora.io\", 0]}");`
#[test]
fn default_domain_server() {
    let p = parse(r#"{"rtc.proxy_server":[1, "ap-proxy.agora.io", 0]}"#).unwrap();
    assert_eq!(p.enable_proxy(), None);
    let server = p.proxy_server().unwrap();
    assert_eq!(
        server.kind(),
        &ProxyKind::Domain("ap-proxy.agora.io".to_owned())
    );
    assert_eq!(server.kind().proxy_type(), 1);
    assert_eq!(server.port(), 0);
    assert!(server.uses_default_ports());
    assert_eq!(server.ports(), DEFAULT_PORTS);
    assert_eq!(server, &ProxyServer::default_server());
}

/// The guide's sample code, inner quotes unescaped (not JSON; accepted for
/// compatibility):
/// `setParameters("{\"rtc.proxy_server\":[2, \"[\"192.168.0.112\",\"127.0.0.1\"]\", 0]}");`
#[test]
fn guide_sample_ip_list_unescaped() {
    let p = parse(r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#).unwrap();
    let server = p.proxy_server().unwrap();
    assert_eq!(
        server.kind(),
        &ProxyKind::IpList(vec![ip("192.168.0.112"), ip("127.0.0.1")])
    );
    assert_eq!(server.kind().proxy_type(), 2);
    assert_eq!(server.port(), 0);
    assert!(server.uses_default_ports());
}

/// The table's documented format for the IP list, `"[\"ip1\",\"ip2\"]"`, as
/// a JSON string inside the parameter string.
#[test]
fn documented_ip_list_in_a_string() {
    let p = parse(r#"{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}"#).unwrap();
    assert_eq!(
        p.proxy_server().unwrap().kind(),
        &ProxyKind::IpList(vec![ip("192.168.0.112"), ip("127.0.0.1")])
    );
}

/// The table's placeholders `ip1`, `ip2` are not addresses: the error names the entry.
#[test]
fn documented_placeholder_ips_are_rejected() {
    let input = r#"{"rtc.proxy_server":[2, "[\"ip1\",\"ip2\"]", 0]}"#;
    let err = parse(input).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidIp);
    assert_eq!(err.offset(), Some(24));
    assert!(err.to_string().contains("\"ip1\""), "{err}");
}

/// The template `setParameters("{\"rtc.proxy_server\":[proxy_type, \"ip or dns\", port]}");`
/// is not a value: the error points at `proxy_type`.
#[test]
fn template_is_a_syntax_error_at_the_placeholder() {
    let err = parse(r#"{"rtc.proxy_server":[proxy_type, "ip or dns", port]}"#).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Syntax);
    assert_eq!(err.offset(), Some(21));
    assert!(err.to_string().contains("found `proxy_type`"), "{err}");
}

/// Enable, then configure, as the second sample does in two calls: the same
/// pair in one string also works.
#[test]
fn both_keys_in_one_string() {
    let p = parse(r#"{"rtc.enable_proxy":true,"rtc.proxy_server":[2,["::1","10.0.0.1"],443]}"#)
        .unwrap();
    assert_eq!(p.enable_proxy(), Some(true));
    let server = p.proxy_server().unwrap();
    assert_eq!(
        server.kind(),
        &ProxyKind::IpList(vec![ip("::1"), ip("10.0.0.1")])
    );
    assert_eq!(server.port(), 443);
    assert!(!server.uses_default_ports());
    assert_eq!(server.ports(), [443]);
}

/// All three forms of the IP list give equal parameters and the same output.
#[test]
fn three_ip_list_forms_agree() {
    let escaped =
        parse(r#"{"rtc.proxy_server":[2, "[\"192.168.0.112\",\"127.0.0.1\"]", 0]}"#).unwrap();
    let unescaped =
        parse(r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#).unwrap();
    let array = parse(r#"{"rtc.proxy_server":[2, ["192.168.0.112","127.0.0.1"], 0]}"#).unwrap();
    assert_eq!(escaped, unescaped);
    assert_eq!(escaped.proxy_server(), array.proxy_server());
    assert_eq!(
        unescaped.to_json(),
        r#"{"rtc.proxy_server":[2,"[\"192.168.0.112\",\"127.0.0.1\"]",0]}"#
    );
    assert_eq!(parse(&unescaped.to_json()).unwrap(), unescaped);
}
