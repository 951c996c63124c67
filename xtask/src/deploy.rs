//! `cargo xtask ci`'s check of `deploy/` (docs/operations.md walks through
//! the files; docs/decisions.md says why they are checked this way).
//!
//! - `deploy/systemd/cloudproxy.service`: `systemd-analyze verify` on a copy
//!   whose binary path points at the freshly built `cloudproxy` (verify
//!   insists that the `ExecStart=` binary exists), with any warning a
//!   failure; `systemd-analyze security --offline=true` under an exposure
//!   threshold; the directives the docs promise; a stop timeout above the
//!   drain deadline.
//! - `deploy/kubernetes/`: `kubernetes-validate` (PyPI, in a venv under
//!   `target/deploy-venv`) in strict mode against Kubernetes
//!   [`KUBERNETES`]; `xtask/deploy_k8s.py` for what a schema cannot see
//!   (host network, grace period against the drain deadline, probes, the
//!   init container's paths, PodDisruptionBudget selector); the ConfigMap
//!   and Secret joined as the pod joins them go through `cloudproxy serve
//!   --check`, once with fresh `keygen` keys (accepted) and once with the
//!   placeholders (refused).
//! - `deploy/Containerfile`: cannot be built here (no container registry),
//!   so it is read: every `COPY` source exists, the sources hold the whole
//!   Cargo workspace, the build command builds the package that owns the
//!   `cloudproxy` binary, the runtime stage copies that binary from where
//!   the build leaves it, the user is a numeric non-root id, and `EXPOSE`
//!   names exactly the listeners of the example configuration (with the
//!   admin listener) and a `HEALTHCHECK` asks the admin listener's `/livez`.
//! - `deploy/prometheus/alerts.yml`: `promtool check rules` (Debian's
//!   `prometheus` package, installed when missing and root);
//!   `deploy/grafana/cloudproxy.json` parses as JSON. That both name only
//!   metrics a node exports is checked against a real scrape by
//!   `crates/server/tests/metrics.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use super::provision::apt_install;
use super::{Result, cargo, project_root, step, target_dir};

/// The kubernetes-validate release installed into the venv.
const KUBERNETES_VALIDATE: &str = "1.37.0";
/// The Kubernetes version the manifests are validated against: the newest
/// schema that release ships.
const KUBERNETES: &str = "1.37.0";
/// `systemd-analyze security` exposure ceiling, in tenths (2.0 of 10; the
/// unit scores 1.6 with `systemd-analyze security --offline=true`):
/// loosening the sandbox fails the check.
const EXPOSURE_THRESHOLD: &str = "20";
/// The binary path in the unit, replaced by the built binary for `verify`.
const UNIT_BINARY: &str = "/usr/local/bin/cloudproxy";
/// Lines the unit must keep (docs/operations.md describes each).
const UNIT_DIRECTIVES: &[&str] = &[
    "DynamicUser=yes",
    "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter=@system-service",
    "LimitNOFILE=1048576",
    "SupplementaryGroups=cloudproxy",
    "ExecStartPre=/usr/local/bin/cloudproxy serve --check --config /etc/cloudproxy/proxy.toml",
    "ExecStart=/usr/local/bin/cloudproxy serve --config /etc/cloudproxy/proxy.toml --log-format json",
    "ExecReload=/usr/local/bin/cloudproxy serve --check --config /etc/cloudproxy/proxy.toml",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "KillSignal=SIGTERM",
];
/// The admin listener's port in the example configuration and the probes.
const ADMIN_PORT: &str = "9600";
/// An address from TEST-NET-1 standing in for `$(NODE_IP)`.
const NODE_IP: &str = "192.0.2.10";

/// Runs every check of `deploy/`; the first failure is the error.
pub(crate) fn check() -> Result {
    let started = Instant::now();
    let root = project_root();
    let target = target_dir();
    let scratch = scratch_dir();
    fs::create_dir_all(&scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    step(
        "deploy: build cloudproxy",
        Command::new(cargo()).args([
            "build",
            "--locked",
            "-p",
            "cloudproxy-cli",
            "--bin",
            "cloudproxy",
        ]),
    )?;
    let binary = target.join("debug/cloudproxy");

    let venv = python_venv(&target.join("deploy-venv"))?;
    let k8s = kubernetes(&root, &venv, &binary, &scratch)?;
    systemd_unit(&root, &binary, &scratch, k8s.drain_timeout_ms)?;
    containerfile(&root, &k8s.ports)?;
    monitoring(&root)?;
    println!("==> deploy: ok in {:.1?}", started.elapsed());
    Ok(())
}

/// `promtool check rules` on the alert rules; the dashboard parses as JSON.
fn monitoring(root: &Path) -> Result {
    let have_promtool = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_promtool {
        apt_install(
            "deploy/prometheus/alerts.yml is checked with promtool, which is not on PATH",
            &["prometheus"],
        )?;
    }
    step(
        "deploy: promtool check rules deploy/prometheus/alerts.yml",
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(root.join("deploy/prometheus/alerts.yml")),
    )?;
    step(
        "deploy: deploy/grafana/cloudproxy.json is JSON",
        Command::new("python3")
            .args(["-m", "json.tool", "--no-ensure-ascii"])
            .arg(root.join("deploy/grafana/cloudproxy.json"))
            .stdout(std::process::Stdio::null()),
    )
}

/// Where the check writes its files.
fn scratch_dir() -> PathBuf {
    target_dir().join("deploy-check")
}

fn run(cmd: &mut Command) -> Result<Output> {
    cmd.current_dir(project_root());
    cmd.output()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The venv with kubernetes-validate at [`KUBERNETES_VALIDATE`]: created and
/// installed on first use, reused (no pip run) once the version matches.
fn python_venv(venv: &Path) -> Result<PathBuf> {
    let validate = venv.join("bin/kubernetes-validate");
    let installed = Command::new(&validate)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && o.stdout.trim_ascii() == KUBERNETES_VALIDATE.as_bytes()
        });
    if installed {
        return Ok(venv.to_owned());
    }
    if !venv.join("bin/pip").exists() {
        let create = |venv: &Path| {
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(venv)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !create(venv) {
            // Debian's python3 has no ensurepip without python3-venv.
            let _ = fs::remove_dir_all(venv);
            apt_install("`python3 -m venv` failed", &["python3-venv"])?;
            if !create(venv) {
                return Err(format!("`python3 -m venv {}` failed", venv.display()));
            }
        }
    }
    step(
        "deploy: install kubernetes-validate",
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
        ]),
    )?;
    Ok(venv.to_owned())
}

/// What the Kubernetes example configuration says, for the other checks.
struct K8sFacts {
    drain_timeout_ms: u64,
    /// The listeners as `EXPOSE` writes them (`1080/tcp`, `4500-4650/udp`).
    ports: Vec<String>,
}

fn kubernetes(root: &Path, venv: &Path, binary: &Path, scratch: &Path) -> Result<K8sFacts> {
    let dir = root.join("deploy/kubernetes");
    let mut manifests: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    step(
        &format!("deploy: kubernetes-validate --strict against Kubernetes {KUBERNETES}"),
        Command::new(venv.join("bin/kubernetes-validate"))
            .args(["--kubernetes-version", KUBERNETES, "--strict", "--quiet"])
            .args(&manifests),
    )?;

    let joined = scratch.join("k8s-proxy.toml");
    let out = run(Command::new(venv.join("bin/python"))
        .arg(root.join("xtask/deploy_k8s.py"))
        .arg(&dir)
        .arg(&joined))?;
    if !out.status.success() {
        return Err(format!(
            "deploy/kubernetes: xtask/deploy_k8s.py found problems:\n{}",
            text(&out.stderr)
        ));
    }
    let stdout = text(&out.stdout);
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("xtask/deploy_k8s.py printed no {key}=…: {stdout:?}"))
    };
    let drain_timeout_ms = value("drain_timeout_ms")?
        .parse()
        .map_err(|e| format!("xtask/deploy_k8s.py: drain_timeout_ms: {e}"))?;
    let ports = value("ports")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    // As deployed without filling in secret.yaml: refused, naming the value.
    let serve_check = |config: &Path| {
        run(Command::new(binary)
            .args(["serve", "--check", "--config"])
            .arg(config)
            .args(["--advertise", NODE_IP]))
    };
    let placeholders = serve_check(&joined)?;
    if placeholders.status.code() != Some(2)
        || !text(&placeholders.stderr).contains("expected hex digits")
    {
        return Err(format!(
            "deploy/kubernetes/secret.yaml: expected its GENERATE-… placeholders to fail `serve --check` \
             (exit 2, \"expected hex digits\"), found {} with:\n{}{}",
            placeholders.status,
            text(&placeholders.stdout),
            text(&placeholders.stderr)
        ));
    }
    // Filled in with `keygen`, as docs/operations.md says: accepted.
    let mut config =
        fs::read_to_string(&joined).map_err(|e| format!("reading {}: {e}", joined.display()))?;
    for (placeholder, kind) in [
        ("GENERATE-WITH-cloudproxy-keygen-secret-raw", "secret"),
        (
            "GENERATE-WITH-cloudproxy-keygen-ticket-key-raw",
            "ticket-key",
        ),
    ] {
        if !config.contains(placeholder) {
            return Err(format!(
                "deploy/kubernetes/secret.yaml: expected the placeholder {placeholder}"
            ));
        }
        let key = run(Command::new(binary).args(["keygen", kind, "--raw"]))?;
        if !key.status.success() {
            return Err(format!(
                "cloudproxy keygen {kind} --raw failed: {}",
                text(&key.stderr)
            ));
        }
        config = config.replace(placeholder, text(&key.stdout).trim());
    }
    let filled = scratch.join("k8s-proxy-filled.toml");
    fs::write(&filled, config).map_err(|e| format!("writing {}: {e}", filled.display()))?;
    let checked = serve_check(&filled)?;
    let _ = fs::remove_file(&filled);
    if !checked.status.success() {
        return Err(format!(
            "deploy/kubernetes: the ConfigMap and Secret joined as the pod joins them, with keygen keys, \
             fail `cloudproxy serve --check`:\n{}",
            text(&checked.stderr)
        ));
    }
    println!(
        "==> deploy: kubernetes example configuration: {}",
        text(&checked.stdout).trim()
    );
    Ok(K8sFacts {
        drain_timeout_ms,
        ports,
    })
}

fn systemd_unit(root: &Path, binary: &Path, scratch: &Path, drain_timeout_ms: u64) -> Result {
    let path = root.join("deploy/systemd/cloudproxy.service");
    let unit = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let name = "deploy/systemd/cloudproxy.service";
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for directive in UNIT_DIRECTIVES {
        if !lines.contains(directive) {
            return Err(format!(
                "{name}: expected the line `{directive}`, found none"
            ));
        }
    }
    let stop = lines
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .ok_or_else(|| {
            format!("{name}: expected TimeoutStopSec= (above the drain deadline), found none")
        })?;
    let stop_ms = parse_systemd_secs(stop).ok_or_else(|| {
        format!("{name}: TimeoutStopSec: expected seconds like 30s or 1min, found {stop:?}")
    })? * 1000;
    if stop_ms <= drain_timeout_ms {
        return Err(format!(
            "{name}: TimeoutStopSec: expected above the drain deadline ({drain_timeout_ms} ms), found {stop}"
        ));
    }

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        apt_install("systemd-analyze is missing", &["systemd"])?;
    }
    // verify wants every Exec binary to exist: a copy pointing at the build.
    let copy = scratch.join("cloudproxy.service");
    fs::write(&copy, unit.replace(UNIT_BINARY, &binary.to_string_lossy()))
        .map_err(|e| format!("writing {}: {e}", copy.display()))?;
    println!(
        "\n==> deploy: systemd-analyze verify {name} (as {})",
        copy.display()
    );
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy))?;
    // verify exits 0 on unknown keys and bad values (it only warns): any
    // output is a failure.
    if !out.status.success() || !out.stderr.is_empty() || !out.stdout.is_empty() {
        return Err(format!(
            "{name}: systemd-analyze verify ({}):\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ));
    }
    let out = run(Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=true",
            "--no-pager",
            &format!("--threshold={EXPOSURE_THRESHOLD}"),
        ])
        .arg(&copy))?;
    let report = text(&out.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall exposure line)");
    if !out.status.success() {
        let exposed: Vec<&str> = report.lines().filter(|l| l.starts_with('✗')).collect();
        return Err(format!(
            "{name}: systemd-analyze security: expected an exposure of at most {}.{}, found {}; \
             exposed:\n{}\n{}",
            &EXPOSURE_THRESHOLD[..1],
            &EXPOSURE_THRESHOLD[1..],
            overall.trim_start_matches('→').trim(),
            exposed.join("\n"),
            text(&out.stderr)
        ));
    }
    println!(
        "==> deploy: systemd unit verified; {}",
        overall.trim_start_matches('→').trim()
    );
    Ok(())
}

/// `30`, `30s` or `2min` in seconds.
fn parse_systemd_secs(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Some(min) = value.strip_suffix("min") {
        return min.trim().parse::<u64>().ok().map(|m| m * 60);
    }
    value.strip_suffix('s').unwrap_or(value).trim().parse().ok()
}

/// The package whose `[[bin]]` is named `cloudproxy`.
fn binary_package(root: &Path) -> Result<String> {
    let crates = root.join("crates");
    for entry in fs::read_dir(&crates).map_err(|e| format!("reading {}: {e}", crates.display()))? {
        let manifest = entry.map_err(|e| e.to_string())?.path().join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest) else {
            continue;
        };
        let mut section = "";
        let mut package = None;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if let Some(value) = line
                .strip_prefix("name")
                .map(str::trim)
                .and_then(|l| l.strip_prefix('='))
            {
                let value = value.trim().trim_matches('"');
                match section {
                    "[package]" => package = Some(value.to_owned()),
                    "[[bin]]" if value == "cloudproxy" => {
                        return package.ok_or_else(|| {
                            format!("{}: [[bin]] before [package]", manifest.display())
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    Err("no crate under crates/ has a [[bin]] named cloudproxy".into())
}

fn containerfile(root: &Path, ports: &[String]) -> Result {
    let path = root.join("deploy/Containerfile");
    let file = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let summary = check_containerfile(root, &file, ports)?;
    println!(
        "==> deploy: deploy/Containerfile read: {summary} (not built: no container registry here)"
    );
    Ok(())
}

/// The checks of [`containerfile`] on the file's text; returns a summary.
fn check_containerfile(root: &Path, file: &str, ports: &[String]) -> Result<String> {
    let name = "deploy/Containerfile";
    // Instructions, with `\` continuations joined and comments dropped.
    let mut instructions: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in file.lines().enumerate() {
        let trimmed = line.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (n, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                acc.push_str(part);
                acc.push(' ');
                pending = Some((n, acc));
            }
            None => {
                acc.push_str(trimmed);
                instructions.push((n, acc));
            }
        }
    }

    let package = binary_package(root)?;
    let mut stage_workdir: Option<(String, String)> = None; // (stage, workdir)
    let mut build_stage = None;
    let mut copied = Vec::new();
    let mut built = false;
    let mut runtime_copy = None;
    let mut user = None;
    let mut exposed = Vec::new();
    let mut healthcheck = None;
    for (n, instruction) in &instructions {
        let at = format!("{name}:{n}");
        let (keyword, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let stage = match words.as_slice() {
                    [_, as_, stage] if as_.eq_ignore_ascii_case("as") => (*stage).to_owned(),
                    _ => String::new(),
                };
                stage_workdir = Some((stage, "/".to_owned()));
            }
            "WORKDIR" => {
                if let Some((_, dir)) = &mut stage_workdir {
                    rest.trim().clone_into(dir);
                }
            }
            "COPY" => {
                let from = words.iter().find_map(|w| w.strip_prefix("--from="));
                let args: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let Some((_, sources)) = args.split_last() else {
                    return Err(format!(
                        "{at}: COPY: expected sources and a destination, found {rest:?}"
                    ));
                };
                match from {
                    None => {
                        for source in sources {
                            if !root.join(source).exists() {
                                return Err(format!(
                                    "{at}: COPY {source}: expected a path in the repository, found none at {}",
                                    root.join(source).display()
                                ));
                            }
                            copied.push((*source).trim_end_matches('/').to_owned());
                        }
                    }
                    Some(stage) => {
                        runtime_copy =
                            Some((at.clone(), stage.to_owned(), sources.to_vec().join(" ")))
                    }
                }
            }
            "RUN" if rest.contains("cargo build") => {
                for flag in ["--release", "--locked", &format!("-p {package}")] {
                    if !rest.contains(flag) {
                        return Err(format!(
                            "{at}: the build command: expected `{flag}` (the `cloudproxy` binary is in package \
                             {package}), found {rest:?}"
                        ));
                    }
                }
                built = true;
                build_stage.clone_from(&stage_workdir);
            }
            "USER" => user = Some((at.clone(), rest.trim().to_owned())),
            "EXPOSE" => exposed.extend(words.iter().map(|w| (*w).to_owned())),
            "HEALTHCHECK" => healthcheck = Some((at.clone(), rest.to_owned())),
            _ => {}
        }
    }
    if !built {
        return Err(format!(
            "{name}: expected a `RUN cargo build --release --locked -p {package}`, found none"
        ));
    }
    // cargo --locked needs the whole workspace: the manifest, the lock file
    // and every member directory.
    let manifest = fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("reading Cargo.toml: {e}"))?;
    let members = manifest
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("members")
                .and_then(|l| l.trim().strip_prefix('='))
        })
        .ok_or("Cargo.toml: expected a members = [...] line")?;
    let mut needed: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into()];
    for member in members.trim().trim_matches(['[', ']']).split(',') {
        let member = member.trim().trim_matches('"');
        if let Some(top) = member.split('/').next().filter(|t| !t.is_empty()) {
            needed.push(top.to_owned());
        }
    }
    for path in &needed {
        if !copied.iter().any(|c| c == path) {
            return Err(format!(
                "{name}: expected the build stage to COPY {path} (part of the Cargo workspace), found COPYs of {copied:?}"
            ));
        }
    }
    let (build_name, workdir) = build_stage.unwrap_or_default();
    let binary = format!(
        "{}/target/release/cloudproxy",
        workdir.trim_end_matches('/')
    );
    match runtime_copy {
        Some((_, stage, source)) if stage == build_name && source == binary => {}
        Some((at, stage, source)) => {
            return Err(format!(
                "{at}: expected `COPY --from={build_name} {binary} …` (where the build leaves the binary), \
                 found --from={stage} {source}"
            ));
        }
        None => {
            return Err(format!(
                "{name}: expected the runtime stage to COPY --from={build_name} {binary}"
            ));
        }
    }
    match user {
        Some((_, u))
            if u.split(':')
                .all(|id| id.parse::<u32>().is_ok_and(|id| id != 0)) => {}
        Some((at, u)) => {
            return Err(format!(
                "{at}: USER: expected a numeric non-root uid:gid, found {u:?}"
            ));
        }
        None => {
            return Err(format!(
                "{name}: expected a USER (numeric, non-root), found none"
            ));
        }
    }
    let (mut want, mut have) = (ports.to_vec(), exposed.clone());
    want.sort();
    have.sort();
    if want != have {
        return Err(format!(
            "{name}: EXPOSE: expected the listeners of deploy/kubernetes/configmap.yaml {want:?}, found {have:?}"
        ));
    }
    match &healthcheck {
        Some((_, check)) if check.contains("/livez") && check.contains(ADMIN_PORT) => {}
        Some((at, check)) => {
            return Err(format!(
                "{at}: HEALTHCHECK: expected a request to the admin listener's /livez on port {ADMIN_PORT}, found {check:?}"
            ));
        }
        None => {
            return Err(format!(
                "{name}: expected a HEALTHCHECK on the admin listener's /livez (port {ADMIN_PORT}), found none"
            ));
        }
    }
    let ignore = fs::read_to_string(root.join(".dockerignore")).unwrap_or_default();
    if !ignore
        .lines()
        .any(|l| l.trim().trim_matches('/') == "target")
    {
        return Err(
            ".dockerignore: expected `target` (the build context would carry the build tree)"
                .into(),
        );
    }
    Ok(format!(
        "COPY sources exist and hold the workspace, builds -p {package}, copies {binary}, \
         USER non-root, EXPOSE matches the listeners, HEALTHCHECK on the admin listener"
    ))
}

#[cfg(test)]
mod tests {
    use super::{check_containerfile, parse_systemd_secs, project_root};

    /// Runs the whole deploy check alone:
    /// `cargo test -p xtask deploy_check -- --ignored --nocapture`.
    #[test]
    #[ignore = "builds cloudproxy and may install packages; run by `cargo xtask ci`"]
    fn deploy_check() {
        super::check().unwrap();
    }

    fn ports() -> Vec<String> {
        [
            "1080/tcp",
            "1080/udp",
            "8000/tcp",
            "8000/udp",
            "25000/tcp",
            "25000/udp",
            "9700/tcp",
            "9700/udp",
            "4000/tcp",
            "4500-4650/udp",
            "9600/tcp",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn check_with(from: &str, to: &str) -> Result<String, String> {
        let root = project_root();
        let file = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
        assert!(file.contains(from), "the Containerfile has {from:?}");
        check_containerfile(&root, &file.replacen(from, to, 1), &ports())
    }

    #[test]
    fn the_containerfile_passes_and_each_fault_is_named() {
        check_with("", "").unwrap();
        let error = check_with("COPY xtask xtask", "COPY xtask2 xtask").unwrap_err();
        assert!(
            error.contains("COPY xtask2: expected a path in the repository"),
            "{error}"
        );
        let error = check_with("COPY xtask xtask\n", "").unwrap_err();
        assert!(
            error.contains("expected the build stage to COPY xtask"),
            "{error}"
        );
        let error = check_with("-p cloudproxy-cli", "-p cloudproxy").unwrap_err();
        assert!(error.contains("expected `-p cloudproxy-cli`"), "{error}");
        let error = check_with(
            "/src/target/release/cloudproxy",
            "/src/target/debug/cloudproxy",
        )
        .unwrap_err();
        assert!(
            error.contains("expected `COPY --from=build /src/target/release/cloudproxy"),
            "{error}"
        );
        let error = check_with("USER 65532:65532", "USER 0:0").unwrap_err();
        assert!(
            error.contains("expected a numeric non-root uid:gid"),
            "{error}"
        );
        let error = check_with("EXPOSE 4000/tcp", "EXPOSE 4001/tcp").unwrap_err();
        assert!(error.contains("EXPOSE: expected the listeners"), "{error}");
        let error = check_with("GET /livez HTTP", "GET /healthz HTTP").unwrap_err();
        assert!(error.contains("HEALTHCHECK: expected a request"), "{error}");
    }

    /// Set in the child that
    /// `the_scratch_directory_follows_a_relative_cargo_target_dir_from_the_working_directory`
    /// starts: the child prints where the check would write, and stops.
    const SCRATCH_PROBE: &str = "XTASK_DEPLOY_SCRATCH_PROBE";

    #[test]
    fn the_scratch_directory_follows_a_relative_cargo_target_dir_from_the_working_directory() {
        if std::env::var_os(SCRATCH_PROBE).is_some() {
            println!("scratch={}", super::scratch_dir().display());
            return;
        }
        // A child (this test binary, this test), since a test may not change
        // its own environment; cargo reads a relative CARGO_TARGET_DIR from
        // the directory it was started in.
        let cwd = std::env::temp_dir();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "deploy::tests::the_scratch_directory_follows_a_relative_cargo_target_dir_from_the_working_directory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SCRATCH_PROBE, "1")
            .env("CARGO_TARGET_DIR", "relative-target")
            .current_dir(&cwd)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let scratch = stdout
            .lines()
            .find_map(|l| l.split_once("scratch=").map(|(_, dir)| dir.trim()))
            .unwrap_or_else(|| panic!("the child printed no scratch= line:\n{stdout}"));
        assert_eq!(
            std::path::Path::new(scratch),
            cwd.join("relative-target").join("deploy-check"),
            "expected CARGO_TARGET_DIR=relative-target joined onto the working directory {}",
            cwd.display()
        );
    }

    #[test]
    fn systemd_durations() {
        assert_eq!(parse_systemd_secs("30s"), Some(30));
        assert_eq!(parse_systemd_secs("30"), Some(30));
        assert_eq!(parse_systemd_secs("2min"), Some(120));
        assert_eq!(parse_systemd_secs("soon"), None);
    }
}
