//! `cloudproxy demo`, embedded and against running processes.

mod common;

use std::process::{Command, Output};

use common::{dev_proxy, local_edge};

fn demo(args: &[&str]) -> (Output, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .arg("demo")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output, summary)
}

fn assert_delivered(summary: &serde_json::Value) {
    assert_eq!(summary["ok"], true, "{summary:#}");
    let sent = summary["messages_sent"].as_u64().unwrap();
    assert!(sent > 0);
    assert_eq!(
        summary["messages_received"].as_u64(),
        Some(sent),
        "{summary:#}"
    );
    assert_eq!(summary["duplicates"], 0);
    assert_eq!(summary["out_of_order"], 0);
    assert!(
        summary["media_received"].as_u64().unwrap() > 0,
        "{summary:#}"
    );
    assert!(summary["rtt_p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_embedded_demo_makes_a_call_over_the_udp_relay() {
    let (output, summary) = demo(&["--seconds", "1"]);
    assert_eq!(output.status.code(), Some(0));
    assert_delivered(&summary);
    assert_eq!(summary["path"], "udp");
    assert!(summary["fallback_reason"].is_null());
}

#[test]
fn force_tcp_carries_media_over_the_tcp_relay() {
    let (output, summary) = demo(&["--seconds", "1", "--mode", "force-tcp"]);
    assert_eq!(output.status.code(), Some(0));
    assert_delivered(&summary);
    assert_eq!(summary["path"], "tcp");
}

#[test]
fn the_human_output_has_a_summary() {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(["demo", "--seconds", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{text}");
    for line in [
        "connect time",
        "path              proxy, media over the UDP relay",
        "round trip        p50",
        "0 missing, 0 duplicated, 0 out of order",
        "result: the call works through the cloud proxy",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
    // The live progress line goes to stderr.
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("messages")
    );
}

#[test]
fn against_running_serve_and_edge_processes() {
    let local = local_edge();
    let edge = local.addrs.clone();
    let serve_node = dev_proxy(&[]);
    let proxy = serve_node.server.clone();
    let secret = serve_node.secret.clone();

    let (output, summary) = demo(&[
        "--proxy",
        &proxy,
        "--edge",
        &edge,
        "--app-id",
        "dev-app",
        "--credential",
        &secret,
        "--seconds",
        "1",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_delivered(&summary);
    assert_eq!(summary["path"], "udp");

    // The wrong secret: the call fails, clearly, with a non-zero exit.
    let (output, summary) = demo(&[
        "--proxy",
        &proxy,
        "--edge",
        &edge,
        "--app-id",
        "dev-app",
        "--credential",
        "00112233445566778899aabbccddeeff",
        "--seconds",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(summary["ok"], false);
    let error = summary["error"].as_str().unwrap();
    assert!(error.contains("could not join"), "{error}");
}

#[test]
fn progress_off_a_terminal_is_plain_labelled_lines() {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(["demo", "--seconds", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        !stderr.contains('\r'),
        "a redraw off a terminal: {stderr:?}"
    );
    let progress = stderr
        .lines()
        .find(|l| l.contains("messages"))
        .unwrap_or_else(|| panic!("no progress line in {stderr:?}"));
    assert!(
        progress.contains(" delivered") && progress.contains(" received"),
        "unlabelled figures: {progress:?}"
    );
}

#[test]
fn a_failed_demo_prints_its_error_and_no_table_of_zeros() {
    let local = local_edge();
    let serve_node = dev_proxy(&[]);
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args([
            "demo",
            "--proxy",
            &serve_node.server,
            "--edge",
            &local.addrs,
            "--app-id",
            "dev-app",
            "--credential",
            "00112233445566778899aabbccddeeff",
            "--seconds",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("result: FAILED: "), "{stdout}");
    assert!(stdout.contains("could not join"), "{stdout}");
    for table_line in ["summary", "media packets", "round trip", "connect time"] {
        assert!(!stdout.contains(table_line), "{table_line:?} in:\n{stdout}");
    }
}

/// An HTTP proxy that answers every request with `407`.
fn proxy_demanding_credentials() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
                head.push(byte[0]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    addr.to_string()
}

#[test]
fn force_tls_through_a_proxy_that_refuses_the_credentials_fails_with_a_stable_kind() {
    let proxy = proxy_demanding_credentials();
    let params = format!(r#"{{"rtc.http_proxy":"http://user:wrong@{proxy}"}}"#);
    let (output, summary) = demo(&[
        "--seconds",
        "1",
        "--mode",
        "force-tls",
        "--params",
        r#"{"rtc.enable_proxy":true}"#,
        "--params",
        &params,
    ]);
    assert_eq!(output.status.code(), Some(1), "{summary:#}");
    assert_eq!(summary["ok"], false);
    assert_eq!(summary["error_kind"], "proxy_auth_failed", "{summary:#}");
    let error = summary["error"].as_str().unwrap();
    assert!(error.contains("407"), "{error}");
}
