//! Login failures per source address: wrong SOCKS5 passwords, wrong
//! allocation proofs and bad tickets each take a token from the source's
//! bucket; a source with an empty bucket is refused before its credential is
//! looked at, until the bucket refills. Without this a password or secret
//! could be guessed as fast as the network carries attempts.
//!
//! The table is bounded: when it is full, a source whose bucket has refilled
//! (nothing to remember) is dropped, else the one whose last failure is
//! oldest. IPv6 sources are keyed by their /64, which one host usually holds
//! whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::allowlist::canonical_ip;
use crate::server::bucket::TokenBucket;

/// The limiter's settings (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginLimits {
    /// Failures a source may make at once.
    pub(crate) burst: u32,
    /// Failures a minute after that.
    pub(crate) per_minute: u32,
    /// Sources remembered at once.
    pub(crate) sources: usize,
}

#[derive(Debug)]
struct Source {
    bucket: TokenBucket,
    last_failure: Instant,
    /// The limit is refusing this source (logged once per engagement).
    engaged: bool,
}

/// What a failure did to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Counted; the source may try again.
    Counted,
    /// This failure used the source's last token: the limit engages now.
    Engaged,
}

/// The per-node table of sources with recent login failures.
#[derive(Debug)]
pub(crate) struct LoginLimiter {
    limits: LoginLimits,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

/// The table key: the canonical address, IPv6 cut to its /64.
fn key(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl LoginLimiter {
    pub(crate) fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` may try to log in now.
    pub(crate) fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        let mut sources = self.lock();
        match sources.get_mut(&key(ip)) {
            Some(source) => {
                let ok = source.bucket.has_token(now);
                if ok {
                    source.engaged = false;
                }
                ok
            }
            None => true,
        }
    }

    /// Counts a failed login from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Failure {
        let ip = key(ip);
        let limits = self.limits;
        let mut sources = self.lock();
        if !sources.contains_key(&ip) && sources.len() >= limits.sources {
            evict(&mut sources, now);
        }
        let source = sources.entry(ip).or_insert_with(|| Source {
            bucket: TokenBucket::new(limits.burst, f64::from(limits.per_minute) / 60.0, now),
            last_failure: now,
            engaged: false,
        });
        source.last_failure = now;
        source.bucket.take(now);
        if !source.engaged && !source.bucket.has_token(now) {
            source.engaged = true;
            Failure::Engaged
        } else {
            Failure::Counted
        }
    }

    /// Sources remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Makes room for one source: a refilled one if any, else the stalest.
fn evict(sources: &mut HashMap<IpAddr, Source>, now: Instant) {
    let refilled = sources
        .iter_mut()
        .find_map(|(ip, s)| s.bucket.is_full(now).then_some(*ip));
    let victim = refilled.or_else(|| {
        sources
            .iter()
            .min_by_key(|(_, s)| s.last_failure)
            .map(|(ip, _)| *ip)
    });
    if let Some(ip) = victim {
        sources.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(sources: usize) -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            burst: 3,
            per_minute: 60,
            sources,
        })
    }

    #[test]
    fn a_source_is_refused_after_its_burst_until_it_refills() {
        let t0 = Instant::now();
        let l = limiter(16);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.failed(ip, t0), Failure::Counted);
        assert_eq!(l.failed(ip, t0), Failure::Counted);
        assert!(l.allows(ip, t0));
        assert_eq!(l.failed(ip, t0), Failure::Engaged);
        assert!(!l.allows(ip, t0));
        assert_eq!(l.failed(ip, t0), Failure::Counted, "engaged once");
        assert!(
            l.allows("192.0.2.2".parse().unwrap(), t0),
            "others unaffected"
        );
        assert!(
            l.allows(ip, t0 + Duration::from_secs(2)),
            "one a second back"
        );
    }

    #[test]
    fn ipv6_sources_share_their_64_and_mapped_addresses_their_ipv4() {
        let t0 = Instant::now();
        let l = limiter(16);
        for i in 1..=3u16 {
            l.failed(format!("2001:db8::{i}").parse().unwrap(), t0);
        }
        assert!(!l.allows("2001:db8::ffff".parse().unwrap(), t0));
        assert!(l.allows("2001:db8:0:1::1".parse().unwrap(), t0));
        for _ in 0..3 {
            l.failed("::ffff:192.0.2.9".parse().unwrap(), t0);
        }
        assert!(!l.allows("192.0.2.9".parse().unwrap(), t0));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let l = limiter(8);
        for i in 0..1000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.failed(ip, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(l.len(), 8);
    }
}
