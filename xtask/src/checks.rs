//! `cargo xtask ci` checks that keep the documentation and the packaging
//! true to the code: the command-line docs name what `cloudproxy --help`
//! lists, the licence files the manifest promises exist, and every published
//! crate packages (with its verify build) without a warning.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::{Result, cargo, project_root, step, target_dir};

/// Crates of the workspace that are not published: left out of `package`.
const UNPUBLISHED: [&str; 2] = ["cloudproxy-bench", "xtask"];

/// Subcommands whose flags `docs/operations.md` gives as a synopsis.
const SYNOPSES: [&str; 3] = ["serve", "edge", "forward"];

/// Docs and licence files against the code; every problem is listed, not
/// just the first.
pub(crate) fn docs_drift() -> Result {
    let started = Instant::now();
    println!("\n==> docs drift: cloudproxy --help against the docs, licence files");
    let root = project_root();
    step(
        "build cloudproxy",
        Command::new(cargo()).args(["build", "--quiet", "--locked", "-p", "cloudproxy-cli"]),
    )?;
    let bin = target_dir().join("debug").join("cloudproxy");
    let mut problems = Vec::new();

    // Licences: `license = "MIT OR Apache-2.0"` promises both texts.
    let manifest = read(&root.join("Cargo.toml"))?;
    if !manifest.contains(r#"license = "MIT OR Apache-2.0""#) {
        problems.push(
            "Cargo.toml: expected `license = \"MIT OR Apache-2.0\"` in [workspace.package] \
             (the licence files below follow it)"
                .to_owned(),
        );
    }
    for (file, marker) in [
        (
            "LICENSE-MIT",
            "Permission is hereby granted, free of charge",
        ),
        ("LICENSE-APACHE", "Version 2.0, January 2004"),
    ] {
        match fs::read_to_string(root.join(file)) {
            Ok(text) if text.contains(marker) => {}
            Ok(_) => problems.push(format!(
                "{file}: expected the standard text (containing {marker:?}), found something else"
            )),
            Err(e) => problems.push(format!(
                "{file}: expected at the workspace root (Cargo.toml says MIT OR Apache-2.0): {e}"
            )),
        }
    }

    // Every subcommand has its section in the CLI crate's README.
    let subcommands = subcommands(&help(&bin, &[])?);
    if subcommands.is_empty() {
        problems.push("`cloudproxy --help`: expected a `Commands:` list, found none".to_owned());
    }
    let cli_readme_path = "crates/cli/README.md";
    let cli_readme = read(&root.join(cli_readme_path))?;
    for name in &subcommands {
        if !cli_readme.contains(&format!("`cloudproxy {name}`")) {
            problems.push(format!(
                "{cli_readme_path}: `cloudproxy --help` lists the subcommand `{name}`, \
                 but the README never names `cloudproxy {name}`"
            ));
        }
    }

    // Every flag of serve, edge and forward is in its synopsis.
    let ops_path = "docs/operations.md";
    let ops = read(&root.join(ops_path))?;
    for name in SYNOPSES {
        let Some(synopsis) = synopsis(&ops, name) else {
            problems.push(format!(
                "{ops_path}: expected a section \"## `cloudproxy {name}`\" with a synopsis \
                 in a ``` block, found none"
            ));
            continue;
        };
        for flag in long_flags(&help(&bin, &[name])?) {
            if !names_flag(synopsis, &flag) {
                problems.push(format!(
                    "{ops_path}: the `cloudproxy {name}` synopsis lacks {flag} \
                     (listed by `cloudproxy {name} --help`)"
                ));
            }
        }
    }

    // The README says how to install the command.
    if !read(&root.join("README.md"))?.contains("cargo install --path crates/cli") {
        problems.push(
            "README.md: expected an install line `cargo install --path crates/cli`, found none"
                .to_owned(),
        );
    }

    if !problems.is_empty() {
        return Err(format!(
            "docs drift: {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        ));
    }
    println!("==> docs drift: ok in {:.1?}", started.elapsed());
    Ok(())
}

/// `cargo package` of every published crate, each with its verify build
/// (cargo resolves unpublished siblings from the crates it has just
/// packaged); any `warning:` fails the step, since a metadata warning means
/// a crate would reach crates.io without its links or README.
pub(crate) fn package() -> Result {
    forget_earlier_packages()?;
    let mut cmd = Command::new(cargo());
    cmd.args(["package", "--workspace", "--locked", "--allow-dirty"])
        .env("CARGO_TARGET_DIR", package_target_dir());
    for name in UNPUBLISHED {
        cmd.args(["--exclude", name]);
    }
    cmd.current_dir(project_root());
    println!("\n==> package: {cmd:?}");
    let started = Instant::now();
    let output = cmd
        .output()
        .map_err(|e| format!("step `package`: could not start {cmd:?}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{stderr}");
    if !output.status.success() {
        return Err(format!("step `package` failed ({})", output.status));
    }
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("warning:"))
        .collect();
    if !warnings.is_empty() {
        return Err(format!(
            "step `package`: expected no warnings, found {}:\n  {}",
            warnings.len(),
            warnings.join("\n  ")
        ));
    }
    println!("==> package: ok in {:.1?}", started.elapsed());
    Ok(())
}

/// Where the verify builds of `cargo package` go: a target directory of
/// their own, so that [`forget_earlier_packages`] may throw away every build
/// of our crates in it without touching the workspace's own builds.
fn package_target_dir() -> std::path::PathBuf {
    target_dir().join("package-verify")
}

/// The verify build resolves sibling crates from a temporary local registry
/// that cargo unpacks under `$CARGO_HOME/registry/src/-<hash>/` and builds
/// as registry crates, which cargo takes to be immutable per version: it
/// neither unpacks a `name-version` again nor rebuilds one it has built.
/// Our versions do not change between runs, so a second `cargo xtask ci`
/// would verify against the first run's sources. Remove those unpacked
/// copies (only ours, only from the unnamed local registries; crates.io's
/// stay) and our crates' builds in the verify target directory (its
/// dependencies stay cached).
fn forget_earlier_packages() -> Result {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || std::env::home_dir().unwrap_or_default().join(".cargo"),
        std::path::PathBuf::from,
    );
    let unpacked_registries: Vec<std::path::PathBuf> = fs::read_dir(home.join("registry/src"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|registry| registry.file_name().to_string_lossy().starts_with('-'))
        .map(|registry| registry.path())
        .collect();
    let fingerprints = package_target_dir().join("debug/.fingerprint");
    for dir in unpacked_registries.iter().chain([&fingerprints]) {
        let Ok(entries) = fs::read_dir(dir) else {
            continue; // nothing built or unpacked there yet
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("cloudproxy-")
            {
                fs::remove_dir_all(entry.path()).map_err(|e| {
                    format!(
                        "removing the stale package build {}: {e}",
                        entry.path().display()
                    )
                })?;
            }
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `cloudproxy ARGS --help`, as text.
fn help(bin: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| format!("running {} {args:?} --help: {e}", bin.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} {args:?} --help exited with {}: {}",
            bin.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The names in clap's `Commands:` list, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The long flags of an `Options:` list, without `--help` and `--version`.
fn long_flags(help: &str) -> Vec<String> {
    let mut flags: Vec<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split([' ', ',', '=']))
        .filter(|t| t.starts_with("--") && !matches!(*t, "--help" | "--version"))
        .map(str::to_owned)
        .collect();
    flags.dedup();
    flags
}

/// The first fenced block after the heading "## `cloudproxy NAME`".
fn synopsis<'a>(doc: &'a str, name: &str) -> Option<&'a str> {
    let heading = format!("## `cloudproxy {name}`");
    let section = &doc[doc.find(&heading)? + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let open = section.find("```")?;
    let body = &section[open + 3..];
    let body = &body[body.find('\n')? + 1..];
    Some(&body[..body.find("```")?])
}

/// Whether `text` names `flag` as a whole word (`--log` is not `--log-format`).
fn names_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        !text[at + flag.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The release binary as `cargo install` and the container ship it: no
/// DWARF (the release profile strips it; `--profile profiling` keeps line
/// tables), but its symbol table, so perf and backtraces name functions.
/// Read with binutils' `readelf` (gcc's own dependency; installed when
/// missing).
pub(crate) fn shipped_binary(bin: &Path) -> Result {
    if crate::provision::find_on_path("readelf").is_none() {
        crate::provision::apt_install("reading the release binary's sections", &["binutils"])?;
    }
    let out = Command::new("readelf")
        .args(["--section-headers", "--wide"])
        .arg(bin)
        .output()
        .map_err(|e| format!("readelf (binutils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "readelf {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let size = fs::metadata(bin)
        .map_err(|e| format!("{}: {e}", bin.display()))?
        .len();
    let headers = String::from_utf8_lossy(&out.stdout);
    let sections = section_names(&headers);
    shipped_sections(&sections).map_err(|e| format!("{}: {e}", bin.display()))?;
    println!(
        "==> release binary {}: {:.1} MB, symbols and no debug info",
        bin.display(),
        size as f64 / 1e6
    );
    Ok(())
}

/// Section names from `readelf --section-headers --wide`.
fn section_names(readelf: &str) -> Vec<&str> {
    readelf
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(']')?;
            let name = rest.split_whitespace().next()?;
            name.starts_with('.').then_some(name)
        })
        .collect()
}

fn shipped_sections(sections: &[&str]) -> Result {
    // `.debug_gdb_scripts` is a loaded section naming a pretty-printer
    // script, not debug info.
    let dwarf: Vec<&str> = sections
        .iter()
        .copied()
        .filter(|s| s.starts_with(".debug_") && *s != ".debug_gdb_scripts")
        .collect();
    if !dwarf.is_empty() {
        return Err(format!(
            "expected no debug info in the release profile's binary (strip = \"debuginfo\"), found {}",
            dwarf.join(", ")
        ));
    }
    if !sections.contains(&".symtab") {
        return Err(
            "expected the symbol table kept for profilers (strip = \"debuginfo\", not \"symbols\"), found no .symtab".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shipped_binary_has_symbols_and_no_dwarf() {
        let readelf = "Section Headers:\n  [Nr] Name Type Address Off Size ES Flg Lk Inf Al\n  [ 0]                   NULL            0000 000000 000000 00      0   0  0\n  [11] .rodata           PROGBITS        005d000 05d000 0eddf8 00 AMS  0   0 4096\n  [13] .debug_gdb_scripts PROGBITS       1d1ad4 1d1ad4 000022 01 AMS  0   0  1\n  [34] .symtab           SYMTAB          0000 dab7c0 1a2b3c 18     35 9 8\n";
        let names = section_names(readelf);
        assert_eq!(names, [".rodata", ".debug_gdb_scripts", ".symtab"]);
        assert!(shipped_sections(&names).is_ok());
        let with_lines = [".rodata", ".debug_line", ".debug_info", ".symtab"];
        let e = shipped_sections(&with_lines).unwrap_err();
        assert!(e.contains(".debug_line, .debug_info"), "{e}");
        let e = shipped_sections(&[".rodata"]).unwrap_err();
        assert!(e.contains("no .symtab"), "{e}");
    }

    #[test]
    fn reads_clap_help() {
        let help = "Usage: x <COMMAND>\n\nCommands:\n  params   Parse\n  serve    Run\n  help     Print\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(subcommands(help), ["params", "serve"]);
        let help = "Options:\n  -c, --config <FILE>\n          File\n\n      --log <FILTER>\n  -h, --help\n";
        assert_eq!(long_flags(help), ["--config", "--log"]);
    }

    #[test]
    fn finds_a_synopsis_and_whole_flags() {
        let doc = "# x\n\n## `cloudproxy serve`\n\ntext\n\n```\ncloudproxy serve [--log FILTER] [--bind IP]\n```\n\n## `cloudproxy edge`\n\nno block\n";
        let s = synopsis(doc, "serve").unwrap();
        assert!(names_flag(s, "--log") && names_flag(s, "--bind"));
        assert!(!names_flag(s, "--lo") && !names_flag(s, "--log-format"));
        assert_eq!(synopsis(doc, "edge"), None);
    }
}
