//! Issue 23: what unauthenticated peers make `cloudproxy serve` log stays
//! within the refusal log budget (20 lines at once, then 5 a second), on
//! every port, rustls's own warnings about their ClientHellos included, and
//! no such line is long whatever the peer sent.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LOCAL_SERVE, Lines, Running, field, read_until};

/// The budget (`cloudproxy_server`'s refusal log limiter).
const BURST: f64 = 20.0;
const PER_SEC: f64 = 5.0;
/// The longest line a refused peer may cause: another crate's lines are cut
/// to 1 KiB, ours show at most 256 characters of a peer's text.
const LONGEST_LINE: usize = 1200;

/// A TLS record holding a ClientHello whose server name is `sni_len` bytes
/// long (not a DNS name: rustls warns about it) and, when given, whose ALPN
/// extension lists `alpn`.
fn client_hello(sni_len: usize, alpn: &[Vec<u8>]) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }
    let mut extensions = Vec::new();
    let name = vec![b'A'; sni_len];
    extensions.extend_from_slice(&[0, 0]); // server_name
    extensions.extend_from_slice(&u16be(2 + 1 + 2 + name.len()));
    extensions.extend_from_slice(&u16be(1 + 2 + name.len()));
    extensions.push(0); // host_name
    extensions.extend_from_slice(&u16be(name.len()));
    extensions.extend_from_slice(&name);
    if !alpn.is_empty() {
        let list: Vec<u8> = alpn
            .iter()
            .flat_map(|p| std::iter::once(u8::try_from(p.len()).unwrap()).chain(p.clone()))
            .collect();
        extensions.extend_from_slice(&[0, 16]); // application_layer_protocol_negotiation
        extensions.extend_from_slice(&u16be(2 + list.len()));
        extensions.extend_from_slice(&u16be(list.len()));
        extensions.extend_from_slice(&list);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&u16be(extensions.len()));
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// Sends `bytes` on a fresh connection to `to` and reads whatever comes
/// back until the node closes it (or briefly, if it waits for more).
fn send(to: SocketAddr, bytes: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(to) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Waits (bounded: 30 s) until the log from byte `from` on holds a line
/// with `needle`; returns the offset just past that line.
fn wait_for_log(log: &Mutex<Vec<u8>>, from: usize, needle: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let log = log.lock().unwrap();
            let text = String::from_utf8_lossy(&log[from.min(log.len())..]);
            if let Some(at) = text.find(needle) {
                let end = text[at..].find('\n').map_or(text.len(), |n| at + n + 1);
                return from + end;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within 30 s"
        );
        // Polling a buffer another thread fills, for a condition.
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_flood_of_bad_client_hellos_and_garbage_logs_within_the_budget() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudproxy"))
        .args(LOCAL_SERVE)
        .args(["--tls-bind", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let pid = child.id();
    let mut out = Lines::new(child.stdout.take().unwrap(), pid);
    let _node = Running::from(child);
    let banner = read_until(&mut out, "press Ctrl-C");
    let tls: SocketAddr = field(&banner, "TLS port            TCP")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let allocation: SocketAddr = field(&banner, "allocation service  TCP").parse().unwrap();
    let relay: SocketAddr = field(&banner, "message-data relay  TCP").parse().unwrap();
    // The start's own lines, up to the node's "started" line, are not
    // the flood's.
    let before = wait_for_log(&log, 0, "proxy node started");
    let started = Instant::now();

    let bad_sni = client_hello(8000, &[]);
    // An ALPN list of 60 long protocols, none ours: its refusal line
    // quotes the list.
    let long_alpn = client_hello(8000, &vec![vec![b'x'; 250]; 60]);
    let mut plaintext = vec![0x17, 3, 3, 0x03, 0xe8];
    plaintext.extend(std::iter::repeat_n(b'z', 1000));
    for i in 0..200 {
        send(tls, &bad_sni);
        send(tls, &plaintext);
        send(tls, b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n");
        if i % 4 == 0 {
            send(tls, &long_alpn);
            send(allocation, b"GET / HTTP/1.1\r\n\r\n");
            send(relay, &[0x43, 0x50, 1, 0x7f, 0, 0, 0, 0]);
        }
    }
    // Once the budget has refilled a little (time must pass for that),
    // one more refusal gets its line, after the summary of what was
    // suppressed.
    std::thread::sleep(Duration::from_millis(500));
    send(relay, b"GET / HTTP/1.1\r\n\r\n");
    // A line of the binary's own marks the end of what the flood logged:
    // SIGHUP in development mode says there is nothing to reload.
    let end = log.lock().unwrap().len();
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let marker = wait_for_log(&log, end, "nothing to reload");
    let elapsed = started.elapsed().as_secs_f64();
    let flood = &log.lock().unwrap()[before..marker];
    let text = String::from_utf8_lossy(flood).into_owned();
    // Everything before the marker's own line.
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let text = body
        .rfind('\n')
        .map_or(String::new(), |end| body[..=end].to_owned());
    let lines: Vec<&str> = text.lines().collect();
    // Each line the budget lets through may be preceded by one summary of
    // what it suppressed.
    let allowed = (2.0 * (BURST + PER_SEC * elapsed.ceil())) as usize;
    assert!(
        lines.len() <= allowed,
        "{} lines in {elapsed:.1} s, more than the budget's {allowed}:\n{}",
        lines.len(),
        lines
            .iter()
            .map(|l| &l[..l.len().min(200)])
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.len() <= allowed * LONGEST_LINE,
        "{} bytes in {} lines",
        text.len(),
        lines.len()
    );
    let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
    assert!(longest <= LONGEST_LINE, "a line of {longest} bytes");
    // The budget did engage, and both kinds of line took from it.
    assert!(
        text.contains("similar lines suppressed"),
        "no suppression summary:\n{text}"
    );
    assert!(text.contains("rustls::"), "{text}");
    assert!(text.contains("cloudproxy_server::"), "{text}");
}
