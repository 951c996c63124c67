//! Errors print each cause once: a `Display` that already says the cause
//! does not also return it from `source()` (the rule in `docs/decisions.md`,
//! "Error causes are printed once"), so a program or a logger walking the
//! chain prints every cause exactly once.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use cloudproxy_edge::{Edge, EdgeConfig};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::{ConfigDraft, ServerConfig};

/// The error's message and each of its causes', outermost first.
fn chain(err: &dyn Error) -> Vec<String> {
    let mut texts = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        texts.push(cause.to_string());
        next = cause.source();
    }
    texts
}

/// Asserts that no message of the chain is repeated by one before it.
fn assert_each_cause_once(err: &dyn Error) {
    let texts = chain(err);
    for (i, outer) in texts.iter().enumerate() {
        for inner in &texts[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "the cause {inner:?} is printed twice: in {outer:?} and again by source(); the chain: {texts:?}"
            );
        }
    }
}

fn missing_file() -> &'static Path {
    Path::new("/nonexistent/cloudproxy-error-chains.toml")
}

#[test]
fn config_error_read_prints_its_cause_once() {
    let Err(err) = ConfigDraft::read(missing_file()) else {
        panic!("a missing file is an error");
    };
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert_each_cause_once(&err);
}

#[test]
fn edge_error_read_prints_its_cause_once() {
    let err = EdgeConfig::from_file(missing_file()).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert_each_cause_once(&err);
}

#[test]
fn edge_error_parse_prints_its_cause_once() {
    let err = EdgeConfig::from_toml_str("tcp_prot = 7000\n").unwrap_err();
    assert!(err.to_string().contains("tcp_prot"), "{err}");
    assert_each_cause_once(&err);
}

#[tokio::test]
async fn edge_error_bind_prints_its_cause_once() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let bound = Edge::bind(EdgeConfig {
        tcp_port: held.local_addr().unwrap().port(),
        ..EdgeConfig::loopback()
    })
    .await;
    let Err(err) = bound else {
        panic!("a port in use is an error");
    };
    assert!(err.to_string().contains("cannot listen on TCP"), "{err}");
    assert_each_cause_once(&err);
}

#[tokio::test]
async fn serve_error_bind_prints_its_cause_once() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let config = ServerConfig::from_toml_str(
        "<test>",
        &format!(
            r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [{port}]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "app"
secrets = ["00112233445566778899aabbccddeeff"]

[[ticket_keys]]
key_id = 1
secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#
        ),
    )
    .unwrap();
    let Err(err) = ProxyNode::start(&config).await else {
        panic!("a port in use is an error");
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        err.to_string()
            .contains(&format!("cannot listen on TCP {addr}")),
        "{err}"
    );
    assert_each_cause_once(&err);
}
