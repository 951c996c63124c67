//! Whole-system benchmarks: cloudproxy's relays against haproxy, socat,
//! dante and coturn on loopback, side by side in one run (`cargo xtask
//! bench`). See `docs/performance.md`.
//!
//! ```text
//! cloudproxy-bench run [--quick] [--only SECTION,...] --cloudproxy PATH --out DIR
//! cloudproxy-bench helpers SINK_PORT ECHO_PORT HTTP_PORT     (a child process)
//! ```
//! Sections: tcp, tls, socks, udp, sessions, idle.

mod peers;
mod procs;
mod report;
mod tcp;
mod tls;
mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_proto::{AppId, Timebase};
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::tunnel::allocate;

use crate::peers::{Servers, start_servers};
use crate::report::Report;
use crate::tcp::Connector;
use crate::udp::{Batching, SendPath, Sink};

/// Options of one run.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) cloudproxy: PathBuf,
    pub(crate) out: PathBuf,
}

impl Options {
    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
    fn reps(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("helpers") if args.len() == 5 => {
            let port = |i: usize| args[i].parse::<u16>().unwrap_or(0);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            match rt.block_on(tcp::serve_helpers(port(1), port(2), port(3), port(4))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("helpers: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("merge") if args.len() >= 4 => match merge(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench: {e}");
                ExitCode::FAILURE
            }
        },
        Some("run") => match parse_run(&args[1..]) {
            Ok(options) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                match rt.block_on(run(options)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("bench: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("bench: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: cloudproxy-bench run [--quick] [--only tcp,tls,socks,udp,sessions,idle] --cloudproxy PATH --out DIR"
            );
            ExitCode::from(2)
        }
    }
}

fn parse_run(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        only: None,
        cloudproxy: PathBuf::from("target/release/cloudproxy"),
        out: PathBuf::from("target/bench"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => options.quick = true,
            "--only" => {
                options.only = Some(
                    it.next()
                        .ok_or("--only needs a list")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "--cloudproxy" => {
                options.cloudproxy = it.next().ok_or("--cloudproxy needs a path")?.into()
            }
            "--out" => options.out = it.next().ok_or("--out needs a directory")?.into(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

/// `merge FULL.json PARTIAL.json... OUT_DIR`: one report (table, JSON,
/// chart) from a full run and later partial re-runs (`--only`).
fn merge(args: &[String]) -> Result<(), String> {
    let (out, inputs) = args.split_last().ok_or("nothing to merge")?;
    let mut merged: Option<Report> = None;
    for path in inputs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        match merged.as_mut() {
            None => merged = Some(report),
            Some(m) => m.merge(report),
        }
    }
    let report = merged.ok_or("nothing to merge")?;
    write_outputs(&report, std::path::Path::new(out))
}

fn write_outputs(report: &Report, out: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let table = report.markdown();
    println!("{table}");
    std::fs::write(out.join("report.md"), &table).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(out.join("runs-latest.json"), &json).map_err(|e| e.to_string())?;
    report.chart(
        &out.join("chart.svg"),
        &[
            "TCP 1 stream, iperf3",
            "TCP 8 streams, iperf3",
            "TCP 1 stream, one hop",
            "SOCKS5 curl download",
            "UDP loss-free rate",
            "UDP loss-free rate, single datagrams",
            "new TCP sessions",
        ],
    )
}

pub(crate) const APP: &str = "bench";
pub(crate) const SECRET_HEX: &str = "62656e63682d7365637265742d6b6579";
pub(crate) const TICKET_KEY_HEX: &str =
    "62656e63682d7469636b65742d6b65792d3332206279746573206c6f6e672121";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect()
}

fn client_config() -> ClientConfig {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ClientConfig::new(
        AppId::new(APP).expect("valid app id"),
        hex(SECRET_HEX),
        Timebase::new(Instant::now(), unix),
    )
}

async fn run(options: Options) -> Result<(), String> {
    std::fs::create_dir_all(&options.out).map_err(|e| e.to_string())?;
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            procs::stop_all_registered();
            eprintln!("bench: interrupted; every server stopped");
            std::process::exit(130);
        }
    });
    let started = Instant::now();
    let mut report = Report {
        machine: machine_line(),
        mode: if options.quick { "--quick" } else { "full" }.into(),
        ..Report::default()
    };
    eprintln!("bench: {}", report.machine);
    let servers = start_servers(&options)?;
    let config = Arc::new(client_config());
    let (_, allocation) = allocate(&config, &[servers.cp_allocation], &DialPolicy::default())
        .await
        .map_err(|e| format!("allocating from our node: {e}"))?;
    let allocation = Arc::new(allocation);

    let sections: [(&str, Section); 6] = [
        ("tcp", Section::Tcp),
        ("tls", Section::Tls),
        ("socks", Section::Socks),
        ("udp", Section::Udp),
        ("idle", Section::Idle),
        ("sessions", Section::Sessions),
    ];
    let mut servers = servers;
    for (name, section) in sections {
        if !options.wants(name) {
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: == {name} ==");
        let result = match section {
            Section::Tcp => {
                tcp_section(&options, &servers, &config, &allocation, &mut report).await
            }
            Section::Tls => {
                tls_section(&options, &servers, &config, &allocation, &mut report).await
            }
            Section::Socks => socks_section(&options, &servers, &mut report),
            Section::Udp => {
                udp_section(&options, &mut servers, &config, &allocation, &mut report).await
            }
            Section::Sessions => {
                sessions_section(&options, &servers, &config, &allocation, &mut report).await
            }
            Section::Idle => idle_section(&options, &mut servers, &config, &mut report).await,
        };
        if let Err(e) = result {
            report.skip(format!("section {name} stopped early: {e}"));
        }
        eprintln!("bench: {name} took {:.0?}", t.elapsed());
    }
    drop(servers);

    let out = &options.out;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::fs::write(out.join(format!("runs-{stamp}.json")), &json).map_err(|e| e.to_string())?;
    write_outputs(&report, out)?;
    eprintln!(
        "bench: done in {:.0?}; wrote {}/report.md, runs-latest.json, chart.svg",
        started.elapsed(),
        out.display()
    );
    Ok(())
}

enum Section {
    Tcp,
    Tls,
    Socks,
    Udp,
    Sessions,
    Idle,
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, Linux {}; load average at start {}.",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The TLS relay, one stream and eight: our node's TLS port (stream bind to
/// the sink) against haproxy terminating TLS in front of the same sink, the
/// same certificate and the same pinned rustls client. Each run also
/// records the proxy process's CPU time per gigabyte relayed: on a machine
/// this small, client, proxy and sink share two cores and the throughput
/// swings with the scheduler, while the CPU a proxy spends per byte is its
/// own. The contenders' order alternates between runs, so neither always
/// runs on the warmer machine.
async fn tls_section(
    options: &Options,
    s: &Servers,
    config: &Arc<ClientConfig>,
    allocation: &Arc<Allocation>,
    report: &mut Report,
) -> Result<(), String> {
    let tls = s.tls.as_ref().map_err(|e| format!("no TLS rows: {e}"))?;
    let client = tls::client(&tls.pin)?;
    let secs = if options.quick { 2.0 } else { 5.0 };
    let contenders = [
        (
            "haproxy",
            tls.haproxy_pid,
            tls::TlsTarget::Terminating(tls.haproxy_sink),
            "haproxy 2.6 mode tcp, bind ssl crt (ECDSA P-256, ALPN cloudproxy/1), nbthread 2 → sink: one hop",
        ),
        (
            "cloudproxy tls",
            tls.cloudproxy_pid,
            tls::TlsTarget::Cloudproxy {
                at: tls.cloudproxy,
                config,
                allocation,
                to: s.sink,
            },
            "rustls client → our TLS port (ticket bind, stream mode) → sink: one hop",
        ),
    ];
    for streams in [1usize, 8] {
        let figure = if streams == 1 {
            "TLS 1 stream, one hop".to_owned()
        } else {
            format!("TLS {streams} streams, one hop")
        };
        let cpu_figure = format!("{figure}, proxy CPU per GB");
        for rep in 0..options.reps() {
            let mut order: Vec<_> = contenders.iter().collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for (name, pid, target, note) in order {
                let before = procs::cpu_time(*pid);
                match tls::blast(target, &client, streams, secs).await {
                    Ok(blasted) => {
                        report.add(&figure, name, "Gbit/s", true, blasted.gbit_per_s(), note);
                        match (before, procs::cpu_time(*pid)) {
                            (Ok(before), Ok(after)) => {
                                let ms = after.saturating_sub(before).as_secs_f64() * 1e3;
                                let per_gb = ms / (blasted.bytes as f64 / 1e9);
                                report.add(&cpu_figure, name, "ms", false, per_gb, note);
                            }
                            (Err(e), _) | (_, Err(e)) => {
                                report.skip(format!("{cpu_figure} via {name}: {e}"));
                            }
                        }
                    }
                    Err(e) => report.skip(format!("{figure} via {name}: {e}")),
                }
            }
        }
    }
    Ok(())
}

async fn tcp_section(
    options: &Options,
    s: &Servers,
    config: &Arc<ClientConfig>,
    allocation: &Arc<Allocation>,
    report: &mut Report,
) -> Result<(), String> {
    let secs = if options.quick { 1 } else { 4 };
    let iperf = [
        ("direct", s.iperf, "iperf3 client → iperf3 server, no relay"),
        (
            "haproxy",
            s.haproxy_iperf,
            "haproxy 2.6 mode tcp, option splice-auto, nbthread 2: one hop",
        ),
        (
            "socat",
            s.socat_iperf,
            "socat -b131072 TCP-LISTEN,fork → TCP: one hop",
        ),
        (
            "cloudproxy forward+relay",
            s.cp_forward_iperf,
            "`cloudproxy forward` (local listener, its own pump) → native TCP relay (pump) → server: two hops, two processes",
        ),
    ];
    for streams in [1usize, 8] {
        let figure = if streams == 1 {
            "TCP 1 stream, iperf3".to_owned()
        } else {
            format!("TCP {streams} streams, iperf3")
        };
        for _ in 0..options.reps() {
            for (name, port, note) in &iperf {
                let run = || {
                    procs::run_bounded(
                        std::process::Command::new("iperf3").args([
                            "-c",
                            "127.0.0.1",
                            "-p",
                            &port.to_string(),
                            "-t",
                            &secs.to_string(),
                            "-P",
                            &streams.to_string(),
                            "-J",
                        ]),
                        Duration::from_secs(secs + 20),
                    )
                    .and_then(|o| iperf_gbps(&o))
                };
                // The one iperf3 server takes one test at a time and may
                // still be closing the previous one ("server is busy"):
                // one more try after a pause, never more.
                let result = run().or_else(|e| {
                    eprintln!("bench: iperf3 via {name}: {e}; trying once more");
                    std::thread::sleep(Duration::from_millis(500));
                    run()
                });
                match result {
                    Ok(g) => report.add(&figure, name, "Gbit/s", true, g, note),
                    Err(e) => report.skip(format!("{figure} via {name}: {e}")),
                }
            }
        }
    }
    // One hop each, same Rust load generator: our relay alone.
    let hop = [
        (
            "direct",
            Connector::Plain(s.sink),
            "Rust blaster → sink, no relay",
        ),
        (
            "haproxy",
            Connector::Plain(s.haproxy_sink),
            "haproxy splice-auto: one hop",
        ),
        (
            "socat",
            Connector::Plain(s.socat_sink),
            "socat -b131072: one hop",
        ),
        (
            "cloudproxy relay",
            Connector::Native {
                config: Arc::clone(config),
                allocation: Arc::clone(allocation),
                to: s.sink,
            },
            "native client (ticket bind) → our TCP relay → sink: one hop, our pump only",
        ),
        (
            "cloudproxy socks5",
            Connector::Socks5 {
                proxy: s.cp_socks,
                to: s.sink,
            },
            "SOCKS5 CONNECT (no auth) → our SOCKS5 listener → sink: one hop",
        ),
    ];
    for streams in [1usize, 8] {
        let figure = if streams == 1 {
            "TCP 1 stream, one hop".to_owned()
        } else {
            format!("TCP {streams} streams, one hop")
        };
        for _ in 0..options.reps() {
            for (name, connector, note) in &hop {
                match tcp::blast(connector, streams, secs as f64).await {
                    Ok(g) => report.add(&figure, name, "Gbit/s", true, g, note),
                    Err(e) => report.skip(format!("{figure} via {name}: {e}")),
                }
            }
        }
    }
    Ok(())
}

fn iperf_gbps(json: &str) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if let Some(error) = v["error"].as_str() {
        return Err(format!("iperf3 failed: {error}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| "iperf3 JSON without end.sum_received".into())
}

fn socks_section(options: &Options, s: &Servers, report: &mut Report) -> Result<(), String> {
    let size: u64 = if options.quick { 256 << 20 } else { 1 << 30 };
    let url = format!("http://127.0.0.1:{}/{size}", s.http.port());
    let figure = "SOCKS5 curl download";
    let contenders: [(&str, Option<SocketAddr>, &str); 3] = [
        (
            "direct",
            None,
            "curl → HTTP server (ours, zero-filled body), no proxy",
        ),
        (
            "danted",
            Some(s.danted),
            "dante 1.4 sockd, socksmethod none",
        ),
        (
            "cloudproxy socks5",
            Some(s.cp_socks),
            "our SOCKS5 listener, no_auth_app (same handshake cost as danted)",
        ),
    ];
    for _ in 0..options.reps() {
        for (name, proxy, note) in &contenders {
            let mut cmd = std::process::Command::new("curl");
            cmd.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{speed_download} %{size_download}",
            ]);
            if let Some(p) = proxy {
                cmd.args(["--socks5", &p.to_string()]);
            }
            cmd.arg(&url);
            let out = procs::run_bounded(&mut cmd, Duration::from_secs(60));
            let parsed = out.and_then(|o| {
                let mut it = o.split_whitespace();
                let speed: f64 = it.next().and_then(|v| v.parse().ok()).ok_or("no speed")?;
                let got: u64 = it.next().and_then(|v| v.parse().ok()).ok_or("no size")?;
                if got != size {
                    return Err(format!("downloaded {got} of {size} bytes"));
                }
                Ok(speed * 8.0 / 1e9)
            });
            match parsed {
                Ok(g) => report.add(figure, name, "Gbit/s", true, g, note),
                Err(e) => report.skip(format!("{figure} via {name}: {e}")),
            }
        }
    }
    Ok(())
}

/// The contenders of the UDP figures and what each path includes.
const UDP_CONTENDERS: [(&str, &str); 6] = [
    ("direct", "sender → sink, no relay"),
    (
        "socat",
        "socat UDP4-LISTEN → UDP4 (one peer, restarted per repetition)",
    ),
    (
        "coturn",
        "coturn 4.6 --no-auth: TURN Allocate + ChannelBind, ChannelData (4-byte header)",
    ),
    (
        "cloudproxy udp",
        "our UDP relay: 16-byte header, binding's connected upstream socket",
    ),
    (
        "cloudproxy udp-over-tcp",
        "datagram frames on a TCP connection to our TCP relay, sent as UDP to the sink",
    ),
    (
        "cloudproxy udp-over-tls",
        "the same frames on a TLS connection (pinned rustls client) to our TLS port, sent as UDP to the sink",
    ),
];

/// A fresh way to the UDP sink, made just before it is measured (an idle
/// binding would time out while the other contenders run).
async fn udp_path(
    name: &str,
    s: &mut Servers,
    options: &Options,
    sink: SocketAddr,
    config: &ClientConfig,
    allocation: &Allocation,
) -> Result<SendPath, String> {
    match name {
        "direct" => SendPath::udp(sink, Vec::new()).map_err(|e| e.to_string()),
        "socat" => {
            let addr = s.restart_socat_udp(options, sink)?;
            SendPath::udp(addr, Vec::new()).map_err(|e| e.to_string())
        }
        "coturn" => match s.coturn {
            Some(addr) => udp::turn_path(addr, sink).map_err(|e| e.to_string()),
            None => Err("coturn did not start (see target/bench/coturn.log)".into()),
        },
        "cloudproxy udp" => udp::cloudproxy_udp_path(config, allocation, sink)
            .await
            .map_err(|e| e.to_string()),
        "cloudproxy udp-over-tls" => {
            let tls = s.tls.as_ref().map_err(|e| format!("no TLS port: {e}"))?;
            let client = tls::client(&tls.pin)?;
            udp::cloudproxy_tls_path(config, allocation, sink, tls.cloudproxy, &client)
                .await
                .map_err(|e| e.to_string())
        }
        _ => udp::cloudproxy_tcp_path(config, allocation, sink)
            .await
            .map_err(|e| e.to_string()),
    }
}

async fn udp_section(
    options: &Options,
    s: &mut Servers,
    config: &Arc<ClientConfig>,
    allocation: &Arc<Allocation>,
    report: &mut Report,
) -> Result<(), String> {
    let sink = Arc::new(Sink::start().map_err(|e| e.to_string())?);
    let trial_secs: f64 = if options.quick { 0.4 } else { 1.0 };
    let mut run_id = 1u32;
    for _ in 0..options.reps() {
        for (name, note) in UDP_CONTENDERS {
            let path = udp_path(name, s, options, sink.addr, config, allocation).await;
            let mut path = match path {
                Ok(p) => p,
                Err(e) => {
                    report.skip(format!("UDP via {name}: {e}"));
                    continue;
                }
            };
            // Latency at 50 kpps.
            run_id += 1;
            let (back, r) = match trial(
                path,
                &sink,
                run_id,
                50_000.0,
                trial_secs.max(1.0),
                Batching::Gso,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    report.skip(format!("UDP via {name}: {e}"));
                    continue;
                }
            };
            path = back;
            let mut lats = r.1.latencies;
            report.add(
                "UDP one-way latency p50 @50kpps",
                name,
                "µs",
                false,
                udp::percentile_us(&mut lats, 50.0),
                note,
            );
            report.add(
                "UDP one-way latency p99 @50kpps",
                name,
                "µs",
                false,
                udp::percentile_us(&mut lats, 99.0),
                note,
            );
            report.add("UDP loss @50kpps", name, "%", false, r.0 * 100.0, note);
            for (figure, batching) in [
                ("UDP loss-free rate", Batching::Gso),
                ("UDP loss-free rate, single datagrams", Batching::Separate),
            ] {
                if batching == Batching::Separate && path.is_stream() {
                    continue; // frames on one TCP stream either way
                }
                let (back, good) =
                    loss_free_rate(path, &sink, &mut run_id, trial_secs, options, batching).await;
                match good {
                    Ok(good) => report.add(figure, name, "kpps", true, good / 1000.0, note),
                    Err(e) => report.skip(format!("{figure} via {name}: {e}")),
                }
                match back {
                    Some(p) => path = p,
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// The highest rate `path` carries with ≤ 0.1 % loss: double from
/// 25 kpps, then bisect. Returns the path (unless a trial failed) and the
/// rate in datagrams/s.
async fn loss_free_rate(
    mut path: SendPath,
    sink: &Arc<Sink>,
    run_id: &mut u32,
    trial_secs: f64,
    options: &Options,
    batching: Batching,
) -> (Option<SendPath>, Result<f64, String>) {
    let (mut good, mut bad) = (0.0f64, f64::NAN);
    let mut rate = 25_000.0;
    for _ in 0..(if options.quick { 9 } else { 12 }) {
        *run_id += 1;
        let (back, (loss, _, achieved)) =
            match trial(path, sink, *run_id, rate, trial_secs, batching).await {
                Ok(r) => r,
                Err(e) => return (None, Err(e)),
            };
        path = back;
        if loss <= 0.001 {
            good = good.max(achieved);
        } else {
            bad = if bad.is_nan() { rate } else { bad.min(rate) };
        }
        rate = if bad.is_nan() {
            if achieved < rate * 0.9 {
                break; // the sender itself is the limit
            }
            rate * 2.0
        } else {
            if bad - good < bad * 0.08 {
                break;
            }
            f64::midpoint(good, bad)
        };
        if rate > 3_000_000.0 {
            break;
        }
    }
    (Some(path), Ok(good))
}

/// One paced run through `path`: (loss fraction, what arrived, rate sent).
async fn trial(
    mut path: SendPath,
    sink: &Arc<Sink>,
    run: u32,
    rate: f64,
    secs: f64,
    batching: Batching,
) -> Result<(SendPath, (f64, udp::RunResult, f64)), String> {
    sink.begin(run);
    let sink2 = Arc::clone(sink);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let sent = path.send_run(run, rate, secs, batching);
        let elapsed = started.elapsed().as_secs_f64();
        let result = sink2.finish(run);
        match sent {
            Ok(sent) => {
                let loss = if sent == 0 {
                    1.0
                } else {
                    1.0 - (result.received.min(sent) as f64 / sent as f64)
                };
                Ok((path, (loss, result, sent as f64 / elapsed)))
            }
            Err(e) => Err(format!("sending: {e}")),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn sessions_section(
    options: &Options,
    s: &Servers,
    config: &Arc<ClientConfig>,
    allocation: &Arc<Allocation>,
    report: &mut Report,
) -> Result<(), String> {
    let secs = if options.quick { 1.0 } else { 3.0 };
    let contenders = [
        (
            "direct",
            Connector::Plain(s.echo_once),
            "connect + 1 byte echoed, no relay",
        ),
        (
            "haproxy",
            Connector::Plain(s.haproxy_echo),
            "connect + 1 byte echoed through haproxy",
        ),
        (
            "cloudproxy relay",
            Connector::Native {
                config: Arc::clone(config),
                allocation: Arc::clone(allocation),
                to: s.echo_once,
            },
            "connect + ticket bind (HMAC check, allowlist, upstream connect) with the byte pipelined behind the Bind + 1 byte echoed; one allocation reused",
        ),
        (
            "cloudproxy socks5",
            Connector::Socks5 {
                proxy: s.cp_socks,
                to: s.echo_once,
            },
            "connect + SOCKS5 greeting + CONNECT + 1 byte echoed",
        ),
        (
            "danted",
            Connector::Socks5 {
                proxy: s.danted,
                to: s.echo_once,
            },
            "connect + SOCKS5 greeting + CONNECT + 1 byte echoed",
        ),
    ];
    for _ in 0..options.reps() {
        for (name, connector, note) in &contenders {
            match tcp::session_rate(connector, 32, secs).await {
                Ok(r) => report.add("new TCP sessions", name, "sessions/s", true, r, note),
                Err(e) => report.skip(format!("new sessions via {name}: {e}")),
            }
            // Let TIME_WAIT and the proxies' teardown settle between contenders.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}

async fn idle_section(
    options: &Options,
    s: &mut Servers,
    config: &Arc<ClientConfig>,
    report: &mut Report,
) -> Result<(), String> {
    let n = if options.quick { 2_000 } else { 9_000 };
    let figure = format!("idle TCP session memory ({n} sessions)");
    let ufig = format!("idle UDP binding memory ({n} bindings)");
    let note = "RSS growth of a freshly started server process / sessions (user-space memory; kernel socket buffers not included)";
    for _ in 0..options.reps() {
        for name in ["haproxy", "cloudproxy relay", "cloudproxy udp"] {
            // A fresh process each time: memory freed by an earlier batch
            // would be reused and read as free.
            let (pid, connector, allocation) = if name == "haproxy" {
                let (pid, addr) = s.fresh_haproxy()?;
                (pid, Connector::Plain(addr), None)
            } else {
                let (pid, addr) = s.fresh_cloudproxy(options)?;
                let (_, allocation) = allocate(config, &[addr], &DialPolicy::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let allocation = Arc::new(allocation);
                let c = Connector::Native {
                    config: Arc::clone(config),
                    allocation: Arc::clone(&allocation),
                    to: s.echo,
                };
                (pid, c, Some(allocation))
            };
            let result = if name == "cloudproxy udp" {
                let allocation = allocation.ok_or("no allocation")?;
                idle_udp(n, pid, config, &allocation, s.udp_echo).await
            } else {
                // Warm up (threads, buffers, first-use allocations).
                if let Ok(w) = tcp::open_idle(&connector, 50).await {
                    tcp::close_reset(w);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                let before = procs::rss_kib(pid)?;
                let streams = tcp::open_idle(&connector, n).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let after = procs::rss_kib(pid)?;
                streams.map(|st| {
                    tcp::close_reset(st);
                    after.saturating_sub(before) as f64 * 1024.0 / n as f64
                })
            };
            s.stop(pid);
            match result {
                Ok(per) if name == "cloudproxy udp" => {
                    report.add(&ufig, name, "bytes/binding", false, per, note)
                }
                Ok(per) => report.add(&figure, name, "bytes/session", false, per, note),
                Err(e) => report.skip(format!("idle memory via {name}: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// RSS growth per idle UDP binding on node `pid`.
async fn idle_udp(
    n: usize,
    pid: u32,
    config: &Arc<ClientConfig>,
    allocation: &Arc<Allocation>,
    to: SocketAddr,
) -> Result<f64, String> {
    // Warm up.
    for i in 0..20 {
        let _ = udp::cloudproxy_bind_udp(config, allocation, i, to).await;
    }
    let before = procs::rss_kib(pid)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (config, allocation, sem) = (Arc::clone(config), Arc::clone(allocation), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            udp::cloudproxy_bind_udp(&config, &allocation, i, to).await
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut last_error = String::new();
    for t in tasks {
        match t
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(b) => held.push(b),
            Err(e) => last_error = e,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procs::rss_kib(pid)?;
    if held.len() * 10 < n * 9 {
        return Err(format!(
            "only {} of {n} binds succeeded, last error: {last_error}",
            held.len()
        ));
    }
    Ok(after.saturating_sub(before) as f64 * 1024.0 / held.len() as f64)
}
