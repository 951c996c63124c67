//! Counters of one edge, readable at any time as an [`EdgeStats`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! edge_counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters (relaxed atomics; a snapshot may be a few packets stale).
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $name: AtomicU64, )*
        }

        /// A copy of the edge's counters at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        #[non_exhaustive]
        pub struct EdgeStats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl std::fmt::Display for EdgeStats {
            /// Every counter as `name=value`, space-separated, on one line.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut sep = "";
                $(
                    write!(f, "{sep}{}={}", stringify!($name), self.$name)?;
                    sep = " ";
                )*
                let _ = sep;
                Ok(())
            }
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> EdgeStats {
                EdgeStats { $( $name: self.$name.load(Relaxed), )* }
            }
        }
    };
}

edge_counters! {
    /// Members now in a channel (connected or lingering).
    members,
    /// Of those, members whose connection is lost and that wait for a resume.
    members_lingering,
    /// Channels now open (with at least one member).
    channels,
    /// TCP connections accepted since start.
    connections,
    /// Fresh joins accepted.
    joins,
    /// Joins refused (`JoinRefused` 400 or 401).
    joins_refused,
    /// Memberships resumed on a new connection.
    resumes,
    /// Members removed because their linger time ran out.
    linger_expired,
    /// Members removed because they stopped acknowledging or draining.
    members_evicted,
    /// Connections closed because no `Join` arrived in time.
    handshake_timeouts,
    /// Connections closed for malformed or unexpected frames.
    protocol_errors,
    /// Messages received from clients and accepted in order.
    messages_in,
    /// Message deliveries queued to recipients (one per recipient).
    messages_out,
    /// Duplicate or out-of-order messages dropped (duplicates are still acked).
    messages_dropped,
    /// Valid media datagrams received.
    media_in,
    /// Media datagrams sent to recipients.
    media_out,
    /// Media registrations (an empty `Media`) learnt and confirmed to their
    /// source (`docs/protocol.md` §9.3).
    media_registrations,
    /// Media datagrams dropped: malformed, unknown member, wrong token, or a
    /// full socket buffer.
    media_dropped,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// Sets a gauge.
pub(crate) fn set(counter: &AtomicU64, n: u64) {
    counter.store(n, Relaxed);
}
