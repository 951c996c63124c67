//! Bodies that are a single value or nothing: `Ping`, `Pong` and `Ack`
//! carry one `u64`; `Close` and `Leave` carry no body.

use bytes::BufMut;

use super::BodyReader;
use crate::error::CodecError;

/// Body length of `Ping`, `Pong` and `Ack`.
pub(super) const VALUE_LEN: usize = 8;

pub(super) fn encode_value<B: BufMut>(value: u64, dst: &mut B) {
    dst.put_u64(value);
}

/// One `u64` named `field`, and nothing after it.
pub(super) fn parse_value(r: &mut BodyReader<'_>, field: &'static str) -> Result<u64, CodecError> {
    let value = r.u64(field)?;
    r.finish("8-byte body")?;
    Ok(value)
}

/// An empty body.
pub(super) fn parse_empty(r: &BodyReader<'_>) -> Result<(), CodecError> {
    r.finish("empty body")
}
