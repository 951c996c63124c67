//! `cloudproxy serve`, `cloudproxy forward` and `cloudproxy edge` as
//! processes, the way the operations guide runs them.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use common::{Lines, dev_proxy, field, read_until, spawn};

#[test]
fn nc_style_traffic_through_serve_and_forward() {
    // The destination: an echo server on loopback, in this process.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut data = Vec::new();
            stream.read_to_end(&mut data).unwrap();
            stream.write_all(&data).unwrap();
        }
    });

    let serve_node = dev_proxy(&[]);
    let allocation = serve_node.server.clone();
    let secret = serve_node.secret.clone();

    let (_forward, mut forward_out) = spawn(&[
        "forward",
        "--server",
        &allocation,
        "--app-id",
        "dev-app",
        "--credential",
        &secret,
        "--to",
        &echo_addr.to_string(),
        "--log",
        "warn",
    ]);
    let line = read_until(&mut forward_out, "forwarding");
    let local = line.split_whitespace().nth(1).unwrap();

    let mut client = TcpStream::connect(local).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&payload).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the echo through the proxy differs");
}

#[test]
fn edge_prints_its_addresses() {
    let (_edge, mut out) = spawn(&[
        "edge",
        "--tcp-port",
        "0",
        "--udp-port",
        "0",
        "--log",
        "warn",
    ]);
    let banner = read_until(&mut out, "press Ctrl-C");
    let tcp: std::net::SocketAddr = field(&banner, "members (messages)  TCP").parse().unwrap();
    let udp: std::net::SocketAddr = field(&banner, "media               UDP").parse().unwrap();
    assert!(tcp.ip().is_loopback() && tcp.port() != 0);
    assert!(udp.ip().is_loopback() && udp.port() != 0);
    // It accepts members: a connection is taken (and closed at the handshake
    // deadline if it never joins).
    TcpStream::connect(tcp).unwrap();
}

#[test]
fn forward_refuses_a_malformed_credential() {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args([
            "forward",
            "--server",
            "127.0.0.1:9",
            "--app-id",
            "a",
            "--credential",
            "xyz",
            "--to",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--credential"), "{stderr}");
    assert!(stderr.contains("hex digits"), "{stderr}");
}

#[test]
fn forward_with_a_refused_credential_exits_at_start_with_a_clear_error() {
    let serve_node = dev_proxy(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args([
            "forward",
            "--server",
            &serve_node.server,
            "--app-id",
            "dev-app",
            "--credential",
            "00112233445566778899aabbccddeeff",
            "--to",
            "127.0.0.1:9",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let _ = std::io::BufReader::new(stdout).read_to_string(&mut out);
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut err);
        let _ = done_tx.send((child.wait().unwrap().code(), out, err));
    });
    let Ok((code, stdout, stderr)) = done.recv_timeout(std::time::Duration::from_secs(20)) else {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        panic!("forward kept running with a refused credential");
    };
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("forwarding"), "{stdout}");
    assert!(
        stderr.contains("refused the credential for app \"dev-app\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("check --app-id and --credential"),
        "{stderr}"
    );
}

/// Stops a child by PID (SIGTERM) and returns its stderr.
fn stop_and_read_stderr(mut child: std::process::Child) -> String {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = child.wait();
    stderr
}

#[test]
fn edge_and_forward_log_one_human_line_per_event() {
    // The edge: its stop line carries its counters as name=value.
    let mut edge = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(["edge", "--tcp-port", "0", "--udp-port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let banner = Lines::new(edge.stdout.take().unwrap(), edge.id()).until("press Ctrl-C");
    assert!(banner.contains("press Ctrl-C"), "{banner}");
    let stderr = stop_and_read_stderr(edge);
    let stopped = stderr
        .lines()
        .find(|l| l.contains(" stopped "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(stopped.contains("members=0"), "{stopped}");
    assert!(!stderr.contains("EdgeStats"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    for line in stderr.lines() {
        assert!(
            line.get(..4)
                .is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit())),
            "a line without a timestamp: {line:?}"
        );
    }

    // forward, as JSON for a collector.
    let serve_node = dev_proxy(&[]);
    let mut forward = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args([
            "forward",
            "--server",
            &serve_node.server,
            "--app-id",
            "dev-app",
            "--credential",
            &serve_node.secret,
            "--to",
            "127.0.0.1:9",
            "--log-format",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = Lines::new(forward.stdout.take().unwrap(), forward.id()).until("forwarding");
    assert!(line.starts_with("forwarding"), "{line}");
    let stderr = stop_and_read_stderr(forward);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(
        events.iter().any(|e| e["message"] == "allocated"),
        "{stderr}"
    );
}

/// `forward` with `--credential` `text`: exit status and stderr.
fn forward_with_credential(text: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args([
            "forward",
            "--server",
            "127.0.0.1:9",
            "--app-id",
            "a",
            "--credential",
            text,
            "--to",
            "127.0.0.1:9",
        ])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn forward_reports_a_bad_credential_with_the_typed_credential_error() {
    let (code, stderr) = forward_with_credential("abc");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--credential"), "{stderr}");
    assert!(
        stderr.contains(
            "expected an even number of hex digits (two per byte of the app secret), found 3"
        ),
        "{stderr}"
    );
    let (code, stderr) = forward_with_credential("00zz");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("expected hex digits (0-9, a-f) for the app secret, found 'z' at offset 2"),
        "{stderr}"
    );
}

#[test]
#[should_panic(expected = "expected a line starting with \"no such line\" within 1s, found none")]
fn waiting_for_a_line_that_never_comes_fails_instead_of_hanging() {
    let (_edge, mut out) = spawn(&[
        "edge",
        "--tcp-port",
        "0",
        "--udp-port",
        "0",
        "--log",
        "warn",
    ]);
    // The banner ends with "press Ctrl-C", then the edge prints nothing more.
    out.until("press Ctrl-C");
    out.until_within("no such line", std::time::Duration::from_secs(1));
}
