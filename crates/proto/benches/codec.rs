//! Encode and decode throughput of the frame codec: 200-byte and 1200-byte
//! media datagram frames (UDP-over-TCP) and 16 KiB message frames, plus the
//! UDP relay header parse.
//!
//! ```text
//! cargo bench -p cloudproxy-proto --bench codec
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{Frame, Message};
use cloudproxy_proto::udp::{UdpHeader, UdpKind};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::Encoder;

/// Frames decoded per measured batch (one read buffer holding them all).
const BATCH: usize = 256;

fn cases() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "datagram_200B",
            Frame::Datagram(Bytes::from(vec![0x80; 200])),
        ),
        (
            "datagram_1200B",
            Frame::Datagram(Bytes::from(vec![0x80; 1200])),
        ),
        (
            "message_16KiB",
            Frame::Message(Message {
                seq: 1,
                from: 7,
                payload: Bytes::from(vec![0x61; 16 * 1024]),
            }),
        ),
    ]
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (name, frame) in cases() {
        g.throughput(Throughput::Bytes(frame.encoded_len() as u64));
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::with_capacity(frame.encoded_len() * 2);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                codec.encode(black_box(&frame), &mut buf).unwrap();
                black_box(buf.len())
            });
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (name, frame) in cases() {
        g.throughput(Throughput::Bytes(frame.encoded_len() as u64));
        let mut one = BytesMut::new();
        FrameCodec::new().encode(&frame, &mut one).unwrap();
        let mut stream = BytesMut::with_capacity(one.len() * BATCH);
        for _ in 0..BATCH {
            stream.extend_from_slice(&one);
        }
        let stream = stream.freeze();
        g.bench_function(name, |b| {
            // Decode from one read buffer holding up to BATCH frames, as a
            // framed reader does; refilling the buffer is not timed.
            b.iter_custom(|iters| {
                let mut codec = FrameCodec::new();
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH as u64) as usize;
                    let mut buf = BytesMut::from(&stream[..one.len() * n]);
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(codec.decode(&mut buf).unwrap());
                    }
                    total += start.elapsed();
                    left -= n as u64;
                }
                total
            });
        });
    }
    g.finish();
}

fn udp_header(c: &mut Criterion) {
    let mut g = c.benchmark_group("udp_header");
    let mut d = UdpHeader {
        kind: UdpKind::Data,
        binding_id: 1,
        binding_token: 2,
    }
    .to_array()
    .to_vec();
    d.resize(16 + 1200, 0x80);
    g.throughput(Throughput::Bytes(d.len() as u64));
    g.bench_function("parse_1200B", |b| {
        b.iter(|| UdpHeader::parse(black_box(&d)).unwrap().0)
    });
    g.finish();
}

criterion_group!(benches, encode, decode, udp_header);
criterion_main!(benches);
