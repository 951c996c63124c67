//! The TLS port end to end on loopback: a tokio-rustls client with ALPN
//! `cloudproxy/1` allocates, binds in stream mode and in datagram mode,
//! each on its own TLS connection; connections without our ALPN are
//! refused; certificates load from PEM files, bad ones are named, and a
//! reload swaps the certificate for new handshakes only.

mod proxy_support;

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use cloudproxy_proto::client::{Allocation, Allocator, AllocatorEvent, BindingEvent, RelayBinding};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, ErrorCode, Path, SessionError};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;
use cloudproxy_server::tls::{ALPN, CertificateError, Identity, SelfSigned, fingerprint};
use cloudproxy_transport::driver::{Driver, Next};
use proxy_support::{
    NODE_QUEUE_BOUND, SECRET_HEX, client_config, config_text, kernel_buffers_bound,
    ping_without_reading, refusal, tcp_echo, udp_echo, until, within,
};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A directory of its own for one test's PEM files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloudproxy-tls-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh certificate for 127.0.0.1 written to `dir`.
fn write_cert(dir: &FsPath, name: &str) -> (SelfSigned, PathBuf, PathBuf) {
    let made = SelfSigned::generate(&["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.cert.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    made.write(&cert, &key, true).unwrap();
    (made, cert, key)
}

fn tls_section(cert: &FsPath, key: &FsPath) -> String {
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn config_with_tls(cert: &FsPath, key: &FsPath) -> ServerConfig {
    config_with_tls_and(cert, key, "")
}

fn config_with_tls_and(cert: &FsPath, key: &FsPath, extra: &str) -> ServerConfig {
    let extra = format!("{}\n{extra}", tls_section(cert, key));
    ServerConfig::from_toml_str("tls-test.toml", &config_text(r#""127.0.0.1""#, 100, &extra))
        .unwrap()
}

async fn node_with_tls(test: &str) -> (ProxyNode, SelfSigned, PathBuf) {
    node_with_tls_and(test, "").await
}

/// A node with the TLS port on and `extra` configuration (a `[limits]`).
async fn node_with_tls_and(test: &str, extra: &str) -> (ProxyNode, SelfSigned, PathBuf) {
    let dir = scratch(test);
    let (made, cert, key) = write_cert(&dir, "first");
    let node = ProxyNode::start(&config_with_tls_and(&cert, &key, extra))
        .await
        .unwrap();
    (node, made, dir)
}

/// Accepts whatever certificate the server shows and remembers it: the
/// tests compare its fingerprint (as a pinning client does).
#[derive(Debug, Default)]
struct Remember(Mutex<Option<Vec<u8>>>);

impl ServerCertVerifier for Remember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to `addr` offering `alpn`; returns the stream and the
/// fingerprint of the certificate the server showed.
async fn connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> Result<(TlsStream<TcpStream>, String), std::io::Error> {
    let seen = Arc::new(Remember::default());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::clone(&seen) as Arc<dyn ServerCertVerifier>)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let der = seen
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("a certificate was shown");
    Ok((stream, fingerprint(&der)))
}

/// An allocation over the TLS port.
async fn allocate(addr: SocketAddr) -> Allocation {
    allocate_with(addr, SECRET_HEX).await.unwrap()
}

/// An allocation over the TLS port proving `secret_hex`, with its typed
/// refusal.
async fn allocate_with(addr: SocketAddr, secret_hex: &str) -> Result<Allocation, SessionError> {
    let (stream, _) = connect(addr, &[ALPN]).await.unwrap();
    let config = client_config(secret_hex);
    let allocator = Allocator::new(&config, Path::Tcp, [7; 16], Instant::now());
    let mut driver = Driver::new(allocator, stream);
    match within("allocation over TLS", driver.next_event()).await {
        Next::Event(AllocatorEvent::Allocated(allocation)) => Ok(allocation),
        Next::Event(AllocatorEvent::Failed(e)) => Err(e),
        other => panic!("expected an allocation or a refusal, got {other:?}"),
    }
}

/// A bind over its own TLS connection, bound; the driver keeps the binding
/// and the stream.
async fn bind(
    addr: SocketAddr,
    allocation: &Allocation,
    mode: BindMode,
    destination: SocketAddr,
) -> (Driver<RelayBinding, TlsStream<TcpStream>>, Bytes) {
    let (stream, _) = connect(addr, &[ALPN]).await.unwrap();
    let binding = RelayBinding::new(
        &client_config(SECRET_HEX),
        allocation,
        Path::Tcp,
        mode,
        Address::Ip(destination),
        Instant::now(),
    )
    .unwrap();
    let mut driver = Driver::new(binding, stream);
    match within("bind over TLS", driver.next_event()).await {
        Next::Event(BindingEvent::Bound { early_data, .. }) => (driver, early_data),
        other => panic!("expected BindOk, got {other:?}"),
    }
}

async fn echo_once(stream: &mut TlsStream<TcpStream>, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut got = vec![0u8; message.len()];
    within("echo over TLS", stream.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, message);
}

#[tokio::test]
async fn allocation_over_tls() {
    let (node, _cert, _dir) = node_with_tls("allocation").await;
    let addr = node.addrs().tls.expect("the TLS port is on");
    let allocation = allocate(addr).await;
    assert!(!allocation.tcp_relays.is_empty());
    let stats = node.stats();
    assert_eq!(stats.allocations, 1);
    assert_eq!(stats.tls_handshakes, 1);
}

#[tokio::test]
async fn a_stream_bind_over_tls_carries_bytes_both_ways() {
    let (node, _cert, _dir) = node_with_tls("stream").await;
    let addr = node.addrs().tls.unwrap();
    let echo = tcp_echo().await;
    let allocation = allocate(addr).await;
    let (driver, early) = bind(addr, &allocation, BindMode::Stream, echo).await;
    assert!(early.is_empty());
    let (_, mut stream) = driver.into_parts();
    echo_once(&mut stream, b"hello through the TLS port").await;
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    echo_once(&mut stream, &big).await;
    // Our close_notify reaches the echo as a FIN; it closes, and so do we.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = within("close", stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    let stats = node.stats();
    assert_eq!(stats.tcp_sessions_total, 1);
    assert!(stats.tcp_bytes_up >= 200_026, "{stats}");
}

#[tokio::test]
async fn a_datagram_bind_over_tls_carries_udp_both_ways() {
    let (node, _cert, _dir) = node_with_tls("datagram").await;
    let addr = node.addrs().tls.unwrap();
    let echo = udp_echo().await;
    let allocation = allocate(addr).await;
    let (mut driver, _) = bind(addr, &allocation, BindMode::Datagram, echo).await;
    for i in 0..20u8 {
        let payload = vec![i; 300];
        driver
            .machine_mut()
            .send_datagram(Instant::now(), &payload)
            .unwrap();
        let reply = loop {
            match within("datagram echo", driver.next_event()).await {
                Next::Event(BindingEvent::Datagram(reply)) => break reply,
                Next::Event(_) => {}
                other => panic!("expected a datagram, got {other:?}"),
            }
        };
        assert_eq!(&reply[..5], b"echo:");
        assert_eq!(&reply[5..], &payload[..]);
    }
    assert_eq!(node.stats().media_fallbacks, 1);
    assert!(node.stats().udp_packets_up >= 20);
}

/// Issue 23 over TLS: a datagram-mode client that floods `Ping`s and never
/// reads is held to the node's bound (no more TLS records are read from
/// it) and closed at its idle timeout as not reading.
#[tokio::test]
async fn a_ping_flood_over_tls_that_is_never_read_is_bounded_and_cut_as_not_reading() {
    let (node, _cert, _dir) =
        node_with_tls_and("ping-flood", "[limits]\nidle_timeout_ms = 1000\n").await;
    let addr = node.addrs().tls.unwrap();
    let allocation = allocate(addr).await;
    let (driver, _) = bind(addr, &allocation, BindMode::Datagram, udp_echo().await).await;
    let (_, stream) = driver.into_parts();
    let (_never_read, writer) = tokio::io::split(stream);
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let bound = kernel_buffers_bound() + NODE_QUEUE_BOUND;
    let started = Instant::now();
    let pinger = ping_without_reading(writer, bound + (16 << 20), Arc::clone(&written));
    let ended = within("the pinger's end", pinger).await.unwrap();
    let written = written.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ended.is_some(),
        "the node took {written} bytes of pings over TLS and never cut the client"
    );
    assert!(
        written <= bound,
        "{written} bytes of pings taken, more than the kernel's buffers and the node's bound ({bound})"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    until("the session's end", || {
        node.stats().tcp_sessions_active == 0
    })
    .await;
    let stats = node.stats();
    assert_eq!(stats.tcp_sessions_not_reading, 1, "{stats}");
}

#[tokio::test]
async fn a_client_without_alpn_is_closed_and_counted() {
    let (node, _cert, _dir) = node_with_tls("no-alpn").await;
    let addr = node.addrs().tls.unwrap();
    // The handshake may complete; then the server closes at once.
    if let Ok((mut stream, _)) = connect(addr, &[]).await {
        let _ = stream.write_all(b"CP").await;
        let mut rest = Vec::new();
        let closed = within("close", stream.read_to_end(&mut rest)).await;
        assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");
    }
    let stats = node.stats();
    assert_eq!(stats.tls_alpn_refused, 1);
    assert_eq!(stats.tls_handshakes, 0);
    assert_eq!(stats.allocations, 0);
}

#[tokio::test]
async fn a_client_with_another_alpn_fails_its_handshake() {
    let (node, _cert, _dir) = node_with_tls("wrong-alpn").await;
    let addr = node.addrs().tls.unwrap();
    let Err(error) = connect(addr, &[b"h2", b"http/1.1"]).await else {
        panic!("expected the handshake to fail");
    };
    assert!(
        error.to_string().to_lowercase().contains("application"),
        "expected the no_application_protocol alert, got {error}"
    );
    assert_eq!(node.stats().tls_alpn_refused, 1);
}

#[tokio::test]
async fn a_bad_pem_file_is_a_typed_error_naming_the_file() {
    let dir = scratch("bad-pem");
    let (_made, cert, key) = write_cert(&dir, "good");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM at all\n").unwrap();

    // A certificate file that holds no certificate.
    let error = Identity::from_pem_files(&garbage, &key).unwrap_err();
    assert!(
        matches!(error, CertificateError::Missing { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("garbage.pem"), "{text}");
    assert!(text.contains("CERTIFICATE"), "{text}");

    // The key where the certificate should be: what was found is named.
    let error = Identity::from_pem_files(&key, &key)
        .unwrap_err()
        .to_string();
    assert!(error.contains("PRIVATE KEY"), "{error}");

    // A key file that is missing.
    let missing = dir.join("missing.pem");
    let error = Identity::from_pem_files(&cert, &missing).unwrap_err();
    assert!(matches!(error, CertificateError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    // The node does not start with it.
    let config = config_with_tls(&cert, &garbage);
    let error = ProxyNode::start(&config).await.unwrap_err().to_string();
    assert!(error.contains("garbage.pem"), "{error}");
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections_only() {
    let (node, first, dir) = node_with_tls("reload").await;
    let addr = node.addrs().tls.unwrap();
    assert_eq!(node.tls_fingerprint().as_deref(), Some(first.fingerprint()));
    let echo = tcp_echo().await;
    let allocation = allocate(addr).await;
    let (driver, _) = bind(addr, &allocation, BindMode::Stream, echo).await;
    let (_, mut old_session) = driver.into_parts();
    echo_once(&mut old_session, b"before the reload").await;

    // A bad PEM: the reload is refused and the certificate stays.
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let (_, _, second_key) = write_cert(&dir, "unused");
    let refused = node.reload(&config_with_tls(&garbage, &second_key));
    let error = refused.unwrap_err().to_string();
    assert!(error.contains("garbage.pem"), "{error}");
    assert_eq!(node.tls_fingerprint().as_deref(), Some(first.fingerprint()));

    // A good one: new handshakes get it, the open session goes on.
    let (second, cert, key) = write_cert(&dir, "second");
    let summary = node.reload(&config_with_tls(&cert, &key)).unwrap();
    assert_eq!(
        summary.tls_certificate.as_deref(),
        Some(second.fingerprint())
    );
    assert_ne!(first.fingerprint(), second.fingerprint());
    let (_new, seen) = connect(addr, &[ALPN]).await.unwrap();
    assert_eq!(seen, second.fingerprint());
    echo_once(&mut old_session, b"after the reload, same session").await;
}

#[tokio::test]
async fn failed_logins_over_tls_count_against_their_source() {
    let (node, _cert, _dir) = node_with_tls_and(
        "login-limit",
        "[limits]\nlogin_failure_burst = 2\nlogin_failures_per_minute = 1\n",
    )
    .await;
    let addr = node.addrs().tls.unwrap();
    let wrong = "00112233445566778899aabbccddeeff";
    for _ in 0..2 {
        let error = allocate_with(addr, wrong).await.unwrap_err();
        assert_eq!(refusal(&error), Some(ErrorCode::BAD_CREDENTIAL), "{error}");
    }
    // Over its limit, the source is refused even with the right secret.
    let error = allocate_with(addr, SECRET_HEX).await.unwrap_err();
    assert_eq!(refusal(&error), Some(ErrorCode::SERVER_BUSY), "{error}");
    assert!(node.stats().logins_rate_limited >= 1);
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let (node, _cert, _dir) =
        node_with_tls_and("deadline", "[limits]\nhandshake_timeout_ms = 200\n").await;
    let addr = node.addrs().tls.unwrap();
    // No ClientHello at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    let _ = within("close", silent.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    // A handshake, then no frame.
    let (mut quiet, _) = connect(addr, &[ALPN]).await.unwrap();
    let _ = within("close", quiet.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    assert_eq!(node.stats().handshake_timeouts, 2);
}
