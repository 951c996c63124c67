//! One admission path for every listener, and the limits on what one client
//! can take from the others: SOCKS5 logins under the native rules, name
//! lookups bounded per app and run only within the quota, bindings per
//! session and sockets per app, login failures per source, refusal logs, and
//! no host error text in what clients see.

mod proxy_support;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use cloudproxy_proto::Machine;
use cloudproxy_proto::client::{Allocation, Allocator, AllocatorEvent, ClientConfig};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::ticket::{Ticket, TicketKeyRing};
use cloudproxy_proto::{Address, AppId, DomainName, ErrorCode, Path, SessionError, Transports};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;
use cloudproxy_server::lookups::{LookupFuture, LookupHold, Resolve};
use cloudproxy_server::resolver::DnsResolver;
use proxy_support::{
    APP, Captured, Rig, SECRET_HEX, TICKET_KEY_HEX, allocate_raw, bind_tcp_raw, client_config,
    echo_back, hex, refusal, tcp_echo, ticket_key, unix_now, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

const SOCKS: &str = "[socks5]\nenabled = true\nport = 0\n";
const OTHER_APP: &str = "other-app";
const OTHER_SECRET_HEX: &str = "6f746865722d6170702d7365637265742d3132";

/// A resolver shaped like getaddrinfo on a blocking pool of `threads`:
/// a lookup takes a thread until it ends, and a lookup of a `*.never.test`
/// name never ends (its servers never answer), whoever stops waiting.
/// `localhost` is 127.0.0.1; `emfile.test` fails as a host out of
/// descriptors would. Nothing leaves the process.
struct ModelResolver {
    threads: Arc<Semaphore>,
    calls: AtomicUsize,
}

impl ModelResolver {
    fn new(threads: usize) -> Arc<Self> {
        Arc::new(Self {
            threads: Arc::new(Semaphore::new(threads)),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Resolve for ModelResolver {
    fn lookup(&self, host: String, port: u16, hold: LookupHold) -> LookupFuture {
        self.calls.fetch_add(1, Relaxed);
        let threads = Arc::clone(&self.threads);
        let task = tokio::spawn(async move {
            let _thread = threads.acquire_owned().await.unwrap();
            let _hold = hold;
            if host.ends_with(".never.test") {
                std::future::pending::<()>().await;
            }
            match host.as_str() {
                "localhost" => Ok(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]),
                "emfile.test" => Err(io::Error::from_raw_os_error(24)),
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        });
        Box::pin(async move { task.await.unwrap() })
    }
}

/// A loopback node with two apps (`test-app`, `other-app`), SOCKS5 on, and
/// `limits` as the `[limits]` section.
async fn two_apps(limits: &str, resolver: Arc<dyn Resolve>) -> ProxyNode {
    let text = format!(
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "{APP}"
max_sessions = 1000
secrets = ["{SECRET_HEX}"]

[[apps]]
id = "{OTHER_APP}"
max_sessions = 1000
secrets = ["{OTHER_SECRET_HEX}"]

[[ticket_keys]]
key_id = 1
secret = "{TICKET_KEY_HEX}"

[allowlist]
allow = ["127.0.0.1"]

{SOCKS}
[limits]
{limits}
"#
    );
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    ProxyNode::start_with_resolver(&config, resolver)
        .await
        .unwrap()
}

/// What a SOCKS5 CONNECT came to.
#[derive(Debug, PartialEq, Eq)]
enum Socks {
    /// RFC 1929 status (non-zero: refused).
    AuthRefused(u8),
    /// RFC 1928 reply code, and the stream (open on success).
    Reply(u8),
}

/// A SOCKS5 CONNECT to `target` (an address, or a name when `name` is set)
/// as `user`/`password`; the stream stays open on success.
async fn socks_connect(
    socks: SocketAddr,
    user: &str,
    password: &str,
    target: SocketAddr,
    name: Option<&str>,
) -> (Socks, TcpStream) {
    let mut s = TcpStream::connect(socks).await.unwrap();
    let mut hello = vec![5, 1, 2, 1, user.len() as u8];
    hello.extend_from_slice(user.as_bytes());
    hello.push(password.len() as u8);
    hello.extend_from_slice(password.as_bytes());
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 4];
    within("auth", s.read_exact(&mut answer)).await.unwrap();
    assert_eq!(answer[..2], [5, 2]);
    if answer[3] != 0 {
        return (Socks::AuthRefused(answer[3]), s);
    }
    let mut request = vec![5, 1, 0];
    match name {
        Some(name) => {
            request.extend_from_slice(&[3, name.len() as u8]);
            request.extend_from_slice(name.as_bytes());
        }
        None => {
            let IpAddr::V4(ip) = target.ip() else {
                unreachable!()
            };
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
    }
    request.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    within("reply", s.read_exact(&mut reply)).await.unwrap();
    (Socks::Reply(reply[1]), s)
}

// ---- 12.2: one admission path ----

#[tokio::test]
async fn socks5_ticket_login_applies_app_transport_rules() {
    let rig = Rig::start(r#""127.0.0.1""#, 100, SOCKS).await;
    let socks = rig.node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    // A session granted UDP only: the native relay refuses it a TCP stream…
    let mut udp_only = rig.client.clone();
    udp_only.transports = Transports::UDP;
    let allocation = allocate_raw(rig.allocation_addr(), &udp_only)
        .await
        .unwrap();
    assert_eq!(allocation.transports, Transports::UDP);
    let err = bind_tcp_raw(
        rig.node.addrs().tcp_relay,
        &udp_only,
        &allocation,
        BindMode::Stream,
        Address::Ip(echo),
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::TRANSPORT_NOT_ALLOWED));
    // …and so does SOCKS5 CONNECT with the same ticket: not allowed (2).
    let ticket = hex(allocation.ticket.as_bytes());
    let (outcome, _) = socks_connect(socks, APP, &ticket, echo, None).await;
    assert_eq!(outcome, Socks::Reply(2));
    assert_eq!(rig.node.stats().tcp_sessions_total, 0);

    // A ticket that grants TCP still connects.
    let allocation = rig.allocate().await;
    let ticket = hex(allocation.ticket.as_bytes());
    let (outcome, mut stream) = socks_connect(socks, APP, &ticket, echo, None).await;
    assert_eq!(outcome, Socks::Reply(0));
    echo_back(&mut stream, b"granted").await;
}

#[tokio::test]
async fn socks5_ticket_login_applies_the_max_session_lifetime() {
    // This node keeps sessions 60 s at most; the ticket (signed with the
    // fleet's key, still unexpired) is of a session started 120 s ago.
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        &format!("{SOCKS}\n[limits]\nmax_session_lifetime_secs = 60\n"),
    )
    .await;
    let socks = rig.node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    let now = unix_now();
    let sealed = TicketKeyRing::new(1, ticket_key()).seal(&Ticket {
        key_id: 1,
        session_id: 7,
        app_id: AppId::new(APP).unwrap(),
        transports: Transports::ALL,
        created_at: now - 120,
        expires_at: now + 600,
    });
    // The native relay refuses it: the session is too old.
    let mut allocation = rig.allocate().await;
    allocation.ticket = sealed.clone();
    let err = bind_tcp_raw(
        rig.node.addrs().tcp_relay,
        &rig.client,
        &allocation,
        BindMode::Stream,
        Address::Ip(echo),
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::SESSION_TOO_OLD));
    // SOCKS5 the same.
    let (outcome, _) = socks_connect(socks, APP, &hex(sealed.as_bytes()), echo, None).await;
    assert_ne!(outcome, Socks::Reply(0), "{outcome:?}");
    assert_eq!(rig.node.stats().tcp_sessions_total, 0);
}

#[tokio::test]
async fn socks5_password_login_accepts_every_secret_of_a_rotation() {
    let new_secret = "6e65772d7365637265742d666f722d726f74617465";
    let text = proxy_support::config_text(r#""127.0.0.1""#, 100, SOCKS).replace(
        &format!("secrets = [\"{SECRET_HEX}\"]"),
        &format!("secrets = [\"{SECRET_HEX}\", \"{new_secret}\"]"),
    );
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    let node = ProxyNode::start(&config).await.unwrap();
    let socks = node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    for secret in [SECRET_HEX, new_secret] {
        let (outcome, mut stream) = socks_connect(socks, APP, secret, echo, None).await;
        assert_eq!(outcome, Socks::Reply(0));
        echo_back(&mut stream, secret.as_bytes()).await;
    }
    let (outcome, _) = socks_connect(socks, APP, OTHER_SECRET_HEX, echo, None).await;
    assert_eq!(outcome, Socks::AuthRefused(1));
}

// ---- 13.2: name resolution bounded per app, after the quota ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_names_of_one_app_do_not_delay_another() {
    // Four resolver threads; each app may hold two of them.
    let resolver = ModelResolver::new(4);
    let node = two_apps(
        "dns_timeout_ms = 300\ndns_lookups_in_flight_per_app = 2\n",
        resolver.clone(),
    )
    .await;
    let socks = node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;

    // test-app floods CONNECTs to names that never answer.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..40 {
        flood.spawn(async move {
            let name = format!("n{i}.never.test");
            socks_connect(socks, APP, SECRET_HEX, echo, Some(&name))
                .await
                .0
        });
    }
    // Every one is refused (host unreachable), quickly: at most two wait
    // for the lookup deadline, the rest are refused at once.
    let started = Instant::now();
    while let Some(outcome) = within("the flood", flood.join_next()).await {
        assert_eq!(outcome.unwrap(), Socks::Reply(4));
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // The flood's lookups still hold their threads; other-app's names
    // resolve anyway, every time.
    for i in 0..5 {
        let (outcome, mut stream) =
            socks_connect(socks, OTHER_APP, OTHER_SECRET_HEX, echo, Some("localhost")).await;
        assert_eq!(outcome, Socks::Reply(0), "other-app's bind {i}");
        echo_back(&mut stream, b"resolved").await;
    }
    assert!(node.stats().lookups_refused >= 30, "{:?}", node.stats());
}

#[tokio::test]
async fn name_lookups_run_only_within_the_quota() {
    let resolver = ModelResolver::new(4);
    let text = proxy_support::config_text(r#""127.0.0.1""#, 1, "");
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    let node = ProxyNode::start_with_resolver(&config, resolver.clone())
        .await
        .unwrap();
    let client = client_config(SECRET_HEX);
    let allocation_addr = node.addrs().allocation_tcp[0];
    let relay = node.addrs().tcp_relay;
    let echo = tcp_echo().await;
    // Two tickets while there is room; the first session takes the place.
    let first = allocate_raw(allocation_addr, &client).await.unwrap();
    let second = allocate_raw(allocation_addr, &client).await.unwrap();
    let _held = bind_tcp_raw(relay, &client, &first, BindMode::Stream, Address::Ip(echo))
        .await
        .unwrap();
    // The second session is over the quota: refused before its name is
    // looked up.
    let never = Address::Domain(DomainName::new("slow.never.test").unwrap(), 80);
    let err = bind_tcp_raw(relay, &client, &second, BindMode::Stream, never)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::QUOTA_EXCEEDED), "{err}");
    assert_eq!(resolver.calls.load(Relaxed), 0, "no lookup was started");
}

/// A DNS server on 127.0.0.1 that receives queries and never answers.
struct SilentServer {
    socket: UdpSocket,
}

impl SilentServer {
    async fn start() -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    /// The queries that have arrived so far (consumed).
    fn received(&self) -> usize {
        let mut buf = [0u8; 512];
        let mut count = 0;
        while self.socket.try_recv(&mut buf).is_ok() {
            count += 1;
        }
        count
    }

    /// Whether a query arrives within `wait`.
    async fn query_within(&self, wait: Duration) -> bool {
        let mut buf = [0u8; 512];
        tokio::time::timeout(wait, self.socket.recv(&mut buf))
            .await
            .is_ok()
    }
}

/// A node of one app whose names resolve only through `resolver`.
async fn node_resolving_with(limits: &str, resolver: DnsResolver) -> ProxyNode {
    let text = proxy_support::config_text(r#""127.0.0.1""#, 100, &format!("[limits]\n{limits}"));
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    ProxyNode::start_with_resolver(&config, Arc::new(resolver))
        .await
        .unwrap()
}

/// A native stream bind to `name`, which must be refused: its message.
async fn refused_bind_to(node: &ProxyNode, allocation: &Allocation, name: &str) -> String {
    let destination = Address::Domain(DomainName::new(name).unwrap(), 80);
    let err = bind_tcp_raw(
        node.addrs().tcp_relay,
        &client_config(SECRET_HEX),
        allocation,
        BindMode::Stream,
        destination,
    )
    .await
    .unwrap_err();
    let SessionError::Refused { code, message } = err else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(code, ErrorCode::DESTINATION_UNREACHABLE, "{message}");
    message
}

#[tokio::test]
async fn a_timed_out_lookup_frees_its_slot_at_once() {
    let server = SilentServer::start().await;
    // The node's own resolver, asking only the silent server; left alone
    // it would wait 2 s per query and ask five more times.
    let resolver = DnsResolver::with_name_servers(&[server.addr()], Duration::from_secs(2), 5);
    let node = node_resolving_with(
        "dns_timeout_ms = 300\ndns_lookups_in_flight_per_app = 1\n",
        resolver,
    )
    .await;
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &client_config(SECRET_HEX))
        .await
        .unwrap();
    // The first bind's lookup times out and is cancelled; the second, right
    // after it, gets the app's only place and is looked up too, instead of
    // being refused as "too many lookups in flight".
    for bind in ["first", "second"] {
        let message = refused_bind_to(&node, &allocation, "slow.cloudproxy.test").await;
        assert!(
            message.contains("could not be resolved within 300ms"),
            "{bind} bind: {message}"
        );
        assert!(server.received() >= 1, "the {bind} bind's lookup was sent");
    }
    assert_eq!(node.stats().lookups_refused, 0, "{:?}", node.stats());
}

#[tokio::test]
async fn a_cancelled_lookup_sends_no_more_queries() {
    let server = SilentServer::start().await;
    // Each query is given up after 50 ms and sent again, up to 100 times:
    // about 5 s of queries if nothing cancelled the lookup.
    let resolver = DnsResolver::with_name_servers(&[server.addr()], Duration::from_millis(50), 100);
    let node = node_resolving_with("dns_timeout_ms = 500\n", resolver).await;
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &client_config(SECRET_HEX))
        .await
        .unwrap();
    let message = refused_bind_to(&node, &allocation, "slow.cloudproxy.test").await;
    assert!(
        message.contains("could not be resolved within 500ms"),
        "{message}"
    );
    // While the relay waited the queries were being sent again (A and AAAA,
    // at least once more)…
    let before = server.received();
    assert!(before >= 3, "only {before} queries while the lookup ran");
    // …and once it gave up, none is: twenty retry periods pass in silence.
    assert!(
        !server.query_within(Duration::from_secs(1)).await,
        "a query arrived after the lookup was cancelled"
    );
}

/// A DNS server on 127.0.0.1 that answers A queries with 127.0.0.1 and
/// AAAA queries with no address, except for names under `never.test`,
/// which it never answers.
async fn loopback_dns() -> SocketAddr {
    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let never = Name::from_ascii("never.test.").unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(query) = request.queries().first().cloned() else {
                continue;
            };
            if never.zone_of(query.name()) {
                continue;
            }
            let mut answer = Message::new();
            answer
                .set_id(request.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(true)
                .set_recursion_available(true);
            if query.query_type() == RecordType::A {
                answer.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A::new(127, 0, 0, 1)),
                ));
            }
            answer.add_query(query);
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_names_of_one_app_do_not_delay_another_with_the_dns_resolver() {
    let dns = loopback_dns().await;
    let resolver = DnsResolver::with_name_servers(&[dns], Duration::from_secs(2), 2);
    let node = two_apps(
        "dns_timeout_ms = 300\ndns_lookups_in_flight_per_app = 2\n",
        Arc::new(resolver),
    )
    .await;
    let socks = node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;

    // test-app floods CONNECTs to names its server never answers…
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..40 {
        flood.spawn(async move {
            let name = format!("n{i}.never.test");
            socks_connect(socks, APP, SECRET_HEX, echo, Some(&name))
                .await
                .0
        });
    }
    // …while other-app's names resolve through the same resolver and the
    // same server, within the 300 ms deadline, every time.
    for i in 0..5 {
        let (outcome, mut stream) = socks_connect(
            socks,
            OTHER_APP,
            OTHER_SECRET_HEX,
            echo,
            Some(&format!("echo{i}.cloudproxy.test")),
        )
        .await;
        assert_eq!(outcome, Socks::Reply(0), "other-app's bind {i}");
        echo_back(&mut stream, b"resolved").await;
    }
    while let Some(outcome) = within("the flood", flood.join_next()).await {
        assert_eq!(outcome.unwrap(), Socks::Reply(4));
    }
    assert!(node.stats().lookups_refused >= 30, "{:?}", node.stats());
}

// ---- 13.3: what one session and one app may hold ----

#[tokio::test]
async fn bindings_per_session_are_bounded() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        2,
        &format!("{SOCKS}\n[limits]\nmax_bindings_per_session = 3\n"),
    )
    .await;
    let relay = rig.node.addrs().tcp_relay;
    let socks = rig.node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    let allocation = rig.allocate().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let bound = rig.bind_stream(&allocation, echo).await;
        held.push(bound);
    }
    // A SOCKS5 CONNECT with the same ticket is the same session's third.
    let ticket = hex(allocation.ticket.as_bytes());
    let (outcome, _third) = socks_connect(socks, APP, &ticket, echo, None).await;
    assert_eq!(outcome, Socks::Reply(0));
    // A fourth, on either listener, is refused.
    let err = bind_tcp_raw(
        relay,
        &rig.client,
        &allocation,
        BindMode::Stream,
        Address::Ip(echo),
    )
    .await
    .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::QUOTA_EXCEEDED), "{err}");
    let (outcome, _) = socks_connect(socks, APP, &ticket, echo, None).await;
    assert_eq!(outcome, Socks::Reply(2));
    assert_eq!(rig.node.sessions(APP), 1);
}

#[tokio::test]
async fn upstream_sockets_are_kept_for_other_apps() {
    let node = two_apps("max_upstream_sockets_per_app = 3\n", ModelResolver::new(4)).await;
    let socks = node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (outcome, stream) = socks_connect(socks, APP, SECRET_HEX, echo, None).await;
        assert_eq!(outcome, Socks::Reply(0));
        held.push(stream);
    }
    let (outcome, _) = socks_connect(socks, APP, SECRET_HEX, echo, None).await;
    assert_eq!(outcome, Socks::Reply(2), "test-app is at its sockets");
    let (outcome, mut stream) = socks_connect(socks, OTHER_APP, OTHER_SECRET_HEX, echo, None).await;
    assert_eq!(outcome, Socks::Reply(0), "other-app is not");
    echo_back(&mut stream, b"room left").await;
}

#[tokio::test]
async fn host_errors_never_reach_clients() {
    let resolver = ModelResolver::new(4);
    let text = proxy_support::config_text(r#""127.0.0.1""#, 100, "");
    let config = ServerConfig::from_toml_str("test.toml", &text).unwrap();
    let node = ProxyNode::start_with_resolver(&config, resolver)
        .await
        .unwrap();
    let client = client_config(SECRET_HEX);
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &client)
        .await
        .unwrap();
    let relay = node.addrs().tcp_relay;
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let refusals = [
        // The connect fails with the host's ECONNREFUSED.
        Address::Ip(closed),
        // The resolver fails with the host's EMFILE.
        Address::Domain(DomainName::new("emfile.test").unwrap(), 80),
    ];
    for destination in refusals {
        let err = bind_tcp_raw(relay, &client, &allocation, BindMode::Stream, destination)
            .await
            .unwrap_err();
        let SessionError::Refused { code, message } = &err else {
            panic!("expected a refusal, got {err}");
        };
        assert_eq!(*code, ErrorCode::DESTINATION_UNREACHABLE);
        for host_text in ["os error", "Too many open files", "Connection refused"] {
            assert!(!message.contains(host_text), "{message:?}");
        }
        assert!(!message.is_empty());
    }
}

// ---- 13.9: login failures per source ----

/// An allocation over TCP from `source` (a loopback address of this host).
async fn allocate_from(
    source: IpAddr,
    addr: SocketAddr,
    config: &ClientConfig,
) -> Result<Allocation, SessionError> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut allocator = Allocator::new(config, Path::Tcp, [3; 16], Instant::now());
    let mut buf = vec![0u8; 4096];
    within("allocation", async {
        loop {
            while let Some(bytes) = allocator.poll_transmit() {
                let _ = stream.write_all(&bytes).await;
            }
            match allocator.poll_event() {
                Some(AllocatorEvent::Allocated(a)) => return Ok(a),
                Some(AllocatorEvent::Failed(e)) => return Err(e),
                _ => {}
            }
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => allocator.handle_input(Instant::now(), &buf[..n]),
                _ => return Err(SessionError::ClosedByPeer),
            }
        }
    })
    .await
}

#[tokio::test]
async fn login_failures_are_rate_limited_per_source() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        &format!("{SOCKS}\n[limits]\nlogin_failure_burst = 3\nlogin_failures_per_minute = 1\n"),
    )
    .await;
    let socks = rig.node.addrs().socks5.unwrap();
    let echo = tcp_echo().await;
    let wrong = "00112233445566778899aabbccddeeff";
    // SOCKS5 from 127.0.0.1: three wrong passwords, then even the right one
    // is refused unchecked.
    for _ in 0..3 {
        let (outcome, _) = socks_connect(socks, APP, wrong, echo, None).await;
        assert_eq!(outcome, Socks::AuthRefused(1));
    }
    let (outcome, _) = socks_connect(socks, APP, SECRET_HEX, echo, None).await;
    assert_eq!(outcome, Socks::AuthRefused(1), "the limit holds");
    let stats = rig.node.stats();
    assert_eq!(stats.login_failures, 3);
    assert_eq!(stats.login_limit_engaged, 1);
    assert!(stats.logins_rate_limited >= 1);

    // Native allocations from 127.0.0.1 are refused too (busy: try another
    // proxy); another source is not affected.
    let err = allocate_raw(rig.allocation_addr(), &rig.client)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::SERVER_BUSY), "{err}");
    let other: IpAddr = Ipv4Addr::new(127, 0, 0, 3).into();
    let wrong_proof = client_config(wrong);
    for _ in 0..3 {
        let err = allocate_from(other, rig.allocation_addr(), &wrong_proof)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(ErrorCode::BAD_CREDENTIAL), "{err}");
    }
    // Wrong proofs count like wrong passwords: now 127.0.0.3 is limited.
    let err = allocate_from(other, rig.allocation_addr(), &rig.client)
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::SERVER_BUSY), "{err}");
    assert_eq!(rig.node.stats().login_limit_engaged, 2);
    let fresh: IpAddr = Ipv4Addr::new(127, 0, 0, 4).into();
    allocate_from(fresh, rig.allocation_addr(), &rig.client)
        .await
        .unwrap();
}

// ---- 12.3: refusals on the native protocol are logged, within a budget ----

#[tokio::test]
async fn failed_logins_and_malformed_input_are_logged_within_a_budget() {
    // This test's runtime runs on this thread only, node tasks included.
    let (captured, _guard) = Captured::install();
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        "[limits]\nlogin_failure_burst = 1000\n",
    )
    .await;

    // A wrong proof: one line with the peer, the app and the reason.
    let wrong = client_config("00112233445566778899aabbccddeeff");
    allocate_raw(rig.allocation_addr(), &wrong)
        .await
        .unwrap_err();
    let lines = captured.lines();
    let line = lines
        .iter()
        .find(|l| l.contains("failed login"))
        .unwrap_or_else(|| panic!("no failed-login line in {lines:#?}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("127.0.0.1:"), "{line}");
    assert!(line.contains(APP), "{line}");
    assert!(line.contains("200"), "the code: {line}");

    // Garbage on the allocation port and on the relay port.
    for addr in [rig.allocation_addr(), rig.node.addrs().tcp_relay] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = within("close", s.read_to_end(&mut sink)).await;
    }
    let malformed = captured
        .lines()
        .iter()
        .filter(|l| l.contains("malformed input"))
        .count();
    assert_eq!(malformed, 2, "{:#?}", captured.lines());
    // And on the allocation service's UDP port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"not the protocol", rig.node.addrs().allocation_udp[0])
        .await
        .unwrap();
    within("the UDP malformed-input line", async {
        while !captured
            .lines()
            .iter()
            .any(|l| l.contains("allocation datagram dropped: malformed input"))
        {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // A flood: 200 wrong proofs make at most the budget's lines.
    let before = captured.lines().len();
    for _ in 0..200 {
        allocate_raw(rig.allocation_addr(), &wrong)
            .await
            .unwrap_err();
    }
    let flood_lines = captured.lines().len() - before;
    assert!(flood_lines < 60, "{flood_lines} lines for 200 refusals");
    assert_eq!(rig.node.stats().login_failures, 201);
}

#[tokio::test]
async fn bad_tickets_on_udp_binds_count_as_login_failures() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        "[limits]\nlogin_failure_burst = 2\nlogin_failures_per_minute = 1\n",
    )
    .await;
    let relay = rig.node.addrs().udp_relays[0];
    let echo = proxy_support::udp_echo().await;
    let good = rig.allocate().await;
    let mut forged = good.clone();
    forged.ticket =
        cloudproxy_proto::SealedTicket::new(bytes::Bytes::from_static(b"not a ticket")).unwrap();
    for _ in 0..2 {
        let err = proxy_support::bind_udp_raw(relay, &rig.client, &forged, Address::Ip(echo))
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), Some(ErrorCode::INVALID_TICKET), "{err}");
    }
    assert_eq!(rig.node.stats().login_limit_engaged, 1);
    // Now even a good ticket from this source goes unanswered.
    let mut client = rig.client.clone();
    client.handshake_timeout = Duration::from_millis(500);
    let err = proxy_support::bind_udp_raw(relay, &client, &good, Address::Ip(echo))
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), None, "no answer, so no refusal code: {err}");
    assert!(rig.node.stats().logins_rate_limited >= 1);
}

#[test]
fn new_limits_of_zero_are_refused_with_their_key() {
    for key in [
        "max_bindings_per_session",
        "max_upstream_sockets_per_app",
        "dns_lookups_in_flight_per_app",
        "dns_lookups_per_sec_per_app",
        "login_failure_burst",
        "login_failures_per_minute",
        "login_failure_sources",
    ] {
        let text =
            proxy_support::config_text(r#""127.0.0.1""#, 1, &format!("[limits]\n{key} = 0\n"));
        let err = ServerConfig::from_toml_str("test.toml", &text).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&format!("`limits.{key}`")), "{message}");
        assert!(message.contains("expected a value above 0"), "{message}");
    }
    let text = proxy_support::config_text(r#""127.0.0.1""#, 1, "[limits]\nreserved_fds = 0\n");
    ServerConfig::from_toml_str("test.toml", &text).unwrap();
}

// ---- review of 13.9: a UDP source can be forged ----

/// An `AllocateRequest` datagram for `secret_hex`, padded like a client's.
fn udp_allocate_request(secret_hex: &str) -> Vec<u8> {
    use cloudproxy_proto::frame::{AllocateRequest, Frame};
    use cloudproxy_proto::ticket::credential_proof;
    use cloudproxy_proto::{Capabilities, Text};
    let secret: Vec<u8> = (0..secret_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).unwrap())
        .collect();
    let nonce = [3u8; 16];
    let timestamp = unix_now();
    let app_id = AppId::new(APP).unwrap();
    Frame::AllocateRequest(AllocateRequest {
        capabilities: Capabilities::ALL,
        transports: Transports::ALL,
        timestamp,
        nonce,
        proof: credential_proof(&secret, &app_id, &nonce, timestamp),
        app_id,
        client_version: Text::new("spoofer").unwrap(),
        padding: 1200,
    })
    .to_bytes()
    .to_vec()
}

#[tokio::test]
async fn spoofed_udp_failures_never_lock_out_tcp() {
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        &format!("{SOCKS}\n[limits]\nlogin_failure_burst = 4\nlogin_failures_per_minute = 1\n"),
    )
    .await;
    let echo = tcp_echo().await;
    let udp_echo = proxy_support::udp_echo().await;
    let good = rig.allocate().await;
    // What a spoofer can send with 127.0.0.1 as its source: wrong proofs to
    // the UDP allocation port…
    let spoofer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let wrong = udp_allocate_request("00112233445566778899aabbccddeeff");
    let mut buf = vec![0u8; 2048];
    for _ in 0..2 {
        spoofer
            .send_to(&wrong, rig.node.addrs().allocation_udp[0])
            .await
            .unwrap();
        within("the refusal", spoofer.recv_from(&mut buf))
            .await
            .unwrap();
    }
    // …and forged tickets to the UDP relay.
    let mut forged = good.clone();
    forged.ticket =
        cloudproxy_proto::SealedTicket::new(bytes::Bytes::from_static(b"not a ticket")).unwrap();
    for _ in 0..2 {
        let err = proxy_support::bind_udp_raw(
            rig.node.addrs().udp_relays[0],
            &rig.client,
            &forged,
            Address::Ip(udp_echo),
        )
        .await
        .unwrap_err();
        assert_eq!(refusal(&err), Some(ErrorCode::INVALID_TICKET), "{err}");
    }
    assert_eq!(rig.node.stats().login_limit_engaged, 1, "UDP is limited");

    // TCP from the same address is untouched: allocation, relay bind and
    // SOCKS5 login all go through.
    let allocation = allocate_raw(rig.allocation_addr(), &rig.client)
        .await
        .unwrap();
    let (mut stream, _) = rig.bind_stream(&allocation, echo).await;
    echo_back(&mut stream, b"still here").await;
    let socks = rig.node.addrs().socks5.unwrap();
    let (outcome, mut stream) = socks_connect(socks, APP, SECRET_HEX, echo, None).await;
    assert_eq!(outcome, Socks::Reply(0));
    echo_back(&mut stream, b"socks too").await;
    assert_eq!(rig.node.stats().logins_rate_limited, 0);

    // The UDP allocation port is the one limited: the right proof now goes
    // unanswered, and the client falls back to TCP (as above).
    spoofer
        .send_to(
            &udp_allocate_request(SECRET_HEX),
            rig.node.addrs().allocation_udp[0],
        )
        .await
        .unwrap();
    within("the refused attempt is counted", async {
        while rig.node.stats().logins_rate_limited == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

// ---- review of 12.3: every refusal line names peer, app and reason ----

#[tokio::test]
async fn udp_refusal_lines_carry_peer_app_and_reason() {
    // This test's runtime runs on this thread only, node tasks included.
    let (captured, _guard) = Captured::install();
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        "[limits]\nlogin_failure_burst = 1000\n",
    )
    .await;
    let line_with = |what: &str| {
        let what = what.to_owned();
        let captured = captured.clone();
        async move {
            within(&what.clone(), async move {
                loop {
                    if let Some(l) = captured.lines().into_iter().find(|l| l.contains(&what)) {
                        return l;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
        }
    };
    let fields = |line: &str, app: &str| {
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains(&format!("app={app}")), "{line}");
        assert!(line.contains("reason="), "{line}");
    };

    // Malformed input on the UDP allocation port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"not the protocol", rig.node.addrs().allocation_udp[0])
        .await
        .unwrap();
    fields(&line_with("allocation datagram dropped").await, "-");

    // A forged ticket on the UDP relay: no app can be read from it.
    let relay = rig.node.addrs().udp_relays[0];
    let good = rig.allocate().await;
    let mut forged = good.clone();
    forged.ticket =
        cloudproxy_proto::SealedTicket::new(bytes::Bytes::from_static(b"not a ticket")).unwrap();
    let echo = proxy_support::udp_echo().await;
    proxy_support::bind_udp_raw(relay, &rig.client, &forged, Address::Ip(echo))
        .await
        .unwrap_err();
    fields(&line_with("udp bind refused: failed login").await, "-");

    // A good ticket to a forbidden destination: the app is named.
    let forbidden: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let err = proxy_support::bind_udp_raw(relay, &rig.client, &good, Address::Ip(forbidden))
        .await
        .unwrap_err();
    assert_eq!(refusal(&err), Some(ErrorCode::DESTINATION_NOT_ALLOWED));
    let line = captured
        .lines()
        .into_iter()
        .find(|l| l.contains("udp bind refused") && !l.contains("failed login"))
        .expect("the refusal is logged before it is sent");
    fields(&line, APP);
}

// ---- review of 13.1: work before a session is bounded too ----

/// Connects to the relay with a small receive buffer, sends a stream-mode
/// `Bind` to `destination` followed by pings, and never reads.
async fn bind_and_never_read(node: &ProxyNode, destination: Address) -> TcpStream {
    use cloudproxy_proto::frame::{Bind, Frame};
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &client_config(SECRET_HEX))
        .await
        .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stream = socket.connect(node.addrs().tcp_relay).await.unwrap();
    let mut out = Frame::Bind(Bind {
        ticket: allocation.ticket,
        mode: BindMode::Stream,
        destination,
        rebind: None,
    })
    .to_bytes()
    .to_vec();
    for n in 0..64 {
        out.extend_from_slice(&Frame::Ping(n).to_bytes());
    }
    stream.write_all(&out).await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_stuck_before_its_session_does_not_hold_a_drain() {
    let resolver = ModelResolver::new(4);
    // Only shutdown can end this bind's wait in time: its name never
    // answers, and the lookup and handshake deadlines are a minute away.
    let node = two_apps(
        "dns_timeout_ms = 60000\nhandshake_timeout_ms = 60000\ndrain_timeout_ms = 100\n",
        resolver.clone(),
    )
    .await;
    let never = Address::Domain(DomainName::new("stuck.never.test").unwrap(), 80);
    let _client = bind_and_never_read(&node, never).await;
    within("the lookup starts", async {
        while resolver.calls.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("the drain ends at its deadline, not the lookup's");
    assert!(
        matches!(
            outcome,
            cloudproxy_transport::lifecycle::DrainOutcome::ForcedClose(_)
        ),
        "{outcome}"
    );
}

#[tokio::test]
async fn pre_session_work_ends_at_the_handshake_deadline() {
    let resolver = ModelResolver::new(4);
    let node = two_apps(
        "dns_timeout_ms = 60000\nhandshake_timeout_ms = 300\n",
        resolver.clone(),
    )
    .await;
    let never = Address::Domain(DomainName::new("slow.never.test").unwrap(), 80);
    let mut client = bind_and_never_read(&node, never).await;
    // The relay gives up at the handshake deadline, not the lookup's: the
    // connection closes long before a minute.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "still open after 10 s");
    assert!(node.stats().bindings_refused >= 1 || node.stats().handshake_timeouts >= 1);
}

// ---- review of 13.9: the refusal to a limited source arrives ----

#[tokio::test]
async fn a_refusal_to_a_rate_limited_source_is_not_lost() {
    use cloudproxy_proto::frame::Frame;
    let rig = Rig::start(
        r#""127.0.0.1""#,
        100,
        "[limits]\nlogin_failure_burst = 1\nlogin_failures_per_minute = 1\n",
    )
    .await;
    let wrong = client_config("00112233445566778899aabbccddeeff");
    allocate_raw(rig.allocation_addr(), &wrong)
        .await
        .unwrap_err();
    // Now 127.0.0.1 is limited. A client that sends its whole request at
    // once (which the refusal never reads) still gets the refusal, then a
    // clean close rather than a reset that could discard it.
    for addr in [rig.allocation_addr(), rig.node.addrs().tcp_relay] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&udp_allocate_request(SECRET_HEX))
            .await
            .unwrap();
        let mut got = Vec::new();
        within("the refusal and the close", s.read_to_end(&mut got))
            .await
            .expect("a clean close after the refusal, not a reset");
        match Frame::parse(&got) {
            Ok(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::SERVER_BUSY),
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
    assert!(rig.node.stats().logins_rate_limited >= 2);
}
