//! The firewall in `corp`: a declarative rule set, written out as one
//! nftables script.
//!
//! A rule set is a name and a list of [`Rule`]s; everything not accepted is
//! dropped (not rejected), as behind a real enterprise firewall. The output
//! chain is stateless on purpose, so a rule set applied mid-call takes
//! effect at once, whatever conntrack remembers.

use std::fmt::Write as _;

use super::bed::{
    ALLOCATION_PORTS, BUMP_PORT, GATEWAY, NODE_A, NODE_B, NTLM_PORT, SQUID, SQUID_PORT,
    TCP_RELAY_PORT, TLS_PORT, UDP_RELAY_PORTS,
};

/// A transport protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Destination ports: single ports or inclusive ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ports {
    One(u16),
    Range(u16, u16),
}

/// One line of the rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rule {
    /// `corp` may reach these hosts on these ports.
    Accept {
        proto: Proto,
        hosts: Vec<&'static str>,
        ports: Vec<Ports>,
    },
    /// Nothing reaches this host and nothing from it is taken in, even on a
    /// flow that was established before: a node that goes silent. Evaluated
    /// before every accept.
    BlackHole(&'static str),
}

/// A named firewall rule set for `corp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Firewall {
    /// Names the rule set in the logs and in `rules-<name>.nft`.
    pub(super) name: &'static str,
    rules: Vec<Rule>,
}

const NODES: [&str; 2] = [NODE_A, NODE_B];

fn allocation_ports() -> Vec<Ports> {
    ALLOCATION_PORTS.map(Ports::One).to_vec()
}

impl Firewall {
    /// Nothing allowed at all.
    pub(super) fn nothing() -> Self {
        Self::named("Nothing")
    }

    /// An empty rule set with this name; add rules with [`Self::accept`]
    /// and [`Self::black_hole`].
    pub(super) fn named(name: &'static str) -> Self {
        Self {
            name,
            rules: Vec::new(),
        }
    }

    /// Also accept `proto` to `hosts` on `ports`.
    pub(super) fn accept(mut self, proto: Proto, hosts: &[&'static str], ports: &[Ports]) -> Self {
        self.rules.push(Rule::Accept {
            proto,
            hosts: hosts.to_vec(),
            ports: ports.to_vec(),
        });
        self
    }

    /// Also drop everything to and from `host`.
    pub(super) fn black_hole(mut self, host: &'static str) -> Self {
        self.rules.push(Rule::BlackHole(host));
        self
    }

    /// The guide's whitelist (step 4) for both proxy addresses.
    pub(super) fn whitelist() -> Self {
        Self::guide("Whitelist", &allocation_ports(), true)
    }

    /// The whitelist without any UDP.
    pub(super) fn udp_blocked() -> Self {
        Self::guide("UdpBlocked", &allocation_ports(), false)
    }

    /// Only allocation port 9700 (TCP and UDP), plus the relays.
    pub(super) fn only_9700() -> Self {
        Self::guide("Only9700", &[Ports::One(9700)], true)
    }

    /// The whitelist, but node B black-holed.
    pub(super) fn black_hole_b() -> Self {
        Self::whitelist().renamed("BlackholeB").black_hole(NODE_B)
    }

    /// Scenario 9: only TCP 443 to the nodes (their TLS port); no UDP, no
    /// 4000, no allocation port.
    pub(super) fn only_tls() -> Self {
        Self::named("OnlyTls443").accept(Proto::Tcp, &NODES, &[Ports::One(TLS_PORT)])
    }

    /// Scenario 10: only TCP 443 of the DPI gateway (haproxy); the nodes
    /// themselves are out of reach.
    pub(super) fn only_gateway() -> Self {
        Self::named("OnlyDpiGateway443").accept(Proto::Tcp, &[GATEWAY], &[Ports::One(TLS_PORT)])
    }

    /// Scenario 11: only the explicit HTTP proxy (squid, Basic auth); no
    /// route to the nodes, no DNS.
    pub(super) fn only_squid() -> Self {
        Self::named("OnlySquid3128").accept(Proto::Tcp, &[SQUID], &[Ports::One(SQUID_PORT)])
    }

    /// Scenario 14 (A1): only squid demanding NTLM.
    pub(super) fn only_ntlm_squid() -> Self {
        Self::named("OnlyNtlmSquid3130").accept(Proto::Tcp, &[SQUID], &[Ports::One(NTLM_PORT)])
    }

    /// Scenario 13: only the TLS-intercepting proxy (squid with ssl-bump).
    pub(super) fn only_bumping_squid() -> Self {
        Self::named("OnlyBumpingSquid3129").accept(Proto::Tcp, &[SQUID], &[Ports::One(BUMP_PORT)])
    }

    fn renamed(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// The guide's table with these allocation ports: TCP to them and the
    /// message relay, and (with `udp`) UDP to them and the media relays.
    fn guide(name: &'static str, allocation: &[Ports], udp: bool) -> Self {
        let (lo, hi) = UDP_RELAY_PORTS;
        let tcp: Vec<Ports> = allocation
            .iter()
            .copied()
            .chain([Ports::One(TCP_RELAY_PORT)])
            .collect();
        let fw = Self::named(name).accept(Proto::Tcp, &NODES, &tcp);
        if !udp {
            return fw;
        }
        let udp: Vec<Ports> = allocation
            .iter()
            .copied()
            .chain([Ports::Range(lo, hi)])
            .collect();
        fw.accept(Proto::Udp, &NODES, &udp)
    }

    /// The whole nftables script (it flushes what was there before).
    pub(super) fn script(&self) -> String {
        let set = |items: Vec<String>| {
            if items.len() == 1 {
                items.concat()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        };
        let (mut out_rules, mut in_rules) = (String::new(), String::new());
        // Black holes first: they win over any accept.
        for rule in &self.rules {
            if let Rule::BlackHole(host) = rule {
                let _ = writeln!(out_rules, "    ip daddr {host} counter drop");
                let _ = writeln!(in_rules, "    ip saddr {host} counter drop");
            }
        }
        for rule in &self.rules {
            if let Rule::Accept {
                proto,
                hosts,
                ports,
            } = rule
            {
                let hosts = set(hosts.iter().map(|h| (*h).to_owned()).collect());
                let ports = ports
                    .iter()
                    .map(|p| match p {
                        Ports::One(port) => port.to_string(),
                        Ports::Range(lo, hi) => format!("{lo}-{hi}"),
                    })
                    .collect();
                let _ = writeln!(
                    out_rules,
                    "    ip daddr {hosts} {} dport {} accept",
                    proto.nft(),
                    set(ports)
                );
            }
        }
        // Input takes only replies; a counted rule shows whether any DNS
        // query tried to leave.
        format!(
            "flush ruleset
table inet cpe2e {{
  chain output {{
    type filter hook output priority filter; policy drop;
    oifname \"lo\" accept
    meta l4proto {{ tcp, udp }} th dport 53 counter drop comment \"dns\"
{out_rules}  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
{in_rules}    ct state established,related accept
  }}
}}
"
        )
    }

    /// Whether `proto` to `host:port` is accepted by this rule set.
    pub(super) fn allows(&self, proto: Proto, host: &str, port: u16) -> bool {
        let holed = self
            .rules
            .iter()
            .any(|r| matches!(r, Rule::BlackHole(h) if *h == host));
        !holed
            && self.rules.iter().any(|r| match r {
                Rule::Accept {
                    proto: p,
                    hosts,
                    ports,
                } => {
                    *p == proto
                        && hosts.contains(&host)
                        && ports.iter().any(|range| match *range {
                            Ports::One(one) => one == port,
                            Ports::Range(lo, hi) => (lo..=hi).contains(&port),
                        })
                }
                Rule::BlackHole(_) => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitelist_script_is_the_guides_table() {
        let script = Firewall::whitelist().script();
        assert!(script.contains(
            "    ip daddr { 10.231.0.2, 10.231.0.3 } tcp dport { 1080, 8000, 25000, 9700, 4000 } accept\n"
        ));
        assert!(script.contains(
            "    ip daddr { 10.231.0.2, 10.231.0.3 } udp dport { 1080, 8000, 25000, 9700, 4500-4650 } accept\n"
        ));
        assert!(!script.contains("counter drop\n"), "no black hole");
    }

    #[test]
    fn rule_sets_allow_what_they_say() {
        let w = Firewall::whitelist();
        assert!(w.allows(Proto::Udp, NODE_B, 4600));
        assert!(!w.allows(Proto::Tcp, NODE_A, 22));
        assert!(!Firewall::udp_blocked().allows(Proto::Udp, NODE_A, 9700));
        let only = Firewall::only_9700();
        assert!(only.allows(Proto::Tcp, NODE_A, 9700) && !only.allows(Proto::Tcp, NODE_A, 1080));
        assert!(only.allows(Proto::Tcp, NODE_A, TCP_RELAY_PORT));
        let holed = Firewall::black_hole_b();
        assert!(!holed.allows(Proto::Tcp, NODE_B, 4000) && holed.allows(Proto::Tcp, NODE_A, 4000));
        let script = holed.script();
        assert!(script.contains("ip daddr 10.231.0.3 counter drop"));
        assert!(script.contains("ip saddr 10.231.0.3 counter drop"));
        assert!(!Firewall::nothing().allows(Proto::Tcp, NODE_A, 4000));
        // What issue 16's TLS scenario needs: one port, one protocol.
        let tls = Firewall::named("OnlyTls").accept(Proto::Tcp, &NODES, &[Ports::One(443)]);
        assert!(tls.allows(Proto::Tcp, NODE_A, 443) && !tls.allows(Proto::Udp, NODE_A, 443));
        assert!(
            tls.script()
                .contains("ip daddr { 10.231.0.2, 10.231.0.3 } tcp dport 443 accept")
        );
    }
}
