//! Authenticating to an HTTP proxy: scheme choice on a 407, NTLMv2 checked
//! by an in-test proxy of our own (independent of the client's library),
//! malformed challenges, refusals and credentials kept out of errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudproxy_transport::http_proxy::{self, BasicAuth, HttpProxy, HttpProxyError};
use cloudproxy_transport::proxy_auth::AuthScheme;
use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every exchange here ends well within this (a bound, not a wait).
const BOUND: Duration = Duration::from_secs(10);

const USER: &str = "alice";
const DOMAIN: &str = "CORP";
const PASSWORD: &str = "S3cret-pa55!";
const SERVER_CHALLENGE: [u8; 8] = *b"\x01\x23\x45\x67\x89\xab\xcd\xef";

/// How the in-test proxy challenges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// NTLM, offered with Basic; NTLMv2 verified for CORP\alice.
    Ntlm,
    /// NTLM, then the challenge squid's `ntlm_fake_auth` sends: a target
    /// name whose offset points far outside the message, no target info.
    MalformedChallenge,
    /// Basic only, closing the connection after each 407.
    BasicClosing,
    /// Basic only, closing the connection after a 407 that does not say
    /// so (no `Connection: close`, a `Content-Length`).
    BasicDropping,
    /// Offers Basic, NTLM and Negotiate; answers 403 naming the scheme of
    /// the first `Proxy-Authorization` it gets.
    RecordScheme,
    /// Offers Negotiate and Basic, refuses every Negotiate token (as squid
    /// with a Kerberos-only helper refuses NTLM inside SPNEGO), accepts
    /// Basic.
    NegotiateRefused,
}

struct Proxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn proxy(mode: Mode) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(client, mode));
        }
    });
    Proxy { addr, connections }
}

/// One request's header fields (lowercase names), `None` at the end.
async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Option<HashMap<String, String>> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match r.read(&mut byte).await {
            Ok(1) => request.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8(request).ok()?;
    Some(
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
            .collect(),
    )
}

fn answer_407(challenges: &[String], close: bool) -> Vec<u8> {
    let body = "<html>proxy authentication required</html>";
    let mut head = "HTTP/1.1 407 Proxy Authentication Required\r\n".to_owned();
    for c in challenges {
        head.push_str(&format!("Proxy-Authenticate: {c}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}

async fn serve(mut client: TcpStream, mode: Mode) {
    while let Some(headers) = read_request(&mut client).await {
        let auth = headers.get("proxy-authorization").cloned();
        let reply = match (mode, auth.as_deref()) {
            (Mode::RecordScheme, None) => answer_407(
                &[
                    "Basic realm=\"x\"".into(),
                    "NTLM".into(),
                    "Negotiate".into(),
                ],
                false,
            ),
            (Mode::RecordScheme, Some(value)) => {
                let scheme = value.split(' ').next().unwrap_or_default();
                let reply = format!("HTTP/1.1 403 {scheme}\r\nContent-Length: 0\r\n\r\n");
                let _ = client.write_all(reply.as_bytes()).await;
                return;
            }
            (Mode::NegotiateRefused, value) => {
                let expected = format!("Basic {}", b64(format!("{USER}:{PASSWORD}").as_bytes()));
                if value == Some(expected.as_str()) {
                    established(&mut client).await;
                    return;
                }
                answer_407(&["Negotiate".into(), "Basic realm=\"corp\"".into()], false)
            }
            (Mode::BasicClosing | Mode::BasicDropping, None) => {
                let close = mode == Mode::BasicClosing;
                let _ = client
                    .write_all(&answer_407(&["Basic realm=\"corp\"".into()], close))
                    .await;
                return;
            }
            (Mode::BasicClosing | Mode::BasicDropping, Some(value)) => {
                let expected = format!("Basic {}", b64(format!("{USER}:{PASSWORD}").as_bytes()));
                if value == expected {
                    established(&mut client).await;
                } else {
                    let _ = client
                        .write_all(&answer_407(&["Basic realm=\"corp\"".into()], true))
                        .await;
                }
                return;
            }
            (_, None) => answer_407(&["NTLM".into(), "Basic realm=\"corp\"".into()], false),
            (_, Some(value)) => {
                let token = value
                    .strip_prefix("NTLM ")
                    .and_then(unb64)
                    .unwrap_or_default();
                match token.get(8) {
                    Some(1) => {
                        let challenge = if mode == Mode::MalformedChallenge {
                            fake_auth_challenge()
                        } else {
                            challenge_message()
                        };
                        answer_407(&[format!("NTLM {}", b64(&challenge))], false)
                    }
                    Some(3) if verify_ntlmv2(&token, USER, DOMAIN, PASSWORD) => {
                        established(&mut client).await;
                        return;
                    }
                    _ => answer_407(&["NTLM".into()], true),
                }
            }
        };
        if client.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// The tunnel: `200`, then an echo.
async fn established(client: &mut TcpStream) {
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut r, mut w) = client.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// An NTLM CHALLENGE_MESSAGE (MS-NLMP 2.2.1.2) with a target name and
/// target info, as Windows and real squid helpers send.
fn challenge_message() -> Vec<u8> {
    let name = utf16(DOMAIN);
    let mut info = Vec::new();
    for (id, value) in [
        (2u16, utf16(DOMAIN)),
        (1, utf16("PROXY")),
        (4, utf16("corp.example")),
        (3, utf16("proxy.corp.example")),
        (7, 133_000_000_000_000_000u64.to_le_bytes().to_vec()),
    ] {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(&value);
    }
    info.extend_from_slice(&[0, 0, 0, 0]);
    let flags: u32 = 0x0000_0001 // UNICODE
        | 0x0000_0004 // REQUEST_TARGET
        | 0x0000_0200 // NTLM
        | 0x0000_8000 // ALWAYS_SIGN
        | 0x0001_0000 // TARGET_TYPE_DOMAIN
        | 0x0008_0000 // EXTENDED_SESSIONSECURITY
        | 0x0080_0000 // TARGET_INFO
        | 0x0200_0000 // VERSION
        | 0x2000_0000 // 128
        | 0x8000_0000; // 56
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&2u32.to_le_bytes());
    let name_at = 56u32;
    let info_at = name_at + name.len() as u32;
    m.extend_from_slice(&(name.len() as u16).to_le_bytes());
    m.extend_from_slice(&(name.len() as u16).to_le_bytes());
    m.extend_from_slice(&name_at.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&SERVER_CHALLENGE);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&info_at.to_le_bytes());
    m.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 15]);
    m.extend_from_slice(&name);
    m.extend_from_slice(&info);
    m
}

/// The challenge squid's `ntlm_fake_auth` sends: a target-name offset far
/// past the end, no target info, no version.
fn fake_auth_challenge() -> Vec<u8> {
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&12u16.to_le_bytes());
    m.extend_from_slice(&12u16.to_le_bytes());
    m.extend_from_slice(&0x7fff_0000u32.to_le_bytes());
    m.extend_from_slice(&(0x0000_0001u32 | 0x0000_0200 | 0x0001_0000).to_le_bytes());
    m.extend_from_slice(&SERVER_CHALLENGE);
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&[0; 8]);
    m
}

/// A field of an NTLM message: (length, offset) at `at`, then its bytes.
fn field(m: &[u8], at: usize) -> Option<&[u8]> {
    let len = u16::from_le_bytes(m.get(at..at + 2)?.try_into().ok()?) as usize;
    let off = u32::from_le_bytes(m.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    m.get(off..off.checked_add(len)?)
}

type HmacMd5 = Hmac<md5::Md5>;

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacMd5::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Checks an AUTHENTICATE_MESSAGE's NTLMv2 response (MS-NLMP 3.3.2) for
/// `user` in `domain` with `password`; an NTLMv1 (24-byte) response fails.
fn verify_ntlmv2(m: &[u8], user: &str, domain: &str, password: &str) -> bool {
    let (Some(nt), Some(dom), Some(name)) = (field(m, 20), field(m, 28), field(m, 36)) else {
        return false;
    };
    if nt.len() <= 24 || !m.starts_with(b"NTLMSSP\0") {
        return false;
    }
    if dom != utf16(domain).as_slice() || name != utf16(user).as_slice() {
        return false;
    }
    let nt_hash = Md4::digest(utf16(password));
    let identity = utf16(&format!("{}{domain}", user.to_uppercase()));
    let ntowf = hmac_md5(&nt_hash, &[&identity]);
    let (proof, blob) = nt.split_at(16);
    hmac_md5(&ntowf, &[&SERVER_CHALLENGE, blob]) == proof
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = u32::from(c[0]) << 16
            | u32::from(c.get(1).copied().unwrap_or(0)) << 8
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[(n >> (18 - 6 * i) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        acc = acc << 6 | A.iter().position(|&a| a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn proxy_for(addr: SocketAddr, user: &str, password: &str) -> HttpProxy {
    HttpProxy {
        host: "127.0.0.1".into(),
        port: addr.port(),
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
    let redial = || TcpStream::connect(addr);
    tokio::time::timeout(
        BOUND,
        http_proxy::connect_with(tcp, redial, proxy, "relay.example.com", 443),
    )
    .await
    .expect("the CONNECT ends, never hangs")
}

#[tokio::test]
async fn ntlmv2_with_the_right_password_opens_the_tunnel_on_one_connection() {
    let p = proxy(Mode::Ntlm).await;
    let proxy = proxy_for(p.addr, &format!("{DOMAIN}\\{USER}"), PASSWORD);
    let mut tunnel = through(&proxy, p.addr).await.unwrap();
    tunnel.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(
        p.connections.load(Ordering::SeqCst),
        1,
        "all three legs on the kept-alive connection"
    );
}

#[tokio::test]
async fn ntlm_with_a_wrong_password_is_a_typed_ntlm_failure_without_the_password() {
    let p = proxy(Mode::Ntlm).await;
    let wrong = "not-the-Pa55word";
    let proxy = proxy_for(p.addr, &format!("{DOMAIN}\\{USER}"), wrong);
    let err = through(&proxy, p.addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            HttpProxyError::AuthFailed {
                scheme: Some(AuthScheme::Ntlm),
                had_credentials: true,
                ..
            }
        ),
        "{err}"
    );
    let text = format!("{err} {err:?} {proxy} {proxy:?}");
    assert!(text.contains("NTLM"), "{text}");
    assert!(!text.contains(wrong), "the password leaked: {text}");
}

#[tokio::test]
async fn the_challenge_of_squids_fake_auth_helper_is_an_error_not_a_panic() {
    let p = proxy(Mode::MalformedChallenge).await;
    let proxy = proxy_for(p.addr, &format!("{DOMAIN}\\{USER}"), PASSWORD);
    let err = through(&proxy, p.addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            HttpProxyError::AuthFailed {
                scheme: Some(AuthScheme::Ntlm),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn basic_to_a_proxy_that_closes_after_the_407_reconnects() {
    let p = proxy(Mode::BasicClosing).await;
    let proxy = proxy_for(p.addr, USER, PASSWORD);
    let mut tunnel = through(&proxy, p.addr).await.unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    let mut echo = [0u8; 2];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(p.connections.load(Ordering::SeqCst), 2);

    let err = through(&proxy_for(p.addr, USER, "nope"), p.addr)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HttpProxyError::AuthFailed {
                scheme: Some(AuthScheme::Basic),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn basic_to_a_proxy_that_drops_a_connection_it_said_it_kept_reconnects() {
    let p = proxy(Mode::BasicDropping).await;
    let proxy = proxy_for(p.addr, USER, PASSWORD);
    let mut tunnel = through(&proxy, p.addr).await.unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    let mut echo = [0u8; 2];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ok");
}

#[tokio::test]
async fn the_strongest_offered_scheme_is_chosen() {
    let p = proxy(Mode::RecordScheme).await;
    let proxy = proxy_for(p.addr, &format!("{DOMAIN}\\{USER}"), PASSWORD);
    match through(&proxy, p.addr).await.unwrap_err() {
        HttpProxyError::Refused {
            status: 403,
            reason,
            ..
        } => assert_eq!(reason, "Negotiate"),
        other => panic!("expected the recording 403, got {other}"),
    }
}

#[tokio::test]
async fn a_refused_scheme_gives_way_to_the_next_one_offered() {
    let p = proxy(Mode::NegotiateRefused).await;
    let proxy = proxy_for(p.addr, USER, PASSWORD);
    let mut tunnel = through(&proxy, p.addr).await.unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    let mut echo = [0u8; 2];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ok");
    assert_eq!(p.connections.load(Ordering::SeqCst), 1);

    // Both refused: the failure names the strongest scheme tried.
    let err = through(&proxy_for(p.addr, USER, "nope"), p.addr)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HttpProxyError::AuthFailed {
                scheme: Some(AuthScheme::Negotiate),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn no_credentials_names_the_offered_schemes() {
    let p = proxy(Mode::Ntlm).await;
    let anonymous = HttpProxy {
        auth: None,
        ..proxy_for(p.addr, "", "")
    };
    let err = through(&anonymous, p.addr).await.unwrap_err();
    assert!(
        matches!(
            err,
            HttpProxyError::AuthFailed {
                had_credentials: false,
                scheme: None,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("NTLM, Basic"), "{err}");
}
