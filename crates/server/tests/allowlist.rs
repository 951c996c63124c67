//! The destination policy: canonicalisation, default deny, rule syntax, and
//! the start-up warnings for sensitive ranges.

use std::net::SocketAddr;

use cloudproxy_server::allowlist::{Allowlist, Denied, Rule, canonical_ip};
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

/// NAT64 (well-known and local-use prefixes), SIIT, 6to4 and Teredo
/// addresses carry IPv4 addresses; an operator who allows all of IPv6 must
/// not open loopback, private or metadata addresses through them.
#[test]
fn nat64_6to4_teredo_siit_forms_are_checked_as_ipv4() {
    // Every IPv6 address, and one public IPv4 network.
    let list: Allowlist = "[::/0], 203.0.113.0/24".parse().unwrap();
    for dest in [
        // NAT64, well-known prefix: 127.0.0.1, 10.0.0.1, 169.254.169.254.
        "[64:ff9b::7f00:1]:80",
        "[64:ff9b::a00:1]:80",
        "[64:ff9b::a9fe:a9fe]:80",
        // SIIT, IPv4-translated.
        "[::ffff:0:7f00:1]:80",
        "[::ffff:0:c0a8:1]:80",
        // 6to4: the site's IPv4 address is in bits 16..48.
        "[2002:7f00:1::1]:80",
        "[2002:a9fe:a9fe::1]:80",
        "[2002:a00:1:1::5]:80",
        // Teredo, server 127.0.0.1, client 203.0.113.5 (inverted).
        "[2001:0:7f00:1:0:0:34ff:8efa]:80",
        // Teredo, server 203.0.113.5, client 169.254.169.254 (inverted).
        "[2001:0:cb00:7105:0:0:5601:5601]:80",
    ] {
        let result = list.check(addr(dest));
        assert!(
            matches!(result, Err(Denied::NotAllowed { canonical, .. }) if canonical.is_ipv4()),
            "{dest}: {result:?}"
        );
    }
    // The IPv4 these forms carry is what the error names.
    assert_eq!(
        list.check(addr("[2002:a9fe:a9fe::1]:80")),
        Err(Denied::NotAllowed {
            addr: addr("[2002:a9fe:a9fe::1]:80"),
            canonical: addr("169.254.169.254:80"),
        })
    );
    // NAT64, local-use prefix (RFC 8215), whatever the bits between: the
    // IPv4 address may sit in any of four places, and each is checked (see
    // `local_use_nat64_is_checked_under_every_rfc6052_layout`).
    for dest in [
        "[64:ff9b:1::7f00:1]:80",
        "[64:ff9b:1:abcd:ef01:2345:a9fe:a9fe]:80",
    ] {
        let result = list.check(addr(dest));
        assert!(result.is_err(), "{dest}: {result:?}");
    }
    // An unspecified IPv4 inside is the unspecified address.
    for dest in ["[64:ff9b::]:80", "[2002::1]:80", "[::ffff:0:0.0.0.0]:80"] {
        let result = list.check(addr(dest));
        assert!(
            matches!(result, Err(Denied::Unspecified { .. })),
            "{dest}: {result:?}"
        );
    }

    // Allowed IPv4 addresses stay reachable in these forms: translated ones
    // are connected to as IPv4, tunnelled ones as the IPv6 address.
    let nat64 = list.check(addr("[64:ff9b::cb00:7105]:80"));
    assert_eq!(nat64, Ok(addr("203.0.113.5:80")));
    // A local-use NAT64 address passes only when every layout's IPv4
    // address is allowed, and is then connected to as IPv6. A /96-layout
    // address reads 0.0.0.0 under the /48 layout, so it is refused.
    let local = list.check(addr("[64:ff9b:1::cb00:7105]:80"));
    assert!(
        matches!(local, Err(Denied::Unspecified { .. })),
        "{local:?}"
    );
    let broad: Allowlist = "[::/0], 203.0.0.0/8".parse().unwrap();
    let every_layout = addr("[64:ff9b:1:cbcb:cbcb:cbcb:cbcb:cbcb]:80");
    assert_eq!(broad.check(every_layout), Ok(every_layout));
    let siit = list.check(addr("[::ffff:0:cb00:7105]:80"));
    assert_eq!(siit, Ok(addr("203.0.113.5:80")));
    let six_to_four = addr("[2002:cb00:7105::1]:80");
    assert_eq!(list.check(six_to_four), Ok(six_to_four));
    // Teredo, server 203.0.113.5, client 203.0.113.9.
    let teredo = addr("[2001:0:cb00:7105:0:0:34ff:8ef6]:80");
    assert_eq!(list.check(teredo), Ok(teredo));
    // A tunnelled address needs its IPv6 rule too, not only the IPv4 one.
    let v4_only: Allowlist = "203.0.113.0/24".parse().unwrap();
    assert!(v4_only.check(six_to_four).is_err());
    assert!(v4_only.check(teredo).is_err());
    assert!(v4_only.check(every_layout).is_err());
    // 2001:db8::/32 (documentation) is not Teredo.
    let doc = addr("[2001:db8::7f00:1]:80");
    assert_eq!(list.check(doc), Ok(doc));

    // And the start-up warning stays truthful: an IPv6 rule over these
    // prefixes opens no IPv4 range, so none is reported for it.
    let prefixes: Allowlist =
        "[::/0], [64:ff9b::/96], [64:ff9b:1::/48], [::ffff:0:0:0/96], [2002::/16], [2001::/32]"
            .parse()
            .unwrap();
    let risky = prefixes.risky_openings();
    assert!(
        risky.iter().all(|r| matches!(r.range, ipnet::IpNet::V6(_))),
        "{risky:?}"
    );
}

proptest! {
    /// Whatever IPv4 address is carried in a translated or tunnelled IPv6
    /// form, the decision of a list that allows all of IPv6 is the one for
    /// the plain IPv4 address.
    #[test]
    fn every_ipv4_carrying_form_decides_like_its_ipv4(v4 in any::<u32>(), port in 1u16.., net in any::<u32>(), len in 0u8..=32, other in any::<u32>()) {
        let ip = std::net::Ipv4Addr::from(v4);
        let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(net), len).unwrap().trunc();
        let list = Allowlist::new(vec![
            Rule { net: net.into(), ports: 1..=u16::MAX },
            Rule { net: "::/0".parse().unwrap(), ports: 1..=u16::MAX },
        ]);
        let plain = list.check(SocketAddr::new(ip.into(), port)).is_ok();
        let v6 = |segments: [u16; 8]| SocketAddr::new(std::net::Ipv6Addr::from(segments).into(), port);
        let (hi, lo) = ((v4 >> 16) as u16, v4 as u16);
        let (o_hi, o_lo) = ((other >> 16) as u16, other as u16);
        // Local-use NAT64: the last 32 bits are one of the IPv4 addresses
        // it may carry, so it never passes where the plain address fails.
        let local = v6([0x64, 0xff9b, 1, o_hi, o_lo, 0, hi, lo]);
        prop_assert!(list.check(local).is_err() || plain, "{}", local);
        for form in [
            v6([0x64, 0xff9b, 0, 0, 0, 0, hi, lo]),
            v6([0, 0, 0, 0, 0xffff, 0, hi, lo]),
            v6([0x2002, hi, lo, o_hi, 0, 0, 0, 1]),
        ] {
            prop_assert_eq!(list.check(form).is_ok(), plain, "{}", form);
        }
        // Teredo: allowed only when both the server and the client are.
        let other_ip = std::net::Ipv4Addr::from(other);
        let other_ok = list.check(SocketAddr::new(other_ip.into(), port)).is_ok();
        let teredo = v6([0x2001, 0, hi, lo, 0, 0, !o_hi, !o_lo]);
        prop_assert_eq!(list.check(teredo).is_ok(), plain && other_ok, "{}", teredo);
    }
}

/// The local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215) may hold a
/// translator prefix of /48, /56, /64 or /96, each with the IPv4 address in
/// other bits (RFC 6052 §2.2, around the u-octet at bits 64..72). The
/// address does not say which, so every layout's IPv4 address is checked,
/// and the address stays IPv6.
#[test]
fn local_use_nat64_is_checked_under_every_rfc6052_layout() {
    // All of IPv6, and all of IPv4 but 127.0.0.0/8.
    let list: Allowlist = "[::/0], 0.0.0.0/2, 64.0.0.0/3, 96.0.0.0/4, 112.0.0.0/5, \
         120.0.0.0/6, 124.0.0.0/7, 126.0.0.0/8, 128.0.0.0/1"
        .parse()
        .unwrap();
    // 203.203.203.203 under every layout: allowed, connected to as IPv6.
    let every = addr("[64:ff9b:1:cbcb:cbcb:cbcb:cbcb:cbcb]:80");
    assert_eq!(list.check(every), Ok(every));
    assert_eq!(
        canonical_ip(every.ip()),
        every.ip(),
        "not unwrapped: the layout is ambiguous"
    );
    // 127.0.0.1 under exactly one layout (the others read allowed
    // addresses): refused, naming 127.0.0.1.
    for (layout, dest) in [
        ("/48", "[64:ff9b:1:7f00:cb00:1cb:cbcb:cbcb]:80"),
        ("/56", "[64:ff9b:1:cb7f:cb00:1:cbcb:cbcb]:80"),
        ("/64", "[64:ff9b:1:cbcb:cb7f:0:1cb:cbcb]:80"),
        ("/96", "[64:ff9b:1:cbcb:cbcb:cbcb:7f00:1]:80"),
    ] {
        assert_eq!(
            list.check(addr(dest)),
            Err(Denied::NotAllowed {
                addr: addr(dest),
                canonical: addr("127.0.0.1:80"),
            }),
            "{layout} layout"
        );
    }
    // The well-known prefix has one layout (/96) and is still translated.
    assert_eq!(
        list.check(addr("[64:ff9b::cbcb:cbcb]:80")),
        Ok(addr("203.203.203.203:80"))
    );
}
