//! Login failures per source address: wrong SOCKS5 passwords, wrong
//! allocation proofs and bad tickets each take a token from the source's
//! bucket; a source with an empty bucket is refused before its credential is
//! looked at, until the bucket refills. Without this a password or secret
//! could be guessed as fast as the network carries attempts.
//!
//! The table is bounded: when it is full, the source whose last failure is
//! oldest is dropped (the one most likely refilled, so with the least to
//! remember). An index ordered by last failure finds it in O(log n), so a
//! flood of new failing sources costs no scan of the table under its lock.
//! IPv6 sources are keyed by their /64, which one host usually holds whole.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::allowlist::canonical_ip;
use crate::bucket::TokenBucket;

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
    sources: Mutex<Table>,
}

/// The sources, and the same sources ordered by last failure.
#[derive(Debug, Default)]
struct Table {
    by_ip: HashMap<IpAddr, Source>,
    by_age: BTreeSet<(Instant, IpAddr)>,
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
            sources: Mutex::new(Table::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `ip` may try to log in now.
    pub(crate) fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = key(ip);
        let mut guard = self.lock();
        let table = &mut *guard;
        let Some(source) = table.by_ip.get_mut(&ip) else {
            return true;
        };
        if source.bucket.is_full(now) {
            // Refilled: nothing left to remember about it.
            let last = source.last_failure;
            table.by_age.remove(&(last, ip));
            table.by_ip.remove(&ip);
            return true;
        }
        let ok = source.bucket.has_token(now);
        if ok {
            source.engaged = false;
        }
        ok
    }

    /// Counts a failed login from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Failure {
        let ip = key(ip);
        let limits = self.limits;
        let mut guard = self.lock();
        let table = &mut *guard;
        if !table.by_ip.contains_key(&ip) && table.by_ip.len() >= limits.sources {
            // The stalest source makes room.
            if let Some((_, stalest)) = table.by_age.pop_first() {
                table.by_ip.remove(&stalest);
            }
        }
        let source = table.by_ip.entry(ip).or_insert_with(|| Source {
            bucket: TokenBucket::new(limits.burst, f64::from(limits.per_minute) / 60.0, now),
            last_failure: now,
            engaged: false,
        });
        table.by_age.remove(&(source.last_failure, ip));
        // `now` may be earlier than the last failure (callers' clocks are
        // read before the lock): keep the order monotonic per source.
        source.last_failure = source.last_failure.max(now);
        table.by_age.insert((source.last_failure, ip));
        source.bucket.take(now);
        if !source.engaged && !source.bucket.has_token(now) {
            source.engaged = true;
            Failure::Engaged
        } else {
            Failure::Counted
        }
    }

    /// Sources remembered now (and the index agrees).
    #[cfg(test)]
    fn len(&self) -> usize {
        let table = self.lock();
        assert_eq!(table.by_ip.len(), table.by_age.len());
        table.by_ip.len()
    }

    /// Whether `ip`'s failures are remembered.
    #[cfg(test)]
    fn remembers(&self, ip: IpAddr) -> bool {
        self.lock().by_ip.contains_key(&key(ip))
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
    fn the_table_stays_bounded_and_evicts_the_stalest() {
        let t0 = Instant::now();
        let l = limiter(3);
        let ip = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, i));
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        l.failed(ip(1), at(0));
        l.failed(ip(2), at(1));
        l.failed(ip(3), at(2));
        // 1 fails again: now 2 is the stalest.
        l.failed(ip(1), at(3));
        l.failed(ip(4), at(4));
        assert_eq!(l.len(), 3);
        assert!(!l.remembers(ip(2)), "the stalest went");
        assert!(l.remembers(ip(1)) && l.remembers(ip(3)) && l.remembers(ip(4)));
        // A source whose bucket refilled is forgotten when it next tries.
        assert!(l.allows(ip(4), at(4) + Duration::from_secs(60)));
        assert!(!l.remembers(ip(4)));
        assert_eq!(l.len(), 2);
        l.failed(ip(4), at(4));
        l.failed(ip(5), at(5));
        assert!(!l.remembers(ip(3)), "then the next stalest");
        assert_eq!(l.len(), 3);
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
