//! `cloudproxy cert`: a self-signed pair the TLS port loads, whose printed
//! fingerprint is the certificate's; existing files are kept unless --force.
//! Also `serve --tls-bind` in development mode printing its fingerprint.

mod common;

use std::path::PathBuf;

use cloudproxy_server::tls::{Identity, fingerprint};
use common::{LOCAL_SERVE, cloudproxy, spawn};

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloudproxy-cert-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fingerprint in a `sha256 fingerprint: …` line.
fn printed_fingerprint(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("sha256 fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint line in:\n{text}"))
        .to_owned()
}

/// The DER of the first certificate in a PEM file (base64 between the
/// markers).
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    decode_base64(&body)
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn cert_writes_usable_files_and_prints_their_fingerprint() {
    let dir = scratch("usable");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let run = |force: bool| {
        let mut command = cloudproxy();
        command.args(["cert", "--name", "proxy.example.com", "--name", "127.0.0.1"]);
        command
            .arg("--cert-out")
            .arg(&cert)
            .arg("--key-out")
            .arg(&key);
        if force {
            command.arg("--force");
        }
        command.output().unwrap()
    };
    let output = run(false);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let printed = printed_fingerprint(&stdout);
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(printed, fingerprint(&pem_der(&pem)));
    assert!(printed.len() == 95 && printed.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
    let identity = Identity::from_pem_files(&cert, &key).unwrap();
    assert_eq!(identity.fingerprint(), printed);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    }

    // A second run keeps the files; --force replaces them.
    let again = run(false);
    assert_eq!(again.status.code(), Some(2));
    let stderr = String::from_utf8(again.stderr).unwrap();
    assert!(
        stderr.contains("cert.pem") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
    let forced = run(true);
    assert_eq!(forced.status.code(), Some(0));
    let replaced = printed_fingerprint(&String::from_utf8(forced.stdout).unwrap());
    assert_ne!(replaced, printed);
    assert_eq!(
        Identity::from_pem_files(&cert, &key).unwrap().fingerprint(),
        replaced
    );
}

#[test]
fn development_serve_with_tls_bind_prints_the_self_signed_fingerprint() {
    let mut args = LOCAL_SERVE.to_vec();
    args.extend(["--tls-bind", "127.0.0.1:0"]);
    let (_child, mut out) = spawn(&args);
    let banner = out.until("press Ctrl-C to stop");
    assert!(banner.contains("TLS port"), "{banner}");
    let printed = printed_fingerprint(&banner);
    assert_eq!(printed.len(), 95, "{banner}");
}

#[test]
fn serve_check_reads_the_tls_files() {
    let dir = scratch("check");
    let missing = dir.join("missing.pem");
    let output = cloudproxy()
        .args(["serve", "--check", "--tls-bind", "127.0.0.1:8443"])
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("missing.pem"), "{stderr}");

    // A certificate without its key is a configuration error naming the flag.
    let output = cloudproxy()
        .args(["serve", "--check", "--config"])
        .arg(write_config(&dir))
        .args(["--tls-bind", "127.0.0.1:8443"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--tls-bind") && stderr.contains("tls.cert"),
        "{stderr}"
    );
}

/// A minimal node configuration file in `dir`.
fn write_config(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, "[listeners]\nbind = \"127.0.0.1\"\n").unwrap();
    path
}

#[test]
fn development_mode_keeps_the_tls_port_on_loopback() {
    let output = cloudproxy()
        .args(["serve", "--check", "--tls-bind", "0.0.0.0:8443"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--tls-bind 0.0.0.0:8443") && stderr.contains("loopback"),
        "{stderr}"
    );
}
