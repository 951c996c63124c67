//! The admin listener: metrics that move while a session runs, bounded
//! series under hostile input, the exposition read by `promtool`, readiness
//! and drain on demand.

mod proxy_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use cloudproxy_proto::Machine;
use cloudproxy_proto::client::Allocator;
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, AppId, Path};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::admin::AdminServer;
use proxy_support::{Rig, bind_tcp_raw, tcp_echo, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// One HTTP request to the admin listener: (status code, body).
async fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String) {
    within("an admin request", async {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("expected a head and a body, found {response:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("expected a status line, found {head:?}"));
        (status, body.to_owned())
    })
    .await
}

async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series written exactly as `series` (name and labels).
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("expected a series {series} in the scrape:\n{scrape}"))
        .trim()
        .parse()
        .unwrap()
}

/// Every series of a scrape: name and labels, without the value.
fn series(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

async fn admin_for(node: &ProxyNode) -> AdminServer {
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    admin.attach(node);
    admin
}

const TCP_UP: &str = r#"cloudproxy_relay_bytes_total{transport="tcp",direction="up"}"#;
const TCP_DOWN: &str = r#"cloudproxy_relay_bytes_total{transport="tcp",direction="down"}"#;
const TCP_ACTIVE: &str = r#"cloudproxy_sessions_active{transport="tcp"}"#;

/// Writes `len` bytes into the relayed stream and reads the echo back.
async fn echo_through(stream: &mut TcpStream, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = stream.split();
    let mut back = vec![0u8; len];
    within("the echo through the relay", async {
        tokio::try_join!(write.write_all(&data), read.read_exact(&mut back)).unwrap();
    })
    .await;
    assert_eq!(back, data);
}

#[tokio::test]
async fn byte_counters_move_while_a_tcp_session_runs() {
    let rig = Rig::loopback().await;
    let admin = admin_for(&rig.node).await;
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let (mut stream, _binding) = rig.bind_stream(&allocation, echo).await;

    let before = scrape(admin.local_addr()).await;
    assert_eq!(value(&before, TCP_ACTIVE), 1.0, "{before}");
    let first = 256 * 1024;
    echo_through(&mut stream, first).await;
    // The session is still open: the counters moved before it ended.
    let during = scrape(admin.local_addr()).await;
    println!("mid-session scrape:\n{during}");
    assert_eq!(value(&during, TCP_ACTIVE), 1.0, "{during}");
    assert!(value(&during, TCP_UP) >= first as f64, "{during}");
    assert!(value(&during, TCP_DOWN) >= first as f64, "{during}");
    let again = 64 * 1024;
    echo_through(&mut stream, again).await;
    let later = scrape(admin.local_addr()).await;
    assert!(value(&later, TCP_UP) >= (first + again) as f64, "{later}");
    assert!(value(&later, TCP_DOWN) >= (first + again) as f64, "{later}");
    assert_eq!(value(&later, TCP_ACTIVE), 1.0, "{later}");
    assert_eq!(
        value(&later, "cloudproxy_allocations_total{outcome=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        value(&later, "cloudproxy_allocation_latency_seconds_count"),
        1.0
    );
    drop(stream);
}

/// Allocation requests over UDP for `count` distinct unknown apps, `window`
/// at a time; every one is answered (refused).
async fn refused_allocations_for_distinct_apps(rig: &Rig, count: usize) {
    let target = rig.node.addrs().allocation_udp[0];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(target).await.unwrap();
    let mut buf = vec![0u8; 2048];
    // Small windows: the node's receive buffer holds a few dozen padded
    // requests, and a dropped one would never be answered.
    let window = 16;
    let mut sent = 0;
    while sent < count {
        let batch = window.min(count - sent);
        for i in sent..sent + batch {
            let mut config = rig.client.clone();
            config.app_id = AppId::new(format!("unknown-app-{i}")).unwrap();
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let mut allocator = Allocator::new(&config, Path::Udp, nonce, Instant::now());
            let datagram = allocator.poll_transmit().expect("an allocation request");
            socket.send(&datagram).await.unwrap();
        }
        for _ in 0..batch {
            let answered =
                tokio::time::timeout(std::time::Duration::from_secs(10), socket.recv(&mut buf))
                    .await;
            assert!(
                matches!(answered, Ok(Ok(_))),
                "expected an answer to each of {count} requests; {sent} sent before this window, stats {}",
                rig.node.stats()
            );
        }
        sent += batch;
    }
}

#[tokio::test]
async fn ten_thousand_distinct_unknown_apps_add_no_series() {
    // Every request is checked (no source limit kicks in), so each reaches
    // the counters as an unknown app.
    let rig = Rig::start(
        r#""127.0.0.1""#,
        10,
        "[limits]\nlogin_failure_burst = 100000\nlogin_failures_per_minute = 100000\n",
    )
    .await;
    let admin = admin_for(&rig.node).await;
    let before = scrape(admin.local_addr()).await;
    let count = 10_000;
    refused_allocations_for_distinct_apps(&rig, count).await;
    let after = scrape(admin.local_addr()).await;
    assert_eq!(
        value(&after, "cloudproxy_allocations_total{outcome=\"refused\"}"),
        count as f64,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "cloudproxy_login_failures_total{reason=\"bad_credential\"}"
        ),
        count as f64
    );
    assert_eq!(
        series(&before),
        series(&after),
        "the same series before and after {count} distinct app ids"
    );
    assert!(
        !after.contains("unknown-app-"),
        "no app id may appear in the exposition"
    );
}

/// `promtool check metrics` on a scrape; promtool comes from Debian's
/// `prometheus` package, which `cargo xtask ci` installs.
fn promtool_check(text: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): expected it on PATH; run `cargo xtask ci`, which \
                 installs Debian's `prometheus` package, or `apt-get install prometheus`"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

#[tokio::test]
async fn the_exposition_passes_promtool_check_metrics() {
    let rig = Rig::loopback().await;
    let admin = admin_for(&rig.node).await;
    // Some traffic, so histograms and counters hold values.
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let (mut stream, _binding) = rig.bind_stream(&allocation, echo).await;
    echo_through(&mut stream, 4096).await;
    let text = scrape(admin.local_addr()).await;
    let (ok, report) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed:\n{report}\n{text}");
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );

    // Every metric name is prefixed and every counter ends in _total.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split(' ').skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(name.starts_with("cloudproxy_"), "{line}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{line}");
        }
    }
    assert!(text.contains(&format!(
        "cloudproxy_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

#[tokio::test]
async fn openmetrics_on_request_and_plain_errors_for_the_rest() {
    let rig = Rig::loopback().await;
    let admin = admin_for(&rig.node).await;
    let addr = admin.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    within("openmetrics", stream.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(
        response.contains("Content-Type: application/openmetrics-text"),
        "{response}"
    );
    assert!(response.ends_with("# EOF\n"), "{response}");

    assert_eq!(http(addr, "GET", "/livez").await.0, 200);
    assert_eq!(http(addr, "HEAD", "/livez").await, (200, String::new()));
    assert_eq!(http(addr, "GET", "/nothing-here").await.0, 404);
    assert_eq!(http(addr, "DELETE", "/metrics").await.0, 405);
    assert_eq!(http(addr, "GET", "/drain").await.0, 405);
    // A request head over the limit is refused, not buffered.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let long = format!(
        "GET /metrics HTTP/1.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = stream.write_all(long.as_bytes()).await;
    let mut response = Vec::new();
    let _ = within("431", stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    assert!(!rig.node.is_draining(), "GET /drain does not drain");
}

#[tokio::test]
async fn readiness_follows_binding_and_a_drain_on_demand() {
    // The admin listener first: not ready until the node is attached.
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = admin.local_addr();
    assert_eq!(http(addr, "GET", "/livez").await.0, 200);
    let (status, body) = http(addr, "GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not bound"), "{body}");

    let rig = Rig::loopback().await;
    admin.attach(&rig.node);
    assert_eq!(http(addr, "GET", "/readyz").await, (200, "ready\n".into()));

    // A session open before the drain carries on through it.
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let (mut stream, _binding) = rig.bind_stream(&allocation, echo).await;

    let (status, body) = http(addr, "POST", "/drain").await;
    assert_eq!(status, 202, "{body}");
    assert!(rig.node.is_draining());
    let (status, body) = http(addr, "GET", "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    let text = scrape(addr).await;
    assert_eq!(value(&text, "cloudproxy_ready"), 0.0);
    assert_eq!(value(&text, "cloudproxy_draining"), 1.0);

    // No new allocation: the allocation listener closes (the accept loop
    // sees the drain on its next turn).
    let allocation_addr = rig.allocation_addr();
    let mut refused = false;
    for _ in 0..10_000 {
        tokio::task::yield_now().await;
        match TcpStream::connect(allocation_addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => {}
        }
    }
    assert!(refused, "the allocation port still accepts during a drain");

    echo_through(&mut stream, 8192).await;
    assert_eq!(value(&scrape(addr).await, TCP_ACTIVE), 1.0);
    // A second POST is harmless.
    assert_eq!(http(addr, "POST", "/drain").await.0, 202);
    drop(stream);
    // The process (here, the test) stays up and keeps answering.
    assert_eq!(http(addr, "GET", "/livez").await.0, 200);
    assert_eq!(
        within("shutdown", rig.node.shutdown()).await,
        cloudproxy_transport::lifecycle::DrainOutcome::Drained
    );
}

/// Every `cloudproxy_…` metric name in `text`.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cloudproxy_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if len > "cloudproxy_".len() {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_alert_rules_name_only_metrics_a_node_exports() {
    let rig = Rig::loopback().await;
    let admin = admin_for(&rig.node).await;
    let text = scrape(admin.local_addr()).await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for file in ["grafana/cloudproxy.json", "prometheus/alerts.yml"] {
        let path = deploy.join(file);
        let body = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let names = referenced_metrics(&body);
        assert!(
            !names.is_empty(),
            "deploy/{file} names no cloudproxy_ metric"
        );
        let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "deploy/{file} names metrics a node does not export: {missing:?}; exported: {exported:?}"
        );
    }
}

#[test]
fn the_admin_section_is_checked_with_file_line_and_key() {
    use cloudproxy_server::config::ServerConfig;
    let text = "[listeners]\nbind = \"127.0.0.1\"\ntcp_relay_port = 4000\n\n[admin]\nbind = \"127.0.0.1:4000\"\n";
    let error = ServerConfig::from_toml_str("proxy.toml", text)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("proxy.toml:6:"), "{error}");
    assert!(error.contains("admin.bind"), "{error}");
    assert!(
        error.contains("port 4000 is also the TCP relay port"),
        "{error}"
    );

    let ok = "[listeners]\nbind = \"127.0.0.1\"\n\n[admin]\nbind = \"127.0.0.1:9600\"\n";
    let config = ServerConfig::from_toml_str("proxy.toml", ok).unwrap();
    assert_eq!(config.admin.bind, Some("127.0.0.1:9600".parse().unwrap()));
    let off = ServerConfig::from_toml_str("proxy.toml", "").unwrap();
    assert_eq!(off.admin.bind, None, "off unless configured");
    let error = ServerConfig::from_toml_str("proxy.toml", "[admin]\nbind = \"9600\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("proxy.toml:2:"), "{error}");
}

#[tokio::test]
async fn a_scrape_before_the_node_is_attached_shows_not_ready() {
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = admin.local_addr();
    let (status, text) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(value(&text, "cloudproxy_ready"), 0.0);
    assert_eq!(value(&text, "cloudproxy_draining"), 0.0);
    assert!(text.contains("cloudproxy_build_info{"), "{text}");
    // So `CloudproxyNotReady` (ready 0 and draining 0) can fire; once
    // attached the node is ready.
    let rig = Rig::loopback().await;
    admin.attach(&rig.node);
    let text = scrape(addr).await;
    assert_eq!(value(&text, "cloudproxy_ready"), 1.0);
    assert_eq!(value(&text, "cloudproxy_draining"), 0.0);
}

/// Scrapes until `series` reaches `at_least` (bounded by `within`), and
/// returns that scrape.
async fn scrape_until(admin: SocketAddr, series: &str, at_least: f64) -> String {
    within(&format!("{series} to reach {at_least}"), async {
        loop {
            let text = scrape(admin).await;
            let found = text
                .lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok());
            if found.is_some_and(|v| v >= at_least) {
                return text;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn refused_udp_relay_control_datagrams_are_counted() {
    let rig = Rig::loopback().await;
    let admin = admin_for(&rig.node).await;
    let addr = admin.local_addr();
    let before = scrape(addr).await;
    assert_eq!(value(&before, "cloudproxy_bindings_refused_total"), 0.0);
    let malformed = r#"cloudproxy_dropped_total{reason="malformed"}"#;
    assert_eq!(value(&before, malformed), 0.0);

    // A control datagram (the frame magic first) that does not parse.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut garbage = vec![0x43u8, 0x50, 0x01, 0xff];
    garbage.extend_from_slice(&[0xee; 28]);
    socket
        .send_to(&garbage, rig.node.addrs().udp_relays[0])
        .await
        .unwrap();
    let text = scrape_until(addr, "cloudproxy_bindings_refused_total", 1.0).await;
    assert_eq!(value(&text, "cloudproxy_bindings_refused_total"), 1.0);
    assert_eq!(value(&text, malformed), 1.0);
}

#[tokio::test]
async fn login_failures_and_refusals_are_counted_by_reason() {
    use cloudproxy_proto::{ErrorCode, SealedTicket, Transports};
    let rig = Rig::loopback().await;
    let admin = admin_for(&rig.node).await;
    let addr = admin.local_addr();
    let before = scrape(addr).await;
    let reasons = [
        r#"cloudproxy_login_failures_total{reason="bad_credential"}"#,
        r#"cloudproxy_login_failures_total{reason="bad_ticket"}"#,
        r#"cloudproxy_login_failures_total{reason="expired_ticket"}"#,
        r#"cloudproxy_login_failures_total{reason="socks5_password"}"#,
        r#"cloudproxy_login_failures_total{reason="rate_limited"}"#,
        r#"cloudproxy_refusals_total{reason="transport_not_allowed"}"#,
        r#"cloudproxy_refusals_total{reason="session_too_old"}"#,
        r#"cloudproxy_refusals_total{reason="server_busy"}"#,
        r#"cloudproxy_refusals_total{reason="handshake_timeout"}"#,
        r#"cloudproxy_refusals_total{reason="destination"}"#,
        r#"cloudproxy_refusals_total{reason="lookup_budget"}"#,
        r#"cloudproxy_refusals_total{reason="quota"}"#,
    ];
    for reason in reasons {
        assert_eq!(value(&before, reason), 0.0, "{reason}");
    }

    // An unknown app: bad_credential.
    let mut stranger = rig.client.clone();
    stranger.app_id = AppId::new("no-such-app").unwrap();
    let err = proxy_support::allocate_raw(rig.allocation_addr(), &stranger)
        .await
        .unwrap_err();
    assert_eq!(
        proxy_support::refusal(&err),
        Some(ErrorCode::BAD_CREDENTIAL)
    );
    scrape_until(addr, reasons[0], 1.0).await;

    // A ticket that does not verify on a UDP bind: bad_ticket.
    let echo = proxy_support::udp_echo().await;
    let mut forged = rig.allocate().await;
    forged.ticket = SealedTicket::new(bytes::Bytes::from_static(b"not a ticket")).unwrap();
    let err = proxy_support::bind_udp_raw(
        rig.node.addrs().udp_relays[0],
        &rig.client,
        &forged,
        Address::Ip(echo),
    )
    .await
    .unwrap_err();
    assert_eq!(
        proxy_support::refusal(&err),
        Some(ErrorCode::INVALID_TICKET)
    );
    scrape_until(addr, reasons[1], 1.0).await;

    // A UDP-only session asking for a TCP stream: transport_not_allowed.
    let mut udp_only = rig.client.clone();
    udp_only.transports = Transports::UDP;
    let allocation = proxy_support::allocate_raw(rig.allocation_addr(), &udp_only)
        .await
        .unwrap();
    let err = bind_tcp_raw(
        rig.node.addrs().tcp_relay,
        &udp_only,
        &allocation,
        BindMode::Stream,
        Address::Ip(tcp_echo().await),
    )
    .await
    .unwrap_err();
    assert_eq!(
        proxy_support::refusal(&err),
        Some(ErrorCode::TRANSPORT_NOT_ALLOWED)
    );
    let after = scrape_until(addr, reasons[5], 1.0).await;
    assert_eq!(value(&after, reasons[0]), 1.0, "{after}");
    assert_eq!(value(&after, reasons[1]), 1.0, "{after}");
    assert_eq!(value(&after, reasons[5]), 1.0, "{after}");
    // Nothing else moved.
    for reason in [2, 3, 4, 6, 7, 8, 9, 10, 11].map(|i| reasons[i]) {
        assert_eq!(value(&after, reason), 0.0, "{reason}\n{after}");
    }
}

#[tokio::test]
async fn a_udp_binding_that_ends_idle_is_counted_and_timed() {
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[limits]\nidle_timeout_ms = 300\n").await;
    let admin = admin_for(&rig.node).await;
    let addr = admin.local_addr();
    let idle = r#"cloudproxy_sessions_ended_total{transport="udp",outcome="idle_timeout"}"#;
    let before = scrape(addr).await;
    assert_eq!(value(&before, idle), 0.0);
    assert_eq!(
        value(&before, "cloudproxy_session_duration_seconds_count"),
        0.0
    );

    let echo = proxy_support::udp_echo().await;
    let allocation = rig.allocate().await;
    // Bound, then silent: no keepalive, so the binding ends idle.
    let (_socket, _binding) = proxy_support::bind_udp_raw(
        rig.node.addrs().udp_relays[0],
        &rig.client,
        &allocation,
        Address::Ip(echo),
    )
    .await
    .unwrap();
    let text = scrape(addr).await;
    assert_eq!(
        value(&text, r#"cloudproxy_sessions_active{transport="udp"}"#),
        1.0
    );
    let text = scrape_until(addr, idle, 1.0).await;
    assert_eq!(value(&text, idle), 1.0);
    assert_eq!(
        value(&text, "cloudproxy_session_duration_seconds_count"),
        1.0
    );
    for outcome in ["closed", "session_lifetime", "shutdown"] {
        let series =
            format!(r#"cloudproxy_sessions_ended_total{{transport="udp",outcome="{outcome}"}}"#);
        assert_eq!(value(&text, &series), 0.0, "{series}");
    }
}

#[tokio::test]
async fn a_failed_socks5_login_is_counted_and_logged_with_peer_app_and_reason() {
    // This test's runtime runs on this thread only, node tasks included.
    let (captured, _guard) = proxy_support::Captured::install();
    let rig = Rig::start(r#""127.0.0.1""#, 10, "[socks5]\nenabled = true\nport = 0\n").await;
    let admin = admin_for(&rig.node).await;
    let addr = admin.local_addr();
    let socks = rig
        .node
        .addrs()
        .socks5
        .expect("the SOCKS5 listener is enabled");
    let reason = r#"cloudproxy_login_failures_total{reason="socks5_password"}"#;
    assert_eq!(value(&scrape(addr).await, reason), 0.0);

    // User/password (RFC 1929) with a password that is not the app's.
    let status = within("a SOCKS5 login", async {
        let mut stream = TcpStream::connect(socks).await.unwrap();
        stream.write_all(&[5, 1, 2]).await.unwrap();
        let mut method = [0u8; 2];
        stream.read_exact(&mut method).await.unwrap();
        assert_eq!(method, [5, 2]);
        let (user, password) = (proxy_support::APP.as_bytes(), b"00ff00ff");
        let mut login = vec![1, user.len() as u8];
        login.extend_from_slice(user);
        login.push(password.len() as u8);
        login.extend_from_slice(password);
        stream.write_all(&login).await.unwrap();
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await.unwrap();
        status[1]
    })
    .await;
    assert_ne!(status, 0, "a wrong password must not log in");
    let text = scrape_until(addr, reason, 1.0).await;
    assert_eq!(value(&text, reason), 1.0);
    assert_eq!(
        value(
            &text,
            r#"cloudproxy_login_failures_total{reason="bad_credential"}"#
        ),
        0.0
    );
    let lines = captured.lines();
    let line = lines
        .iter()
        .find(|l| l.contains("socks5 connection refused"))
        .unwrap_or_else(|| panic!("expected a refusal line, found {lines:#?}"));
    assert!(line.contains("WARN"), "{line}");
    for field in ["peer=", "app=", "reason="] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}
