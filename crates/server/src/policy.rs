//! The destination policy in force: what every admission reads once, and
//! what a reload replaces whole.

use std::sync::{Arc, PoisonError, RwLock};

use crate::allowlist::Allowlist;
use crate::config::ServerConfig;

/// The destination policy every admission reads once.
#[derive(Debug)]
pub(crate) struct Policy {
    /// Where relays may forward to.
    pub(crate) allowlist: Allowlist,
    /// The app that SOCKS5 clients without authentication count against.
    pub(crate) socks5_no_auth_app: Option<String>,
}

impl Policy {
    pub(crate) fn from_config(config: &ServerConfig) -> Self {
        Self {
            allowlist: config.allowlist.allow.clone(),
            socks5_no_auth_app: config.socks5.no_auth_app.clone(),
        }
    }
}

/// The current [`Policy`], replaced whole by a reload.
#[derive(Debug)]
pub(crate) struct PolicyCell(RwLock<Arc<Policy>>);

impl PolicyCell {
    pub(crate) fn new(policy: Policy) -> Self {
        Self(RwLock::new(Arc::new(policy)))
    }

    /// The policy in force now; hold it for one admission.
    pub(crate) fn load(&self) -> Arc<Policy> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn store(&self, policy: Policy) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }
}
