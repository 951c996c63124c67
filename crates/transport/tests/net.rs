//! The socket helpers: a read that clears readiness when it comes back short
//! must never lose the wake-up for bytes that arrive afterwards.

use std::time::Duration;

use cloudproxy_transport::net::try_read_drained;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Waits for readability and reads once; fails the test instead of hanging.
async fn read_when_ready(stream: &TcpStream, buf: &mut [u8]) -> usize {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            stream.readable().await.unwrap();
            match try_read_drained(stream, buf) {
                Ok(n) => return n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
    })
    .await
    .expect("a wake-up was lost: bytes were sent but the socket never became readable")
}

#[tokio::test]
async fn short_reads_clear_readiness_without_losing_later_bytes() {
    let (mut client, server) = pair().await;
    let mut buf = [0u8; 64];
    for round in 0..50u8 {
        let message = [round; 10];
        client.write_all(&message).await.unwrap();
        let mut got = Vec::new();
        while got.len() < message.len() {
            let n = read_when_ready(&server, &mut buf).await;
            assert_ne!(n, 0, "unexpected end of stream in round {round}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, message, "round {round}");
    }
    // A full buffer is not a short read: what is left is read next, and the
    // end of the stream still reads as 0.
    client.write_all(&[7u8; 100]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut total = 0;
    loop {
        let n = read_when_ready(&server, &mut buf).await;
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 7));
        total += n;
    }
    assert_eq!(total, 100);
}
