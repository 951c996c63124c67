//! The error frame: the body of `Error` and of `JoinRefused`.

use bytes::BufMut;

use super::{Body, BodyReader};
use crate::error::{CodecError, ErrorCode};
use crate::types::Text;

/// A fatal error with a code; also the body of `JoinRefused`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorFrame {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable detail (may be empty).
    pub message: Text,
}

impl ErrorFrame {
    /// An error frame with the code's standard user text as message.
    #[must_use]
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: Text::truncated(code.user_text()),
        }
    }

    /// An error frame with a specific message.
    #[must_use]
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Text::truncated(message),
        }
    }
}

impl Body for ErrorFrame {
    fn body_len(&self) -> usize {
        2 + self.message.wire_len()
    }

    fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u16(self.code.0);
        self.message.write(dst);
    }

    fn parse(r: &mut BodyReader<'_>) -> Result<Self, CodecError> {
        let code = ErrorCode(r.u16("code")?);
        let message = Text::read(r, "message")?;
        r.finish("Error")?;
        Ok(Self { code, message })
    }
}
