//! SOCKS5 CONNECT: the destination, the upstream connect and the reply; the
//! session itself is [`relay_session`](crate::relay_session)'s.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::wire::{Reply, Target};
use super::{Client, reply};
use crate::conn::close_after_refusal;
use crate::destination::DestinationError;
use crate::quota::QuotaGuard;
use crate::relay_session::{StreamSession, relay_stream};
use crate::shared::Shared;
use crate::stats::Stats;
use crate::upstream::{connect_upstream, note_destination_error};

/// The reply for a refused destination.
fn destination_reply(e: &DestinationError) -> Reply {
    if e.is_policy() {
        Reply::NotAllowed
    } else {
        Reply::HostUnreachable
    }
}

/// The reply for a failed connect, by the kind of its last failure.
fn connect_reply(kind: io::ErrorKind) -> Reply {
    match kind {
        io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
        io::ErrorKind::TimedOut => Reply::TtlExpired,
        io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
        _ => Reply::GeneralFailure,
    }
}

/// CONNECT: the destination checked and connected to as for a native
/// stream bind, then relayed until either side ends. `early` is what the
/// client sent after its request.
pub(super) async fn connect(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    client: &Client,
    target: &Target,
    early: &[u8],
    quota: QuotaGuard<u64>,
) {
    let destination = target.as_destination();
    let policy = shared.policy.load();
    let lookup = shared
        .lookups
        .permitted(&client.app, &destination, &policy.allowlist);
    let checked = tokio::select! {
        checked = lookup => checked,
        () = shared.lifecycle.force_closed() => return,
    };
    let targets = match checked {
        Ok(t) => t,
        Err(e) => {
            note_destination_error(shared, &e);
            Stats::bump(&shared.stats.bindings_refused);
            shared.refusal_log.log(|| {
                tracing::info!(%peer, app = %client.app, destination = %target, reason = %e, "socks5 connect refused");
            });
            let _ = reply(&mut stream, destination_reply(&e), None).await;
            close_after_refusal(&stream).await;
            return;
        }
    };
    // The same staggered race, overall timeout and shutdown as a native
    // stream bind.
    let upstream = match connect_upstream(shared, &targets).await {
        Ok(upstream) => upstream,
        Err(e) => {
            Stats::bump(&shared.stats.bindings_refused);
            shared.refusal_log.log(|| {
                tracing::info!(%peer, app = %client.app, destination = %target, reason = %e, "socks5 connect failed");
            });
            let _ = reply(&mut stream, connect_reply(e.kind()), None).await;
            close_after_refusal(&stream).await;
            return;
        }
    };
    if reply(&mut stream, Reply::Succeeded, upstream.local_addr().ok())
        .await
        .is_err()
    {
        return;
    }
    let session = StreamSession {
        peer,
        session: client.session,
        app: &client.app,
        transport: "socks5-tcp",
        destination: target,
        deadline: client.session_deadline,
    };
    relay_stream(shared, &stream, &upstream, early, &session, quota).await;
}
