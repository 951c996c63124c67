//! Per-app concurrency quotas (the guide's "concurrent scale") and what the
//! sessions hold.
//!
//! A session counts against its app while it holds at least one relay binding
//! on this node — its TCP message channel, its UDP media binding, or both. A
//! session may hold at most `max_bindings_per_session` bindings, an app at
//! most `max_upstream_sockets` upstream sockets, and the node as a whole at
//! most its descriptor budget, so one ticket cannot take the descriptors
//! other apps need. The counts are kept by guards: dropping a guard gives
//! back its binding, its sockets and (with the session's last binding) the
//! session's place, so no error path can leak a slot.
//!
//! A configuration reload replaces the limits ([`Quotas::set_limits`]):
//! sessions keep the places they hold, a changed `max_sessions` applies to
//! new sessions, and a removed app gets no new session or binding while its
//! running ones end as they would have.
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
    /// The session already holds its maximum number of bindings.
    #[error("the session already holds its maximum of {max} bindings on this node")]
    SessionBindings {
        /// The limit.
        max: u32,
    },
    /// The app already holds its maximum number of upstream sockets.
    #[error("app {app:?} already holds its maximum of {max} upstream sockets on this node")]
    AppSockets {
        /// The app.
        app: String,
        /// The limit.
        max: u32,
    },
    /// The node has no descriptors left for new bindings (the ones it keeps
    /// in reserve are not for bindings).
    #[error("the relay is at its capacity; try another proxy address")]
    NodeFull,
}

/// What one app may hold on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppLimits {
    /// Concurrent sessions.
    pub max_sessions: u32,
    /// Bindings one session may hold at once.
    pub max_bindings_per_session: u32,
    /// Upstream sockets the app's bindings may hold at once.
    pub max_upstream_sockets: u32,
}

impl AppLimits {
    /// Only a session quota; bindings and sockets unbounded.
    #[must_use]
    pub fn sessions(max_sessions: u32) -> Self {
        Self {
            max_sessions,
            max_bindings_per_session: u32::MAX,
            max_upstream_sockets: u32::MAX,
        }
    }
}

struct AppUsage<S> {
    limits: AppLimits,
    /// Upstream sockets held by the app's bindings.
    sockets: u32,
    /// Live sessions and how many bindings each holds.
    sessions: HashMap<S, u32>,
    /// Removed from the configuration: kept only until its last binding
    /// ends, and refused as unknown meanwhile.
    retired: bool,
}

impl<S> AppUsage<S> {
    fn new(limits: AppLimits) -> Self {
        Self {
            limits,
            sockets: 0,
            sessions: HashMap::new(),
            retired: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.sessions.is_empty() && self.sockets == 0
    }
}

struct Book<S> {
    apps: HashMap<String, AppUsage<S>>,
    /// Upstream sockets held on the node, and the most it may hold.
    sockets: u64,
    node_sockets: u64,
}

/// The quota book of one node, shared by every listener.
pub struct Quotas<S> {
    book: Mutex<Book<S>>,
}

impl<S: Hash + Eq + Clone> Quotas<S> {
    /// A book for these apps and their maximum concurrent sessions.
    pub fn new<'a>(apps: impl IntoIterator<Item = (&'a str, u32)>) -> Arc<Self> {
        Self::with_limits(
            apps.into_iter()
                .map(|(id, max)| (id, AppLimits::sessions(max))),
            u64::MAX,
        )
    }

    /// A book for these apps and their limits, on a node that may hold at
    /// most `node_sockets` upstream sockets.
    pub fn with_limits<'a>(
        apps: impl IntoIterator<Item = (&'a str, AppLimits)>,
        node_sockets: u64,
    ) -> Arc<Self> {
        let apps = apps
            .into_iter()
            .map(|(id, limits)| (id.to_owned(), AppUsage::new(limits)))
            .collect();
        Arc::new(Self {
            book: Mutex::new(Book {
                apps,
                sockets: 0,
                node_sockets,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Book<S>> {
        // A panic elsewhere while holding the lock leaves the counts intact
        // (every update is a few integer moves), so keep going.
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces every app's limits (a configuration reload). Apps in `apps`
    /// get their new limits, for what they take from now on: a session or
    /// binding already held is kept even when it is now over a lowered
    /// limit. Apps missing from `apps` get nothing new (refused as unknown)
    /// while what they hold runs to its end; an app added again before then
    /// keeps counting what it holds.
    pub fn set_limits<'a>(&self, apps: impl IntoIterator<Item = (&'a str, AppLimits)>) {
        let new: HashMap<&str, AppLimits> = apps.into_iter().collect();
        let mut book = self.lock();
        for (id, usage) in &mut book.apps {
            match new.get(id.as_str()) {
                Some(limits) => {
                    usage.limits = *limits;
                    usage.retired = false;
                }
                None => usage.retired = true,
            }
        }
        book.apps
            .retain(|_, usage| !(usage.retired && usage.is_idle()));
        for (id, limits) in new {
            book.apps
                .entry(id.to_owned())
                .or_insert_with(|| AppUsage::new(limits));
        }
    }

    /// Whether `app` could start a new session now. The allocation service
    /// asks this to refuse early; the binding itself is what takes the place.
    pub fn has_room(&self, app: &str) -> Result<(), QuotaError> {
        let book = self.lock();
        let usage =
            book.apps
                .get(app)
                .filter(|u| !u.retired)
                .ok_or_else(|| QuotaError::UnknownApp {
                    app: app.to_owned(),
                })?;
        if usage.sessions.len() >= usage.limits.max_sessions as usize {
            return Err(QuotaError::Exceeded {
                app: app.to_owned(),
                max: usage.limits.max_sessions,
            });
        }
        Ok(())
    }

    /// Takes a binding with one upstream socket for `session` of `app`; see
    /// [`Quotas::acquire_sockets`].
    pub fn acquire(self: &Arc<Self>, app: &str, session: S) -> Result<QuotaGuard<S>, QuotaError> {
        self.acquire_sockets(app, session, 1)
    }

    /// Takes a binding holding `sockets` upstream sockets for `session` of
    /// `app`. A session that already holds a binding gets another (its
    /// second transport, or a reconnection) while under its bindings limit;
    /// a new one only while the app is under its session quota. Either way
    /// the app and the node must have room for the sockets.
    pub fn acquire_sockets(
        self: &Arc<Self>,
        app: &str,
        session: S,
        sockets: u32,
    ) -> Result<QuotaGuard<S>, QuotaError> {
        let mut book = self.lock();
        if book.sockets + u64::from(sockets) > book.node_sockets {
            return Err(QuotaError::NodeFull);
        }
        let usage = book
            .apps
            .get_mut(app)
            .filter(|u| !u.retired)
            .ok_or_else(|| QuotaError::UnknownApp {
                app: app.to_owned(),
            })?;
        let limits = usage.limits;
        let live = usage.sessions.len();
        match usage.sessions.get(&session) {
            Some(&bindings) if bindings >= limits.max_bindings_per_session => {
                return Err(QuotaError::SessionBindings {
                    max: limits.max_bindings_per_session,
                });
            }
            None if live >= limits.max_sessions as usize => {
                return Err(QuotaError::Exceeded {
                    app: app.to_owned(),
                    max: limits.max_sessions,
                });
            }
            _ => {}
        }
        if u64::from(usage.sockets) + u64::from(sockets) > u64::from(limits.max_upstream_sockets) {
            return Err(QuotaError::AppSockets {
                app: app.to_owned(),
                max: limits.max_upstream_sockets,
            });
        }
        *usage.sessions.entry(session.clone()).or_insert(0) += 1;
        usage.sockets += sockets;
        book.sockets += u64::from(sockets);
        Ok(QuotaGuard {
            quotas: Arc::clone(self),
            app: app.to_owned(),
            session,
            sockets,
        })
    }

    /// Upstream sockets held on the whole node, and the most it may hold.
    pub fn node_sockets(&self) -> (u64, u64) {
        let book = self.lock();
        (book.sockets, book.node_sockets)
    }

    /// Live sessions of `app` on this node.
    pub fn sessions(&self, app: &str) -> usize {
        self.lock().apps.get(app).map_or(0, |u| u.sessions.len())
    }

    /// Upstream sockets held by `app`'s bindings on this node.
    pub fn sockets(&self, app: &str) -> u32 {
        self.lock().apps.get(app).map_or(0, |u| u.sockets)
    }

    fn release(&self, app: &str, session: &S, sockets: u32) {
        let mut book = self.lock();
        let mut released = false;
        if let Some(usage) = book.apps.get_mut(app) {
            if let Some(bindings) = usage.sessions.get_mut(session) {
                *bindings -= 1;
                if *bindings == 0 {
                    usage.sessions.remove(session);
                }
                usage.sockets = usage.sockets.saturating_sub(sockets);
                released = true;
            }
            if usage.retired && usage.is_idle() {
                book.apps.remove(app);
            }
        }
        if released {
            book.sockets = book.sockets.saturating_sub(u64::from(sockets));
        }
    }
}

/// One binding's hold on its session's place; dropping it gives it back.
pub struct QuotaGuard<S: Hash + Eq + Clone> {
    quotas: Arc<Quotas<S>>,
    app: String,
    session: S,
    sockets: u32,
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
        self.quotas.release(&self.app, &self.session, self.sockets);
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
    fn bindings_per_session_are_bounded() {
        let limits = AppLimits {
            max_sessions: 2,
            max_bindings_per_session: 2,
            max_upstream_sockets: 100,
        };
        let q = Quotas::with_limits([("a", limits)], u64::MAX);
        let held = [q.acquire("a", 1u64).unwrap(), q.acquire("a", 1).unwrap()];
        assert_eq!(
            q.acquire("a", 1).unwrap_err(),
            QuotaError::SessionBindings { max: 2 }
        );
        drop(held);
        assert!(q.acquire("a", 1).is_ok(), "given back with the guards");
    }

    #[test]
    fn sockets_are_bounded_per_app_and_per_node() {
        let limits = AppLimits {
            max_sessions: 100,
            max_bindings_per_session: 100,
            max_upstream_sockets: 4,
        };
        let q = Quotas::with_limits([("a", limits), ("b", limits)], 6);
        let a = q.acquire_sockets("a", 1u64, 3).unwrap();
        assert_eq!(
            q.acquire_sockets("a", 2, 2).unwrap_err(),
            QuotaError::AppSockets {
                app: "a".into(),
                max: 4
            }
        );
        let b = q.acquire_sockets("b", 3, 3).unwrap();
        assert_eq!(q.acquire("b", 4).unwrap_err(), QuotaError::NodeFull);
        assert_eq!((q.sockets("a"), q.sockets("b")), (3, 3));
        drop((a, b));
        assert_eq!((q.sockets("a"), q.sockets("b")), (0, 0));
        assert!(q.acquire_sockets("a", 1, 4).is_ok());
    }

    #[test]
    fn new_limits_apply_to_new_sessions_and_a_removed_app_keeps_what_it_holds() {
        let q = Quotas::new([("a", 2), ("gone", 5)]);
        let a1 = q.acquire("a", 1u64).unwrap();
        let a2 = q.acquire("a", 2).unwrap();
        let held = q.acquire("gone", 1).unwrap();
        q.set_limits([("a", AppLimits::sessions(1)), ("b", AppLimits::sessions(1))]);
        // Over the lowered quota: both places are kept, no new session.
        assert_eq!(q.sessions("a"), 2);
        assert!(matches!(
            q.acquire("a", 3),
            Err(QuotaError::Exceeded { max: 1, .. })
        ));
        drop((a1, a2));
        let _a3 = q.acquire("a", 3).unwrap();
        // The added app gets its places.
        let _b = q.acquire("b", 1).unwrap();
        // The removed app: nothing new, not even for its running session…
        let unknown = QuotaError::UnknownApp { app: "gone".into() };
        assert_eq!(q.acquire("gone", 1).unwrap_err(), unknown);
        assert_eq!(q.has_room("gone").unwrap_err(), unknown);
        // …which keeps its place until it ends.
        assert_eq!(q.sessions("gone"), 1);
        drop(held);
        assert_eq!(q.sessions("gone"), 0);
        // Added again: fresh.
        q.set_limits([("gone", AppLimits::sessions(1))]);
        assert!(q.acquire("gone", 1).is_ok());
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
