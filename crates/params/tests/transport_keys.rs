//! The transport keys for locked-down networks: `rtc.proxy_tls_pin`,
//! `rtc.proxy_tls_port` and `rtc.http_proxy`, each accepted and rejected
//! with a typed, located error; the guide's keys are unaffected.

use cloudproxy_params::{ErrorKind, HttpProxy, TlsPin, parse};

const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

#[test]
fn a_fingerprint_pin_in_either_form() {
    let (a, b) = (
        format!(r#"{{"rtc.proxy_tls_pin":"{FP}"}}"#),
        format!(
            r#"{{"rtc.proxy_tls_pin":"{}"}}"#,
            FP.replace(':', "").to_lowercase()
        ),
    );
    let with_colons = parse(&a).unwrap();
    let bare = parse(&b).unwrap();
    assert_eq!(with_colons.tls_pin(), bare.tls_pin());
    let Some(TlsPin::Fingerprint(bytes)) = with_colons.tls_pin() else {
        panic!("{:?}", with_colons.tls_pin());
    };
    assert_eq!(cloudproxy_params::fingerprint_text(bytes), FP);
}

#[test]
fn a_ca_file_pin() {
    let p = parse(r#"{"rtc.proxy_tls_pin":"/etc/cloudproxy/ca.pem"}"#).unwrap();
    assert_eq!(
        p.tls_pin(),
        Some(&TlsPin::CaFile("/etc/cloudproxy/ca.pem".into()))
    );
}

#[test]
fn an_http_proxy_with_basic_credentials() {
    let p = parse(r#"{"rtc.http_proxy":"http://alice:pa%3Ass@10.0.0.5:3128/"}"#).unwrap();
    let proxy = p.http_proxy().unwrap();
    assert_eq!(proxy.host, "10.0.0.5");
    assert_eq!(proxy.port, 3128);
    let credentials = proxy.credentials.as_ref().unwrap();
    assert_eq!(credentials.user, "alice");
    assert_eq!(credentials.password, "pa:ss");
    assert!(!format!("{proxy:?}").contains("pa:ss"));
    assert_eq!(proxy.to_string(), "http://alice:***@10.0.0.5:3128");
    let v6 = HttpProxy::parse("http://[::1]:8080").unwrap();
    assert_eq!(v6.authority(), "[::1]:8080");
}

#[test]
fn an_http_proxy_with_a_windows_domain_user() {
    // `DOMAIN\user` for NTLM and Negotiate: the backslash as it is (escaped
    // for JSON) or percent-encoded as %5C.
    for json in [
        r#"{"rtc.http_proxy":"http://CORP\\alice:pa%40ss@proxy.corp:3128"}"#,
        r#"{"rtc.http_proxy":"http://CORP%5Calice:pa%40ss@proxy.corp:3128"}"#,
    ] {
        let p = parse(json).unwrap();
        let proxy = p.http_proxy().unwrap();
        let credentials = proxy.credentials.as_ref().unwrap();
        assert_eq!(credentials.user, "CORP\\alice", "{json}");
        assert_eq!(credentials.password, "pa@ss", "{json}");
        assert_eq!(proxy.to_string(), "http://CORP\\alice:***@proxy.corp:3128");
        assert!(!format!("{proxy:?} {proxy}").contains("pa@ss"));
    }
}

#[test]
fn a_tls_port() {
    let p = parse(r#"{"rtc.proxy_tls_port":8443}"#).unwrap();
    assert_eq!(p.tls_port(), Some(8443));
    assert_eq!(parse(r#"{"a":1}"#).unwrap().tls_port(), None);
}

#[test]
fn the_transport_keys_stay_readable_as_other_keys() {
    let p = parse(r#"{"rtc.enable_proxy":true,"rtc.proxy_tls_port":443}"#).unwrap();
    let others: Vec<&str> = p.others().map(|(k, _)| k).collect();
    assert_eq!(others, ["rtc.proxy_tls_port"]);
    assert_eq!(p.enable_proxy(), Some(true));
}

#[test]
fn bad_values_are_typed_located_errors() {
    let table: &[(&str, ErrorKind, usize)] = &[
        (r#"{"rtc.proxy_tls_pin":42}"#, ErrorKind::WrongType, 21),
        (r#"{"rtc.proxy_tls_pin":""}"#, ErrorKind::InvalidTlsPin, 21),
        (
            r#"{"rtc.proxy_tls_pin":"AB:CD"}"#,
            ErrorKind::InvalidTlsPin,
            21,
        ),
        (
            r#"{"rtc.proxy_tls_pin":"0123456789abcdef0123456789abcdef01"}"#,
            ErrorKind::InvalidTlsPin,
            21,
        ),
        (
            r#"{"rtc.proxy_tls_port":0}"#,
            ErrorKind::TlsPortOutOfRange,
            22,
        ),
        (
            r#"{"rtc.proxy_tls_port":70000}"#,
            ErrorKind::TlsPortOutOfRange,
            22,
        ),
        (r#"{"rtc.proxy_tls_port":"443"}"#, ErrorKind::WrongType, 22),
        (r#"{"rtc.http_proxy":true}"#, ErrorKind::WrongType, 18),
        (
            r#"{"rtc.http_proxy":"https://p:3128"}"#,
            ErrorKind::InvalidHttpProxy,
            18,
        ),
        (
            r#"{"rtc.http_proxy":"http://p"}"#,
            ErrorKind::InvalidHttpProxy,
            18,
        ),
        (
            r#"{"rtc.http_proxy":"http://p:0"}"#,
            ErrorKind::InvalidHttpProxy,
            18,
        ),
        (
            r#"{"rtc.http_proxy":"http://p:3128/x"}"#,
            ErrorKind::InvalidHttpProxy,
            18,
        ),
        (
            r#"{"rtc.http_proxy":"http://:pw@p:3128"}"#,
            ErrorKind::InvalidHttpProxy,
            18,
        ),
        (
            r#"{"rtc.http_proxy":"http://bad_host:3128"}"#,
            ErrorKind::InvalidHttpProxy,
            18,
        ),
    ];
    for (input, kind, offset) in table {
        let err = parse(input).unwrap_err();
        assert_eq!(err.kind(), *kind, "{input}: {err}");
        assert_eq!(err.offset(), Some(*offset), "{input}: {err}");
    }
}

#[test]
fn error_messages_say_what_was_expected_and_hide_passwords() {
    let err = parse(r#"{"rtc.http_proxy":"socks5://u:secret@p:1080"}"#).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("scheme must be http"), "{text}");
    // The message proper redacts the password (the excerpt under it quotes
    // the input line as every error does).
    let first = text.lines().next().unwrap();
    assert!(
        !first.contains("secret") && first.contains("u:***@"),
        "{text}"
    );
    let err = parse(r#"{"rtc.proxy_tls_pin":"AB:CD"}"#).unwrap_err();
    assert!(err.to_string().contains("64 hex digits"), "{err}");
    let err = parse(r#"{"rtc.proxy_tls_port":0}"#).unwrap_err();
    assert!(err.to_string().contains("1 to 65535"), "{err}");
}

#[test]
fn misspelled_transport_keys_get_a_suggestion() {
    assert_eq!(
        cloudproxy_params::suggest_key("rtc.http_proxi"),
        Some("rtc.http_proxy")
    );
}
