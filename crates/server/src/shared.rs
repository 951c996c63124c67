//! The state every task of a node shares, and what every relay derives from
//! it. Its own module, so the node, the relays and the admin listener each
//! depend on it rather than on each other.

use std::sync::Arc;
use std::time::Instant;

use cloudproxy_proto::server::Server;
use cloudproxy_transport::lifecycle::Lifecycle;

use crate::config::Limits;
use crate::log_limit::LogBudget;
use crate::login_limit::LoginLimiter;
use crate::lookups::Lookups;
use crate::policy::PolicyCell;
use crate::quota::Quotas;
use crate::stats::{Stats, Timings};
use crate::tls::TlsPort;

/// The state every task of a node shares.
pub(crate) struct Shared {
    pub(crate) proto: Arc<Server>,
    /// The allowlist and other policy a reload replaces.
    pub(crate) policy: PolicyCell,
    pub(crate) quotas: Arc<Quotas<u64>>,
    pub(crate) stats: Arc<Stats>,
    /// Session duration and allocation latency histograms.
    pub(crate) timings: Timings,
    /// The process's descriptor limit after raising it, when known.
    pub(crate) nofile: Option<u64>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) limits: Limits,
    /// Name resolution, bounded per app.
    pub(crate) lookups: Lookups,
    /// Login failures per source address over TCP (verified sources).
    pub(crate) logins: LoginLimiter,
    /// Login failures per source address over UDP (sources may be forged):
    /// gates UDP only, never TCP or SOCKS5.
    pub(crate) udp_logins: LoginLimiter,
    /// The budget of refusal log lines (failed logins, malformed input),
    /// shared with the process's logger when it was given one.
    pub(crate) refusal_log: LogBudget,
    /// The TLS port's configuration and certificate, when it is on.
    pub(crate) tls: Option<TlsPort>,
}

impl Shared {
    /// The `Instant` at which a session reaches its maximum lifetime, from
    /// the unix deadline its ticket gives.
    pub(crate) fn session_deadline(&self, unix_deadline: u64) -> Instant {
        self.proto.config().timebase.instant_at(unix_deadline)
    }
}
