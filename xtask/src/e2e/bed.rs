//! The test bed's network: two namespaces joined by a veth pair, their
//! addresses, `corp`'s name resolution and firewall. [`Network::create`]
//! builds it; dropping the [`Network`] removes all of it, also after a
//! failure or a panic, and [`remove_leftovers`] removes what an interrupted
//! run left behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::firewall::Firewall;
use super::processes::{in_ns, ip, must, run_bounded};
use crate::Result;

/// Every namespace of a run is `cpe2e-<pid>-<role>`.
pub(super) const PREFIX: &str = "cpe2e-";
/// The bed's only range: the on-link route of both namespaces.
const RANGE: &str = "10.231.0.0/24";
/// The client's address in `corp`.
pub(super) const CLIENT: &str = "10.231.0.1";
/// Proxy node A (the first one clients try).
pub(super) const NODE_A: &str = "10.231.0.2";
/// Proxy node B (the second one; black-holed in scenario 5).
pub(super) const NODE_B: &str = "10.231.0.3";
/// The reference media edge: in `cloud`, reachable only through a proxy.
pub(super) const EDGE: &str = "10.231.0.10";
pub(super) const EDGE_PORT: u16 = 7000;
/// A name server inside the test range that answers nothing (and is dropped
/// by the firewall anyway): a type-1 lookup must be answered by the hosts
/// file, never by DNS.
const DEAD_DNS: &str = "10.231.0.53";
/// The type-1 name of scenario 7, in `corp`'s hosts file.
pub(super) const PROXY_NAME: &str = "proxy.corp.test";
/// The guide's whitelist.
pub(super) const ALLOCATION_PORTS: [u16; 4] = [1080, 8000, 25000, 9700];
pub(super) const TCP_RELAY_PORT: u16 = 4000;
pub(super) const UDP_RELAY_PORTS: (u16, u16) = (4500, 4650);

/// The nodes' TLS port (issue 16: one port carries everything).
pub(super) const TLS_PORT: u16 = 443;
/// The DPI gateway of scenario 10: haproxy passing only TLS ClientHellos
/// on to node A's TLS port.
pub(super) const GATEWAY: &str = "10.231.0.20";
/// The explicit HTTP proxies of scenarios 11 (Basic auth, CONNECT to 443
/// only) and 13 (TLS interception, ssl-bump).
pub(super) const SQUID: &str = "10.231.0.30";
pub(super) const SQUID_PORT: u16 = 3128;
pub(super) const BUMP_PORT: u16 = 3129;
/// Scenario 14 (A1): squid demanding NTLM, checked by the project's own
/// NTLMv2-verifying helper.
pub(super) const NTLM_PORT: u16 = 3130;

/// The addresses on `cloud0`. Each peer (a squid, a haproxy gateway) has
/// its own address here, and the firewall decides whether `corp` may reach
/// it.
const CLOUD_HOSTS: [&str; 5] = [NODE_A, NODE_B, EDGE, GATEWAY, SQUID];

/// The namespaces and everything in `/etc/netns` one run created.
pub(super) struct Network {
    /// The clients' namespace, behind the firewall.
    pub(super) corp: String,
    /// The proxy nodes' and the edge's namespace.
    pub(super) cloud: String,
    /// Where rule sets are saved (`rules-<name>.nft`).
    dir: PathBuf,
    namespaces: Vec<String>,
    netns_etc: Vec<PathBuf>,
    /// Whether this run created `/etc/netns` itself (then it goes too).
    created_etc_netns: bool,
}

impl Network {
    /// The namespaces, the veth pair, the addresses and `corp`'s hosts and
    /// resolv.conf; `corp` starts with the whitelist.
    pub(super) fn create(dir: &Path) -> Result<Self> {
        let pid = std::process::id();
        let mut net = Self {
            corp: format!("{PREFIX}{pid}-corp"),
            cloud: format!("{PREFIX}{pid}-cloud"),
            dir: dir.to_owned(),
            namespaces: Vec::new(),
            netns_etc: Vec::new(),
            created_etc_netns: !Path::new("/etc/netns").exists(),
        };
        net.build()?;
        net.write_netns_etc()?;
        net.set_firewall(&Firewall::whitelist())?;
        Ok(net)
    }

    fn build(&mut self) -> Result {
        let (corp, cloud) = (self.corp.clone(), self.cloud.clone());
        for ns in [&corp, &cloud] {
            must(&mut ip(&["netns", "add", ns]))?;
            self.namespaces.push(ns.clone());
            must(&mut ip(&["-n", ns, "link", "set", "lo", "up"]))?;
        }
        // The veth ends are created directly inside the namespaces: nothing
        // appears on the host, not even for a moment.
        must(&mut ip(&[
            "-n", &corp, "link", "add", "corp0", "type", "veth", "peer", "name", "cloud0", "netns",
            &cloud,
        ]))?;
        let on_link = |addr: &str| format!("{addr}/24");
        must(&mut ip(&[
            "-n",
            &corp,
            "addr",
            "add",
            &on_link(CLIENT),
            "dev",
            "corp0",
        ]))?;
        for addr in CLOUD_HOSTS {
            must(&mut ip(&[
                "-n",
                &cloud,
                "addr",
                "add",
                &on_link(addr),
                "dev",
                "cloud0",
            ]))?;
        }
        must(&mut ip(&["-n", &corp, "link", "set", "corp0", "up"]))?;
        must(&mut ip(&["-n", &cloud, "link", "set", "cloud0", "up"]))?;
        Ok(())
    }

    /// `ip netns exec` bind-mounts `/etc/netns/<ns>/hosts` over `/etc/hosts`
    /// (and `resolv.conf` likewise) for the command it runs.
    fn write_netns_etc(&mut self) -> Result {
        let etc = Path::new("/etc/netns").join(&self.corp);
        std::fs::create_dir_all(&etc).map_err(|e| format!("creating {}: {e}", etc.display()))?;
        self.netns_etc.push(etc.clone());
        let write = |name: &str, text: &str| {
            std::fs::write(etc.join(name), text)
                .map_err(|e| format!("writing {}: {e}", etc.join(name).display()))
        };
        write(
            "hosts",
            &format!("127.0.0.1 localhost\n{NODE_A} {PROXY_NAME}\n{NODE_B} {PROXY_NAME}\n"),
        )?;
        write(
            "resolv.conf",
            &format!(
                "# cloudproxy e2e: no DNS leaves corp\nnameserver {DEAD_DNS}\noptions timeout:1 attempts:1\n"
            ),
        )?;
        Ok(())
    }

    /// Replaces `corp`'s rule set; effective at once, also mid-call.
    pub(super) fn set_firewall(&self, firewall: &Firewall) -> Result {
        let script = firewall.script();
        let mut child = in_ns(&self.corp, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing the nft script: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft rejected the {} rules: {}\n{script}",
                firewall.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(
            self.dir.join(format!("rules-{}.nft", firewall.name)),
            &script,
        )
        .map_err(|e| format!("saving the rules: {e}"))?;
        Ok(())
    }

    /// Packets the firewall dropped on their way to a name server.
    pub(super) fn dns_drops(&self) -> Result<u64> {
        let out = run_bounded(
            in_ns(&self.corp, "nft").args(["list", "chain", "inet", "cpe2e", "output"]),
            Duration::from_secs(10),
        )?;
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("\"dns\""))
            .ok_or_else(|| format!("no dns rule in {}", out.stdout))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let packets = words
            .iter()
            .position(|w| *w == "packets")
            .and_then(|i| words.get(i + 1))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no packet counter in {line:?}"))?;
        Ok(packets)
    }

    /// The bed is what it claims: no route beyond the test range, and from
    /// `corp` (with the whitelist) a whitelisted proxy port connects while
    /// the rest is dropped (not rejected), the edge included.
    pub(super) fn self_check(&self) -> Result {
        for ns in [&self.corp, &self.cloud] {
            let routes = run_bounded(
                &mut ip(&["-n", ns, "route", "show"]),
                Duration::from_secs(5),
            )?;
            let off_bed: Vec<&str> = routes
                .stdout
                .lines()
                .filter(|r| !r.starts_with(&format!("{RANGE} ")))
                .collect();
            if !off_bed.is_empty() {
                return Err(format!(
                    "{ns} has routes beyond the test range: {off_bed:?}"
                ));
            }
        }
        println!("    self-check ok: no route out of {RANGE} in either namespace");
        let tcp = |addr: &str, port: u16| -> Result<Option<i32>> {
            let out = run_bounded(
                in_ns(&self.corp, "timeout").args([
                    "2",
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/{addr}/{port}"),
                ]),
                Duration::from_secs(5),
            )?;
            Ok(out.status.and_then(|s| s.code()))
        };
        let checks = [
            (
                NODE_A,
                TCP_RELAY_PORT,
                0,
                "the whitelisted relay port connects",
            ),
            (
                EDGE,
                EDGE_PORT,
                124,
                "the edge is dropped (timeout) from corp",
            ),
            (
                NODE_A,
                22,
                124,
                "a port off the whitelist is dropped, not rejected",
            ),
        ];
        for (addr, port, want, what) in checks {
            let got = tcp(addr, port)?;
            if got != Some(want) {
                return Err(format!(
                    "bed self-check failed: {what}: TCP {addr}:{port} from corp gave exit {got:?}, expected {want}"
                ));
            }
            println!("    self-check ok: {what} (TCP {addr}:{port})");
        }
        Ok(())
    }

    /// What the bed is, for the run's header.
    pub(super) fn describe(&self) -> String {
        let (lo, hi) = UDP_RELAY_PORTS;
        format!(
            "    {corp}: {CLIENT}/24 on corp0 (clients; nftables whitelist, policy drop; no default route)
    {cloud}: {NODE_A} node A, {NODE_B} node B (serve: allocation {alloc:?} TCP+UDP, relay TCP {TCP_RELAY_PORT}, UDP {lo}-{hi}),
    {pad}TLS {TLS_PORT} on both nodes (pinned self-signed certificates),
    {pad}{EDGE}:{EDGE_PORT} edge (TCP+UDP), {GATEWAY}:{TLS_PORT} DPI gateway (haproxy, scenario 10),
    {pad}{SQUID}:{SQUID_PORT} squid Basic auth (11), {SQUID}:{BUMP_PORT} squid ssl-bump (13), {SQUID}:{NTLM_PORT} squid NTLM (14), all on cloud0/24
    /etc/netns/{corp}/hosts: {PROXY_NAME} -> {NODE_A}, {NODE_B}; resolv.conf -> {DEAD_DNS} (answers nothing)
",
            corp = self.corp,
            cloud = self.cloud,
            alloc = ALLOCATION_PORTS,
            pad = " ".repeat(self.cloud.len() + 2),
        )
    }

    /// Deletes the namespaces (killing what still runs inside) and the
    /// `/etc/netns` entries; again: nothing.
    pub(super) fn remove(&mut self) {
        for ns in self.namespaces.drain(..) {
            remove_namespace(&ns);
        }
        for dir in self.netns_etc.drain(..) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if self.created_etc_netns {
            let _ = std::fs::remove_dir("/etc/netns"); // only when empty
            self.created_etc_netns = false;
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Kills the processes still inside `name` (ours: nothing else runs there),
/// then deletes it.
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Whether `pid` is a running xtask (a concurrent e2e run).
pub(super) fn run_alive(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("comm"))
        .is_ok_and(|comm| comm.trim() == "xtask")
}

/// Removes what an interrupted run (Ctrl-C, SIGKILL) left behind: namespaces
/// named `cpe2e-<pid>-*` whose pid no longer runs, the processes still inside
/// them, and their `/etc/netns/` entries.
pub(super) fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.is_empty() || run_alive(pid) {
            continue; // a run that is still going
        }
        println!("==> removing leftover namespace {name}");
        remove_namespace(name);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
    }
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs iproute2 and nftables when missing, then proves that a network
/// namespace can be created (root, or CAP_SYS_ADMIN + CAP_NET_ADMIN).
/// `Err` is the reason to skip.
pub(super) fn preflight() -> Result {
    let mut missing = Vec::new();
    if !have("ip", "-V") {
        missing.push("iproute2");
    }
    if !have("nft", "--version") {
        missing.push("nftables");
    }
    if !have("ss", "-V") && !missing.contains(&"iproute2") {
        missing.push("iproute2");
    }
    // `kill -TERM <pid>` for a graceful stop (std only sends SIGKILL).
    if !Path::new("/bin/kill").exists() && !Path::new("/usr/bin/kill").exists() {
        missing.push("procps");
    }
    if !missing.is_empty() {
        println!("==> installing {missing:?} (apt-get)");
        let installed = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if !installed || !have("ip", "-V") || !have("nft", "--version") {
            return Err(format!(
                "{missing:?} missing and could not be installed with apt-get (needs root)"
            ));
        }
    }
    let probe = format!("{PREFIX}{}-preflight", std::process::id());
    let out = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot create a network namespace (`ip netns add` needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let nft = Command::new("ip")
        .args(["netns", "exec", &probe, "nft", "list", "ruleset"])
        .output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    match nft {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "nftables does not work in a namespace: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `nft`: {e}")),
    }
}
