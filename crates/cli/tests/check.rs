//! `cloudproxy serve --check`: validates file and flags, binds nothing.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `cloudproxy` with `args`, expecting it to exit by itself within ten
/// seconds (a check that started serving would not); a process still
/// running then is stopped by PID and the test fails.
fn cloudproxy(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done.recv_timeout(Duration::from_secs(10)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let output = done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            panic!(
                "cloudproxy {args:?} did not exit by itself; it printed:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "cloudproxy-check-{name}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A port that was free a moment ago: bound on 127.0.0.1 port 0, then closed.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(allocation: u16, tcp_relay: u16, udp_relay: u16) -> String {
    format!(
        r#"[listeners]
bind = "127.0.0.1"
allocation_ports = [{allocation}]
tcp_relay_port = {tcp_relay}
udp_relay_ports = "{udp_relay}-{udp_relay}"

[[apps]]
id = "my-app"
secrets = ["00112233445566778899aabbccddeeff"]

[[ticket_keys]]
key_id = 1
secret = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

[allowlist]
allow = ["198.51.100.0/24:5000-5100", "[2001:db8::/32]:443"]
"#
    )
}

#[test]
fn a_good_config_checks_out_with_a_summary_and_binds_nothing() {
    // Every configured port is held by this test while the check runs: a
    // check that tried to bind any of them would fail with "address in use".
    // (Holding them, rather than probing them afterwards, leaves no window
    // for a parallel test to take a port in between.)
    let held_allocation = TcpListener::bind("127.0.0.1:0").unwrap();
    let allocation = held_allocation.local_addr().unwrap().port();
    let held_allocation_udp = UdpSocket::bind(("127.0.0.1", allocation)).ok();
    let held_relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_relay = held_relay.local_addr().unwrap().port();
    let held_media = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_relay = held_media.local_addr().unwrap().port();
    let file = TempFile::new("good", &config(allocation, tcp_relay, udp_relay));

    let output = cloudproxy(&["serve", "--check", "--config", file.path()]);

    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout}");
    assert!(
        stdout.starts_with(&format!(
            "{}: configuration OK: 1 app, 1 ticket key; listeners on 127.0.0.1: allocation {allocation} (TCP and UDP), TCP relay {tcp_relay}, UDP relay {udp_relay}-{udp_relay} (1 port), SOCKS5 off; 2 allowlist rules",
            file.path()
        )),
        "{stdout}"
    );
    assert!(stderr.is_empty(), "no warnings for this file: {stderr}");
    drop((held_allocation, held_allocation_udp, held_relay, held_media));
}

#[test]
fn a_risky_allowlist_checks_out_with_a_security_warning() {
    let text = config(free_tcp_port(), free_tcp_port(), free_udp_port())
        .replace(r#""[2001:db8::/32]:443""#, r#""169.254.169.254""#);
    let file = TempFile::new("risky", &text);
    let output = cloudproxy(&["serve", "--check", "--config", file.path()]);
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("warning: SECURITY: allowlist rule 169.254.169.254/32"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_fails_the_check_with_file_line_and_key() {
    let file = TempFile::new(
        "bad",
        "[listeners]\nallocation_ports = [9700]\ntcp_relay_port = 9700\n",
    );
    let output = cloudproxy(&["serve", "--check", "--config", file.path()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "no summary for a bad file");
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "error: {}:3:1: `listeners.tcp_relay_port`: port 9700 is also an allocation port\n",
            file.path()
        )
    );
}

#[test]
fn a_file_that_does_not_parse_fails_the_check_with_the_parsers_report() {
    let file = TempFile::new(
        "unparsable",
        "[listeners]\nudp_relay_port = \"4500-4650\"\n",
    );
    let output = cloudproxy(&["serve", "--check", "--config", file.path()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("error: {}:2:1: ", file.path())),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown field `udp_relay_port`"),
        "{stderr}"
    );
}

/// Issue 23: the parser's excerpt of a line holding a secret shows the key
/// and the caret, never the secret; start-up errors print the same.
#[test]
fn a_parse_error_next_to_a_secret_does_not_print_the_secret() {
    let key = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
    let secret = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
    let file = TempFile::new(
        "secret-typo",
        &format!(
            "[listeners]\nbind = \"127.0.0.1\"\n[[apps]]\nid = \"a\"\nsecrets = [\"{secret}\",\n\
             [[ticket_keys]]\nkey_id = 1\nsecret = \"{key}\n"
        ),
    );
    for args in [
        &["serve", "--check", "--config", file.path()][..],
        &["serve", "--config", file.path()][..],
    ] {
        let output = cloudproxy(args);
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.starts_with(&format!("error: {}:", file.path())),
            "{stderr}"
        );
        assert!(stderr.contains("<redacted>"), "{stderr}");
        assert!(stderr.contains('^'), "{stderr}");
        assert!(
            !stderr.contains(key) && !stderr.contains(&key[..16]),
            "{stderr}"
        );
        assert!(
            !stderr.contains(secret) && !stderr.contains(&secret[..16]),
            "{stderr}"
        );
    }
}

#[test]
fn flags_are_checked_together_with_the_file() {
    let allocation = free_tcp_port();
    let file = TempFile::new(
        "flags",
        &config(allocation, free_tcp_port(), free_udp_port()),
    );
    let clash = allocation.to_string();
    let output = cloudproxy(&[
        "serve",
        "--check",
        "--config",
        file.path(),
        "--tcp-relay-port",
        &clash,
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap(),
        format!(
            "error: --tcp-relay-port: `listeners.tcp_relay_port`: port {allocation} is also an allocation port\n"
        )
    );
}

#[test]
fn a_missing_file_fails_the_check() {
    let output = cloudproxy(&["serve", "--check", "--config", "/nonexistent/proxy.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("/nonexistent/proxy.toml: cannot read the configuration file")
    );
}
