//! The per-recipient outgoing message queue.
//!
//! `cloudproxy_proto::reliable::Outbox` stamps every message with the one
//! member id it was built with; the edge relays messages from *many* senders
//! to one recipient, each carrying its own sender's id in `from`. This queue
//! follows the same rules (numbers from 1, cumulative acknowledgement,
//! `resend_after` the peer's high-water mark) with a `from` per message and a
//! running byte count for the edge's memory limit. The receiving side uses
//! `cloudproxy_proto::reliable::Inbox` unchanged.

use std::collections::VecDeque;

use bytes::Bytes;
use cloudproxy_proto::frame::Message;

/// Messages to one recipient, numbered in the recipient's own sequence space
/// and kept until it acknowledges them.
#[derive(Debug)]
pub(crate) struct RecipientOutbox {
    next_seq: u64,
    unacked: VecDeque<Message>,
    bytes: usize,
}

impl RecipientOutbox {
    pub(crate) fn new() -> Self {
        Self {
            next_seq: 1,
            unacked: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Numbers a message from member `from` and keeps it until acknowledged.
    pub(crate) fn push(&mut self, from: u32, payload: Bytes) -> Message {
        let m = Message {
            seq: self.next_seq,
            from,
            payload,
        };
        self.next_seq += 1;
        self.bytes += m.payload.len();
        self.unacked.push_back(m.clone());
        m
    }

    /// Cumulative acknowledgement: forgets every message up to `seq`. Values
    /// above what was sent are clamped (a confused or hostile client cannot
    /// acknowledge the future).
    pub(crate) fn acknowledge(&mut self, seq: u64) {
        let seq = seq.min(self.next_seq - 1);
        while let Some(m) = self.unacked.front() {
            if m.seq > seq {
                break;
            }
            self.bytes -= m.payload.len();
            self.unacked.pop_front();
        }
    }

    /// After a resume: forgets what the recipient already has and yields, in
    /// order, every message it still needs.
    pub(crate) fn resend_after(&mut self, last_received: u64) -> impl Iterator<Item = &Message> {
        self.acknowledge(last_received);
        self.unacked.iter()
    }

    /// Messages not yet acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Payload bytes not yet acknowledged.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_acks_and_resends_with_per_message_sender() {
        let mut out = RecipientOutbox::new();
        let a = out.push(10, Bytes::from_static(b"a"));
        let b = out.push(20, Bytes::from_static(b"bb"));
        let c = out.push(10, Bytes::from_static(b"ccc"));
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 3));
        assert_eq!((a.from, b.from, c.from), (10, 20, 10));
        assert_eq!((out.len(), out.bytes()), (3, 6));
        out.acknowledge(1);
        assert_eq!((out.len(), out.bytes()), (2, 5));
        let resent: Vec<_> = out.resend_after(2).cloned().collect();
        assert_eq!(resent, vec![c]);
        out.acknowledge(u64::MAX); // clamped, not a panic
        assert_eq!((out.len(), out.bytes()), (0, 0));
        assert_eq!(out.push(20, Bytes::new()).seq, 4);
    }
}
