//! Configuration files: defaults, every section, and errors that name the
//! file, line and key.

use cloudproxy_server::config::{ConfigError, ServerConfig};

const SECRET: &str = "00112233445566778899aabbccddeeff";

fn full() -> String {
    format!(
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [9700]
tcp_relay_port = 4001
udp_relay_ports = "4600-4609"

[[apps]]
id = "app-a"
max_sessions = 3
secrets = ["{SECRET}"]

[[ticket_keys]]
key_id = 9
secret = "{SECRET}{SECRET}"

[allowlist]
allow = ["198.51.100.0/24:5000-5100", "[2001:db8::/32]"]

[limits]
handshake_timeout_ms = 1500
idle_timeout_ms = 20000
"#
    )
}

#[test]
fn empty_file_gives_the_guide_ports() {
    let config = ServerConfig::from_toml_str("empty.toml", "").unwrap();
    assert_eq!(config.listeners.allocation_ports, [1080, 8000, 25000, 9700]);
    assert_eq!(config.listeners.tcp_relay_port, 4000);
    assert_eq!(config.listeners.udp_relay_ports.0, 4500..=4650);
    assert_eq!(config.listeners.udp_relay_ports.len(), 151);
    assert!(config.apps.is_empty());
    assert!(config.allowlist.allow.rules().is_empty(), "default deny");
}

#[test]
fn every_section_is_read() {
    let config = ServerConfig::from_toml_str("full.toml", &full()).unwrap();
    assert_eq!(config.listeners.bind.to_string(), "127.0.0.1");
    assert_eq!(config.listeners.allocation_ports, [9700]);
    assert_eq!(config.listeners.tcp_relay_port, 4001);
    assert_eq!(config.listeners.udp_relay_ports.0, 4600..=4609);
    assert_eq!(config.apps.len(), 1);
    assert_eq!(config.apps[0].id.get_ref(), "app-a");
    assert_eq!(config.apps[0].max_sessions, 3);
    assert_eq!(config.apps[0].secrets[0].0.len(), 16);
    assert_eq!(config.ticket_keys[0].key_id, 9);
    assert_eq!(config.ticket_keys[0].secret.0.len(), 32);
    assert_eq!(config.allowlist.allow.rules().len(), 2);
    assert_eq!(config.limits.handshake_timeout().as_millis(), 1500);
    assert_eq!(config.limits.idle_timeout().as_secs(), 20);
    assert_eq!(config.limits.allocation_lifetime_secs, 600, "default kept");
}

#[test]
fn secrets_are_never_printed() {
    let config = ServerConfig::from_toml_str("full.toml", &full()).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("redacted"));
}

/// Issue 23: a typo anywhere in the full file — on a secret's own line or
/// next to it — never shows a secret in the error (the excerpt keeps the
/// key name and the caret).
#[test]
fn parse_errors_never_print_secrets() {
    let full = full();
    let typos = [
        // The ticket key's closing quote lost.
        full.replace(&format!("{SECRET}{SECRET}\""), &format!("{SECRET}{SECRET}")),
        // A second app secret without its comma.
        full.replace(
            &format!("[\"{SECRET}\"]"),
            &format!("[\"{SECRET}\" \"{SECRET}\"]"),
        ),
        // The line after the ticket key.
        full.replace("[allowlist]", "[allowlist"),
        // A misspelt key holding the secret.
        full.replace("secret = ", "secert = "),
    ];
    for text in &typos {
        let err = ServerConfig::from_toml_str("full.toml", text).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        let shown = err.to_string();
        assert!(!shown.contains(&SECRET[..16]), "{shown}");
        assert!(!shown.contains(&SECRET[16..]), "{shown}");
        assert!(shown.contains('^'), "{shown}");
    }
}

/// (what the file says, expected line, expected key or text in the message)
fn assert_error(text: &str, line: usize, needle: &str) {
    let err = ServerConfig::from_toml_str("bad.toml", text).unwrap_err();
    let shown = err.to_string();
    match &err {
        ConfigError::Parse { path, line: l, .. } | ConfigError::Invalid { path, line: l, .. } => {
            assert_eq!(path.to_str(), Some("bad.toml"));
            assert_eq!(*l, line, "line of {shown}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(shown.starts_with(&format!("bad.toml:{line}:")), "{shown}");
    assert!(shown.contains(needle), "{needle:?} not in {shown}");
}

#[test]
fn errors_name_file_line_and_key() {
    assert_error("[listeners]\nbnd = \"1.2.3.4\"\n", 2, "unknown field `bnd`");
    assert_error("[listeners]\ntcp_relay_port = 70000\n", 2, "tcp_relay_port");
    assert_error("[listeners]\nbind = \"localhost\"\n", 2, "bind");
    assert_error(
        "[listeners]\nudp_relay_ports = \"4650-4500\"\n",
        2,
        "expected a port range",
    );
    assert_error(
        "[allowlist]\nallow = [\"10.0.0.1/8\"]\n",
        2,
        "did you mean 10.0.0.0/8",
    );
    assert_error(
        "[limits]\n\nidle_timeout_ms = 0\n",
        3,
        "`limits.idle_timeout_ms`: expected a value above 0",
    );
    assert_error(
        "[limits]\nrelay_buffer_len = 4294967295\n",
        2,
        "`limits.relay_buffer_len`: 4294967295 is above the maximum of 16777216 bytes",
    );
    assert_error("[limits]\nrelay_splice = 1\n", 2, "relay_splice");
    assert_error(
        "[listeners]\nallocation_ports = [1080, 1080]\n",
        2,
        "port 1080 is listed twice",
    );
    assert_error(
        "[listeners]\nallocation_ports = [4000]\n",
        1,
        "port 4000 is also an allocation port",
    );
    assert_error(
        "[[apps]]\nid = \"a\"\nsecrets = [\"abcd\"]\n",
        3,
        "at least 16 bytes",
    );
    assert_error(
        "[[apps]]\nid = \"a\"\nsecrets = [\"zz112233445566778899aabbccddeeff\"]\n",
        3,
        "expected hex digits",
    );
    let twice = format!(
        "[listeners]\nbind = \"127.0.0.1\"\n[[ticket_keys]]\nkey_id = 1\nsecret = \"{SECRET}\"\n\
         [[apps]]\nid = \"a\"\nsecrets = [\"{SECRET}\"]\n\
         [[apps]]\nid = \"a\"\nsecrets = [\"{SECRET}\"]\n"
    );
    assert_error(&twice, 10, "app id \"a\" is configured twice");
    let no_advertise = format!(
        "[[ticket_keys]]\nkey_id = 1\nsecret = \"{SECRET}\"\n[[apps]]\nid = \"a\"\nsecrets = [\"{SECRET}\"]\n"
    );
    assert_error(&no_advertise, 1, "set listeners.advertise");
    assert_error(
        "[socks5]\nenabled = true\nno_auth_app = \"ghost\"\n",
        3,
        "app \"ghost\" is not configured in [[apps]]",
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let err =
        ServerConfig::from_file(std::path::Path::new("/nonexistent/cloudproxy.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/cloudproxy.toml: cannot read")
    );
}

#[test]
fn values_set_by_flags_get_the_same_checks_and_name_the_flag() {
    use cloudproxy_server::config::ConfigDraft;
    // Valid as a file; the flag makes the relay port collide.
    let mut draft =
        ConfigDraft::parse("ok.toml", "[listeners]\nallocation_ports = [9700]\n").unwrap();
    draft.set_by_flag("--tcp-relay-port", "listeners.tcp_relay_port", |c| {
        c.listeners.tcp_relay_port = 9700;
    });
    let err = draft.validate().unwrap_err();
    assert!(matches!(err, ConfigError::InvalidFlag { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "--tcp-relay-port: `listeners.tcp_relay_port`: port 9700 is also an allocation port"
    );

    // The same fault from the file reads the same after its location.
    let file = ServerConfig::from_toml_str(
        "bad.toml",
        "[listeners]\nallocation_ports = [9700]\ntcp_relay_port = 9700\n",
    )
    .unwrap_err();
    assert_eq!(
        file.to_string(),
        "bad.toml:3:1: `listeners.tcp_relay_port`: port 9700 is also an allocation port"
    );

    // A flag that unspecifies the bind of a file with apps: the advertise
    // check names the flag.
    let text = format!(
        "[listeners]\nbind = \"127.0.0.1\"\n[[ticket_keys]]\nkey_id = 1\nsecret = \"{SECRET}\"\n[[apps]]\nid = \"a\"\nsecrets = [\"{SECRET}\"]\n"
    );
    ServerConfig::from_toml_str("ok.toml", &text).unwrap();
    let mut draft = ConfigDraft::parse("ok.toml", &text).unwrap();
    draft.set_by_flag("--bind", "listeners.bind", |c| {
        c.listeners.bind = "0.0.0.0".parse().unwrap();
    });
    let err = draft.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("--bind: `listeners.advertise`: bind is 0.0.0.0"),
        "{err}"
    );
}

#[test]
fn the_socks5_port_may_not_be_another_listeners_port() {
    use cloudproxy_server::config::ConfigDraft;
    let err = ServerConfig::from_toml_str(
        "bad.toml",
        "[listeners]\nallocation_ports = [9700]\n[socks5]\nenabled = true\nport = 9700\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "bad.toml:5:1: `socks5.port`: port 9700 is also an allocation port"
    );
    let mut draft = ConfigDraft::parse("ok.toml", "").unwrap();
    draft.set_by_flag("--socks5-port", "socks5.port", |c| {
        c.socks5.enabled = true;
        c.socks5.port = 4000;
    });
    assert_eq!(
        draft.validate().unwrap_err().to_string(),
        "--socks5-port: `socks5.port`: port 4000 is also the TCP relay port"
    );
    // Disabled, its port is not in the way.
    ServerConfig::from_toml_str("ok.toml", "[socks5]\nport = 4000\n").unwrap();
}

#[test]
fn max_frame_len_must_hold_a_relay_datagram_and_stay_within_the_protocol() {
    for bad in [1000, 1399, 65537, 100_000] {
        assert_error(
            &format!("[limits]\nmax_frame_len = {bad}\n"),
            2,
            &format!("`limits.max_frame_len`: {bad} is outside 1400..=65536 bytes"),
        );
    }
    for good in [1400, 4096, 65536] {
        let config =
            ServerConfig::from_toml_str("ok.toml", &format!("[limits]\nmax_frame_len = {good}\n"))
                .unwrap();
        assert_eq!(config.limits.max_frame_len, good);
    }
}
