//! `cargo xtask e2e`: the guide's scenario end to end, behind a real firewall.
//!
//! Builds the release `cloudproxy` binary, creates two network namespaces
//! (`corp` for the clients, `cloud` for two proxy nodes and the reference
//! media edge) joined by a veth pair on 10.231.0.0/24, puts nftables rules in
//! `corp` that mirror the guide's whitelist (drop, not reject), and runs the
//! scenarios of docs/e2e.md with `cloudproxy demo --json` and
//! `cloudproxy probe --json` inside `corp`. Everything it creates (namespaces,
//! `/etc/netns/<ns>/`, processes) is removed by a guard when the run ends,
//! also after a failure or a panic; leftovers of an interrupted run are
//! removed at the start of the next one.
//!
//! Plain `std`, like the rest of xtask.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::{Result, cargo, step, target_dir};

/// Every namespace of a run is `cpe2e-<pid>-<role>`.
const PREFIX: &str = "cpe2e-";
/// The client's address in `corp`.
const CLIENT: &str = "10.231.0.1";
/// Proxy node A (the first one clients try).
const NODE_A: &str = "10.231.0.2";
/// Proxy node B (the second one; black-holed in scenario 5).
const NODE_B: &str = "10.231.0.3";
/// The reference media edge: in `cloud`, reachable only through a proxy.
const EDGE: &str = "10.231.0.10";
const EDGE_PORT: u16 = 7000;
/// A name server inside the test range that answers nothing (and is dropped
/// by the firewall anyway): a type-1 lookup must be answered by the hosts
/// file, never by DNS.
const DEAD_DNS: &str = "10.231.0.53";
/// The type-1 name of scenario 7, in `corp`'s hosts file.
const PROXY_NAME: &str = "proxy.corp.test";
const APP_ID: &str = "e2e-app";
/// The guide's whitelist.
const ALLOCATION_PORTS: [u16; 4] = [1080, 8000, 25000, 9700];
const TCP_RELAY_PORT: u16 = 4000;
const UDP_RELAY_PORTS: (u16, u16) = (4500, 4650);

/// Documented bounds (crates/engine/src/lib.rs, `EngineBuilder`).
const DIRECT_TIMEOUT_MS: f64 = 3000.0;
const STAGGER_MS: f64 = 250.0;
const UDP_PROBE_MS: f64 = 2000.0;
const RECONNECT_WINDOW_MS: f64 = 30_000.0;
/// What a loaded CI machine may add on top of a documented bound.
const SLACK_MS: f64 = 2000.0;

const USAGE: &str = "\
usage: cargo xtask e2e [--allow-skip] [--only N,N,...]

  --allow-skip   exit 0 (after printing SKIPPED) when namespaces cannot be created
  --only         run only these scenarios (1-8)
";

pub(crate) fn run(args: &[String]) -> Result {
    let mut allow_skip = false;
    let mut only: Option<Vec<u32>> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--allow-skip" => allow_skip = true,
            "--only" => {
                let list = it.next().ok_or("--only needs a list like 2,3")?;
                let parsed: std::result::Result<Vec<u32>, _> =
                    list.split(',').map(|n| n.trim().parse::<u32>()).collect();
                only = Some(parsed.map_err(|_| format!("--only: bad list {list:?}\n{USAGE}"))?);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("e2e: unknown argument {other:?}\n{USAGE}")),
        }
    }

    if let Err(reason) = preflight() {
        println!("SKIPPED: {reason}");
        return if allow_skip {
            Ok(())
        } else {
            Err("e2e was skipped (pass --allow-skip to accept a skip)".into())
        };
    }

    let started = Instant::now();
    step(
        "build release cloudproxy",
        Command::new(cargo()).args(["build", "--release", "--locked", "-p", "cloudproxy-cli"]),
    )?;
    let bin = target_dir().join("release/cloudproxy");
    if !bin.is_file() {
        return Err(format!("the build did not produce {}", bin.display()));
    }
    require_demo(&bin)?;

    remove_leftovers();
    let mut bed = Bed::create(bin)?;
    println!("\n==> test bed up in {:.1?}", started.elapsed());
    print!("{}", bed.describe());

    let scenarios: [(u32, &str, ScenarioFn); 8] = [
        (1, "proxy off: join fails within the bound", scenario_1),
        (2, "enable_proxy: call over the UDP relay", scenario_2),
        (3, "UDP blocked: media falls back to TCP", scenario_3),
        (4, "only allocation port 9700 open, port 0", scenario_4),
        (5, "type-2 list, first address black-holed", scenario_5),
        (6, "node in use killed mid-call: failover", scenario_6),
        (7, "type-1 domain from corp's hosts file", scenario_7),
        (8, "probe reports exactly the open ports", scenario_8),
    ];
    let mut results: Vec<(u32, &str, Outcome, Duration)> = Vec::new();
    for (number, title, scenario) in scenarios {
        if only.as_ref().is_some_and(|o| !o.contains(&number)) {
            continue;
        }
        println!("\n==> scenario {number}: {title}");
        let t = Instant::now();
        // A scenario that failed half-way may have left a node down.
        let outcome = bed.ensure_nodes().and_then(|()| scenario(&mut bed));
        match &outcome {
            Ok(timings) => println!("==> scenario {number}: PASS ({})", timings.join(", ")),
            Err(e) => println!("==> scenario {number}: FAIL\n{e}"),
        }
        results.push((number, title, outcome, t.elapsed()));
    }

    println!("\ne2e summary (logs in {}):", bed.dir.display());
    let mut failed = 0;
    for (number, title, outcome, took) in &results {
        match outcome {
            Ok(timings) => println!(
                "  {number}. PASS  {title:<42} {:>5.1} s  {}",
                took.as_secs_f64(),
                timings.join(", ")
            ),
            Err(_) => {
                failed += 1;
                println!(
                    "  {number}. FAIL  {title:<42} {:>5.1} s",
                    took.as_secs_f64()
                );
            }
        }
    }
    drop(bed);
    println!("e2e: finished in {:.1?}", started.elapsed());
    if failed > 0 {
        return Err(format!("{failed} e2e scenario(s) failed"));
    }
    Ok(())
}

/// A scenario's timings, or why it failed.
type Outcome = std::result::Result<Vec<String>, String>;
type ScenarioFn = fn(&mut Bed) -> Outcome;

// ---------------------------------------------------------------------------
// Preflight: tools and privileges.

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
fn preflight() -> std::result::Result<(), String> {
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

/// The scenarios drive `cloudproxy demo`; say so plainly if this build has
/// none.
fn require_demo(bin: &Path) -> Result {
    let out = Command::new(bin)
        .args(["demo", "--help"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !help.contains("--proxy") || !help.contains("--edge") {
        return Err(format!(
            "{} has no `demo --proxy SERVER --edge TCP,UDP` subcommand yet; the e2e scenarios need it",
            bin.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Processes with bounded waits.

struct Running {
    child: Child,
    started: Instant,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

struct Finished {
    /// `None` when the process outlived its limit and was killed.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut raw = Vec::new();
            let _ = pipe.read_to_end(&mut raw);
            text = String::from_utf8_lossy(&raw).into_owned();
        }
        text
    })
}

fn spawn(cmd: &mut Command) -> Result<Running> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    Ok(Running {
        child,
        started: Instant::now(),
        stdout,
        stderr,
    })
}

impl Running {
    /// Waits until the process ends or `limit` after its start, then kills it.
    fn finish(mut self, limit: Duration) -> Finished {
        let deadline = self.started + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let elapsed = self.started.elapsed();
        Finished {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
            elapsed,
        }
    }
}

fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Finished> {
    Ok(spawn(cmd)?.finish(limit))
}

/// Runs a setup command that must succeed quickly.
fn must(cmd: &mut Command) -> Result {
    let out = run_bounded(cmd, Duration::from_secs(20))?;
    match out.status {
        Some(s) if s.success() => Ok(()),
        _ => Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status.map_or("timed out".into(), |s| s.to_string()),
            out.stderr.trim()
        )),
    }
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

// ---------------------------------------------------------------------------
// The test bed.

/// A long-running process in a namespace (a proxy node or the edge); its
/// stdout and stderr go to `<name>.log`.
struct Daemon {
    child: Child,
    log: PathBuf,
}

/// Everything one run creates; `Drop` removes all of it.
struct Bed {
    bin: PathBuf,
    corp: String,
    cloud: String,
    /// Configs and logs: target/e2e/.
    dir: PathBuf,
    secret: String,
    ticket_key: String,
    nodes: [Option<Daemon>; 2],
    edge: Option<Daemon>,
    namespaces: Vec<String>,
    netns_etc: Vec<PathBuf>,
    /// Whether this run created `/etc/netns` itself (then it goes too).
    created_etc_netns: bool,
    /// Scenario 2's connect time, to show what the fallback costs.
    baseline_connect_ms: Option<f64>,
    /// Which rule set `corp` has now.
    rules: Rules,
}

/// The firewall rule sets in `corp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// The guide's whitelist for both proxy addresses.
    Whitelist,
    /// The whitelist without any UDP.
    UdpBlocked,
    /// Only allocation port 9700 (TCP and UDP), plus the relays.
    Only9700,
    /// The whitelist, but everything to node B dropped.
    BlackholeB,
    /// Nothing allowed at all.
    Nothing,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(raw.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Removes what an interrupted run (Ctrl-C, SIGKILL) left behind: namespaces
/// named `cpe2e-<pid>-*` whose pid no longer runs, the processes still inside
/// them (ours: nothing else runs there), and their `/etc/netns/` entries.
fn remove_leftovers() {
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

/// Whether `pid` is a running xtask (a concurrent e2e run).
fn run_alive(pid: &str) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid).join("comm"))
        .is_ok_and(|comm| comm.trim() == "xtask")
}

fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

impl Bed {
    fn create(bin: PathBuf) -> Result<Self> {
        let pid = std::process::id();
        // Logs of earlier runs go; those of a concurrent run stay.
        let root = target_dir().join("e2e");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.strip_prefix("run-").is_some_and(|p| !run_alive(p)) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("run-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut bed = Self {
            bin,
            corp: format!("{PREFIX}{pid}-corp"),
            cloud: format!("{PREFIX}{pid}-cloud"),
            dir,
            secret: random_hex(16)?,
            ticket_key: random_hex(32)?,
            nodes: [None, None],
            edge: None,
            namespaces: Vec::new(),
            netns_etc: Vec::new(),
            created_etc_netns: !Path::new("/etc/netns").exists(),
            baseline_connect_ms: None,
            rules: Rules::Nothing,
        };
        bed.build_network()?;
        bed.write_netns_etc()?;
        bed.set_rules(Rules::Whitelist)?;
        bed.start_edge()?;
        bed.start_node(0)?;
        bed.start_node(1)?;
        bed.self_check()?;
        Ok(bed)
    }

    fn build_network(&mut self) -> Result {
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
        must(&mut ip(&[
            "-n",
            &corp,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            "corp0",
        ]))?;
        for addr in [NODE_A, NODE_B, EDGE] {
            must(&mut ip(&[
                "-n",
                &cloud,
                "addr",
                "add",
                &format!("{addr}/24"),
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

    fn set_rules(&mut self, rules: Rules) -> Result {
        let proxies = format!("{{ {NODE_A}, {NODE_B} }}");
        let alloc = |only_9700: bool| {
            if only_9700 {
                "9700".to_owned()
            } else {
                ALLOCATION_PORTS.map(|p| p.to_string()).join(", ")
            }
        };
        let (lo, hi) = UDP_RELAY_PORTS;
        let mut allow = String::new();
        if rules == Rules::BlackholeB {
            let _ = writeln!(allow, "    ip daddr {NODE_B} counter drop");
        }
        if rules != Rules::Nothing {
            let only = rules == Rules::Only9700;
            let _ = writeln!(
                allow,
                "    ip daddr {proxies} tcp dport {{ {}, {TCP_RELAY_PORT} }} accept",
                alloc(only)
            );
            if rules != Rules::UdpBlocked {
                let _ = writeln!(
                    allow,
                    "    ip daddr {proxies} udp dport {{ {}, {lo}-{hi} }} accept",
                    alloc(only)
                );
            }
        }
        // Output is a stateless whitelist (so a rule change takes effect at
        // once, whatever conntrack remembers); input takes only replies.
        let script = format!(
            "flush ruleset
table inet cpe2e {{
  chain output {{
    type filter hook output priority filter; policy drop;
    oifname \"lo\" accept
    meta l4proto {{ tcp, udp }} th dport 53 counter drop comment \"dns\"
{allow}  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
  }}
}}
"
        );
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
                "nft rejected the {rules:?} rules: {}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(self.dir.join(format!("rules-{rules:?}.nft")), &script)
            .map_err(|e| format!("saving the rules: {e}"))?;
        self.rules = rules;
        Ok(())
    }

    /// Packets the firewall dropped on their way to a name server.
    fn dns_drops(&self) -> Result<u64> {
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

    fn start_daemon(&self, name: &str, args: &[&str]) -> Result<Daemon> {
        let log = self.dir.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("cloning a log handle: {e}"))?;
        let mut child = in_ns(&self.cloud, &self.bin)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        // Copy stdout to the log, and report when the banner's last line
        // ("press Ctrl-C to stop") has been printed.
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take();
        let mut file = file;
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = writeln!(file, "{line}");
                if line.contains("press Ctrl-C to stop") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut daemon = Daemon { child, log };
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(()) => Ok(daemon),
            Err(_) => {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                Err(format!(
                    "{name} did not start within 15 s:\n{}",
                    std::fs::read_to_string(&daemon.log).unwrap_or_default()
                ))
            }
        }
    }

    fn start_edge(&mut self) -> Result {
        let port = EDGE_PORT.to_string();
        let edge = self.start_daemon(
            "edge",
            &[
                "edge",
                "--bind",
                EDGE,
                "--tcp-port",
                &port,
                "--udp-port",
                &port,
            ],
        )?;
        self.edge = Some(edge);
        Ok(())
    }

    fn node_addr(index: usize) -> &'static str {
        [NODE_A, NODE_B][index]
    }

    fn node_name(index: usize) -> &'static str {
        ["node-a", "node-b"][index]
    }

    /// Starts proxy node `index` (0 = A, 1 = B): the guide's ports on its own
    /// address, the shared app and ticket key, the edge allowed.
    fn start_node(&mut self, index: usize) -> Result {
        let addr = Self::node_addr(index);
        let name = Self::node_name(index);
        let (lo, hi) = UDP_RELAY_PORTS;
        let config = format!(
            r#"# cloudproxy e2e: proxy node {name}
[listeners]
bind = "{addr}"
advertise = "{addr}"
allocation_ports = [{ports}]
tcp_relay_port = {TCP_RELAY_PORT}
udp_relay_ports = "{lo}-{hi}"

[[apps]]
id = "{APP_ID}"
max_sessions = 100
secrets = ["{secret}"]

[[ticket_keys]]
key_id = 1
secret = "{key}"

[allowlist]
allow = ["{EDGE}/32:{EDGE_PORT}"]

[limits]
drain_timeout_ms = 500
"#,
            ports = ALLOCATION_PORTS.map(|p| p.to_string()).join(", "),
            secret = self.secret,
            key = self.ticket_key,
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let path = path.to_string_lossy().into_owned();
        let daemon = self.start_daemon(name, &["serve", "--config", &path])?;
        self.nodes[index] = Some(daemon);
        Ok(())
    }

    /// Restarts any proxy node that is not running.
    fn ensure_nodes(&mut self) -> Result {
        for index in 0..2 {
            let running = self.nodes[index]
                .as_mut()
                .is_some_and(|n| matches!(n.child.try_wait(), Ok(None)));
            if !running {
                self.kill_node(index);
                self.start_node(index)?;
            }
        }
        Ok(())
    }

    /// SIGKILL: the node dies at once, its sockets are reset by the kernel.
    fn kill_node(&mut self, index: usize) {
        if let Some(mut node) = self.nodes[index].take() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the node to drain and print its stats;
    /// returns its log.
    fn stop_node(&mut self, index: usize) -> Result<String> {
        let Some(mut node) = self.nodes[index].take() else {
            return Err(format!("{} is not running", Self::node_name(index)));
        };
        let _ = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(node.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = node.child.kill();
        let _ = node.child.wait();
        std::fs::read_to_string(&node.log)
            .map_err(|e| format!("reading {}: {e}", node.log.display()))
    }

    /// The bed is what it claims: corp has no default route, reaches a
    /// whitelisted proxy port, and the firewall drops (not rejects) the rest,
    /// the edge included.
    fn self_check(&self) -> Result {
        for ns in [&self.corp, &self.cloud] {
            let routes = run_bounded(
                &mut ip(&["-n", ns, "route", "show"]),
                Duration::from_secs(5),
            )?;
            let off_bed: Vec<&str> = routes
                .stdout
                .lines()
                .filter(|r| !r.starts_with("10.231.0.0/24 "))
                .collect();
            if !off_bed.is_empty() {
                return Err(format!(
                    "{ns} has routes beyond the test range: {off_bed:?}"
                ));
            }
        }
        println!("    self-check ok: no route out of 10.231.0.0/24 in either namespace");
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

    fn describe(&self) -> String {
        let (lo, hi) = UDP_RELAY_PORTS;
        format!(
            "    {corp}: {CLIENT}/24 on corp0 (clients; nftables whitelist, policy drop; no default route)
    {cloud}: {NODE_A} node A, {NODE_B} node B (serve: allocation {alloc:?} TCP+UDP, relay TCP {TCP_RELAY_PORT}, UDP {lo}-{hi}),
    {pad}{EDGE}:{EDGE_PORT} edge (TCP+UDP), all on cloud0/24
    /etc/netns/{corp}/hosts: {PROXY_NAME} -> {NODE_A}, {NODE_B}; resolv.conf -> {DEAD_DNS} (answers nothing)
",
            corp = self.corp,
            cloud = self.cloud,
            alloc = ALLOCATION_PORTS,
            pad = " ".repeat(self.cloud.len() + 2),
        )
    }

    /// `cloudproxy demo --json` inside corp.
    fn demo_cmd(
        &self,
        proxy: &str,
        params: Option<&str>,
        mode: Option<&str>,
        seconds: u32,
    ) -> Command {
        let mut cmd = in_ns(&self.corp, &self.bin);
        cmd.args(["demo", "--proxy", proxy])
            .arg("--edge")
            .arg(format!("{EDGE}:{EDGE_PORT},{EDGE}:{EDGE_PORT}"))
            .args(["--app-id", APP_ID, "--credential", &self.secret])
            .args(["--seconds", &seconds.to_string(), "--json"]);
        if let Some(params) = params {
            cmd.args(["--params", params]);
        }
        if let Some(mode) = mode {
            cmd.args(["--mode", mode]);
        }
        cmd
    }

    fn demo(
        &self,
        proxy: &str,
        params: Option<&str>,
        mode: Option<&str>,
        seconds: u32,
    ) -> std::result::Result<Demo, String> {
        let limit = Duration::from_secs(u64::from(seconds) + 45);
        let out = run_bounded(&mut self.demo_cmd(proxy, params, mode, seconds), limit)?;
        Demo::parse(out, limit)
    }

    fn probe(&self, server: &str) -> std::result::Result<(Finished, Json), String> {
        let out = run_bounded(
            in_ns(&self.corp, &self.bin).args([
                "probe",
                "--server",
                server,
                "--app-id",
                APP_ID,
                "--credential",
                &self.secret,
                "--timeout-ms",
                "1500",
                "--json",
            ]),
            Duration::from_secs(30),
        )?;
        if out.status.is_none() {
            return Err(format!("probe did not finish within 30 s\n{}", out.stderr));
        }
        let json = parse_json_object(&out.stdout)
            .map_err(|e| format!("probe --json output: {e}\n{}\n{}", out.stdout, out.stderr))?;
        Ok((out, json))
    }

    /// Established TCP relay connections from the client, per node.
    fn relay_connections(&self) -> Result<[usize; 2]> {
        let out = run_bounded(
            in_ns(&self.cloud, "ss").args(["-Htn", "state", "established"]),
            Duration::from_secs(5),
        )?;
        let mut count = [0, 0];
        for line in out.stdout.lines() {
            let addrs: Vec<&str> = line
                .split_whitespace()
                .filter(|w| w.contains(':'))
                .collect();
            let [local, peer, ..] = addrs[..] else {
                continue;
            };
            if !peer.starts_with(&format!("{CLIENT}:")) {
                continue;
            }
            for (index, node) in [NODE_A, NODE_B].iter().enumerate() {
                if local == format!("{node}:{TCP_RELAY_PORT}") {
                    count[index] += 1;
                }
            }
        }
        Ok(count)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().chain([&mut self.edge]) {
            if let Some(mut daemon) = node.take() {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
            }
        }
        for ns in self.namespaces.drain(..) {
            remove_namespace(&ns);
        }
        for dir in self.netns_etc.drain(..) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if self.created_etc_netns {
            let _ = std::fs::remove_dir("/etc/netns"); // only when empty
        }
        println!("==> test bed removed (namespaces, /etc/netns entries, processes)");
    }
}

// ---------------------------------------------------------------------------
// What a demo run says.

struct Demo {
    out: Finished,
    json: Json,
}

impl Demo {
    fn parse(out: Finished, limit: Duration) -> std::result::Result<Self, String> {
        if out.status.is_none() {
            return Err(format!(
                "demo still running after {limit:?}: killed (a hang)\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            ));
        }
        match parse_json_object(&out.stdout) {
            Ok(json) => Ok(Self { out, json }),
            Err(e) => Err(format!(
                "demo --json output: {e}\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )),
        }
    }

    fn num(&self, key: &str) -> f64 {
        self.json
            .get(key)
            .and_then(Json::as_f64)
            .unwrap_or(f64::NAN)
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(Json::as_str)
    }

    fn events(&self) -> Vec<&str> {
        self.json
            .get("events")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default()
    }

    fn event(&self, needle: &str) -> Option<&str> {
        self.events().into_iter().find(|e| e.contains(needle))
    }

    fn ok(&self) -> bool {
        self.json.get("ok").and_then(Json::as_bool) == Some(true)
    }

    fn exit_success(&self) -> bool {
        self.out.status.is_some_and(|s| s.success())
    }

    /// The whole summary, for failure messages.
    fn dump(&self) -> String {
        format!(
            "demo exit {:?} after {:.1?}\nsummary: {}\nstderr (tail):\n{}",
            self.out.status.and_then(|s| s.code()),
            self.out.elapsed,
            self.out.stdout.trim(),
            tail(&self.out.stderr, 15)
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Collects failed expectations instead of stopping at the first.
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn new() -> Self {
        Self {
            failures: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            println!("    ok: {what}");
        } else {
            println!("    FAILED: {what}");
            self.failures.push(what);
        }
    }

    fn done(self, context: impl FnOnce() -> String, timings: Vec<String>) -> Outcome {
        if self.failures.is_empty() {
            Ok(timings)
        } else {
            Err(format!(
                "    failed: {}\n{}",
                self.failures.join("; "),
                context()
            ))
        }
    }
}

/// The media path the call reports: "udp" or "tcp".
fn check_path(c: &mut Checks, d: &Demo, want: &str) {
    let got = d.str("path");
    c.check(got == Some(want), format!("path {want} (got {got:?})"));
}

/// The expectations every successful call shares: it worked, every
/// reliable message arrived exactly once and in order, media flowed.
fn check_call(c: &mut Checks, d: &Demo) {
    c.check(
        d.ok() && d.exit_success(),
        format!("demo ok, exit 0 (error: {:?})", d.str("error")),
    );
    let sent = d.num("messages_sent");
    let received = d.num("messages_received");
    c.check(
        sent > 0.0 && received == sent,
        format!("every reliable message arrived: sent {sent}, received {received}"),
    );
    c.check(
        d.num("duplicates") == 0.0 && d.num("out_of_order") == 0.0,
        format!(
            "exactly once, in order: duplicates {}, out of order {}",
            d.num("duplicates"),
            d.num("out_of_order")
        ),
    );
    c.check(
        d.num("media_sent") > 0.0 && d.num("media_received") > 0.0,
        format!(
            "media flowed: sent {}, received {}",
            d.num("media_sent"),
            d.num("media_received")
        ),
    );
}

const ENABLE: &str = r#"{"rtc.enable_proxy":true}"#;

// ---------------------------------------------------------------------------
// The scenarios.

/// 1. Proxy off: the direct path to the edge is dropped by the firewall; the
///    join fails within the direct timeout with a clear reason.
fn scenario_1(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::Whitelist)?;
    let d = bed.demo(
        NODE_A,
        Some(r#"{"rtc.enable_proxy":false}"#),
        Some("off"),
        2,
    )?;
    let mut c = Checks::new();
    c.check(
        !d.ok() && !d.exit_success(),
        "the call fails (ok false, exit non-zero)",
    );
    let error = d.str("error").unwrap_or("");
    c.check(!error.is_empty(), format!("a clear reason: {error:?}"));
    let wall = d.out.elapsed.as_secs_f64() * 1000.0;
    c.check(
        wall <= DIRECT_TIMEOUT_MS + SLACK_MS + 1000.0,
        format!("gave up in {wall:.0} ms (direct timeout {DIRECT_TIMEOUT_MS} ms + slack)"),
    );
    let timings = vec![format!("failed after {wall:.0} ms (process)")];
    c.done(|| d.dump(), timings)
}

/// 2. The guide's `{"rtc.enable_proxy":true}` with the proxy's address: the
///    call works, media over UDP.
fn scenario_2(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::Whitelist)?;
    let d = bed.demo(NODE_A, Some(ENABLE), None, 3)?;
    let mut c = Checks::new();
    check_call(&mut c, &d);
    check_path(&mut c, &d, "udp");
    c.check(
        d.event("ProxyConnected")
            .is_some_and(|e| e.contains("UDP") || e.contains("Udp")),
        format!(
            "ProxyConnected reports UDP: {:?}",
            d.event("ProxyConnected")
        ),
    );
    c.check(d.str("fallback_reason").is_none(), "no fallback");
    let connect = d.num("connect_ms");
    c.check(connect < 3000.0, format!("connected in {connect} ms"));
    bed.baseline_connect_ms = Some(connect);
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 3. No UDP at all out of corp: media over the TCP relay, and the engine
///    says why.
fn scenario_3(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::UdpBlocked)?;
    let d = bed.demo(NODE_A, Some(ENABLE), None, 3)?;
    let mut c = Checks::new();
    check_call(&mut c, &d);
    check_path(&mut c, &d, "tcp");
    let reason = d.str("fallback_reason").unwrap_or("");
    c.check(!reason.is_empty(), format!("fallback reason: {reason:?}"));
    c.check(
        d.event("MediaFallbackToTcp").is_some(),
        format!(
            "MediaFallbackToTcp event: {:?}",
            d.event("MediaFallbackToTcp")
        ),
    );
    let connect = d.num("connect_ms");
    c.check(
        connect <= UDP_PROBE_MS + SLACK_MS,
        format!("connected in {connect} ms (UDP probe {UDP_PROBE_MS} ms + slack)"),
    );
    let mut timings = vec![format!("connect incl. fallback {connect:.0} ms")];
    if let Some(base) = bed.baseline_connect_ms {
        timings.push(format!("fallback cost {:.0} ms", connect - base));
    }
    c.done(|| d.dump(), timings)
}

/// 4. Only allocation port 9700 open; the server setting's port is 0, so the
///    client tries 1080, 8000, 25000 (dropped) and 9700.
fn scenario_4(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::Only9700)?;
    let d = bed.demo(NODE_A, Some(ENABLE), None, 3)?;
    let mut c = Checks::new();
    check_call(&mut c, &d);
    check_path(&mut c, &d, "udp");
    let connect = d.num("connect_ms");
    let bound = 3.0 * STAGGER_MS + SLACK_MS;
    c.check(
        connect <= bound,
        format!(
            "connected in {connect} ms (three dropped ports cost a stagger each: bound {bound} ms)"
        ),
    );
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 5. `[2, [B, A], 0]` with B black-holed: connects through A within a
///    stagger, not after B's attempt timeout.
fn scenario_5(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::BlackholeB)?;
    let d = bed.demo(&format!("{NODE_B},{NODE_A}"), Some(ENABLE), None, 3)?;
    let mut c = Checks::new();
    check_call(&mut c, &d);
    check_path(&mut c, &d, "udp");
    let connect = d.num("connect_ms");
    let bound = STAGGER_MS + SLACK_MS;
    c.check(
        connect <= bound,
        format!("connected in {connect} ms (a silent address costs one stagger: bound {bound} ms)"),
    );
    let sessions = bed.relay_connections()?;
    c.check(sessions == [0, 0], "no relay connection left behind");
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 6. Two nodes, `[2, [A, B], 0]`; the node carrying the call is killed
///    (SIGKILL) mid-call. The engine reconnects through the other; every
///    message exactly once and in order; media resumes through the
///    survivor.
fn scenario_6(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::Whitelist)?;
    // Fresh nodes: the survivor's counters then count only this call.
    bed.kill_node(0);
    bed.kill_node(1);
    bed.start_node(0)?;
    bed.start_node(1)?;
    let seconds = 12;
    let running =
        spawn(&mut bed.demo_cmd(&format!("{NODE_A},{NODE_B}"), Some(ENABLE), None, seconds))?;
    let mut c = Checks::new();
    // Which node carries the call?
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut in_use = Err("no relay connection appeared within 8 s".to_owned());
    while Instant::now() < deadline {
        in_use = match bed.relay_connections() {
            Ok([a, 0]) if a > 0 => Ok(0),
            Ok([0, b]) if b > 0 => Ok(1),
            Ok([0, 0]) => {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(both) => Err(format!("both nodes carry relay connections: {both:?}")),
            Err(e) => Err(e),
        };
        break;
    }
    let victim = match in_use {
        Ok(victim) => victim,
        Err(e) => {
            let out = running.finish(Duration::from_secs(60));
            return Err(format!("{e}\n{}\n{}", out.stdout, out.stderr));
        }
    };
    // Let the call run a while, then kill the node under it.
    thread::sleep(Duration::from_secs(3));
    let killed_at = running.started.elapsed();
    bed.kill_node(victim);
    let survivor = 1 - victim;
    println!(
        "    killed {} (SIGKILL) at {:.1} s into the call",
        Bed::node_name(victim),
        killed_at.as_secs_f64()
    );
    let limit = Duration::from_secs(u64::from(seconds) + 45);
    let d = Demo::parse(running.finish(limit), limit)?;
    check_call(&mut c, &d);
    let failovers = d.num("failovers");
    let failover_ms: Vec<f64> = d
        .json
        .get("failover_ms")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_f64).collect())
        .unwrap_or_default();
    c.check(failovers >= 1.0, format!("failovers reported: {failovers}"));
    c.check(
        !failover_ms.is_empty() && failover_ms.iter().all(|&ms| ms <= RECONNECT_WINDOW_MS),
        format!(
            "failover times {failover_ms:?} ms within the reconnect window {RECONNECT_WINDOW_MS} ms"
        ),
    );
    // The survivor carried no relay before the kill; media through it now
    // means media resumed after the failover.
    let log = bed.stop_node(survivor)?;
    let stats = log
        .lines()
        .find(|l| l.contains("proxy node stopped"))
        .unwrap_or("")
        .to_owned();
    let up = stat(&stats, "udp_packets_up");
    let down = stat(&stats, "udp_packets_down");
    let tcp = stat(&stats, "tcp_sessions_total");
    c.check(
        tcp.is_some_and(|n| n > 0),
        format!(
            "{} took the message channel: tcp_sessions_total {tcp:?}",
            Bed::node_name(survivor)
        ),
    );
    c.check(
        up.is_some_and(|n| n > 0) && down.is_some_and(|n| n > 0),
        format!(
            "media resumed through {}: udp_packets_up {up:?}, udp_packets_down {down:?}",
            Bed::node_name(survivor)
        ),
    );
    bed.start_node(victim)?;
    bed.start_node(survivor)?;
    let timings = vec![
        format!("connect {:.0} ms", d.num("connect_ms")),
        format!("failover {failover_ms:?} ms"),
    ];
    c.done(|| format!("{}\nsurvivor stats: {stats}", d.dump()), timings)
}

/// A `name=N` field of the node's stats line (`stats="allocations=3 …"`).
fn stat(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let at = line.match_indices(&key).map(|(at, _)| at).find(|&at| {
        at == 0 || !line[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })? + key.len();
    line[at..]
        .split(|ch: char| !ch.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// 7. `[1, "proxy.corp.test", 0]`: the name comes from corp's hosts file;
///    no DNS query leaves corp.
fn scenario_7(bed: &mut Bed) -> Outcome {
    bed.set_rules(Rules::Whitelist)?;
    let mut c = Checks::new();
    let lookup = run_bounded(
        in_ns(&bed.corp, "getent").args(["hosts", PROXY_NAME]),
        Duration::from_secs(10),
    )?;
    c.check(
        lookup.stdout.contains(NODE_A),
        format!("{PROXY_NAME} resolves in corp: {:?}", lookup.stdout.trim()),
    );
    let drops_before = bed.dns_drops()?;
    let d = bed.demo(PROXY_NAME, Some(ENABLE), None, 3)?;
    check_call(&mut c, &d);
    check_path(&mut c, &d, "udp");
    let drops = bed.dns_drops()? - drops_before;
    c.check(
        drops == 0,
        format!("no DNS query left corp (dropped: {drops})"),
    );
    let connect = d.num("connect_ms");
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 8. `cloudproxy probe` in corp, for the rule sets of scenarios 2, 3 and 4
///    (and none at all): exactly the allowed ports open, the rest timing out
///    (dropped), the right verdict and missing rules.
fn scenario_8(bed: &mut Bed) -> Outcome {
    let mut c = Checks::new();
    let mut timings = Vec::new();
    let mut dumps = String::new();
    for rules in [
        Rules::Whitelist,
        Rules::UdpBlocked,
        Rules::Only9700,
        Rules::Nothing,
    ] {
        bed.set_rules(rules)?;
        let (out, json) = bed.probe(NODE_A)?;
        let _ = writeln!(dumps, "--- {rules:?}\n{}", out.stdout.trim());
        timings.push(format!("{rules:?} probe {} ms", out.elapsed.as_millis()));
        let open_port = |protocol: &str, role: &str, port: u16| -> &'static str {
            let allowed = match (rules, protocol, role) {
                (Rules::Nothing, _, _) => false,
                (Rules::UdpBlocked, "UDP", _) => false,
                (Rules::Only9700, _, "allocation") => port == 9700,
                _ => true,
            };
            if allowed { "open" } else { "timeout" }
        };
        let checks = json.get("checks").and_then(Json::as_array).unwrap_or(&[]);
        let mut seen: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut expected_missing = Vec::new();
        for check in checks {
            let field = |k: &str| {
                check
                    .get(k)
                    .and_then(Json::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            let (protocol, role, address, state) = (
                field("protocol"),
                field("role"),
                field("address"),
                field("state"),
            );
            let port: u16 = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let want = open_port(&protocol, &role, port);
            c.check(
                state == want,
                format!("{rules:?}: {protocol} {role} {address} is {state} (expected {want})"),
            );
            if want != "open" {
                expected_missing.push(format!(
                    "allow {protocol} to {} port {port} ({role})",
                    address.rsplit_once(':').map_or("", |(ip, _)| ip)
                ));
            }
            seen.entry((protocol, role)).or_default().push(address);
        }
        // Every allocation port over both protocols was checked; the relays
        // only when an allocation got through.
        for protocol in ["TCP", "UDP"] {
            let mut ports: Vec<String> = seen
                .get(&(protocol.to_owned(), "allocation".to_owned()))
                .cloned()
                .unwrap_or_default();
            ports.sort();
            let mut want: Vec<String> = ALLOCATION_PORTS.map(|p| format!("{NODE_A}:{p}")).to_vec();
            want.sort();
            c.check(
                ports == want,
                format!("{rules:?}: {protocol} allocation ports checked: {ports:?}"),
            );
        }
        let relays_checked = seen.contains_key(&("TCP".into(), "message relay".into()))
            && seen.contains_key(&("UDP".into(), "media relay".into()));
        c.check(
            relays_checked == (rules != Rules::Nothing),
            format!("{rules:?}: relays checked: {relays_checked}"),
        );
        let verdict = json.get("verdict").and_then(Json::as_str).unwrap_or("?");
        let (want_verdict, want_exit) = match rules {
            Rules::UdpBlocked => ("works_only_over_tcp", true),
            Rules::Nothing => ("does_not_work", false),
            _ => ("works_over_udp", true),
        };
        c.check(
            verdict == want_verdict,
            format!("{rules:?}: verdict {verdict}"),
        );
        c.check(
            out.status.is_some_and(|s| s.success()) == want_exit,
            format!(
                "{rules:?}: exit status {:?}",
                out.status.and_then(|s| s.code())
            ),
        );
        let mut missing: Vec<String> = json
            .get("missing_rules")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        missing.sort();
        expected_missing.sort();
        c.check(
            missing == expected_missing,
            format!("{rules:?}: missing rules {missing:?}"),
        );
        c.check(
            json.get("proxy_refusal")
                .is_none_or(|v| matches!(v, Json::Null)),
            format!("{rules:?}: no proxy refusal"),
        );
    }
    bed.set_rules(Rules::Whitelist)?;
    c.done(|| dumps, timings)
}

// ---------------------------------------------------------------------------
// A small JSON reader for the demo's and the probe's --json output.

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Self>),
    Obj(Vec<(String, Self)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Num(n) => Some(*n),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Self]> {
        match self {
            Self::Arr(a) => Some(a),
            _ => None,
        }
    }
}

/// The last top-level JSON object printed (a line starting with `{`, up to
/// the end of the output).
fn parse_json_object(text: &str) -> std::result::Result<Json, String> {
    let starts: Vec<usize> = text
        .match_indices('{')
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
        .collect();
    let mut last_err = "no JSON object in the output".to_owned();
    for &start in starts.iter().rev() {
        let mut p = JsonParser {
            s: &text.as_bytes()[start..],
            i: 0,
        };
        match p.value() {
            Ok(v) => return Ok(v),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> std::result::Result<T, String> {
        Err(format!("JSON: expected {what} at byte {}", self.i))
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> std::result::Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                if self.eat(b'}') {
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return self.err("':'");
                    }
                    fields.push((key, self.value()?));
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b'}') {
                        return Ok(Json::Obj(fields));
                    }
                    return self.err("',' or '}'");
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b']') {
                        return Ok(Json::Arr(items));
                    }
                    return self.err("',' or ']'");
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                text.parse()
                    .map(Json::Num)
                    .or_else(|_| self.err("a number"))
            }
            _ => self.err("a value"),
        }
    }

    fn word(&mut self, word: &str, value: Json) -> std::result::Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(value)
        } else {
            self.err(word)
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("a string");
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.i) else {
                return self.err("the end of a string");
            };
            self.i += 1;
            match b {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return self.err("an escape");
                    };
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(code) = hex else {
                                return self.err("four hex digits");
                            };
                            self.i += 4;
                            // Surrogates are not needed for our output; keep
                            // them readable rather than exact.
                            let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reader() {
        let text = "progress line\n{\"ok\": true, \"n\": -1.5e2, \"s\": \"a\\\"b\\u00e9\", \"a\": [1, null, {}], \"e\": null}\n";
        let v = parse_json_object(text).unwrap();
        assert_eq!(v.get("ok").and_then(Json::as_bool), Some(true));
        assert_eq!(v.get("n").and_then(Json::as_f64), Some(-150.0));
        assert_eq!(v.get("s").and_then(Json::as_str), Some("a\"bé"));
        assert_eq!(
            v.get("a").and_then(Json::as_array).map(<[Json]>::len),
            Some(3)
        );
        assert_eq!(v.get("e"), Some(&Json::Null));
        assert!(parse_json_object("{\"a\": }").is_err());
        assert!(parse_json_object("nothing").is_err());
    }

    #[test]
    fn stats_line() {
        let line = "2026-11-28T02:00:00Z  INFO proxy node stopped outcome=drained stats=\"allocations=3 udp_packets_up=120 udp_packets_down=118 tcp_udp_packets_up=7\"";
        assert_eq!(stat(line, "udp_packets_up"), Some(120));
        assert_eq!(stat(line, "allocations"), Some(3));
        assert_eq!(stat(line, "missing"), None);
        // A name that ends another name is not that name.
        assert_eq!(stat(line, "packets_up"), None);
    }
}
