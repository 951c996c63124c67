//! The allocation service over UDP: one datagram in, at most one datagram
//! out, never larger than the request (no amplification).

use std::time::Instant;

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::frame::{ErrorFrame, Frame};
use crate::udp::{DatagramClass, classify};

use super::admission::error_reply;
use super::{AllocationRequest, Server};

impl Server {
    /// Handles one datagram on an allocation UDP port.
    ///
    /// Every reply is at most as long as `data` (no amplification): a request
    /// too small for its `AllocateOk` gets `REQUEST_TOO_SMALL`, and datagrams
    /// that do not start with the frame magic get nothing.
    #[must_use]
    pub fn handle_allocation_datagram(&self, now: Instant, data: &[u8]) -> UdpAllocation {
        let limit = data.len();
        if classify(data) != DatagramClass::Control {
            return UdpAllocation::Drop;
        }
        let frame = match Frame::parse(data) {
            Ok(f) => f,
            Err(e) => {
                return error_reply(e.wire_code(), Some(&e.to_string()), limit)
                    .map_or(UdpAllocation::Drop, UdpAllocation::Reply);
            }
        };
        let checked = match &frame {
            Frame::AllocateRequest(r) => self.check_allocate(now, r),
            Frame::Refresh(r) => self.check_refresh(now, r),
            _ => Err(ErrorFrame::new(ErrorCode::UNEXPECTED_FRAME)),
        };
        match checked {
            Ok(request) => {
                let reply = Frame::AllocateOk(self.grant(now, &request)).to_bytes();
                if reply.len() > limit {
                    return error_reply(ErrorCode::REQUEST_TOO_SMALL, None, limit)
                        .map_or(UdpAllocation::Drop, UdpAllocation::Reply);
                }
                UdpAllocation::Pending(PendingAllocation {
                    request,
                    reply,
                    limit,
                })
            }
            Err(e) => error_reply(e.code, Some(e.message.as_str()), limit)
                .map_or(UdpAllocation::Drop, UdpAllocation::Reply),
        }
    }
}

/// What to do with a datagram that arrived on an allocation UDP port.
#[derive(Debug)]
#[non_exhaustive]
pub enum UdpAllocation {
    /// Send nothing.
    Drop,
    /// Send these bytes back to the source (never larger than the request).
    Reply(Bytes),
    /// A valid request: decide on the quota, then call
    /// [`PendingAllocation::accept`] or [`PendingAllocation::reject`].
    Pending(PendingAllocation),
}

/// A valid UDP allocation request awaiting the quota decision.
#[derive(Debug)]
pub struct PendingAllocation {
    /// The checked request.
    pub request: AllocationRequest,
    reply: Bytes,
    limit: usize,
}

impl PendingAllocation {
    /// The `AllocateOk` datagram to send back.
    #[must_use]
    pub fn accept(self) -> Bytes {
        self.reply
    }

    /// An `Error` datagram to send back (shortened to the request's size).
    #[must_use]
    pub fn reject(self, code: ErrorCode, message: Option<&str>) -> Option<Bytes> {
        error_reply(code, message, self.limit)
    }
}
