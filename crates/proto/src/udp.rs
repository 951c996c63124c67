//! The 16-byte header in front of every media datagram on the UDP relay.
//!
//! ```text
//!  0        1        2        3        4                                   8
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | marker | version|  kind  | flags  |          binding_id (u32)         |
//! |  0xCA  |   1    |        |   0    |                                   |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! |                      binding_token (u64)                              |
//! +--------+--------+--------+--------+--------+--------+--------+--------+
//! | payload (Data only): at most 1400 bytes                               |
//! ```
//!
//! The marker byte `0xCA` differs from the first byte of a control frame
//! (`0x43`, see [`crate::frame::MAGIC`]), so the relay tells data from control
//! by the first byte. The hot path is a table lookup by `binding_id` and an
//! 8-byte comparison of `binding_token`: no MAC per packet.
//!
//! ```
//! use cloudproxy_proto::udp::{UdpHeader, UdpKind};
//!
//! let h = UdpHeader { kind: UdpKind::Data, binding_id: 9, binding_token: 0xfeed };
//! let mut buf = Vec::new();
//! h.encode(&mut buf);
//! buf.extend_from_slice(b"media");
//! let (parsed, payload) = UdpHeader::parse(&buf).unwrap();
//! assert_eq!((parsed, payload), (h, &b"media"[..]));
//! ```

use bytes::BufMut;

use crate::error::CodecError;
use crate::frame::{MAGIC, MAX_DATAGRAM_PAYLOAD, VERSION};

/// First byte of every relay data datagram.
pub const UDP_MARKER: u8 = 0xCA;
/// Size of [`UdpHeader`] on the wire.
pub const UDP_HEADER_LEN: usize = 16;

/// What a relay datagram carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum UdpKind {
    /// A media payload to forward.
    Data = 0,
    /// Client → relay: keep the binding (and NAT mapping) alive; no payload.
    Keepalive = 1,
    /// Relay → client: answer to `Keepalive`, same size; no payload.
    KeepaliveAck = 2,
    /// Either way: the binding is closed; no payload.
    Close = 3,
}

/// The header of a UDP relay data datagram.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct UdpHeader {
    /// What the datagram carries.
    pub kind: UdpKind,
    /// The binding id from `BindOk`.
    pub binding_id: u32,
    /// The binding token from `BindOk`.
    pub binding_token: u64,
}

/// What the first byte of a datagram on a relay UDP port says it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DatagramClass {
    /// Starts with [`UDP_MARKER`]: a data/keepalive datagram with a [`UdpHeader`].
    Relay,
    /// Starts with the frame magic: a control frame (`Bind`, `AllocateRequest`, …).
    Control,
    /// Anything else: drop silently.
    Unknown,
}

/// Classifies a datagram by its first byte.
#[must_use]
pub fn classify(datagram: &[u8]) -> DatagramClass {
    match datagram.first() {
        Some(&UDP_MARKER) => DatagramClass::Relay,
        Some(&b) if b == (MAGIC >> 8) as u8 => DatagramClass::Control,
        _ => DatagramClass::Unknown,
    }
}

impl UdpHeader {
    /// Parses the header and returns it with the payload that follows.
    ///
    /// Fails on a wrong marker or version, an unknown kind, non-zero flags,
    /// a payload on a non-`Data` kind, or a payload over
    /// [`MAX_DATAGRAM_PAYLOAD`]. Never allocates.
    pub fn parse(datagram: &[u8]) -> Result<(Self, &[u8]), CodecError> {
        if datagram.len() < UDP_HEADER_LEN {
            return Err(CodecError::Truncated {
                field: "udp header",
                offset: 0,
                needed: UDP_HEADER_LEN,
                available: datagram.len(),
            });
        }
        if datagram[0] != UDP_MARKER {
            return Err(CodecError::BadMagic {
                expected: u16::from(UDP_MARKER),
                found: u16::from(datagram[0]),
            });
        }
        if datagram[1] != VERSION {
            return Err(CodecError::UnsupportedVersion {
                offset: 1,
                expected: VERSION,
                found: datagram[1],
            });
        }
        let kind = match datagram[2] {
            0 => UdpKind::Data,
            1 => UdpKind::Keepalive,
            2 => UdpKind::KeepaliveAck,
            3 => UdpKind::Close,
            other => {
                return Err(CodecError::UnknownType {
                    what: "datagram kind",
                    offset: 2,
                    found: other,
                });
            }
        };
        if datagram[3] != 0 {
            return Err(CodecError::invalid("udp flags", 3, "0", datagram[3]));
        }
        let payload = &datagram[UDP_HEADER_LEN..];
        if kind != UdpKind::Data && !payload.is_empty() {
            return Err(CodecError::TrailingBytes {
                what: "udp control header",
                offset: UDP_HEADER_LEN,
                extra: payload.len(),
            });
        }
        if payload.len() > MAX_DATAGRAM_PAYLOAD {
            return Err(CodecError::TooLarge {
                field: "udp payload",
                found: payload.len(),
                max: MAX_DATAGRAM_PAYLOAD,
            });
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&datagram[4..8]);
        let mut token = [0u8; 8];
        token.copy_from_slice(&datagram[8..16]);
        Ok((
            Self {
                kind,
                binding_id: u32::from_be_bytes(id),
                binding_token: u64::from_be_bytes(token),
            },
            payload,
        ))
    }

    /// Writes the 16-byte header (the payload, if any, follows).
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(UDP_MARKER);
        dst.put_u8(VERSION);
        dst.put_u8(self.kind as u8);
        dst.put_u8(0);
        dst.put_u32(self.binding_id);
        dst.put_u64(self.binding_token);
    }

    /// The header as a byte array.
    #[must_use]
    pub fn to_array(&self) -> [u8; UDP_HEADER_LEN] {
        let mut a = [0u8; UDP_HEADER_LEN];
        let mut s = &mut a[..];
        self.encode(&mut s);
        a
    }

    /// Always [`UDP_HEADER_LEN`].
    #[must_use]
    pub const fn encoded_len(&self) -> usize {
        UDP_HEADER_LEN
    }
}
