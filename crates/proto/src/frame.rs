//! Frames: the 8-byte [`FrameHeader`] and every frame body.
//!
//! Every frame on a TCP connection (allocation service, relay handshake,
//! datagram mode, client ↔ media edge) and every control datagram on UDP has
//! the same layout: an 8-byte header followed by `length` bytes of body.
//!
//! ```text
//!  0        1        2        3        4        5        6        7
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | magic 0x43 0x50 | version|  type  | flags  |   length (u24, BE)       |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | body: `length` bytes, at most 65 536                                  |
//! ```
//!
//! ```
//! use bytes::BytesMut;
//! use cloudproxy_proto::frame::Frame;
//!
//! let frame = Frame::Ping(7);
//! let mut buf = BytesMut::new();
//! frame.encode(&mut buf);
//! assert_eq!(buf.len(), frame.encoded_len());
//! assert_eq!(Frame::parse(&buf).unwrap(), frame);
//! ```

use std::fmt;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes};

use crate::error::{CodecError, ErrorCode};
use crate::types::{
    Address, AppId, Capabilities, ChannelName, SealedTicket, Text, Transports, read_socket_addr,
    socket_addr_len, write_socket_addr,
};
use crate::wire::Reader;

/// The two magic bytes that start every frame: ASCII `"CP"`.
pub const MAGIC: u16 = 0x4350;
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// The largest frame body the protocol allows (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The largest media datagram payload: the body of a `Datagram` frame and the
/// payload after a UDP relay header. Sized so a relayed datagram fits a
/// 1500-byte MTU path with IPv6 headers.
pub const MAX_DATAGRAM_PAYLOAD: usize = 1400;
/// Most relay endpoints of one kind in an `AllocateOk`.
pub const MAX_RELAYS: usize = 16;
/// Flag bit: a receiver that does not know this frame type skips the frame
/// instead of failing the connection.
pub const FLAG_IGNORABLE: u8 = 0x80;

/// The type byte of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameType {
    /// 0x01, client → allocation service.
    AllocateRequest = 0x01,
    /// 0x02, allocation service → client.
    AllocateOk = 0x02,
    /// 0x03, any direction: a fatal error with a code.
    Error = 0x03,
    /// 0x04, client → allocation service: renew a ticket.
    Refresh = 0x04,
    /// 0x10, client → relay: bind a connection or UDP path to a destination.
    Bind = 0x10,
    /// 0x11, relay → client.
    BindOk = 0x11,
    /// 0x12, both ways in datagram mode: one media datagram.
    Datagram = 0x12,
    /// 0x13, both ways: liveness probe.
    Ping = 0x13,
    /// 0x14, both ways: answer to `Ping`.
    Pong = 0x14,
    /// 0x15, both ways: orderly close.
    Close = 0x15,
    /// 0x40, client → media edge.
    Join = 0x40,
    /// 0x41, media edge → client.
    Joined = 0x41,
    /// 0x42, media edge → client.
    JoinRefused = 0x42,
    /// 0x43, client → media edge.
    Leave = 0x43,
    /// 0x44, both ways: reliable ordered message.
    Message = 0x44,
    /// 0x45, both ways: cumulative acknowledgement.
    Ack = 0x45,
    /// 0x46, both ways: media datagram (inside a UDP payload or `Datagram` frame).
    Media = 0x46,
    /// 0x47, media edge → client.
    MemberJoined = 0x47,
    /// 0x48, media edge → client.
    MemberLeft = 0x48,
}

impl fmt::Display for FrameType {
    /// The frame's protocol name and its type byte, e.g. `Join (0x40)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The variant names are the protocol's frame names.
        write!(f, "{self:?} ({:#04x})", *self as u8)
    }
}

impl FrameType {
    /// Maps a type byte to a known type.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::AllocateRequest,
            0x02 => Self::AllocateOk,
            0x03 => Self::Error,
            0x04 => Self::Refresh,
            0x10 => Self::Bind,
            0x11 => Self::BindOk,
            0x12 => Self::Datagram,
            0x13 => Self::Ping,
            0x14 => Self::Pong,
            0x15 => Self::Close,
            0x40 => Self::Join,
            0x41 => Self::Joined,
            0x42 => Self::JoinRefused,
            0x43 => Self::Leave,
            0x44 => Self::Message,
            0x45 => Self::Ack,
            0x46 => Self::Media,
            0x47 => Self::MemberJoined,
            0x48 => Self::MemberLeft,
            _ => return None,
        })
    }
}

/// The fixed 8-byte header in front of every frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// The raw type byte (may be unknown to this implementation).
    pub frame_type: u8,
    /// Flag bits; only [`FLAG_IGNORABLE`] is defined.
    pub flags: u8,
    /// Body length in bytes (at most [`MAX_PAYLOAD`]).
    pub length: usize,
}

impl FrameHeader {
    /// Parses and validates a header: magic, version and the length limit.
    ///
    /// `max_payload` lets a receiver enforce a lower limit than [`MAX_PAYLOAD`].
    /// Only the first [`HEADER_LEN`] bytes are read.
    pub fn parse(data: &[u8], max_payload: usize) -> Result<Self, CodecError> {
        check_magic(data)?;
        if data.len() < HEADER_LEN {
            return Err(CodecError::Truncated {
                field: "frame header",
                offset: 0,
                needed: HEADER_LEN,
                available: data.len(),
            });
        }
        if data[2] != VERSION {
            return Err(CodecError::UnsupportedVersion {
                offset: 2,
                expected: VERSION,
                found: data[2],
            });
        }
        let length = u32::from_be_bytes([0, data[5], data[6], data[7]]) as usize;
        let max = max_payload.min(MAX_PAYLOAD);
        if length > max {
            return Err(CodecError::TooLarge {
                field: "frame length",
                found: length,
                max,
            });
        }
        Ok(Self {
            frame_type: data[3],
            flags: data[4],
            length,
        })
    }

    /// Writes the header.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u16(MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(self.frame_type);
        dst.put_u8(self.flags);
        let len = self.length as u32;
        dst.put_slice(&len.to_be_bytes()[1..]);
    }
}

/// Checks the magic as soon as two bytes are there (so garbage on a port is
/// refused without waiting for a whole header).
pub(crate) fn check_magic(data: &[u8]) -> Result<(), CodecError> {
    if data.len() >= 2 {
        let found = u16::from_be_bytes([data[0], data[1]]);
        if found != MAGIC {
            return Err(CodecError::BadMagic {
                expected: MAGIC,
                found,
            });
        }
    } else if data.len() == 1 && data[0] != (MAGIC >> 8) as u8 {
        return Err(CodecError::BadMagic {
            expected: MAGIC,
            found: u16::from(data[0]) << 8,
        });
    }
    Ok(())
}

/// Client → allocation service: ask for a session, a ticket and relay endpoints.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AllocateRequest {
    /// Features the client supports.
    pub capabilities: Capabilities,
    /// Transports the client wants.
    pub transports: Transports,
    /// Client wall-clock time, unix seconds (bound into `proof`).
    pub timestamp: u64,
    /// 16 random bytes, fresh per request (bound into `proof`).
    pub nonce: [u8; 16],
    /// The app id.
    pub app_id: AppId,
    /// `HMAC-SHA256(app secret, "cloudproxy-alloc-v1" || app_id || nonce || timestamp)`,
    /// see [`crate::ticket::credential_proof`].
    pub proof: [u8; 32],
    /// The client library's version string, for logs.
    pub client_version: Text,
    /// Number of zero bytes after the fields. Over UDP the request is padded to
    /// at least [`crate::MIN_UDP_REQUEST`] bytes so the answer never exceeds it.
    pub padding: usize,
}

/// Allocation service → client: the session, its ticket and the relays to use.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AllocateOk {
    /// Random session id chosen by the service.
    pub session_id: u64,
    /// Capabilities both sides support.
    pub capabilities: Capabilities,
    /// Transports the ticket allows.
    pub transports: Transports,
    /// Seconds until the ticket expires.
    pub lifetime_secs: u32,
    /// How often the client sends keepalives on an idle binding, seconds.
    pub keepalive_secs: u16,
    /// After how many seconds without traffic the relay drops a binding.
    pub idle_timeout_secs: u16,
    /// The ticket, opaque to the client.
    pub ticket: SealedTicket,
    /// TCP relay endpoints (message data, UDP-over-TCP), in preference order.
    pub tcp_relays: Vec<SocketAddr>,
    /// UDP relay endpoints (media), in preference order.
    pub udp_relays: Vec<SocketAddr>,
}

/// A fatal error with a code; also the body of `JoinRefused`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorFrame {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable detail (may be empty).
    pub message: Text,
}

impl ErrorFrame {
    /// An error frame with the code's standard user text as message.
    #[must_use]
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: Text::truncated(code.user_text()),
        }
    }

    /// An error frame with a specific message.
    #[must_use]
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Text::truncated(message),
        }
    }
}

/// Client → allocation service: renew a still-valid ticket for the same session.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refresh {
    /// The current, unexpired ticket.
    pub ticket: SealedTicket,
    /// Zero bytes of padding (UDP anti-amplification), as in [`AllocateRequest`].
    pub padding: usize,
}

/// What a bound relay connection carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum BindMode {
    /// TCP only: after `BindOk` the connection is a raw byte pipe to a TCP destination.
    Stream = 1,
    /// Datagrams to a UDP destination: native on the UDP relay, or `Datagram`
    /// frames on a TCP relay connection (UDP-over-TCP).
    Datagram = 2,
}

/// Proof that a UDP `Bind` re-binds an existing binding from a new client address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rebind {
    /// The binding's id from `BindOk`.
    pub binding_id: u32,
    /// The binding's token from `BindOk`.
    pub binding_token: u64,
}

/// Client → relay: bind this TCP connection or UDP path to a destination.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Bind {
    /// A valid ticket from the allocation service.
    pub ticket: SealedTicket,
    /// Stream or datagram.
    pub mode: BindMode,
    /// Where the relay forwards to.
    pub destination: Address,
    /// UDP only: re-bind an existing binding (NAT rebinding).
    pub rebind: Option<Rebind>,
}

/// Relay → client: the binding exists.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BindOk {
    /// Binding id, carried in every UDP relay datagram header (0 on TCP).
    pub binding_id: u32,
    /// Random token, carried in every UDP relay datagram header (0 on TCP).
    pub binding_token: u64,
    /// The mode that was bound.
    pub mode: BindMode,
    /// Keepalive interval the client uses, seconds.
    pub keepalive_secs: u16,
    /// Idle timeout the relay applies, seconds.
    pub idle_timeout_secs: u16,
}

/// Earlier membership a `Join` asks to resume after a relay failover.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Resume {
    /// Member id from the earlier `Joined`.
    pub member_id: u32,
    /// Resume token from the earlier `Joined`.
    pub resume_token: u64,
    /// Highest message sequence number the client received in order.
    pub last_received: u64,
}

/// Client → media edge: join a channel.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Join {
    /// The app id.
    pub app_id: AppId,
    /// The channel name.
    pub channel: ChannelName,
    /// The user id chosen by the app.
    pub user_id: u32,
    /// Set when resuming after a failover.
    pub resume: Option<Resume>,
}

/// Media edge → client: the join succeeded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Joined {
    /// Member id within the channel (stable across a resume).
    pub member_id: u32,
    /// Secret to present in a later `Join` to resume this membership.
    pub resume_token: u64,
    /// Token the client puts in every `Media` it sends.
    pub media_token: u64,
    /// Highest message sequence number the edge received in order from this
    /// client (0 for a fresh join); the client resends everything above it.
    pub last_received: u64,
    /// True when an earlier membership was resumed.
    pub resumed: bool,
}

/// A reliable, ordered message (sequence numbers start at 1 per direction).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Sequence number, per direction, starting at 1, +1 per message.
    pub seq: u64,
    /// Sender's member id (the edge fills it in on delivery).
    pub from: u32,
    /// The application's bytes.
    pub payload: Bytes,
}

/// A media datagram, carried inside a UDP relay payload or a `Datagram` frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Media {
    /// Client → edge: the sender's own member id. Edge → client: the sender's.
    pub member_id: u32,
    /// Client → edge: the `media_token` from `Joined`. Edge → client: 0.
    pub token: u64,
    /// The media bytes.
    pub payload: Bytes,
}

/// A channel member, as announced by `MemberJoined` / `MemberLeft`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Member {
    /// Member id within the channel.
    pub member_id: u32,
    /// The member's user id.
    pub user_id: u32,
}

/// Every frame of protocol version 1.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// See [`AllocateRequest`].
    AllocateRequest(AllocateRequest),
    /// See [`AllocateOk`].
    AllocateOk(AllocateOk),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
    /// See [`Refresh`].
    Refresh(Refresh),
    /// See [`Bind`].
    Bind(Bind),
    /// See [`BindOk`].
    BindOk(BindOk),
    /// One media datagram (UDP-over-TCP), at most [`MAX_DATAGRAM_PAYLOAD`] bytes.
    Datagram(Bytes),
    /// Liveness probe with an opaque value the answer echoes.
    Ping(u64),
    /// Answer to `Ping`, echoing its value.
    Pong(u64),
    /// Orderly close; no body.
    Close,
    /// See [`Join`].
    Join(Join),
    /// See [`Joined`].
    Joined(Joined),
    /// The edge refused the join; body as [`ErrorFrame`].
    JoinRefused(ErrorFrame),
    /// Leave the channel; no body.
    Leave,
    /// See [`Message`].
    Message(Message),
    /// Cumulative acknowledgement: every message up to this sequence number arrived.
    Ack(u64),
    /// See [`Media`].
    Media(Media),
    /// A member joined the channel.
    MemberJoined(Member),
    /// A member left the channel.
    MemberLeft(Member),
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AllocateRequest(x) => fmt::Debug::fmt(x, f),
            Self::AllocateOk(x) => fmt::Debug::fmt(x, f),
            Self::Error(x) => f.debug_tuple("Error").field(x).finish(),
            Self::Refresh(x) => fmt::Debug::fmt(x, f),
            Self::Bind(x) => fmt::Debug::fmt(x, f),
            Self::BindOk(x) => fmt::Debug::fmt(x, f),
            Self::Datagram(b) => write!(f, "Datagram({} bytes)", b.len()),
            Self::Ping(n) => write!(f, "Ping({n})"),
            Self::Pong(n) => write!(f, "Pong({n})"),
            Self::Close => f.write_str("Close"),
            Self::Join(x) => fmt::Debug::fmt(x, f),
            Self::Joined(x) => fmt::Debug::fmt(x, f),
            Self::JoinRefused(x) => f.debug_tuple("JoinRefused").field(x).finish(),
            Self::Leave => f.write_str("Leave"),
            Self::Message(m) => write!(
                f,
                "Message {{ seq: {}, from: {}, {} bytes }}",
                m.seq,
                m.from,
                m.payload.len()
            ),
            Self::Ack(n) => write!(f, "Ack({n})"),
            Self::Media(m) => write!(
                f,
                "Media {{ member_id: {}, {} bytes }}",
                m.member_id,
                m.payload.len()
            ),
            Self::MemberJoined(m) => f.debug_tuple("MemberJoined").field(m).finish(),
            Self::MemberLeft(m) => f.debug_tuple("MemberLeft").field(m).finish(),
        }
    }
}

/// Where payload `Bytes` come from while parsing: a shared buffer to slice
/// (zero-copy) or a borrowed slice to copy.
#[derive(Clone, Copy)]
enum Source<'a> {
    Shared(&'a Bytes),
    Borrowed,
}

impl Source<'_> {
    fn payload(self, frame: &[u8], start: usize, end: usize) -> Bytes {
        match self {
            Self::Shared(b) => b.slice(start..end),
            Self::Borrowed => Bytes::copy_from_slice(&frame[start..end]),
        }
    }
}

impl Frame {
    /// The frame's type.
    #[must_use]
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::AllocateRequest(_) => FrameType::AllocateRequest,
            Self::AllocateOk(_) => FrameType::AllocateOk,
            Self::Error(_) => FrameType::Error,
            Self::Refresh(_) => FrameType::Refresh,
            Self::Bind(_) => FrameType::Bind,
            Self::BindOk(_) => FrameType::BindOk,
            Self::Datagram(_) => FrameType::Datagram,
            Self::Ping(_) => FrameType::Ping,
            Self::Pong(_) => FrameType::Pong,
            Self::Close => FrameType::Close,
            Self::Join(_) => FrameType::Join,
            Self::Joined(_) => FrameType::Joined,
            Self::JoinRefused(_) => FrameType::JoinRefused,
            Self::Leave => FrameType::Leave,
            Self::Message(_) => FrameType::Message,
            Self::Ack(_) => FrameType::Ack,
            Self::Media(_) => FrameType::Media,
            Self::MemberJoined(_) => FrameType::MemberJoined,
            Self::MemberLeft(_) => FrameType::MemberLeft,
        }
    }

    /// Length of the body (without the header).
    #[must_use]
    pub fn body_len(&self) -> usize {
        match self {
            Self::AllocateRequest(r) => {
                4 + 1 + 8 + 16 + r.app_id.wire_len() + 32 + r.client_version.wire_len() + r.padding
            }
            Self::AllocateOk(a) => {
                8 + 4
                    + 1
                    + 4
                    + 2
                    + 2
                    + a.ticket.wire_len()
                    + 1
                    + a.tcp_relays.iter().map(socket_addr_len).sum::<usize>()
                    + 1
                    + a.udp_relays.iter().map(socket_addr_len).sum::<usize>()
            }
            Self::Error(e) | Self::JoinRefused(e) => 2 + e.message.wire_len(),
            Self::Refresh(r) => r.ticket.wire_len() + r.padding,
            Self::Bind(b) => {
                b.ticket.wire_len()
                    + 1
                    + b.destination.encoded_len()
                    + 1
                    + if b.rebind.is_some() { 12 } else { 0 }
            }
            Self::BindOk(_) => 4 + 8 + 1 + 2 + 2,
            Self::Datagram(p) => p.len(),
            Self::Ping(_) | Self::Pong(_) | Self::Ack(_) => 8,
            Self::Close | Self::Leave => 0,
            Self::Join(j) => {
                j.app_id.wire_len()
                    + j.channel.wire_len()
                    + 4
                    + 1
                    + if j.resume.is_some() { 20 } else { 0 }
            }
            Self::Joined(_) => 4 + 8 + 8 + 8 + 1,
            Self::Message(m) => 8 + 4 + m.payload.len(),
            Self::Media(m) => 4 + 8 + m.payload.len(),
            Self::MemberJoined(_) | Self::MemberLeft(_) => 8,
        }
    }

    /// Exact number of bytes [`Frame::encode`] writes: header plus body.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Checks the limits that the field types cannot: body length, datagram
    /// and relay-list sizes. [`Frame::encode`] assumes this holds; the codec's
    /// encoder calls it first.
    pub fn validate(&self) -> Result<(), CodecError> {
        let body = self.body_len();
        if body > MAX_PAYLOAD {
            return Err(CodecError::TooLarge {
                field: "frame length",
                found: body,
                max: MAX_PAYLOAD,
            });
        }
        match self {
            Self::Datagram(p) if p.len() > MAX_DATAGRAM_PAYLOAD => Err(CodecError::TooLarge {
                field: "datagram payload",
                found: p.len(),
                max: MAX_DATAGRAM_PAYLOAD,
            }),
            Self::AllocateOk(a) if a.tcp_relays.len() > MAX_RELAYS => Err(CodecError::TooLarge {
                field: "tcp_relays count",
                found: a.tcp_relays.len(),
                max: MAX_RELAYS,
            }),
            Self::AllocateOk(a) if a.udp_relays.len() > MAX_RELAYS => Err(CodecError::TooLarge {
                field: "udp_relays count",
                found: a.udp_relays.len(),
                max: MAX_RELAYS,
            }),
            _ => Ok(()),
        }
    }

    /// Writes the frame (header and body). The frame must satisfy
    /// [`Frame::validate`]; exactly [`Frame::encoded_len`] bytes are written.
    pub fn encode(&self, dst: &mut impl BufMut) {
        FrameHeader {
            frame_type: self.frame_type() as u8,
            flags: 0,
            length: self.body_len(),
        }
        .encode(dst);
        match self {
            Self::AllocateRequest(r) => {
                dst.put_u32(r.capabilities.0);
                dst.put_u8(r.transports.bits());
                dst.put_u64(r.timestamp);
                dst.put_slice(&r.nonce);
                r.app_id.write(dst);
                dst.put_slice(&r.proof);
                r.client_version.write(dst);
                dst.put_bytes(0, r.padding);
            }
            Self::AllocateOk(a) => {
                dst.put_u64(a.session_id);
                dst.put_u32(a.capabilities.0);
                dst.put_u8(a.transports.bits());
                dst.put_u32(a.lifetime_secs);
                dst.put_u16(a.keepalive_secs);
                dst.put_u16(a.idle_timeout_secs);
                a.ticket.write(dst);
                dst.put_u8(a.tcp_relays.len() as u8);
                for r in &a.tcp_relays {
                    write_socket_addr(*r, dst);
                }
                dst.put_u8(a.udp_relays.len() as u8);
                for r in &a.udp_relays {
                    write_socket_addr(*r, dst);
                }
            }
            Self::Error(e) | Self::JoinRefused(e) => {
                dst.put_u16(e.code.0);
                e.message.write(dst);
            }
            Self::Refresh(r) => {
                r.ticket.write(dst);
                dst.put_bytes(0, r.padding);
            }
            Self::Bind(b) => {
                b.ticket.write(dst);
                dst.put_u8(b.mode as u8);
                b.destination.encode(dst);
                match b.rebind {
                    None => dst.put_u8(0),
                    Some(r) => {
                        dst.put_u8(1);
                        dst.put_u32(r.binding_id);
                        dst.put_u64(r.binding_token);
                    }
                }
            }
            Self::BindOk(b) => {
                dst.put_u32(b.binding_id);
                dst.put_u64(b.binding_token);
                dst.put_u8(b.mode as u8);
                dst.put_u16(b.keepalive_secs);
                dst.put_u16(b.idle_timeout_secs);
            }
            Self::Datagram(p) => dst.put_slice(p),
            Self::Ping(n) | Self::Pong(n) | Self::Ack(n) => dst.put_u64(*n),
            Self::Close | Self::Leave => {}
            Self::Join(j) => {
                j.app_id.write(dst);
                j.channel.write(dst);
                dst.put_u32(j.user_id);
                match j.resume {
                    None => dst.put_u8(0),
                    Some(r) => {
                        dst.put_u8(1);
                        dst.put_u32(r.member_id);
                        dst.put_u64(r.resume_token);
                        dst.put_u64(r.last_received);
                    }
                }
            }
            Self::Joined(j) => {
                dst.put_u32(j.member_id);
                dst.put_u64(j.resume_token);
                dst.put_u64(j.media_token);
                dst.put_u64(j.last_received);
                dst.put_u8(u8::from(j.resumed));
            }
            Self::Message(m) => {
                dst.put_u64(m.seq);
                dst.put_u32(m.from);
                dst.put_slice(&m.payload);
            }
            Self::Media(m) => {
                dst.put_u32(m.member_id);
                dst.put_u64(m.token);
                dst.put_slice(&m.payload);
            }
            Self::MemberJoined(m) | Self::MemberLeft(m) => {
                dst.put_u32(m.member_id);
                dst.put_u32(m.user_id);
            }
        }
    }

    /// Parses exactly one frame from `data` (header and whole body, nothing
    /// after it). Payloads are copied; use [`Frame::decode`] for zero-copy.
    pub fn parse(data: &[u8]) -> Result<Self, CodecError> {
        Self::parse_inner(data, Source::Borrowed)
    }

    /// Parses exactly one frame from `data` without copying payloads: they are
    /// slices of `data`.
    pub fn decode(data: Bytes) -> Result<Self, CodecError> {
        Self::parse_inner(&data, Source::Shared(&data))
    }

    fn parse_inner(data: &[u8], src: Source<'_>) -> Result<Self, CodecError> {
        let header = FrameHeader::parse(data, MAX_PAYLOAD)?;
        let total = HEADER_LEN + header.length;
        if data.len() < total {
            return Err(CodecError::Truncated {
                field: "frame body",
                offset: HEADER_LEN,
                needed: header.length,
                available: data.len() - HEADER_LEN,
            });
        }
        if data.len() > total {
            return Err(CodecError::TrailingBytes {
                what: "frame",
                offset: total,
                extra: data.len() - total,
            });
        }
        Self::parse_body(header, &data[..total], src)
    }

    /// Parses a body whose header is already validated. `frame` is the whole
    /// frame (header and body, nothing more).
    fn parse_body(header: FrameHeader, frame: &[u8], src: Source<'_>) -> Result<Self, CodecError> {
        let Some(ty) = FrameType::from_u8(header.frame_type) else {
            return Err(CodecError::UnknownType {
                what: "frame type",
                offset: 3,
                found: header.frame_type,
            });
        };
        let mut r = Reader::new(&frame[HEADER_LEN..], HEADER_LEN);
        let frame = match ty {
            FrameType::AllocateRequest => {
                let capabilities = Capabilities(r.u32("capabilities")?);
                let transports = Transports::from_bits_truncate(r.u8("transports")?);
                let timestamp = r.u64("timestamp")?;
                let nonce = r.array("nonce")?;
                let app_id = AppId::read(&mut r)?;
                let proof = r.array("proof")?;
                let client_version = Text::read(&mut r, "client_version")?;
                let padding = read_padding(&mut r)?;
                Self::AllocateRequest(AllocateRequest {
                    capabilities,
                    transports,
                    timestamp,
                    nonce,
                    app_id,
                    proof,
                    client_version,
                    padding,
                })
            }
            FrameType::AllocateOk => {
                let session_id = r.u64("session_id")?;
                let capabilities = Capabilities(r.u32("capabilities")?);
                let transports = Transports::from_bits_truncate(r.u8("transports")?);
                let lifetime_secs = r.u32("lifetime_secs")?;
                let keepalive_secs = r.u16("keepalive_secs")?;
                let idle_timeout_secs = r.u16("idle_timeout_secs")?;
                let ticket = SealedTicket::read(&mut r)?;
                let tcp_relays = read_relays(&mut r, "tcp_relays")?;
                let udp_relays = read_relays(&mut r, "udp_relays")?;
                r.finish("AllocateOk")?;
                Self::AllocateOk(AllocateOk {
                    session_id,
                    capabilities,
                    transports,
                    lifetime_secs,
                    keepalive_secs,
                    idle_timeout_secs,
                    ticket,
                    tcp_relays,
                    udp_relays,
                })
            }
            FrameType::Error | FrameType::JoinRefused => {
                let code = ErrorCode(r.u16("code")?);
                let message = Text::read(&mut r, "message")?;
                r.finish("Error")?;
                let e = ErrorFrame { code, message };
                if ty == FrameType::Error {
                    Self::Error(e)
                } else {
                    Self::JoinRefused(e)
                }
            }
            FrameType::Refresh => {
                let ticket = SealedTicket::read(&mut r)?;
                let padding = read_padding(&mut r)?;
                Self::Refresh(Refresh { ticket, padding })
            }
            FrameType::Bind => {
                let ticket = SealedTicket::read(&mut r)?;
                let mode = read_mode(&mut r)?;
                let destination = Address::read(&mut r, "destination")?;
                let rebind = if r.flag("rebind")? {
                    Some(Rebind {
                        binding_id: r.u32("rebind.binding_id")?,
                        binding_token: r.u64("rebind.binding_token")?,
                    })
                } else {
                    None
                };
                r.finish("Bind")?;
                Self::Bind(Bind {
                    ticket,
                    mode,
                    destination,
                    rebind,
                })
            }
            FrameType::BindOk => {
                let binding_id = r.u32("binding_id")?;
                let binding_token = r.u64("binding_token")?;
                let mode = read_mode(&mut r)?;
                let keepalive_secs = r.u16("keepalive_secs")?;
                let idle_timeout_secs = r.u16("idle_timeout_secs")?;
                r.finish("BindOk")?;
                Self::BindOk(BindOk {
                    binding_id,
                    binding_token,
                    mode,
                    keepalive_secs,
                    idle_timeout_secs,
                })
            }
            FrameType::Datagram => {
                if header.length > MAX_DATAGRAM_PAYLOAD {
                    return Err(CodecError::TooLarge {
                        field: "datagram payload",
                        found: header.length,
                        max: MAX_DATAGRAM_PAYLOAD,
                    });
                }
                Self::Datagram(src.payload(frame, HEADER_LEN, frame.len()))
            }
            FrameType::Ping | FrameType::Pong | FrameType::Ack => {
                let n = r.u64(match ty {
                    FrameType::Ack => "seq",
                    _ => "ping value",
                })?;
                r.finish("8-byte body")?;
                match ty {
                    FrameType::Ping => Self::Ping(n),
                    FrameType::Pong => Self::Pong(n),
                    _ => Self::Ack(n),
                }
            }
            FrameType::Close | FrameType::Leave => {
                r.finish("empty body")?;
                if ty == FrameType::Close {
                    Self::Close
                } else {
                    Self::Leave
                }
            }
            FrameType::Join => {
                let app_id = AppId::read(&mut r)?;
                let channel = ChannelName::read(&mut r)?;
                let user_id = r.u32("user_id")?;
                let resume = if r.flag("resume")? {
                    Some(Resume {
                        member_id: r.u32("resume.member_id")?,
                        resume_token: r.u64("resume.resume_token")?,
                        last_received: r.u64("resume.last_received")?,
                    })
                } else {
                    None
                };
                r.finish("Join")?;
                Self::Join(Join {
                    app_id,
                    channel,
                    user_id,
                    resume,
                })
            }
            FrameType::Joined => {
                let j = Joined {
                    member_id: r.u32("member_id")?,
                    resume_token: r.u64("resume_token")?,
                    media_token: r.u64("media_token")?,
                    last_received: r.u64("last_received")?,
                    resumed: r.flag("resumed")?,
                };
                r.finish("Joined")?;
                Self::Joined(j)
            }
            FrameType::Message => {
                let seq = r.u64("seq")?;
                let from = r.u32("from")?;
                let start = HEADER_LEN + r.pos();
                Self::Message(Message {
                    seq,
                    from,
                    payload: src.payload(frame, start, frame.len()),
                })
            }
            FrameType::Media => {
                let member_id = r.u32("member_id")?;
                let token = r.u64("token")?;
                let start = HEADER_LEN + r.pos();
                Self::Media(Media {
                    member_id,
                    token,
                    payload: src.payload(frame, start, frame.len()),
                })
            }
            FrameType::MemberJoined | FrameType::MemberLeft => {
                let m = Member {
                    member_id: r.u32("member_id")?,
                    user_id: r.u32("user_id")?,
                };
                r.finish("Member")?;
                if ty == FrameType::MemberJoined {
                    Self::MemberJoined(m)
                } else {
                    Self::MemberLeft(m)
                }
            }
        };
        Ok(frame)
    }

    /// Encodes into a fresh `Bytes` (convenience for tests and control frames).
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        Bytes::from(v)
    }
}

fn read_padding(r: &mut Reader<'_>) -> Result<usize, CodecError> {
    let offset = r.offset();
    let n = r.remaining();
    let pad = r.bytes(n, "padding")?;
    if let Some(i) = pad.iter().position(|&b| b != 0) {
        return Err(CodecError::invalid(
            "padding",
            offset + i,
            "zero bytes",
            format!("{:#04x}", pad[i]),
        ));
    }
    Ok(n)
}

fn read_mode(r: &mut Reader<'_>) -> Result<BindMode, CodecError> {
    let offset = r.offset();
    match r.u8("mode")? {
        1 => Ok(BindMode::Stream),
        2 => Ok(BindMode::Datagram),
        other => Err(CodecError::invalid(
            "mode",
            offset,
            "1 (stream) or 2 (datagram)",
            other,
        )),
    }
}

fn read_relays(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<SocketAddr>, CodecError> {
    let n = r.u8(field)? as usize;
    if n > MAX_RELAYS {
        return Err(CodecError::TooLarge {
            field,
            found: n,
            max: MAX_RELAYS,
        });
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(read_socket_addr(r, field)?);
    }
    Ok(v)
}
