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

/// A UDP relay in front of `target` that holds every datagram, both ways,
/// for `delay` before passing it on: a slow media path. Each client
/// address gets a socket of its own towards `target`, so the far side sees
/// one stable address per client. Runs until the test process ends.
fn delaying_udp_relay(target: std::net::SocketAddr, delay: std::time::Duration) -> String {
    use std::collections::HashMap;
    use std::net::UdpSocket;
    use std::sync::mpsc;
    use std::time::Instant;

    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = front.local_addr().unwrap();
    // (when to send, through which socket, to where, what): one sender
    // thread sends them in order, each at its time.
    let (queue, due) = mpsc::channel::<(Instant, UdpSocket, std::net::SocketAddr, Vec<u8>)>();
    std::thread::spawn(move || {
        for (at, socket, to, datagram) in due {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let _ = socket.send_to(&datagram, to);
        }
    });
    std::thread::spawn(move || {
        let mut backs: HashMap<std::net::SocketAddr, UdpSocket> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, client)) = front.recv_from(&mut buf) {
            let back = backs.entry(client).or_insert_with(|| {
                let back = UdpSocket::bind("127.0.0.1:0").unwrap();
                // The far side's answers come back to the client, as late.
                let (reply_to, front, queue) = (client, front.try_clone().unwrap(), queue.clone());
                let answers = back.try_clone().unwrap();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = answers.recv(&mut buf) {
                        let front = front.try_clone().unwrap();
                        let at = Instant::now() + delay;
                        if queue
                            .send((at, front, reply_to, buf[..n].to_vec()))
                            .is_err()
                        {
                            break;
                        }
                    }
                });
                back.connect(target).unwrap();
                back
            });
            let at = Instant::now() + delay;
            if queue
                .send((at, back.try_clone().unwrap(), target, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    addr.to_string()
}

/// Media still in flight when the sending stops is waited for, not counted
/// lost: with 150 ms more each way on the media path (and none on the
/// message path), the last 300 ms of media are always in flight when the
/// last message is answered, and every datagram still arrives.
#[test]
fn media_in_flight_at_the_end_is_not_counted_lost() {
    let local = local_edge();
    let (edge_tcp, edge_udp) = local.addrs.split_once(',').unwrap();
    let slow_udp = delaying_udp_relay(
        edge_udp.parse().unwrap(),
        std::time::Duration::from_millis(150),
    );
    let serve_node = dev_proxy(&[]);
    let (output, summary) = demo(&[
        "--proxy",
        &serve_node.server,
        "--edge",
        &format!("{edge_tcp},{slow_udp}"),
        "--app-id",
        "dev-app",
        "--credential",
        &serve_node.secret,
        "--seconds",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(0), "{summary:#}");
    assert_delivered(&summary);
    assert_eq!(
        summary["media_received"], summary["media_sent"],
        "{summary:#}"
    );
    // The events are objects of a stable shape, not debug strings.
    let events = summary["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["engine"] == "alice"
            && e["event"] == "proxy_connected"
            && e["proxy_type"] == "udp"),
        "{events:#?}"
    );
}
