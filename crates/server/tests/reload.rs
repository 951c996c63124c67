//! A configuration reload (`ProxyNode::reload`, what SIGHUP calls) replaces
//! apps, secrets, ticket keys and the allowlist for what comes next, and
//! leaves every running session alone; a bad or unloadable configuration
//! changes nothing.

mod proxy_support;

use std::net::SocketAddr;
use std::time::Instant;

use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, AppId, ErrorCode, Timebase};
use cloudproxy_server::config::{ConfigDraft, ServerConfig};
use cloudproxy_server::{ProxyNode, ReloadError};
use proxy_support::{
    APP, SECRET_HEX, TICKET_KEY_HEX, allocate_raw, bind_tcp_raw, bind_udp_raw, echo_back, refusal,
    tcp_echo, udp_echo, unix_now, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROTATED_SECRET_HEX: &str = "726f74617465642d7365637265742d3136";
const APP_B: &str = "app-b";
const APP_B_SECRET_HEX: &str = "6170702d622d7365637265742d2d3136";
const KEY_2_HEX: &str = "7365636f6e642d7469636b65742d6b65792d666f722d72656c6f61642d746573";

/// A loopback node's configuration: `apps` as (id, secret), `keys` as (id,
/// secret; the first signs), `allow` as the allowlist's rules.
fn config_text(apps: &[(&str, &str)], keys: &[(u32, &str)], allow: &str) -> String {
    let mut text = String::from(
        "[listeners]\nbind = \"127.0.0.1\"\nallocation_ports = [0]\ntcp_relay_port = 0\nudp_relay_ports = \"0-1\"\n",
    );
    for (id, secret) in apps {
        text.push_str(&format!(
            "\n[[apps]]\nid = \"{id}\"\nmax_sessions = 10\nsecrets = [\"{secret}\"]\n"
        ));
    }
    for (id, secret) in keys {
        text.push_str(&format!(
            "\n[[ticket_keys]]\nkey_id = {id}\nsecret = \"{secret}\"\n"
        ));
    }
    text.push_str(&format!("\n[allowlist]\nallow = [{allow}]\n"));
    text
}

fn config(apps: &[(&str, &str)], keys: &[(u32, &str)], allow: &str) -> ServerConfig {
    ServerConfig::from_toml_str("proxy.toml", &config_text(apps, keys, allow)).unwrap()
}

fn client(app: &str, secret_hex: &str) -> ClientConfig {
    let secret: Vec<u8> = (0..secret_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).unwrap())
        .collect();
    ClientConfig::new(
        AppId::new(app).unwrap(),
        secret,
        Timebase::new(Instant::now(), unix_now()),
    )
}

async fn start(config: &ServerConfig) -> ProxyNode {
    ProxyNode::start(config).await.unwrap()
}

/// A stream-mode binding of `allocation` to `destination`.
async fn bind(
    node: &ProxyNode,
    client: &ClientConfig,
    allocation: &Allocation,
    destination: SocketAddr,
) -> Result<TcpStream, ErrorCode> {
    bind_tcp_raw(
        node.addrs().tcp_relay,
        client,
        allocation,
        BindMode::Stream,
        Address::Ip(destination),
    )
    .await
    .map(|(stream, _)| stream)
    .map_err(|e| refusal(&e).unwrap_or_else(|| panic!("not a refusal: {e}")))
}

async fn allocation_refusal(node: &ProxyNode, client: &ClientConfig) -> Option<ErrorCode> {
    allocate_raw(node.addrs().allocation_tcp[0], client)
        .await
        .err()
        .and_then(|e| refusal(&e))
}

#[tokio::test]
async fn reload_adds_an_app_and_rotates_a_secret_without_dropping_a_session() {
    let echo_addr = tcp_echo().await;
    let allow = r#""127.0.0.1""#;
    let node = start(&config(&[(APP, SECRET_HEX)], &[(1, TICKET_KEY_HEX)], allow)).await;
    let old = client(APP, SECRET_HEX);
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &old)
        .await
        .unwrap();
    let mut running = bind(&node, &old, &allocation, echo_addr).await.unwrap();
    echo_back(&mut running, b"before the reload").await;

    let summary = node
        .reload(&config(
            &[(APP, ROTATED_SECRET_HEX), (APP_B, APP_B_SECRET_HEX)],
            &[(1, TICKET_KEY_HEX)],
            allow,
        ))
        .unwrap();
    assert_eq!(summary.apps_added, [APP_B]);
    assert_eq!(summary.apps_changed, [APP]);
    assert!(summary.apps_removed.is_empty());
    assert!(
        summary.to_string().starts_with("apps +app-b ~test-app;"),
        "{summary}"
    );

    // The rotated-out secret is refused for new allocations; the new one works.
    assert_eq!(
        allocation_refusal(&node, &old).await,
        Some(ErrorCode::BAD_CREDENTIAL)
    );
    let rotated = client(APP, ROTATED_SECRET_HEX);
    assert_eq!(allocation_refusal(&node, &rotated).await, None);
    // The running session's bytes still flow both ways, and it kept its place.
    echo_back(&mut running, b"after the reload").await;
    assert_eq!(node.sessions(APP), 1);
    // The added app allocates and relays.
    let b = client(APP_B, APP_B_SECRET_HEX);
    let b_allocation = allocate_raw(node.addrs().allocation_tcp[0], &b)
        .await
        .unwrap();
    let mut b_stream = bind(&node, &b, &b_allocation, echo_addr).await.unwrap();
    echo_back(&mut b_stream, b"app b").await;
    assert_eq!(node.sessions(APP_B), 1);
    echo_back(&mut running, b"still running").await;
}

#[tokio::test]
async fn reload_with_a_bad_file_keeps_the_old_configuration() {
    let echo_addr = tcp_echo().await;
    let allow = r#""127.0.0.1""#;
    let good = config(&[(APP, SECRET_HEX)], &[(1, TICKET_KEY_HEX)], allow);
    let node = start(&good).await;
    let old = client(APP, SECRET_HEX);

    // A file that does not validate: the error names the file, line and key.
    let bad_text = config_text(
        &[(APP, SECRET_HEX), (APP_B, "")],
        &[(1, TICKET_KEY_HEX)],
        allow,
    )
    .replace("secrets = [\"\"]", "secrets = []");
    let error = ConfigDraft::parse("proxy.toml", &bad_text)
        .and_then(ConfigDraft::validate)
        .map(|_| ())
        .map_err(ReloadError::from)
        .unwrap_err();
    let line = bad_text
        .lines()
        .position(|l| l == format!("id = \"{APP_B}\""))
        .unwrap()
        + 1;
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("proxy.toml:{line}:")),
        "{message}"
    );
    assert!(message.contains("`apps.secrets`"), "{message}");
    // A file that parses but is not TOML the loader knows: same.
    let error = ConfigDraft::parse("proxy.toml", "[listeners]\nbind = 7\n").unwrap_err();
    assert!(error.to_string().starts_with("proxy.toml:2:"), "{error}");

    // A valid file that changes a listener: refused whole, naming the key,
    // so the app it also adds is not added.
    let mut moved = config(
        &[(APP, ROTATED_SECRET_HEX), (APP_B, APP_B_SECRET_HEX)],
        &[(1, TICKET_KEY_HEX)],
        allow,
    );
    moved.listeners.tcp_relay_port = 4000;
    let error = node.reload(&moved).unwrap_err();
    let ReloadError::Fixed { changes } = &error else {
        panic!("expected a refusal of fixed settings, found {error}");
    };
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key, "listeners.tcp_relay_port");
    assert!(
        error
            .to_string()
            .contains("`listeners.tcp_relay_port` (running 0, new 4000)"),
        "{error}"
    );
    assert!(error.to_string().contains("restart the node"), "{error}");

    // The old credentials still work, the refused file's do not.
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &old)
        .await
        .unwrap();
    let mut stream = bind(&node, &old, &allocation, echo_addr).await.unwrap();
    echo_back(&mut stream, b"old configuration").await;
    assert_eq!(
        allocation_refusal(&node, &client(APP_B, APP_B_SECRET_HEX)).await,
        Some(ErrorCode::BAD_CREDENTIAL)
    );
    assert_eq!(
        allocation_refusal(&node, &client(APP, ROTATED_SECRET_HEX)).await,
        Some(ErrorCode::BAD_CREDENTIAL)
    );
    // And the same file again reloads as "nothing changed".
    let summary = node.reload(&good).unwrap();
    assert!(summary.is_unchanged(), "{summary}");
}

#[tokio::test]
async fn reload_of_allowlist_applies_to_new_binds() {
    let (kept, removed) = (tcp_echo().await, tcp_echo().await);
    let apps = [(APP, SECRET_HEX)];
    let keys = [(1, TICKET_KEY_HEX)];
    let node = start(&config(&apps, &keys, r#""127.0.0.1""#)).await;
    let c = client(APP, SECRET_HEX);
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &c)
        .await
        .unwrap();
    let mut running = bind(&node, &c, &allocation, removed).await.unwrap();
    echo_back(&mut running, b"allowed").await;

    let only_kept = format!("\"127.0.0.1:{}\"", kept.port());
    let summary = node.reload(&config(&apps, &keys, &only_kept)).unwrap();
    assert!(summary.allowlist_changed);
    assert_eq!(summary.allowlist_rules, 1);

    // A new bind to the removed destination is refused, by the same session
    // and by a new one; the kept destination is still allowed.
    assert_eq!(
        bind(&node, &c, &allocation, removed).await.unwrap_err(),
        ErrorCode::DESTINATION_NOT_ALLOWED
    );
    let fresh = allocate_raw(node.addrs().allocation_tcp[0], &c)
        .await
        .unwrap();
    assert_eq!(
        bind(&node, &c, &fresh, removed).await.unwrap_err(),
        ErrorCode::DESTINATION_NOT_ALLOWED
    );
    let mut other = bind(&node, &c, &fresh, kept).await.unwrap();
    echo_back(&mut other, b"kept").await;
    // The binding admitted before the reload keeps running.
    echo_back(&mut running, b"still allowed for this binding").await;
}

#[tokio::test]
async fn reload_of_ticket_keys_refuses_a_removed_keys_tickets_for_new_binds() {
    let echo_addr = tcp_echo().await;
    let apps = [(APP, SECRET_HEX)];
    let allow = r#""127.0.0.1""#;
    let node = start(&config(&apps, &[(1, TICKET_KEY_HEX)], allow)).await;
    let c = client(APP, SECRET_HEX);
    let signed_by_1 = allocate_raw(node.addrs().allocation_tcp[0], &c)
        .await
        .unwrap();
    let mut running = bind(&node, &c, &signed_by_1, echo_addr).await.unwrap();

    // Rotation, step 1: key 2 signs, key 1 still verifies.
    let summary = node
        .reload(&config(
            &apps,
            &[(2, KEY_2_HEX), (1, TICKET_KEY_HEX)],
            allow,
        ))
        .unwrap();
    assert_eq!(summary.ticket_keys_added, [2]);
    assert_eq!(summary.signing_key, Some(2));
    let signed_by_2 = allocate_raw(node.addrs().allocation_tcp[0], &c)
        .await
        .unwrap();
    assert!(bind(&node, &c, &signed_by_1, echo_addr).await.is_ok());

    // Step 2: key 1 removed. Its tickets no longer open for new binds; the
    // new key's do; the binding made with key 1's ticket keeps running.
    let summary = node
        .reload(&config(&apps, &[(2, KEY_2_HEX)], allow))
        .unwrap();
    assert_eq!(summary.ticket_keys_removed, [1]);
    assert!(summary.to_string().contains("ticket keys -1"), "{summary}");
    assert_eq!(
        bind(&node, &c, &signed_by_1, echo_addr).await.unwrap_err(),
        ErrorCode::INVALID_TICKET
    );
    let mut new_key = bind(&node, &c, &signed_by_2, echo_addr).await.unwrap();
    echo_back(&mut new_key, b"signed by key 2").await;
    echo_back(&mut running, b"signed by key 1, bound before").await;
    // The UDP relay, whose binding table was made at start, sees the new
    // keys too.
    let udp_relay = node.addrs().udp_relays[0];
    let media = Address::Ip(udp_echo().await);
    let refused = bind_udp_raw(udp_relay, &c, &signed_by_1, media.clone())
        .await
        .unwrap_err();
    assert_eq!(
        refusal(&refused),
        Some(ErrorCode::INVALID_TICKET),
        "{refused}"
    );
    assert!(
        bind_udp_raw(udp_relay, &c, &signed_by_2, media)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn reload_that_removes_an_app_lets_its_running_sessions_end_normally() {
    let echo_addr = tcp_echo().await;
    let keys = [(1, TICKET_KEY_HEX)];
    let allow = r#""127.0.0.1""#;
    let node = start(&config(
        &[(APP, SECRET_HEX), (APP_B, APP_B_SECRET_HEX)],
        &keys,
        allow,
    ))
    .await;
    let b = client(APP_B, APP_B_SECRET_HEX);
    let allocation = allocate_raw(node.addrs().allocation_tcp[0], &b)
        .await
        .unwrap();
    let mut running = bind(&node, &b, &allocation, echo_addr).await.unwrap();

    let summary = node
        .reload(&config(&[(APP, SECRET_HEX)], &keys, allow))
        .unwrap();
    assert_eq!(summary.apps_removed, [APP_B]);
    // No new session: no allocation, no bind with a ticket issued before.
    assert_eq!(
        allocation_refusal(&node, &b).await,
        Some(ErrorCode::BAD_CREDENTIAL)
    );
    assert_eq!(
        bind(&node, &b, &allocation, echo_addr).await.unwrap_err(),
        ErrorCode::BAD_CREDENTIAL
    );
    // The running one keeps its relay and its place until it ends.
    echo_back(&mut running, b"removed app, running session").await;
    assert_eq!(node.sessions(APP_B), 1);
    drop(running);
    within("the session's end", async {
        while node.sessions(APP_B) != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// RFC 1929 user/password login on the SOCKS5 listener; the status (0 = in).
async fn socks5_login(socks: SocketAddr, user: &str, password: &str) -> u8 {
    let mut s = TcpStream::connect(socks).await.unwrap();
    let mut hello = vec![5, 1, 2, 1, u8::try_from(user.len()).unwrap()];
    hello.extend_from_slice(user.as_bytes());
    hello.push(u8::try_from(password.len()).unwrap());
    hello.extend_from_slice(password.as_bytes());
    s.write_all(&hello).await.unwrap();
    let mut answer = [0u8; 4];
    within("socks5 login", s.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer[..2], [5, 2], "user/password chosen");
    answer[3]
}

#[tokio::test]
async fn reload_applies_to_socks5_logins_too() {
    let socks5 = "\n[socks5]\nenabled = true\nport = 0\n";
    let keys = [(1, TICKET_KEY_HEX)];
    let allow = r#""127.0.0.1""#;
    let text = |secret| config_text(&[(APP, secret)], &keys, allow) + socks5;
    let node = start(&ServerConfig::from_toml_str("proxy.toml", &text(SECRET_HEX)).unwrap()).await;
    let socks = node.addrs().socks5.unwrap();
    assert_eq!(socks5_login(socks, APP, SECRET_HEX).await, 0);

    let rotated = ServerConfig::from_toml_str("proxy.toml", &text(ROTATED_SECRET_HEX)).unwrap();
    node.reload(&rotated).unwrap();
    assert_ne!(
        socks5_login(socks, APP, SECRET_HEX).await,
        0,
        "the old secret"
    );
    assert_eq!(socks5_login(socks, APP, ROTATED_SECRET_HEX).await, 0);
}

#[tokio::test]
async fn reload_with_a_changed_admin_bind_is_refused_naming_it() {
    let allow = r#""127.0.0.1""#;
    let running = config(&[(APP, SECRET_HEX)], &[(1, TICKET_KEY_HEX)], allow);
    let node = start(&running).await;
    let mut moved = config(
        &[(APP, SECRET_HEX), (APP_B, APP_B_SECRET_HEX)],
        &[(1, TICKET_KEY_HEX)],
        allow,
    );
    moved.admin.bind = Some("127.0.0.1:0".parse().unwrap());
    let error = node.reload(&moved).unwrap_err();
    let ReloadError::Fixed { changes } = &error else {
        panic!("expected a refusal of fixed settings, found {error}");
    };
    assert_eq!(changes.len(), 1, "{error}");
    assert_eq!(changes[0].key, "admin.bind");
    assert!(
        error
            .to_string()
            .contains("`admin.bind` (running (unset), new 127.0.0.1:0)"),
        "{error}"
    );
    // Refused whole: the app the file also adds is not added.
    assert_eq!(
        allocation_refusal(&node, &client(APP_B, APP_B_SECRET_HEX)).await,
        Some(ErrorCode::BAD_CREDENTIAL)
    );
}
