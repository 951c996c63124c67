//! Turning a client's requested destination into addresses the relay may use.
//!
//! Shared by every relay (native TCP and UDP, SOCKS5), so they cannot
//! disagree. A name is resolved by the relay with a deadline and every
//! *resolved* address is checked: a name that resolves to 127.0.0.1 is as
//! forbidden as 127.0.0.1 itself (DNS rebinding), and when a name resolves to
//! both allowed and forbidden addresses only the allowed ones are used.

use std::net::SocketAddr;
use std::time::Duration;

use cloudproxy_proto::Address;

use crate::allowlist::{Allowlist, Denied};

/// A destination as a client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination<'a> {
    /// An address.
    Addr(SocketAddr),
    /// A host name and port, resolved by the relay.
    Name(&'a str, u16),
}

impl std::fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl<'a> From<&'a Address> for Destination<'a> {
    /// A destination as the native protocol and SOCKS5 carry it.
    fn from(address: &'a Address) -> Self {
        match address {
            Address::Ip(addr) => Self::Addr(*addr),
            Address::Domain(name, port) => Self::Name(name.as_str(), *port),
        }
    }
}

/// Why a destination cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestinationError {
    /// The address (or every address the name resolved to) is refused.
    #[error("{0}")]
    Denied(Denied),
    /// The name resolved, but to no address the allowlist permits.
    #[error("destination {name} resolves only to addresses the relay may not reach ({denied})")]
    NameDenied {
        /// The name and port.
        name: String,
        /// Why the first resolved address was refused.
        denied: Denied,
    },
    /// The name does not resolve.
    #[error("destination {name} could not be resolved: {reason}")]
    Unresolvable {
        /// The name and port.
        name: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The resolver did not answer within the deadline.
    #[error("destination {name} could not be resolved within {timeout:?}")]
    ResolveTimeout {
        /// The name and port.
        name: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The app already has its maximum of name lookups in flight on this
    /// node (`limits.dns_lookups_in_flight_per_app`); refused at once.
    #[error(
        "destination {name} was not resolved: the app already has {max} name lookups in flight on this relay; retry later"
    )]
    LookupsInFlight {
        /// The name and port.
        name: String,
        /// The limit.
        max: u32,
    },
    /// The app started more name lookups than its rate allows
    /// (`limits.dns_lookups_per_sec_per_app`); refused at once.
    #[error(
        "destination {name} was not resolved: the app is over its {per_sec} name lookups a second on this relay; retry later"
    )]
    LookupRate {
        /// The name and port.
        name: String,
        /// The rate.
        per_sec: u32,
    },
}

impl DestinationError {
    /// Whether the refusal is by policy (as opposed to a lookup failure).
    #[must_use]
    pub fn is_policy(&self) -> bool {
        matches!(self, Self::Denied(_) | Self::NameDenied { .. })
    }
}

/// The allowed, canonical addresses for `destination`, in resolver order.
/// Never empty on success.
///
/// This resolves with the system resolver and no budget; the node's relays
/// resolve through their per-app bounded lookups instead
/// ([`lookups`](crate::lookups)).
pub async fn permitted(
    destination: &Destination<'_>,
    allowlist: &Allowlist,
    dns_timeout: Duration,
) -> Result<Vec<SocketAddr>, DestinationError> {
    permitted_via(destination, allowlist, dns_timeout, |host, port, _| {
        Ok(tokio::net::lookup_host((host, port)))
    })
    .await
}

/// The allowed, canonical addresses for `destination`: a literal address is
/// checked as it is; a name is resolved by the future `lookup` returns (given
/// the host, the port and the destination's display form) within `timeout`.
/// The future is dropped on the deadline, before the error returns.
pub(crate) async fn permitted_via<'a, Fut, I>(
    destination: &Destination<'a>,
    allowlist: &Allowlist,
    timeout: Duration,
    lookup: impl FnOnce(&'a str, u16, &str) -> Result<Fut, DestinationError>,
) -> Result<Vec<SocketAddr>, DestinationError>
where
    Fut: std::future::Future<Output = std::io::Result<I>>,
    I: IntoIterator<Item = SocketAddr>,
{
    let (host, port) = match *destination {
        Destination::Addr(addr) => {
            return allowlist
                .check(addr)
                .map(|a| vec![a])
                .map_err(DestinationError::Denied);
        }
        Destination::Name(host, port) => (host, port),
    };
    let name = destination.to_string();
    let resolved = tokio::time::timeout(timeout, lookup(host, port, &name)?)
        .await
        .map_err(|_| DestinationError::ResolveTimeout {
            name: name.clone(),
            timeout,
        })?
        .map_err(|e| {
            tracing::debug!(destination = %name, error = %e, "name lookup failed");
            unresolvable(name.clone())
        })?;
    check_resolved(name, resolved, allowlist)
}

/// The resolver's failure as a client may see it: the host's own error text
/// (which can describe the host, "Too many open files") goes to the log only.
pub(crate) fn unresolvable(name: String) -> DestinationError {
    DestinationError::Unresolvable {
        name,
        reason: "the name does not resolve".into(),
    }
}

/// Checks every address a name resolved to; the allowed ones, or why none is.
pub(crate) fn check_resolved(
    name: String,
    resolved: impl IntoIterator<Item = SocketAddr>,
    allowlist: &Allowlist,
) -> Result<Vec<SocketAddr>, DestinationError> {
    let mut allowed = Vec::new();
    let mut first_denial = None;
    for addr in resolved {
        match allowlist.check(addr) {
            Ok(addr) if !allowed.contains(&addr) => allowed.push(addr),
            Ok(_) => {}
            Err(denied) => {
                first_denial.get_or_insert(denied);
            }
        }
    }
    match (allowed.is_empty(), first_denial) {
        (false, _) => Ok(allowed),
        (true, Some(denied)) => Err(DestinationError::NameDenied { name, denied }),
        (true, None) => Err(DestinationError::Unresolvable {
            name,
            reason: "the name has no address".into(),
        }),
    }
}
