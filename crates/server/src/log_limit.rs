//! Rate-limited logging of refusals (failed logins, malformed input): each is
//! worth a line, but a flood of them must not fill the operator's disk. One
//! token bucket per node; lines over it are counted, and the next line that
//! gets through is preceded by "N similar lines suppressed".
//!
//! The budget is a [`LogBudget`], which the process's logger can share: the
//! events other crates (rustls, …) log about what unauthenticated peers sent
//! then count against the same budget ([`LogBudget::admit`]), and
//! [`clip`] keeps what peers sent from making any one line long.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bucket::TokenBucket;

/// Lines logged at once before the limit engages.
pub(crate) const LOG_BURST: u32 = 20;
/// Lines a second after that.
pub(crate) const LOG_PER_SEC: f64 = 5.0;

/// Characters of a peer's text (an offered ALPN list, an error quoting a
/// peer) one refusal line shows at most; [`clip`] cuts the rest.
pub(crate) const PEER_TEXT_MAX: usize = 256;

/// The refusal log budget: 20 lines at once, then 5 a second, for a node's
/// refusal lines and for whatever else the process's logger counts against
/// it. Cheap to clone (every clone is the same budget).
///
/// ```
/// use cloudproxy_server::LogBudget;
///
/// let budget = LogBudget::new();
/// let passed = (0..100).filter(|_| budget.admit().is_some()).count();
/// assert_eq!(passed, 20, "the burst, then nothing in the same instant");
/// ```
#[derive(Debug, Clone)]
pub struct LogBudget(Arc<LogLimiter>);

impl LogBudget {
    /// A fresh budget, full.
    #[must_use]
    pub fn new() -> Self {
        Self(Arc::new(LogLimiter::new(Instant::now())))
    }

    /// Takes one line from the budget: `Some(n)` with the number of lines
    /// suppressed since the last one that got through (the caller says so
    /// on its line), or `None` when the budget is spent (the line is
    /// counted as suppressed).
    #[must_use]
    pub fn admit(&self) -> Option<u64> {
        self.0.admit(Instant::now())
    }

    /// Runs `log` (which writes one line) if the budget allows, after a
    /// summary of what was suppressed before it.
    pub(crate) fn log(&self, log: impl FnOnce()) {
        self.0.log(log);
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// `text` cut to at most `max` characters, saying how much was cut: for
/// text a peer controls on a log line.
pub(crate) fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((at, _)) => Cow::Owned(format!("{}… ({} more bytes)", &text[..at], text.len() - at)),
    }
}

/// The per-node refusal log budget.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    state: Mutex<(TokenBucket, u64)>,
}

impl LogLimiter {
    pub(crate) fn new(now: Instant) -> Self {
        Self::with_rate(LOG_BURST, LOG_PER_SEC, now)
    }

    pub(crate) fn with_rate(burst: u32, per_sec: f64, now: Instant) -> Self {
        Self {
            state: Mutex::new((TokenBucket::new(burst, per_sec, now), 0)),
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the number of
    /// lines suppressed since the last one that was, or `None` (counted).
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (bucket, suppressed) = &mut *state;
        if bucket.take(now) {
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }

    /// Runs `log` (which writes one line) if the budget allows, after a
    /// summary of what was suppressed before it.
    pub(crate) fn log(&self, log: impl FnOnce()) {
        if let Some(suppressed) = self.admit(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(
                    suppressed,
                    "{suppressed} similar lines suppressed (refusals are logged at most {LOG_PER_SEC} a second after a burst of {LOG_BURST})"
                );
            }
            log();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_summarised() {
        let t0 = Instant::now();
        let limiter = LogLimiter::with_rate(3, 1.0, t0);
        let logged: Vec<_> = (0..100).filter_map(|_| limiter.admit(t0)).collect();
        assert_eq!(logged, [0, 0, 0], "the burst, nothing suppressed yet");
        assert_eq!(
            limiter.admit(t0 + Duration::from_secs(1)),
            Some(97),
            "the next line carries the count of the ones dropped"
        );
        assert_eq!(limiter.admit(t0 + Duration::from_secs(2)), Some(0));
    }

    #[test]
    fn peer_text_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("h2,http/1.1", 256), "h2,http/1.1");
        let long = "é".repeat(300);
        let clipped = clip(&long, 256);
        assert!(clipped.starts_with(&"é".repeat(256)), "{clipped}");
        assert!(clipped.ends_with("… (88 more bytes)"), "{clipped}");
    }
}
