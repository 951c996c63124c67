//! The `Datagram` frame: one media datagram carried on a TCP relay connection
//! (UDP-over-TCP). Its body is the datagram itself, so the frame holds a bare
//! `Bytes` and this module holds only the size rule and the zero-copy parse.

use bytes::Bytes;

use super::{BodyReader, MAX_DATAGRAM_PAYLOAD};
use crate::error::CodecError;

/// Fails when the payload exceeds [`MAX_DATAGRAM_PAYLOAD`].
pub(super) fn validate(payload: &Bytes) -> Result<(), CodecError> {
    check_len(payload.len())
}

/// The whole body as the payload, after the size check.
pub(super) fn parse(r: &mut BodyReader<'_>) -> Result<Bytes, CodecError> {
    check_len(r.remaining())?;
    Ok(r.payload())
}

fn check_len(len: usize) -> Result<(), CodecError> {
    if len > MAX_DATAGRAM_PAYLOAD {
        return Err(CodecError::TooLarge {
            field: "datagram payload",
            found: len,
            max: MAX_DATAGRAM_PAYLOAD,
        });
    }
    Ok(())
}
