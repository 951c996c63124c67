//! `cloudproxy serve --config FILE` with a `[tls]` section: the start log
//! line carries the certificate's fingerprint, SIGHUP re-reads the PEM
//! files (a renewed certificate is announced with its fingerprint), and a
//! bad PEM file keeps the certificate the node has.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

const APP_SECRET: &str = "00112233445566778899aabbccddeeff";
const TICKET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// `cloudproxy cert` for 127.0.0.1 into `cert` and `key`; the fingerprint.
fn make_cert(cert: &Path, key: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(["cert", "--name", "127.0.0.1", "--force", "--cert-out"])
        .arg(cert)
        .arg("--key-out")
        .arg(key)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("sha256 fingerprint: "))
        .expect("cert prints the fingerprint")
        .to_owned()
}

/// A `cloudproxy serve` whose stderr lines arrive on a channel; stopped
/// (SIGTERM, by PID) when dropped.
struct Node {
    child: Child,
    log: Receiver<String>,
}

impl Node {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
            .args(["serve", "--log", "info", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, log }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The first log line from now on that contains `what`.
    fn wait_for(&self, what: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.log.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!(
                    "no log line with {what:?} ({e}); logged:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_renews_the_tls_certificate_and_a_bad_pem_keeps_the_old_one() {
    let dir = std::env::temp_dir().join(format!("cloudproxy-tls-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let first = make_cert(&cert, &key);
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            r#"[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "first-app"
secrets = ["{APP_SECRET}"]

[[ticket_keys]]
key_id = 1
secret = "{TICKET_KEY}"

[tls]
listen = "127.0.0.1:0"
cert = {cert:?}
key = {key:?}
"#,
            cert = cert.display().to_string(),
            key = key.display().to_string()
        ),
    )
    .unwrap();
    let node = Node::start(&config);
    let started = node.wait_for("TLS port: sha256 fingerprint:");
    assert!(started.contains(&first), "{started}");
    node.wait_for("proxy node started");

    let second = make_cert(&cert, &key);
    assert_ne!(first, second);
    node.hangup();
    let line = node.wait_for("configuration reloaded");
    assert!(
        line.contains(&format!(
            "TLS certificate replaced, sha256 fingerprint: {second}"
        )),
        "{line}"
    );

    std::fs::write(&key, "not a key\n").unwrap();
    node.hangup();
    let line = node.wait_for("configuration not reloaded");
    assert!(line.contains("key.pem"), "{line}");
    assert!(line.contains("PRIVATE KEY"), "{line}");

    let _ = std::fs::remove_dir_all(&dir);
}
