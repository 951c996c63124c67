//! The media path: one UDP socket, one `Media` frame per datagram.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloudproxy_proto::frame::{Frame, MAX_DATAGRAM_PAYLOAD, Media};
use tokio::net::UdpSocket;

use super::state::{MediaDrop, Shared};
use super::stats::bump;

/// Largest datagram accepted: a `Media` frame must fit a relay datagram
/// payload (`docs/protocol.md` §9.3), 1 400 bytes with its header.
const MAX_MEDIA_DATAGRAM: usize = MAX_DATAGRAM_PAYLOAD;
/// Longest wait for room in the socket's send buffer before a copy is dropped.
const SEND_STALL: Duration = Duration::from_millis(2);

/// Receives media until `stop` completes, forwarding each valid datagram to
/// the other members of the sender's channel that have a media address.
///
/// Nothing is ever sent back to the source of an invalid datagram (no
/// reflection, no amplification): only addresses that sent a `Media` with a
/// valid member id and token receive anything. A valid empty `Media` is a
/// registration: it is answered with the same empty frame (token 0) to its
/// source, so the client knows media will reach it, and never forwarded.
pub(crate) async fn run(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // One byte more than the largest valid datagram, to see oversize ones.
    let mut buf = vec![0u8; MAX_MEDIA_DATAGRAM + 1];
    let mut targets: Vec<SocketAddr> = Vec::new();
    let mut out = Vec::with_capacity(MAX_MEDIA_DATAGRAM);
    loop {
        let (n, src) = tokio::select! {
            () = &mut stop => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors reported on the socket and the like:
                    // nothing to do for one datagram, keep serving.
                    tracing::debug!(error = %e, "media socket receive error");
                    continue;
                }
            },
        };
        if n > MAX_MEDIA_DATAGRAM {
            bump(&shared.counters.media_dropped);
            continue;
        }
        let media = match Frame::parse(&buf[..n]) {
            Ok(Frame::Media(m)) => m,
            _ => {
                bump(&shared.counters.media_dropped);
                continue;
            }
        };
        let registration = media.payload.is_empty();
        match shared.media(&media, src, &mut targets) {
            Ok(()) if registration => bump(&shared.counters.media_registrations),
            Ok(()) => bump(&shared.counters.media_in),
            Err(why) => {
                bump(&shared.counters.media_dropped);
                if why == MediaDrop::BadToken {
                    tracing::trace!(%src, member_id = media.member_id, "media with a wrong token dropped");
                }
                continue;
            }
        }
        if registration {
            // Confirm the registration to the address just learnt (which
            // proved membership with its token): the same empty frame back,
            // token 0, sent like forwarded media. No amplification: one
            // header-sized datagram answers one, and only to a source
            // holding a valid media token.
            targets.clear();
            targets.push(src);
        }
        if targets.is_empty() {
            continue;
        }
        let forward = Frame::Media(Media {
            member_id: media.member_id,
            token: 0,
            payload: media.payload,
        });
        out.clear();
        forward.encode(&mut out);
        for &addr in &targets {
            let sent = match socket.try_send_to(&out, addr) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Full socket buffer (or readiness not yet known): wait a
                    // moment, then drop this copy. Media is unreliable and the
                    // receive loop must not stall behind one recipient.
                    tokio::time::timeout(SEND_STALL, socket.send_to(&out, addr))
                        .await
                        .unwrap_or_else(|_| Err(ErrorKind::WouldBlock.into()))
                }
                r => r,
            };
            match sent {
                Ok(_) if registration => {}
                Ok(_) => bump(&shared.counters.media_out),
                Err(e) => {
                    bump(&shared.counters.media_dropped);
                    tracing::debug!(%addr, error = %e, "media send failed");
                }
            }
        }
    }
}
