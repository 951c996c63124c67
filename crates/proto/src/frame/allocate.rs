//! Allocation-service frames: [`AllocateRequest`], [`AllocateOk`] and
//! [`Refresh`] (`docs/protocol.md` §4).

use std::net::SocketAddr;

use bytes::BufMut;

use super::{Body, BodyReader, MAX_RELAYS};
use crate::error::{CodecError, FoundValue};
use crate::types::{
    AppId, Capabilities, SealedTicket, Text, Transports, read_socket_addr, socket_addr_len,
    write_socket_addr,
};
use crate::wire::Reader;

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

/// Client → allocation service: renew a still-valid ticket for the same session.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refresh {
    /// The current, unexpired ticket.
    pub ticket: SealedTicket,
    /// Zero bytes of padding (UDP anti-amplification), as in [`AllocateRequest`].
    pub padding: usize,
}

impl Body for AllocateRequest {
    fn body_len(&self) -> usize {
        4 + 1 + 8 + 16 + self.app_id.wire_len() + 32 + self.client_version.wire_len() + self.padding
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u32(self.capabilities.0);
        dst.put_u8(self.transports.bits());
        dst.put_u64(self.timestamp);
        dst.put_slice(&self.nonce);
        self.app_id.write(dst);
        dst.put_slice(&self.proof);
        self.client_version.write(dst);
        dst.put_bytes(0, self.padding);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let capabilities = Capabilities(r.u32("capabilities")?);
        let transports = Transports::from_bits_truncate(r.u8("transports")?);
        let timestamp = r.u64("timestamp")?;
        let nonce = r.array("nonce")?;
        let app_id = AppId::read(r)?;
        let proof = r.array("proof")?;
        let client_version = Text::read(r, "client_version")?;
        let padding = read_padding(r)?;
        Ok(Self {
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
}

impl Body for AllocateOk {
    fn body_len(&self) -> usize {
        8 + 4
            + 1
            + 4
            + 2
            + 2
            + self.ticket.wire_len()
            + 1
            + self.tcp_relays.iter().map(socket_addr_len).sum::<usize>()
            + 1
            + self.udp_relays.iter().map(socket_addr_len).sum::<usize>()
    }

    fn validate(&self) -> Result<(), CodecError> {
        for (field, relays) in [
            ("tcp_relays count", &self.tcp_relays),
            ("udp_relays count", &self.udp_relays),
        ] {
            if relays.len() > MAX_RELAYS {
                return Err(CodecError::TooLarge {
                    field,
                    found: relays.len(),
                    max: MAX_RELAYS,
                });
            }
        }
        Ok(())
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u64(self.session_id);
        dst.put_u32(self.capabilities.0);
        dst.put_u8(self.transports.bits());
        dst.put_u32(self.lifetime_secs);
        dst.put_u16(self.keepalive_secs);
        dst.put_u16(self.idle_timeout_secs);
        self.ticket.write(dst);
        for relays in [&self.tcp_relays, &self.udp_relays] {
            dst.put_u8(relays.len() as u8);
            for r in relays {
                write_socket_addr(*r, dst);
            }
        }
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let session_id = r.u64("session_id")?;
        let capabilities = Capabilities(r.u32("capabilities")?);
        let transports = Transports::from_bits_truncate(r.u8("transports")?);
        let lifetime_secs = r.u32("lifetime_secs")?;
        let keepalive_secs = r.u16("keepalive_secs")?;
        let idle_timeout_secs = r.u16("idle_timeout_secs")?;
        let ticket = SealedTicket::read(r)?;
        let tcp_relays = read_relays(r, "tcp_relays")?;
        let udp_relays = read_relays(r, "udp_relays")?;
        r.finish("AllocateOk")?;
        Ok(Self {
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
}

impl Body for Refresh {
    fn body_len(&self) -> usize {
        self.ticket.wire_len() + self.padding
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        self.ticket.write(dst);
        dst.put_bytes(0, self.padding);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let ticket = SealedTicket::read(r)?;
        let padding = read_padding(r)?;
        Ok(Self { ticket, padding })
    }
}

/// The rest of the body, which must be zero bytes; returns its length.
fn read_padding(r: &mut Reader<'_>) -> Result<usize, CodecError> {
    let offset = r.offset();
    let pad = r.rest();
    if let Some(i) = pad.iter().position(|&b| b != 0) {
        return Err(CodecError::Invalid {
            field: "padding",
            offset: offset + i,
            expected: "zero bytes",
            found: FoundValue::Byte(pad[i]),
        });
    }
    Ok(pad.len())
}

/// A `u8` count followed by that many socket addresses.
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
