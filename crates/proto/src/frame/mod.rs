//! Frames: the 8-byte [`FrameHeader`] and every frame body.
//!
//! Every frame on a TCP connection (allocation service, relay handshake,
//! datagram mode, client ↔ media edge) and every control datagram on UDP has
//! the same layout: an 8-byte header followed by `length` bytes of body.
//!
//! Each body type owns its length, encoding and parsing next to its struct
//! (one module per frame family, the shape of h2's `frame/*.rs` and rustls'
//! `Codec`); [`Frame`] only dispatches on the type.
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
use std::ops::{Deref, DerefMut};

use bytes::{BufMut, Bytes};

use crate::error::CodecError;
use crate::wire::Reader;

mod allocate;
mod bind;
mod control;
mod datagram;
mod edge;
mod error;

pub use allocate::{AllocateOk, AllocateRequest, Refresh};
pub use bind::{Bind, BindMode, BindOk, Rebind};
pub use edge::{Join, Joined, Media, Member, Message, Resume};
pub use error::ErrorFrame;

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

/// The parser of one frame body: a bounds-checked [`Reader`] over the body
/// that can also hand out the rest of the body as a payload (zero-copy when
/// the frame came as `Bytes`).
pub(crate) struct BodyReader<'a> {
    reader: Reader<'a>,
    /// The whole frame, header included (payload offsets are frame offsets).
    frame: &'a [u8],
    src: Source<'a>,
}

impl BodyReader<'_> {
    /// The rest of the body as a payload; the reader is then at the end.
    pub(crate) fn payload(&mut self) -> Bytes {
        let start = HEADER_LEN + self.reader.pos();
        let _ = self.reader.rest();
        self.src.payload(self.frame, start, self.frame.len())
    }
}

impl<'a> Deref for BodyReader<'a> {
    type Target = Reader<'a>;

    fn deref(&self) -> &Reader<'a> {
        &self.reader
    }
}

impl DerefMut for BodyReader<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.reader
    }
}

/// A frame body type: its exact length, its encoding and its parsing side by
/// side, so the three cannot drift apart (rustls' `Codec`).
trait Body: Sized {
    /// Bytes [`Body::encode`] writes.
    fn body_len(&self) -> usize;

    /// Limits the field types cannot express (list sizes); checked by
    /// [`Frame::validate`] before encoding.
    fn validate(&self) -> Result<(), CodecError> {
        Ok(())
    }

    /// Writes the body, without the header.
    fn encode<B: BufMut>(&self, dst: &mut B);

    /// Parses the whole body; fails on bytes left over unless the body ends
    /// in a payload or padding.
    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError>;
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
            Self::AllocateRequest(b) => b.body_len(),
            Self::AllocateOk(b) => b.body_len(),
            Self::Error(b) | Self::JoinRefused(b) => b.body_len(),
            Self::Refresh(b) => b.body_len(),
            Self::Bind(b) => b.body_len(),
            Self::BindOk(b) => b.body_len(),
            Self::Datagram(p) => p.len(),
            Self::Ping(_) | Self::Pong(_) | Self::Ack(_) => control::VALUE_LEN,
            Self::Close | Self::Leave => 0,
            Self::Join(b) => b.body_len(),
            Self::Joined(b) => b.body_len(),
            Self::Message(b) => b.body_len(),
            Self::Media(b) => b.body_len(),
            Self::MemberJoined(b) | Self::MemberLeft(b) => b.body_len(),
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
            Self::AllocateRequest(b) => b.validate(),
            Self::AllocateOk(b) => b.validate(),
            Self::Error(b) | Self::JoinRefused(b) => b.validate(),
            Self::Refresh(b) => b.validate(),
            Self::Bind(b) => b.validate(),
            Self::BindOk(b) => b.validate(),
            Self::Datagram(p) => datagram::validate(p),
            Self::Ping(_) | Self::Pong(_) | Self::Ack(_) | Self::Close | Self::Leave => Ok(()),
            Self::Join(b) => b.validate(),
            Self::Joined(b) => b.validate(),
            Self::Message(b) => b.validate(),
            Self::Media(b) => b.validate(),
            Self::MemberJoined(b) | Self::MemberLeft(b) => b.validate(),
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
            Self::AllocateRequest(b) => b.encode(dst),
            Self::AllocateOk(b) => b.encode(dst),
            Self::Error(b) | Self::JoinRefused(b) => b.encode(dst),
            Self::Refresh(b) => b.encode(dst),
            Self::Bind(b) => b.encode(dst),
            Self::BindOk(b) => b.encode(dst),
            Self::Datagram(p) => dst.put_slice(p),
            Self::Ping(n) | Self::Pong(n) | Self::Ack(n) => control::encode_value(*n, dst),
            Self::Close | Self::Leave => {}
            Self::Join(b) => b.encode(dst),
            Self::Joined(b) => b.encode(dst),
            Self::Message(b) => b.encode(dst),
            Self::Media(b) => b.encode(dst),
            Self::MemberJoined(b) | Self::MemberLeft(b) => b.encode(dst),
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
        let r = &mut BodyReader {
            reader: Reader::new(&frame[HEADER_LEN..], HEADER_LEN),
            frame,
            src,
        };
        Ok(match ty {
            FrameType::AllocateRequest => Self::AllocateRequest(Body::parse(r)?),
            FrameType::AllocateOk => Self::AllocateOk(Body::parse(r)?),
            FrameType::Error => Self::Error(Body::parse(r)?),
            FrameType::JoinRefused => Self::JoinRefused(Body::parse(r)?),
            FrameType::Refresh => Self::Refresh(Body::parse(r)?),
            FrameType::Bind => Self::Bind(Body::parse(r)?),
            FrameType::BindOk => Self::BindOk(Body::parse(r)?),
            FrameType::Datagram => Self::Datagram(datagram::parse(r)?),
            FrameType::Ping => Self::Ping(control::parse_value(r, "ping value")?),
            FrameType::Pong => Self::Pong(control::parse_value(r, "ping value")?),
            FrameType::Ack => Self::Ack(control::parse_value(r, "seq")?),
            FrameType::Close => {
                control::parse_empty(r)?;
                Self::Close
            }
            FrameType::Leave => {
                control::parse_empty(r)?;
                Self::Leave
            }
            FrameType::Join => Self::Join(Body::parse(r)?),
            FrameType::Joined => Self::Joined(Body::parse(r)?),
            FrameType::Message => Self::Message(Body::parse(r)?),
            FrameType::Media => Self::Media(Body::parse(r)?),
            FrameType::MemberJoined => Self::MemberJoined(Body::parse(r)?),
            FrameType::MemberLeft => Self::MemberLeft(Body::parse(r)?),
        })
    }

    /// Encodes into a fresh `Bytes` (convenience for tests and control frames).
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        Bytes::from(v)
    }
}
