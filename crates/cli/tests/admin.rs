//! `cloudproxy serve` and its admin listener: the development default, the
//! `--admin` flag and `[admin] bind`, SIGUSR2 and `POST /drain`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{LOCAL_SERVE, cloudproxy};

/// A serve process, stopped (SIGTERM, by PID) when dropped.
struct Node {
    child: Child,
    banner: String,
}

impl Node {
    fn start(extra: &[&str]) -> Self {
        let mut child = cloudproxy()
            .args(LOCAL_SERVE)
            .args(["--log", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("press Ctrl-C") {
                break;
            }
        }
        assert!(banner.contains("press Ctrl-C"), "{banner}");
        Self { child, banner }
    }

    /// The admin listener's address from the banner.
    fn admin(&self) -> String {
        self.banner
            .lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix("admin               HTTP http://")
            })
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("expected an admin line in the banner:\n{}", self.banner))
            .to_owned()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// One request: (status, body).
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Asks `/readyz` until it answers `want`, for at most ten seconds (a
/// signal is handled asynchronously).
fn wait_ready(addr: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(addr, "GET", "/readyz");
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected /readyz {want} within 10 s, still {status}: {body}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn development_mode_serves_the_admin_listener_and_sigusr2_drains() {
    let node = Node::start(&[]);
    let admin = node.admin();
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    assert_eq!(http(&admin, "GET", "/readyz"), (200, "ready\n".into()));
    let (status, metrics) = http(&admin, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("cloudproxy_ready 1"), "{metrics}");

    node.signal("-USR2");
    wait_ready(&admin, 503);
    let (_, metrics) = http(&admin, "GET", "/metrics");
    assert!(metrics.contains("cloudproxy_draining 1"), "{metrics}");
    // The process stays up after a drain on demand.
    assert_eq!(http(&admin, "GET", "/livez").0, 200);
}

#[test]
fn the_admin_flag_sets_the_address_and_post_drain_drains() {
    // Port 0 through the flag: the banner says which port it got.
    let node = Node::start(&["--admin", "127.0.0.1:0"]);
    let admin = node.admin();
    assert_eq!(http(&admin, "GET", "/readyz").0, 200);
    assert_eq!(http(&admin, "POST", "/drain").0, 202);
    assert_eq!(http(&admin, "GET", "/readyz").0, 503);
    node.signal("-TERM");
    let mut node = node;
    let status = node.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM after a drain exits cleanly"
    );
}

#[test]
fn an_admin_port_that_clashes_is_a_configuration_error() {
    let output = cloudproxy()
        .args([
            "serve",
            "--check",
            "--tcp-relay-port",
            "9611",
            "--admin",
            "127.0.0.1:9611",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--admin"), "{stderr}");
    assert!(
        stderr.contains("port 9611 is also the TCP relay port"),
        "{stderr}"
    );
}
