//! The destination allowlist: which media-network addresses a relay may forward to.
//!
//! A relay that can be pointed anywhere is an open door into the operator's
//! network, so the list is default-deny and every destination is
//! *canonicalised* before it is checked: `::ffff:127.0.0.1`, `::127.0.0.1`,
//! `::ffff:0:127.0.0.1` and `64:ff9b::7f00:1` all mean 127.0.0.1 to somebody
//! on the path, and are checked as 127.0.0.1; a 6to4 or Teredo address is
//! checked together with the IPv4 addresses it tunnels to, and a local-use
//! NAT64 address (`64:ff9b:1::/48`) with every IPv4 address it could carry. The unspecified addresses (`0.0.0.0`, `::`, which Linux treats
//! as "this host"), broadcast and multicast are refused whatever the list says.
//!
//! ```
//! use cloudproxy_server::allowlist::{Allowlist, Denied};
//!
//! let list: Allowlist = "203.0.113.0/24:4000-4100, [2001:db8::/32]:443".parse()?;
//! assert!(list.check("203.0.113.9:4001".parse()?).is_ok());
//! // The same host written as an IPv4-mapped IPv6 address is the same host.
//! assert!(list.check("[::ffff:203.0.113.9]:4001".parse()?).is_ok());
//! assert!(matches!(
//!     list.check("127.0.0.1:4001".parse()?),
//!     Err(Denied::NotAllowed { .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer};

/// The address a packet to `ip` really reaches, for the purpose of policy.
///
/// IPv6 forms that a translator on the path turns back into IPv4 are
/// unwrapped to that IPv4 address, which is then the one checked and the one
/// the relay sends to (so no translator ever sees the IPv6 form):
///
/// - IPv4-mapped `::ffff:a.b.c.d`;
/// - the deprecated IPv4-compatible `::a.b.c.d` (except `::` and `::1`);
/// - SIIT's IPv4-translated `::ffff:0:a.b.c.d` (`::ffff:0:0:0/96`, RFC 2765);
/// - NAT64's well-known prefix `64:ff9b::/96` (RFC 6052), the IPv4 address
///   in the last 32 bits.
///
/// 6to4 and Teredo addresses are tunnelled, not translated: they stay IPv6
/// here, and [`Allowlist::check`] checks the IPv4 addresses they carry (see
/// [`tunnelled_ipv4`]) as well. So does a local-use NAT64 address
/// (`64:ff9b:1::/48`, RFC 8215): the translator's prefix inside that /48 may
/// be a /48, /56, /64 or /96, each with the IPv4 address elsewhere, and the
/// address alone does not say which.
///
/// ```
/// use cloudproxy_server::allowlist::canonical_ip;
/// use std::net::IpAddr;
///
/// let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
/// assert_eq!(canonical_ip(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
/// let nat64: IpAddr = "64:ff9b::a9fe:a9fe".parse().unwrap();
/// assert_eq!(canonical_ip(nat64), "169.254.169.254".parse::<IpAddr>().unwrap());
/// // Local-use NAT64: which bits hold the IPv4 address is not known.
/// let local: IpAddr = "64:ff9b:1::a9fe:a9fe".parse().unwrap();
/// assert_eq!(canonical_ip(local), local);
/// ```
#[must_use]
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let compatible = s[..6].iter().all(|&x| x == 0) && !(v6.is_unspecified() || v6.is_loopback());
    let siit = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || siit || nat64 {
        IpAddr::V4(low_v4(v6))
    } else {
        ip
    }
}

/// The IPv4 address in the last 32 bits of `v6`.
fn low_v4(v6: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(
        v6.octets()[12..].try_into().expect("4 bytes"),
    ))
}

/// The IPv4 addresses an IPv6 address may carry to a host other than its
/// own, each of which must be allowed for the IPv6 address to be:
///
/// - 6to4 (`2002::/16`, RFC 3056): the site's IPv4 address, bits 16..48;
/// - Teredo (`2001::/32`, RFC 4380): the Teredo server's IPv4 address
///   (bits 32..64) and the client's (the last 32 bits, inverted);
/// - local-use NAT64 (`64:ff9b:1::/48`, RFC 8215): the IPv4 address under
///   each layout RFC 6052 §2.2 allows for a prefix inside that /48 — /48
///   (bits 48..64 and 72..88, around the u-octet at 64..72), /56 (bits
///   56..64 and 72..96), /64 (bits 72..104) and /96 (bits 96..128).
///
/// Empty for every other address.
///
/// ```
/// use cloudproxy_server::allowlist::tunnelled_ipv4;
/// use std::net::Ipv4Addr;
///
/// let six_to_four = "2002:7f00:1::1".parse().unwrap();
/// assert_eq!(tunnelled_ipv4(six_to_four), vec![Ipv4Addr::LOCALHOST]);
/// // 127.0.0.1 under the /48 layout, 169.254.169.254 under the /96 one.
/// let local = "64:ff9b:1:7f00:0:100:a9fe:a9fe".parse().unwrap();
/// let carried = tunnelled_ipv4(local);
/// assert!(carried.contains(&Ipv4Addr::LOCALHOST));
/// assert!(carried.contains(&Ipv4Addr::new(169, 254, 169, 254)));
/// ```
#[must_use]
pub fn tunnelled_ipv4(ip: IpAddr) -> Vec<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else {
        return Vec::new();
    };
    let o = v6.octets();
    let v4 = |at: usize| Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3]);
    match v6.segments() {
        [0x2002, ..] => vec![v4(2)],
        [0x2001, 0, ..] => vec![v4(4), Ipv4Addr::from(!u32::from(v4(12)))],
        [0x64, 0xff9b, 1, ..] => {
            let mut all = vec![
                Ipv4Addr::new(o[6], o[7], o[9], o[10]),
                Ipv4Addr::new(o[7], o[9], o[10], o[11]),
                v4(9),
                v4(12),
            ];
            all.dedup();
            all
        }
        _ => Vec::new(),
    }
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// `0.0.0.0` or `::`: on Linux a connection to them reaches this host.
    #[error("destination {addr} is the unspecified address, which reaches the relay host itself")]
    Unspecified {
        /// The destination as the client gave it.
        addr: SocketAddr,
    },
    /// Broadcast or multicast: one packet in, many out.
    #[error("destination {addr} is a broadcast or multicast address")]
    Broadcast {
        /// The destination as the client gave it.
        addr: SocketAddr,
    },
    /// Port 0 is not a destination.
    #[error("destination {addr} has port 0")]
    PortZero {
        /// The destination as the client gave it.
        addr: SocketAddr,
    },
    /// No rule of the allowlist covers the destination.
    #[error("destination {addr} (checked as {canonical}) is not in the relay's allowlist")]
    NotAllowed {
        /// The destination as the client gave it.
        addr: SocketAddr,
        /// The address that was checked, after canonicalisation.
        canonical: SocketAddr,
    },
}

/// One allowlist entry: a network and a range of ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The network (a bare address is a /32 or /128).
    pub net: IpNet,
    /// The ports allowed on it, inclusive.
    pub ports: RangeInclusive<u16>,
}

impl Rule {
    fn covers(&self, addr: SocketAddr) -> bool {
        self.net.contains(&addr.ip()) && self.ports.contains(&addr.port())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            IpNet::V4(net) => write!(f, "{net}")?,
            IpNet::V6(net) => write!(f, "[{net}]")?,
        }
        match (*self.ports.start(), *self.ports.end()) {
            (1, u16::MAX) => Ok(()),
            (a, b) if a == b => write!(f, ":{a}"),
            (a, b) => write!(f, ":{a}-{b}"),
        }
    }
}

/// A rule that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "allowlist rule {rule:?}: {problem} (expected NET, NET:PORTS or [V6NET]:PORTS, e.g. 203.0.113.0/24:4000-4100 or [2001:db8::/32]:443)"
)]
pub struct RuleParseError {
    /// The rule text as written.
    pub rule: String,
    /// What is wrong with it.
    pub problem: RuleProblem,
}

/// What is wrong with an allowlist rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleProblem {
    /// `[` without its `]`.
    #[error("missing `]` after the IPv6 network")]
    UnclosedBracket,
    /// Something other than `:PORTS` after `]`.
    #[error("expected `:PORTS` after `]`, found {found:?}")]
    AfterBracket {
        /// What followed the `]`.
        found: String,
    },
    /// A network with `/` that is not a CIDR.
    #[error("{found:?} is not an IPv4 or IPv6 network in CIDR form")]
    NotCidr {
        /// The network as written.
        found: String,
    },
    /// A CIDR with bits set after its prefix.
    #[error("{found:?} has host bits set; did you mean {network}?")]
    HostBits {
        /// The network as written.
        found: String,
        /// The network it would be without them.
        network: IpNet,
    },
    /// Neither an address nor a network.
    #[error("{found:?} is not an IP address or network")]
    NotAddress {
        /// The text as written.
        found: String,
    },
    /// A port that is not 1 to 65535.
    #[error("{found:?} is not a port from 1 to 65535")]
    Port {
        /// The port as written.
        found: String,
    },
    /// A range whose first port is above its last.
    #[error("port range {first}-{last} is empty")]
    EmptyRange {
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
}

impl FromStr for Rule {
    type Err = RuleParseError;

    /// `NET`, `NET:PORTS` or `[V6NET]:PORTS`, where `NET` is an address or a
    /// CIDR and `PORTS` a port or an inclusive range `A-B`. No ports means
    /// ports 1–65535.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |problem: RuleProblem| RuleParseError {
            rule: text.to_owned(),
            problem,
        };
        let text_trimmed = text.trim();
        let (net_text, ports_text) = if let Some(rest) = text_trimmed.strip_prefix('[') {
            let (net, after) = rest
                .split_once(']')
                .ok_or_else(|| err(RuleProblem::UnclosedBracket))?;
            match after {
                "" => (net, None),
                _ => match after.strip_prefix(':') {
                    Some(ports) => (net, Some(ports)),
                    None => {
                        return Err(err(RuleProblem::AfterBracket {
                            found: after.to_owned(),
                        }));
                    }
                },
            }
        } else if text_trimmed.matches(':').count() == 1 {
            let (net, ports) = text_trimmed.split_once(':').unwrap_or((text_trimmed, ""));
            (net, Some(ports))
        } else {
            (text_trimmed, None)
        };
        let net = parse_net(net_text).map_err(err)?;
        let ports = match ports_text {
            None => 1..=u16::MAX,
            Some(p) => parse_ports(p).map_err(err)?,
        };
        Ok(Self { net, ports })
    }
}

fn parse_net(text: &str) -> Result<IpNet, RuleProblem> {
    let found = || text.to_owned();
    if text.contains('/') {
        let net: IpNet = text
            .parse()
            .map_err(|_| RuleProblem::NotCidr { found: found() })?;
        if net.trunc() != net {
            return Err(RuleProblem::HostBits {
                found: found(),
                network: net.trunc(),
            });
        }
        Ok(net)
    } else {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| RuleProblem::NotAddress { found: found() })?;
        Ok(IpNet::from(ip))
    }
}

fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, RuleProblem> {
    let port = |p: &str| -> Result<u16, RuleProblem> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(RuleProblem::Port {
                found: p.to_owned(),
            }),
            Ok(n) => Ok(n),
        }
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(RuleProblem::EmptyRange { first, last });
    }
    Ok(first..=last)
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A default-deny list of destinations the relay may forward to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Allowlist {
    rules: Vec<Rule>,
}

impl Allowlist {
    /// An allowlist of the given rules.
    #[must_use]
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// The rules, in order.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Checks a destination; on success returns the canonical address, which
    /// is the one to connect to (so the check and the use cannot disagree).
    ///
    /// A 6to4, Teredo or local-use NAT64 destination passes only when a
    /// rule covers it *and* every IPv4 address it may carry (with the same
    /// port, see [`tunnelled_ipv4`]) passes as an IPv4 destination: allowing
    /// a broad IPv6 range never opens loopback, private or metadata
    /// addresses through a tunnel or a translator.
    pub fn check(&self, addr: SocketAddr) -> Result<SocketAddr, Denied> {
        let canonical = SocketAddr::new(canonical_ip(addr.ip()), addr.port());
        self.check_canonical(addr, canonical)?;
        for v4 in tunnelled_ipv4(canonical.ip()) {
            self.check_canonical(addr, SocketAddr::new(v4.into(), addr.port()))?;
        }
        Ok(canonical)
    }

    /// The checks on one canonical address; errors name `addr` as given.
    fn check_canonical(&self, addr: SocketAddr, canonical: SocketAddr) -> Result<(), Denied> {
        let ip = canonical.ip();
        if ip.is_unspecified() {
            return Err(Denied::Unspecified { addr });
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(Denied::Broadcast { addr });
        }
        if addr.port() == 0 {
            return Err(Denied::PortZero { addr });
        }
        if self.rules.iter().any(|rule| rule.covers(canonical)) {
            Ok(())
        } else {
            Err(Denied::NotAllowed { addr, canonical })
        }
    }

    /// The sensitive ranges (loopback, private, link-local, cloud metadata…)
    /// that this list opens, each with the rule that opens it. An operator
    /// should be told about every one of them at start-up.
    #[must_use]
    pub fn risky_openings(&self) -> Vec<RiskyOpening> {
        let mut found = Vec::new();
        for rule in &self.rules {
            for &(range, what) in SENSITIVE_RANGES {
                let range: IpNet = range.parse().expect("the sensitive ranges are valid CIDRs");
                if overlaps(&rule.net, &range) {
                    found.push(RiskyOpening {
                        rule: rule.clone(),
                        range,
                        what,
                    });
                }
            }
        }
        found
    }
}

impl FromStr for Allowlist {
    type Err = RuleParseError;

    /// Comma-separated rules (see [`Rule`]'s `FromStr`); an empty string is the
    /// empty (deny-everything) list.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self::new)
    }
}

/// A sensitive range that an allowlist rule opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskyOpening {
    /// The rule that opens it.
    pub rule: Rule,
    /// The sensitive range.
    pub range: IpNet,
    /// What lives there.
    pub what: &'static str,
}

impl fmt::Display for RiskyOpening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.rule.net.prefix_len() <= self.range.prefix_len();
        if whole {
            write!(
                f,
                "allowlist rule {} lets clients reach {} ({})",
                self.rule, self.range, self.what
            )
        } else {
            write!(
                f,
                "allowlist rule {} opens part of {} ({})",
                self.rule, self.range, self.what
            )
        }
    }
}

/// Ranges an allowlist should not open without the operator knowing.
const SENSITIVE_RANGES: &[(&str, &str)] = &[
    ("127.0.0.0/8", "IPv4 loopback: services on the relay host"),
    ("::1/128", "IPv6 loopback: services on the relay host"),
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "private network"),
    ("172.16.0.0/12", "private network"),
    ("192.168.0.0/16", "private network"),
    ("100.64.0.0/10", "carrier-grade NAT shared space"),
    (
        "169.254.0.0/16",
        "IPv4 link-local, including the cloud metadata service 169.254.169.254",
    ),
    ("fe80::/10", "IPv6 link-local"),
    (
        "fc00::/7",
        "IPv6 unique-local, including cloud metadata fd00:ec2::254",
    ),
];

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(a), IpNet::V4(b)) => overlaps_v4(a, b),
        (IpNet::V6(a), IpNet::V6(b)) => overlaps_v6(a, b),
        // An IPv6 rule never opens an IPv4 range, whichever IPv4-carrying
        // prefix it covers (::ffff:0:0/96, ::/96, ::ffff:0:0:0/96,
        // 64:ff9b::/96, 64:ff9b:1::/48, 2002::/16, 2001::/32): translated
        // forms are checked as their IPv4 address against the IPv4 rules,
        // tunnelled and local-use NAT64 ones against both. So mixed pairs never overlap in
        // effect, and the IPv4 rules' own warnings are the whole story.
        _ => false,
    }
}

fn overlaps_v4(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps_v6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
