//! The node's file descriptor budget.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (the default
//! soft limit, often 1024, is far below what 20,000 sessions need). Of the
//! limit, a quarter is the TCP pump's pipes (`pump/splice.rs`) and
//! `limits.reserved_fds` are kept for listeners, accepted connections still
//! in their handshake, logs and the like; half of what is left is for
//! upstream sockets, the other half for the client connections that come
//! with them. Bindings past that budget are refused before a socket is
//! opened, so no app ever meets "Too many open files" because another app
//! took the last descriptor.

/// The soft descriptor limit after trying to raise it to the hard one.
#[cfg(target_os = "linux")]
pub(crate) fn raise_nofile() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(
                from = limit.current.unwrap_or(0),
                to = %limit.maximum.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
                "raised the soft open-file limit (RLIMIT_NOFILE) to the hard limit"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not raise the soft open-file limit (RLIMIT_NOFILE)");
            }
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    tracing::info!(
        limit = %soft.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        "open-file limit"
    );
    soft
}

/// Other systems: the limit is left as it is and not known here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn raise_nofile() -> Option<u64> {
    None
}

/// Upstream sockets the node may hold with a soft limit of `nofile`
/// descriptors (`None`: unlimited) and `reserved` kept for everything else.
pub(crate) fn upstream_budget(nofile: Option<u64>, reserved: u64) -> u64 {
    match nofile {
        None => u64::MAX,
        Some(n) => n.saturating_sub(n / 4).saturating_sub(reserved) / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_pipes_reserve_and_client_sides() {
        assert_eq!(upstream_budget(Some(256), 64), 64);
        assert_eq!(upstream_budget(Some(100), 500), 0);
        assert_eq!(upstream_budget(None, 64), u64::MAX);
    }
}
