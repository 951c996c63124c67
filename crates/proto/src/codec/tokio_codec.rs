//! `tokio_util::codec` impls for [`FrameCodec`] (feature `codec`).

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::FrameCodec;
use crate::error::{CodecError, ErrorCode};
use crate::frame::Frame;

/// Why [`FrameCodec`]'s `tokio_util` impls failed: bytes that do not parse,
/// or an I/O error of the stream under a `Framed` (`tokio_util` requires
/// every codec error to be convertible from one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameCodecError {
    /// The bytes do not parse, or a frame to send breaks a limit.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An I/O error reported by the transport while framing. Printed in the
    /// message, so not also `source()` (see `docs/decisions.md`, "Error
    /// causes are printed once").
    #[error("i/o error while framing: {0}")]
    Io(std::io::Error),
}

/// What `tokio_util::codec` requires of a codec's error.
impl From<std::io::Error> for FrameCodecError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl FrameCodecError {
    /// The wire [`ErrorCode`] a peer should be sent: the parse error's code,
    /// or [`ErrorCode::INTERNAL`] for an I/O error (after which there is
    /// usually no connection left to send it on).
    #[must_use]
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::Codec(e) => e.wire_code(),
            Self::Io(_) => ErrorCode::INTERNAL,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameCodecError> {
        // The inherent `FrameCodec::decode` (inherent items win over trait ones).
        Ok(Self::decode(self, src)?)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameCodecError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameCodecError> {
        Ok(self.encode_checked(&item, dst)?)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameCodecError;

    fn encode(&mut self, item: &Frame, dst: &mut BytesMut) -> Result<(), FrameCodecError> {
        Ok(self.encode_checked(item, dst)?)
    }
}
