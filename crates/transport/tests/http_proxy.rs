//! HTTP CONNECT through an in-test proxy, the proxy URL parser and the
//! HTTPS_PROXY/NO_PROXY convention.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cloudproxy_proto::client::ClientConfig;
use cloudproxy_proto::{AppId, Timebase};
use cloudproxy_transport::connector::{ConnectError, ConnectionKind, Connector};
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::http_proxy::{
    self, BasicAuth, HttpProxy, HttpProxyError, NoProxy, ProxyEnv, ProxyUrlError,
};
use cloudproxy_transport::tls::{Fingerprint, TlsClient, TlsError, TlsTrust};
use cloudproxy_transport::tunnel::{TunnelError, allocate_via};
use support::{Leaf, tls_echo_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every exchange here ends well within this (a bound, not a wait).
const BOUND: Duration = Duration::from_secs(5);

/// How the in-test proxy answers a CONNECT.
#[derive(Clone)]
enum Answer {
    /// Check `Proxy-Authorization` (407 if it differs), forward
    /// `target` → `upstream`, 403 for any other target; send `early` with
    /// the 200.
    Forward {
        authorization: Option<String>,
        target: String,
        upstream: SocketAddr,
        early: &'static [u8],
    },
    /// Send these bytes and close.
    Raw(Vec<u8>),
    /// Read the request and never answer.
    Silent,
}

/// A minimal CONNECT proxy on 127.0.0.1; returns its address.
async fn proxy(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(client, answer.clone()));
        }
    });
    addr
}

async fn serve(mut client: TcpStream, answer: Answer) {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let request = String::from_utf8(request).unwrap();
    let mut lines = request.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    match answer {
        Answer::Raw(bytes) => {
            let _ = client.write_all(&bytes).await;
        }
        Answer::Silent => std::future::pending().await,
        Answer::Forward {
            authorization,
            target,
            upstream,
            early,
        } => {
            if headers.get("proxy-authorization") != authorization.as_ref() {
                let _ = client
                    .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\r\n")
                    .await;
                return;
            }
            if request_line != format!("CONNECT {target} HTTP/1.1")
                || headers.get("host") != Some(&target)
            {
                let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                return;
            }
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            let mut ok = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
            ok.extend_from_slice(early);
            if client.write_all(&ok).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
    }
}

/// A TCP server that echoes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn with_auth(user: &str, password: &str, port: u16) -> HttpProxy {
    HttpProxy {
        host: "127.0.0.1".into(),
        port,
        auth: Some(BasicAuth {
            user: user.into(),
            password: password.into(),
        }),
    }
}

async fn through(
    proxy: &HttpProxy,
    addr: SocketAddr,
) -> Result<http_proxy::Prefixed<TcpStream>, HttpProxyError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    // The in-test proxy closes after each 407: a new connection per leg.
    let redial = || TcpStream::connect(addr);
    tokio::time::timeout(
        BOUND,
        http_proxy::connect_with(tcp, redial, proxy, "relay.example.com", 443),
    )
    .await
    .expect("the CONNECT ends, never hangs")
}

#[tokio::test]
async fn connect_carries_bytes_both_ways_including_those_sent_with_the_200() {
    let upstream = echo_server().await;
    let addr = proxy(Answer::Forward {
        // "Aladdin:open sesame" with a percent-encoded space in the URL.
        authorization: Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==".into()),
        target: "relay.example.com:443".into(),
        upstream,
        early: b"early",
    })
    .await;
    let proxy = HttpProxy::parse(&format!("http://Aladdin:open%20sesame@{addr}")).unwrap();
    let mut tunnel = through(&proxy, addr).await.unwrap();
    let mut early = [0u8; 5];
    tunnel.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"early");
    tunnel.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn a_407_is_a_typed_authentication_failure() {
    let addr = proxy(Answer::Forward {
        authorization: Some("Basic dTpw".into()),
        target: "relay.example.com:443".into(),
        upstream: echo_server().await,
        early: b"",
    })
    .await;
    let err = through(&with_auth("u", "wrong", addr.port()), addr)
        .await
        .unwrap_err();
    assert!(err.is_auth_failed(), "{err}");
    assert!(
        err.to_string()
            .contains("refused the Basic authentication (407"),
        "{err}"
    );

    let anonymous = HttpProxy {
        auth: None,
        ..with_auth("", "", addr.port())
    };
    let err = through(&anonymous, addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            HttpProxyError::AuthFailed {
                had_credentials: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("requires authentication"), "{err}");
}

#[tokio::test]
async fn another_status_is_refused_with_its_code_and_reason() {
    let addr = proxy(Answer::Forward {
        authorization: None,
        target: "somewhere.else:443".into(),
        upstream: echo_server().await,
        early: b"",
    })
    .await;
    let proxy = HttpProxy::parse(&format!("http://{addr}")).unwrap();
    match through(&proxy, addr).await.unwrap_err() {
        HttpProxyError::Refused {
            status: 403,
            reason,
            target,
            ..
        } => {
            assert_eq!(reason, "Forbidden");
            assert_eq!(target, "relay.example.com:443");
        }
        other => panic!("expected a 403 refusal, got {other}"),
    }
}

#[tokio::test]
async fn malformed_oversized_and_cut_responses_are_typed_errors() {
    let plain = |addr: SocketAddr| HttpProxy::parse(&format!("http://{addr}")).unwrap();

    let addr = proxy(Answer::Raw(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec())).await;
    let err = through(&plain(addr), addr).await.unwrap_err();
    assert!(matches!(err, HttpProxyError::Malformed { .. }), "{err}");

    let addr = proxy(Answer::Raw(b"HTTP/1.1 2000 OK\r\n\r\n".to_vec())).await;
    let err = through(&plain(addr), addr).await.unwrap_err();
    assert!(matches!(err, HttpProxyError::Malformed { .. }), "{err}");

    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 10_000));
    let addr = proxy(Answer::Raw(huge)).await;
    let err = through(&plain(addr), addr).await.unwrap_err();
    assert!(
        matches!(err, HttpProxyError::HeaderTooLarge { limit: 8192, .. }),
        "{err}"
    );

    let addr = proxy(Answer::Raw(b"HTTP/1.1 200 OK\r\n".to_vec())).await;
    let err = through(&plain(addr), addr).await.unwrap_err();
    assert!(matches!(err, HttpProxyError::Closed { .. }), "{err}");
}

#[tokio::test]
async fn control_characters_never_reach_the_request() {
    let addr = proxy(Answer::Silent).await;
    let proxy = HttpProxy::parse(&format!("http://{addr}")).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = http_proxy::connect(tcp, &proxy, "evil\r\nX-Injected: 1", 443)
        .await
        .unwrap_err();
    assert!(matches!(err, HttpProxyError::BadTarget { .. }), "{err}");
}

fn client_config() -> ClientConfig {
    ClientConfig::new(
        AppId::new("test-app").unwrap(),
        b"secret".to_vec(),
        Timebase::new(std::time::Instant::now(), 1_700_000_000),
    )
}

#[tokio::test]
async fn tls_through_the_proxy_reaches_the_pinned_server() {
    let leaf = Leaf::self_signed(&["relay.example.com"]);
    let server = tls_echo_server(&leaf, b"hi").await;
    let addr = proxy(Answer::Forward {
        authorization: Some("Basic dTpw".into()),
        target: "relay.example.com:443".into(),
        upstream: server,
        early: b"",
    })
    .await;
    let tls = TlsClient::new(&TlsTrust::PinnedFingerprint(Fingerprint::of(&leaf.der))).unwrap();
    let connector = Connector::http_proxy(
        tls,
        with_auth("u", "p", addr.port()),
        vec![addr],
        "relay.example.com",
        443,
    )
    .unwrap();
    assert_eq!(connector.kind(), ConnectionKind::HttpProxy);
    assert_eq!(connector.candidates(), &[addr]);
    let mut stream = tokio::time::timeout(BOUND, connector.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hi");
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test]
async fn an_intercepting_proxy_fails_the_tunnel_as_untrusted() {
    // The "proxy" hands the tunnel to a server with its own certificate.
    let interceptor = Leaf::self_signed(&["relay.example.com"]);
    let server = tls_echo_server(&interceptor, b"").await;
    let addr = proxy(Answer::Forward {
        authorization: None,
        target: "relay.example.com:443".into(),
        upstream: server,
        early: b"",
    })
    .await;
    let tls = TlsClient::new(&TlsTrust::SystemRoots).unwrap();
    let proxy_conf = HttpProxy::parse(&format!("http://{addr}")).unwrap();
    let connector =
        Connector::http_proxy(tls, proxy_conf, vec![addr], "relay.example.com", 443).unwrap();
    let err = tokio::time::timeout(
        BOUND,
        allocate_via(&client_config(), &connector, &DialPolicy::default()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.is_untrusted_certificate(), "{err}");
    match err {
        TunnelError::UntrustedCertificate {
            addr: at, cause, ..
        } => {
            assert_eq!(at, addr);
            assert!(matches!(*cause, TlsError::Untrusted { .. }));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_wrong_proxy_password_fails_allocation_as_proxy_auth_failed() {
    let addr = proxy(Answer::Forward {
        authorization: Some("Basic dTpw".into()),
        target: "relay.example.com:443".into(),
        upstream: echo_server().await,
        early: b"",
    })
    .await;
    let tls = TlsClient::new(&TlsTrust::SystemRoots).unwrap();
    let connector = Connector::http_proxy(
        tls,
        with_auth("u", "nope", addr.port()),
        vec![addr],
        "relay.example.com",
        443,
    )
    .unwrap();
    let err = tokio::time::timeout(
        BOUND,
        allocate_via(&client_config(), &connector, &DialPolicy::default()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.is_proxy_auth_failed(), "{err}");
    assert!(
        err.to_string().contains("refused the Basic authentication"),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_proxy_is_bounded_by_the_attempt_timeout() {
    let addr = proxy(Answer::Silent).await;
    let tls = TlsClient::new(&TlsTrust::SystemRoots).unwrap();
    let proxy_conf = HttpProxy::parse(&format!("http://{addr}")).unwrap();
    let connector =
        Connector::http_proxy(tls, proxy_conf, vec![addr], "relay.example.com", 443).unwrap();
    let policy = DialPolicy {
        attempt_timeout: Duration::from_millis(200),
        ..DialPolicy::default()
    };
    let err = tokio::time::timeout(BOUND, allocate_via(&client_config(), &connector, &policy))
        .await
        .expect("bounded by the attempt timeout")
        .unwrap_err();
    assert!(matches!(err, TunnelError::Dial { .. }), "{err}");
    assert!(err.to_string().contains("no answer within 200ms"), "{err}");
}

#[tokio::test]
async fn connect_errors_name_the_failing_layer() {
    // Nothing listens on a port we just closed.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let connector = Connector::tcp(vec![dead]);
    assert!(matches!(
        connector.connect(dead).await,
        Err(ConnectError::Io(_))
    ));
}

#[test]
fn proxy_urls_parse() {
    let p = HttpProxy::parse("http://proxy.corp:3128").unwrap();
    assert_eq!(
        (p.host.as_str(), p.port, p.auth),
        ("proxy.corp", 3128, None)
    );
    let p = HttpProxy::parse("HTTP://user%40corp:p%3Ass%20w@10.0.0.1:8080/").unwrap();
    assert_eq!(p.host, "10.0.0.1");
    assert_eq!(
        p.auth,
        Some(BasicAuth {
            user: "user@corp".into(),
            password: "p:ss w".into()
        })
    );
    let p = HttpProxy::parse("[2001:db8::1]:3128").unwrap();
    assert_eq!(
        (p.host.as_str(), p.addr()),
        ("2001:db8::1", "[2001:db8::1]:3128".into())
    );
    let p = HttpProxy::parse("http://u@proxy:1").unwrap();
    assert_eq!(p.auth.unwrap().password, "");

    let shown = HttpProxy::parse("http://u:secret@proxy:3128").unwrap();
    assert_eq!(shown.to_string(), "http://proxy:3128");
    assert!(!format!("{shown:?}").contains("secret"));
}

#[test]
fn bad_proxy_urls_say_what_is_wrong() {
    let err = HttpProxy::parse("https://proxy:443").unwrap_err();
    assert!(
        matches!(err, ProxyUrlError::UnsupportedScheme { ref scheme, .. } if scheme == "https")
    );
    assert!(err.to_string().contains("only http://"), "{err}");
    assert!(matches!(
        HttpProxy::parse("socks5://proxy:1080"),
        Err(ProxyUrlError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        HttpProxy::parse("http://proxy"),
        Err(ProxyUrlError::BadPort { .. })
    ));
    assert!(matches!(
        HttpProxy::parse("http://proxy:0"),
        Err(ProxyUrlError::BadPort { .. })
    ));
    assert!(matches!(
        HttpProxy::parse("http://proxy:99999"),
        Err(ProxyUrlError::BadPort { .. })
    ));
    assert!(matches!(
        HttpProxy::parse("http://:3128"),
        Err(ProxyUrlError::MissingHost { .. })
    ));
    assert!(matches!(
        HttpProxy::parse("http://proxy:3128/path"),
        Err(ProxyUrlError::TrailingPath { .. })
    ));
    assert!(matches!(
        HttpProxy::parse("http://u:%zz@proxy:3128"),
        Err(ProxyUrlError::BadPercentEncoding { .. })
    ));
    let err = HttpProxy::parse("http://u:a%0d%0aX:%20y@proxy:3128").unwrap_err();
    assert!(
        matches!(err, ProxyUrlError::ControlCharacter { .. }),
        "{err}"
    );
    // Messages never repeat the credentials.
    assert!(!err.to_string().contains("u:a"), "{err}");
}

#[test]
fn the_environment_convention_picks_lowercase_first_and_honours_no_proxy() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        ProxyEnv::from_vars(move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    assert_eq!(vars(&[]), ProxyEnv::default());
    assert_eq!(vars(&[]).proxy_for("relay.example.com"), Ok(None));

    let env = vars(&[
        ("HTTPS_PROXY", "http://upper:1"),
        ("https_proxy", "http://lower:2"),
        ("NO_PROXY", "internal.corp"),
    ]);
    assert_eq!(env.https_proxy.as_deref(), Some("http://lower:2"));
    let proxy = env.proxy_for("relay.example.com").unwrap().unwrap();
    assert_eq!((proxy.host.as_str(), proxy.port), ("lower", 2));
    assert_eq!(env.proxy_for("relay.internal.corp"), Ok(None));

    // An empty lowercase value counts as unset.
    let env = vars(&[("https_proxy", ""), ("HTTPS_PROXY", "http://upper:1")]);
    assert_eq!(env.https_proxy.as_deref(), Some("http://upper:1"));

    let env = vars(&[("https_proxy", "https://proxy:443")]);
    assert!(matches!(
        env.proxy_for("relay.example.com"),
        Err(ProxyUrlError::UnsupportedScheme { .. })
    ));
}

#[test]
fn no_proxy_entries_match_names_suffixes_ips_and_cidrs() {
    let list = NoProxy::parse(
        ".corp.example, localhost:8080 10.0.0.0/8,192.0.2.7, [2001:db8::1]:443 *.wild.test",
    );
    for direct in [
        "corp.example",
        "a.corp.example",
        "A.Corp.Example.",
        "localhost",
        "10.1.2.3",
        "192.0.2.7",
        "2001:db8::1",
        "[2001:db8::1]",
        "x.wild.test",
    ] {
        assert!(list.matches(direct), "{direct} goes direct");
    }
    for proxied in [
        "notcorp.example",
        "example",
        "11.0.0.1",
        "192.0.2.8",
        "2001:db8::2",
        "relay.example.com",
    ] {
        assert!(!list.matches(proxied), "{proxied} goes through the proxy");
    }
    assert!(NoProxy::parse("*").matches("anything.at.all"));
    assert!(!NoProxy::parse("").matches("anything"));
}
