//! The transport ladder: the ways through to the proxy, tried staggered
//! (UDP relay → TCP relay → TLS → TLS through an HTTP proxy), the first to
//! be bound winning; and the memory of which rung won on which network.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudproxy_params::ProxyServer;
use tokio::task::JoinSet;

use crate::error::EngineError;
use crate::event::ProxyType;
use crate::settings::ProxyMode;

/// Time between the starts of two rungs (as the dialer staggers addresses).
pub(crate) const RUNG_STAGGER: Duration = Duration::from_millis(250);

/// One way through to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rung {
    /// Allocation and messages over plain TCP, media over the UDP relay.
    Udp,
    /// Allocation and messages over plain TCP, media UDP-over-TCP.
    Tcp,
    /// Everything over TLS to the proxy's TLS port.
    Tls,
    /// Everything over TLS through an HTTP proxy's `CONNECT`.
    HttpProxy,
}

impl Rung {
    pub(crate) fn proxy_type(self) -> ProxyType {
        match self {
            Self::Udp => ProxyType::Udp,
            Self::Tcp => ProxyType::Tcp,
            Self::Tls => ProxyType::Tls,
            Self::HttpProxy => ProxyType::HttpProxy,
        }
    }

    /// Whether the rung speaks plain TCP to the allocation service and the
    /// relays (the UDP and TCP rungs share one allocation).
    pub(crate) fn is_plain(self) -> bool {
        matches!(self, Self::Udp | Self::Tcp)
    }
}

/// The rungs `mode` allows, in the order to try them: the remembered winner
/// first, the others in ladder order. The HTTP proxy rung only with an
/// HTTP proxy.
pub(crate) fn rungs(mode: ProxyMode, http_proxy: bool, remembered: Option<Rung>) -> Vec<Rung> {
    let allowed: Vec<Rung> = match mode {
        ProxyMode::ForceUdp => vec![Rung::Udp],
        ProxyMode::ForceTcp => vec![Rung::Tcp],
        ProxyMode::ForceTls => vec![Rung::Tls, Rung::HttpProxy],
        ProxyMode::Off | ProxyMode::Auto | ProxyMode::On => {
            vec![Rung::Udp, Rung::Tcp, Rung::Tls, Rung::HttpProxy]
        }
    };
    let mut order: Vec<Rung> = allowed
        .into_iter()
        .filter(|r| *r != Rung::HttpProxy || http_proxy)
        .collect();
    if let Some(first) = remembered {
        if let Some(at) = order.iter().position(|r| *r == first) {
            let rung = order.remove(at);
            order.insert(0, rung);
        }
    }
    order
}

/// What makes two joins "on the same network": the proxy server setting, the
/// HTTP proxy in use, and the local address the operating system picks
/// toward the proxy (another Wi-Fi, a VPN coming up, a cable plugged in
/// change it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NetworkKey {
    server: ProxyServer,
    http_proxy: Option<String>,
    local: Option<IpAddr>,
}

impl NetworkKey {
    /// The key toward `toward` (the first proxy address; `None` when the
    /// proxy's name does not resolve here, e.g. behind an HTTP proxy
    /// without DNS). Picking the local address sends nothing.
    pub(crate) fn new(
        server: &ProxyServer,
        http_proxy: Option<String>,
        toward: Option<SocketAddr>,
    ) -> Self {
        let local = toward.and_then(|peer| {
            let socket =
                std::net::UdpSocket::bind(cloudproxy_transport::net::any_local_for(peer)).ok()?;
            socket.connect(peer).ok()?;
            socket.local_addr().ok().map(|a| a.ip())
        });
        Self {
            server: server.clone(),
            http_proxy,
            local,
        }
    }
}

/// The rung that won last on each network, for one engine (in memory).
#[derive(Debug, Clone, Default)]
pub(crate) struct RungMemory(Arc<Mutex<HashMap<NetworkKey, Rung>>>);

impl RungMemory {
    pub(crate) fn get(&self, key: &NetworkKey) -> Option<Rung> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
    }

    pub(crate) fn remember(&self, key: NetworkKey, rung: Rung) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, rung);
    }
}

/// A rung's attempt, run as its own task so that cancelling it (aborting
/// the task) drops, and so closes, every socket it opened.
pub(crate) type Attempt<T> = Pin<Box<dyn Future<Output = Result<T, EngineError>> + Send>>;

/// Whether an error ends the whole ladder at once: the same answer would
/// come on every rung (the credential, the join), or the network is
/// tampering with TLS, or the HTTP proxy refused the credentials.
pub(crate) fn is_fatal(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::UntrustedCertificate { .. }
            | EngineError::ProxyAuthFailed { .. }
            | EngineError::CredentialRefused { .. }
            | EngineError::JoinRefused { .. }
    )
}

/// Every attempt of a [`race`] failed, or one failed fatally.
#[derive(Debug)]
pub(crate) struct RaceLost {
    /// The fatal error that ended the race early, if one did.
    pub(crate) fatal: Option<EngineError>,
    /// Each attempt's error, by index (`None`: not started or cancelled).
    pub(crate) errors: Vec<Option<EngineError>>,
}

impl RaceLost {
    /// The fatal error, else the error of the earliest attempt that failed.
    pub(crate) fn first(self) -> EngineError {
        self.pick(|mut errors| errors.next())
    }

    /// The fatal error, else the error of the latest attempt that failed.
    pub(crate) fn last(self) -> EngineError {
        self.pick(Iterator::last)
    }

    fn pick(
        self,
        choose: impl FnOnce(
            std::iter::Flatten<std::vec::IntoIter<Option<EngineError>>>,
        ) -> Option<EngineError>,
    ) -> EngineError {
        match self.fatal {
            Some(e) => e,
            None => choose(self.errors.into_iter().flatten()).unwrap_or(EngineError::Timeout {
                what: "the transport ladder (every rung panicked)",
                after: Duration::ZERO,
            }),
        }
    }
}

/// The winner of a [`race`]: its value, and the errors of the attempts
/// that had failed before it (by index).
#[derive(Debug)]
pub(crate) struct Won<T> {
    pub(crate) value: T,
    pub(crate) failed: Vec<Option<EngineError>>,
}

/// Runs `attempts`, each as its own task, the first at once and each next
/// one the given delay after the previous start, or as soon as an attempt
/// fails; returns the first success. The attempts still running are
/// aborted when this returns (or is dropped), closing their sockets. A
/// fatal error ([`is_fatal`]) ends the race at once.
pub(crate) async fn race<T: Send + 'static>(
    attempts: Vec<(Duration, Attempt<T>)>,
) -> Result<Won<T>, RaceLost> {
    let mut errors: Vec<Option<EngineError>> = attempts.iter().map(|_| None).collect();
    let mut pending = attempts.into_iter().enumerate().peekable();
    // Dropping the set aborts every task still in it.
    let mut running: JoinSet<(usize, Result<T, EngineError>)> = JoinSet::new();
    let mut next_start = tokio::time::Instant::now();
    loop {
        if running.is_empty() || tokio::time::Instant::now() >= next_start {
            if let Some((index, (_, attempt))) = pending.next() {
                running.spawn(async move { (index, attempt.await) });
                let delay = pending.peek().map_or(Duration::ZERO, |(_, (d, _))| *d);
                next_start = tokio::time::Instant::now() + delay;
                continue;
            }
        }
        if running.is_empty() {
            return Err(RaceLost {
                fatal: None,
                errors,
            });
        }
        let wake = pending.peek().is_some().then_some(next_start);
        tokio::select! {
            joined = running.join_next() => match joined {
                Some(Ok((_, Ok(value)))) => {
                    return Ok(Won {
                        value,
                        failed: errors,
                    });
                }
                Some(Ok((_, Err(e)))) if is_fatal(&e) => {
                    return Err(RaceLost {
                        fatal: Some(e),
                        errors,
                    });
                }
                Some(Ok((index, Err(e)))) => {
                    errors[index] = Some(e);
                    // A failure frees its slot: start the next rung now.
                    next_start = tokio::time::Instant::now();
                }
                Some(Err(join_error)) => {
                    tracing::error!(error = %join_error, "a ladder rung panicked");
                    next_start = tokio::time::Instant::now();
                }
                None => {}
            },
            () = cloudproxy_transport::net::sleep_until_opt(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_rung_goes_first_and_the_http_rung_needs_a_proxy() {
        assert_eq!(
            rungs(ProxyMode::On, false, None),
            [Rung::Udp, Rung::Tcp, Rung::Tls]
        );
        assert_eq!(
            rungs(ProxyMode::Auto, true, Some(Rung::Tls)),
            [Rung::Tls, Rung::Udp, Rung::Tcp, Rung::HttpProxy]
        );
        assert_eq!(
            rungs(ProxyMode::ForceTcp, true, Some(Rung::Udp)),
            [Rung::Tcp]
        );
        assert_eq!(
            rungs(ProxyMode::ForceTls, true, Some(Rung::HttpProxy)),
            [Rung::HttpProxy, Rung::Tls]
        );
        assert_eq!(rungs(ProxyMode::ForceTls, false, None), [Rung::Tls]);
    }

    fn attempt(
        after: Duration,
        result: Result<u32, &'static str>,
        dropped: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Attempt<u32> {
        Box::pin(async move {
            let _dropped = dropped;
            tokio::time::sleep(after).await;
            result.map_err(|what| EngineError::Timeout {
                what,
                after: Duration::ZERO,
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_success_wins_and_the_rest_are_cancelled() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = tokio::time::Instant::now();
        let won = race(vec![
            (
                Duration::ZERO,
                attempt(Duration::from_secs(5), Ok(1), Some(tx)),
            ),
            (
                RUNG_STAGGER,
                attempt(Duration::from_millis(10), Ok(2), None),
            ),
        ])
        .await
        .unwrap();
        assert_eq!(won.value, 2);
        assert_eq!(started.elapsed(), RUNG_STAGGER + Duration::from_millis(10));
        // The slow rung's task was aborted: what it held is dropped.
        assert!(rx.await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_rung_at_once() {
        let started = tokio::time::Instant::now();
        let won = race(vec![
            (
                Duration::ZERO,
                attempt(Duration::from_millis(10), Err("first"), None),
            ),
            (
                RUNG_STAGGER,
                attempt(Duration::from_millis(10), Ok(2), None),
            ),
        ])
        .await
        .unwrap();
        assert_eq!(won.value, 2);
        assert!(won.failed[0].is_some());
        assert_eq!(started.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_gives_the_first_rungs_error() {
        let err = race(vec![
            (
                Duration::ZERO,
                attempt(Duration::from_millis(30), Err("first"), None),
            ),
            (
                RUNG_STAGGER,
                attempt(Duration::from_millis(1), Err("second"), None),
            ),
        ])
        .await
        .unwrap_err();
        assert!(
            matches!(
                &err.errors[1],
                Some(EngineError::Timeout { what: "second", .. })
            ),
            "{err:?}"
        );
        let err = err.first();
        assert!(
            matches!(err, EngineError::Timeout { what: "first", .. }),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_error_ends_the_ladder_at_once() {
        let fatal: Attempt<u32> = Box::pin(async {
            Err(EngineError::ProxyAuthFailed {
                http_proxy: "http://p:3128".into(),
                hint: "",
            })
        });
        let started = tokio::time::Instant::now();
        let err = race(vec![
            (
                Duration::ZERO,
                attempt(Duration::from_secs(10), Ok(1), None),
            ),
            (RUNG_STAGGER, fatal),
        ])
        .await
        .unwrap_err()
        .last();
        assert!(matches!(err, EngineError::ProxyAuthFailed { .. }));
        assert_eq!(started.elapsed(), RUNG_STAGGER);
    }
}
