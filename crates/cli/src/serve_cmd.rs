//! `cloudproxy serve`: run the proxy service.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cloudproxy_transport::allowlist::Rule;
use cloudproxy_transport::config::{PortRange, ServerConfig};
use cloudproxy_transport::server::ProxyNode;

use crate::runtime::{ShutdownSignal, init_logging, runtime};

/// Exit status when the configuration is unusable or a port cannot be bound.
const EXIT_CONFIG: u8 = 2;

/// Arguments of `cloudproxy serve`. Flags override the file.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Configuration file (TOML). Without one, a loopback development node
    /// starts with a fresh app secret, which is printed.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address every listener binds.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// Address given to clients for the relays.
    #[arg(long, value_name = "IP")]
    advertise: Option<IpAddr>,
    /// Allocation port (TCP and UDP); repeat for several, in the order
    /// clients should try them. 0 picks a free port.
    #[arg(long = "allocation-port", value_name = "PORT")]
    allocation_ports: Vec<u16>,
    /// TCP relay port.
    #[arg(long, value_name = "PORT")]
    tcp_relay_port: Option<u16>,
    /// UDP relay port range, e.g. 4500-4650.
    #[arg(long, value_name = "RANGE", value_parser = parse_range)]
    udp_relay_ports: Option<PortRange>,
    /// Allowlist rule (`NET`, `NET:PORTS` or `[V6NET]:PORTS`); repeat for several.
    /// Replaces the file's allowlist.
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<Rule>,
    /// Enable the SOCKS5 listener on this port (0 picks a free port).
    #[arg(long, value_name = "PORT")]
    socks5_port: Option<u16>,
    /// Log filter, e.g. info, debug, cloudproxy_transport=debug.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

fn parse_range(text: &str) -> Result<PortRange, String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
        (Ok(a), Ok(b)) if a <= b => Ok(PortRange(a..=b)),
        _ => Err(format!(
            "expected a port range like 4500-4650, found {text:?}"
        )),
    }
}

pub(crate) fn run(args: Args) -> ExitCode {
    init_logging(&args.log);
    let (mut config, development) = match &args.config {
        Some(path) => match ServerConfig::from_file(path) {
            Ok(config) => (config, None),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => {
            let (config, secret) = development_config();
            (config, Some(secret))
        }
    };
    apply_overrides(&mut config, &args);
    runtime().block_on(async move {
        // Before anything says "ready": see `ShutdownSignal`.
        let shutdown = ShutdownSignal::install();
        let node = match ProxyNode::start(&config).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        print_banner(&node, &config, development.as_deref());
        shutdown.recv().await;
        eprintln!(
            "shutting down: draining sessions for up to {:?}",
            config.limits.drain_timeout()
        );
        let outcome = node.shutdown().await;
        eprintln!("stopped ({outcome:?})");
        ExitCode::SUCCESS
    })
}

fn apply_overrides(config: &mut ServerConfig, args: &Args) {
    let listeners = &mut config.listeners;
    if let Some(bind) = args.bind {
        listeners.bind = bind;
    }
    if let Some(advertise) = args.advertise {
        listeners.advertise = Some(advertise);
    }
    if !args.allocation_ports.is_empty() {
        listeners
            .allocation_ports
            .clone_from(&args.allocation_ports);
    }
    if let Some(port) = args.tcp_relay_port {
        listeners.tcp_relay_port = port;
    }
    if let Some(range) = &args.udp_relay_ports {
        listeners.udp_relay_ports = range.clone();
    }
    if let Some(port) = args.socks5_port {
        config.socks5.enabled = true;
        config.socks5.port = port;
    }
    if !args.allow.is_empty() {
        config.allowlist.allow =
            cloudproxy_transport::allowlist::Allowlist::new(args.allow.clone());
    }
}

/// The development app's id.
pub(crate) const DEV_APP: &str = "dev-app";

/// A loopback node with one app, a fresh secret and a fresh ticket key; the
/// relay may reach loopback destinations (a local edge).
fn development_config() -> (ServerConfig, String) {
    let secret = random_hex(16);
    let text = format!(
        r#"
[listeners]
bind = "127.0.0.1"

[[apps]]
id = "{DEV_APP}"
max_sessions = 100
secrets = ["{secret}"]

[[ticket_keys]]
key_id = 1
secret = "{ticket_key}"

[allowlist]
allow = ["127.0.0.1"]
"#,
        ticket_key = random_hex(32),
    );
    let config = ServerConfig::from_toml_str("<development defaults>", &text)
        .expect("the development configuration is valid");
    (config, secret)
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("the operating system's random generator failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_banner(node: &ProxyNode, config: &ServerConfig, development: Option<&str>) {
    let addrs = node.addrs();
    let list = |a: &[std::net::SocketAddr]| {
        a.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("cloudproxy serve: listening");
    println!("  allocation service  TCP {}", list(&addrs.allocation_tcp));
    println!("                      UDP {}", list(&addrs.allocation_udp));
    println!("  message-data relay  TCP {}", addrs.tcp_relay);
    let udp = &addrs.udp_relays;
    match (udp.first(), udp.last()) {
        (Some(first), Some(last)) if udp.len() > 1 => {
            println!(
                "  media relay         UDP {first} … {last} ({} ports)",
                udp.len()
            );
        }
        (Some(only), _) => println!("  media relay         UDP {only}"),
        _ => {}
    }
    if let Some(socks5) = addrs.socks5 {
        println!("  SOCKS5              TCP {socks5} (user = app id, password = app secret)");
    }
    let rules: Vec<String> = config
        .allowlist
        .allow
        .rules()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "  allowlist           {}",
        if rules.is_empty() {
            "(empty: every destination refused)".to_owned()
        } else {
            rules.join(", ")
        }
    );
    if let Some(secret) = development {
        println!();
        println!("development mode (no --config): loopback only, fresh credentials");
        println!("  app id      {DEV_APP}");
        println!("  app secret  {secret}");
    }
    println!("press Ctrl-C to stop");
}
