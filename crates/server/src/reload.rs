//! The node's run-time policy and how a new configuration replaces it
//! (SIGHUP, [`ProxyNode::reload`](crate::ProxyNode::reload)).
//!
//! What can change while the node runs, and where it lives:
//!
//! - apps (ids, secrets, transports) and ticket keys: the proto
//!   [`Server`](cloudproxy_proto::server::Server), replaced together with
//!   [`Server::replace_credentials`](cloudproxy_proto::server::Server::replace_credentials);
//! - per-app limits (`max_sessions`, `limits.max_bindings_per_session`,
//!   `limits.max_upstream_sockets_per_app`): the quota book,
//!   [`Quotas::set_limits`](crate::quota::Quotas::set_limits);
//! - the allowlist and `socks5.no_auth_app`: [`Policy`], an `Arc` behind a
//!   lock that every admission reads once ([`PolicyCell::load`]).
//!
//! Everything else (listeners, the SOCKS5 listener, the other `[limits]`) is
//! fixed at start: a new configuration that changes any of it is refused as
//! a whole ([`ReloadError::Fixed`]), naming every such key, and the node
//! keeps its configuration. A reload is all or nothing, so the node always
//! runs exactly one file's configuration.
//!
//! Admitted work is never revisited: a running binding keeps its relay, its
//! quota place and its destination whatever the new configuration says.
//!
//! - the TLS port's certificate and key (`tls.cert`, `tls.key`): the files
//!   are read again on every reload, before anything changes, and the
//!   identity is swapped in [`apply`] with the credentials, so
//!   `systemctl reload` renews them; new handshakes get the new
//!   certificate, established TLS sessions keep theirs. A file that cannot
//!   be used refuses the whole reload ([`ReloadError::Tls`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use cloudproxy_proto::server::{AppCredentials, Entropy};
use cloudproxy_proto::ticket::TicketKeyRing;
use cloudproxy_proto::{AppId, Transports};

use crate::config::{
    AdminConfig, ConfigError, Limits, Listeners, ServerConfig, Socks5Config, UnusableConfig,
};
use crate::entropy::OsEntropy;
use crate::policy::Policy;
use crate::quota::AppLimits;
use crate::shared::Shared;
use crate::tls::{CertificateError, Identity};

/// The apps' credentials as the proto server looks them up.
pub(crate) fn credentials(
    config: &ServerConfig,
) -> Result<HashMap<AppId, Arc<AppCredentials>>, UnusableConfig> {
    let mut apps = HashMap::new();
    for app in &config.apps {
        let id = AppId::new(app.id.get_ref().clone()).map_err(|cause| UnusableConfig::AppId {
            id: app.id.get_ref().clone(),
            cause,
        })?;
        apps.insert(
            id,
            Arc::new(AppCredentials {
                secrets: app.secrets.iter().map(|s| s.0.clone()).collect(),
                transports: Transports::ALL,
            }),
        );
    }
    Ok(apps)
}

/// The ticket keys: the first signs, all verify.
pub(crate) fn ticket_ring(config: &ServerConfig) -> TicketKeyRing {
    match config.ticket_keys.split_first() {
        Some((first, rest)) => {
            let mut ring = TicketKeyRing::new(first.key_id, first.secret.0.clone());
            for key in rest {
                ring.insert(key.key_id, key.secret.0.clone());
            }
            ring
        }
        // No apps, no tickets: a random key keeps the ring well-formed.
        None => {
            let mut secret = vec![0u8; 32];
            OsEntropy.fill(&mut secret);
            TicketKeyRing::new(0, secret)
        }
    }
}

/// Each app's quota limits on a node that may hold `node_sockets` upstream
/// sockets: with several apps, none may take more than half of them.
pub(crate) fn app_limits(config: &ServerConfig, node_sockets: u64) -> Vec<(String, AppLimits)> {
    let limits = &config.limits;
    let app_sockets = if config.apps.len() > 1 {
        u64::from(limits.max_upstream_sockets_per_app).min(node_sockets / 2)
    } else {
        u64::from(limits.max_upstream_sockets_per_app)
    };
    let app_sockets = u32::try_from(app_sockets).unwrap_or(u32::MAX);
    config
        .apps
        .iter()
        .map(|a| {
            (
                a.id.get_ref().clone(),
                AppLimits {
                    max_sessions: a.max_sessions,
                    max_bindings_per_session: limits.max_bindings_per_session,
                    max_upstream_sockets: app_sockets,
                },
            )
        })
        .collect()
}

/// What a reload needs besides the shared state: the configuration running
/// now (to compare with), and the node's socket budget.
pub(crate) struct Reloader {
    running: Mutex<ServerConfig>,
    node_sockets: u64,
}

impl Reloader {
    pub(crate) fn new(config: &ServerConfig, node_sockets: u64) -> Self {
        Self {
            running: Mutex::new(config.clone()),
            node_sockets,
        }
    }

    /// Replaces the node's policy with `config`'s, or changes nothing.
    pub(crate) fn reload(
        &self,
        shared: &Shared,
        config: &ServerConfig,
    ) -> Result<ReloadSummary, ReloadError> {
        // One reload at a time: each compares with what the last one left.
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let changes = fixed_changes(&running, config);
        if !changes.is_empty() {
            return Err(ReloadError::Fixed { changes });
        }
        let credentials = credentials(config).map_err(ReloadError::Invalid)?;
        let identity = match (&shared.tls, &config.tls.cert, &config.tls.key) {
            (Some(_), Some(cert), Some(key)) => {
                Some(Identity::from_pem_files(cert, key).map_err(ReloadError::Tls)?)
            }
            _ => None,
        };
        let mut summary = ReloadSummary::between(&running, config);
        if let (Some(port), Some(identity)) = (&shared.tls, &identity) {
            if port.fingerprint() != identity.fingerprint() {
                summary.tls_certificate = Some(identity.fingerprint().to_owned());
            }
        }
        apply(shared, config, credentials, identity, self.node_sockets);
        if summary.allowlist_changed {
            for risky in config.allowlist.allow.risky_openings() {
                tracing::warn!("SECURITY: {risky}; make sure this is intended");
            }
        }
        *running = config.clone();
        Ok(summary)
    }
}

/// Swaps in everything a reload may change. Each part is replaced whole;
/// an admission that started before reads the old parts, one that starts
/// after reads the new ones.
fn apply(
    shared: &Shared,
    config: &ServerConfig,
    credentials: HashMap<AppId, Arc<AppCredentials>>,
    identity: Option<Identity>,
    node_sockets: u64,
) {
    // Quotas first: an app being added has its place before a client can
    // authenticate as it; an app being removed is refused by the quota
    // even if a check still sees its old credentials.
    shared.quotas.set_limits(
        app_limits(config, node_sockets)
            .iter()
            .map(|(id, limits)| (id.as_str(), *limits)),
    );
    shared
        .proto
        .replace_credentials(ticket_ring(config), Arc::new(credentials));
    shared.policy.store(Policy::from_config(config));
    if let (Some(port), Some(identity)) = (&shared.tls, identity) {
        port.replace(identity);
    }
}

/// A setting that cannot change while the node runs, changed by the new
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FixedChange {
    /// The dotted key, e.g. `listeners.tcp_relay_port`.
    pub key: &'static str,
    /// Its value in the running configuration.
    pub running: String,
    /// Its value in the new configuration.
    pub new: String,
}

impl fmt::Display for FixedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` (running {}, new {})",
            self.key, self.running, self.new
        )
    }
}

/// A reload that changed nothing: the node keeps the configuration it had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new configuration could not be read, parsed or validated; the
    /// error names the file, line and key (or the flag).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new configuration changes settings that are fixed while the node
    /// runs (listeners, the SOCKS5 listener, most `[limits]`).
    #[error(
        "{} cannot change while the node runs: {}; restart the node to apply {}, or put {} back to reload the rest",
        if changes.len() == 1 { "a setting" } else { "settings" },
        changes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        if changes.len() == 1 { "it" } else { "them" },
        if changes.len() == 1 { "it" } else { "them" }
    )]
    Fixed {
        /// Every fixed setting the new configuration changes.
        changes: Vec<FixedChange>,
    },
    /// The configuration validates but cannot run (for instance an app id
    /// the protocol cannot carry).
    #[error("invalid configuration: {0}")]
    Invalid(UnusableConfig),
    /// The TLS port's new certificate or key cannot be used; the port keeps
    /// serving the one it has.
    #[error("the TLS certificate was not replaced: {0}")]
    Tls(CertificateError),
}

/// The fixed settings `new` changes: `admin.bind`, then the others in file
/// order.
fn fixed_changes(running: &ServerConfig, new: &ServerConfig) -> Vec<FixedChange> {
    let mut changes = Vec::new();
    let mut check = |key: &'static str, a: String, b: String| {
        if a != b {
            changes.push(FixedChange {
                key,
                running: a,
                new: b,
            });
        }
    };
    // Destructured without `..`: a new section must be sorted into fixed or
    // reloadable here before the crate compiles.
    let ServerConfig {
        listeners: _,   // fixed: checked field by field below
        apps: _,        // reloadable
        ticket_keys: _, // reloadable
        allowlist: _,   // reloadable
        limits: _,      // mostly fixed: checked field by field below
        socks5: _,      // partly fixed: checked field by field below
        admin,
        tls: _, // partly fixed: the listener below; cert and key reload
    } = running;
    check(
        "tls.listen",
        optional(running.tls.listen_addr(&running.listeners).as_ref()),
        optional(new.tls.listen_addr(&new.listeners).as_ref()),
    );
    // The admin listener is bound once at start.
    let AdminConfig { bind: admin_bind } = admin;
    check(
        "admin.bind",
        optional(admin_bind.as_ref()),
        optional(new.admin.bind.as_ref()),
    );
    // Destructured without `..`: a new field must be sorted into fixed or
    // reloadable here before the crate compiles.
    let Listeners {
        bind,
        advertise,
        allocation_ports,
        tcp_relay_port,
        udp_relay_ports,
    } = &running.listeners;
    let l = &new.listeners;
    check("listeners.bind", bind.to_string(), l.bind.to_string());
    check(
        "listeners.advertise",
        optional(advertise.as_ref()),
        optional(l.advertise.as_ref()),
    );
    check(
        "listeners.allocation_ports",
        format!("{allocation_ports:?}"),
        format!("{:?}", l.allocation_ports),
    );
    check(
        "listeners.tcp_relay_port",
        tcp_relay_port.to_string(),
        l.tcp_relay_port.to_string(),
    );
    check(
        "listeners.udp_relay_ports",
        udp_relay_ports.to_string(),
        l.udp_relay_ports.to_string(),
    );
    let Socks5Config {
        enabled,
        port,
        no_auth_app: _reloadable,
    } = &running.socks5;
    check(
        "socks5.enabled",
        enabled.to_string(),
        new.socks5.enabled.to_string(),
    );
    check("socks5.port", port.to_string(), new.socks5.port.to_string());
    let n = &new.limits;
    // One list of the fields: the destructuring (which stops compiling when a
    // field is added) and the checks come from it.
    macro_rules! limits {
        (check: $($field:ident),*; reloadable: $($skip:ident),*) => {
            let Limits {
                $($field,)*
                $($skip: _,)*
            } = &running.limits;
            $(check(
                concat!("limits.", stringify!($field)),
                $field.to_string(),
                n.$field.to_string(),
            );)*
        };
    }
    limits!(
        check:
        handshake_timeout_ms,
        idle_timeout_ms,
        allocation_lifetime_secs,
        max_session_lifetime_secs,
        keepalive_interval_secs,
        connect_timeout_ms,
        dns_timeout_ms,
        max_frame_len,
        relay_buffer_len,
        relay_splice,
        drain_timeout_ms,
        reserved_fds,
        dns_lookups_in_flight_per_app,
        dns_lookups_per_sec_per_app,
        login_failure_burst,
        login_failures_per_minute,
        login_failure_sources;
        reloadable:
        max_bindings_per_session,
        max_upstream_sockets_per_app
    );
    changes
}

fn optional(value: Option<&impl fmt::Display>) -> String {
    value.map_or_else(|| "(unset)".to_owned(), ToString::to_string)
}

/// What a reload changed, for its one log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadSummary {
    /// Apps the new configuration adds.
    pub apps_added: Vec<String>,
    /// Apps it removes (their running sessions run to their normal end).
    pub apps_removed: Vec<String>,
    /// Apps whose secrets or `max_sessions` changed.
    pub apps_changed: Vec<String>,
    /// Ticket key ids it adds.
    pub ticket_keys_added: Vec<u32>,
    /// Ticket key ids it removes (their tickets no longer open).
    pub ticket_keys_removed: Vec<u32>,
    /// The signing key id, when it changed.
    pub signing_key: Option<u32>,
    /// Allowlist rules now.
    pub allowlist_rules: usize,
    /// Whether the allowlist changed.
    pub allowlist_changed: bool,
    /// Whether `limits.max_bindings_per_session`,
    /// `limits.max_upstream_sockets_per_app` or `socks5.no_auth_app`
    /// changed.
    pub other_changed: bool,
    /// The fingerprint of the TLS port's new certificate, when the reload
    /// replaced it with another.
    pub tls_certificate: Option<String>,
}

impl ReloadSummary {
    fn between(old: &ServerConfig, new: &ServerConfig) -> Self {
        let ids = |c: &ServerConfig| -> BTreeSet<String> {
            c.apps.iter().map(|a| a.id.get_ref().clone()).collect()
        };
        let (old_ids, new_ids) = (ids(old), ids(new));
        let apps_changed = new
            .apps
            .iter()
            .filter_map(|a| {
                let before = old.apps.iter().find(|o| o.id.get_ref() == a.id.get_ref())?;
                (before.secrets != a.secrets || before.max_sessions != a.max_sessions)
                    .then(|| a.id.get_ref().clone())
            })
            .collect();
        let keys = |c: &ServerConfig| -> BTreeSet<u32> {
            c.ticket_keys.iter().map(|k| k.key_id).collect()
        };
        let (old_keys, new_keys) = (keys(old), keys(new));
        // A key id kept with a new secret is a removal and an addition.
        let rekeyed: BTreeSet<u32> = new
            .ticket_keys
            .iter()
            .filter(|k| {
                old.ticket_keys
                    .iter()
                    .any(|o| o.key_id == k.key_id && o.secret != k.secret)
            })
            .map(|k| k.key_id)
            .collect();
        let signing = |c: &ServerConfig| c.ticket_keys.first().map(|k| k.key_id);
        Self {
            apps_added: new_ids.difference(&old_ids).cloned().collect(),
            apps_removed: old_ids.difference(&new_ids).cloned().collect(),
            apps_changed,
            ticket_keys_added: new_keys
                .difference(&old_keys)
                .chain(&rekeyed)
                .copied()
                .collect(),
            ticket_keys_removed: old_keys
                .difference(&new_keys)
                .chain(&rekeyed)
                .copied()
                .collect(),
            signing_key: (signing(old) != signing(new))
                .then(|| signing(new))
                .flatten(),
            allowlist_rules: new.allowlist.allow.rules().len(),
            allowlist_changed: old.allowlist.allow != new.allowlist.allow,
            other_changed: old.limits.max_bindings_per_session
                != new.limits.max_bindings_per_session
                || old.limits.max_upstream_sockets_per_app
                    != new.limits.max_upstream_sockets_per_app
                || old.socks5.no_auth_app != new.socks5.no_auth_app,
            tls_certificate: None,
        }
    }

    fn rules(&self) -> String {
        match self.allowlist_rules {
            1 => "1 rule".to_owned(),
            n => format!("{n} rules"),
        }
    }

    /// Whether the new configuration changed nothing.
    #[must_use]
    pub fn is_unchanged(&self) -> bool {
        self.apps_added.is_empty()
            && self.apps_removed.is_empty()
            && self.apps_changed.is_empty()
            && self.ticket_keys_added.is_empty()
            && self.ticket_keys_removed.is_empty()
            && self.signing_key.is_none()
            && !self.allowlist_changed
            && !self.other_changed
            && self.tls_certificate.is_none()
    }
}

impl fmt::Display for ReloadSummary {
    /// `apps +b -c ~a; ticket keys +2 -1, signing 2; allowlist 3 rules
    /// (changed); session limits changed`, or `nothing changed (…)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(out: &mut Vec<String>, sign: char, items: &[T]) {
            out.extend(items.iter().map(|i| format!("{sign}{i}")));
        }
        if self.is_unchanged() {
            return write!(f, "nothing changed (allowlist {})", self.rules());
        }
        let mut apps = Vec::new();
        list(&mut apps, '+', &self.apps_added);
        list(&mut apps, '-', &self.apps_removed);
        list(&mut apps, '~', &self.apps_changed);
        let mut keys = Vec::new();
        list(&mut keys, '+', &self.ticket_keys_added);
        list(&mut keys, '-', &self.ticket_keys_removed);
        let apps = if apps.is_empty() {
            "unchanged".to_owned()
        } else {
            apps.join(" ")
        };
        let mut keys = if keys.is_empty() {
            "unchanged".to_owned()
        } else {
            keys.join(" ")
        };
        if let Some(id) = self.signing_key {
            keys.push_str(&format!(", signing {id}"));
        }
        write!(
            f,
            "apps {apps}; ticket keys {keys}; allowlist {} ({})",
            self.rules(),
            if self.allowlist_changed {
                "changed"
            } else {
                "unchanged"
            }
        )?;
        if self.other_changed {
            f.write_str("; session limits or socks5.no_auth_app changed")?;
        }
        if let Some(fingerprint) = &self.tls_certificate {
            write!(
                f,
                "; TLS certificate replaced, sha256 fingerprint: {fingerprint}"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ServerConfig {
        ServerConfig::from_toml_str(
            "t.toml",
            &format!(
                "[listeners]\nbind = \"127.0.0.1\"\n\n[[apps]]\nid = \"a\"\nsecrets = [\"00112233445566778899aabbccddeeff\"]\n\n[[ticket_keys]]\nkey_id = 1\nsecret = \"00112233445566778899aabbccddeeff\"\n{extra}"
            ),
        )
        .unwrap()
    }

    #[test]
    fn fixed_settings_are_named_with_both_values() {
        let old = config("");
        let mut new = config("[limits]\nidle_timeout_ms = 1000\n");
        new.listeners.tcp_relay_port = 4001;
        let changes = fixed_changes(&old, &new);
        let keys: Vec<_> = changes.iter().map(|c| c.key).collect();
        assert_eq!(keys, ["listeners.tcp_relay_port", "limits.idle_timeout_ms"]);
        let error = ReloadError::Fixed { changes }.to_string();
        assert!(
            error.contains("`listeners.tcp_relay_port` (running 4000, new 4001)"),
            "{error}"
        );
        assert!(error.contains("restart the node"), "{error}");
    }

    #[test]
    fn reloadable_settings_are_not_fixed() {
        let old = config("");
        let new = config(
            "[[apps]]\nid = \"b\"\nsecrets = [\"ffeeddccbbaa99887766554433221100\"]\n\n[allowlist]\nallow = [\"198.51.100.0/24\"]\n\n[limits]\nmax_bindings_per_session = 3\n",
        );
        assert_eq!(fixed_changes(&old, &new), []);
        let summary = ReloadSummary::between(&old, &new);
        assert_eq!(summary.apps_added, ["b"]);
        assert_eq!(
            summary.to_string(),
            "apps +b; ticket keys unchanged; allowlist 1 rule (changed); session limits or socks5.no_auth_app changed"
        );
        assert_eq!(
            ReloadSummary::between(&old, &old).to_string(),
            "nothing changed (allowlist 0 rules)"
        );
    }
}
