//! Frames over a byte stream (TCP): [`FrameCodec`], a thin wrapper around
//! [`FrameHeader::parse`] and [`Frame::decode`].
//!
//! The decoder checks the declared length against the limit *before* it
//! reserves anything, returns `Ok(None)` until a whole frame is buffered, and
//! hands out payloads as zero-copy `Bytes` (`split_to(..).freeze()`).
//! Frames of an unknown type whose header has [`FLAG_IGNORABLE`] are skipped.
//!
//! With the `codec` feature, [`FrameCodec`] also implements
//! `tokio_util::codec::{Decoder, Encoder}`, whose error type
//! `FrameCodecError` adds the I/O variant `tokio_util` requires. Without it
//! the crate does not depend on `tokio-util`, and [`FrameCodec::decode`]
//! fails only with a [`CodecError`]: decoding bytes in memory does no I/O.
//!
//! ```
//! use bytes::BytesMut;
//! use cloudproxy_proto::codec::FrameCodec;
//! use cloudproxy_proto::frame::Frame;
//!
//! let mut codec = FrameCodec::new();
//! let mut buf = BytesMut::new();
//! Frame::Ping(1).encode(&mut buf);
//! Frame::Datagram(bytes::Bytes::from_static(b"rtp")).encode(&mut buf);
//!
//! // Half of the first frame: nothing yet.
//! let mut input = buf.split_to(5);
//! assert!(codec.decode(&mut input).unwrap().is_none());
//! input.unsplit(buf);
//! assert_eq!(codec.decode(&mut input).unwrap(), Some(Frame::Ping(1)));
//! assert!(matches!(codec.decode(&mut input).unwrap(), Some(Frame::Datagram(_))));
//! assert!(codec.decode(&mut input).unwrap().is_none());
//! ```

use bytes::BytesMut;

use crate::error::CodecError;
use crate::frame::{
    FLAG_IGNORABLE, Frame, FrameHeader, FrameType, HEADER_LEN, MAX_PAYLOAD, check_magic,
};

#[cfg(feature = "codec")]
mod tokio_codec;
#[cfg(feature = "codec")]
pub use tokio_codec::FrameCodecError;

/// Frames over a byte stream (TCP).
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_payload: usize,
    skipped: u64,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec that accepts bodies up to [`MAX_PAYLOAD`].
    #[must_use]
    pub fn new() -> Self {
        Self {
            max_payload: MAX_PAYLOAD,
            skipped: 0,
        }
    }

    /// A codec with a lower body limit (for example during a handshake, or
    /// from the operator's configuration). Capped at [`MAX_PAYLOAD`].
    #[must_use]
    pub fn with_max_payload(max_payload: usize) -> Self {
        Self {
            max_payload: max_payload.min(MAX_PAYLOAD),
            skipped: 0,
        }
    }

    /// The body limit in force.
    #[must_use]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// How many ignorable frames of unknown type were skipped.
    #[must_use]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Removes the next whole frame from `src` and returns it; `Ok(None)`
    /// until one is complete.
    ///
    /// Inherent, so the sans-I/O machines and callers that read the stream
    /// themselves need neither `tokio-util` nor a trait import; the
    /// `tokio_util` `Decoder` impl (feature `codec`) calls this.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        loop {
            if src.len() < HEADER_LEN {
                // Refuse garbage as soon as the magic is visible.
                check_magic(src)?;
                return Ok(None);
            }
            // Validates magic, version and length <= limit before reserving.
            let header = FrameHeader::parse(src, self.max_payload)?;
            let total = HEADER_LEN + header.length;
            if src.len() < total {
                src.reserve(total - src.len());
                return Ok(None);
            }
            if FrameType::from_u8(header.frame_type).is_none() && header.flags & FLAG_IGNORABLE != 0
            {
                let _ = src.split_to(total);
                self.skipped += 1;
                continue;
            }
            let frame = src.split_to(total).freeze();
            return Frame::decode(frame).map(Some);
        }
    }

    /// Checks `item` against the protocol's limits and this codec's body
    /// limit, then appends it to `dst`.
    pub fn encode_checked(&self, item: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.validate()?;
        let len = item.encoded_len();
        if len - HEADER_LEN > self.max_payload {
            return Err(CodecError::TooLarge {
                field: "frame length",
                found: len - HEADER_LEN,
                max: self.max_payload,
            });
        }
        dst.reserve(len);
        item.encode(dst);
        Ok(())
    }
}
