//! Runs `cloudproxy serve` as a user would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{LOCAL_SERVE, cloudproxy};

#[test]
fn a_bad_config_file_names_file_line_and_key_and_does_not_start() {
    let path = std::env::temp_dir().join(format!("cloudproxy-bad-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[listeners]\nbind = \"127.0.0.1\"\nudp_relay_port = \"4500-4650\"\n",
    )
    .unwrap();
    let output = cloudproxy()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{}:3:1", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `udp_relay_port`"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let output = cloudproxy()
        .args(["serve", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("/nonexistent/proxy.toml: cannot read")
    );
}

#[test]
fn development_mode_prints_its_addresses_and_stops_cleanly_on_sigterm() {
    let mut child = cloudproxy()
        .args(LOCAL_SERVE)
        .args(["--socks5-port", "0", "--log", "info"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let banner = common::Lines::new(child.stdout.take().unwrap(), child.id()).until("press Ctrl-C");
    assert!(
        banner.contains("allocation service  TCP 127.0.0.1:"),
        "{banner}"
    );
    assert!(banner.contains("app id      dev-app"), "{banner}");
    assert!(
        banner.contains("SOCKS5              TCP 127.0.0.1:"),
        "{banner}"
    );
    let secret = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("app secret"))
        .unwrap()
        .trim();
    assert_eq!(secret.len(), 32, "a 16-byte secret in hex: {secret}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("SECURITY: allowlist rule 127.0.0.1/32 opens part of 127.0.0.0/8"),
        "{stderr}"
    );
    assert!(stderr.contains("stopped (Drained)"), "{stderr}");
}

/// Runs `cloudproxy` with `args` and `env`, expecting it to exit by itself
/// within ten seconds; a process still running then is stopped (SIGTERM, by
/// PID) and the test fails.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let child = cloudproxy()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let output = match done.recv_timeout(Duration::from_secs(10)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            stop(pid);
            let output = done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            panic!(
                "cloudproxy {args:?} did not exit by itself; it logged:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn stop(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("cloudproxy-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn development_mode_refuses_a_non_loopback_bind() {
    let (code, stderr) = run_to_exit(
        &[
            "serve",
            "--bind",
            "0.0.0.0",
            "--allocation-port",
            "0",
            "--tcp-relay-port",
            "0",
            "--udp-relay-ports",
            "0-1",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--bind 0.0.0.0: development mode (no --config) serves loopback only"),
        "{stderr}"
    );
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn a_bind_flag_gets_the_files_advertise_check() {
    let path = temp_config(
        "advertise",
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "app"
secrets = ["00112233445566778899aabbccddeeff"]

[[ticket_keys]]
key_id = 1
secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#,
    );
    let config = path.to_str().unwrap().to_owned();
    let (code, stderr) = run_to_exit(&["serve", "--config", &config, "--bind", "0.0.0.0"], &[]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    // The message the file gets, with the flag that set the value in place of
    // the file's line.
    assert!(
        stderr.contains("error: --bind: `listeners.advertise`: bind is 0.0.0.0 so clients need an address to reach the relays; set listeners.advertise"),
        "{stderr}"
    );
}

#[test]
fn a_tcp_relay_port_flag_equal_to_an_allocation_port_gets_the_configuration_message() {
    // Held so that nothing else takes the port while the test runs; the
    // configuration must be refused before anything is bound.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_to_exit(
        &[
            "serve",
            "--allocation-port",
            &port,
            "--tcp-relay-port",
            &port,
            "--udp-relay-ports",
            "0-1",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: --tcp-relay-port: `listeners.tcp_relay_port`: port {port} is also an allocation port"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("already in use"), "{stderr}");
}

/// A development node with `extra` flags and stderr captured.
struct Logged {
    child: Child,
    banner: String,
}

impl Logged {
    fn start(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = cloudproxy()
            .args(LOCAL_SERVE)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let banner =
            common::Lines::new(child.stdout.take().unwrap(), child.id()).until("press Ctrl-C");
        assert!(banner.contains("press Ctrl-C"), "{banner}");
        Self { child, banner }
    }

    fn field(&self, label: &str) -> &str {
        self.banner
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in:\n{}", self.banner))
            .trim()
    }

    /// Stops the node (SIGTERM, by PID) and returns what it logged.
    fn stop(self) -> Output {
        stop(self.child.id());
        self.child.wait_with_output().unwrap()
    }
}

#[test]
fn the_log_flag_wins_over_rust_log_and_logs_have_no_colours_off_a_terminal() {
    let node = Logged::start(&["--log", "warn"], &[("RUST_LOG", "debug")]);
    let output = node.stop();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(" WARN "), "{stderr}");
    assert!(
        !stderr.contains(" INFO "),
        "RUST_LOG won over --log:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colours off a terminal:\n{stderr}"
    );

    // Without --log, RUST_LOG applies.
    let node = Logged::start(&[], &[("RUST_LOG", "warn")]);
    let stderr = String::from_utf8(node.stop().stderr).unwrap();
    assert!(!stderr.contains(" INFO "), "{stderr}");
}

#[test]
fn log_lines_show_values_in_their_human_form() {
    let node = Logged::start(&["--log", "info"], &[]);
    let stderr = String::from_utf8(node.stop().stderr).unwrap();
    let started = stderr
        .lines()
        .find(|l| l.contains("proxy node started"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(started.contains("allocation_tcp=127.0.0.1:"), "{started}");
    let stopped = stderr
        .lines()
        .find(|l| l.contains("proxy node stopped"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(stopped.contains("allocations=0"), "{stopped}");
    for debug_form in ["BoundAddrs {", "StatsSnapshot {", "Some(", "ErrorCode::"] {
        assert!(!stderr.contains(debug_form), "{debug_form} in:\n{stderr}");
    }
    // Every line is a timestamped log line: nothing bare.
    for line in stderr.lines() {
        assert!(
            line.get(..4)
                .is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit())),
            "a line without a timestamp: {line:?}\n{stderr}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let node = Logged::start(&["--log", "info", "--log-format", "json"], &[]);
    let stderr = String::from_utf8(node.stop().stderr).unwrap();
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"));
        assert!(event["timestamp"].is_string(), "{line}");
        assert!(event["level"].is_string(), "{line}");
        messages.push(event["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        messages.iter().any(|m| m == "proxy node started"),
        "{stderr}"
    );
}

/// A SOCKS5 CONNECT (RFC 1928) with user/password (RFC 1929) to a domain
/// name; returns the reply code.
fn socks5_connect_to_name(socks5: &str, user: &str, password: &str, name: &[u8]) -> u8 {
    let mut s = TcpStream::connect(socks5).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 2]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 2]);
    let mut auth = vec![1, user.len() as u8];
    auth.extend_from_slice(user.as_bytes());
    auth.push(password.len() as u8);
    auth.extend_from_slice(password.as_bytes());
    s.write_all(&auth).unwrap();
    let mut status = [0u8; 2];
    s.read_exact(&mut status).unwrap();
    assert_eq!(status, [1, 0], "the login was refused");
    let mut request = vec![5, 1, 0, 3, u8::try_from(name.len()).unwrap()];
    request.extend_from_slice(name);
    request.extend_from_slice(&80u16.to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).unwrap();
    reply[1]
}

/// A destination name carrying a forged log line and a terminal escape. Its
/// last label is longer than DNS allows (63 bytes), so the resolver fails it
/// locally and no query leaves the machine.
fn forged_name() -> Vec<u8> {
    let mut name = b"x\n2026-01-01T00:00:00Z  INFO forged\x1b[31m.".to_vec();
    name.extend_from_slice(&[b'a'; 70]);
    name
}

#[test]
fn socks5_domain_names_cannot_inject_log_lines() {
    let node = Logged::start(&["--socks5-port", "0", "--log", "info"], &[]);
    let socks5 = node
        .field("SOCKS5              TCP")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let secret = node.field("app secret").to_owned();
    let reply = socks5_connect_to_name(&socks5, "dev-app", &secret, &forged_name());
    assert_ne!(reply, 0, "the CONNECT must not succeed");
    let stderr = String::from_utf8(node.stop().stderr).unwrap();

    // The attempt is logged, with the name escaped...
    assert!(
        stderr.contains("x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m"),
        "{stderr}"
    );
    // ...and forges nothing.
    for line in stderr.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00Z"),
            "a forged line: {line:?}\n{stderr}"
        );
    }
    assert!(!stderr.contains('\u{1b}'), "a raw ESC:\n{stderr}");

    // The JSON form escapes it too (serde_json), and stays one object per line.
    let node = Logged::start(
        &[
            "--socks5-port",
            "0",
            "--log",
            "info",
            "--log-format",
            "json",
        ],
        &[],
    );
    let socks5 = node
        .field("SOCKS5              TCP")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let secret = node.field("app secret").to_owned();
    socks5_connect_to_name(&socks5, "dev-app", &secret, &forged_name());
    let stderr = String::from_utf8(node.stop().stderr).unwrap();
    assert!(!stderr.contains('\u{1b}'), "a raw ESC:\n{stderr}");
    let refused: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .filter(|event: &serde_json::Value| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("socks5 connect"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{stderr}");
    assert!(
        refused[0]["destination"]
            .as_str()
            .unwrap()
            .starts_with("x\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m."),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_logged_as_one_json_error_under_log_format_json() {
    // Held for the whole test, so the node cannot bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_to_exit(
        &[
            "serve",
            "--allocation-port",
            &port,
            "--tcp-relay-port",
            "0",
            "--udp-relay-ports",
            "0-1",
            "--log-format",
            "json",
        ],
        &[],
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(code.is_some(), "killed by a signal: {stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"))
        })
        .collect();
    let errors: Vec<&serde_json::Value> = events.iter().filter(|e| e["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "one ERROR object expected:\n{stderr}");
    assert!(errors[0]["timestamp"].is_string(), "{stderr}");
    assert!(
        errors[0].to_string().contains(&format!("127.0.0.1:{port}")),
        "the error names the port:\n{stderr}"
    );
}
