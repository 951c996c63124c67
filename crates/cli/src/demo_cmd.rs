//! `cloudproxy demo`: a call through the cloud proxy, measured. With no
//! flags it starts a reference media edge and a proxy node in this process
//! on loopback; with `--proxy` and `--edge` it uses running ones.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cloudproxy_edge::{Edge, EdgeConfig};
use cloudproxy_engine::{Credential, ProxyMode, ProxyServer};
use cloudproxy_server::ProxyNode;
use cloudproxy_server::config::ServerConfig;

use crate::call::{CallSpec, Summary, run};
use crate::logging::LogArgs;
use crate::runtime::block_on;
use crate::serve_cmd::random_hex;
use crate::server_arg::{parse_edge, parse_server};

/// The proxy mode, as `set_cloud_proxy` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// No proxy: straight to the media network.
    Off,
    /// Direct first, the proxy when the direct path fails.
    Auto,
    /// Always the proxy; media over UDP, falling back to TCP.
    On,
    /// Always the proxy; media over UDP only.
    ForceUdp,
    /// Always the proxy; everything over TCP.
    ForceTcp,
    /// Always the proxy; everything over TLS to its TLS port (directly or
    /// through the HTTP proxy).
    ForceTls,
}

impl From<Mode> for ProxyMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Off => Self::Off,
            Mode::Auto => Self::Auto,
            Mode::On => Self::On,
            Mode::ForceUdp => Self::ForceUdp,
            Mode::ForceTcp => Self::ForceTcp,
            Mode::ForceTls => Self::ForceTls,
        }
    }
}

/// Arguments of `cloudproxy demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Use this proxy instead of an embedded one: `HOST[:PORT]` or
    /// `IP,IP,...[:PORT]` (no port: the default allocation ports). Set as
    /// `rtc.proxy_server` through `set_parameters`, as an app would.
    #[arg(long, value_name = "SERVER", value_parser = parse_server, requires_all = ["edge", "app_id", "credential"])]
    proxy: Option<ProxyServer>,
    /// The media network (a `cloudproxy edge`) as `TCP_ADDR,UDP_ADDR`.
    #[arg(long, value_name = "TCP,UDP", value_parser = parse_edge)]
    edge: Option<(SocketAddr, SocketAddr)>,
    /// The app id (external proxy).
    #[arg(long, value_name = "ID")]
    app_id: Option<String>,
    /// The app secret in hex (external proxy).
    #[arg(long, value_name = "HEX")]
    credential: Option<Credential>,
    /// A `set_parameters` string applied to both engines, e.g.
    /// '{"rtc.enable_proxy":true}' (repeat for several; default: exactly that).
    #[arg(long, value_name = "JSON")]
    params: Vec<String>,
    /// Set the proxy mode with the typed API after the parameters.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// How long to exchange messages and media.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    seconds: f64,
    /// Print the summary as JSON (and no progress line).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    logging: LogArgs,
}

pub(crate) fn run_cmd(args: Args) -> ExitCode {
    if let Err(e) = args
        .logging
        .init("error", cloudproxy_server::LogBudget::new())
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        eprintln!(
            "error: --seconds: expected a duration from 0 to 3600 seconds, found {}",
            args.seconds
        );
        return ExitCode::from(2);
    }
    if args.edge.is_some() != args.proxy.is_some() && !matches!(args.mode, Some(Mode::Off)) {
        eprintln!(
            "error: --proxy and --edge go together (or use --edge with --mode off for a direct call)"
        );
        return ExitCode::from(2);
    }
    block_on(async move {
        let summary = match (&args.edge, &args.app_id, &args.credential) {
            (Some((tcp, udp)), Some(app_id), Some(credential)) => {
                let mut params = if args.params.is_empty() {
                    vec![r#"{"rtc.enable_proxy":true}"#.to_owned()]
                } else {
                    args.params.clone()
                };
                if let Some(server) = &args.proxy {
                    params.push(format!("{{\"rtc.proxy_server\":{}}}", server.to_value()));
                }
                let spec = CallSpec {
                    app_id: app_id.clone(),
                    credential: credential.clone(),
                    edge_tcp: *tcp,
                    edge_udp: *udp,
                    params,
                    mode: args.mode.map(Into::into),
                    duration: Duration::from_secs_f64(args.seconds),
                    channel: "demo".into(),
                    progress: !args.json,
                };
                if !args.json {
                    println!("cloudproxy demo: two engines, media network {tcp} / {udp}");
                }
                run(&spec).await
            }
            (None, None, None) => embedded(&args).await,
            _ => {
                eprintln!("error: an external setup needs --edge, --app-id and --credential");
                return ExitCode::from(2);
            }
        };
        report(&summary, args.json);
        if summary.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// A reference edge and a proxy node in this process, on loopback.
async fn embedded(args: &Args) -> Summary {
    let failed = |e: String| Summary {
        error: Some(e),
        ..Summary::default()
    };
    let edge = match Edge::bind(EdgeConfig::loopback()).await {
        Ok(edge) => edge.spawn(),
        Err(e) => return failed(format!("starting the media edge: {e}")),
    };
    let secret = random_hex(16);
    let config = format!(
        r#"
[listeners]
bind = "127.0.0.1"
allocation_ports = [0]
tcp_relay_port = 0
udp_relay_ports = "0-1"

[[apps]]
id = "demo-app"
secrets = ["{secret}"]

[[ticket_keys]]
key_id = 1
secret = "{key}"

[allowlist]
allow = ["127.0.0.1"]
"#,
        key = random_hex(32)
    );
    let config = match ServerConfig::from_toml_str("<demo>", &config) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    let node = match ProxyNode::start(&config).await {
        Ok(node) => node,
        Err(e) => return failed(format!("starting the proxy node: {e}")),
    };
    let proxy = node.addrs().allocation_tcp[0];
    if !args.json {
        println!(
            "cloudproxy demo: media edge {} / {}, proxy {proxy} (embedded, loopback)",
            edge.tcp_addr(),
            edge.udp_addr()
        );
        println!(
            "  both engines: setParameters(\"{{\\\"rtc.enable_proxy\\\":true}}\"), then rtc.proxy_server [2, \"[\\\"{}\\\"]\", {}]",
            proxy.ip(),
            proxy.port()
        );
    }
    let mut params = if args.params.is_empty() {
        vec![r#"{"rtc.enable_proxy":true}"#.to_owned()]
    } else {
        args.params.clone()
    };
    params.push(format!(
        "{{\"rtc.proxy_server\":[2, \"[\\\"{}\\\"]\", {}]}}",
        proxy.ip(),
        proxy.port()
    ));
    let credential = match Credential::from_hex(&secret) {
        Ok(credential) => credential,
        Err(e) => return failed(format!("the demo's own app secret: {e}")),
    };
    let spec = CallSpec {
        app_id: "demo-app".into(),
        credential,
        edge_tcp: edge.tcp_addr(),
        edge_udp: edge.udp_addr(),
        params,
        mode: args.mode.map(Into::into),
        duration: Duration::from_secs_f64(args.seconds),
        channel: "demo".into(),
        progress: !args.json,
    };
    let summary = run(&spec).await;
    let stats = node.stats();
    if !args.json && summary.connect_ms.is_some() {
        println!(
            "  proxy node: {} allocations, {} TCP sessions, {} UDP bindings, {} datagrams relayed",
            stats.allocations,
            stats.tcp_sessions_total,
            stats.udp_bindings_total,
            stats.udp_packets_up + stats.udp_packets_down
        );
    }
    node.shutdown().await;
    edge.shutdown().await;
    summary
}

fn report(summary: &Summary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(summary).expect("the summary serializes")
        );
        return;
    }
    if let (None, Some(e)) = (summary.connect_ms, &summary.error) {
        // The call never started: a table would only show zeros.
        println!("result: FAILED: {e}");
        return;
    }
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.2} {unit}"));
    println!("summary");
    println!("  connect time      {}", opt(summary.connect_ms, "ms"));
    println!(
        "  path              {}",
        match summary.path.as_deref() {
            Some("udp") => "proxy, media over the UDP relay".to_owned(),
            Some("tcp") => "proxy, media over the TCP relay".to_owned(),
            Some("tls") => "proxy, everything over TLS to its TLS port".to_owned(),
            Some("http-proxy") => {
                "proxy, everything over TLS through the HTTP proxy".to_owned()
            }
            Some("direct") => "direct, no proxy".to_owned(),
            other => other.unwrap_or("unknown").to_owned(),
        }
    );
    if let Some(why) = &summary.fallback_reason {
        println!("  fallback to TCP   {why}");
    }
    println!(
        "  round trip        p50 {}, p99 {}",
        opt(summary.rtt_p50_ms, "ms"),
        opt(summary.rtt_p99_ms, "ms")
    );
    println!(
        "  messages          {} sent, {} received, {} missing, {} duplicated, {} out of order",
        summary.messages_sent,
        summary.messages_received,
        summary.messages_missing,
        summary.duplicates,
        summary.out_of_order
    );
    let lost = summary.media_sent.saturating_sub(summary.media_received);
    println!(
        "  media packets     {} sent, {} received, {} lost ({:.2} %)",
        summary.media_sent,
        summary.media_received,
        lost,
        if summary.media_sent == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / summary.media_sent as f64
        }
    );
    if summary.failovers > 0 {
        println!(
            "  failovers         {} ({:?} ms)",
            summary.failovers, summary.failover_ms
        );
    }
    match &summary.error {
        None => println!("result: the call works through the cloud proxy"),
        Some(e) => println!("result: FAILED: {e}"),
    }
}
