//! The client builds for every platform the guide names.
//!
//! An app embeds `cloudproxy-engine` on Windows, Android, iOS and macOS, so
//! CI checks it for those targets. `cargo check` needs only the target's
//! standard library (`rustup target add`), no foreign linker: it proves the
//! client carries nothing Unix-only (the server's `tokio::io::unix` once
//! broke the Windows build).

use std::process::Command;

use crate::{Result, cargo, step};

/// The targets an app ships on, besides the host.
pub(crate) const APP_TARGETS: [&str; 4] = [
    "x86_64-pc-windows-gnu",
    "aarch64-linux-android",
    "aarch64-apple-ios",
    "aarch64-apple-darwin",
];

/// The packages an app links, checked for each of [`APP_TARGETS`].
const CLIENT_PACKAGES: [&str; 1] = ["cloudproxy-engine"];

/// Adds each target's standard library when it is missing.
pub(crate) fn add_targets(targets: &[&str]) -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("platform check: could not run `rustup target list`: {e}"))?;
    let installed = String::from_utf8_lossy(&installed.stdout).into_owned();
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|line| line.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(
        "rustup target add",
        Command::new("rustup")
            .arg("target")
            .arg("add")
            .args(&missing),
    )
}

/// `cargo check` of the client for every app platform.
pub(crate) fn check() -> Result {
    add_targets(&APP_TARGETS)?;
    for target in APP_TARGETS {
        for package in CLIENT_PACKAGES {
            step(
                &format!("check {package} for {target}"),
                Command::new(cargo())
                    .args(["check", "--locked", "-p", package, "--target", target]),
            )?;
        }
    }
    Ok(())
}
