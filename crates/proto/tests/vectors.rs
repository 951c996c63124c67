//! Test vectors printed in `docs/protocol.md` (§11): an implementation in
//! another language can check itself against the same bytes.

use bytes::Bytes;
use cloudproxy_proto::frame::{Frame, Message};
use cloudproxy_proto::ticket::{Ticket, TicketKeyRing, credential_proof};
use cloudproxy_proto::udp::{UdpHeader, UdpKind};
use cloudproxy_proto::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn credential_proof_vector() {
    let proof = credential_proof(
        b"demo-secret",
        &AppId::new("demo-app").unwrap(),
        &[7; 16],
        1_700_000_000,
    );
    assert_eq!(
        hex(&proof),
        "d108cd47cdb5b1c82f3e7f5227f3bf31af30e49b12739718b09b4f502d934e70"
    );
}

#[test]
fn ticket_vector() {
    let keys = TicketKeyRing::new(1, vec![0x5a; 32]);
    let sealed = keys.seal(&Ticket {
        key_id: 1,
        session_id: 42,
        app_id: AppId::new("demo-app").unwrap(),
        transports: Transports::ALL,
        created_at: 1_700_000_000,
        expires_at: 1_700_000_600,
    });
    assert_eq!(
        hex(sealed.as_bytes()),
        "0100000001000000000000002a000000006553f100000000006553f358070864656d6f2d617070\
         fa6d74b6da3f5e3666a382a3fa9b018c1259f692042f321d351e4af88d5f25a4"
    );
}

#[test]
fn frame_vectors() {
    assert_eq!(
        hex(&Frame::Ping(1).to_bytes()),
        "4350011300000008".to_owned() + "0000000000000001"
    );
    let m = Frame::Message(Message {
        seq: 1,
        from: 2,
        payload: Bytes::from_static(b"hi"),
    });
    assert_eq!(
        hex(&m.to_bytes()),
        "435001440000000e000000000000000100000002".to_owned() + "6869"
    );
    let h = UdpHeader {
        kind: UdpKind::Data,
        binding_id: 0x0102_0304,
        binding_token: 0x1122_3344_5566_7788,
    };
    assert_eq!(
        hex(&h.to_array()),
        "ca0100000102030411223344556677".to_owned() + "88"
    );
}
