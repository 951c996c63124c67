//! `cloudproxy probe`: the guide's step 7, "test if the call works" — which of
//! the whitelisted ports get through this network, and what is missing.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudproxy_engine::Credential;
use cloudproxy_params::ProxyServer;
use cloudproxy_proto::client::{
    Allocation, Allocator, AllocatorEvent, BindingEvent, ClientConfig, RelayBinding,
};
use cloudproxy_proto::frame::BindMode;
use cloudproxy_proto::{Address, AppId, ErrorCode, Path, SessionError, Timebase};
use cloudproxy_transport::driver::{DatagramDriver, Driver, Next};
use cloudproxy_transport::net::connected_udp;
use cloudproxy_transport::resolve::candidates;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::call::{CallSpec, run as run_call};
use crate::runtime::block_on;
use crate::server_arg::{parse_edge, parse_server};

/// Arguments of `cloudproxy probe`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The proxy: `HOST[:PORT]` or `IP,IP,...[:PORT]`; no port checks every
    /// default allocation port (1080, 8000, 25000, 9700).
    #[arg(long, value_name = "SERVER", value_parser = parse_server)]
    server: ProxyServer,
    /// The app id.
    #[arg(long, value_name = "ID")]
    app_id: String,
    /// The app secret, in hex.
    #[arg(long, value_name = "HEX")]
    credential: Credential,
    /// How long each check may wait for an answer, in milliseconds.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    timeout_ms: u64,
    /// Also make a one-second call through the proxy to this media network
    /// (a `cloudproxy edge`, as `TCP_ADDR,UDP_ADDR`): the echo through the
    /// relay.
    #[arg(long, value_name = "TCP,UDP", value_parser = parse_edge)]
    edge: Option<(SocketAddr, SocketAddr)>,
    /// Also check the proxy's TLS port (443 when only `--tls-pin` or an
    /// HTTP proxy is given) with a TLS handshake agreeing on ALPN
    /// `cloudproxy/1`: `open`, `blocked`, `timeout` or `untrusted` (a
    /// TLS-intercepting device?).
    #[arg(long, value_name = "PORT")]
    tls_port: Option<u16>,
    /// What the TLS port's certificate must match, as `rtc.proxy_tls_pin`:
    /// a SHA-256 fingerprint or a PEM CA file (default: the system roots).
    #[arg(long, value_name = "PIN")]
    tls_pin: Option<String>,
    /// Also check the TLS port through this HTTP proxy
    /// (`http://[user:password@]host:port`; default: `HTTPS_PROXY`, unless
    /// `NO_PROXY` exempts the server).
    #[arg(long, value_name = "URL")]
    http_proxy: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What one check found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub(crate) enum Outcome {
    /// The port answered.
    Open {
        /// Round trip of the exchange, in microseconds.
        latency_us: u64,
    },
    /// Refused or unreachable at once (RST, ICMP), or closed without an
    /// answer: not the proxy speaking.
    Blocked {
        /// Why.
        reason: String,
    },
    /// The port answered and the proxy refused the request (the credential,
    /// a quota…): reachable, and no firewall rule changes the answer.
    Refused {
        /// The protocol's error code, e.g. 200 for a refused credential.
        code: u16,
        /// The code's name and the proxy's message.
        reason: String,
    },
    /// No answer within the timeout (a firewall that drops).
    Timeout,
    /// The TLS port answered with a certificate that is not trusted: most
    /// often a TLS-intercepting proxy or firewall on the way.
    Untrusted {
        /// What the certificate check found.
        reason: String,
    },
}

impl Outcome {
    fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }

    /// The port answered, whatever it said.
    fn is_reachable(&self) -> bool {
        matches!(self, Self::Open { .. } | Self::Refused { .. })
    }
}

/// One port checked.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    protocol: &'static str,
    role: &'static str,
    address: SocketAddr,
    #[serde(flatten)]
    outcome: Outcome,
}

/// The verdict.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Messages over the TCP relay, media over the UDP relay.
    WorksOverUdp,
    /// Messages and media over the TCP relay only.
    WorksOnlyOverTcp,
    /// Only the TLS port gets through: everything over TLS.
    WorksOverTls,
    /// Only the TLS port through the HTTP proxy gets through.
    WorksOverHttpProxy,
    /// Every port that answered refused the app id or secret: the network
    /// is not the problem, the credential is.
    CredentialRefused,
    /// The proxy answered and refused for another reason (a quota…).
    ProxyRefused,
    /// No call can be made.
    DoesNotWork,
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    checks: Vec<Check>,
    verdict: Verdict,
    /// The proxy answered but refused (credentials, quota…): no firewall
    /// rule fixes that. The code's name, number and the proxy's message.
    proxy_refusal: Option<String>,
    /// Why the call through the proxy failed, when `--edge` was given.
    echo_error: Option<String>,
    missing_rules: Vec<String>,
    /// Why the relay ports were not checked, when they were not: only an
    /// allocation names them, and the proxy granted none.
    relays_not_checked: Option<String>,
}

pub(crate) fn run(args: Args) -> ExitCode {
    let app_id = match AppId::new(args.app_id.clone()) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: --app-id: {e}");
            return ExitCode::from(2);
        }
    };
    block_on(async move {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut config = ClientConfig::new(
            app_id,
            args.credential.as_bytes().to_vec(),
            Timebase::new(Instant::now(), unix),
        );
        let timeout = Duration::from_millis(args.timeout_ms);
        config.handshake_timeout = timeout;
        let report = match probe(&args, &config, timeout).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("the report serializes")
            );
        } else {
            print!("{}", render(&report));
        }
        match report.verdict {
            Verdict::WorksOverUdp
            | Verdict::WorksOnlyOverTcp
            | Verdict::WorksOverTls
            | Verdict::WorksOverHttpProxy => ExitCode::SUCCESS,
            Verdict::CredentialRefused | Verdict::ProxyRefused | Verdict::DoesNotWork => {
                ExitCode::FAILURE
            }
        }
    })
}

async fn probe(args: &Args, config: &ClientConfig, timeout: Duration) -> Result<Report, String> {
    let server = &args.server;
    let targets = candidates(server, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut checks = Vec::new();
    let mut allocation: Option<Allocation> = None;

    // Allocation service: every address and port, TCP and UDP, at once.
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &addr) in targets.iter().enumerate() {
        let (c1, c2) = (config.clone(), config.clone());
        tasks.spawn(async move { (index * 2, allocate_tcp(addr, &c1, timeout).await) });
        tasks.spawn(async move { (index * 2 + 1, allocate_udp(addr, &c2, timeout).await) });
    }
    // The TLS port of every address, and through the HTTP proxy, meanwhile.
    let tls_checks = tls_checks(args, server, &targets, timeout);
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.map_err(|e| format!("a check failed: {e}"))?);
    }
    let tls_checks = tls_checks.await?;
    results.sort_by_key(|(index, _)| *index);
    for (index, (outcome, granted)) in results {
        if allocation.is_none() {
            allocation = granted;
        }
        checks.push(Check {
            protocol: if index % 2 == 0 { "TCP" } else { "UDP" },
            role: "allocation",
            address: targets[index / 2],
            outcome,
        });
    }

    // Relays, named by the allocation. A Bind to 0.0.0.0:9 is always refused
    // by the relay's policy; getting that refusal back proves the port
    // works both ways without relaying anything anywhere.
    if let Some(allocation) = &allocation {
        for &relay in &allocation.tcp_relays {
            let outcome = bind_check(relay, Path::Tcp, config, allocation, timeout).await;
            checks.push(Check {
                protocol: "TCP",
                role: "message relay",
                address: relay,
                outcome,
            });
        }
        for &relay in &allocation.udp_relays {
            let outcome = bind_check(relay, Path::Udp, config, allocation, timeout).await;
            checks.push(Check {
                protocol: "UDP",
                role: "media relay",
                address: relay,
                outcome,
            });
        }
    }

    checks.extend(tls_checks);

    // The echo: a short call through the proxy to the media network.
    let mut echo_error = None;
    let mut echo_path = None;
    if let (Some((edge_tcp, edge_udp)), Some(_)) = (args.edge, &allocation) {
        let call = echo(args, edge_tcp, edge_udp).await;
        let latency_us = call.rtt_p50_ms.map_or(0, |ms| (ms * 1000.0) as u64);
        let messages_ok = call.messages_sent > 0 && call.messages_received == call.messages_sent;
        checks.push(Check {
            protocol: "TCP",
            role: "echo: messages",
            address: edge_tcp,
            outcome: if messages_ok {
                Outcome::Open { latency_us }
            } else {
                Outcome::Blocked {
                    reason: call
                        .error
                        .clone()
                        .unwrap_or_else(|| "messages did not come back".into()),
                }
            },
        });
        checks.push(Check {
            protocol: if call.path.as_deref() == Some("tcp") {
                "TCP"
            } else {
                "UDP"
            },
            role: "echo: media",
            address: edge_udp,
            outcome: if call.media_received > 0 {
                Outcome::Open { latency_us }
            } else {
                Outcome::Blocked {
                    reason: call
                        .error
                        .clone()
                        .unwrap_or_else(|| "no media came back".into()),
                }
            },
        });
        echo_path.clone_from(&call.path);
        if !call.ok {
            echo_error = Some(call.error.unwrap_or_else(|| "the call failed".into()));
        }
    }

    let open = |protocol: &str, role: &str| {
        checks
            .iter()
            .any(|c| c.protocol == protocol && c.role == role && c.outcome.is_open())
    };
    let allocated = allocation.is_some();
    let udp_media = echo_path.as_deref() != Some("tcp");
    let refusal_code = checks.iter().find_map(|c| match &c.outcome {
        Outcome::Refused { code, .. } => Some(*code),
        _ => None,
    });
    let verdict = if !allocated && refusal_code == Some(ErrorCode::BAD_CREDENTIAL.0) {
        Verdict::CredentialRefused
    } else if !allocated && refusal_code.is_some() {
        Verdict::ProxyRefused
    } else if echo_error.is_some() {
        Verdict::DoesNotWork
    } else if allocated && open("TCP", "message relay") && open("UDP", "media relay") && udp_media {
        Verdict::WorksOverUdp
    } else if allocated && open("TCP", "message relay") {
        Verdict::WorksOnlyOverTcp
    } else if open("TLS", TLS_PORT) {
        Verdict::WorksOverTls
    } else if open("TLS", TLS_VIA_HTTP_PROXY) {
        Verdict::WorksOverHttpProxy
    } else {
        Verdict::DoesNotWork
    };
    let proxy_refusal = checks.iter().find_map(|c| match &c.outcome {
        Outcome::Refused { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let missing_rules = checks
        .iter()
        .filter(|c| !c.outcome.is_reachable() && !c.role.starts_with("echo"))
        .map(|c| match &c.outcome {
            Outcome::Untrusted { .. } => format!(
                "exempt {} port {} from TLS inspection ({}: its certificate was replaced or is not trusted)",
                c.address.ip(),
                c.address.port(),
                c.role
            ),
            _ => format!(
                "allow {} to {} port {} ({})",
                c.protocol,
                c.address.ip(),
                c.address.port(),
                c.role
            ),
        })
        .collect();
    let relays_not_checked = match verdict {
        Verdict::CredentialRefused => Some(
            "the relay ports were not checked because the proxy refused the credential".to_owned(),
        ),
        Verdict::ProxyRefused => Some(
            "the relay ports were not checked because the proxy refused the allocation".to_owned(),
        ),
        _ if !allocated => {
            Some("the relay ports were not checked because no allocation port answered".to_owned())
        }
        _ => None,
    };
    Ok(Report {
        server: server.to_string(),
        checks,
        verdict,
        proxy_refusal,
        echo_error,
        missing_rules,
        relays_not_checked,
    })
}

/// The role of the direct TLS port check.
const TLS_PORT: &str = "tls port";
/// The role of the TLS port check through the HTTP proxy.
const TLS_VIA_HTTP_PROXY: &str = "tls port via http proxy";

/// The TLS port of each address of `server` and, with an HTTP proxy (the
/// flag, else the environment), the same through it; all at once.
async fn tls_checks(
    args: &Args,
    server: &ProxyServer,
    targets: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Check>, String> {
    use cloudproxy_transport::http_proxy::HttpProxy;
    use cloudproxy_transport::tls::{TlsClient, TlsTrust};

    let proxy_env = cloudproxy_transport::http_proxy::ProxyEnv::from_process();
    let wanted = args.tls_port.is_some()
        || args.tls_pin.is_some()
        || args.http_proxy.is_some()
        || proxy_env.https_proxy.is_some();
    if !wanted {
        return Ok(Vec::new());
    }
    let tls_port = args.tls_port.unwrap_or(cloudproxy_params::DEFAULT_TLS_PORT);
    let trust = match &args.tls_pin {
        Some(pin) => TlsTrust::from_pin(pin).map_err(|e| format!("--tls-pin: {e}"))?,
        None => TlsTrust::SystemRoots,
    };
    let tls = TlsClient::new(&trust).map_err(|e| format!("--tls-pin: {e}"))?;
    let mut ips: Vec<std::net::IpAddr> = targets.iter().map(SocketAddr::ip).collect();
    ips.dedup();
    let endpoints: Vec<SocketAddr> = ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, tls_port))
        .collect();
    let proxy: Option<HttpProxy> = match &args.http_proxy {
        Some(url) => Some(HttpProxy::parse(url).map_err(|e| format!("--http-proxy: {e}"))?),
        None => {
            let host = endpoints
                .first()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let host = match server.kind() {
                cloudproxy_params::ProxyKind::Domain(name) => name.clone(),
                cloudproxy_params::ProxyKind::IpList(_) => host,
            };
            proxy_env
                .proxy_for(&host)
                .map_err(|e| format!("HTTPS_PROXY: {e}"))?
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &addr) in endpoints.iter().enumerate() {
        let (server, tls) = (server.clone(), tls.clone());
        tasks.spawn(async move {
            let outcome = crate::probe_tls::tls_check(&server, addr, &tls, timeout).await;
            (
                index,
                Check {
                    protocol: "TLS",
                    role: TLS_PORT,
                    address: addr,
                    outcome,
                },
            )
        });
    }
    if let (Some(proxy), Some(&target)) = (proxy, endpoints.first()) {
        let proxy_addrs =
            cloudproxy_transport::resolve::host_endpoints(&proxy.host, proxy.port, timeout)
                .await
                .map_err(|e| format!("the HTTP proxy {proxy}: {e}"))?;
        if let Some(&proxy_addr) = proxy_addrs.first() {
            let (server, tls) = (server.clone(), tls.clone());
            tasks.spawn(async move {
                let outcome = crate::probe_tls::http_proxy_check(
                    &server, target, &proxy, proxy_addr, &tls, timeout,
                )
                .await;
                (
                    usize::MAX,
                    Check {
                        protocol: "TLS",
                        role: TLS_VIA_HTTP_PROXY,
                        address: proxy_addr,
                        outcome,
                    },
                )
            });
        }
    }
    let mut checks = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        checks.push(joined.map_err(|e| format!("a check failed: {e}"))?);
    }
    checks.sort_by_key(|(index, _)| *index);
    Ok(checks.into_iter().map(|(_, check)| check).collect())
}

/// A one-second call through the proxy to the media network.
async fn echo(args: &Args, edge_tcp: SocketAddr, edge_udp: SocketAddr) -> crate::call::Summary {
    let tag = u32::from_be_bytes(nonce()[..4].try_into().unwrap_or_default());
    let spec = CallSpec {
        app_id: args.app_id.clone(),
        credential: args.credential.clone(),
        edge_tcp,
        edge_udp,
        params: vec![
            r#"{"rtc.enable_proxy":true}"#.to_owned(),
            format!("{{\"rtc.proxy_server\":{}}}", args.server.to_value()),
        ],
        mode: None,
        duration: Duration::from_secs(1),
        channel: format!("probe-{tag:08x}"),
        progress: false,
    };
    run_call(&spec).await
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn io_outcome(e: &std::io::Error) -> Outcome {
    Outcome::Blocked {
        reason: e.to_string(),
    }
}

fn session_outcome(e: &SessionError) -> Outcome {
    match e {
        SessionError::Timeout { .. } => Outcome::Timeout,
        SessionError::Refused { code, message } => Outcome::Refused {
            code: code.0,
            reason: format!(
                "{} ({}): {message}",
                code.name().unwrap_or("unknown code"),
                code.0
            ),
        },
        other => Outcome::Blocked {
            reason: other.to_string(),
        },
    }
}

/// One allocation over TCP at `addr`, within `timeout`: what happened, and
/// the allocation when it was granted.
pub(crate) async fn allocate_tcp(
    addr: SocketAddr,
    config: &ClientConfig,
    timeout: Duration,
) -> (Outcome, Option<Allocation>) {
    let started = Instant::now();
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| io_outcome(&e))?;
        let allocator = Allocator::new(config, Path::Tcp, nonce(), Instant::now());
        let mut driver = Driver::new(allocator, stream);
        loop {
            match answer(driver.next_event().await)? {
                AllocatorEvent::Allocated(a) => return Ok(a),
                AllocatorEvent::Failed(e) => return Err(session_outcome(&e)),
                _ => {}
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(a)) => (
            Outcome::Open {
                latency_us: micros(started),
            },
            Some(a),
        ),
        Ok(Err(outcome)) => (outcome, None),
        Err(_) => (Outcome::Timeout, None),
    }
}

async fn allocate_udp(
    addr: SocketAddr,
    config: &ClientConfig,
    timeout: Duration,
) -> (Outcome, Option<Allocation>) {
    let started = Instant::now();
    let exchange = async {
        let socket = connected_udp(addr).await.map_err(|e| io_outcome(&e))?;
        let allocator = Allocator::new(config, Path::Udp, nonce(), Instant::now());
        let mut driver = DatagramDriver::new(allocator, socket);
        loop {
            // An error here is ICMP port unreachable: nothing listens, or a
            // REJECT rule.
            match answer(driver.next_event().await)? {
                AllocatorEvent::Allocated(a) => return Ok(a),
                AllocatorEvent::Failed(e) => return Err(session_outcome(&e)),
                _ => {}
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(a)) => (
            Outcome::Open {
                latency_us: micros(started),
            },
            Some(a),
        ),
        Ok(Err(outcome)) => (outcome, None),
        Err(_) => (Outcome::Timeout, None),
    }
}

/// Binds to 0.0.0.0:9 through `relay`: the relay always refuses that
/// destination, and the refusal proves the port answers.
async fn bind_check(
    relay: SocketAddr,
    path: Path,
    config: &ClientConfig,
    allocation: &Allocation,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let never_allowed = Address::Ip(SocketAddr::from(([0, 0, 0, 0], 9)));
    let mode = BindMode::Datagram;
    let Ok(binding) = RelayBinding::new(
        config,
        allocation,
        path,
        mode,
        never_allowed,
        Instant::now(),
    ) else {
        return Outcome::Blocked {
            reason: "the allocation does not allow this transport".into(),
        };
    };
    let exchange = async move {
        match path {
            Path::Tcp => {
                let stream = TcpStream::connect(relay)
                    .await
                    .map_err(|e| io_outcome(&e))?;
                answer(Driver::new(binding, stream).next_event().await)
            }
            Path::Udp => {
                let socket = connected_udp(relay).await.map_err(|e| io_outcome(&e))?;
                answer(DatagramDriver::new(binding, socket).next_event().await)
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        // The expected refusal: the relay answered.
        Ok(Ok(BindingEvent::Closed(SessionError::Refused {
            code: ErrorCode::DESTINATION_NOT_ALLOWED,
            ..
        }))) => Outcome::Open {
            latency_us: micros(started),
        },
        Ok(Ok(BindingEvent::Closed(e))) => session_outcome(&e),
        Ok(Ok(other)) => Outcome::Blocked {
            reason: format!("unexpected answer {other:?}"),
        },
        Ok(Err(outcome)) => outcome,
        Err(_) => Outcome::Timeout,
    }
}

/// What a driver's wait gave, as a check sees it: the machine's event, or
/// the outcome that ends the check.
fn answer<E>(next: Next<E>) -> Result<E, Outcome> {
    match next {
        Next::Event(event) => Ok(event),
        Next::PeerClosed => Err(Outcome::Blocked {
            reason: "closed without an answer".into(),
        }),
        Next::Io(e) => Err(io_outcome(&e)),
    }
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).expect("the operating system's random generator failed");
    n
}

fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "cloudproxy probe: {}", report.server);
    let _ = writeln!(
        out,
        "proto  role           address                      state     latency / reason"
    );
    for c in &report.checks {
        let (state, detail) = match &c.outcome {
            Outcome::Open { latency_us } => {
                ("open", format!("{:.1} ms", *latency_us as f64 / 1000.0))
            }
            Outcome::Blocked { reason } => ("blocked", reason.clone()),
            Outcome::Refused { reason, .. } => ("refused", format!("the proxy answered: {reason}")),
            Outcome::Timeout => ("timeout", "no answer".into()),
            Outcome::Untrusted { reason } => ("untrusted", reason.clone()),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<14} {:<28} {:<9} {}",
            c.protocol,
            c.role,
            c.address.to_string(),
            state,
            detail
        );
    }
    let verdict = match report.verdict {
        Verdict::WorksOverUdp => "a call will work: messages over the TCP relay, media over UDP",
        Verdict::WorksOnlyOverTcp => {
            "a call will work only over TCP: media falls back to the TCP relay (UDP is blocked)"
        }
        Verdict::WorksOverTls => {
            "a call will work only over TLS: everything through the proxy's TLS port (ProxyMode::On finds it; ProxyMode::ForceTls goes straight to it)"
        }
        Verdict::WorksOverHttpProxy => {
            "a call will work only through the HTTP proxy: everything over TLS through CONNECT"
        }
        Verdict::CredentialRefused => {
            "a call will not work: the proxy refused the credential (the ports are reachable; check the app id and secret)"
        }
        Verdict::ProxyRefused => {
            "a call will not work: the proxy is reachable but refused the request (see below)"
        }
        Verdict::DoesNotWork => "a call will not work through this proxy from here",
    };
    let _ = writeln!(out, "verdict: {verdict}");
    if let Some(why) = &report.echo_error {
        let _ = writeln!(
            out,
            "the ports answer, but a call through the proxy failed: {why}"
        );
    }
    if let Some(refusal) = &report.proxy_refusal {
        let _ = writeln!(out, "the proxy answered and refused: {refusal}");
    }
    match (&report.relays_not_checked, report.missing_rules.is_empty()) {
        (Some(why), true) => {
            let _ = writeln!(
                out,
                "firewall: the allocation ports answered; {why}, so whether they are open is not known"
            );
        }
        (None, true) => {
            let _ = writeln!(
                out,
                "firewall: nothing missing (every port checked answered)"
            );
        }
        (_, false) => {}
    }
    if !report.missing_rules.is_empty() {
        let _ = writeln!(out, "firewall rules still missing:");
        for rule in &report.missing_rules {
            let _ = writeln!(out, "  {rule}");
        }
        if let Some(why) = &report.relays_not_checked {
            let _ = writeln!(out, "  ({why})");
        }
    }
    out
}
