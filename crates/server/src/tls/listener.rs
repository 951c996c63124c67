//! One connection on the TLS port: the TLS handshake and the ALPN check,
//! then the first frame's type hands it to the allocation service or the
//! relay, exactly as on the plain TCP ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cloudproxy_proto::frame::FrameType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::ALPN;
use super::prefixed::Prefixed;
use crate::conn::{Bounds, Cut};
use crate::log_limit::{PEER_TEXT_MAX, clip};
use crate::relay_session::{StreamSession, relay_copied};
use crate::shared::Shared;
use crate::stats::Stats;
use crate::tcp::{self, Bound, DatagramSession};

/// Bytes of the first frame read to tell the services apart: magic,
/// version and the type byte.
const DISPATCH_LEN: usize = 4;

/// Serves one accepted TCP connection on the TLS port. Everything before
/// the connection is a session — the TLS handshake, the first frame and
/// the service's own handshake — shares one handshake deadline from
/// `accepted`, and shutdown.
pub(crate) async fn connection(
    shared: Arc<Shared>,
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let accepted = Instant::now();
    let bounds = Bounds::new(
        accepted + shared.limits.handshake_timeout(),
        &shared.lifecycle,
    );
    let opened = bounds.run(open(&shared, config, tcp, peer)).await;
    let (stream, first) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return,
        Err(cut) => {
            if cut == Cut::Deadline {
                Stats::bump(&shared.stats.handshake_timeouts);
            }
            tracing::debug!(%peer, reason = cut.as_str(), "TLS connection closed before its first frame");
            return;
        }
    };
    let stream = Prefixed::new(first.to_vec(), stream);
    let allocation = [FrameType::AllocateRequest as u8, FrameType::Refresh as u8];
    if allocation.contains(&first[3]) {
        tcp::allocation(shared, stream, peer, accepted, "tls").await;
        return;
    }
    // Anything else goes to the relay, whose handshake refuses what is
    // not a `Bind` as it would on the relay port.
    relay(&shared, stream, peer, accepted).await;
}

/// The TLS handshake, the ALPN check and the first frame's first bytes;
/// `None` when the connection ended there (counted and logged).
async fn open(
    shared: &Shared,
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, [u8; DISPATCH_LEN])> {
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await {
        Ok(start) => start,
        Err(e) => {
            // Plain TCP on the TLS port (a client on the wrong rung, a
            // scanner), or a close before any ClientHello.
            Stats::bump(&shared.stats.tls_handshake_failures);
            shared.refusal_log.log(|| {
                let error = e.to_string();
                let error = clip(&error, PEER_TEXT_MAX);
                tracing::info!(%peer, error = %error, "TLS connection closed: no TLS ClientHello");
            });
            return None;
        }
    };
    let offered: Option<Vec<String>> = start.client_hello().alpn().map(|protocols| {
        protocols
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    });
    let ours = offered
        .as_ref()
        .is_some_and(|offered| offered.iter().any(|p| p.as_bytes() == ALPN));
    if !ours {
        Stats::bump(&shared.stats.tls_alpn_refused);
        shared.refusal_log.log(|| {
            // The peer's own list, up to 64 KiB: only its beginning.
            let offered =
                offered.map_or_else(|| "none".to_owned(), |offered| format!("{offered:?}"));
            let offered = clip(&offered, PEER_TEXT_MAX);
            tracing::warn!(%peer, alpn_offered = %offered, expected = "cloudproxy/1", "TLS connection refused: its ALPN is not cloudproxy/1");
        });
    }
    let mut stream = match start.into_stream(config).await {
        Ok(stream) => stream,
        Err(e) => {
            // Another protocol offered: rustls refused it with the
            // `no_application_protocol` alert, counted above.
            if ours {
                Stats::bump(&shared.stats.tls_handshake_failures);
                shared.refusal_log.log(|| {
                    let error = e.to_string();
                    let error = clip(&error, PEER_TEXT_MAX);
                    tracing::info!(%peer, error = %error, "TLS handshake failed");
                });
            }
            return None;
        }
    };
    if !ours {
        // No ALPN at all: the handshake completed; close it cleanly.
        let _ = stream.shutdown().await;
        return None;
    }
    Stats::bump(&shared.stats.tls_handshakes);
    let mut first = [0u8; DISPATCH_LEN];
    if let Err(e) = stream.read_exact(&mut first).await {
        tracing::debug!(%peer, error = %e, "TLS connection closed before its first frame");
        return None;
    }
    Some((stream, first))
}

/// A TLS connection whose first frame is for the relay.
async fn relay(
    shared: &Shared,
    stream: Prefixed<TlsStream<TcpStream>>,
    peer: SocketAddr,
    accepted: Instant,
) {
    // Boxed, as on the relay port: the handshake's state lives on the heap
    // only while it runs.
    let Some((mut stream, bound)) = Box::pin(tcp::bind(shared, stream, peer, accepted)).await
    else {
        return;
    };
    match bound {
        Bound::Stream {
            mut upstream,
            early,
            request,
            quota,
        } => {
            let session = StreamSession {
                peer,
                session: request.session_id,
                app: request.app_id.as_str(),
                transport: "tls",
                destination: &request.destination,
                deadline: request.session_deadline,
            };
            relay_copied(shared, &mut stream, &mut upstream, &early, &session, quota).await;
        }
        Bound::Datagram {
            upstream,
            conn,
            request,
            quota,
        } => {
            let session = DatagramSession {
                peer,
                request: &request,
                transport: "udp-over-tls",
            };
            tcp::datagram_session(shared, stream, *conn, &upstream, &session, quota).await;
        }
    }
}
