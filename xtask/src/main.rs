//! Project automation, run as `cargo xtask <command>` (rust-analyzer's pattern).
//!
//! Plain `std::process::Command`; its only dependencies are serde and
//! serde_json (for the JSON `cargo xtask e2e` reads), already in the
//! workspace's lock file. They cost a fresh build of xtask alone about
//! 30 s instead of a few seconds (docs/decisions.md).

mod checks;
mod deploy;
mod e2e;
mod platforms;
mod provision;
mod sdk;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                       the tests' tools (curl, procps, promtool, a Python venv with PySocks
                           in target/ci-venv), fmt check, clippy -D warnings, tests, docs drift,
                           docs -D warnings, fuzz corpus replay, cargo package of every crate,
                           deploy/ checks (systemd-analyze, kubernetes-validate, Containerfile,
                           promtool check rules)
  sdk                      the SDK step of `ci` alone: committed header and bindings current, the
                           guide's flow from C (valgrind), Python, Kotlin and C on Windows (wine)
  fuzz [TARGET] [--secs N] coverage-guided fuzzing with cargo-fuzz on nightly (default: every target, 60 s each)
  bench [--quick] [--only SECTIONS]
                           whole-system benchmarks against haproxy, socat, dante, coturn (release
                           build; installs the peers with apt-get when missing; report in target/bench/)
  bench --micro [ARGS...]  criterion benchmarks of every crate (extra args go to `cargo bench`)
  e2e [--allow-skip]       the guide's firewall scenarios in network namespaces (root; docs/e2e.md)
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => ci(),
        Some("sdk") if args.len() == 1 => sdk::check(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("e2e") => e2e::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown or malformed command {args:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The Cargo target directory, absolute: `CARGO_TARGET_DIR` (relative to
/// where cargo was started) or `target/`.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => env::current_dir().unwrap_or_default().join(dir),
        None => project_root().join("target"),
    }
}

fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// One named step: prints what it runs, runs it from the project root, and
/// turns a non-zero exit into an error naming the step.
fn step(name: &str, cmd: &mut Command) -> Result {
    cmd.current_dir(project_root());
    println!("\n==> {name}: {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("step `{name}`: could not start {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("step `{name}` failed ({status})"));
    }
    println!("==> {name}: ok in {:.1?}", started.elapsed());
    Ok(())
}

fn ci() -> Result {
    let started = Instant::now();
    // What the tests run besides cargo: installed here, so this command
    // passes on a fresh machine exactly as the README gives it.
    let python = provision::ci_tools()?;
    step(
        "fmt",
        Command::new(cargo()).args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "clippy",
        Command::new(cargo()).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "test",
        Command::new(cargo())
            .args(["test", "--workspace", "--locked"])
            .env(provision::TEST_PYTHON_VAR, &python),
    )?;
    checks::docs_drift()?;
    step(
        "doc",
        Command::new(cargo())
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // Every crate with fuzz targets has a `fuzz_corpus` test that feeds the
    // committed seed corpus through the same hooks the fuzzer calls.
    step(
        "fuzz corpus replay",
        Command::new(cargo()).args([
            "test",
            "--workspace",
            "--locked",
            "--test",
            "fuzz_corpus",
            "--",
            "--nocapture",
        ]),
    )?;
    platforms::check()?;
    sdk::check()?;
    checks::package()?;
    deploy::check()?;
    println!("\nci: all steps passed in {:.1?}", started.elapsed());
    Ok(())
}

fn fuzz_targets() -> Result<Vec<String>> {
    let dir = project_root().join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    targets.sort();
    Ok(targets)
}

fn fuzz(args: &[String]) -> Result {
    let mut secs: u64 = 60;
    let mut chosen = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--secs" {
            let value = it.next().ok_or("--secs needs a number of seconds")?;
            secs = value.parse().map_err(|_| {
                format!("--secs expects a whole number of seconds, found {value:?}")
            })?;
        } else {
            chosen.push(arg.clone());
        }
    }
    let all = fuzz_targets()?;
    for target in &chosen {
        if !all.contains(target) {
            return Err(format!(
                "unknown fuzz target {target:?}; targets are {all:?}"
            ));
        }
    }
    let targets = if chosen.is_empty() { all } else { chosen };

    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        return Err(
            "fuzzing needs the nightly toolchain (`rustup toolchain install nightly`)".into(),
        );
    }
    let have_cargo_fuzz = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_cargo_fuzz {
        step(
            "install cargo-fuzz",
            Command::new(cargo()).args(["install", "cargo-fuzz", "--locked"]),
        )?;
    }

    let root = project_root();
    for target in &targets {
        // New inputs go to a scratch corpus under target/, so the committed
        // seeds stay small and reviewed.
        let scratch = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
        let seeds = root.join("fuzz/corpus").join(target);
        step(
            &format!("fuzz {target} for {secs} s"),
            Command::new("cargo")
                .env("RUSTUP_TOOLCHAIN", "nightly")
                .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
                .arg(&scratch)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={secs}")),
        )?;
    }
    Ok(())
}

fn bench(args: &[String]) -> Result {
    if args.first().map(String::as_str) == Some("--micro") {
        return step(
            "bench --micro",
            Command::new(cargo())
                .args(["bench", "--workspace", "--locked"])
                .args(&args[1..]),
        );
    }
    for arg in args {
        if !matches!(arg.as_str(), "--quick" | "--only")
            && !arg.chars().all(|c| c.is_ascii_lowercase() || c == ',')
        {
            return Err(format!("bench: unknown argument {arg:?}\n\n{USAGE}"));
        }
    }
    install_peers()?;
    step(
        "build release binaries",
        Command::new(cargo()).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "cloudproxy-cli",
            "-p",
            "cloudproxy-bench",
        ]),
    )?;
    let release = target_dir().join("release");
    let out = project_root().join("target/bench");
    step(
        "bench",
        Command::new(release.join("cloudproxy-bench"))
            .arg("run")
            .args(args)
            .arg("--cloudproxy")
            .arg(release.join("cloudproxy"))
            .arg("--out")
            .arg(&out),
    )
}

/// The peers come from Debian: installed with apt-get when a binary is
/// missing. Their packaged services are never used; the bench starts its own
/// instances on 127.0.0.1 with its own configuration files.
fn install_peers() -> Result {
    let wanted = [
        ("haproxy", "haproxy"),
        ("socat", "socat"),
        ("danted", "dante-server"),
        ("turnserver", "coturn"),
        ("iperf3", "iperf3"),
        ("curl", "curl"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| {
            !["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
                .iter()
                .any(|d| Path::new(d).join(bin).exists())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sudo = |cmd: &mut Command| -> Command {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let mut c = if is_root {
            Command::new(cmd.get_program())
        } else {
            let mut c = Command::new("sudo");
            c.arg(cmd.get_program());
            c
        };
        c.args(cmd.get_args());
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    step(
        "apt-get update",
        &mut sudo(Command::new("apt-get").arg("update")),
    )?;
    step(
        "install benchmark peers",
        &mut sudo(
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(&missing),
        ),
    )
}
