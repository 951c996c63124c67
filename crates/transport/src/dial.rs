//! Staggered parallel connection attempts (RFC 8305, "happy eyeballs").
//!
//! A firewall that drops packets turns a dead address into a long wait, so
//! attempts are not made one after another: the first starts at once, each
//! next one after a short stagger or as soon as the one before it fails,
//! whichever comes first. The first success wins and the others are dropped.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, timeout_at};

/// How attempts are paced and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialPolicy {
    /// Delay before starting the next attempt while earlier ones are pending.
    pub stagger: Duration,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
    /// How long the whole dial may take.
    pub overall_timeout: Duration,
}

impl Default for DialPolicy {
    /// 250 ms stagger (RFC 8305's recommendation), 3 s per attempt, 10 s in all.
    fn default() -> Self {
        Self {
            stagger: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(3),
            overall_timeout: Duration::from_secs(10),
        }
    }
}

/// What became of one candidate whose attempts fail with `E`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<E> {
    /// The attempt failed with this error.
    Failed(E),
    /// The attempt panicked (a bug; the panic itself went to the panic hook).
    Panicked,
    /// The attempt did not finish within the per-attempt timeout.
    TimedOut(Duration),
    /// The overall deadline passed while the attempt was still running.
    Abandoned,
    /// The overall deadline passed before the attempt was started.
    NotTried,
}

impl<E: fmt::Display> fmt::Display for Outcome<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "failed: {e}"),
            Self::Panicked => f.write_str("failed: attempt panicked"),
            Self::TimedOut(after) => write!(f, "no answer within {after:?}"),
            Self::Abandoned => f.write_str("still pending at the overall deadline"),
            Self::NotTried => f.write_str("not tried before the overall deadline"),
        }
    }
}

/// Every candidate failed; says what happened to each (its attempts
/// failing with `E`). The outcomes are part of the message, so there is no
/// separate [`source`](std::error::Error::source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError<E> {
    /// Each candidate, in the order given, with its outcome.
    pub attempts: Vec<(SocketAddr, Outcome<E>)>,
    /// How long the dial took before giving up.
    pub elapsed: Duration,
}

impl<E: fmt::Display> fmt::Display for DialError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("no address to try");
        }
        write!(
            f,
            "could not reach any of {} address(es) in {:?}:",
            self.attempts.len(),
            self.elapsed
        )?;
        for (addr, outcome) in &self.attempts {
            write!(f, "\n  {addr}: {outcome}")?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for DialError<E> {}

/// Races `attempt` over `candidates` under `policy`; returns the winning
/// address with its result.
///
/// ```no_run
/// # async fn example() -> Result<(), cloudproxy_transport::dial::DialError<std::io::Error>> {
/// use cloudproxy_transport::dial::{DialPolicy, race};
/// use tokio::net::TcpStream;
///
/// let candidates = ["192.0.2.1:9700".parse().unwrap(), "192.0.2.2:9700".parse().unwrap()];
/// let (addr, stream) = race(&candidates, &DialPolicy::default(), TcpStream::connect).await?;
/// println!("connected to {addr}");
/// # Ok(()) }
/// ```
pub async fn race<T, E, F, Fut>(
    candidates: &[SocketAddr],
    policy: &DialPolicy,
    mut attempt: F,
) -> Result<(SocketAddr, T), DialError<E>>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let started = Instant::now();
    if let [only] = candidates {
        // Nothing to race: run the attempt in place, without a task, a
        // join set and a second timer (the relay's upstream connect, on
        // every new session).
        let limit = policy.attempt_timeout.min(policy.overall_timeout);
        let outcome = match tokio::time::timeout(limit, attempt(*only)).await {
            Ok(Ok(value)) => return Ok((*only, value)),
            Ok(Err(e)) => Outcome::Failed(e),
            // The same outcomes as a race would report.
            Err(_) if policy.attempt_timeout <= policy.overall_timeout => {
                Outcome::TimedOut(policy.attempt_timeout)
            }
            Err(_) => Outcome::Abandoned,
        };
        return Err(DialError {
            attempts: vec![(*only, outcome)],
            elapsed: started.elapsed(),
        });
    }
    let deadline = started + policy.overall_timeout;
    let mut outcomes: Vec<Outcome<E>> = (0..candidates.len()).map(|_| Outcome::NotTried).collect();
    let mut running: JoinSet<Result<T, Outcome<E>>> = JoinSet::new();
    // Which candidate each task is, so even a panicked task is reported
    // against the right address.
    let mut task_index: HashMap<Id, usize> = HashMap::new();
    let mut next = 0;
    let mut next_start = started;

    loop {
        if Instant::now() >= deadline {
            break;
        }
        if next < candidates.len() && (running.is_empty() || Instant::now() >= next_start) {
            let index = next;
            next += 1;
            let per_attempt = policy.attempt_timeout;
            let fut = attempt(candidates[index]);
            let handle = running.spawn(async move {
                match tokio::time::timeout(per_attempt, fut).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => Err(Outcome::Failed(e)),
                    Err(_) => Err(Outcome::TimedOut(per_attempt)),
                }
            });
            task_index.insert(handle.id(), index);
            next_start = Instant::now() + policy.stagger;
            continue;
        }
        if running.is_empty() {
            break;
        }
        let wake = if next < candidates.len() {
            next_start.min(deadline)
        } else {
            deadline
        };
        let finished = match timeout_at(wake, running.join_next_with_id()).await {
            Ok(Some(Ok((id, result)))) => (id, result),
            Ok(Some(Err(join_error))) => (join_error.id(), Err(Outcome::Panicked)),
            Ok(None) => continue,
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => continue, // stagger elapsed: start the next attempt
        };
        let index = task_index[&finished.0];
        match finished.1 {
            Ok(value) => return Ok((candidates[index], value)),
            Err(outcome) => {
                outcomes[index] = outcome;
                // A failure frees its slot: start the next one now.
                next_start = Instant::now();
            }
        }
    }
    // Anything started but unfinished at the deadline was abandoned.
    for outcome in outcomes.iter_mut().take(next) {
        if matches!(outcome, Outcome::NotTried) {
            *outcome = Outcome::Abandoned;
        }
    }
    Err(DialError {
        attempts: candidates.iter().copied().zip(outcomes).collect(),
        elapsed: started.elapsed(),
    })
}
