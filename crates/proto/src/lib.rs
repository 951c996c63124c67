//! # cloudproxy-proto
//!
//! The wire protocol of the cloud proxy, with no sockets, no async runtime and
//! no clock of its own (the quinn-proto model). The full specification is
//! `docs/protocol.md` in the repository; this crate implements it:
//!
//! * [`frame`]: the 8-byte frame header and every frame (allocation, relay
//!   binding, UDP-over-TCP datagrams, client ↔ media edge messages), with
//!   `parse` / `decode` / `encode` / `encoded_len`;
//! * [`codec`]: framing over a byte stream (TCP), zero-copy payloads; with
//!   the `codec` feature also as a `tokio_util::codec` `Decoder`/`Encoder`;
//! * [`udp`]: the 16-byte header of media datagrams on the UDP relay;
//! * [`ticket`]: HMAC-SHA256 tickets with key ids, and credential proofs;
//! * [`reliable`]: sequence numbers, cumulative acks and resume for the
//!   client ↔ edge message channel (exactly once across a relay failover);
//! * [`session`]: the client ↔ media edge message channel's two sides;
//! * [`client`] and [`server`]: sans-I/O state machines — time comes in as
//!   an argument, outputs are polled (`poll_transmit`, `poll_timeout`,
//!   `poll_event`); every machine implements [`Machine`], so one driver runs
//!   them all.
//!
//! ```
//! use bytes::BytesMut;
//! use cloudproxy_proto::frame::{Frame, Message};
//!
//! let msg = Frame::Message(Message { seq: 1, from: 0, payload: "hello".into() });
//! let mut buf = BytesMut::new();
//! msg.encode(&mut buf);
//! assert_eq!(buf.len(), msg.encoded_len());
//! assert_eq!(Frame::decode(buf.freeze()).unwrap(), msg);
//! ```
//!
//! Ports (all configurable by operators): allocation service
//! [`DEFAULT_ALLOCATION_PORTS`] over TCP and UDP, TCP relay
//! [`DEFAULT_TCP_RELAY_PORT`], UDP relay [`DEFAULT_UDP_RELAY_PORTS`].

pub mod client;
pub mod codec;
mod error;
pub mod frame;
mod machine;
pub mod reliable;
pub mod server;
pub mod session;
pub mod ticket;
mod time;
mod types;
pub mod udp;
mod wire;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use error::{CodecError, ErrorCode, FoundValue, PeerMisbehaved, SessionError, TicketError};
pub use machine::Machine;
pub use time::Timebase;
pub use types::{
    ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, Address, AppId, Capabilities, ChannelName, DomainName,
    MAX_APP_ID_LEN, MAX_CHANNEL_LEN, MAX_DOMAIN_LEN, MAX_TEXT_LEN, MAX_TICKET_LEN, SealedTicket,
    Text, Transports,
};

/// Default allocation-service ports, TCP and UDP, in the order clients try them.
pub const DEFAULT_ALLOCATION_PORTS: [u16; 4] = [1080, 8000, 25000, 9700];
/// Default TCP relay port (message data and UDP-over-TCP).
pub const DEFAULT_TCP_RELAY_PORT: u16 = 4000;
/// Default UDP relay port range (media), inclusive.
pub const DEFAULT_UDP_RELAY_PORTS: std::ops::RangeInclusive<u16> = 4500..=4650;
/// Smallest UDP request (`AllocateRequest`, `Refresh`) a client sends: it pads
/// to this size so the answer always fits in the request's size.
pub const MIN_UDP_REQUEST: usize = 1200;

/// The transport a state machine runs over.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Path {
    /// A TCP connection: a byte stream of frames.
    Tcp,
    /// A UDP socket: one frame or relay datagram per datagram.
    Udp,
}
