//! Per-app concurrency quotas (the guide's "concurrent scale").
//!
//! A session counts against its app while it holds at least one relay binding
//! on this node — its TCP message channel, its UDP media binding, or both. The
//! count is kept by guards: dropping the last guard of a session frees its
//! place, so no error path can leak a slot.
//!
//! Quotas are per node: nodes share no state (tickets are self-verifying), so
//! a fleet-wide figure is the per-node quota times the nodes an app is spread
//! over, which the allocation service controls.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// A session could not be admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The app already has its maximum number of sessions on this node.
    #[error("app {app:?} already has its maximum of {max} concurrent sessions on this node")]
    Exceeded {
        /// The app.
        app: String,
        /// Its quota.
        max: u32,
    },
    /// The app is not configured on this node.
    #[error("app {app:?} is not configured on this node")]
    UnknownApp {
        /// The app.
        app: String,
    },
}

struct AppUsage<S> {
    max: u32,
    /// Live sessions and how many bindings each holds.
    sessions: HashMap<S, u32>,
}

/// The quota book of one node, shared by every listener.
pub struct Quotas<S> {
    apps: Mutex<HashMap<String, AppUsage<S>>>,
}

impl<S: Hash + Eq + Clone> Quotas<S> {
    /// A book for these apps and their maximum concurrent sessions.
    pub fn new<'a>(apps: impl IntoIterator<Item = (&'a str, u32)>) -> Arc<Self> {
        let apps = apps
            .into_iter()
            .map(|(id, max)| {
                (
                    id.to_owned(),
                    AppUsage {
                        max,
                        sessions: HashMap::new(),
                    },
                )
            })
            .collect();
        Arc::new(Self {
            apps: Mutex::new(apps),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, AppUsage<S>>> {
        // A panic elsewhere while holding the lock leaves the counts intact
        // (every update is a single insert or decrement), so keep going.
        self.apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `app` could start a new session now. The allocation service
    /// asks this to refuse early; the binding itself is what takes the place.
    pub fn has_room(&self, app: &str) -> Result<(), QuotaError> {
        let apps = self.lock();
        let usage = apps.get(app).ok_or_else(|| QuotaError::UnknownApp {
            app: app.to_owned(),
        })?;
        if usage.sessions.len() >= usage.max as usize {
            return Err(QuotaError::Exceeded {
                app: app.to_owned(),
                max: usage.max,
            });
        }
        Ok(())
    }

    /// Takes a binding for `session` of `app`. A session that already holds a
    /// binding is always admitted (its second transport, or a reconnection);
    /// a new one only while the app is under its quota.
    pub fn acquire(self: &Arc<Self>, app: &str, session: S) -> Result<QuotaGuard<S>, QuotaError> {
        let mut apps = self.lock();
        let usage = apps.get_mut(app).ok_or_else(|| QuotaError::UnknownApp {
            app: app.to_owned(),
        })?;
        let live = usage.sessions.len();
        match usage.sessions.get_mut(&session) {
            Some(bindings) => *bindings += 1,
            None if live < usage.max as usize => {
                usage.sessions.insert(session.clone(), 1);
            }
            None => {
                return Err(QuotaError::Exceeded {
                    app: app.to_owned(),
                    max: usage.max,
                });
            }
        }
        Ok(QuotaGuard {
            quotas: Arc::clone(self),
            app: app.to_owned(),
            session,
        })
    }

    /// Live sessions of `app` on this node.
    pub fn sessions(&self, app: &str) -> usize {
        self.lock().get(app).map_or(0, |u| u.sessions.len())
    }

    fn release(&self, app: &str, session: &S) {
        let mut apps = self.lock();
        if let Some(usage) = apps.get_mut(app) {
            if let Some(bindings) = usage.sessions.get_mut(session) {
                *bindings -= 1;
                if *bindings == 0 {
                    usage.sessions.remove(session);
                }
            }
        }
    }
}

/// One binding's hold on its session's place; dropping it gives it back.
pub struct QuotaGuard<S: Hash + Eq + Clone> {
    quotas: Arc<Quotas<S>>,
    app: String,
    session: S,
}

impl<S: Hash + Eq + Clone> QuotaGuard<S> {
    /// The app this binding counts against.
    #[must_use]
    pub fn app(&self) -> &str {
        &self.app
    }
}

impl<S: Hash + Eq + Clone> Drop for QuotaGuard<S> {
    fn drop(&mut self) {
        self.quotas.release(&self.app, &self.session);
    }
}

impl<S: Hash + Eq + Clone> std::fmt::Debug for QuotaGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaGuard")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_one_place_however_many_bindings() {
        let q = Quotas::new([("a", 2)]);
        let tcp = q.acquire("a", 1u64).unwrap();
        let udp = q.acquire("a", 1).unwrap();
        assert_eq!(q.sessions("a"), 1);
        let other = q.acquire("a", 2).unwrap();
        assert_eq!(q.sessions("a"), 2);
        assert_eq!(
            q.acquire("a", 3).unwrap_err(),
            QuotaError::Exceeded {
                app: "a".into(),
                max: 2
            }
        );
        assert!(q.has_room("a").is_err());
        // The session's second transport and a rebinding still get in.
        let again = q.acquire("a", 1).unwrap();
        drop((tcp, udp));
        assert_eq!(q.sessions("a"), 2, "session 1 still holds a binding");
        drop(again);
        assert_eq!(q.sessions("a"), 1);
        assert!(q.has_room("a").is_ok());
        let third = q.acquire("a", 3).unwrap();
        drop((other, third));
        assert_eq!(q.sessions("a"), 0);
    }

    #[test]
    fn apps_are_counted_apart_and_unknown_apps_refused() {
        let q = Quotas::new([("a", 1), ("b", 1)]);
        let _a = q.acquire("a", 1u64).unwrap();
        let _b = q.acquire("b", 1).unwrap();
        assert!(q.acquire("a", 2).is_err());
        assert_eq!(
            q.acquire("c", 1).unwrap_err(),
            QuotaError::UnknownApp { app: "c".into() }
        );
        assert!(
            q.acquire("c", 1)
                .unwrap_err()
                .to_string()
                .contains("\"c\" is not configured")
        );
    }
}
