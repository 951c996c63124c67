//! Runs the built `cloudproxy` binary on parameter strings.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn cloudproxy(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cloudproxy");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).expect("write stdin");
        // Dropping the pipe closes it, so the child sees end of input.
    }
    child.wait_with_output().expect("wait for cloudproxy")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn good_string() {
    let out = cloudproxy(
        &["params", r#"{"rtc.enable_proxy":true,"che.audio.level":3}"#],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("proxy enabled: yes"), "{stdout}");
    assert!(stdout.contains("proxy server:  not set"), "{stdout}");
    assert!(
        stdout.contains("other keys (1):\n  che.audio.level = 3\n"),
        "{stdout}"
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn guide_sample_with_unescaped_quotes() {
    let out = cloudproxy(
        &[
            "params",
            r#"{"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0]}"#,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("proxy server:  IP address list (type 2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hosts:       192.168.0.112, 127.0.0.1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("port:        default ports (1080, 8000, 25000, 9700)"),
        "{stdout}"
    );
}

#[test]
fn reads_standard_input_for_dash() {
    let out = cloudproxy(
        &["params", "-"],
        Some(b"{\"rtc.proxy_server\":[1, \"ap-proxy.agora.io\", 8000]}\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("proxy server:  domain name (type 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("hosts:       ap-proxy.agora.io"),
        "{stdout}"
    );
    assert!(stdout.contains("port:        8000\n"), "{stdout}");
}

#[test]
fn bad_string_exits_2_with_caret() {
    let out = cloudproxy(&["params", r#"{"rtc.enable_proxy":tru}"#], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with("error: expected a value"), "{stderr}");
    assert!(lines[0].contains("line 1, column 21 (byte 20)"), "{stderr}");
    assert_eq!(lines[1].trim(), r#"{"rtc.enable_proxy":tru}"#);
    // The caret sits under the `t` of `tru`.
    let column_of_fault = lines[1].find("tru").expect("excerpt");
    assert_eq!(lines[2].find('^'), Some(column_of_fault), "{stderr}");
}

#[test]
fn bad_standard_input_exits_2() {
    let out = cloudproxy(&["params", "-"], Some(b"{\"a\":\n\"\xff\"}"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: invalid UTF-8 at line 2, column 2"));
}

#[test]
fn missing_argument_is_a_usage_error() {
    let out = cloudproxy(&["params"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("STRING"));
}
