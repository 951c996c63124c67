//! The destination policy: canonicalisation, default deny, rule syntax, and
//! the start-up warnings for sensitive ranges.

use std::net::SocketAddr;

use cloudproxy_transport::allowlist::{Allowlist, Denied, Rule, canonical_ip};
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn empty_list_denies_everything() {
    let list = Allowlist::default();
    for dest in ["203.0.113.1:4000", "[2001:db8::1]:443", "127.0.0.1:80"] {
        assert!(
            matches!(list.check(addr(dest)), Err(Denied::NotAllowed { .. })),
            "{dest}"
        );
    }
}

#[test]
fn loopback_in_every_disguise_is_refused_when_not_allowed() {
    let list: Allowlist = "203.0.113.0/24, [2001:db8::/32]".parse().unwrap();
    for dest in [
        "127.0.0.1:4000",
        "127.1.2.3:4000",
        "[::1]:4000",
        "[::ffff:127.0.0.1]:4000",
        "[::127.0.0.1]:4000",
        "[64:ff9b::7f00:1]:4000",
    ] {
        let result = list.check(addr(dest));
        assert!(
            matches!(result, Err(Denied::NotAllowed { .. })),
            "{dest}: {result:?}"
        );
    }
}

#[test]
fn unspecified_is_refused_even_by_a_catch_all_rule() {
    let list: Allowlist = "0.0.0.0/0, [::/0]".parse().unwrap();
    for dest in ["0.0.0.0:4000", "[::]:4000", "[::ffff:0.0.0.0]:4000"] {
        let result = list.check(addr(dest));
        assert!(
            matches!(result, Err(Denied::Unspecified { .. })),
            "{dest}: {result:?}"
        );
    }
    for dest in ["255.255.255.255:4000", "224.0.0.1:4000", "[ff02::1]:4000"] {
        let result = list.check(addr(dest));
        assert!(
            matches!(result, Err(Denied::Broadcast { .. })),
            "{dest}: {result:?}"
        );
    }
    assert!(matches!(
        list.check(addr("203.0.113.1:0")),
        Err(Denied::PortZero { .. })
    ));
}

#[test]
fn mapped_forms_of_an_allowed_host_are_allowed_and_canonicalised() {
    let list: Allowlist = "127.0.0.1:9000-9010".parse().unwrap();
    assert_eq!(
        list.check(addr("127.0.0.1:9000")),
        Ok(addr("127.0.0.1:9000"))
    );
    assert_eq!(
        list.check(addr("[::ffff:127.0.0.1]:9010")),
        Ok(addr("127.0.0.1:9010"))
    );
    assert!(list.check(addr("127.0.0.1:9011")).is_err());
    assert!(list.check(addr("127.0.0.1:8999")).is_err());
}

#[test]
fn rule_syntax() {
    let cases = [
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("203.0.113.7", "203.0.113.7/32"),
        ("203.0.113.0/24:4000", "203.0.113.0/24:4000"),
        ("203.0.113.0/24:4000-4100", "203.0.113.0/24:4000-4100"),
        ("[2001:db8::/32]:443", "[2001:db8::/32]:443"),
        ("2001:db8::/32", "[2001:db8::/32]"),
        ("[2001:db8::1]", "[2001:db8::1/128]"),
        (" 10.0.0.0/8:1-65535 ", "10.0.0.0/8"),
    ];
    for (text, shown) in cases {
        let rule: Rule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(rule.to_string(), shown, "{text}");
    }
}

#[test]
fn malformed_rules_say_what_is_wrong() {
    let cases = [
        ("203.0.113.0/33", "not an IPv4 or IPv6 network"),
        (
            "203.0.113.1/24",
            "host bits set; did you mean 203.0.113.0/24?",
        ),
        ("example.com", "not an IP address"),
        ("10.0.0.0/8:0", "not a port from 1 to 65535"),
        ("10.0.0.0/8:70000", "not a port from 1 to 65535"),
        ("10.0.0.0/8:200-100", "port range 200-100 is empty"),
        ("[2001:db8::/32", "missing `]`"),
        ("[2001:db8::/32]443", "expected `:PORTS` after `]`"),
    ];
    for (text, expected) in cases {
        let err = text.parse::<Rule>().unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(expected), "{text}: {shown}");
        assert!(
            shown.contains(text.trim()),
            "{text}: the error quotes the rule: {shown}"
        );
    }
}

#[test]
fn risky_openings_are_reported() {
    let list: Allowlist = "0.0.0.0/0:443, 203.0.113.0/24, [fd00::/8]".parse().unwrap();
    let risky = list.risky_openings();
    let ranges: Vec<String> = risky.iter().map(|r| r.range.to_string()).collect();
    for expected in [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "169.254.0.0/16",
        "192.168.0.0/16",
        "fc00::/7",
    ] {
        assert!(
            ranges.contains(&expected.to_string()),
            "{expected} missing from {ranges:?}"
        );
    }
    assert!(!ranges.contains(&"::1/128".to_string()));
    assert!(risky.iter().all(|r| r.rule.to_string() != "203.0.113.0/24"));

    // A single address inside a range opens part of it, not all of it.
    let narrow: Allowlist = "10.231.0.10/32:7000".parse().unwrap();
    let shown: Vec<String> = narrow
        .risky_openings()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        ["allowlist rule 10.231.0.10/32:7000 opens part of 10.0.0.0/8 (private network)"]
    );
    let wide = list
        .risky_openings()
        .iter()
        .find(|r| r.range.to_string() == "127.0.0.0/8")
        .unwrap()
        .to_string();
    assert_eq!(
        wide,
        "allowlist rule 0.0.0.0/0:443 lets clients reach 127.0.0.0/8 (IPv4 loopback: services on the relay host)"
    );

    let safe: Allowlist = "203.0.113.0/24".parse().unwrap();
    assert!(safe.risky_openings().is_empty());
}

proptest! {
    /// Whatever IPv4 address is written in whichever IPv6 disguise, the
    /// decision is the one for the plain IPv4 address.
    #[test]
    fn disguises_do_not_change_decisions(v4 in any::<u32>(), port in 1u16.., net in any::<u32>(), len in 0u8..=32) {
        let ip = std::net::Ipv4Addr::from(v4);
        let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(net), len).unwrap().trunc();
        let list = Allowlist::new(vec![Rule { net: net.into(), ports: 1..=u16::MAX }]);
        let plain = list.check(SocketAddr::new(ip.into(), port)).is_ok();
        let mapped = list.check(SocketAddr::new(ip.to_ipv6_mapped().into(), port)).is_ok();
        prop_assert_eq!(plain, mapped);
        prop_assert_eq!(canonical_ip(ip.to_ipv6_mapped().into()), std::net::IpAddr::from(ip));
    }
}
