//! Name resolution for the relays, bounded per app.
//!
//! A name whose servers never answer must not let one app hold what other
//! apps need, so each app has its own budget: at most
//! `dns_lookups_in_flight_per_app` lookups at once and at most
//! `dns_lookups_per_sec_per_app` started a second. Over either, the bind is
//! refused at once with a typed error; other apps' lookups are untouched.
//! Lookups run only for binds already within their quota (admission runs
//! first).
//!
//! A lookup holds its app's place ([`LookupHold`]) for as long as it really
//! runs. The node's resolver ([`DnsResolver`]) is asynchronous and cancelled
//! by dropping its future, so its place is given back as soon as the relay
//! stops waiting: at the lookup deadline (`dns_timeout_ms`), when the
//! session ends, at shutdown. A resolver that cannot be cancelled
//! ([`SystemResolver`], `getaddrinfo` on a blocking thread) carries the
//! place into the work that outlives the future, so that lookup counts until
//! it really returns.
//!
//! The resolver itself is behind [`Resolve`], so a node can be given another
//! one (tests model a resolver that never answers with it, and point
//! [`DnsResolver::with_name_servers`] at a local server that never answers).
//!
//! [`DnsResolver`]: crate::resolver::DnsResolver
//! [`DnsResolver::with_name_servers`]: crate::resolver::DnsResolver::with_name_servers

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::allowlist::Allowlist;
use crate::bucket::TokenBucket;
use crate::destination::{Destination, DestinationError, permitted_via};

/// A lookup's result, as a resolver delivers it.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// A name resolver for the relays.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `host` (with `port`). `hold` is the app's place among its
    /// lookups in flight: keep it alive until the lookup has really ended.
    /// A lookup that ends when the returned future is dropped keeps `hold`
    /// in that future, so the place is free the moment the relay stops
    /// waiting; one that goes on after the drop (it cannot be cancelled)
    /// moves `hold` into the work that goes on, so it still counts against
    /// its app.
    fn lookup(&self, host: String, port: u16, hold: LookupHold) -> LookupFuture;
}

/// One app's place among its lookups in flight (see [`Resolve::lookup`]).
#[derive(Debug)]
pub struct LookupHold {
    _permit: OwnedSemaphorePermit,
}

#[cfg(test)]
impl LookupHold {
    /// A place of its own, for resolver unit tests.
    pub(crate) fn unbudgeted() -> Self {
        Self {
            _permit: Arc::new(Semaphore::new(1))
                .try_acquire_owned()
                .expect("a new semaphore has a permit"),
        }
    }
}

/// The operating system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS as
/// `nsswitch.conf` says), on tokio's blocking pool.
///
/// Its lookups cannot be cancelled: one whose servers never answer holds a
/// blocking thread, and its app's place, for the C resolver's own timeout
/// however soon the relay stops waiting. Not the node's default
/// ([`DnsResolver`](crate::resolver::DnsResolver) is); for a host
/// whose names only `nsswitch.conf` sources know (mDNS, LDAP), given to
/// [`ProxyNode::start_with_resolver`](crate::ProxyNode::start_with_resolver).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: String, port: u16, hold: LookupHold) -> LookupFuture {
        let task = tokio::task::spawn_blocking(move || {
            // getaddrinfo cannot be cancelled: the place is given back when
            // it returns, not when the relay stops waiting.
            let _hold = hold;
            (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect)
        });
        Box::pin(async move { task.await.unwrap_or_else(|e| Err(io::Error::other(e))) })
    }
}

/// The per-app lookup limits (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LookupLimits {
    pub(crate) in_flight_per_app: u32,
    pub(crate) per_sec_per_app: u32,
    pub(crate) timeout: Duration,
}

struct AppLookups {
    in_flight: Arc<Semaphore>,
    rate: TokenBucket,
}

/// The node's resolver with every app's budget.
pub(crate) struct Lookups {
    resolver: Arc<dyn Resolve>,
    limits: LookupLimits,
    apps: Mutex<HashMap<String, AppLookups>>,
}

impl Lookups {
    pub(crate) fn new(resolver: Arc<dyn Resolve>, limits: LookupLimits) -> Self {
        Self {
            resolver,
            limits,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// A place among `app`'s lookups, or the typed refusal.
    fn reserve(&self, app: &str, name: &str) -> Result<LookupHold, DestinationError> {
        let mut apps = self
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limits = self.limits;
        let now = Instant::now();
        // Apps come from verified logins only, so this map is bounded by
        // the configuration.
        let entry = apps.entry(app.to_owned()).or_insert_with(|| AppLookups {
            in_flight: Arc::new(Semaphore::new(limits.in_flight_per_app as usize)),
            rate: TokenBucket::new(
                limits.per_sec_per_app,
                f64::from(limits.per_sec_per_app),
                now,
            ),
        });
        let permit = Arc::clone(&entry.in_flight)
            .try_acquire_owned()
            .map_err(|_| DestinationError::LookupsInFlight {
                name: name.to_owned(),
                max: limits.in_flight_per_app,
            })?;
        if !entry.rate.take(now) {
            return Err(DestinationError::LookupRate {
                name: name.to_owned(),
                per_sec: limits.per_sec_per_app,
            });
        }
        Ok(LookupHold { _permit: permit })
    }

    /// The allowed, canonical addresses for `destination`, resolving a name
    /// within `app`'s budget and the lookup deadline.
    pub(crate) async fn permitted(
        &self,
        app: &str,
        destination: &Destination<'_>,
        allowlist: &Allowlist,
    ) -> Result<Vec<SocketAddr>, DestinationError> {
        // On the deadline the lookup's future is dropped before the error
        // returns: a cancellable lookup has then given its place back.
        permitted_via(
            destination,
            allowlist,
            self.limits.timeout,
            |host, port, name| {
                let hold = self.reserve(app, name)?;
                Ok(self.resolver.lookup(host.to_owned(), port, hold))
            },
        )
        .await
    }
}
