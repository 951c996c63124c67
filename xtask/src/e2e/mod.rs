//! `cargo xtask e2e`: the guide's scenario end to end, behind a real firewall.
//!
//! Builds the release `cloudproxy` binary, creates two network namespaces
//! (`corp` for the clients, `cloud` for two proxy nodes and the reference
//! media edge) joined by a veth pair on 10.231.0.0/24, puts nftables rules in
//! `corp` that mirror the guide's whitelist (drop, not reject), and runs the
//! scenarios of docs/e2e.md with `cloudproxy demo --json` and
//! `cloudproxy probe --json` inside `corp`. Everything it creates (namespaces,
//! `/etc/netns/<ns>/`, processes) is removed by a guard when the run ends,
//! also after a failure or a panic; leftovers of an interrupted run are
//! removed at the start of the next one.
//!
//! The parts: [`bed`] (namespaces, addresses, name resolution),
//! [`firewall`] (declarative rule sets), [`processes`] (bounded commands,
//! daemons, the proxy nodes and the edge), [`client`] (demo and probe and
//! their JSON), [`checks`] (expectations and bounds), [`scenarios`] (what
//! each scenario does). A scenario is one entry of [`SCENARIOS`] plus its
//! function in `scenarios.rs`.

mod bed;
mod checks;
mod client;
mod firewall;
mod middleboxes;
mod processes;
mod scenarios;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bed::Network;
use client::Client;
use firewall::Firewall;
use processes::Peers;

use crate::{Result, cargo, step, target_dir};

const USAGE: &str = "\
usage: cargo xtask e2e [--allow-skip] [--only N,N,...]

  --allow-skip   exit 0 (after printing SKIPPED) when namespaces cannot be created
  --only         run only these scenarios (numbers as in docs/e2e.md)
";

/// A scenario's timings, or why it failed.
type Outcome = std::result::Result<Vec<String>, String>;

/// One scenario: what the bed looks like when it starts, and the function
/// that runs it and checks what it must.
struct Scenario {
    number: u32,
    title: &'static str,
    /// `corp`'s firewall when the scenario starts (it may change it).
    firewall: fn() -> Firewall,
    /// Restart both nodes first, so their counters count only this
    /// scenario.
    fresh_nodes: bool,
    run: fn(&mut Bed) -> Outcome,
}

/// The scenarios of docs/e2e.md, in the order they run.
///
/// Numbers follow docs/e2e.md and issue 16.
const SCENARIOS: [Scenario; 14] = [
    Scenario {
        number: 1,
        title: "proxy off: join fails within the bound",
        firewall: Firewall::whitelist,
        fresh_nodes: false,
        run: scenarios::proxy_off,
    },
    Scenario {
        number: 2,
        title: "enable_proxy: call over the UDP relay",
        firewall: Firewall::whitelist,
        fresh_nodes: false,
        run: scenarios::udp_relay,
    },
    Scenario {
        number: 3,
        title: "UDP blocked: media falls back to TCP",
        firewall: Firewall::udp_blocked,
        fresh_nodes: false,
        run: scenarios::tcp_fallback,
    },
    Scenario {
        number: 4,
        title: "only allocation port 9700 open, port 0",
        firewall: Firewall::only_9700,
        fresh_nodes: false,
        run: scenarios::only_9700,
    },
    Scenario {
        number: 5,
        title: "type-2 list, first address black-holed",
        firewall: Firewall::black_hole_b,
        fresh_nodes: false,
        run: scenarios::first_address_black_holed,
    },
    Scenario {
        number: 6,
        title: "node in use killed mid-call: failover",
        firewall: Firewall::whitelist,
        fresh_nodes: true,
        run: scenarios::node_killed_mid_call,
    },
    Scenario {
        number: 7,
        title: "type-1 domain from corp's hosts file",
        firewall: Firewall::whitelist,
        fresh_nodes: false,
        run: scenarios::domain_from_hosts_file,
    },
    Scenario {
        number: 8,
        title: "probe reports exactly the open ports",
        firewall: Firewall::whitelist,
        fresh_nodes: false,
        run: scenarios::probe_reports_open_ports,
    },
    Scenario {
        number: 9,
        title: "only TCP 443 open: call over TLS",
        firewall: Firewall::only_tls,
        fresh_nodes: false,
        run: scenarios::only_tls_443,
    },
    Scenario {
        number: 10,
        title: "443 only through a DPI gateway (haproxy)",
        firewall: Firewall::only_gateway,
        fresh_nodes: false,
        run: scenarios::dpi_gateway,
    },
    Scenario {
        number: 11,
        title: "only squid 3128 with Basic auth, no DNS",
        firewall: Firewall::only_squid,
        fresh_nodes: false,
        run: scenarios::http_proxy_basic_auth,
    },
    Scenario {
        number: 12,
        title: "node in use black-holed mid-call: failover",
        firewall: Firewall::whitelist,
        fresh_nodes: true,
        run: scenarios::node_black_holed_mid_call,
    },
    Scenario {
        number: 13,
        title: "TLS intercepted (ssl-bump): fails fast",
        firewall: Firewall::only_bumping_squid,
        fresh_nodes: false,
        run: scenarios::tls_intercepted,
    },
    Scenario {
        number: 14,
        title: "A1 NTLM: squid 3130 demands NTLMv2",
        firewall: Firewall::only_ntlm_squid,
        fresh_nodes: false,
        run: scenarios::http_proxy_ntlm,
    },
];

/// The scenarios that run Debian middleboxes (haproxy, squid).
const WITH_MIDDLEBOXES: [u32; 4] = [10, 11, 13, 14];

pub(crate) fn run(args: &[String]) -> Result {
    let mut allow_skip = false;
    let mut only: Option<Vec<u32>> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--allow-skip" => allow_skip = true,
            "--only" => {
                let list = it.next().ok_or("--only needs a list like 2,3")?;
                let parsed: std::result::Result<Vec<u32>, _> =
                    list.split(',').map(|n| n.trim().parse::<u32>()).collect();
                only = Some(parsed.map_err(|_| format!("--only: bad list {list:?}\n{USAGE}"))?);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("e2e: unknown argument {other:?}\n{USAGE}")),
        }
    }

    if let Err(reason) = bed::preflight() {
        println!("SKIPPED: {reason}");
        return if allow_skip {
            Ok(())
        } else {
            Err("e2e was skipped (pass --allow-skip to accept a skip)".into())
        };
    }

    if WITH_MIDDLEBOXES
        .iter()
        .any(|n| only.as_ref().is_none_or(|o| o.contains(n)))
    {
        middleboxes::provision()?;
    }

    let started = Instant::now();
    step(
        "build release cloudproxy",
        Command::new(cargo()).args(["build", "--release", "--locked", "-p", "cloudproxy-cli"]),
    )?;
    let bin = target_dir().join("release/cloudproxy");
    if !bin.is_file() {
        return Err(format!("the build did not produce {}", bin.display()));
    }
    client::require_demo(&bin)?;
    crate::checks::shipped_binary(&bin)?;

    bed::remove_leftovers();
    let mut bed = Bed::create(bin)?;
    println!("\n==> test bed up in {:.1?}", started.elapsed());
    print!("{}", bed.net.describe());

    let mut results: Vec<(&Scenario, Outcome, Duration)> = Vec::new();
    for scenario in &SCENARIOS {
        let number = scenario.number;
        if only.as_ref().is_some_and(|o| !o.contains(&number)) {
            continue;
        }
        println!("\n==> scenario {number}: {}", scenario.title);
        let t = Instant::now();
        let outcome = bed
            .prepare(scenario)
            .and_then(|()| (scenario.run)(&mut bed));
        match &outcome {
            Ok(timings) => println!("==> scenario {number}: PASS ({})", timings.join(", ")),
            Err(e) => println!("==> scenario {number}: FAIL\n{e}"),
        }
        results.push((scenario, outcome, t.elapsed()));
    }

    println!("\ne2e summary (logs in {}):", bed.dir.display());
    let failed = report(&results);
    drop(bed);
    println!("e2e: finished in {:.1?}", started.elapsed());
    if failed > 0 {
        return Err(format!("{failed} e2e scenario(s) failed"));
    }
    Ok(())
}

/// Prints the timing table; returns how many scenarios failed.
fn report(results: &[(&Scenario, Outcome, Duration)]) -> usize {
    let mut failed = 0;
    for (scenario, outcome, took) in results {
        let (number, title) = (scenario.number, scenario.title);
        match outcome {
            Ok(timings) => println!(
                " {number:>2}. PASS  {title:<42} {:>5.1} s  {}",
                took.as_secs_f64(),
                timings.join(", ")
            ),
            Err(_) => {
                failed += 1;
                println!(
                    " {number:>2}. FAIL  {title:<42} {:>5.1} s",
                    took.as_secs_f64()
                );
            }
        }
    }
    failed
}

/// Everything one run creates; dropping it stops the peers and removes the
/// network.
struct Bed {
    peers: Peers,
    net: Network,
    client: Client,
    /// Configs, rule sets and logs: `target/e2e/run-<pid>/`.
    dir: PathBuf,
    /// Scenario 2's connect time, to show what the fallback costs.
    baseline_connect_ms: Option<f64>,
}

impl Bed {
    fn create(bin: PathBuf) -> Result<Self> {
        let pid = std::process::id();
        // Logs of earlier runs go; those of a concurrent run stay.
        let root = target_dir().join("e2e");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name
                    .strip_prefix("run-")
                    .is_some_and(|p| !bed::run_alive(p))
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("run-{pid}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let net = Network::create(&dir)?;
        // Should the peers fail to start, `net` is dropped and removed here.
        let peers = Peers::start(bin.clone(), &net.cloud, &dir)?;
        let bed = Self {
            client: Client {
                bin,
                corp: net.corp.clone(),
                secret: peers.secret.clone(),
            },
            peers,
            net,
            dir,
            baseline_connect_ms: None,
        };
        bed.net.self_check()?;
        Ok(bed)
    }

    /// The bed as `scenario` expects it at its start.
    fn prepare(&mut self, scenario: &Scenario) -> Result {
        // A scenario that failed half-way may have left a node down.
        self.peers.ensure_nodes()?;
        self.net.set_firewall(&(scenario.firewall)())?;
        if scenario.fresh_nodes {
            self.peers.restart_nodes()?;
        }
        Ok(())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The processes first, then the namespaces they ran in.
        self.peers.stop_all();
        self.net.remove();
        println!("==> test bed removed (namespaces, /etc/netns entries, processes)");
    }
}
