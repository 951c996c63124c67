//! The SOCKS5 wire format (RFC 1928, RFC 1929), without I/O: each parser
//! takes the bytes received so far and returns the message and the bytes it
//! took, `Ok(None)` while the message is still incomplete, or a
//! [`WireError`] as soon as the input cannot be SOCKS5. Addresses are
//! proto's [`Address`] (and its `DomainName`), read and written with
//! proto's `ATYP_*` bytes, so the native protocol and SOCKS5 share one
//! address form; only a name that is no host name stays text ([`Target`]).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use cloudproxy_proto::{ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6, Address, DomainName};

use crate::destination::Destination;

/// The protocol version byte of every SOCKS5 message but the login.
pub(crate) const VERSION: u8 = 5;
/// The version byte of the user/password sub-negotiation (RFC 1929).
pub(crate) const AUTH_VERSION: u8 = 1;
/// No authentication.
pub(crate) const METHOD_NONE: u8 = 0x00;
/// User/password (RFC 1929).
pub(crate) const METHOD_PASSWORD: u8 = 0x02;
/// The selection that no offered method is acceptable.
pub(crate) const METHOD_UNACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 1;
const CMD_UDP_ASSOCIATE: u8 = 3;

/// A parse result: the message and the bytes it took, or `None` while more
/// bytes are needed.
pub(crate) type Parsed<T> = Result<Option<(T, usize)>, WireError>;

/// Which message a [`WireError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    /// The client's greeting: VER NMETHODS METHODS.
    Greeting,
    /// The user/password sub-negotiation.
    Login,
    /// The request: VER CMD RSV ATYP DST.ADDR DST.PORT.
    Request,
    /// A UDP datagram's header: RSV FRAG ATYP DST.ADDR DST.PORT.
    UdpHeader,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Greeting => "greeting",
            Self::Login => "user/password",
            Self::Request => "request",
            Self::UdpHeader => "UDP request header",
        })
    }
}

/// Why bytes are not the SOCKS5 message expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// The version byte is not 5.
    #[error("{message}: not SOCKS version 5 (version byte {found})")]
    Version {
        /// The message.
        message: Message,
        /// The byte found.
        found: u8,
    },
    /// The login's version byte is not 1.
    #[error(
        "{}: wrong sub-negotiation version (expected 1, found {found})",
        Message::Login
    )]
    LoginVersion {
        /// The byte found.
        found: u8,
    },
    /// A reserved field is not zero.
    #[error("{message}: reserved byte at offset {offset} is {found}, expected 0")]
    Reserved {
        /// The message.
        message: Message,
        /// Where in the message.
        offset: usize,
        /// The byte found.
        found: u8,
    },
    /// An address type other than 1 (IPv4), 3 (domain) or 4 (IPv6); a
    /// request gets reply 8 for it.
    #[error("{message}: address type {found}, expected 1 (IPv4), 3 (domain) or 4 (IPv6)")]
    AddressType {
        /// The message.
        message: Message,
        /// The byte found.
        found: u8,
    },
    /// A domain name that is not UTF-8.
    #[error("{message}: domain name is not UTF-8 ({len} bytes)")]
    DomainNotUtf8 {
        /// The message.
        message: Message,
        /// The name's length.
        len: u8,
    },
    /// A command other than CONNECT (1) and UDP ASSOCIATE (3); BIND is
    /// not offered. A request gets reply 7 for it.
    #[error("request: command {found}, expected 1 (CONNECT) or 3 (UDP ASSOCIATE)")]
    Command {
        /// The byte found.
        found: u8,
    },
    /// A datagram shorter than its header says.
    #[error("{message}: {len} bytes, too short for its header")]
    Truncated {
        /// The message.
        message: Message,
        /// Its length.
        len: usize,
    },
}

impl WireError {
    /// Whether the request is well formed but asks for what the relay does
    /// not offer (an address type or a command), rather than malformed.
    pub(crate) fn is_unsupported(&self) -> bool {
        matches!(self, Self::AddressType { .. } | Self::Command { .. })
    }

    /// The reply a request that failed this way gets before its connection
    /// closes, if any (a broken greeting or login gets none).
    pub(crate) fn reply(&self) -> Option<Reply> {
        match self {
            Self::AddressType {
                message: Message::Request,
                ..
            } => Some(Reply::AddressTypeNotSupported),
            Self::Command { .. } => Some(Reply::CommandNotSupported),
            _ => None,
        }
    }
}

/// RFC 1928 §6 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TtlExpired = 6,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

impl fmt::Display for Reply {
    /// RFC 1928's wording for the reply code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Succeeded => "succeeded",
            Self::GeneralFailure => "general SOCKS server failure",
            Self::NotAllowed => "connection not allowed by ruleset",
            Self::NetworkUnreachable => "network unreachable",
            Self::HostUnreachable => "host unreachable",
            Self::ConnectionRefused => "connection refused",
            Self::TtlExpired => "TTL expired",
            Self::CommandNotSupported => "command not supported",
            Self::AddressTypeNotSupported => "address type not supported",
        })
    }
}

/// The client's greeting: the authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeting {
    methods: Vec<u8>,
}

impl Greeting {
    /// Whether the client offers `method`.
    pub(crate) fn offers(&self, method: u8) -> bool {
        self.methods.contains(&method)
    }
}

/// Parses VER NMETHODS METHODS.
pub(crate) fn parse_greeting(buf: &[u8]) -> Parsed<Greeting> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(WireError::Version {
            message: Message::Greeting,
            found: version,
        });
    }
    let Some(&count) = buf.get(1) else {
        return Ok(None);
    };
    let end = 2 + usize::from(count);
    Ok(buf.get(2..end).map(|methods| {
        let methods = methods.to_vec();
        (Greeting { methods }, end)
    }))
}

/// The server's method selection: VER METHOD.
pub(crate) fn method_selection(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// An RFC 1929 login: the user name (the app id) and the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Login {
    /// The user name.
    pub(crate) user: Vec<u8>,
    /// The password (a secret: never printed).
    pub(crate) password: Vec<u8>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &String::from_utf8_lossy(&self.user))
            .finish_non_exhaustive()
    }
}

/// Parses VER ULEN UNAME PLEN PASSWD.
pub(crate) fn parse_login(buf: &[u8]) -> Parsed<Login> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != AUTH_VERSION {
        return Err(WireError::LoginVersion { found: version });
    }
    let Some(&user_len) = buf.get(1) else {
        return Ok(None);
    };
    let user_end = 2 + usize::from(user_len);
    let Some(&password_len) = buf.get(user_end) else {
        return Ok(None);
    };
    let end = user_end + 1 + usize::from(password_len);
    let Some(password) = buf.get(user_end + 1..end) else {
        return Ok(None);
    };
    let login = Login {
        user: buf[2..user_end].to_vec(),
        password: password.to_vec(),
    };
    Ok(Some((login, end)))
}

/// The login's answer: VER STATUS, 0 for success.
pub(crate) fn login_status(accepted: bool) -> [u8; 2] {
    [AUTH_VERSION, if accepted { 0 } else { 1 }]
}

/// A destination as a SOCKS5 client writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// An IP address, or a host name (lower-cased).
    Address(Address),
    /// A domain field that is UTF-8 but no host name (a space, an empty
    /// label, a trailing dot, ...): passed on as written, so the resolver
    /// decides on it and its refusal names it, as for any name.
    Name(String, u16),
}

impl Target {
    /// The destination to check and resolve.
    pub(crate) fn as_destination(&self) -> Destination<'_> {
        match self {
            Self::Address(address) => Destination::from(address),
            Self::Name(host, port) => Destination::Name(host, *port),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => address.fmt(f),
            Self::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// A request after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// CONNECT to the destination.
    Connect(Target),
    /// UDP ASSOCIATE, with the address the client says it will send its
    /// datagrams from (zeros when it does not know).
    UdpAssociate(Target),
}

/// Parses VER CMD RSV ATYP DST.ADDR DST.PORT. The address type is checked
/// before the command, and the command once the whole request is in, so a
/// refused request has been read whole before its reply.
pub(crate) fn parse_request(buf: &[u8]) -> Parsed<Request> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(WireError::Version {
            message: Message::Request,
            found: version,
        });
    }
    // RSV is not checked: clients in the field send garbage there.
    let Some(&command) = buf.get(1) else {
        return Ok(None);
    };
    let Some((address, len)) = parse_address(&buf[3.min(buf.len())..], Message::Request)? else {
        return Ok(None);
    };
    let request = match command {
        CMD_CONNECT => Request::Connect(address),
        CMD_UDP_ASSOCIATE => Request::UdpAssociate(address),
        found => return Err(WireError::Command { found }),
    };
    Ok(Some((request, 3 + len)))
}

/// A reply: VER REP RSV ATYP BND.ADDR BND.PORT (zeros when nothing is
/// bound).
pub(crate) fn reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let address = Address::Ip(bound);
    let mut out = Vec::with_capacity(3 + address.encoded_len());
    out.extend_from_slice(&[VERSION, code as u8, 0]);
    address.encode(&mut out);
    out
}

/// A UDP datagram's header, as a client writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UdpHeader {
    /// The fragment number; 0 for a whole datagram.
    pub(crate) frag: u8,
    /// Where the payload goes.
    pub(crate) destination: Target,
}

/// Parses a whole datagram: RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA; the
/// header and the payload after it.
pub(crate) fn parse_udp(datagram: &[u8]) -> Result<(UdpHeader, &[u8]), WireError> {
    let truncated = || WireError::Truncated {
        message: Message::UdpHeader,
        len: datagram.len(),
    };
    let Some(&[rsv0, rsv1, frag]) = datagram.first_chunk::<3>() else {
        return Err(truncated());
    };
    for (offset, found) in [(0, rsv0), (1, rsv1)] {
        if found != 0 {
            return Err(WireError::Reserved {
                message: Message::UdpHeader,
                offset,
                found,
            });
        }
    }
    let (destination, len) =
        parse_address(&datagram[3..], Message::UdpHeader)?.ok_or_else(truncated)?;
    Ok((UdpHeader { frag, destination }, &datagram[3 + len..]))
}

/// Writes the header of a datagram from `from` for the client: RSV RSV
/// FRAG(0) ATYP address port.
pub(crate) fn write_udp_header(out: &mut Vec<u8>, from: SocketAddr) {
    out.extend_from_slice(&[0, 0, 0]);
    Address::Ip(from).encode(out);
}

/// The one SOCKS5 address parser: ATYP DST.ADDR DST.PORT, for requests and
/// UDP headers alike.
fn parse_address(buf: &[u8], message: Message) -> Parsed<Target> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    let port_at = |at: usize| {
        buf.get(at..at + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    match atyp {
        ATYP_IPV4 => Ok(buf.get(1..5).zip(port_at(5)).map(|(ip, port)| {
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            (
                Target::Address(Address::Ip(SocketAddr::new(ip.into(), port))),
                7,
            )
        })),
        ATYP_IPV6 => Ok(buf.get(1..17).zip(port_at(17)).map(|(ip, port)| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(ip);
            let ip = Ipv6Addr::from(octets);
            (
                Target::Address(Address::Ip(SocketAddr::new(ip.into(), port))),
                19,
            )
        })),
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(1) else {
                return Ok(None);
            };
            let end = 2 + usize::from(len);
            let (Some(name), Some(port)) = (buf.get(2..end), port_at(end)) else {
                return Ok(None);
            };
            Ok(Some((domain(name, port, message)?, end + 2)))
        }
        found => Err(WireError::AddressType { message, found }),
    }
}

/// A domain field as a [`Target`]: a host name when it is one.
fn domain(name: &[u8], port: u16, message: Message) -> Result<Target, WireError> {
    let text = std::str::from_utf8(name).map_err(|_| WireError::DomainNotUtf8 {
        message,
        // At most 255: the length is one byte on the wire.
        len: u8::try_from(name.len()).unwrap_or(u8::MAX),
    })?;
    Ok(match DomainName::new(text) {
        Ok(host) => Target::Address(Address::Domain(host, port)),
        Err(_) => Target::Name(text.to_owned(), port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16) -> Target {
        Target::Address(Address::Domain(DomainName::new(host).unwrap(), port))
    }

    fn ip(addr: &str) -> Target {
        Target::Address(Address::Ip(addr.parse().unwrap()))
    }

    #[test]
    fn greetings() {
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        let (greeting, len) = parse_greeting(&[5, 2, 0, 2, 0xAA]).unwrap().unwrap();
        assert_eq!(len, 4, "bytes after the greeting are not its");
        assert!(greeting.offers(METHOD_NONE) && greeting.offers(METHOD_PASSWORD));
        assert!(!greeting.offers(1));
        assert!(
            parse_greeting(&[5, 0])
                .unwrap()
                .unwrap()
                .0
                .methods
                .is_empty()
        );
        // SOCKS4 fails at its first byte.
        let err = parse_greeting(&[4]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "greeting: not SOCKS version 5 (version byte 4)"
        );
        assert_eq!(err.reply(), None);
        assert_eq!(method_selection(METHOD_PASSWORD), [5, 2]);
    }

    #[test]
    fn logins() {
        let mut login = vec![1, 3];
        login.extend_from_slice(b"app");
        login.push(4);
        login.extend_from_slice(b"beef");
        for cut in 0..login.len() {
            assert_eq!(parse_login(&login[..cut]), Ok(None), "cut at {cut}");
        }
        login.push(5);
        let (parsed, len) = parse_login(&login).unwrap().unwrap();
        assert_eq!(
            (parsed.user.as_slice(), parsed.password.as_slice(), len),
            (&b"app"[..], &b"beef"[..], 10)
        );
        assert!(
            !format!("{parsed:?}").contains("beef"),
            "the password is not printed"
        );
        assert_eq!(parse_login(&[1, 0, 0]).unwrap().unwrap().1, 3);
        assert_eq!(
            parse_login(&[5, 3]).unwrap_err().to_string(),
            "user/password: wrong sub-negotiation version (expected 1, found 5)"
        );
        assert_eq!((login_status(true), login_status(false)), ([1, 0], [1, 1]));
    }

    #[test]
    fn requests() {
        let connect = [5, 1, 0, ATYP_IPV4, 10, 0, 0, 1, 0x1f, 0x90];
        for cut in 0..connect.len() {
            assert_eq!(parse_request(&connect[..cut]), Ok(None), "cut at {cut}");
        }
        let mut with_early = connect.to_vec();
        with_early.extend_from_slice(b"GET /");
        assert_eq!(
            parse_request(&with_early),
            Ok(Some((Request::Connect(ip("10.0.0.1:8080")), 10)))
        );
        let mut v6 = vec![5, 3, 0, ATYP_IPV6];
        v6.extend_from_slice(&[0; 15]);
        v6.extend_from_slice(&[1, 0, 0]);
        assert_eq!(
            parse_request(&v6),
            Ok(Some((Request::UdpAssociate(ip("[::1]:0")), 22)))
        );
        let mut by_name = vec![5, 1, 0, ATYP_DOMAIN, 9];
        by_name.extend_from_slice(b"Echo.Test");
        by_name.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&by_name),
            Ok(Some((Request::Connect(name("echo.test", 80)), 16))),
            "a host name, lower-cased"
        );
        // No host name: kept as written, for the resolver to refuse and
        // the log to name (escaped).
        let mut odd = vec![5, 1, 0, ATYP_DOMAIN, 12];
        odd.extend_from_slice(b"a\nb.example.");
        odd.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&odd).unwrap().unwrap().0,
            Request::Connect(Target::Name("a\nb.example.".into(), 80))
        );
        assert_eq!(Target::Name("a b".into(), 80).to_string(), "a b:80");
    }

    #[test]
    fn malformed_requests() {
        let err = parse_request(&[4, 1, 0, 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request: not SOCKS version 5 (version byte 4)"
        );
        // An unknown address type fails before its address could be read.
        let err = parse_request(&[5, 1, 0, 9]).unwrap_err();
        assert_eq!(
            err,
            WireError::AddressType {
                message: Message::Request,
                found: 9
            }
        );
        assert_eq!(err.reply(), Some(Reply::AddressTypeNotSupported));
        // BIND: refused once the request is whole.
        assert_eq!(parse_request(&[5, 2, 0, ATYP_IPV4, 1, 2, 3]), Ok(None));
        let err = parse_request(&[5, 2, 0, ATYP_IPV4, 1, 2, 3, 4, 0, 80]).unwrap_err();
        assert_eq!(err, WireError::Command { found: 2 });
        assert_eq!(err.reply(), Some(Reply::CommandNotSupported));
        let err = parse_request(&[5, 1, 0, ATYP_DOMAIN, 2, 0xff, 0xfe, 0, 80]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request: domain name is not UTF-8 (2 bytes)"
        );
        assert_eq!(err.reply(), None);
        assert!(!err.is_unsupported());
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply(Reply::NotAllowed, None),
            [5, 2, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
        );
        let bound = "[::1]:258".parse().unwrap();
        let out = reply(Reply::Succeeded, Some(bound));
        assert_eq!(out[..4], [5, 0, 0, ATYP_IPV6]);
        assert_eq!(out[out.len() - 2..], [1, 2]);
        assert_eq!(out.len(), 22);
        assert_eq!(
            Reply::AddressTypeNotSupported.to_string(),
            "address type not supported"
        );
    }

    #[test]
    fn udp_headers() {
        let mut d = vec![0, 0, 0, ATYP_IPV4, 10, 0, 0, 1, 0x1f, 0x90];
        d.extend_from_slice(b"payload");
        let (header, payload) = parse_udp(&d).unwrap();
        assert_eq!((header.frag, payload), (0, &b"payload"[..]));
        assert_eq!(header.destination, ip("10.0.0.1:8080"));

        let mut d = vec![0, 0, 1, ATYP_DOMAIN, 9];
        d.extend_from_slice(b"localhost");
        d.extend_from_slice(&[0, 53]);
        let (header, payload) = parse_udp(&d).unwrap();
        assert_eq!((header.frag, payload), (1, &b""[..]));
        assert_eq!(header.destination, name("localhost", 53));

        assert_eq!(
            parse_udp(&[0, 0, 0]),
            Err(WireError::Truncated {
                message: Message::UdpHeader,
                len: 3
            })
        );
        assert!(matches!(
            parse_udp(&[0, 0, 0, ATYP_DOMAIN, 200, b'a']),
            Err(WireError::Truncated { .. })
        ));
        assert_eq!(
            parse_udp(&[1, 0, 0, ATYP_IPV4, 1, 2, 3, 4, 0, 1]),
            Err(WireError::Reserved {
                message: Message::UdpHeader,
                offset: 0,
                found: 1
            }),
            "RSV must be zero"
        );
        assert_eq!(
            parse_udp(&[0, 0, 0, 9]),
            Err(WireError::AddressType {
                message: Message::UdpHeader,
                found: 9
            })
        );
        assert_eq!(
            WireError::AddressType {
                message: Message::UdpHeader,
                found: 9
            }
            .reply(),
            None
        );

        let mut out = Vec::new();
        write_udp_header(&mut out, "10.0.0.1:8080".parse().unwrap());
        out.extend_from_slice(b"x");
        let (header, payload) = parse_udp(&out).unwrap();
        assert_eq!((header.frag, payload), (0, &b"x"[..]));
    }

    proptest::proptest! {
        /// Whatever arrives, the parsers answer and never claim more bytes
        /// than they were given.
        #[test]
        fn arbitrary_input_never_panics(
            // Mostly small values, so headers often look valid.
            bytes in proptest::collection::vec(
                proptest::prop_oneof![0u8..6, proptest::arbitrary::any::<u8>()],
                0..40,
            )
        ) {
            for parsed in [
                parse_greeting(&bytes).map(|p| p.map(|(_, n)| n)),
                parse_login(&bytes).map(|p| p.map(|(_, n)| n)),
                parse_request(&bytes).map(|p| p.map(|(_, n)| n)),
            ] {
                if let Ok(Some(used)) = parsed {
                    proptest::prop_assert!(used <= bytes.len());
                }
            }
            let _ = parse_udp(&bytes);
        }
    }
}
