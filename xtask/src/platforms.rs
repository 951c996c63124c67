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
//!
//! The client's TLS uses rustls with *ring*, whose build script compiles C
//! and assembly even under `cargo check`. An app's real build has the
//! NDK's or Xcode's clang; here Debian's clang stands in, in ring's own
//! no-sysroot mode (`-nostdlibinc`, `RING_CORE_NOSTDLIBINC`: ring's C needs
//! only the compiler's freestanding headers) plus, for Apple targets, the
//! one SDK header ring includes (`TargetConditionals.h`), written under
//! `target/`. Windows uses mingw-w64's gcc, as for the DLL.

use std::path::{Path, PathBuf};
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

/// Debian's clang, the C compiler ring's build script gets for the
/// Android and Apple targets, and llvm-ar, which archives its objects.
const CLANG: &str = "clang";
const LLVM_AR: &str = "llvm-ar";
const CLANG_PACKAGES: [&str; 2] = ["clang", "llvm"];

/// `cargo check` of the client for every app platform.
pub(crate) fn check() -> Result {
    add_targets(&APP_TARGETS)?;
    ensure_tool(
        MINGW_LINKER,
        &[MINGW_PACKAGE],
        "building ring for Windows needs mingw-w64's gcc",
    )?;
    ensure_tool(
        CLANG,
        &CLANG_PACKAGES,
        "building ring for Android and Apple targets needs clang",
    )?;
    ensure_tool(
        LLVM_AR,
        &CLANG_PACKAGES,
        "archiving ring's objects needs llvm-ar",
    )?;
    let apple_headers = apple_headers()?;
    for target in APP_TARGETS {
        for package in CLIENT_PACKAGES {
            let mut check = Command::new(cargo());
            check.args(["check", "--locked", "-p", package, "--target", target]);
            c_toolchain(&mut check, target, &apple_headers);
            step(&format!("check {package} for {target}"), &mut check)?;
        }
    }
    windows_dll().map(drop)
}

/// Points the `cc` crate at a C toolchain for `target` (its
/// `CC_<target>`/`AR_<target>`/`CFLAGS_<target>` variables), so ring's
/// build script runs without the platform's own SDK.
fn c_toolchain(command: &mut Command, target: &str, apple_headers: &Path) {
    let var = target.replace('-', "_");
    if target == WINDOWS_TARGET {
        command.env(format!("CC_{var}"), MINGW_LINKER);
        return;
    }
    let mut flags = String::from("-nostdlibinc -DRING_CORE_NOSTDLIBINC=1");
    if target.contains("-apple-") {
        flags.push_str(&format!(" -isystem {}", apple_headers.display()));
        // cc asks `xcrun` for the SDK unless SDKROOT names one.
        command.env("SDKROOT", apple_headers);
    }
    command
        .env(format!("CC_{var}"), CLANG)
        .env(format!("AR_{var}"), LLVM_AR)
        .env(format!("CFLAGS_{var}"), flags);
}

/// The one Apple SDK header ring's C includes, with the values of an
/// iPhone/Mac build (ring reads only which OS family it is on).
fn apple_headers() -> Result<PathBuf> {
    let dir = target_dir().join("platform-check").join("apple-include");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("platform check: creating {}: {e}", dir.display()))?;
    let header = dir.join("TargetConditionals.h");
    std::fs::write(
        &header,
        "/* Stand-in for the Apple SDK's header, for `cargo check` on Linux. */\n\
         #define TARGET_OS_MAC 1\n#define TARGET_OS_IPHONE 1\n#define TARGET_OS_IOS 1\n\
         #define TARGET_OS_OSX 0\n#define TARGET_OS_SIMULATOR 0\n",
    )
    .map_err(|e| format!("platform check: writing {}: {e}", header.display()))?;
    Ok(dir)
}

/// Installs `packages` from Debian when `tool` does not run.
fn ensure_tool(tool: &str, packages: &[&str], why: &str) -> Result {
    let runs = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return Ok(());
    }
    apt_install(&format!("{why} ({tool})"), packages)
}

/// Links the SDK into `cloudproxy_ffi.dll` (with its import library
/// `libcloudproxy_ffi.dll.a`) for Windows with mingw-w64, installed when
/// missing; returns the directory holding them.
pub(crate) fn windows_dll() -> Result<PathBuf> {
    ensure_tool(
        MINGW_LINKER,
        &[MINGW_PACKAGE],
        &format!("linking the SDK for {WINDOWS_TARGET} needs mingw-w64"),
    )?;
    let mut build = Command::new(cargo());
    build
        .args(["build", "--locked", "-p", "cloudproxy-ffi", "--lib"])
        .args(["--target", WINDOWS_TARGET])
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", MINGW_LINKER);
    c_toolchain(&mut build, WINDOWS_TARGET, Path::new(""));
    step(
        &format!("build the SDK's DLL for {WINDOWS_TARGET}"),
        &mut build,
    )?;
    let dir = target_dir().join(WINDOWS_TARGET).join("debug");
    let dll = dir.join("cloudproxy_ffi.dll");
    let size = std::fs::metadata(&dll)
        .map_err(|e| format!("the Windows build wrote no {}: {e}", dll.display()))?
        .len();
    println!("==> {}: {size} bytes", dll.display());
    Ok(dir)
}
