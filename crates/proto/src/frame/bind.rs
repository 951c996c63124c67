//! Relay-binding frames: [`Bind`] and [`BindOk`] (`docs/protocol.md` §5).

use bytes::BufMut;

use super::{Body, BodyReader};
use crate::error::{CodecError, FoundValue};
use crate::types::{Address, SealedTicket};
use crate::wire::Reader;

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

impl Body for Bind {
    fn body_len(&self) -> usize {
        self.ticket.wire_len()
            + 1
            + self.destination.encoded_len()
            + 1
            + if self.rebind.is_some() { 12 } else { 0 }
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        self.ticket.write(dst);
        dst.put_u8(self.mode as u8);
        self.destination.encode(dst);
        match self.rebind {
            None => dst.put_u8(0),
            Some(r) => {
                dst.put_u8(1);
                dst.put_u32(r.binding_id);
                dst.put_u64(r.binding_token);
            }
        }
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let ticket = SealedTicket::read(r)?;
        let mode = BindMode::read(r)?;
        let destination = Address::read(r, "destination")?;
        let rebind = if r.flag("rebind")? {
            Some(Rebind {
                binding_id: r.u32("rebind.binding_id")?,
                binding_token: r.u64("rebind.binding_token")?,
            })
        } else {
            None
        };
        r.finish("Bind")?;
        Ok(Self {
            ticket,
            mode,
            destination,
            rebind,
        })
    }
}

impl Body for BindOk {
    fn body_len(&self) -> usize {
        4 + 8 + 1 + 2 + 2
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u32(self.binding_id);
        dst.put_u64(self.binding_token);
        dst.put_u8(self.mode as u8);
        dst.put_u16(self.keepalive_secs);
        dst.put_u16(self.idle_timeout_secs);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let binding_id = r.u32("binding_id")?;
        let binding_token = r.u64("binding_token")?;
        let mode = BindMode::read(r)?;
        let keepalive_secs = r.u16("keepalive_secs")?;
        let idle_timeout_secs = r.u16("idle_timeout_secs")?;
        r.finish("BindOk")?;
        Ok(Self {
            binding_id,
            binding_token,
            mode,
            keepalive_secs,
            idle_timeout_secs,
        })
    }
}

impl BindMode {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        let offset = r.offset();
        match r.u8("mode")? {
            1 => Ok(Self::Stream),
            2 => Ok(Self::Datagram),
            other => Err(CodecError::Invalid {
                field: "mode",
                offset,
                expected: "1 (stream) or 2 (datagram)",
                found: FoundValue::Value(other.into()),
            }),
        }
    }
}
