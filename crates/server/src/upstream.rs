//! The relay's side of a destination, for every relay (native TCP and UDP,
//! SOCKS5): the allowlist check of a client's destination within its app's
//! lookup budget, how a refusal is counted and coded, and the upstream
//! connect.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use cloudproxy_proto::{Address, ErrorCode};
use cloudproxy_transport::dial::{DialError, DialPolicy, Outcome, race};
use tokio::net::TcpStream;

use crate::destination::{Destination, DestinationError};
use crate::shared::Shared;
use crate::stats::Stats;

/// Why an upstream TCP connect failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Every address failed or timed out; `last` is the kind of the last
    /// failure that had one (none when every attempt timed out).
    Dial {
        error: DialError<io::Error>,
        last: Option<io::ErrorKind>,
    },
    /// Shutdown's force-close came first.
    Shutdown,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dial { error, .. } => error.fmt(f),
            Self::Shutdown => f.write_str("the relay is shutting down"),
        }
    }
}

impl ConnectError {
    /// What a client is told: which way it failed, never the host's error
    /// text (that is logged).
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            Self::Dial { error, .. } if timed_out(error) => {
                "the destination did not answer in time"
            }
            Self::Dial { .. } => "the destination refused the connection or could not be reached",
            Self::Shutdown => "the relay is shutting down",
        }
    }

    /// The kind of failure, for protocols with codes per kind (SOCKS5).
    pub(crate) fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Dial {
                last: Some(kind), ..
            } => *kind,
            Self::Dial { .. } => io::ErrorKind::TimedOut,
            Self::Shutdown => io::ErrorKind::Interrupted,
        }
    }
}

fn timed_out(e: &DialError<io::Error>) -> bool {
    e.attempts
        .iter()
        .all(|(_, o)| !matches!(o, Outcome::Failed(_)))
}

/// Connects to the first of `targets` to answer, for a native stream bind
/// and a SOCKS5 CONNECT alike: attempts start 250 ms apart while earlier
/// ones are pending (RFC 8305), the whole connect ends at the node's
/// `connect_timeout`, and shutdown's force-close abandons it at once.
pub(crate) async fn connect_upstream(
    shared: &Shared,
    targets: &[SocketAddr],
) -> Result<TcpStream, ConnectError> {
    let policy = DialPolicy {
        stagger: std::time::Duration::from_millis(250),
        attempt_timeout: shared.limits.connect_timeout(),
        overall_timeout: shared.limits.connect_timeout(),
    };
    let last = Arc::new(std::sync::Mutex::new(None));
    let attempt = |addr| {
        let last = Arc::clone(&last);
        async move {
            let result = TcpStream::connect(addr).await;
            if let Err(e) = &result {
                *last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.kind());
            }
            result
        }
    };
    tokio::select! {
        raced = race(targets, &policy, attempt) => {
            let (_, up) = raced.map_err(|error| ConnectError::Dial {
                error,
                last: *last.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            })?;
            let _ = up.set_nodelay(true);
            Ok(up)
        }
        () = shared.lifecycle.force_closed() => Err(ConnectError::Shutdown),
    }
}

/// A socket the relay could not open for a destination: the host's error
/// (for instance "Too many open files") goes to the log, the client gets a
/// generic refusal.
pub(crate) fn upstream_socket_failure(e: &io::Error, target: SocketAddr) -> (ErrorCode, String) {
    tracing::warn!(destination = %target, error = %e, "cannot open an upstream socket");
    (
        ErrorCode::INTERNAL,
        "the relay could not open a path to the destination".to_owned(),
    )
}

/// The allowlisted addresses for a destination, or the error to send; a
/// name is resolved within `app`'s lookup budget.
pub(crate) async fn check_destination(
    shared: &Shared,
    app: &str,
    destination: &Address,
) -> Result<Vec<SocketAddr>, (ErrorCode, String)> {
    let dest = Destination::from(destination);
    shared
        .lookups
        .permitted(app, &dest, &shared.policy.load().allowlist)
        .await
        .map_err(|e| {
            note_destination_error(shared, &e);
            (destination_code(&e), e.to_string())
        })
}

/// Counts a destination refusal.
pub(crate) fn note_destination_error(shared: &Shared, e: &DestinationError) {
    if e.is_policy() {
        Stats::bump(&shared.stats.destinations_refused);
    }
    if matches!(
        e,
        DestinationError::LookupsInFlight { .. } | DestinationError::LookupRate { .. }
    ) {
        Stats::bump(&shared.stats.lookups_refused);
    }
}

/// The error code a native client gets for a refused destination.
pub(crate) fn destination_code(e: &DestinationError) -> ErrorCode {
    if e.is_policy() {
        ErrorCode::DESTINATION_NOT_ALLOWED
    } else {
        ErrorCode::DESTINATION_UNREACHABLE
    }
}
