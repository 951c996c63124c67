//! Processes: commands with bounded waits, long-running daemons in a
//! namespace with their logs, and the cloud side's peers (the proxy nodes
//! and the reference edge), started, killed and stopped by their PID.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::bed::{
    ALLOCATION_PORTS, CLIENT, EDGE, EDGE_PORT, NODE_A, NODE_B, TCP_RELAY_PORT, TLS_PORT,
    UDP_RELAY_PORTS,
};
use crate::Result;

/// The app every node serves and every client joins with.
pub(super) const APP_ID: &str = "e2e-app";

/// A process whose output is being collected.
pub(super) struct Running {
    child: Child,
    pub(super) started: Instant,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
}

/// A process that ended, or was killed at its limit.
pub(super) struct Finished {
    /// `None` when the process outlived its limit and was killed.
    pub(super) status: Option<ExitStatus>,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) elapsed: Duration,
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

/// Starts `cmd` with its stdout and stderr collected.
pub(super) fn spawn(cmd: &mut Command) -> Result<Running> {
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
    pub(super) fn finish(mut self, limit: Duration) -> Finished {
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

/// Runs `cmd` to its end, killing it at `limit`.
pub(super) fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Finished> {
    Ok(spawn(cmd)?.finish(limit))
}

/// Runs a setup command that must succeed quickly.
pub(super) fn must(cmd: &mut Command) -> Result {
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

/// `ip ARGS`.
pub(super) fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// `program` inside namespace `ns`.
pub(super) fn in_ns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// A long-running process in a namespace; its stdout and stderr go to
/// `<name>.log`.
pub(super) struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program ARGS` in `ns` and waits (15 s at most) until it
    /// prints a line containing `ready`.
    pub(super) fn start(
        ns: &str,
        program: &Path,
        args: &[&str],
        log: PathBuf,
        ready: &'static str,
    ) -> Result<Self> {
        let name = log
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let file =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("cloning a log handle: {e}"))?;
        let mut child = in_ns(ns, program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        // Copy stdout to the log, and report when the ready line has been
        // printed.
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
                if line.contains(ready) {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut daemon = Self { child, log };
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(()) => Ok(daemon),
            Err(_) => {
                daemon.kill();
                Err(format!(
                    "{name} did not start within 15 s:\n{}",
                    std::fs::read_to_string(&daemon.log).unwrap_or_default()
                ))
            }
        }
    }

    /// Starts `program ARGS` in `ns` (stdout and stderr to `log`) and waits
    /// (15 s at most) until something listens on TCP `listen` there: for
    /// Debian daemons (haproxy, squid) that print no ready line.
    pub(super) fn start_listening(
        ns: &str,
        program: &str,
        args: &[&str],
        log: PathBuf,
        listen: &str,
    ) -> Result<Self> {
        let file =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("cloning a log handle: {e}"))?;
        let child = in_ns(ns, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let mut daemon = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && daemon.running() {
            let ss = run_bounded(
                in_ns(ns, "ss").args(["-Hltn", "state", "listening"]),
                Duration::from_secs(5),
            )?;
            if ss.stdout.split_whitespace().any(|word| word == listen) {
                return Ok(daemon);
            }
            thread::sleep(Duration::from_millis(50));
        }
        daemon.kill();
        Err(format!(
            "{program} did not listen on {listen} within 15 s:\n{}",
            std::fs::read_to_string(&daemon.log).unwrap_or_default()
        ))
    }

    /// The log so far.
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the process dies at once, its sockets are reset by the kernel.
    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (10 s at most) for it to end; returns its log.
    fn terminate(mut self) -> Result<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.running() {
            thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        std::fs::read_to_string(&self.log)
            .map_err(|e| format!("reading {}: {e}", self.log.display()))
    }
}

impl Drop for Daemon {
    /// A daemon a scenario forgot (or a failure skipped) dies with it.
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `cloudproxy serve` and `cloudproxy edge` print last when they are
/// up.
const CLOUDPROXY_READY: &str = "press Ctrl-C to stop";

/// A proxy node: 0 is A, 1 is B.
pub(super) type Node = usize;

/// The cloud side's long-running peers: two proxy nodes and the edge, all
/// in `cloud`. Dropping it kills them.
pub(super) struct Peers {
    bin: PathBuf,
    cloud: String,
    /// Configs and logs.
    dir: PathBuf,
    /// The app's secret (hex), fresh per run.
    pub(super) secret: String,
    ticket_key: String,
    nodes: [Option<Daemon>; 2],
    edge: Option<Daemon>,
    /// Each node's TLS certificate's SHA-256 fingerprint, what clients pin
    /// (`rtc.proxy_tls_pin`).
    pins: [String; 2],
}

impl Peers {
    /// Starts the edge and both nodes in `cloud`.
    pub(super) fn start(bin: PathBuf, cloud: &str, dir: &Path) -> Result<Self> {
        let mut peers = Self {
            bin,
            cloud: cloud.to_owned(),
            dir: dir.to_owned(),
            secret: random_hex(16)?,
            ticket_key: random_hex(32)?,
            nodes: [None, None],
            edge: None,
            pins: [String::new(), String::new()],
        };
        for node in 0..2 {
            peers.pins[node] = peers.make_certificate(node)?;
        }
        peers.start_edge()?;
        peers.start_node(0)?;
        peers.start_node(1)?;
        Ok(peers)
    }

    fn start_edge(&mut self) -> Result {
        let port = EDGE_PORT.to_string();
        let edge = Daemon::start(
            &self.cloud,
            &self.bin,
            &[
                "edge",
                "--bind",
                EDGE,
                "--tcp-port",
                &port,
                "--udp-port",
                &port,
            ],
            self.dir.join("edge.log"),
            CLOUDPROXY_READY,
        )?;
        self.edge = Some(edge);
        Ok(())
    }

    /// `cloudproxy cert --name <node address>`: the node's TLS certificate
    /// and key in the run's directory; returns its fingerprint.
    fn make_certificate(&self, node: Node) -> Result<String> {
        let name = Self::node_name(node);
        let (cert, key) = self.tls_files(node);
        let out = run_bounded(
            Command::new(&self.bin)
                .args(["cert", "--name", Self::node_addr(node), "--force"])
                .arg("--cert-out")
                .arg(&cert)
                .arg("--key-out")
                .arg(&key),
            Duration::from_secs(20),
        )?;
        if !out.status.is_some_and(|s| s.success()) {
            return Err(format!(
                "cloudproxy cert for {name} failed: {}{}",
                out.stdout, out.stderr
            ));
        }
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("sha256 fingerprint: "))
            .map(|f| f.trim().to_owned())
            .ok_or_else(|| {
                format!(
                    "cloudproxy cert printed no `sha256 fingerprint: …` line: {}",
                    out.stdout
                )
            })
    }

    fn tls_files(&self, node: Node) -> (PathBuf, PathBuf) {
        let name = Self::node_name(node);
        (
            self.dir.join(format!("{name}-cert.pem")),
            self.dir.join(format!("{name}-key.pem")),
        )
    }

    /// The fingerprint of `node`'s TLS certificate.
    pub(super) fn pin(&self, node: Node) -> &str {
        &self.pins[node]
    }

    /// A node's address.
    pub(super) fn node_addr(node: Node) -> &'static str {
        [NODE_A, NODE_B][node]
    }

    /// A node's name, in logs and messages.
    pub(super) fn node_name(node: Node) -> &'static str {
        ["node-a", "node-b"][node]
    }

    /// Starts proxy `node`: the guide's ports on its own address, the
    /// shared app and ticket key, the edge allowed.
    pub(super) fn start_node(&mut self, node: Node) -> Result {
        let addr = Self::node_addr(node);
        let name = Self::node_name(node);
        let (lo, hi) = UDP_RELAY_PORTS;
        let (cert, key) = self.tls_files(node);
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

[tls]
listen = "{addr}:{TLS_PORT}"
cert = "{tls_cert}"
key = "{tls_key}"
"#,
            ports = ALLOCATION_PORTS.map(|p| p.to_string()).join(", "),
            secret = self.secret,
            key = self.ticket_key,
            tls_cert = cert.display(),
            tls_key = key.display(),
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let path = path.to_string_lossy().into_owned();
        let daemon = Daemon::start(
            &self.cloud,
            &self.bin,
            &["serve", "--config", &path],
            self.dir.join(format!("{name}.log")),
            CLOUDPROXY_READY,
        )?;
        self.nodes[node] = Some(daemon);
        Ok(())
    }

    /// Restarts any proxy node that is not running.
    pub(super) fn ensure_nodes(&mut self) -> Result {
        for node in 0..2 {
            let running = self.nodes[node].as_mut().is_some_and(Daemon::running);
            if !running {
                self.kill_node(node);
                self.start_node(node)?;
            }
        }
        Ok(())
    }

    /// Kills and starts both nodes: their counters then count only what
    /// follows.
    pub(super) fn restart_nodes(&mut self) -> Result {
        self.kill_node(0);
        self.kill_node(1);
        self.start_node(0)?;
        self.start_node(1)
    }

    /// SIGKILL: the node dies at once, its sockets are reset by the kernel.
    pub(super) fn kill_node(&mut self, node: Node) {
        if let Some(mut daemon) = self.nodes[node].take() {
            daemon.kill();
        }
    }

    /// SIGTERM and wait (bounded) for the node to drain and print its stats;
    /// returns its log.
    pub(super) fn stop_node(&mut self, node: Node) -> Result<String> {
        let Some(daemon) = self.nodes[node].take() else {
            return Err(format!("{} is not running", Self::node_name(node)));
        };
        daemon.terminate()
    }

    /// Established TCP relay connections from the client, per node.
    pub(super) fn relay_connections(&self) -> Result<[usize; 2]> {
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
            for (node, addr) in [NODE_A, NODE_B].iter().enumerate() {
                if local == format!("{addr}:{TCP_RELAY_PORT}") {
                    count[node] += 1;
                }
            }
        }
        Ok(count)
    }

    /// Kills every peer still running (again: nothing).
    pub(super) fn stop_all(&mut self) {
        for daemon in self.nodes.iter_mut().chain([&mut self.edge]) {
            if let Some(mut daemon) = daemon.take() {
                daemon.kill();
            }
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}
