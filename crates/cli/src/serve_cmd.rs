//! `cloudproxy serve`: run the proxy service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cloudproxy_server::ProxyNode;
use cloudproxy_server::admin::AdminServer;
use cloudproxy_server::allowlist::{Allowlist, Rule};
use cloudproxy_server::config::{ConfigDraft, ConfigError, PortRange, ServerConfig};
use cloudproxy_server::tls::Identity;

use crate::logging::LogArgs;
use crate::runtime::{DrainSignal, ShutdownSignal, block_on};
use crate::serve_reload::{self, ReloadSignal};

/// Exit status when the configuration is unusable or a port cannot be bound.
const EXIT_CONFIG: u8 = 2;

/// Arguments of `cloudproxy serve`. Flags override the file; the result is
/// checked as a whole, so a flag gets the same checks as the file.
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
    /// Only check the configuration and exit: the file with the flags laid
    /// over it gets the same checks as a start. Exit status 0 with a
    /// one-line summary on stdout, 2 with the error on stderr. Binds
    /// nothing, so it can run beside a live node (before a restart or a
    /// reload, or as systemd's ExecStartPre).
    #[arg(long)]
    check: bool,
    /// Serve /metrics, /livez, /readyz and POST /drain over HTTP on ADDR
    /// (`[admin] bind`); development mode serves it on 127.0.0.1 with a
    /// free port unless this flag says otherwise.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// Serve the TLS port on ADDR (`[tls] listen`, e.g. 0.0.0.0:443):
    /// allocation and relay behind one TLS listener. In development mode
    /// (no --config) without --tls-cert/--tls-key, a fresh self-signed
    /// certificate for localhost, 127.0.0.1 and ::1 is used and its
    /// fingerprint printed.
    #[arg(long, value_name = "ADDR")]
    tls_bind: Option<std::net::SocketAddr>,
    /// The TLS port's certificate chain, PEM (`[tls] cert`).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The TLS port's private key, PEM (`[tls] key`).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    logging: LogArgs,
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
    // One budget for the node's refusal lines and for what other crates
    // (rustls, …) log about unauthenticated peers.
    let log_budget = cloudproxy_server::LogBudget::new();
    if let Err(e) = args.logging.init("info", log_budget.clone()) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let (config, development) = match configure(&args) {
        Ok(configured) => configured,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        // The certificate files are read as at start, so `--check` catches them.
        if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
            if let Err(e) = Identity::from_pem_files(cert, key) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
        for risky in config.allowlist.allow.risky_openings() {
            eprintln!("warning: SECURITY: {risky}; make sure this is intended");
        }
        let source = args.config.as_ref().map_or_else(
            || "<development defaults>".to_owned(),
            |p| p.display().to_string(),
        );
        println!("{source}: configuration OK: {}", summary(&config));
        return ExitCode::SUCCESS;
    }
    block_on(async move {
        // Before anything says "ready": see `ShutdownSignal`.
        let shutdown = ShutdownSignal::install();
        let reloads = ReloadSignal::install();
        let mut drain_signal = DrainSignal::install();
        // The admin listener comes first, so /readyz says 503 while the
        // node binds.
        let admin = match config.admin.bind {
            Some(addr) => match AdminServer::start(addr).await {
                Ok(admin) => Some(admin),
                Err(e) => {
                    // Logging runs: a log line, so `--log-format json` gets JSON.
                    tracing::error!(
                        error = &e as &dyn std::error::Error,
                        "the admin listener could not start"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            None => None,
        };
        let node = match ProxyNode::start_with_log_budget(&config, log_budget).await {
            Ok(node) => node,
            Err(e) => {
                // Logging runs: a log line, so `--log-format json` gets JSON.
                tracing::error!(
                    error = &e as &dyn std::error::Error,
                    "the proxy node could not start"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if let Some(admin) = &admin {
            admin.attach(&node);
        }
        print_banner(
            &node,
            &config,
            development.as_deref(),
            admin.as_ref().map(AdminServer::local_addr),
        );
        // SIGUSR2 drains on demand and the process stays up (POST /drain
        // does the same); SIGHUP reloads the configuration file (see
        // `serve_reload`); SIGINT or SIGTERM drains and exits. The block ends
        // the reload loop's borrow of the node before the node shuts down.
        {
            let shutdown = shutdown.recv();
            let reload = serve_reload::serve(reloads, &node, &args);
            tokio::pin!(shutdown, reload);
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = &mut reload => break,
                    () = drain_signal.recv() => {
                        tracing::info!("SIGUSR2: draining on demand");
                        node.begin_drain();
                    }
                }
            }
        }
        tracing::info!(
            drain_timeout_ms = config.limits.drain_timeout_ms,
            "shutting down: draining sessions"
        );
        let outcome = node.shutdown().await;
        tracing::info!("stopped ({outcome})");
        ExitCode::SUCCESS
    })
}

/// The configuration to run: the file (or the development defaults), the
/// flags laid over it, then one validation of the result. Also returns the
/// development secret in development mode.
fn configure(args: &Args) -> Result<(ServerConfig, Option<String>), String> {
    let (mut draft, development) = match &args.config {
        Some(path) => (ConfigDraft::read(path).map_err(|e| e.to_string())?, None),
        None => {
            let (draft, secret) = development_config();
            (draft, Some(secret))
        }
    };
    apply_overrides(&mut draft, args);
    let bind = draft.config().listeners.bind;
    if development.is_some() && !bind.is_loopback() {
        // Its credentials are printed and its allowlist opens loopback: on
        // another interface, any host could reach this host's loopback.
        return Err(format!(
            "--bind {bind}: development mode (no --config) serves loopback only, because its \
             credentials are printed and its allowlist opens 127.0.0.1; bind 127.0.0.1 or ::1, \
             or give a --config for a node other hosts can reach"
        ));
    }
    let tls = &draft.config().tls;
    if let Some(listen) = tls
        .listen
        .filter(|l| development.is_some() && !l.ip().is_loopback())
    {
        // The same reason as for --bind: the development node is loopback only.
        return Err(format!(
            "--tls-bind {listen}: development mode (no --config) serves loopback only, because \
             its credentials are printed; bind 127.0.0.1 or ::1, or give a --config for a TLS \
             port other hosts can reach"
        ));
    }
    if development.is_some() && tls.listen.is_some() && tls.cert.is_none() && tls.key.is_none() {
        // Development mode: a self-signed certificate for loopback names.
        draft.set_by_flag("--tls-bind", "tls.cert", |c| c.tls.self_signed = true);
    }
    if development.is_some() && draft.config().admin.bind.is_none() {
        // Development mode: the admin listener on loopback, a free port.
        draft.set_by_flag("(development mode)", "admin.bind", |c| {
            c.admin.bind = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        });
    }
    let config = draft.validate().map_err(|e| e.to_string())?;
    Ok((config, development))
}

impl Args {
    /// The `--config` file, if any (development mode has none).
    pub(crate) fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

/// The configuration a reload runs: the `--config` file (`path`) read
/// again, the same flags laid over it, one validation of the result, as at
/// start.
pub(crate) fn reread(path: &Path, args: &Args) -> Result<ServerConfig, ConfigError> {
    let mut draft = ConfigDraft::read(path)?;
    apply_overrides(&mut draft, args);
    draft.validate()
}

fn apply_overrides(draft: &mut ConfigDraft, args: &Args) {
    if let Some(bind) = args.bind {
        draft.set_by_flag("--bind", "listeners.bind", |c| c.listeners.bind = bind);
    }
    if let Some(advertise) = args.advertise {
        draft.set_by_flag("--advertise", "listeners.advertise", |c| {
            c.listeners.advertise = Some(advertise);
        });
    }
    if !args.allocation_ports.is_empty() {
        draft.set_by_flag("--allocation-port", "listeners.allocation_ports", |c| {
            c.listeners
                .allocation_ports
                .clone_from(&args.allocation_ports);
        });
    }
    if let Some(port) = args.tcp_relay_port {
        draft.set_by_flag("--tcp-relay-port", "listeners.tcp_relay_port", |c| {
            c.listeners.tcp_relay_port = port;
        });
    }
    if let Some(range) = &args.udp_relay_ports {
        draft.set_by_flag("--udp-relay-ports", "listeners.udp_relay_ports", |c| {
            c.listeners.udp_relay_ports = range.clone();
        });
    }
    if let Some(addr) = args.admin {
        draft.set_by_flag("--admin", "admin.bind", |c| c.admin.bind = Some(addr));
    }
    if let Some(port) = args.socks5_port {
        draft.set_by_flag("--socks5-port", "socks5.port", |c| {
            c.socks5.enabled = true;
            c.socks5.port = port;
        });
    }
    if let Some(addr) = args.tls_bind {
        draft.set_by_flag("--tls-bind", "tls.listen", |c| c.tls.listen = Some(addr));
    }
    if let Some(cert) = &args.tls_cert {
        draft.set_by_flag("--tls-cert", "tls.cert", |c| {
            c.tls.cert = Some(cert.clone())
        });
    }
    if let Some(key) = &args.tls_key {
        draft.set_by_flag("--tls-key", "tls.key", |c| c.tls.key = Some(key.clone()));
    }
    if !args.allow.is_empty() {
        draft.set_by_flag("--allow", "allowlist.allow", |c| {
            c.allowlist.allow = Allowlist::new(args.allow.clone());
        });
    }
}

/// One line for `--check`: apps, listeners, allowlist rules.
fn summary(config: &ServerConfig) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let l = &config.listeners;
    let allocation = l
        .allocation_ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let advertise = l
        .advertise
        .map(|a| format!(" (advertised as {a})"))
        .unwrap_or_default();
    let socks5 = if config.socks5.enabled {
        config.socks5.port.to_string()
    } else {
        "off".to_owned()
    };
    let tls = config
        .tls
        .listen_addr(l)
        .map(|a| format!(", TLS port {a}"))
        .unwrap_or_default();
    format!(
        "{}, {}; listeners on {}{advertise}: allocation {allocation} (TCP and UDP), TCP relay {}, \
         UDP relay {} ({}), SOCKS5 {socks5}{tls}; {}; admin {}; nothing was bound",
        plural(config.apps.len(), "app", "apps"),
        plural(config.ticket_keys.len(), "ticket key", "ticket keys"),
        l.bind,
        l.tcp_relay_port,
        l.udp_relay_ports,
        plural(l.udp_relay_ports.len(), "port", "ports"),
        plural(
            config.allowlist.allow.rules().len(),
            "allowlist rule",
            "allowlist rules"
        ),
        config
            .admin
            .bind
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
    )
}

/// The development app's id.
pub(crate) const DEV_APP: &str = "dev-app";

/// A loopback node with one app, a fresh secret and a fresh ticket key; the
/// relay may reach loopback destinations (a local edge).
fn development_config() -> (ConfigDraft, String) {
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
    let draft = ConfigDraft::parse("<development defaults>", &text)
        .expect("the development configuration parses");
    (draft, secret)
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("the operating system's random generator failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_banner(
    node: &ProxyNode,
    config: &ServerConfig,
    development: Option<&str>,
    admin: Option<std::net::SocketAddr>,
) {
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
    if let (Some(tls), Some(fingerprint)) = (addrs.tls, node.tls_fingerprint()) {
        println!("  TLS port            TCP {tls} (ALPN cloudproxy/1)");
        println!("                      sha256 fingerprint: {fingerprint}");
    }
    if let Some(admin) = admin {
        println!("  admin               HTTP http://{admin}/metrics, /livez, /readyz, POST /drain");
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
