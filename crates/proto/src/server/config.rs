//! What a [`Server`](super::Server) is configured with: its settings, the
//! apps' credentials and its entropy source.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::frame::MAX_PAYLOAD;
use crate::time::Timebase;
use crate::types::{AppId, Capabilities, Transports};

/// The secrets and permissions of one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCredentials {
    /// Every secret currently valid for the app (several during a rotation).
    /// A request's proof is checked against each, in constant time.
    pub secrets: Vec<Vec<u8>>,
    /// Transports the app may use.
    pub transports: Transports,
}

/// Where the server looks up apps. Implemented for
/// `HashMap<AppId, Arc<AppCredentials>>`; a configuration-reloading I/O layer
/// implements it over its own store.
pub trait CredentialStore: Send + Sync {
    /// The app's credentials, or `None` for an unknown app.
    fn lookup(&self, app_id: &AppId) -> Option<Arc<AppCredentials>>;
}

impl CredentialStore for HashMap<AppId, Arc<AppCredentials>> {
    fn lookup(&self, app_id: &AppId) -> Option<Arc<AppCredentials>> {
        self.get(app_id).cloned()
    }
}

/// A source of unpredictable bytes (session ids, binding ids and tokens).
/// The I/O layer implements it with the OS random generator; tests use a
/// seeded generator.
pub trait Entropy: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

pub(super) fn random_u64(e: &dyn Entropy) -> u64 {
    let mut b = [0u8; 8];
    e.fill(&mut b);
    u64::from_be_bytes(b)
}

/// Server settings. Every duration is one of the named timeouts of
/// `docs/protocol.md`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Maps `Instant`s to unix time for tickets and proofs.
    pub timebase: Timebase,
    /// How long a ticket is valid (`allocation lifetime`, default 600 s).
    pub ticket_lifetime: Duration,
    /// Longest a session can be refreshed for, from its first allocation
    /// (`max session lifetime`, default 24 h). Bindings end then too.
    pub max_session_lifetime: Duration,
    /// Deadline from accept (or first datagram) to the end of the handshake
    /// (`handshake deadline`, default 10 s).
    pub handshake_timeout: Duration,
    /// A binding with no traffic from the client for this long is dropped
    /// (`idle timeout`, default 60 s).
    pub idle_timeout: Duration,
    /// The keepalive interval told to clients (default 15 s).
    pub keepalive_interval: Duration,
    /// Largest accepted difference between a request's timestamp and the
    /// server's clock (`max clock skew`, default 300 s). Also the replay window
    /// of a captured request.
    pub max_clock_skew: Duration,
    /// TCP relay endpoints advertised in `AllocateOk` (at most 16 are sent).
    pub tcp_relays: Vec<SocketAddr>,
    /// UDP relay endpoints; each allocation gets `udp_relays_per_allocation`
    /// of them, chosen by session id to spread sessions over the range.
    pub udp_relays: Vec<SocketAddr>,
    /// How many UDP relay endpoints one `AllocateOk` lists (default 2).
    pub udp_relays_per_allocation: usize,
    /// Capabilities this server implements.
    pub capabilities: Capabilities,
    /// Most UDP binds waiting for the I/O layer's decision (default 1024);
    /// more are dropped.
    pub max_pending_binds: usize,
    /// Largest frame body accepted on a TCP connection, bound or not
    /// (default and cap [`MAX_PAYLOAD`]); before the bind the lower
    /// [`HANDSHAKE_MAX_PAYLOAD`](super::HANDSHAKE_MAX_PAYLOAD) applies too. A larger frame is refused with
    /// `Error` 100 and the connection closes, before anything is reserved
    /// for its body (`docs/protocol.md` §3.1).
    pub max_frame_len: usize,
    /// Most bytes of frames a bound datagram-mode connection queues for its
    /// client and its transport has not taken yet (default
    /// [`DEFAULT_MAX_QUEUED_BYTES`]). Every frame the connection sends counts:
    /// its answers (`Pong`, `Error`) and the destination's datagrams. At the
    /// bound the connection decodes no further input (a `Ping` read would
    /// add an answer), asks not to be read, and refuses datagrams for the
    /// client; a client that stays there is closed at its idle timeout.
    pub max_queued_bytes: usize,
}

/// The default [`ServerConfig::max_queued_bytes`]: 64 KiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * 1024;

impl ServerConfig {
    /// A configuration with the defaults of `docs/protocol.md` and no relays.
    #[must_use]
    pub fn new(timebase: Timebase) -> Self {
        Self {
            timebase,
            ticket_lifetime: Duration::from_secs(600),
            max_session_lifetime: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            max_clock_skew: Duration::from_secs(300),
            tcp_relays: Vec::new(),
            udp_relays: Vec::new(),
            udp_relays_per_allocation: 2,
            capabilities: Capabilities::ALL,
            max_pending_binds: 1024,
            max_frame_len: MAX_PAYLOAD,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }
}
