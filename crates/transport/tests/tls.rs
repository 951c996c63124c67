//! Client TLS against an in-test tokio-rustls server: each trust setting,
//! ALPN, and the typed reasons an untrusted certificate fails with.

mod support;

use std::time::Duration;

use cloudproxy_transport::connector::{ConnectError, ConnectionKind, Connector};
use cloudproxy_transport::tls::{
    ALPN, Fingerprint, FingerprintParseError, TlsClient, TlsError, TlsName, TlsTrust, TrustError,
    UntrustedReason,
};
use support::{Ca, Leaf, tls_echo_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every handshake here ends well within this (a bound, not a wait).
const BOUND: Duration = Duration::from_secs(5);

async fn connect(
    trust: &TlsTrust,
    host: Option<&str>,
    addr: std::net::SocketAddr,
) -> Result<cloudproxy_transport::connector::BoxedStream, ConnectError> {
    let connector = Connector::tls(TlsClient::new(trust).unwrap(), host, vec![addr]).unwrap();
    assert_eq!(connector.kind(), ConnectionKind::Tls);
    tokio::time::timeout(BOUND, connector.connect(addr))
        .await
        .expect("the handshake ends, never hangs")
}

async fn untrusted_reason(trust: &TlsTrust, host: Option<&str>, leaf: &Leaf) -> UntrustedReason {
    let addr = tls_echo_server(leaf, b"hi").await;
    match connect(trust, host, addr).await {
        Err(ConnectError::Tls(e @ TlsError::Untrusted { .. })) => {
            let text = e.to_string();
            assert!(text.contains("was not trusted"), "{text}");
            assert!(text.contains("TLS-intercepting proxy"), "{text}");
            let TlsError::Untrusted { reason, .. } = e else {
                unreachable!()
            };
            reason
        }
        Err(other) => panic!("expected an untrusted certificate, got {other}"),
        Ok(_) => panic!("expected an untrusted certificate, got a connection"),
    }
}

#[tokio::test]
async fn a_pinned_ca_accepts_its_certificate_and_negotiates_alpn() {
    let ca = Ca::new("test CA");
    let leaf = ca.issue(&["proxy.test"]);
    let addr = tls_echo_server(&leaf, b"hi").await;
    let trust = TlsTrust::pinned_ca_pem(ca.pem.as_bytes()).unwrap();

    let tls = TlsClient::new(&trust).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = tls
        .handshake(&TlsName::new("proxy.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN));
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hi");

    // And through the connector, both ways.
    let mut stream = connect(&trust, Some("proxy.test"), addr).await.unwrap();
    stream.read_exact(&mut greeting).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn a_pinned_fingerprint_accepts_that_certificate_whatever_its_name() {
    let leaf = Leaf::self_signed(&["somewhere.else"]);
    let addr = tls_echo_server(&leaf, b"hi").await;
    let pin = Fingerprint::of(&leaf.der).to_string();
    let trust = TlsTrust::from_pin(&pin.to_lowercase()).unwrap();
    assert_eq!(
        trust,
        TlsTrust::PinnedFingerprint(Fingerprint::of(&leaf.der))
    );

    for host in [Some("proxy.test"), None] {
        let mut stream = connect(&trust, host, addr).await.unwrap();
        let mut greeting = [0u8; 2];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hi");
    }
}

#[tokio::test]
async fn a_wrong_fingerprint_fails_with_both_fingerprints() {
    let leaf = Leaf::self_signed(&["proxy.test"]);
    let expected = Fingerprint([0xAB; 32]);
    let reason = untrusted_reason(
        &TlsTrust::PinnedFingerprint(expected),
        Some("proxy.test"),
        &leaf,
    )
    .await;
    assert_eq!(
        reason,
        UntrustedReason::FingerprintMismatch {
            expected,
            found: Fingerprint::of(&leaf.der),
        }
    );
}

#[tokio::test]
async fn another_ca_is_an_unknown_issuer() {
    let ours = Ca::new("our CA");
    let interceptor = Ca::new("intercepting proxy CA");
    let leaf = interceptor.issue(&["proxy.test"]);
    let trust = TlsTrust::PinnedCa(vec![ours.der.clone()]);
    assert_eq!(
        untrusted_reason(&trust, Some("proxy.test"), &leaf).await,
        UntrustedReason::UnknownIssuer
    );
}

#[tokio::test]
async fn a_self_signed_certificate_is_unknown_to_the_system_roots() {
    let leaf = Leaf::self_signed(&["proxy.test"]);
    assert_eq!(
        untrusted_reason(&TlsTrust::SystemRoots, Some("proxy.test"), &leaf).await,
        UntrustedReason::UnknownIssuer
    );
}

#[tokio::test]
async fn a_pinned_ca_checks_the_host_name_but_not_an_ip() {
    let ca = Ca::new("test CA");
    let leaf = ca.issue(&["other.test"]);
    let trust = TlsTrust::PinnedCa(vec![ca.der.clone()]);
    let reason = untrusted_reason(&trust, Some("proxy.test"), &leaf).await;
    assert!(
        matches!(reason, UntrustedReason::NameMismatch { .. }),
        "{reason:?}"
    );
    // Reached by IP address: the pinned CA's certificate is enough.
    let addr = tls_echo_server(&leaf, b"hi").await;
    let mut stream = connect(&trust, None, addr).await.unwrap();
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).await.unwrap();
}

#[tokio::test]
async fn a_peer_that_is_not_tls_fails_as_a_handshake_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let err = connect(&TlsTrust::SystemRoots, Some("proxy.test"), addr)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::Tls(ref e) if !e.is_untrusted()),
        "{err}"
    );
}

#[test]
fn fingerprints_parse_in_either_case_with_or_without_colons() {
    let fp = Fingerprint(core::array::from_fn(|i| u8::try_from(i * 7).unwrap()));
    let text = fp.to_string();
    assert_eq!(text.len(), 95);
    assert_eq!(text, text.to_uppercase());
    assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(text.to_lowercase().parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(text.replace(':', "").parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(format!("  {text}\n").parse::<Fingerprint>().unwrap(), fp);

    assert_eq!(
        "AB:CD".parse::<Fingerprint>(),
        Err(FingerprintParseError::WrongLength { digits: 4 })
    );
    let mut bad = text.clone();
    bad.replace_range(3..4, "G");
    assert_eq!(
        bad.parse::<Fingerprint>(),
        Err(FingerprintParseError::NotHex {
            found: 'G',
            position: 3
        })
    );
    assert!(
        FingerprintParseError::WrongLength { digits: 4 }
            .to_string()
            .contains("64 hex digits")
    );
}

#[test]
fn a_pin_that_is_neither_fingerprint_nor_file_says_so() {
    let err = TlsTrust::from_pin("/nonexistent/ca.pem").unwrap_err();
    assert!(matches!(err, TrustError::ReadPem { .. }), "{err}");
    assert!(matches!(
        TlsTrust::pinned_ca_pem(b"no pem here"),
        Err(TrustError::NoCertificate)
    ));
}

#[test]
fn tls_names_are_dns_names_or_ips() {
    assert!(TlsName::new("proxy.example.com").unwrap().is_dns());
    assert!(!TlsName::new("192.0.2.1").unwrap().is_dns());
    assert!(!TlsName::new("[2001:db8::1]").unwrap().is_dns());
    assert!(TlsName::new("bad name!").is_err());
}
