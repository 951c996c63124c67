//! Volume through the TCP relay: every byte arrives, in order.

mod proxy_support;

use cloudproxy_proto::Address;
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tunnel::open_stream;
use proxy_support::{Rig, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Position-sensitive checksum over 8-byte words (the length is a multiple of 8).
#[derive(Default)]
struct Checksum(u64, u64);

impl Checksum {
    fn update(&mut self, data: &[u8]) {
        for word in data.chunks_exact(8) {
            let w = u64::from_le_bytes(word.try_into().unwrap());
            self.0 = (self.0.rotate_left(7) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        self.1 += data.len() as u64;
    }
}

/// A destination that reads until EOF, then answers with its checksum and
/// byte count and closes.
async fn checksum_sink() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut carry = Vec::new();
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            carry.extend_from_slice(&buf[..n]);
            let whole = carry.len() / 8 * 8;
            sum.update(&carry[..whole]);
            carry.drain(..whole);
        }
        assert!(carry.is_empty());
        stream.write_all(&sum.0.to_le_bytes()).await.unwrap();
        stream.write_all(&sum.1.to_le_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gibibyte_arrives_intact() {
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let rig = Rig::loopback().await;
    let sink = checksum_sink().await;
    let allocation = rig.allocate().await;
    let (mut stream, _) = open_stream(
        &rig.client,
        &allocation,
        Address::Ip(sink),
        &DialPolicy::default(),
    )
    .await
    .unwrap();

    let started = std::time::Instant::now();
    let mut sent = Checksum::default();
    let mut chunk = vec![0u8; CHUNK];
    let mut seed = 0x1234_5678_u64;
    let (mut reader, mut writer) = stream.split();
    let send = async {
        for _ in 0..TOTAL / CHUNK as u64 {
            // A cheap generator so every chunk differs.
            for word in chunk.chunks_exact_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                word.copy_from_slice(&seed.to_le_bytes());
            }
            sent.update(&chunk);
            writer.write_all(&chunk).await.unwrap();
        }
        writer.shutdown().await.unwrap();
    };
    let receive = async {
        let mut answer = Vec::new();
        reader.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let ((), answer) = tokio::time::timeout(std::time::Duration::from_secs(300), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("1 GiB within 300 s");
    assert_eq!(answer.len(), 16, "checksum and count");
    assert_eq!(
        u64::from_le_bytes(answer[8..].try_into().unwrap()),
        TOTAL,
        "byte count"
    );
    assert_eq!(
        u64::from_le_bytes(answer[..8].try_into().unwrap()),
        sent.0,
        "checksum"
    );
    eprintln!(
        "1 GiB through the relay in {:.1?} (debug build, checksums on both ends)",
        started.elapsed()
    );
    within("stats", async {
        // The relay counts the session when it ends, just after the close.
        while rig.node.stats().tcp_bytes_up < TOTAL {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
