//! The client builds for every platform the guide names.
//!
//! An app embeds `cloudproxy-engine` on Windows, Android, iOS and macOS, so
//! CI checks it for those targets. `cargo check` needs only the target's
//! standard library (`rustup target add`), no foreign linker: it proves the
//! client carries nothing Unix-only (the server's `tokio::io::unix` once
//! broke the Windows build).
//!
//! The SDK (`cloudproxy-ffi`) is checked for the same targets, and for
//! Windows it is also linked, with Debian's mingw-w64 as the linker, into
//! the DLL an app ships (`cloudproxy_ffi.dll`).

use std::path::PathBuf;
use std::process::Command;

use crate::provision::apt_install;
use crate::{Result, cargo, step, target_dir};

/// The targets an app ships on, besides the host.
pub(crate) const APP_TARGETS: [&str; 4] = [
    "x86_64-pc-windows-gnu",
    "aarch64-linux-android",
    "aarch64-apple-ios",
    "aarch64-apple-darwin",
];

/// The packages an app links, checked for each of [`APP_TARGETS`].
const CLIENT_PACKAGES: [&str; 2] = ["cloudproxy-engine", "cloudproxy-ffi"];

/// The Windows target the SDK's DLL is linked for.
const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";
/// Debian's mingw-w64 C compiler for it, used as the linker.
pub(crate) const MINGW_LINKER: &str = "x86_64-w64-mingw32-gcc";
/// The Debian package that provides it.
const MINGW_PACKAGE: &str = "gcc-mingw-w64-x86-64";

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
    windows_dll().map(drop)
}

/// Links the SDK into `cloudproxy_ffi.dll` (with its import library
/// `libcloudproxy_ffi.dll.a`) for Windows with mingw-w64, installed when
/// missing; returns the directory holding them.
pub(crate) fn windows_dll() -> Result<PathBuf> {
    let have_linker = Command::new(MINGW_LINKER)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_linker {
        apt_install(
            &format!("linking the SDK for {WINDOWS_TARGET} needs {MINGW_LINKER}"),
            &[MINGW_PACKAGE],
        )?;
    }
    step(
        &format!("build the SDK's DLL for {WINDOWS_TARGET}"),
        Command::new(cargo())
            .args(["build", "--locked", "-p", "cloudproxy-ffi", "--lib"])
            .args(["--target", WINDOWS_TARGET])
            .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", MINGW_LINKER),
    )?;
    let dir = target_dir().join(WINDOWS_TARGET).join("debug");
    let dll = dir.join("cloudproxy_ffi.dll");
    let size = std::fs::metadata(&dll)
        .map_err(|e| format!("the Windows build wrote no {}: {e}", dll.display()))?
        .len();
    println!("==> {}: {size} bytes", dll.display());
    Ok(dir)
}
