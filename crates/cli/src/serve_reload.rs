//! `cloudproxy serve`'s SIGHUP: re-read the `--config` file, lay the same
//! flags over it, validate it once and hand it to
//! [`ProxyNode::reload`]; a configuration that cannot be used is logged with
//! its file, line and key, and the node keeps the one it runs.

use std::path::Path;

use cloudproxy_server::{ProxyNode, ReloadError};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::serve_cmd::{self, Args};

/// SIGHUP, watched from the moment this is created. Create it before telling
/// anyone the process is ready: until then SIGHUP keeps its default action,
/// which ends the process.
pub(crate) struct ReloadSignal(Signal);

impl ReloadSignal {
    /// Starts watching; needs the runtime.
    pub(crate) fn install() -> Self {
        Self(signal(SignalKind::hangup()).expect("the signal driver is enabled in the runtime"))
    }
}

/// Reloads `node` on every SIGHUP; never returns.
pub(crate) async fn serve(mut reloads: ReloadSignal, node: &ProxyNode, args: &Args) {
    while reloads.0.recv().await.is_some() {
        reload(node, args);
    }
    // The signal stream ended (the runtime is going away): nothing to do.
    std::future::pending::<()>().await;
}

/// One reload, logged: a one-line summary at info, or why nothing changed
/// at error.
fn reload(node: &ProxyNode, args: &Args) {
    let Some(path) = args.config_file() else {
        tracing::warn!(
            "SIGHUP: nothing to reload: development mode (no --config) has no configuration \
             file; restart with --config FILE to change apps, keys or the allowlist"
        );
        return;
    };
    let file = path.display();
    let reloaded = serve_cmd::reread(path, args)
        .map_err(ReloadError::from)
        .and_then(|config| node.reload(&config));
    match reloaded {
        Ok(summary) => tracing::info!(%file, "configuration reloaded: {summary}"),
        Err(e) => {
            let at = fixed_lines(path, &e);
            tracing::error!(
                %file,
                at,
                "configuration not reloaded, the node keeps running with its current one: {e}"
            );
        }
    }
}

/// For a refusal of fixed settings: `FILE:LINE` of each key the file sets
/// (a key set by a flag, or left at its default, has no line).
fn fixed_lines(path: &Path, error: &ReloadError) -> Option<String> {
    let ReloadError::Fixed { changes } = error else {
        return None;
    };
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<String> = changes
        .iter()
        .filter_map(|change| {
            let line = key_line(&text, change.key)?;
            Some(format!("{}:{line} ({})", path.display(), change.key))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The 1-based line that sets `key` (`section.name`) inside its `[section]`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (section, name) = key.split_once('.')?;
    let mut in_section = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section
            && line
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}
