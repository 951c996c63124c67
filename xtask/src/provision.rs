//! What the tests need beyond the Rust toolchain, provided by `cargo xtask ci`
//! itself so that the README's test command passes on a fresh machine:
//!
//! - Debian tools: `curl` (a SOCKS5 client nobody here wrote), `kill`
//!   from procps (the command-line tests stop their child processes with it)
//!   and `promtool` from `prometheus` (the metrics tests and the deploy check
//!   run `promtool check metrics` and `promtool check rules`), installed with
//!   apt-get when missing and running as root;
//! - Python's PySocks (the SOCKS5 UDP ASSOCIATE client of the transport
//!   tests), in a virtual environment under `target/`, so the system's Python
//!   is never changed.
//!
//! Each part checks first and does nothing when already done: a second run
//! costs one Python start-up.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, step, target_dir};

/// The environment variable through which the tests are told which Python
/// has PySocks (`crates/server/tests/socks5.rs` reads it).
pub(crate) const TEST_PYTHON_VAR: &str = "CLOUDPROXY_TEST_PYTHON";

/// PySocks' last release, pinned so every machine runs the same client.
const PYSOCKS: &str = "PySocks==1.7.1";

/// Debian tools the tests run: (binary, package).
const DEBIAN_TOOLS: [(&str, &str); 3] = [
    ("curl", "curl"),
    ("kill", "procps"),
    ("promtool", "prometheus"),
];

/// Makes sure the tests' tools are there and returns the virtual
/// environment's Python, for [`TEST_PYTHON_VAR`].
pub(crate) fn ci_tools() -> Result<PathBuf> {
    let missing: Vec<(&str, &str)> = DEBIAN_TOOLS
        .iter()
        .copied()
        .filter(|(bin, _)| find_on_path(bin).is_none())
        .collect();
    if !missing.is_empty() {
        let bins: Vec<&str> = missing.iter().map(|(b, _)| *b).collect();
        let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        apt_install(
            &format!("the tests run {} (not found on PATH)", bins.join(" and ")),
            &pkgs,
        )?;
    }
    python_venv()
}

/// `target/ci-venv` with PySocks; created (or repaired) only when its Python
/// cannot import `socks`.
fn python_venv() -> Result<PathBuf> {
    let venv = target_dir().join("ci-venv");
    let python = venv.join("bin").join("python3");
    if python_imports(&python, "socks") {
        println!(
            "\n==> python venv: {} has PySocks, nothing to do",
            venv.display()
        );
        return Ok(python);
    }
    if find_on_path("python3").is_none() {
        apt_install(
            "the tests need python3 (not found on PATH)",
            &["python3-venv"],
        )?;
    }
    // Debian ships `venv`'s ensurepip in a separate package.
    if !python_imports(Path::new("python3"), "venv, ensurepip") {
        apt_install(
            "`python3 -m venv` needs the venv and ensurepip modules, which this python3 lacks",
            &["python3-venv"],
        )?;
    }
    step(
        "python venv",
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    step(
        "install PySocks",
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PYSOCKS,
        ]),
    )?;
    if !python_imports(&python, "socks") {
        return Err(format!(
            "{} still cannot `import socks` after installing {PYSOCKS}",
            python.display()
        ));
    }
    Ok(python)
}

fn python_imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn find_on_path(bin: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|candidate| candidate.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

/// Installs Debian `packages` with apt-get when running as root; otherwise
/// fails with `why` and the command to run. The one copy: `deploy` uses it
/// too.
pub(crate) fn apt_install(why: &str, packages: &[&str]) -> Result {
    let list = packages.join(" ");
    if !is_root() || find_on_path("apt-get").is_none() {
        return Err(format!(
            "{why}; install the Debian package(s) {list} \
             (`sudo apt-get install {list}`), then run `cargo xtask ci` again"
        ));
    }
    println!("\n==> {why}: installing {list}");
    step(
        "apt-get update",
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    step(
        &format!("apt-get install {list}"),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
