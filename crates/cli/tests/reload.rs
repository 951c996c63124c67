//! `cloudproxy serve --config FILE` reloads the file on SIGHUP, as
//! `systemctl reload` sends it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

const APP_SECRET: &str = "00112233445566778899aabbccddeeff";
const NEW_APP_SECRET: &str = "ffeeddccbbaa99887766554433221100";
const TICKET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn config_text(new_app: bool) -> String {
    let mut text = format!(
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
"#
    );
    if new_app {
        text.push_str(&format!(
            "\n[[apps]]\nid = \"new-app\"\nsecrets = [\"{NEW_APP_SECRET}\"]\n"
        ));
    }
    text
}

/// A `cloudproxy serve` whose stderr lines arrive on a channel; stopped
/// (SIGTERM, by PID) when dropped.
struct Node {
    child: Child,
    log: Receiver<String>,
    server: String,
}

impl Node {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
            .args(["serve", "--log", "info", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
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
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut server = None;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(addr) = line.trim().strip_prefix("allocation service  TCP ") {
                server = Some(addr.trim().to_owned());
            }
            if line.starts_with("press Ctrl-C") {
                break;
            }
        }
        Self {
            child,
            log,
            server: server.expect("the banner names the allocation service"),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The first log line from now on that contains `what`; fails after ten
    /// seconds, showing what was logged.
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

    /// `cloudproxy probe --json`'s verdict for an app.
    fn probe(&self, app: &str, secret: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
            .args(["probe", "--server", &self.server, "--app-id", app])
            .args(["--credential", secret, "--json"])
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("probe printed no JSON ({e}): {output:?}"));
        json["verdict"].as_str().unwrap().to_owned()
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
fn sighup_reloads_the_config_file_and_a_bad_edit_keeps_the_node_serving() {
    let path = std::env::temp_dir().join(format!("cloudproxy-reload-{}.toml", std::process::id()));
    std::fs::write(&path, config_text(false)).unwrap();
    let node = Node::start(&path);
    node.wait_for("proxy node started");
    assert_eq!(node.probe("new-app", NEW_APP_SECRET), "credential_refused");

    // Add an app, SIGHUP: the summary line, then the app is accepted.
    std::fs::write(&path, config_text(true)).unwrap();
    node.signal("-HUP");
    let line = node.wait_for("configuration reloaded");
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("apps +new-app"), "{line}");
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert_eq!(node.probe("new-app", NEW_APP_SECRET), "works_over_udp");

    // A bad edit: logged with file, line and key; the node keeps serving
    // with the configuration it had.
    let bad = config_text(true).replace("id = \"new-app\"", "id = \"new-app\"\nmax_sessions = 0");
    std::fs::write(&path, &bad).unwrap();
    node.signal("-HUP");
    let line = node.wait_for("configuration not reloaded");
    let bad_line = bad.lines().position(|l| l == "id = \"new-app\"").unwrap() + 1;
    assert!(line.contains(" ERROR "), "{line}");
    assert!(
        line.contains(&format!("{}:{bad_line}:", path.display())),
        "{line}"
    );
    assert!(line.contains("`apps.max_sessions`"), "{line}");
    assert_eq!(node.probe("new-app", NEW_APP_SECRET), "works_over_udp");
    assert_eq!(node.probe("first-app", APP_SECRET), "works_over_udp");

    // A listener change is refused by name, the rest of the file with it.
    let moved = config_text(false).replace("tcp_relay_port = 0", "tcp_relay_port = 4000");
    std::fs::write(&path, moved).unwrap();
    node.signal("-HUP");
    let line = node.wait_for("configuration not reloaded");
    assert!(
        line.contains("`listeners.tcp_relay_port` (running 0, new 4000)"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "at=\"{}:4 (listeners.tcp_relay_port)\"",
            path.display()
        )),
        "{line}"
    );
    assert_eq!(node.probe("new-app", NEW_APP_SECRET), "works_over_udp");

    std::fs::remove_file(&path).unwrap();
}

/// Issue 23: a typo next to a secret at SIGHUP is reported with its line
/// and caret, the secret not: neither the running ticket key nor an app
/// secret reaches the log.
#[test]
fn a_reload_error_near_a_secret_does_not_log_the_secret() {
    let path = std::env::temp_dir().join(format!(
        "cloudproxy-reload-secret-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, config_text(false)).unwrap();
    let node = Node::start(&path);
    node.wait_for("proxy node started");

    // The ticket key's closing quote lost.
    let typo = config_text(false).replace(&format!("\"{TICKET_KEY}\""), &format!("\"{TICKET_KEY}"));
    std::fs::write(&path, &typo).unwrap();
    node.signal("-HUP");
    let line = node.wait_for("configuration not reloaded");
    let at = typo
        .lines()
        .position(|l| l.starts_with("secret ="))
        .unwrap()
        + 1;
    assert!(
        line.contains(&format!("{}:{at}:", path.display())),
        "{line}"
    );
    assert!(line.contains("secret = <redacted>"), "{line}");
    assert!(line.contains('^'), "{line}");
    assert!(!line.contains(TICKET_KEY), "{line}");
    assert!(!line.contains(&TICKET_KEY[..16]), "{line}");

    // An app's second secret without the comma before it.
    let typo = config_text(false).replace(
        &format!("secrets = [\"{APP_SECRET}\"]"),
        &format!("secrets = [\"{APP_SECRET}\" \"{NEW_APP_SECRET}\"]"),
    );
    std::fs::write(&path, &typo).unwrap();
    node.signal("-HUP");
    let line = node.wait_for("configuration not reloaded");
    assert!(line.contains("secrets = <redacted>"), "{line}");
    for secret in [APP_SECRET, NEW_APP_SECRET] {
        assert!(!line.contains(secret), "{line}");
        assert!(!line.contains(&secret[..16]), "{line}");
    }
    // The node kept its configuration.
    assert_eq!(node.probe("first-app", APP_SECRET), "works_over_udp");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sighup_in_development_mode_says_there_is_nothing_to_reload() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(["serve", "--allocation-port", "0", "--tcp-relay-port", "0"])
        .args(["--udp-relay-ports", "0-1", "--log", "info"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().starts_with("press Ctrl-C") {
            break;
        }
    }
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id().to_string();
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut seen = Vec::new();
    loop {
        match log.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("nothing to reload") => break,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no \"nothing to reload\" line ({e}):\n{}", seen.join("\n")),
        }
    }
    // Still running: SIGHUP did not end it; SIGTERM drains and exits 0.
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
