//! The life of a relayed byte stream once its handshake is done, the same
//! for a native stream bind and a SOCKS5 CONNECT: the session gauge, the
//! quota held for its length, the pump between client and destination
//! (bounded by the idle timer, the session's lifetime and shutdown), and the
//! one `session ended` log line.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::copy_pump::copy_pump;
use crate::pump::{LiveTotals, PumpOptions, PumpReport, pump_with_totals};
use crate::quota::QuotaGuard;
use crate::shared::Shared;
use crate::stats::Active;

/// Who a stream session belongs to and where it goes, for its deadline and
/// its log line.
pub(crate) struct StreamSession<'a> {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The session id (logged in hex).
    pub(crate) session: u64,
    /// The app the session counts against.
    pub(crate) app: &'a str,
    /// The log's `transport` field: `tcp`, `tls` or `socks5-tcp`.
    pub(crate) transport: &'static str,
    /// The destination as the client named it.
    pub(crate) destination: &'a (dyn std::fmt::Display + Sync),
    /// Unix seconds when the session must end (its maximum lifetime): a
    /// stream ends with its session, like the session's UDP bindings.
    pub(crate) deadline: u64,
}

/// Relays between `client` and `upstream` (after writing `early`, client
/// bytes that arrived with the handshake, to the destination) until either
/// side ends, then counts and logs the session. `quota` is released as the
/// session ends.
pub(crate) async fn relay_stream(
    shared: &Shared,
    client: &TcpStream,
    upstream: &TcpStream,
    early: &[u8],
    session: &StreamSession<'_>,
    quota: QuotaGuard<u64>,
) {
    run_session(shared, session, quota, |options, totals| async move {
        pump_with_totals(
            client,
            upstream,
            early,
            &options,
            shared.lifecycle.force_closed(),
            Some(totals),
        )
        .await
    })
    .await;
}

/// [`relay_stream`] for a client stream the splice pump cannot serve (a TLS
/// session): the same session, copied through user space
/// ([`copy_pump`]).
pub(crate) async fn relay_copied<C: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut C,
    upstream: &mut TcpStream,
    early: &[u8],
    session: &StreamSession<'_>,
    quota: QuotaGuard<u64>,
) {
    run_session(shared, session, quota, |options, totals| async move {
        copy_pump(
            client,
            upstream,
            early,
            &options,
            shared.lifecycle.force_closed(),
            Some(totals),
        )
        .await
    })
    .await;
}

/// What every stream session shares around its pump: the session gauge,
/// the quota held for its length, its limits, its counts and its log line.
async fn run_session<'a, P, F>(
    shared: &'a Shared,
    session: &StreamSession<'_>,
    quota: QuotaGuard<u64>,
    pump: P,
) where
    P: FnOnce(PumpOptions, LiveTotals<'a>) -> F,
    F: Future<Output = PumpReport>,
{
    let _active = Active::new(
        &shared.stats,
        |s| &s.tcp_sessions_active,
        Some(|s| &s.tcp_sessions_total),
    );
    // Declared after `_active`, so dropped before it: once the stats show
    // the session gone, its quota is free too.
    let _quota = quota;
    let started = Instant::now();
    let options = PumpOptions {
        buffer_len: shared.limits.relay_buffer_len as usize,
        idle_timeout: shared.limits.idle_timeout(),
        splice: shared.limits.relay_splice,
        deadline: Some(shared.session_deadline(session.deadline)),
    };
    let report = pump(
        options,
        LiveTotals {
            client_to_upstream: &shared.stats.tcp_bytes_up,
            upstream_to_client: &shared.stats.tcp_bytes_down,
        },
    )
    .await;
    shared.stats.note_pump_end(&report.end);
    shared
        .timings
        .session_duration
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        peer = %session.peer,
        session = format_args!("{:016x}", session.session),
        app = %session.app,
        transport = session.transport,
        destination = %session.destination,
        bytes_up = report.client_to_upstream,
        bytes_down = report.upstream_to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        reason = report.end.as_str(),
        "session ended"
    );
}
