//! `cloudproxy forward`: carry local TCP connections through a proxy to one
//! destination, so that any tool (nc, socat, curl, a database client) can use
//! the relay unchanged.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudproxy_engine::Credential;
use cloudproxy_params::ProxyServer;
use cloudproxy_proto::client::{Allocation, ClientConfig};
use cloudproxy_proto::{Address, AppId, DomainName, ErrorCode, Timebase};
use cloudproxy_server::pump::{PumpOptions, pump};
use cloudproxy_transport::dial::DialPolicy;
use cloudproxy_transport::resolve::candidates;
use cloudproxy_transport::tunnel::{allocate, open_stream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::logging::LogArgs;
use crate::probe_cmd::{Outcome, allocate_tcp};
use crate::runtime::{ShutdownSignal, block_on};
use crate::server_arg::parse_server;

/// Arguments of `cloudproxy forward`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The proxy: `HOST[:PORT]` or `IP,IP,...[:PORT]`; no port means the default
    /// allocation ports.
    #[arg(long, value_name = "SERVER", value_parser = parse_server)]
    server: ProxyServer,
    /// The app id.
    #[arg(long, value_name = "ID")]
    app_id: String,
    /// The app secret, in hex.
    #[arg(long, value_name = "HEX")]
    credential: Credential,
    /// Local address to accept connections on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the relay connects each of them: IP:PORT or NAME:PORT.
    #[arg(long, value_name = "DEST")]
    to: String,
    #[command(flatten)]
    logging: LogArgs,
}

const EXIT_USAGE: u8 = 2;

fn parse_destination(text: &str) -> Result<Address, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Address::Ip(addr));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected IP:PORT or NAME:PORT, found {text:?}"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("expected a port after `:`, found {port:?}"))?;
    let name = DomainName::new(host).map_err(|e| e.to_string())?;
    Ok(Address::Domain(name, port))
}

pub(crate) fn run(args: Args) -> ExitCode {
    if let Err(e) = args
        .logging
        .init("info", cloudproxy_server::LogBudget::new())
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let destination = match parse_destination(&args.to) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --to: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let app_id = match AppId::new(args.app_id.clone()) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: --app-id: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    block_on(async move {
        // Before anything says "ready": see `ShutdownSignal`.
        let shutdown = ShutdownSignal::install();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let config = ClientConfig::new(
            app_id,
            args.credential.as_bytes().to_vec(),
            Timebase::new(Instant::now(), unix),
        );
        // Logging runs from here on: fatal errors are log lines, so
        // `--log-format json` gets JSON.
        let targets = match candidates(&args.server, Duration::from_secs(5)).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "the proxy's addresses could not be resolved"
                );
                return ExitCode::FAILURE;
            }
        };
        // One allocation before listening: a refused credential is an
        // error now, not a silent close of every connection later.
        let first = match first_allocation(&config, &targets, &args.app_id).await {
            Ok(allocation) => allocation,
            Err(e) => {
                // A whole sentence for the operator (what was refused and
                // what to check): the message itself, so the text form
                // shows it unquoted.
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %args.listen, error = &e as &dyn std::error::Error, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().unwrap_or(args.listen);
        println!(
            "forwarding {local} -> {destination} through {}",
            args.server
        );
        let state = Arc::new(Forwarder {
            config,
            targets,
            destination,
            allocation: Mutex::new(Some(first)),
        });
        let accept = async {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    if let Err(e) = state.carry(stream).await {
                        tracing::warn!(%peer, error = %e, "connection not forwarded");
                    }
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = shutdown.recv() => {}
        }
        ExitCode::SUCCESS
    })
}

/// Allocates a session at the first target that grants one. The error says
/// whether the proxy refused (and, for the credential, what to check) or
/// could not be reached.
async fn first_allocation(
    config: &ClientConfig,
    targets: &[SocketAddr],
    app_id: &str,
) -> Result<Allocation, String> {
    let mut failures = Vec::new();
    for &target in targets {
        match allocate_tcp(target, config, START_TIMEOUT).await {
            (_, Some(allocation)) => {
                tracing::info!(service = %target, session = format_args!("{:016x}", allocation.session_id), "allocated");
                return Ok(allocation);
            }
            (Outcome::Refused { code, reason }, None) if code == ErrorCode::BAD_CREDENTIAL.0 => {
                return Err(format!(
                    "the proxy at {target} refused the credential for app {app_id:?} ({reason}); \
                     the proxy is reachable: check --app-id and --credential"
                ));
            }
            (Outcome::Refused { reason, .. }, None) => {
                return Err(format!(
                    "the proxy at {target} refused the allocation: {reason}"
                ));
            }
            (Outcome::Timeout, None) => failures.push(format!("{target}: no answer")),
            (Outcome::Blocked { reason } | Outcome::Untrusted { reason }, None) => {
                failures.push(format!("{target}: {reason}"));
            }
            (Outcome::Open { .. }, None) => failures.push(format!("{target}: no allocation")),
        }
    }
    Err(format!(
        "could not allocate a proxy session, so nothing is forwarded ({})",
        failures.join("; ")
    ))
}

/// How long the start-up allocation may take at each address.
const START_TIMEOUT: Duration = Duration::from_secs(5);

struct Forwarder {
    config: ClientConfig,
    targets: Vec<SocketAddr>,
    destination: Address,
    /// One session serves every connection while its ticket is valid.
    allocation: Mutex<Option<Allocation>>,
}

impl Forwarder {
    async fn allocation(&self) -> Result<Allocation, String> {
        let mut held = self.allocation.lock().await;
        match &*held {
            Some(a) if Instant::now() < a.refresh_at => Ok(a.clone()),
            _ => {
                let (service, fresh) =
                    allocate(&self.config, &self.targets, &DialPolicy::default())
                        .await
                        .map_err(|e| e.to_string())?;
                tracing::info!(%service, session = format_args!("{:016x}", fresh.session_id), "allocated");
                *held = Some(fresh.clone());
                Ok(fresh)
            }
        }
    }

    async fn carry(&self, mut local: TcpStream) -> Result<(), String> {
        let allocation = self.allocation().await?;
        let (relayed, early) = open_stream(
            &self.config,
            &allocation,
            self.destination.clone(),
            &DialPolicy::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        local.write_all(&early).await.map_err(|e| e.to_string())?;
        let options = PumpOptions {
            buffer_len: 256 * 1024,
            idle_timeout: Duration::from_secs(3600),
            splice: true,
            // The relay ends the session at its lifetime; nothing to add here.
            deadline: None,
        };
        let report = pump(&local, &relayed, &[], &options, std::future::pending()).await;
        tracing::info!(
            up = report.client_to_upstream,
            down = report.upstream_to_client,
            end = report.end.as_str(),
            "connection ended"
        );
        Ok(())
    }
}
