//! Frames out of a byte stream, in whatever pieces the transport delivers
//! them: the stream half of a session machine, with no tokio-util.

use bytes::BytesMut;

use crate::CodecError;
use crate::frame::{FLAG_IGNORABLE, Frame, FrameHeader, FrameType, HEADER_LEN};

/// Buffers stream bytes and cuts whole frames out of them.
#[derive(Debug, Clone)]
pub(crate) struct FrameReader {
    buf: BytesMut,
    max_payload: usize,
}

impl FrameReader {
    /// A reader that refuses frame bodies longer than `max_payload`.
    pub(crate) fn new(max_payload: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_payload,
        }
    }

    /// Changes the body limit (the edge allows more once `Join` is accepted).
    pub(crate) fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Appends bytes the transport delivered.
    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Forgets everything buffered (a new connection starts).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    /// Whether part of a frame is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole frame, `None` until one is complete. Frames of unknown
    /// type flagged ignorable are skipped (`docs/protocol.md` §3.1).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        loop {
            let header = match FrameHeader::parse(&self.buf, self.max_payload) {
                Ok(header) => header,
                // The magic is checked as soon as it is visible; a short
                // header is simply not complete yet.
                Err(CodecError::Truncated { .. }) if self.buf.len() < HEADER_LEN => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let total = HEADER_LEN + header.length;
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            let bytes = self.buf.split_to(total).freeze();
            if FrameType::from_u8(header.frame_type).is_none() && header.flags & FLAG_IGNORABLE != 0
            {
                continue;
            }
            return Frame::decode(bytes).map(Some);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cut_from_any_split() {
        let bytes = [Frame::Ping(1).to_bytes(), Frame::Pong(2).to_bytes()].concat();
        for split in 0..bytes.len() {
            let mut reader = FrameReader::new(1024);
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                reader.extend(part);
                while let Some(frame) = reader.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(
                got,
                vec![Frame::Ping(1), Frame::Pong(2)],
                "split at {split}"
            );
            assert!(reader.is_empty());
        }
    }

    #[test]
    fn garbage_is_refused_at_the_magic() {
        let mut reader = FrameReader::new(1024);
        reader.extend(b"GE");
        assert!(reader.next_frame().is_err());
    }
}
