//! `cloudproxy edge`: run the reference media edge, the stand-in for the
//! media network that demos, tests and benchmarks talk to through a proxy.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cloudproxy_edge::{Edge, EdgeConfig};

use crate::logging::LogArgs;
use crate::runtime::{ShutdownSignal, block_on};

const EXIT_CONFIG: u8 = 2;

/// Arguments of `cloudproxy edge`. Flags override the file.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file (TOML); without one, the defaults (127.0.0.1, TCP
    /// and UDP port 7000).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to bind.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// TCP port for members' message channels (0 picks a free port).
    #[arg(long, value_name = "PORT")]
    tcp_port: Option<u16>,
    /// UDP port for media (0 picks a free port).
    #[arg(long, value_name = "PORT")]
    udp_port: Option<u16>,
    #[command(flatten)]
    logging: LogArgs,
}

pub(crate) fn run(args: Args) -> ExitCode {
    if let Err(e) = args
        .logging
        .init("info", cloudproxy_server::LogBudget::new())
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let mut config = match &args.config {
        Some(path) => match EdgeConfig::from_file(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => EdgeConfig::default(),
    };
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(port) = args.tcp_port {
        config.tcp_port = port;
    }
    if let Some(port) = args.udp_port {
        config.udp_port = port;
    }
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    block_on(async move {
        // Before anything says "ready": see `ShutdownSignal`.
        let shutdown = ShutdownSignal::install();
        let edge = match Edge::bind(config).await {
            Ok(edge) => edge,
            Err(e) => {
                // Logging runs: a log line, so `--log-format json` gets JSON.
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "the edge could not start"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        println!("cloudproxy edge: listening");
        println!("  members (messages)  TCP {}", edge.tcp_addr());
        println!("  media               UDP {}", edge.udp_addr());
        println!("press Ctrl-C to stop");
        let handle = edge.handle();
        edge.run(shutdown.recv()).await;
        tracing::info!(stats = %handle.stats(), "stopped");
        ExitCode::SUCCESS
    })
}
