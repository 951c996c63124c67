//! Runs `cloudproxy serve` as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn cloudproxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
}

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
        .args([
            "serve",
            "--allocation-port",
            "0",
            "--tcp-relay-port",
            "0",
            "--udp-relay-ports",
            "0-1",
            "--socks5-port",
            "0",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        let done = line.starts_with("press Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let banner = banner.join("\n");
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
