//! Credentials as the operator hands them out (the hex string `serve`
//! prints), what a refusal says, and error wording: every line says what
//! happened once, with the right verb.

mod support;

use std::time::Duration;

use cloudproxy_engine::{Credential, CredentialError, DialPolicy, Engine, EngineError};
use support::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every message of `err`'s source chain, outermost first.
fn chain(err: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut next = err.source();
    // Bounded: a chain longer than this is a bug in itself.
    for _ in 0..16 {
        let Some(e) = next else { break };
        out.push(e.to_string());
        next = e.source();
    }
    assert!(next.is_none(), "a source chain of more than 16 errors");
    out
}

/// Asserts that walking the chain prints `part` exactly once.
fn printed_once(err: &dyn std::error::Error, part: &str) {
    let walked = chain(err).join(": ");
    assert_eq!(
        walked.matches(part).count(),
        1,
        "{part:?} should appear once in {walked:?}"
    );
}

fn proxied(credential: impl Into<Credential>, node: &cloudproxy_server::ProxyNode) -> Engine {
    let addr = alloc_addr(node);
    let engine = Engine::builder(APP, credential)
        .media_network(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
        )
        .default_proxy_domain("localhost")
        .build()
        .expect("engine builds");
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    engine
        .set_parameters(&proxy_server_param(&[&addr.ip().to_string()], addr.port()))
        .unwrap();
    engine
}

#[test]
fn credential_parses_the_hex_serve_prints() {
    let printed = hex(SECRET);
    let parsed = Credential::from_hex(&printed).unwrap();
    assert_eq!(parsed.as_bytes(), SECRET);
    // Either case, pasted with a newline, or via `parse`.
    let upper: Credential = format!(" {}\n", printed.to_uppercase()).parse().unwrap();
    assert_eq!(upper.as_bytes(), SECRET);
    // Raw bytes stay raw.
    assert_eq!(Credential::from_bytes(SECRET).as_bytes(), SECRET);
    assert_eq!(Credential::from(SECRET.to_vec()).as_bytes(), SECRET);
}

#[test]
fn credential_debug_never_shows_the_secret() {
    let credential = Credential::from_bytes(SECRET);
    let shown = format!(
        "{credential:?} {:?}",
        Engine::builder(APP, credential.clone())
    );
    assert!(shown.contains("<redacted, 23 bytes>"), "{shown}");
    assert!(!shown.contains("engine-test-secret"), "{shown}");
    assert!(!shown.contains(&hex(SECRET)), "{shown}");
    assert!(!shown.contains("101, 110, 103"), "no byte list: {shown}");
}

#[test]
fn bad_hex_says_what_was_found_and_where() {
    assert_eq!(
        Credential::from_hex("  ").unwrap_err(),
        CredentialError::Empty
    );
    let odd = Credential::from_hex("abc").unwrap_err();
    assert_eq!(odd, CredentialError::OddLength { digits: 3 });
    assert!(odd.to_string().contains("found 3"), "{odd}");
    let bad = Credential::from_hex("ab\"cd").unwrap_err();
    assert_eq!(
        bad,
        CredentialError::InvalidDigit {
            found: '"',
            offset: 2
        }
    );
    assert!(bad.to_string().contains("at offset 2"), "{bad}");
}

#[tokio::test]
async fn the_hex_string_serve_prints_joins_through_the_proxy() {
    let edge = edge().await;
    let node = proxy_node().await;
    let addr = alloc_addr(&node);
    let engine = Engine::builder(APP, Credential::from_hex(&hex(SECRET)).unwrap())
        .media_network(edge.tcp_addr(), edge.udp_addr())
        .default_proxy_domain("localhost")
        .build()
        .unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    engine
        .set_parameters(&proxy_server_param(&[&addr.ip().to_string()], addr.port()))
        .unwrap();
    engine
        .join_channel("hex-credential", 1)
        .await
        .expect("joins");
    engine.leave_channel().await.unwrap();
    node.shutdown().await;
    edge.shutdown().await;
}

#[tokio::test]
async fn refused_credential_error_says_refused_once() {
    let node = proxy_node().await;
    let engine = proxied(Credential::from_bytes(b"not-the-secret".to_vec()), &node);
    let err = engine.join_channel("refused", 1).await.unwrap_err();
    let EngineError::CredentialRefused {
        ref app_id, proxy, ..
    } = err
    else {
        panic!("expected CredentialRefused, got {err:?}");
    };
    assert_eq!((app_id.as_str(), proxy), (APP, alloc_addr(&node)));
    let text = err.to_string();
    assert!(
        text.contains(&format!("the proxy at {proxy} refused app id \"{APP}\"")),
        "{text}"
    );
    assert!(
        !text.contains("could not reach"),
        "the proxy was reached: {text}"
    );
    assert!(text.contains("check that the app id"), "{text}");
    // No Rust API name: SDK apps in Kotlin, Python or C read it too.
    assert!(!text.contains("Credential::from_hex"), "{text}");
    assert!(text.contains("`cloudproxy serve` prints"), "{text}");
    assert!(!text.contains("looks like the hex string"), "{text}");
    printed_once(&err, "BAD_CREDENTIAL");
    printed_once(&err, "refused");
    assert!(text.contains("(BAD_CREDENTIAL, 200)"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    node.shutdown().await;
}

#[tokio::test]
async fn the_printed_hex_passed_as_raw_bytes_gets_a_hint() {
    let node = proxy_node().await;
    let engine = proxied(hex(SECRET).into_bytes(), &node);
    let err = engine.join_channel("hex-as-bytes", 1).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, EngineError::CredentialRefused { .. }),
        "{err:?}"
    );
    assert!(
        text.contains(
            "46 bytes that are all hex digits: it looks like the hex string passed as raw bytes"
        ),
        "{text}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_proxy_says_could_not_reach_once() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let engine = Engine::builder(APP, SECRET)
        .media_network(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
        )
        .default_proxy_domain("localhost")
        .dial_policy(DialPolicy {
            stagger: Duration::from_millis(50),
            attempt_timeout: Duration::from_millis(500),
            overall_timeout: Duration::from_secs(2),
        })
        .build()
        .unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    engine
        .set_parameters(&proxy_server_param(&["127.0.0.1"], dead.port()))
        .unwrap();
    let err = engine.join_channel("unreachable", 1).await.unwrap_err();
    assert!(matches!(err, EngineError::Tunnel(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("allocating a proxy session: could not reach any of 1 address(es)"),
        "{text}"
    );
    printed_once(&err, "could not reach");
    printed_once(&err, &dead.to_string());
}

#[test]
fn errors_print_their_cause_once() {
    use cloudproxy_engine::ResolveError;
    let os = || {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )
    };

    let io = EngineError::Io {
        what: "joining the channel",
        cause: os(),
    };
    assert_eq!(
        io.to_string(),
        "joining the channel: connection reset by peer"
    );
    printed_once(&io, "connection reset by peer");

    let resolve = EngineError::from(ResolveError::Lookup {
        host: "proxy.example".into(),
        cause: std::io::Error::other("Name or service not known"),
    });
    assert_eq!(
        resolve.to_string(),
        "resolving proxy host \"proxy.example\": Name or service not known"
    );
    printed_once(&resolve, "Name or service not known");
    printed_once(&resolve, "resolving proxy host");

    let params = EngineError::from(cloudproxy_params::parse("{").unwrap_err());
    printed_once(&params, "set_parameters");
    let inner = match &params {
        EngineError::InvalidParameters(p) => p.to_string(),
        other => panic!("{other:?}"),
    };
    printed_once(&params, &inner);

    let auto = EngineError::AutoFailed {
        direct: Box::new(EngineError::Direct {
            addr: "127.0.0.1:9".parse().unwrap(),
            reason: cloudproxy_engine::DirectFailure::Connect(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            )),
        }),
        proxy: Box::new(io),
    };
    printed_once(&auto, "connection reset by peer");
    printed_once(&auto, "connection refused");
}

#[tokio::test]
async fn a_refused_destination_says_refused_once() {
    // The node's allowlist is 127.0.0.1 only: a media network on ::1 is
    // refused by the relay before anything is sent to it.
    let node = proxy_node().await;
    let addr = alloc_addr(&node);
    let engine = Engine::builder(APP, SECRET)
        .media_network("[::1]:9".parse().unwrap(), "[::1]:9".parse().unwrap())
        .default_proxy_domain("localhost")
        .build()
        .unwrap();
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#)
        .unwrap();
    engine
        .set_cloud_proxy(cloudproxy_engine::ProxyMode::ForceTcp)
        .unwrap();
    engine
        .set_parameters(&proxy_server_param(&[&addr.ip().to_string()], addr.port()))
        .unwrap();
    let err = engine
        .join_channel("refused-destination", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Tunnel(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("opening the UDP-over-TCP media path: the proxy at 127.0.0.1:"),
        "{text}"
    );
    assert!(
        !text.contains("could not reach"),
        "the relay was reached: {text}"
    );
    printed_once(&err, "refused");
    printed_once(&err, "(302)");
    node.shutdown().await;
}
