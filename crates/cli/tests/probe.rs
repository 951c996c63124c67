//! `cloudproxy probe` against a running `cloudproxy serve`.

mod common;

use std::process::{Command, Output};

use common::{dev_proxy, local_edge};

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_port_open_means_a_call_works_over_udp() {
    let serve_node = dev_proxy(&[]);
    let server = serve_node.server.clone();
    let secret = serve_node.secret.clone();

    let output = probe(&[
        "--server",
        &server,
        "--app-id",
        "dev-app",
        "--credential",
        &secret,
    ]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{table}");
    // Allocation over TCP and UDP, the TCP relay, two UDP relays.
    assert_eq!(table.matches(" open ").count(), 5, "{table}");
    assert!(
        table.contains("verdict: a call will work: messages over the TCP relay, media over UDP"),
        "{table}"
    );
    assert!(table.contains("firewall: nothing missing"), "{table}");

    let output = probe(&[
        "--server",
        &server,
        "--app-id",
        "dev-app",
        "--credential",
        &secret,
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["verdict"], "works_over_udp");
    assert_eq!(json["checks"].as_array().unwrap().len(), 5);
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "open" && c["latency_us"].is_u64())
    );

    // The right port with the wrong secret: the proxy answers and refuses,
    // which no firewall rule fixes.
    let output = probe(&[
        "--server",
        &server,
        "--app-id",
        "dev-app",
        "--credential",
        "00112233445566778899aabbccddeeff",
    ]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(
        table.contains("the proxy answered and refused: BAD_CREDENTIAL (200)"),
        "{table}"
    );
    // No rule is missing for the ports that answered, but the relays were
    // never checked: "nothing missing" would be a claim about them too.
    assert!(
        table.contains("firewall: the allocation ports answered; the relay ports were not checked because the proxy refused the credential"),
        "{table}"
    );
    assert!(!table.contains("firewall: nothing missing"), "{table}");
}

#[test]
fn nothing_listening_means_no_call_and_names_the_missing_rules() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let output = probe(&[
        "--server",
        &closed.to_string(),
        "--app-id",
        "dev-app",
        "--credential",
        "00112233445566778899aabbccddeeff",
        "--timeout-ms",
        "2000",
    ]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(table.contains("verdict: a call will not work"), "{table}");
    assert!(
        table.contains(&format!(
            "allow TCP to 127.0.0.1 port {} (allocation)",
            closed.port()
        )),
        "{table}"
    );
}

#[test]
fn with_an_edge_the_probe_makes_a_call_through_the_relay() {
    let local = local_edge();
    let edge = local.addrs.clone();

    let serve_node = dev_proxy(&[]);
    let server = serve_node.server.clone();
    let secret = serve_node.secret.clone();
    let output = probe(&[
        "--server",
        &server,
        "--app-id",
        "dev-app",
        "--credential",
        &secret,
        "--edge",
        &edge,
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{json:#}");
    assert_eq!(json["verdict"], "works_over_udp");
    let roles: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert!(
        roles.contains(&"echo: messages") && roles.contains(&"echo: media"),
        "{roles:?}"
    );
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "open"),
        "{json:#}"
    );

    // A proxy that may not reach this edge: every port answers, but no call.
    let strict_node = dev_proxy(&["--allow", "127.0.0.2"]);
    let server = strict_node.server.clone();
    let secret = strict_node.secret.clone();
    let output = probe(&[
        "--server",
        &server,
        "--app-id",
        "dev-app",
        "--credential",
        &secret,
        "--edge",
        &edge,
    ]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(
        table.contains("the ports answer, but a call through the proxy failed"),
        "{table}"
    );
    assert!(table.contains("verdict: a call will not work"), "{table}");
}

#[test]
fn a_refused_credential_is_reported_as_that_not_as_blocked_ports() {
    let serve_node = dev_proxy(&[]);
    let server = serve_node.server.clone();
    let bad = [
        "--server",
        &server,
        "--app-id",
        "dev-app",
        "--credential",
        "00112233445566778899aabbccddeeff",
    ];
    let output = probe(&bad);
    let table = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{table}");
    // The allocation ports answered: reachable, refused, not blocked.
    assert!(!table.contains(" blocked "), "{table}");
    let refused_rows = table
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("refused"))
        .count();
    assert_eq!(refused_rows, 2, "{table}");
    assert!(
        table.contains("verdict: a call will not work: the proxy refused the credential (the ports are reachable; check the app id and secret)"),
        "{table}"
    );
    assert!(
        !table.contains("firewall: nothing missing (every port checked answered)"),
        "the relay ports were never checked:\n{table}"
    );
    assert!(
        table.contains("the relay ports were not checked because the proxy refused the credential"),
        "{table}"
    );

    let mut json_args = bad.to_vec();
    json_args.push("--json");
    let output = probe(&json_args);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["verdict"], "credential_refused", "{json:#}");
    for check in json["checks"].as_array().unwrap() {
        assert_eq!(check["state"], "refused", "{json:#}");
        assert_eq!(check["code"], 200, "{json:#}");
    }
    assert!(json["missing_rules"].as_array().unwrap().is_empty());
    assert_eq!(
        json["relays_not_checked"],
        "the relay ports were not checked because the proxy refused the credential",
        "{json:#}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("nothing missing"),
        "{json:#}"
    );
}

#[test]
fn probe_reports_a_bad_credential_with_the_typed_credential_error() {
    let base = ["--server", "127.0.0.1:9", "--app-id", "a", "--credential"];
    let mut odd = base.to_vec();
    odd.push("abc");
    let output = probe(&odd);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--credential"), "{stderr}");
    assert!(
        stderr.contains(
            "expected an even number of hex digits (two per byte of the app secret), found 3"
        ),
        "{stderr}"
    );
    let mut not_hex = base.to_vec();
    not_hex.push("00zz");
    let output = probe(&not_hex);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("expected hex digits (0-9, a-f) for the app secret, found 'z' at offset 2"),
        "{stderr}"
    );
}

#[test]
fn the_tls_port_is_checked_with_alpn_and_an_untrusted_certificate_is_named() {
    let mut args = common::LOCAL_SERVE.to_vec();
    args.extend_from_slice(&["--log", "warn", "--tls-bind", "127.0.0.1:0"]);
    let (_process, mut out) = common::spawn(&args);
    let banner = common::read_until(&mut out, "press Ctrl-C");
    let server = common::field(&banner, "allocation service  TCP").to_owned();
    let secret = common::field(&banner, "app secret").to_owned();
    let tls = common::field(&banner, "TLS port            TCP")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let port = tls.rsplit_once(':').unwrap().1.to_owned();
    let fingerprint = common::field(&banner, "sha256 fingerprint:").to_owned();
    let base = [
        "--server",
        server.as_str(),
        "--app-id",
        "dev-app",
        "--credential",
        secret.as_str(),
        "--tls-port",
        port.as_str(),
        "--json",
    ];

    let mut pinned = base.to_vec();
    pinned.extend_from_slice(&["--tls-pin", fingerprint.as_str()]);
    let output = probe(&pinned);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tls_check = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "tls port")
        .unwrap_or_else(|| panic!("no TLS check: {json:#}"));
    assert_eq!(tls_check["protocol"], "TLS");
    assert_eq!(tls_check["state"], "open", "{json:#}");
    assert_eq!(json["verdict"], "works_over_udp");

    // The system roots do not know the development certificate: as behind
    // a TLS-intercepting proxy, the port answers with an untrusted one.
    let output = probe(&base);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tls_check = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "tls port")
        .unwrap();
    assert_eq!(tls_check["state"], "untrusted", "{json:#}");
    let missing: Vec<&str> = json["missing_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        missing
            .iter()
            .any(|r| r.starts_with("exempt 127.0.0.1 port") && r.contains("TLS inspection")),
        "{missing:?}"
    );
}
