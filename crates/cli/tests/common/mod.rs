//! Running `cloudproxy` subcommands as child processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A child process that is stopped (SIGTERM) when the test ends, pass or fail.
pub(crate) struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn(args: &[&str]) -> (Running, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (Running(child), stdout)
}

/// Reads lines until one starts with `stop`; returns them all.
pub(crate) fn read_until(out: &mut BufReader<ChildStdout>, stop: &str) -> String {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the process ended early; it printed:\n{text}"
        );
        text.push_str(&line);
        if line.starts_with(stop) {
            return text;
        }
    }
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
    let mut args = vec![
        "serve",
        "--allocation-port",
        "0",
        "--tcp-relay-port",
        "0",
        "--udp-relay-ports",
        "0-1",
        "--log",
        "warn",
    ];
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
