//! Running `cloudproxy` subcommands as child processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// `cloudproxy serve` in development mode on ephemeral ports: the arguments
/// the tests' nodes start from.
pub(crate) const LOCAL_SERVE: &[&str] = &[
    "serve",
    "--allocation-port",
    "0",
    "--tcp-relay-port",
    "0",
    "--udp-relay-ports",
    "0-1",
];

/// The `cloudproxy` binary under test.
pub(crate) fn cloudproxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
}

/// A child process that is stopped (SIGTERM) when the test ends, pass or fail.
pub(crate) struct Running(Child);

impl From<Child> for Running {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn(args: &[&str]) -> (Running, Lines) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = Lines::new(child.stdout.take().unwrap(), child.id());
    (Running(child), stdout)
}

/// How long a test waits for a line a child should print (its banner, its
/// "forwarding" line) before it fails instead of hanging.
pub(crate) const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A child's output, read line by line on a thread of its own, so that a
/// test waits for a line with a deadline instead of blocking forever on a
/// child that never prints it.
pub(crate) struct Lines {
    lines: mpsc::Receiver<String>,
    /// Stopped (SIGTERM) when a wait times out, so no child outlives a
    /// failed test.
    pid: u32,
}

impl Lines {
    /// Starts reading `output`, the output of the child `pid`.
    pub(crate) fn new(output: impl Read + Send + 'static, pid: u32) -> Self {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines, pid }
    }

    /// Waits, at most [`LINE_TIMEOUT`] in all, for a line starting with
    /// `stop`; returns every line up to and including it, each ending in
    /// `\n`. Fails the test if the child ends first or the time runs out.
    pub(crate) fn until(&mut self, stop: &str) -> String {
        self.until_within(stop, LINE_TIMEOUT)
    }

    /// [`Lines::until`] with its own time limit.
    pub(crate) fn until_within(&mut self, stop: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                    if line.starts_with(stop) {
                        return text;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "expected a line starting with {stop:?}, but the process ended first; it printed:\n{text}"
                    )
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = Command::new("kill")
                        .args(["-TERM", &self.pid.to_string()])
                        .status();
                    panic!(
                        "expected a line starting with {stop:?} within {timeout:?}, found none \
                         (process {} stopped); it printed:\n{text}",
                        self.pid
                    )
                }
            }
        }
    }
}

/// Reads lines until one starts with `stop` (see [`Lines::until`]); returns
/// them all.
pub(crate) fn read_until(out: &mut Lines, stop: &str) -> String {
    out.until(stop)
}

pub(crate) fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
        .trim()
}

/// A `cloudproxy serve` development node on ephemeral loopback ports, with
/// `extra` flags; stopped when dropped.
pub(crate) struct DevProxy {
    _process: Running,
    /// The allocation service, `IP:PORT`.
    pub(crate) server: String,
    /// The development app secret, in hex (app id `dev-app`).
    pub(crate) secret: String,
}

pub(crate) fn dev_proxy(extra: &[&str]) -> DevProxy {
    let mut args = LOCAL_SERVE.to_vec();
    args.extend_from_slice(&["--log", "warn"]);
    args.extend_from_slice(extra);
    let (process, mut out) = spawn(&args);
    let banner = read_until(&mut out, "press Ctrl-C");
    DevProxy {
        _process: process,
        server: field(&banner, "allocation service  TCP").to_owned(),
        secret: field(&banner, "app secret").to_owned(),
    }
}

/// A `cloudproxy edge` on ephemeral loopback ports; stopped when dropped.
pub(crate) struct LocalEdge {
    _process: Running,
    /// `TCP_ADDR,UDP_ADDR`, as `--edge` takes it.
    pub(crate) addrs: String,
}

pub(crate) fn local_edge() -> LocalEdge {
    let (process, mut out) = spawn(&[
        "edge",
        "--tcp-port",
        "0",
        "--udp-port",
        "0",
        "--log",
        "warn",
    ]);
    let banner = read_until(&mut out, "press Ctrl-C");
    LocalEdge {
        _process: process,
        addrs: format!(
            "{},{}",
            field(&banner, "members (messages)  TCP"),
            field(&banner, "media               UDP")
        ),
    }
}
