//! Counters of one proxy node, readable at any time as a [`StatsSnapshot`].
//!
//! Plain relaxed atomics: each counter is independent, and a snapshot that is
//! a few packets stale is fine for monitoring. Datagram counters move with
//! every datagram (or batch); TCP byte counters move with every write the
//! pump makes, so they climb while a session runs. Gauges (the `*_active` figures)
//! move through [`Active`] guards, so an early return cannot leave them high.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters, shared by every listener of a node.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl std::fmt::Display for StatsSnapshot {
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

        impl Stats {
            /// Reads every counter.
            #[must_use]
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Allocation requests answered with proxy info.
    allocations,
    /// Allocation requests refused (bad credential, quota, malformed…).
    allocations_refused,
    /// Relay bindings refused (bad or expired ticket, destination, quota…).
    bindings_refused,
    /// Of those, refused because the destination is not allowed.
    destinations_refused,
    /// Connections closed because the handshake did not finish in time.
    handshake_timeouts,
    /// Connections or datagrams dropped as malformed.
    malformed,
    /// TCP relay sessions now open.
    tcp_sessions_active,
    /// TCP relay sessions opened since start.
    tcp_sessions_total,
    /// Bytes relayed client → destination over TCP.
    tcp_bytes_up,
    /// Bytes relayed destination → client over TCP.
    tcp_bytes_down,
    /// UDP bindings now live.
    udp_bindings_active,
    /// UDP bindings created since start.
    udp_bindings_total,
    /// Datagrams relayed client → destination (UDP and UDP-over-TCP).
    udp_packets_up,
    /// Datagrams relayed destination → client.
    udp_packets_down,
    /// Payload bytes relayed client → destination.
    udp_bytes_up,
    /// Payload bytes relayed destination → client.
    udp_bytes_down,
    /// Datagrams dropped: unknown binding, wrong token, or a full queue.
    udp_dropped,
    /// SOCKS5 UDP datagrams dropped because they were fragments (RFC 1928
    /// allows a relay not to reassemble).
    socks5_fragments_dropped,
    /// SOCKS5 clients refused at authentication.
    socks5_auth_refused,
    /// Failed logins on every listener: wrong SOCKS5 password, wrong
    /// allocation proof, bad or expired ticket.
    login_failures,
    /// Of the failed logins: an unknown app or a wrong proof (200).
    login_failures_bad_credential,
    /// Of the failed logins: a ticket that does not verify (301).
    login_failures_bad_ticket,
    /// Of the failed logins: an expired ticket (300).
    login_failures_expired_ticket,
    /// Of the failed logins: a wrong SOCKS5 user or password.
    login_failures_socks5_password,
    /// Login attempts refused unchecked because their source was over its
    /// login-failure limit.
    logins_rate_limited,
    /// Allocations and bindings refused because the transport is not
    /// allowed for the app or session (203).
    transport_refused,
    /// Refreshes and bindings refused because the session reached its
    /// maximum lifetime (204).
    session_too_old_refused,
    /// Bindings refused because the node is shutting down (105; a full
    /// node is a quota refusal).
    server_busy_refused,
    /// Times a source's login-failure limit engaged.
    login_limit_engaged,
    /// Binds refused because their app was over its name-lookup budget.
    lookups_refused,
    /// Allocations and bindings refused by a quota (sessions per app,
    /// bindings per session, upstream sockets per app or per node); an
    /// unknown app is a failed login, not a quota refusal.
    quota_refused,
    /// UDP-over-TCP datagram sessions opened since start: media that fell
    /// back to TCP because UDP did not get through.
    media_fallbacks,
    /// TCP sessions that ended with both sides closing.
    tcp_sessions_closed,
    /// TCP sessions that ended idle.
    tcp_sessions_idle_timeout,
    /// TCP sessions that reached their maximum lifetime.
    tcp_sessions_lifetime,
    /// TCP sessions that ended on a client-side I/O error.
    tcp_sessions_client_error,
    /// TCP sessions that ended on an upstream I/O error.
    tcp_sessions_upstream_error,
    /// TCP sessions closed by the node (drain deadline, shutdown).
    tcp_sessions_cancelled,
    /// UDP-over-TCP sessions closed at their idle timeout while their
    /// client did not read what it was sent (its queue full, so it was not
    /// read either).
    tcp_sessions_not_reading,
    /// UDP bindings that ended with a `Close` from the client.
    udp_sessions_closed,
    /// UDP bindings that ended idle.
    udp_sessions_idle_timeout,
    /// UDP bindings that reached their session's maximum lifetime.
    udp_sessions_lifetime,
    /// UDP bindings closed by the node (shutdown, or an error on its side).
    udp_sessions_shutdown,
    /// TLS handshakes completed with ALPN `cloudproxy/1` on the TLS port.
    tls_handshakes,
    /// TLS handshakes that failed (a client that does not trust the
    /// certificate, a scanner, a timeout), ALPN refusals aside.
    tls_handshake_failures,
    /// TLS connections refused for their ALPN: none offered, or not
    /// `cloudproxy/1`.
    tls_alpn_refused,
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

impl Stats {
    /// Counts how a TCP stream session ended.
    pub fn note_pump_end(&self, end: &crate::pump::PumpEnd) {
        use crate::pump::PumpEnd;
        Self::bump(match end {
            PumpEnd::Closed => &self.tcp_sessions_closed,
            PumpEnd::IdleTimeout => &self.tcp_sessions_idle_timeout,
            PumpEnd::SessionLifetime => &self.tcp_sessions_lifetime,
            PumpEnd::ClientError(_) => &self.tcp_sessions_client_error,
            PumpEnd::UpstreamError(_) => &self.tcp_sessions_upstream_error,
            PumpEnd::Cancelled => &self.tcp_sessions_cancelled,
        });
    }

    /// Counts how a UDP binding ended, by the reason the relay table gives.
    pub fn note_udp_end(&self, reason: &cloudproxy_proto::SessionError) {
        Self::bump(self.udp_outcome(reason));
    }

    fn udp_outcome(&self, reason: &cloudproxy_proto::SessionError) -> &AtomicU64 {
        use cloudproxy_proto::SessionError;
        match reason {
            SessionError::Timeout { which: "idle", .. } => &self.udp_sessions_idle_timeout,
            SessionError::Timeout {
                which: "session lifetime",
                ..
            } => &self.udp_sessions_lifetime,
            SessionError::ClosedByPeer => &self.udp_sessions_closed,
            _ => &self.udp_sessions_shutdown,
        }
    }

    /// Counts how a UDP-over-TCP datagram session (a TCP relay connection,
    /// in `sessions{transport="tcp"}`) ended, with the TCP outcomes: `None`
    /// for a client-side I/O error.
    pub fn note_datagram_session_end(&self, reason: Option<&cloudproxy_proto::SessionError>) {
        use cloudproxy_proto::SessionError;
        Self::bump(match reason {
            None => &self.tcp_sessions_client_error,
            Some(SessionError::Timeout { which: "idle", .. }) => &self.tcp_sessions_idle_timeout,
            Some(SessionError::NotReading { .. }) => &self.tcp_sessions_not_reading,
            Some(SessionError::Timeout {
                which: "session lifetime",
                ..
            }) => &self.tcp_sessions_lifetime,
            Some(SessionError::ClosedLocally) => &self.tcp_sessions_cancelled,
            Some(_) => &self.tcp_sessions_closed,
        });
    }

    /// Counts a refusal whose code has a reason of its own in
    /// `cloudproxy_refusals_total`: 203 and 204. Quota (202, 105 for a full
    /// node), destination and lookup refusals are counted where they are
    /// decided, and shutdown refusals with [`Stats::server_busy_refused`].
    pub fn note_refusal_code(&self, code: cloudproxy_proto::ErrorCode) {
        use cloudproxy_proto::ErrorCode;
        match code {
            ErrorCode::TRANSPORT_NOT_ALLOWED => Self::bump(&self.transport_refused),
            ErrorCode::SESSION_TOO_OLD => Self::bump(&self.session_too_old_refused),
            _ => {}
        }
    }

    /// Counts a quota refusal; an unknown app is a failed login instead and
    /// is not counted here.
    pub fn note_quota(&self, e: &crate::quota::QuotaError) {
        if !matches!(e, crate::quota::QuotaError::UnknownApp { .. }) {
            Self::bump(&self.quota_refused);
        }
    }
}

/// Latency and duration histograms of one node (prometheus-client
/// histograms: one short lock per observation, taken once per session or
/// allocation, never per packet).
#[derive(Debug, Clone)]
pub struct Timings {
    /// How long relay sessions (TCP streams, UDP-over-TCP datagram
    /// sessions) lasted, in seconds, observed when each ends.
    pub session_duration: prometheus_client::metrics::histogram::Histogram,
    /// How long the node took to answer an allocation request it accepted,
    /// in seconds (from the request's arrival to the reply).
    pub allocation_latency: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        Self {
            // 1 s … about 9 h.
            session_duration: Histogram::new(exponential_buckets(1.0, 3.0, 11)),
            // 50 µs … about 1.6 s.
            allocation_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

/// Holds a gauge up by one for as long as it lives.
#[derive(Debug)]
pub struct Active {
    stats: Arc<Stats>,
    gauge: fn(&Stats) -> &AtomicU64,
}

impl Active {
    /// Raises `gauge` (and the matching total, if given) until dropped.
    pub fn new(
        stats: &Arc<Stats>,
        gauge: fn(&Stats) -> &AtomicU64,
        total: Option<fn(&Stats) -> &AtomicU64>,
    ) -> Self {
        gauge(stats).fetch_add(1, Relaxed);
        if let Some(total) = total {
            total(stats).fetch_add(1, Relaxed);
        }
        Self {
            stats: Arc::clone(stats),
            gauge,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        (self.gauge)(&self.stats).fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_guards_and_snapshots_copy_counters() {
        let stats = Arc::new(Stats::default());
        let a = Active::new(
            &stats,
            |s| &s.tcp_sessions_active,
            Some(|s| &s.tcp_sessions_total),
        );
        let b = Active::new(
            &stats,
            |s| &s.tcp_sessions_active,
            Some(|s| &s.tcp_sessions_total),
        );
        Stats::add(&stats.tcp_bytes_up, 1500);
        Stats::bump(&stats.malformed);
        let snap = stats.snapshot();
        assert_eq!(snap.tcp_sessions_active, 2);
        assert_eq!(snap.tcp_bytes_up, 1500);
        assert_eq!(snap.malformed, 1);
        drop((a, b));
        let snap = stats.snapshot();
        assert_eq!(snap.tcp_sessions_active, 0);
        assert_eq!(snap.tcp_sessions_total, 2, "totals do not go down");
    }
}
