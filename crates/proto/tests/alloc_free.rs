//! Decoding a 1200-byte datagram frame allocates nothing (dhat heap profiler
//! as the global allocator, in a test binary of its own).

use bytes::{Bytes, BytesMut};
use cloudproxy_proto::codec::FrameCodec;
use cloudproxy_proto::frame::{Frame, HEADER_LEN};
use cloudproxy_proto::udp::UdpHeader;
use tokio_util::codec::Encoder;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn decoding_datagram_frames_does_not_allocate() {
    let _profiler = dhat::Profiler::builder().testing().build();

    const N: usize = 1000;
    let mut codec = FrameCodec::new();
    let frame = Frame::Datagram(Bytes::from(vec![0x5a; 1200]));
    let mut buf = BytesMut::with_capacity((N + 1) * (HEADER_LEN + 1200));
    for _ in 0..=N {
        codec.encode(&frame, &mut buf).unwrap();
    }
    // The first split turns the read buffer into a shared one (one
    // allocation per buffer, not per frame), as in any framed reader.
    let warm = codec.decode(&mut buf).unwrap().unwrap();
    drop(warm);

    let before = dhat::HeapStats::get();
    let mut total = 0;
    for _ in 0..N {
        match codec.decode(&mut buf).unwrap() {
            Some(Frame::Datagram(p)) => total += p.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    let after = dhat::HeapStats::get();
    assert_eq!(total, N * 1200);
    dhat::assert_eq!(after.total_blocks - before.total_blocks, 0);

    // Control: the copying parse does allocate, so the counter is live.
    let mut one = Vec::new();
    frame.encode(&mut one);
    let before = dhat::HeapStats::get();
    let copied = Frame::parse(&one).unwrap();
    let after = dhat::HeapStats::get();
    assert_eq!(copied, frame);
    dhat::assert!(after.total_blocks > before.total_blocks);

    // The UDP relay header parse is allocation-free too.
    let mut dgram = UdpHeader {
        kind: cloudproxy_proto::udp::UdpKind::Data,
        binding_id: 1,
        binding_token: 2,
    }
    .to_array()
    .to_vec();
    dgram.resize(16 + 1200, 0);
    let before = dhat::HeapStats::get();
    for _ in 0..N {
        let (h, p) = UdpHeader::parse(&dgram).unwrap();
        assert_eq!((h.binding_id, p.len()), (1, 1200));
    }
    let after = dhat::HeapStats::get();
    dhat::assert_eq!(after.total_blocks - before.total_blocks, 0);
}
