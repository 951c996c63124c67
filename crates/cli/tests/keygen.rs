//! `cloudproxy keygen`: fresh keys that the configuration loader accepts.

use std::process::Command;

use cloudproxy_server::config::ServerConfig;

fn keygen(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .arg("keygen")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "keygen {args:?}");
    assert!(output.stderr.is_empty());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn snippets_paste_into_a_configuration_that_loads() {
    let (secret_a, secret_b) = (keygen(&["secret"]), keygen(&["secret"]));
    let (key_a, key_b) = (
        keygen(&["ticket-key", "--key-id", "7"]),
        keygen(&["ticket-key", "--key-id", "8"]),
    );
    assert_ne!(secret_a, secret_b, "two runs give two secrets");
    assert_ne!(
        key_a.lines().last(),
        key_b.lines().last(),
        "two runs give two keys"
    );
    let text = format!(
        "[listeners]\nbind = \"127.0.0.1\"\n\n[[apps]]\nid = \"my-app\"\n{secret_a}\n{key_a}\n{key_b}"
    );
    let config = ServerConfig::from_toml_str("keygen.toml", &text)
        .unwrap_or_else(|e| panic!("{e}\nin:\n{text}"));
    assert_eq!(config.apps[0].secrets.len(), 1);
    assert_eq!(config.apps[0].secrets[0].0.len(), 16);
    assert_eq!(config.ticket_keys.len(), 2);
    assert_eq!(config.ticket_keys[0].key_id, 7);
    assert_eq!(config.ticket_keys[0].secret.0.len(), 32);
    assert_eq!(config.ticket_keys[1].key_id, 8);
    assert_ne!(config.ticket_keys[0].secret, config.ticket_keys[1].secret);

    // And through the binary's own loader: `serve --check` accepts it.
    let path = std::env::temp_dir().join(format!("cloudproxy-keygen-{}.toml", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(["serve", "--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn raw_output_is_the_bare_hex_at_the_configurations_lengths() {
    for (args, digits) in [
        (&["secret", "--raw"][..], 32),
        (&["ticket-key", "--raw"][..], 64),
    ] {
        let (a, b) = (keygen(args), keygen(args));
        for out in [&a, &b] {
            let hex = out.strip_suffix('\n').unwrap();
            assert_eq!(hex.len(), digits, "keygen {args:?}: {out:?}");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        assert_ne!(a, b, "two runs of keygen {args:?} differ");
    }
}
