//! Validated field types: bounded strings, the destination [`Address`], the
//! transport and capability bit sets, and the opaque [`SealedTicket`].
//!
//! Each type checks its invariants when it is built, so encoding can never
//! fail and every value that encodes also parses back to itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes};

use crate::error::{CodecError, FoundValue};
use crate::wire::Reader;

/// Longest [`AppId`], in bytes.
pub const MAX_APP_ID_LEN: usize = 64;
/// Longest [`ChannelName`], in bytes.
pub const MAX_CHANNEL_LEN: usize = 64;
/// Longest [`Text`], in bytes.
pub const MAX_TEXT_LEN: usize = 255;
/// Longest [`DomainName`], in bytes.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest [`SealedTicket`], in bytes.
pub const MAX_TICKET_LEN: usize = 255;

/// An application id: 1 to 64 printable ASCII bytes (`0x21..=0x7e`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    /// Validates and wraps an app id.
    ///
    /// ```
    /// use cloudproxy_proto::AppId;
    /// assert!(AppId::new("my-app").is_ok());
    /// assert!(AppId::new("").is_err());
    /// assert!(AppId::new("has space").is_err());
    /// ```
    pub fn new(s: impl Into<String>) -> Result<Self, CodecError> {
        let s = s.into();
        Self::check(s.as_bytes(), 0)?;
        Ok(Self(s))
    }

    fn check(b: &[u8], offset: usize) -> Result<(), CodecError> {
        if b.is_empty() || b.len() > MAX_APP_ID_LEN {
            return Err(CodecError::invalid(
                "app_id",
                offset,
                "1 to 64 bytes",
                FoundValue::Len(b.len()),
            ));
        }
        if let Some(i) = b.iter().position(|c| !c.is_ascii_graphic()) {
            return Err(CodecError::invalid(
                "app_id",
                offset,
                "printable ASCII without spaces",
                FoundValue::ByteAt {
                    byte: b[i],
                    position: i,
                },
            ));
        }
        Ok(())
    }

    /// The app id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let offset = r.offset();
        let b = r.len8_bytes("app_id")?;
        Self::check(b, offset)?;
        // Checked ASCII above, so this cannot fail.
        Ok(Self(String::from_utf8_lossy(b).into_owned()))
    }

    pub(crate) fn write(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.0.len() as u8);
        dst.put_slice(self.0.as_bytes());
    }

    pub(crate) fn wire_len(&self) -> usize {
        1 + self.0.len()
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel name: 1 to 64 bytes of UTF-8 with no control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validates and wraps a channel name.
    pub fn new(s: impl Into<String>) -> Result<Self, CodecError> {
        let s = s.into();
        Self::check(&s, 0)?;
        Ok(Self(s))
    }

    fn check(s: &str, offset: usize) -> Result<(), CodecError> {
        if s.is_empty() || s.len() > MAX_CHANNEL_LEN {
            return Err(CodecError::invalid(
                "channel",
                offset,
                "1 to 64 bytes",
                FoundValue::Len(s.len()),
            ));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(CodecError::invalid(
                "channel",
                offset,
                "no control characters",
                FoundValue::Char(c),
            ));
        }
        Ok(())
    }

    /// The channel name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let offset = r.offset();
        let b = r.len8_bytes("channel")?;
        let s = std::str::from_utf8(b)
            .map_err(|e| CodecError::invalid("channel", offset, "UTF-8", e))?;
        Self::check(s, offset)?;
        Ok(Self(s.to_owned()))
    }

    pub(crate) fn write(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.0.len() as u8);
        dst.put_slice(self.0.as_bytes());
    }

    pub(crate) fn wire_len(&self) -> usize {
        1 + self.0.len()
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Free text of at most 255 bytes of UTF-8 (client version strings, error
/// messages). May be empty.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    /// Validates and wraps a text; fails when longer than 255 bytes.
    pub fn new(s: impl Into<String>) -> Result<Self, CodecError> {
        let s = s.into();
        if s.len() > MAX_TEXT_LEN {
            return Err(CodecError::TooLarge {
                field: "text",
                found: s.len(),
                max: MAX_TEXT_LEN,
            });
        }
        Ok(Self(s))
    }

    /// Wraps a text, cutting it at a character boundary to fit 255 bytes.
    ///
    /// ```
    /// use cloudproxy_proto::Text;
    /// assert_eq!(Text::truncated("é".repeat(200)).as_str().len(), 254);
    /// ```
    #[must_use]
    pub fn truncated(s: impl Into<String>) -> Self {
        let mut s = s.into();
        if s.len() > MAX_TEXT_LEN {
            let mut end = MAX_TEXT_LEN;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Self(s)
    }

    /// Cuts the text so it is at most `max` bytes long (at a character boundary).
    pub(crate) fn shorten(&mut self, max: usize) {
        if self.0.len() > max {
            let mut end = max;
            while !self.0.is_char_boundary(end) {
                end -= 1;
            }
            self.0.truncate(end);
        }
    }

    /// The text as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, CodecError> {
        let offset = r.offset();
        let b = r.len8_bytes(field)?;
        let s =
            std::str::from_utf8(b).map_err(|e| CodecError::invalid(field, offset, "UTF-8", e))?;
        Ok(Self(s.to_owned()))
    }

    pub(crate) fn write(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.0.len() as u8);
        dst.put_slice(self.0.as_bytes());
    }

    pub(crate) fn wire_len(&self) -> usize {
        1 + self.0.len()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNS host name: 1 to 253 bytes, dot-separated labels of 1 to 63 ASCII
/// letters, digits, `-` or `_`, no label starting or ending with `-`.
/// Stored in lower case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Validates a host name (case-insensitive; stored lower-cased).
    ///
    /// ```
    /// use cloudproxy_proto::DomainName;
    /// assert_eq!(DomainName::new("Edge.Example.COM").unwrap().as_str(), "edge.example.com");
    /// assert!(DomainName::new("bad..name").is_err());
    /// ```
    pub fn new(s: &str) -> Result<Self, CodecError> {
        let lower = s.to_ascii_lowercase();
        Self::check(lower.as_bytes(), 0)?;
        Ok(Self(lower))
    }

    fn check(b: &[u8], offset: usize) -> Result<(), CodecError> {
        let bad = |why: &'static str| {
            CodecError::invalid(
                "destination.domain",
                offset,
                why,
                FoundValue::HostName(b.to_vec()),
            )
        };
        if b.is_empty() || b.len() > MAX_DOMAIN_LEN {
            return Err(bad("a host name of 1 to 253 bytes"));
        }
        for label in b.split(|&c| c == b'.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("labels of 1 to 63 bytes"));
            }
            if !label
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            {
                return Err(bad("letters, digits, '-', '_' and '.'"));
            }
            if label[0] == b'-' || label[label.len() - 1] == b'-' {
                return Err(bad("labels not starting or ending with '-'"));
            }
        }
        if b.iter().any(u8::is_ascii_uppercase) {
            return Err(bad("a lower-case host name"));
        }
        Ok(())
    }

    /// The host name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Address type byte of an IPv4 address (as in SOCKS5, RFC 1928).
pub const ATYP_IPV4: u8 = 1;
/// Address type byte of a domain name (as in SOCKS5, RFC 1928).
pub const ATYP_DOMAIN: u8 = 3;
/// Address type byte of an IPv6 address (as in SOCKS5, RFC 1928).
pub const ATYP_IPV6: u8 = 4;

/// A relay destination: an IP socket address or a host name and port.
///
/// The relay resolves a [`Address::Domain`] itself and checks the *resolved*
/// address against its allowlist; the allowlist is not part of this crate.
/// Encoded as in SOCKS5: `atyp`, address, port (see `docs/protocol.md`).
/// IPv6 flow info and scope id are not carried.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 or IPv6 socket address.
    Ip(SocketAddr),
    /// A host name the relay resolves, and a port.
    Domain(DomainName, u16),
}

impl Address {
    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(a) => a.port(),
            Self::Domain(_, p) => *p,
        }
    }

    /// Bytes this address takes on the wire.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            Self::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            Self::Domain(d, _) => 1 + 1 + d.0.len() + 2,
        }
    }

    /// Writes the address.
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Ip(a) => write_socket_addr(*a, dst),
            Self::Domain(d, port) => {
                dst.put_u8(ATYP_DOMAIN);
                dst.put_u8(d.0.len() as u8);
                dst.put_slice(d.0.as_bytes());
                dst.put_u16(*port);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>, field: &'static str) -> Result<Self, CodecError> {
        let offset = r.offset();
        match r.u8(field)? {
            ATYP_IPV4 => {
                let ip = Ipv4Addr::from(r.array::<4>(field)?);
                Ok(Self::Ip(SocketAddr::new(IpAddr::V4(ip), r.u16(field)?)))
            }
            ATYP_IPV6 => {
                let ip = Ipv6Addr::from(r.array::<16>(field)?);
                Ok(Self::Ip(SocketAddr::new(IpAddr::V6(ip), r.u16(field)?)))
            }
            ATYP_DOMAIN => {
                let name_offset = r.offset();
                let b = r.len8_bytes("destination.domain")?;
                DomainName::check(b, name_offset)?;
                let name = DomainName(String::from_utf8_lossy(b).into_owned());
                Ok(Self::Domain(name, r.u16(field)?))
            }
            other => Err(CodecError::invalid(
                field,
                offset,
                "address type 1 (IPv4), 3 (domain) or 4 (IPv6)",
                other,
            )),
        }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Self::Ip(a)
    }
}

pub(crate) fn socket_addr_len(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(_) => 7,
        SocketAddr::V6(_) => 19,
    }
}

pub(crate) fn write_socket_addr(a: SocketAddr, dst: &mut impl BufMut) {
    match a.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(ATYP_IPV4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(ATYP_IPV6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(a.port());
}

/// Reads an IP socket address (a domain is not allowed here).
pub(crate) fn read_socket_addr(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<SocketAddr, CodecError> {
    let offset = r.offset();
    match Address::read(r, field)? {
        Address::Ip(a) => Ok(a),
        Address::Domain(..) => Err(CodecError::invalid(
            field,
            offset,
            "an IP address (type 1 or 4)",
            FoundValue::DomainName,
        )),
    }
}

/// A set of relay transports (a bit set, one byte on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Transports(u8);

impl Transports {
    /// TCP relay for message data (stream mode), port 4000 by default.
    pub const TCP: Self = Self(0x01);
    /// UDP relay for media (ports 4500–4650 by default).
    pub const UDP: Self = Self(0x02);
    /// Media datagrams inside a TCP relay connection (datagram mode).
    pub const UDP_OVER_TCP: Self = Self(0x04);
    /// Every transport this version defines.
    pub const ALL: Self = Self(0x07);
    /// No transport.
    pub const NONE: Self = Self(0);

    /// Builds a set from its wire byte, dropping undefined bits.
    #[must_use]
    pub fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & Self::ALL.0)
    }

    /// The wire byte.
    #[must_use]
    pub fn bits(self) -> u8 {
        self.0
    }

    /// True when every transport in `other` is in `self`.
    #[must_use]
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The transports in both sets.
    #[must_use]
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// True when the set is empty.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Transports {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.contains(Self::TCP) {
            names.push("TCP");
        }
        if self.contains(Self::UDP) {
            names.push("UDP");
        }
        if self.contains(Self::UDP_OVER_TCP) {
            names.push("UDP_OVER_TCP");
        }
        write!(f, "Transports({})", names.join("|"))
    }
}

/// Optional protocol features (a 32-bit set). Each side sends what it
/// supports; the answer carries the intersection, which both then use.
/// Unknown bits are kept on receipt and cleared in the answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// The client may re-bind a UDP binding from a new address (NAT rebinding).
    pub const UDP_REBIND: Self = Self(0x0000_0001);
    /// The client may refresh its ticket (`Refresh` frame).
    pub const REFRESH: Self = Self(0x0000_0002);
    /// The client resumes a media-edge membership after failover (`Join` with resume).
    pub const RESUME: Self = Self(0x0000_0004);
    /// Every capability this version implements.
    pub const ALL: Self = Self(0x0000_0007);

    /// True when every bit of `other` is set in `self`.
    #[must_use]
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits set in both.
    #[must_use]
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }
}

/// A ticket as carried on the wire: opaque bytes (1 to 255) to the client,
/// verified by relays with [`crate::ticket::TicketKeyRing::open`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SealedTicket(Bytes);

impl SealedTicket {
    /// Wraps ticket bytes; fails when empty or longer than 255 bytes.
    pub fn new(b: Bytes) -> Result<Self, CodecError> {
        if b.is_empty() || b.len() > MAX_TICKET_LEN {
            return Err(CodecError::invalid(
                "ticket",
                0,
                "1 to 255 bytes",
                FoundValue::Len(b.len()),
            ));
        }
        Ok(Self(b))
    }

    /// The ticket bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let offset = r.offset();
        let b = r.len8_bytes("ticket")?;
        if b.is_empty() {
            return Err(CodecError::invalid(
                "ticket",
                offset,
                "1 to 255 bytes",
                FoundValue::Len(0),
            ));
        }
        Ok(Self(Bytes::copy_from_slice(b)))
    }

    pub(crate) fn write(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.0.len() as u8);
        dst.put_slice(&self.0);
    }

    pub(crate) fn wire_len(&self) -> usize {
        1 + self.0.len()
    }
}

impl fmt::Debug for SealedTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedTicket({} bytes)", self.0.len())
    }
}
