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

#[test]
fn misspelled_key_warns_with_suggestion() {
    let out = cloudproxy(&["params", r#"{"rtc.enableproxy":true}"#], None);
    assert_eq!(out.status.code(), Some(0), "still accepted");
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr,
        "warning: unknown key \"rtc.enableproxy\" is kept but has no effect: did you mean `rtc.enable_proxy`?\n"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("proxy enabled: not set"), "{stdout}");
    assert!(stdout.contains("rtc.enableproxy = true"), "{stdout}");
}

#[test]
fn source_code_form_gets_a_hint() {
    let out = cloudproxy(&["params", r#""{\"rtc.enable_proxy\":true}""#], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            r#"error: expected the parameter string itself, found it in source-code form (outer quotes and \" escapes of a string literal): pass `{"rtc.enable_proxy":true}` instead"#
        ),
        "{stderr}"
    );
}

#[test]
fn params_json_output() {
    let out = cloudproxy(
        &[
            "params",
            "--json",
            r#"{"rtc.enable_proxy":true,"rtc.proxy_server":[2, "["192.168.0.112","127.0.0.1"]", 0],"che.audio.level":3,"rtc.proxyserver":1}"#,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["ok"], true);
    assert_eq!(json["enable_proxy"], true);
    assert_eq!(json["proxy_server"]["proxy_type"], 2);
    assert_eq!(
        json["proxy_server"]["hosts"],
        serde_json::json!(["192.168.0.112", "127.0.0.1"])
    );
    assert_eq!(json["proxy_server"]["port"], 0);
    assert_eq!(
        json["proxy_server"]["ports"],
        serde_json::json!([1080, 8000, 25000, 9700])
    );
    assert_eq!(json["other_keys"]["che.audio.level"], 3);
    assert_eq!(
        json["warnings"],
        serde_json::json!([
            "unknown key \"rtc.proxyserver\" is kept but has no effect: did you mean `rtc.proxy_server`?"
        ])
    );

    let out = cloudproxy(&["params", "--json", r#"{"rtc.enable_proxy":tru}"#], None);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["ok"], false);
    assert_eq!(json["error_kind"], "Syntax");
    assert_eq!(
        json["error_position"],
        serde_json::json!({"line": 1, "column": 21, "offset": 20})
    );
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .starts_with("expected a value"),
        "{json}"
    );
}
