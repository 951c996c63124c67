//! The SOCKS5 listener against clients nobody here wrote (curl, the
//! tokio-socks crate, Python's PySocks), and every refusal with its RFC 1928
//! reply code, with a live session untouched throughout.

mod proxy_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;
use cloudproxy_server::lookups::{LookupFuture, LookupHold, Resolve};
use proxy_support::{APP, Captured, Rig, SECRET_HEX, socks_request, tcp_echo, udp_echo, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_socks::tcp::Socks5Stream;

const SOCKS: &str = "[socks5]\nenabled = true\nport = 0\n";

async fn rig(allow: &str) -> (Rig, SocketAddr) {
    let rig = Rig::start(allow, 100, SOCKS).await;
    let socks = rig
        .node
        .addrs()
        .socks5
        .expect("the SOCKS5 listener is enabled");
    (rig, socks)
}

/// A one-page HTTP server: every request gets the same body, then close.
async fn http_server(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// curl (quiet, errors shown, at most 10 s) with `args`, run off the async
/// runtime.
async fn curl(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_through_socks5_and_socks5_hostname() {
    let (rig, socks) = rig(r#""127.0.0.1""#).await;
    let web = http_server("served through the cloud proxy").await;
    let user = format!("{APP}:{SECRET_HEX}");

    // --socks5: curl resolves, the proxy gets an IPv4 address.
    let output = curl(vec![
        "--socks5".into(),
        socks.to_string(),
        "--proxy-user".into(),
        user.clone(),
        format!("http://{web}/"),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"served through the cloud proxy");

    // --socks5-hostname: the proxy resolves `localhost` and checks the result.
    let output = curl(vec![
        "--socks5-hostname".into(),
        socks.to_string(),
        "--proxy-user".into(),
        user,
        format!("http://localhost:{}/", web.port()),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"served through the cloud proxy");
    assert_eq!(rig.node.stats().tcp_sessions_total, 2);

    // The wrong password: curl reports the proxy's refusal.
    let output = curl(vec![
        "--socks5".into(),
        socks.to_string(),
        "--proxy-user".into(),
        format!("{APP}:00112233445566778899aabbccddeeff"),
        format!("http://{web}/"),
    ])
    .await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn tokio_socks_connects_with_a_password() {
    let (_rig, socks) = rig(r#""127.0.0.1""#).await;
    let echo = tcp_echo().await;
    let mut stream = Socks5Stream::connect_with_password(socks, echo, APP, SECRET_HEX)
        .await
        .unwrap();
    stream.write_all(b"ping through socks").await.unwrap();
    let mut reply = [0u8; 18];
    within("echo", stream.read_exact(&mut reply)).await.unwrap();
    assert_eq!(&reply, b"ping through socks");

    // And with a ticket from a native allocation instead of the secret.
    let allocation = _rig.allocate().await;
    let ticket_hex: String = allocation
        .ticket
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut stream = Socks5Stream::connect_with_password(socks, echo, APP, &ticket_hex)
        .await
        .unwrap();
    stream.write_all(b"ticket").await.unwrap();
    let mut reply = [0u8; 6];
    within("echo", stream.read_exact(&mut reply)).await.unwrap();
    assert_eq!(&reply, b"ticket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pysocks_udp_associate_round_trip() {
    let (rig, socks) = rig(r#""127.0.0.1""#).await;
    let echo = udp_echo().await;
    let script = format!(
        r#"
import socket, socks
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", {port}, username="{APP}", password="{SECRET_HEX}")
s.settimeout(10)
for i in range(3):
    s.sendto(b"datagram %d" % i, ("127.0.0.1", {echo_port}))
    data, addr = s.recvfrom(2048)
    assert data == b"echo:datagram %d" % i, data
    assert addr == ("127.0.0.1", {echo_port}), addr
print("ok")
"#,
        port = socks.port(),
        echo_port = echo.port()
    );
    let python = python_with_pysocks();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the PySocks UDP client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    let stats = rig.node.stats();
    assert_eq!(stats.udp_packets_up, 3);
    assert_eq!(stats.udp_packets_down, 3);
}

/// The Python that has PySocks: `$CLOUDPROXY_TEST_PYTHON` (set by `cargo
/// xtask ci`), else the virtual environment `cargo xtask ci` leaves in the
/// target directory, else `python3`. Panics with what to run when it cannot
/// import `socks`: a missing client fails the test, it does not skip it.
fn python_with_pysocks() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .join("ci-venv");
    let venv_python = venv.join("bin/python3");
    let python = match std::env::var_os("CLOUDPROXY_TEST_PYTHON") {
        Some(python) => python.into(),
        None if venv_python.is_file() => venv_python,
        None => "python3".into(),
    };
    let found = match Command::new(&python).args(["-c", "import socks"]).output() {
        Ok(output) if output.status.success() => return python,
        Ok(output) => String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or("no output")
            .to_owned(),
        Err(e) => e.to_string(),
    };
    panic!(
        "expected a Python with PySocks for the SOCKS5 UDP client; {} cannot `import socks` \
         ({found}). Run `cargo xtask ci` once: it creates {} with PySocks (or set \
         CLOUDPROXY_TEST_PYTHON to a Python that has it)",
        python.display(),
        venv.display(),
    )
}

/// A raw client, for the refusals: greets with user/password, and returns
/// the reply code of `request` (or `None` when the proxy closes instead).
async fn raw_request(
    socks: SocketAddr,
    password: &str,
    request: &[u8],
) -> (Option<u8>, Option<u8>) {
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 2]);
    let mut auth = vec![1, APP.len() as u8];
    auth.extend_from_slice(APP.as_bytes());
    auth.push(password.len() as u8);
    auth.extend_from_slice(password.as_bytes());
    s.write_all(&auth).await.unwrap();
    let mut status = [0u8; 2];
    s.read_exact(&mut status).await.unwrap();
    if status[1] != 0 {
        let mut rest = Vec::new();
        let _ = within("close after auth failure", s.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());
        return (Some(status[1]), None);
    }
    s.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    within("the reply and the close", s.read_to_end(&mut reply))
        .await
        .unwrap();
    (Some(0), reply.get(1).copied())
}

#[tokio::test]
async fn every_refusal_has_its_reply_code_and_harms_no_other_session() {
    // Only 127.0.0.1 is allowed, so 127.0.0.2 is off limits.
    let (rig, socks) = rig(r#""127.0.0.1""#).await;
    let echo = tcp_echo().await;
    let mut live = Socks5Stream::connect_with_password(socks, echo, APP, SECRET_HEX)
        .await
        .unwrap();

    // Wrong password: RFC 1929 failure status, then close.
    let (auth, _) = raw_request(socks, "00112233445566778899aabbccddeeff", &[]).await;
    assert_eq!(auth, Some(1));
    let (auth, _) = raw_request(socks, "not even hex", &[]).await;
    assert_eq!(auth, Some(1));

    // Not allowed by ruleset (2), by address and by a name that resolves
    // to a forbidden address is tested on the second node below.
    let forbidden: SocketAddr = SocketAddr::new("127.0.0.2".parse().unwrap(), echo.port());
    assert_eq!(
        raw_request(socks, SECRET_HEX, &socks_request(1, forbidden))
            .await
            .1,
        Some(2)
    );
    assert_eq!(
        raw_request(
            socks,
            SECRET_HEX,
            &socks_request(1, "0.0.0.0:80".parse().unwrap())
        )
        .await
        .1,
        Some(2)
    );

    // Connection refused (5): allowed, but nothing listens there.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(
        raw_request(socks, SECRET_HEX, &socks_request(1, closed))
            .await
            .1,
        Some(5)
    );

    // BIND: command not supported (7); an unknown address type (8).
    let mut bind = socks_request(1, echo);
    bind[1] = 2;
    assert_eq!(raw_request(socks, SECRET_HEX, &bind).await.1, Some(7));
    assert_eq!(
        raw_request(socks, SECRET_HEX, &[5, 1, 0, 9, 0, 0]).await.1,
        Some(8)
    );

    // A malformed greeting (SOCKS4): closed without a reply.
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).await.unwrap();
    let mut rest = Vec::new();
    // Closed with our unread bytes in its buffer, the kernel sends a reset
    // rather than a FIN: either way, no reply and a closed connection.
    match within("close", s.read_to_end(&mut rest)).await {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }

    // No acceptable method (no-auth only, not enabled): 0xFF, then close.
    let mut s = TcpStream::connect(socks).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut rest = Vec::new();
    within("close", s.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, [5, 0xFF]);

    // The live session carried on through all of it.
    live.write_all(b"still here").await.unwrap();
    let mut reply = [0u8; 10];
    within("echo", live.read_exact(&mut reply)).await.unwrap();
    assert_eq!(&reply, b"still here");
    let stats = rig.node.stats();
    assert_eq!(stats.socks5_auth_refused, 2);
    assert!(stats.destinations_refused >= 2);
}

#[tokio::test]
async fn a_name_resolving_to_a_forbidden_address_is_refused() {
    // Only 127.0.0.2 is allowed; `localhost` is 127.0.0.1.
    let (_rig, socks) = rig(r#""127.0.0.2""#).await;
    let mut request = vec![5, 1, 0, 3, 9];
    request.extend_from_slice(b"localhost");
    request.extend_from_slice(&80u16.to_be_bytes());
    assert_eq!(raw_request(socks, SECRET_HEX, &request).await.1, Some(2));
}

/// UDP ASSOCIATE by hand, to watch what the relay does with strangers and
/// with the end of the control connection.
#[tokio::test]
async fn the_udp_association_serves_only_its_client_and_dies_with_its_control_connection() {
    let (rig, socks) = rig(r#""127.0.0.1""#).await;
    let echo = udp_echo().await;
    let mut control = TcpStream::connect(socks).await.unwrap();
    let mut hello = vec![5, 1, 2, 1, APP.len() as u8];
    hello.extend_from_slice(APP.as_bytes());
    hello.push(SECRET_HEX.len() as u8);
    hello.extend_from_slice(SECRET_HEX.as_bytes());
    hello.extend_from_slice(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
    control.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 2 + 2 + 10];
    within("associate", control.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer[..4], &[5, 2, 1, 0], "method, auth ok");
    assert_eq!(&answer[4..8], &[5, 0, 0, 1], "succeeded, IPv4 address");
    let relay = SocketAddr::new(
        std::net::Ipv4Addr::new(answer[8], answer[9], answer[10], answer[11]).into(),
        u16::from_be_bytes([answer[12], answer[13]]),
    );

    let header = |to: SocketAddr, frag: u8| {
        let SocketAddr::V4(v4) = to else {
            unreachable!()
        };
        let mut h = vec![0, 0, frag, 1];
        h.extend_from_slice(&v4.ip().octets());
        h.extend_from_slice(&v4.port().to_be_bytes());
        h
    };
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagram = header(echo, 0);
    datagram.extend_from_slice(b"mine");
    client.send_to(&datagram, relay).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = within("reply", client.recv_from(&mut buf)).await.unwrap();
    assert_eq!(
        &buf[..10],
        &header(echo, 0)[..],
        "the reply names its source"
    );
    assert_eq!(&buf[10..n], b"echo:mine");

    // A stranger (another port) and a fragment are dropped, not relayed.
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&datagram, relay).await.unwrap();
    let mut fragment = header(echo, 1);
    fragment.extend_from_slice(b"part");
    client.send_to(&fragment, relay).await.unwrap();
    within("drops counted", async {
        while rig.node.stats().udp_dropped < 1 || rig.node.stats().socks5_fragments_dropped < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        rig.node.stats().udp_packets_up,
        1,
        "only the client's own datagram went out"
    );

    // Closing the control connection ends the association.
    assert_eq!(rig.node.stats().udp_bindings_active, 1);
    drop(control);
    within("the association closes", async {
        while rig.node.stats().udp_bindings_active != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authentication_only_when_the_operator_names_an_app() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        &format!("{SOCKS}no_auth_app = \"{APP}\"\n"),
    )
    .await;
    let socks = rig.node.addrs().socks5.unwrap();
    let web = http_server("open door, counted against test-app").await;
    let output = curl(vec![
        "--socks5".into(),
        socks.to_string(),
        format!("http://{web}/"),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"open door, counted against test-app");
}

/// A resolver of fixed names to fixed addresses (ports included, whatever
/// port was asked for); any other name never answers (its servers are
/// silent). Counts the lookups it was asked for. Nothing leaves the
/// process.
struct FixedResolver {
    names: HashMap<String, Vec<SocketAddr>>,
    calls: AtomicUsize,
}

impl FixedResolver {
    fn new(names: &[(&str, Vec<SocketAddr>)]) -> Arc<Self> {
        Arc::new(Self {
            names: names
                .iter()
                .map(|(n, a)| ((*n).to_owned(), a.clone()))
                .collect(),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Resolve for FixedResolver {
    fn lookup(&self, host: String, _port: u16, hold: LookupHold) -> LookupFuture {
        self.calls.fetch_add(1, Relaxed);
        let found = self.names.get(&host).cloned();
        Box::pin(async move {
            let _hold = hold;
            match found {
                // The ports as given: a name here stands for whole
                // addresses, so one name can hold two loopback servers.
                Some(addrs) => Ok(addrs),
                None => std::future::pending().await,
            }
        })
    }
}

/// A SOCKS5-enabled loopback node with `resolver` and `limits`.
async fn node_with(resolver: Arc<FixedResolver>, limits: &str) -> (ProxyNode, SocketAddr) {
    let text = proxy_support::config_text(
        r#""127.0.0.1""#,
        100,
        &format!("{SOCKS}\n[limits]\n{limits}\n"),
    );
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    let node = ProxyNode::start_with_resolver(&config, resolver)
        .await
        .unwrap();
    let socks = node.addrs().socks5.unwrap();
    (node, socks)
}

/// A loopback address that never answers a connect, as a blackholed one
/// would, without a packet leaving the machine: a listener with a backlog
/// of 0 whose one queue place is taken, so the kernel drops further SYNs.
/// Keep both returned sockets alive.
async fn blackhole() -> (TcpListener, TcpStream, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let filler = within("the filler connect", TcpStream::connect(addr))
        .await
        .unwrap();
    (listener, filler, addr)
}

/// A SOCKS5 CONNECT by name as test-app: writes the greeting, login and
/// request at once.
async fn connect_by_name(socks: SocketAddr, name: &str, port: u16) -> TcpStream {
    let mut s = TcpStream::connect(socks).await.unwrap();
    let mut hello = vec![5, 1, 2, 1, APP.len() as u8];
    hello.extend_from_slice(APP.as_bytes());
    hello.push(SECRET_HEX.len() as u8);
    hello.extend_from_slice(SECRET_HEX.as_bytes());
    hello.extend_from_slice(&[5, 1, 0, 3, name.len() as u8]);
    hello.extend_from_slice(name.as_bytes());
    hello.extend_from_slice(&port.to_be_bytes());
    s.write_all(&hello).await.unwrap();
    s
}

#[tokio::test]
async fn socks5_connect_races_its_addresses_and_stops_at_shutdown() {
    let (_l, _f, hole) = blackhole().await;
    let echo = tcp_echo().await;
    let resolver =
        FixedResolver::new(&[("race.test", vec![hole, echo]), ("hole.test", vec![hole])]);
    // A long connect timeout: one after another, the echo would be tried
    // only after a minute.
    let (node, socks) = node_with(
        Arc::clone(&resolver),
        "connect_timeout_ms = 60000\ndrain_timeout_ms = 100",
    )
    .await;

    // The first address never answers; the second, tried 250 ms later in
    // the race, connects.
    let mut s = connect_by_name(socks, "race.test", echo.port()).await;
    let mut answer = [0u8; 4 + 10];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut answer))
        .await
        .expect("the race connects long before the first address's timeout")
        .unwrap();
    assert_eq!(answer[5], 0, "succeeded");
    s.write_all(b"raced").await.unwrap();
    let mut back = [0u8; 5];
    within("echo", s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"raced");
    drop(s);

    // A CONNECT that can only wait for the blackhole does not hold
    // shutdown past its drain deadline.
    let mut pending = connect_by_name(socks, "hole.test", 80).await;
    within("the lookup", async {
        while resolver.calls.load(Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("shutdown ends at its drain deadline, not the connect timeout");
    assert!(
        matches!(
            outcome,
            cloudproxy_transport::lifecycle::DrainOutcome::ForcedClose(_)
        ),
        "{outcome}"
    );
    let mut rest = Vec::new();
    let _ = within("the close", pending.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn socks5_refusal_lines_are_rate_limited() {
    // This test's runtime runs on this thread only, node tasks included.
    let (captured, _guard) = Captured::install();
    let (rig, socks) = rig(r#""127.0.0.1""#).await;
    let forbidden: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(
            raw_request(socks, SECRET_HEX, &socks_request(1, forbidden))
                .await
                .1,
            Some(2)
        );
    }
    let refusals = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("socks5 connect refused"))
            .count()
    };
    let logged = refusals(&captured.lines());
    // The budget: a burst of 20, then 5 a second.
    let budget = 20 + 5 * (started.elapsed().as_secs() as usize + 1);
    assert!(
        logged <= budget,
        "{logged} lines for 200 refusals (budget {budget})"
    );
    assert!(logged >= 1);
    // Once the budget refills, the next line says how many were dropped.
    within("the suppressed summary", async {
        while !captured
            .lines()
            .iter()
            .any(|l| l.contains("similar lines suppressed"))
        {
            raw_request(socks, SECRET_HEX, &socks_request(1, forbidden)).await;
        }
    })
    .await;
    assert!(rig.node.stats().destinations_refused >= 200);
}

#[tokio::test]
async fn socks5_udp_association_stays_responsive_while_a_lookup_is_pending() {
    // `echo.test` is a UDP echo; any other name stays pending (for a minute
    // at most).
    let echo = udp_echo().await;
    let resolver = FixedResolver::new(&[("echo.test", vec![echo])]);
    let (node, socks) = node_with(Arc::clone(&resolver), "dns_timeout_ms = 60000").await;
    let mut control = TcpStream::connect(socks).await.unwrap();
    let mut hello = vec![5, 1, 2, 1, APP.len() as u8];
    hello.extend_from_slice(APP.as_bytes());
    hello.push(SECRET_HEX.len() as u8);
    hello.extend_from_slice(SECRET_HEX.as_bytes());
    hello.extend_from_slice(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
    control.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 2 + 2 + 10];
    within("associate", control.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer[4..8], &[5, 0, 0, 1], "succeeded, IPv4 address");
    let relay = SocketAddr::new(
        std::net::Ipv4Addr::new(answer[8], answer[9], answer[10], answer[11]).into(),
        u16::from_be_bytes([answer[12], answer[13]]),
    );
    // A datagram to a name: its lookup starts and never ends.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let name = b"pending.test";
    let mut datagram = vec![0, 0, 0, 3, name.len() as u8];
    datagram.extend_from_slice(name);
    datagram.extend_from_slice(&9u16.to_be_bytes());
    datagram.extend_from_slice(b"hello");
    client.send_to(&datagram, relay).await.unwrap();
    within("the lookup starts", async {
        while resolver.calls.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Meanwhile a datagram to a name that resolves, sent before its own
    // lookup ends, is held for it and relayed.
    let name = b"echo.test";
    let mut datagram = vec![0, 0, 0, 3, name.len() as u8];
    datagram.extend_from_slice(name);
    datagram.extend_from_slice(&echo.port().to_be_bytes());
    datagram.extend_from_slice(b"meanwhile");
    client.send_to(&datagram, relay).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = within("the echo", client.recv_from(&mut buf))
        .await
        .unwrap();
    assert!(buf[..n].ends_with(b"echo:meanwhile"), "{:?}", &buf[..n]);
    assert_eq!(node.stats().udp_bindings_active, 1);
    // Closing the control connection ends the association now, not when
    // the lookup gives up.
    drop(control);
    tokio::time::timeout(Duration::from_secs(10), async {
        while node.stats().udp_bindings_active != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the association ended with its control connection");
}
