//! Sequence numbers, cumulative acknowledgements and resume for the reliable
//! message channel between a client and the media edge (`docs/protocol.md`
//! §9.2 and §9.6). Both ends use the same two halves: an [`Outbox`] for what
//! they send and an [`Inbox`] for what they receive.
//!
//! Across a failover each side resends only what lies above the peer's
//! high-water mark (`Join.resume.last_received` / `Joined.last_received`) and
//! drops duplicates by sequence number, so every message arrives exactly once
//! and in order.
//!
//! ```
//! use bytes::Bytes;
//! use cloudproxy_proto::reliable::{Inbox, Outbox, Received};
//!
//! let mut out = Outbox::new(7);
//! let mut inbox = Inbox::new();
//! let m1 = out.push(Bytes::from_static(b"one"));
//! let m2 = out.push(Bytes::from_static(b"two"));
//! assert_eq!(inbox.receive(&m1), Received::Deliver);
//! // The connection breaks before m2 arrives; after the resume the peer says
//! // it has everything up to 1, so only m2 is resent:
//! let resend: Vec<_> = out.resend_after(inbox.last_received()).collect();
//! assert_eq!(resend, vec![m2.clone()]);
//! assert_eq!(inbox.receive(&m2), Received::Deliver);
//! assert_eq!(inbox.receive(&m2), Received::Duplicate); // a second copy is dropped
//! out.acknowledge(inbox.ack());
//! assert_eq!(out.unacked(), 0);
//! ```

use std::collections::VecDeque;

use bytes::Bytes;

use crate::frame::Message;

/// The sending half: numbers messages from 1 and keeps them until acknowledged.
///
/// A client stamps its own member id on everything it sends ([`push`](Self::push));
/// the edge relays many senders to one recipient in the recipient's own
/// sequence space ([`push_from`](Self::push_from)).
#[derive(Debug, Clone)]
pub struct Outbox {
    from: u32,
    next_seq: u64,
    unacked: VecDeque<Message>,
    /// Payload bytes not yet acknowledged (the edge's memory limit).
    bytes: usize,
}

impl Outbox {
    /// An empty outbox for a sender whose member id is `from`.
    #[must_use]
    pub fn new(from: u32) -> Self {
        Self {
            from,
            next_seq: 1,
            unacked: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Numbers `payload` and keeps it until acknowledged; returns the message to send.
    pub fn push(&mut self, payload: Bytes) -> Message {
        self.push_from(self.from, payload)
    }

    /// Like [`push`](Self::push), for a message from member `from` (a relay
    /// forwarding other members' messages).
    pub fn push_from(&mut self, from: u32, payload: Bytes) -> Message {
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

    /// Handles a cumulative `Ack(seq)`: drops every message up to `seq`.
    /// Acknowledgements for messages never sent are ignored.
    pub fn acknowledge(&mut self, seq: u64) {
        let seq = seq.min(self.next_seq - 1);
        while let Some(m) = self.unacked.front().filter(|m| m.seq <= seq) {
            self.bytes -= m.payload.len();
            self.unacked.pop_front();
        }
    }

    /// After a resume: forgets what the peer already has (`last_received`) and
    /// yields, in order, every message it still needs.
    pub fn resend_after(&mut self, last_received: u64) -> impl Iterator<Item = Message> + '_ {
        self.acknowledge(last_received);
        self.unacked.iter().cloned()
    }

    /// Messages sent and not yet acknowledged.
    #[must_use]
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Payload bytes sent and not yet acknowledged.
    #[must_use]
    pub fn unacked_bytes(&self) -> usize {
        self.bytes
    }

    /// The sequence number the next message gets.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sets the member id used as `from` (it is assigned by `Joined`).
    pub fn set_from(&mut self, from: u32) {
        self.from = from;
        for m in &mut self.unacked {
            m.from = from;
        }
    }
}

/// What [`Inbox::receive`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Next in order: deliver it to the application.
    Deliver,
    /// Already delivered: drop it (but keep acknowledging).
    Duplicate,
    /// Beyond a gap: drop it; the sender resends in order.
    Gap,
}

/// The receiving half: delivers in order, drops duplicates, produces acks.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    last: u64,
    unacked_deliveries: u32,
}

impl Inbox {
    /// Nothing received yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies an incoming message and advances when it is the next one.
    pub fn receive(&mut self, m: &Message) -> Received {
        if m.seq == self.last + 1 {
            self.last = m.seq;
            self.unacked_deliveries += 1;
            Received::Deliver
        } else if m.seq <= self.last {
            Received::Duplicate
        } else {
            Received::Gap
        }
    }

    /// Highest sequence number delivered in order (for `Ack` and resume).
    #[must_use]
    pub fn last_received(&self) -> u64 {
        self.last
    }

    /// True when 16 deliveries are unacknowledged (send an `Ack` now; also
    /// send one at most 200 ms after any unacknowledged delivery).
    #[must_use]
    pub fn ack_due(&self) -> bool {
        self.unacked_deliveries >= 16
    }

    /// True when some delivery is not yet acknowledged.
    #[must_use]
    pub fn has_unacked(&self) -> bool {
        self.unacked_deliveries > 0
    }

    /// The value for an `Ack` frame; marks everything as acknowledged.
    pub fn ack(&mut self) -> u64 {
        self.unacked_deliveries = 0;
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_outbox_numbers_acks_and_resends_with_per_message_sender() {
        let mut out = Outbox::new(0);
        let a = out.push_from(10, Bytes::from_static(b"a"));
        let b = out.push_from(20, Bytes::from_static(b"bb"));
        let c = out.push_from(10, Bytes::from_static(b"ccc"));
        assert_eq!((a.seq, b.seq, c.seq), (1, 2, 3));
        assert_eq!((a.from, b.from, c.from), (10, 20, 10));
        assert_eq!((out.unacked(), out.unacked_bytes()), (3, 6));
        out.acknowledge(1);
        assert_eq!((out.unacked(), out.unacked_bytes()), (2, 5));
        let resent: Vec<_> = out.resend_after(2).collect();
        assert_eq!(resent, vec![c]);
        out.acknowledge(u64::MAX); // clamped, not a panic
        assert_eq!((out.unacked(), out.unacked_bytes()), (0, 0));
        assert_eq!(out.push_from(20, Bytes::new()).seq, 4);
    }
}
