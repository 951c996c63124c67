//! The SDK from every language (`crates/ffi`), run by `cargo xtask ci`:
//!
//! 1. the committed C header and Swift bindings must be what the generators
//!    write today (there is no Swift toolchain here, so that is Swift's test);
//! 2. against a proxy node and media edge on loopback (the `loopback_rig`
//!    example, stopped by its PID), the guide's flow from C (gcc, under
//!    valgrind: no errors, no leaks), Python (the generated ctypes module)
//!    and Kotlin on the JVM (`kotlinc` from npm, JNA from Debian);
//! 3. the same C program built for Windows with mingw-w64 against the SDK's
//!    DLL, run by Debian's wine against the same rig.
//!
//! Tools: gcc, valgrind, a JDK, JNA, npm, mingw-w64 and wine from Debian (installed with
//! apt-get when running as root; otherwise the step stops with the command
//! to run), `kotlinc` from the npm package `kotlin-compiler` under
//! `target/sdk-tools/npm`, and the two generators built from the workspace
//! (`cloudproxy-ffi --features generate`). Every process runs with a time
//! bound and is killed by its PID when it overruns; a warm run recompiles
//! nothing (the Kotlin jar is rebuilt only when its sources change).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use crate::platforms::{MINGW_LINKER, windows_dll};
use crate::provision::apt_install;
use crate::{Result, cargo, project_root, target_dir};

/// The `kotlin-compiler` npm package, pinned so every machine compiles alike.
const KOTLIN_COMPILER: &str = "kotlin-compiler@2.4.20";
/// How many times the Python exit test runs (the abort it guards against
/// happened in 2 runs of 10).
const PYTHON_EXIT_RUNS: u32 = 10;
/// Debian's JNA, which the generated Kotlin loads the library with.
const JNA_JAR: &str = "/usr/share/java/jna.jar";

/// Bounds: a cold cargo build of the generators takes minutes on two cores;
/// everything else takes seconds.
const CARGO_LIMIT: Duration = Duration::from_secs(40 * 60);
const TOOL_LIMIT: Duration = Duration::from_secs(10 * 60);
const RUN_LIMIT: Duration = Duration::from_secs(3 * 60);
const RIG_START_LIMIT: Duration = Duration::from_secs(60);

/// Debian tools the SDK tests run: (file that must exist or binary on
/// PATH, package).
const DEBIAN_TOOLS: [(&str, &str); 7] = [
    ("gcc", "gcc"),
    ("valgrind", "valgrind"),
    ("java", "default-jdk-headless"),
    (JNA_JAR, "libjna-java"),
    ("npm", "npm"),
    (MINGW_LINKER, "gcc-mingw-w64-x86-64"),
    (WINE, "wine64"),
];

/// Debian's 64-bit wine loader and its server (not on PATH).
const WINE: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver64";
/// mingw-w64's POSIX threads DLL, which the Windows C test links.
const WINPTHREAD_DLL: &str = "/usr/x86_64-w64-mingw32/lib/libwinpthread-1.dll";

/// The whole SDK step.
pub(crate) fn check() -> Result {
    let started = Instant::now();
    provision()?;
    let kotlinc = kotlinc()?;
    let root = project_root();
    let debug = target_dir().join("debug");
    let work = target_dir().join("sdk");
    let ffi = root.join("crates/ffi");

    bounded(
        "sdk: build the library and the loopback rig",
        Command::new(cargo()).args([
            "build",
            "--locked",
            "-p",
            "cloudproxy-ffi",
            "--lib",
            "--example",
            "loopback_rig",
        ]),
        CARGO_LIMIT,
    )?;
    bounded(
        "sdk: build the generators (cbindgen, uniffi-bindgen)",
        Command::new(cargo()).args([
            "build",
            "--locked",
            "-p",
            "cloudproxy-ffi",
            "--features",
            "generate",
            "--bins",
        ]),
        CARGO_LIMIT,
    )?;
    let library = debug.join("libcloudproxy_ffi.so");

    // 1. What is committed is what the generators write.
    let fresh = work.join("generated");
    reset_dir(&fresh)?;
    bounded(
        "sdk: generate the C header",
        Command::new(debug.join("generate-header")).arg(fresh.join("cloudproxy.h")),
        TOOL_LIMIT,
    )?;
    bounded(
        "sdk: generate the Swift, Python and Kotlin bindings",
        Command::new(debug.join("uniffi-bindgen"))
            .args(["generate", "--no-format", "--library"])
            .arg(&library)
            .args([
                "--language",
                "swift",
                "--language",
                "python",
                "--language",
                "kotlin",
                "--out-dir",
            ])
            .arg(&fresh),
        TOOL_LIMIT,
    )?;
    let regenerate = "regenerate them: cargo run -p cloudproxy-ffi --features generate --bin \
                      generate-header; cargo run -p cloudproxy-ffi --features generate --bin \
                      uniffi-bindgen -- generate --no-format --library target/debug/libcloudproxy_ffi.so \
                      --language swift --out-dir crates/ffi/bindings/swift";
    same_file(
        &fresh.join("cloudproxy.h"),
        &ffi.join("include/cloudproxy.h"),
        regenerate,
    )?;
    for name in [
        "cloudproxy_ffi.swift",
        "cloudproxy_ffiFFI.h",
        "cloudproxy_ffiFFI.modulemap",
    ] {
        same_file(
            &fresh.join(name),
            &ffi.join("bindings/swift").join(name),
            regenerate,
        )?;
    }

    // 2. The test programs.
    let c_dir = work.join("c");
    fs::create_dir_all(&c_dir).map_err(|e| format!("creating {}: {e}", c_dir.display()))?;
    let c_program = c_dir.join("guide");
    bounded(
        "sdk: compile the C test with gcc",
        Command::new("gcc")
            .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g", "-I"])
            .arg(ffi.join("include"))
            .arg(ffi.join("tests/c/guide.c"))
            .arg("-o")
            .arg(&c_program)
            .arg("-L")
            .arg(&debug)
            // As docs/sdk-c.md says: -lcloudproxy_ffi and an rpath.
            .arg("-lcloudproxy_ffi")
            .arg(format!("-Wl,-rpath,{}", debug.display()))
            .arg("-lpthread"),
        TOOL_LIMIT,
    )?;
    // The package as docs/sdk-python.md builds it: the hand-written
    // `__init__.py`, the generated module and the library (which the module
    // loads from its own directory) in `cloudproxy_ffi/`.
    let python_dir = work.join("python");
    let package = python_dir.join("cloudproxy_ffi");
    reset_dir(&package)?;
    copy(
        &ffi.join("bindings/python/cloudproxy_ffi/__init__.py"),
        &package.join("__init__.py"),
    )?;
    copy(
        &fresh.join("cloudproxy_ffi.py"),
        &package.join("cloudproxy_ffi.py"),
    )?;
    copy(&library, &package.join("libcloudproxy_ffi.so"))?;
    let jar = kotlin_jar(&kotlinc, &fresh, &ffi, &work.join("kotlin"))?;
    let windows_program = windows_c(&ffi, &work.join("c-windows"))?;

    // 3. The guide's flow from each language, against one rig.
    let rig = Rig::start(&debug.join("examples/loopback_rig"))?;
    let runs = (|| {
        bounded(
            "sdk: C under valgrind",
            rig.env(Command::new("valgrind").args([
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite,possible",
            ]))
            .arg(&c_program),
            RUN_LIMIT,
        )?;
        bounded(
            "sdk: Python",
            rig.env(&mut Command::new("python3"))
                .arg(ffi.join("tests/python/guide.py"))
                .env("PYTHONPATH", &python_dir),
            RUN_LIMIT,
        )?;
        // An engine joined and never released, at interpreter exit: the
        // package's atexit hook releases it before finalization. It aborted
        // 2 runs in 10 without, so it runs 10 times.
        for run in 1..=PYTHON_EXIT_RUNS {
            bounded(
                &format!("sdk: Python exit with an unreleased engine ({run}/{PYTHON_EXIT_RUNS})"),
                rig.env(&mut Command::new("python3"))
                    .arg(ffi.join("tests/python/exit_unreleased.py"))
                    .env("PYTHONPATH", &python_dir),
                RUN_LIMIT,
            )?;
        }
        bounded(
            "sdk: Kotlin on the JVM",
            rig.env(&mut Command::new("java"))
                .arg(format!("-Djna.library.path={}", debug.display()))
                .arg("-cp")
                .arg(format!("{}:{JNA_JAR}", jar.display()))
                .arg("GuideKt"),
            RUN_LIMIT,
        )?;
        run_under_wine(&rig, &windows_program)
    })();
    rig.stop()?;
    runs?;
    println!(
        "==> sdk: C (valgrind), Python, Kotlin and C on Windows (wine) passed; SDK step took {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// The Debian tools, installed when missing.
fn provision() -> Result {
    let missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(tool, _)| {
            if tool.starts_with('/') {
                !Path::new(tool).exists()
            } else {
                on_path(tool).is_none()
            }
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(
        "the SDK tests need a C compiler, valgrind, a JDK, JNA and npm",
        &missing,
    )
}

/// `kotlinc` from npm under `target/sdk-tools/npm`, installed when missing.
fn kotlinc() -> Result<PathBuf> {
    let prefix = target_dir().join("sdk-tools/npm");
    let kotlinc = prefix.join("node_modules/kotlin-compiler/bin/kotlinc");
    if kotlinc.is_file() {
        return Ok(kotlinc);
    }
    fs::create_dir_all(&prefix).map_err(|e| format!("creating {}: {e}", prefix.display()))?;
    bounded(
        &format!("sdk: npm install {KOTLIN_COMPILER}"),
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(KOTLIN_COMPILER),
        TOOL_LIMIT,
    )?;
    if !kotlinc.is_file() {
        return Err(format!(
            "sdk: npm installed {KOTLIN_COMPILER} but {} is missing",
            kotlinc.display()
        ));
    }
    Ok(kotlinc)
}

/// The Kotlin test and the generated bindings in one jar, rebuilt only when
/// either source changed (kotlinc takes half a minute).
fn kotlin_jar(kotlinc: &Path, generated: &Path, ffi: &Path, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let bindings = dir.join("cloudproxy_ffi.kt");
    let fresh = generated.join("uniffi/cloudproxy_ffi/cloudproxy_ffi.kt");
    let changed = fs::read(&fresh).ok() != fs::read(&bindings).ok();
    if changed {
        copy(&fresh, &bindings)?;
    }
    let test = ffi.join("tests/kotlin/Guide.kt");
    // The SDK's hand-written engine class, compiled with the generated file.
    let engine = ffi.join("bindings/kotlin/CloudProxyEngine.kt");
    let jar = dir.join("guide.jar");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let up_to_date = !changed
        && modified(&jar).is_some_and(|built| {
            [&bindings, &engine, &test]
                .iter()
                .all(|src| modified(src).is_some_and(|m| m <= built))
        });
    if up_to_date {
        println!("\n==> sdk: {} is up to date", jar.display());
        return Ok(jar);
    }
    bounded(
        "sdk: compile the Kotlin test with kotlinc",
        Command::new(kotlinc)
            .args(["-nowarn", "-cp", JNA_JAR])
            .arg(&bindings)
            .arg(&engine)
            .arg(&test)
            .args(["-include-runtime", "-d"])
            .arg(&jar),
        TOOL_LIMIT,
    )?;
    Ok(jar)
}

/// The C test built for Windows against the SDK's DLL, in `dir` with every
/// DLL it loads.
fn windows_c(ffi: &Path, dir: &Path) -> Result<PathBuf> {
    let dll_dir = windows_dll()?;
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let program = dir.join("guide.exe");
    bounded(
        "sdk: compile the C test for Windows with mingw-w64",
        Command::new(MINGW_LINKER)
            .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g", "-I"])
            .arg(ffi.join("include"))
            .arg(ffi.join("tests/c/guide.c"))
            .arg("-o")
            .arg(&program)
            .arg("-L")
            .arg(&dll_dir)
            .args(["-l:libcloudproxy_ffi.dll.a", "-lpthread"]),
        TOOL_LIMIT,
    )?;
    bounded(
        "sdk: compile wine's missing bcryptprimitives.dll",
        Command::new(MINGW_LINKER)
            .args(["-shared", "-O2", "-Wall", "-Werror", "-o"])
            .arg(dir.join("bcryptprimitives.dll"))
            .arg(ffi.join("tests/c/wine/bcryptprimitives.c"))
            .arg("-ladvapi32"),
        TOOL_LIMIT,
    )?;
    copy(
        &dll_dir.join("cloudproxy_ffi.dll"),
        &dir.join("cloudproxy_ffi.dll"),
    )?;
    copy(Path::new(WINPTHREAD_DLL), &dir.join("libwinpthread-1.dll"))?;
    Ok(program)
}

/// Runs the Windows C test under wine in a prefix under `target/`, then
/// stops that prefix's wineserver.
fn run_under_wine(rig: &Rig, program: &Path) -> Result {
    let prefix = target_dir().join("sdk-tools/wine");
    let wine = |cmd: &mut Command| {
        cmd.env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko downloads: a console program needs neither.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
    };
    let result = (|| {
        if !prefix.join("system.reg").is_file() {
            let mut boot = Command::new(WINE);
            boot.args(["wineboot", "--init"]);
            wine(&mut boot);
            bounded("sdk: create the wine prefix", &mut boot, TOOL_LIMIT)?;
        }
        let mut run = Command::new(WINE);
        run.arg(program);
        wine(&mut run);
        bounded("sdk: C on Windows (wine)", rig.env(&mut run), RUN_LIMIT)
    })();
    let mut stop = Command::new(WINESERVER);
    stop.arg("-k");
    wine(&mut stop);
    // Nothing to stop is fine (the server may have exited already).
    let _ = bounded("sdk: stop this prefix's wineserver", &mut stop, TOOL_LIMIT);
    result
}

/// The `loopback_rig` example: a proxy node and media edge on 127.0.0.1.
struct Rig {
    child: Child,
    stdin: Option<ChildStdin>,
    vars: Vec<(String, String)>,
}

impl Rig {
    fn start(binary: &Path) -> Result<Self> {
        println!("\n==> sdk: start the loopback rig: {}", binary.display());
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("sdk: starting {}: {e}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut rig = Self {
            child,
            stdin,
            vars: Vec::new(),
        };
        let deadline = Instant::now() + RIG_START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line == "READY" => break,
                Ok(line) => {
                    println!("    {line}");
                    if let Some((key, value)) = line.split_once('=') {
                        rig.vars.push((key.to_owned(), value.to_owned()));
                    }
                }
                Err(e) => {
                    let _ = rig.stop();
                    return Err(format!(
                        "sdk: the loopback rig did not print READY within {RIG_START_LIMIT:?} ({e})"
                    ));
                }
            }
        }
        Ok(rig)
    }

    /// `cmd` with the rig's addresses in its environment.
    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)))
    }

    /// Closes its stdin (it then shuts down), or kills it by PID when it
    /// does not exit within 5 s.
    fn stop(mut self) -> Result {
        drop(self.stdin.take());
        let pid = self.child.id();
        if wait_bounded(&mut self.child, Duration::from_secs(5))?.is_none() {
            self.child
                .kill()
                .map_err(|e| format!("sdk: killing the loopback rig (pid {pid}): {e}"))?;
            let _ = self.child.wait();
        }
        println!("==> sdk: loopback rig (pid {pid}) stopped");
        Ok(())
    }
}

/// Runs `cmd` from the project root, killing it by PID after `limit`.
fn bounded(name: &str, cmd: &mut Command, limit: Duration) -> Result {
    cmd.current_dir(project_root());
    println!("\n==> {name}: {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("step `{name}`: could not start {cmd:?}: {e}"))?;
    match wait_bounded(&mut child, limit)? {
        Some(status) if status.success() => {
            println!("==> {name}: ok in {:.1?}", started.elapsed());
            Ok(())
        }
        Some(status) => Err(format!("step `{name}` failed ({status})")),
        None => {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "step `{name}` did not finish within {limit:?}; killed pid {pid}"
            ))
        }
    }
}

/// The child's exit status, or `None` if it still runs after `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() >= deadline => return Ok(None),
            // Polling a child from a build script: no async runtime here.
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for pid {}: {e}", child.id())),
        }
    }
}

/// Fails when the committed `committed` differs from the freshly generated
/// `fresh`.
fn same_file(fresh: &Path, committed: &Path, regenerate: &str) -> Result {
    let read = |p: &Path| fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    if read(fresh)? != read(committed)? {
        return Err(format!(
            "{} is stale: the generator writes something else now; {regenerate}",
            committed.display()
        ));
    }
    println!("==> sdk: {} is current", committed.display());
    Ok(())
}

fn reset_dir(dir: &Path) -> Result {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

fn copy(from: &Path, to: &Path) -> Result {
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

fn on_path(bin: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|candidate| candidate.is_file())
}
