//! Exactly-once, in-order delivery of reliable messages across relay
//! failovers (docs/protocol.md §9.6), with random loss points.

use bytes::Bytes;
use cloudproxy_proto::frame::Message;
use cloudproxy_proto::reliable::{Inbox, Outbox, Received};
use proptest::prelude::*;

proptest! {
    /// Messages go out in bursts; each burst's "connection" may break after
    /// any number of them (the rest are lost in flight, acks too). A resume
    /// exchanges high-water marks and resends. The receiver must end up with
    /// every message exactly once, in order.
    #[test]
    fn exactly_once_across_failovers(
        bursts in prop::collection::vec((1usize..20, 0usize..20, any::<bool>()), 1..12)
    ) {
        let mut out = Outbox::new(1);
        let mut inbox = Inbox::new();
        let mut delivered: Vec<Bytes> = Vec::new();
        let mut sent = 0u64;
        let mut in_flight: Vec<Message> = Vec::new();
        for (count, arrive, ack_arrives) in bursts {
            for _ in 0..count {
                sent += 1;
                in_flight.push(out.push(Bytes::from(sent.to_be_bytes().to_vec())));
            }
            // Only the first `arrive` messages make it before the break.
            for m in in_flight.drain(..).take(arrive) {
                if inbox.receive(&m) == Received::Deliver {
                    delivered.push(m.payload.clone());
                }
            }
            if ack_arrives {
                out.acknowledge(inbox.ack());
            }
            // Failover: the receiver's Join/Joined carries last_received.
            for m in out.resend_after(inbox.last_received()) {
                in_flight.push(m);
            }
            // Resent messages arrive on the new connection; some may be duplicates.
            let again: Vec<Message> = in_flight.clone();
            for m in in_flight.drain(..).chain(again.into_iter().take(1)) {
                match inbox.receive(&m) {
                    Received::Deliver => delivered.push(m.payload.clone()),
                    Received::Duplicate => {}
                    Received::Gap => prop_assert!(false, "resend left a gap at {}", m.seq),
                }
            }
        }
        let expected: Vec<Bytes> = (1..=sent).map(|i| Bytes::from(i.to_be_bytes().to_vec())).collect();
        prop_assert_eq!(delivered, expected);
        out.acknowledge(inbox.ack());
        prop_assert_eq!(out.unacked(), 0);
    }
}

#[test]
fn acks_are_cumulative_and_bounded() {
    let mut out = Outbox::new(3);
    let ms: Vec<_> = (0..20).map(|i| out.push(Bytes::from(vec![i]))).collect();
    assert_eq!(ms[0].seq, 1);
    assert_eq!(ms[19].seq, 20);
    out.acknowledge(5);
    assert_eq!(out.unacked(), 15);
    out.acknowledge(3); // stale ack
    assert_eq!(out.unacked(), 15);
    out.acknowledge(1_000); // beyond what was sent: clamps
    assert_eq!(out.unacked(), 0);
    assert_eq!(out.next_seq(), 21);

    let mut inbox = Inbox::new();
    assert_eq!(inbox.receive(&ms[1]), Received::Gap);
    for m in &ms[..16] {
        assert_eq!(inbox.receive(m), Received::Deliver);
    }
    assert!(inbox.ack_due());
    assert_eq!(inbox.ack(), 16);
    assert!(!inbox.has_unacked());
    assert_eq!(inbox.receive(&ms[3]), Received::Duplicate);
}

#[test]
fn member_id_is_updated_on_resend() {
    let mut out = Outbox::new(0);
    let _ = out.push(Bytes::from_static(b"early"));
    out.set_from(9);
    let resent: Vec<_> = out.resend_after(0).collect();
    assert_eq!(resent[0].from, 9);
}
