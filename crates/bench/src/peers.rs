//! Starting every server on 127.0.0.1 with ports picked at run time, each
//! with its own configuration file under the output directory.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, Procs};
use crate::{APP, Options, SECRET_HEX, TICKET_KEY_HEX};

/// Every server of a run, and where it listens.
pub(crate) struct Servers {
    procs: Procs,
    log_dir: std::path::PathBuf,
    socat_udp: Option<u32>,
    pub(crate) iperf: u16,
    pub(crate) haproxy_iperf: u16,
    pub(crate) socat_iperf: u16,
    pub(crate) cp_forward_iperf: u16,
    pub(crate) sink: SocketAddr,
    pub(crate) echo: SocketAddr,
    /// Echoes one read, then resets (session-rate destination).
    pub(crate) echo_once: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) haproxy_sink: SocketAddr,
    pub(crate) haproxy_echo: SocketAddr,
    pub(crate) socat_sink: SocketAddr,
    pub(crate) danted: SocketAddr,
    pub(crate) coturn: Option<SocketAddr>,
    pub(crate) cp_allocation: SocketAddr,
    pub(crate) cp_socks: SocketAddr,
    /// A destination for idle UDP bindings (nothing needs to answer).
    pub(crate) udp_echo: SocketAddr,
    /// The TLS rows' servers; `None` when the binary under test has no
    /// `cloudproxy cert` (a tree before issue 16), with the reason.
    pub(crate) tls: Result<TlsServers, String>,
}

/// Where the TLS rows connect: our node's TLS port and haproxy terminating
/// TLS with the same certificate in front of the sink, and what a client
/// pins.
pub(crate) struct TlsServers {
    pub(crate) cloudproxy: SocketAddr,
    pub(crate) haproxy_sink: SocketAddr,
    /// The certificate's SHA-256 fingerprint (`cloudproxy cert`'s output).
    pub(crate) pin: String,
    /// The processes behind `cloudproxy` and `haproxy_sink`, whose CPU
    /// time the rows measure.
    pub(crate) cloudproxy_pid: u32,
    pub(crate) haproxy_pid: u32,
}

/// Our node's TLS certificate and key for 127.0.0.1, made by the binary
/// under test; returns the files and the fingerprint.
fn make_certificate(
    dir: &Path,
    options: &Options,
) -> Result<(std::path::PathBuf, std::path::PathBuf, String), String> {
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    let out = Command::new(&options.cloudproxy)
        .args(["cert", "--name", "127.0.0.1", "--force", "--cert-out"])
        .arg(&cert)
        .arg("--key-out")
        .arg(&key)
        .output()
        .map_err(|e| format!("running cloudproxy cert: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`cloudproxy cert` failed (a tree without TLS?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let pin = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256 fingerprint: "))
        .ok_or_else(|| format!("`cloudproxy cert` printed no fingerprint: {stdout}"))?;
    Ok((cert, key, pin.trim().to_owned()))
}

/// haproxy terminating TLS (`ssl crt`, ALPN `cloudproxy/1`) in `mode tcp`
/// in front of the sink, with the same global settings as the plain one;
/// returns its port and PID.
fn spawn_haproxy_tls(
    dir: &Path,
    procs: &mut Procs,
    cert: &Path,
    key: &Path,
    sink: u16,
) -> Result<(u16, u32), String> {
    let mut pem = std::fs::read(cert).map_err(|e| format!("reading {}: {e}", cert.display()))?;
    pem.extend(std::fs::read(key).map_err(|e| format!("reading {}: {e}", key.display()))?);
    let combined = dir.join("tls-haproxy.pem");
    std::fs::write(&combined, pem).map_err(|e| format!("writing {}: {e}", combined.display()))?;
    let front = free_port()?;
    let cfg = write(
        dir,
        "haproxy-tls.cfg",
        &format!(
            "global\n    maxconn 9400\n    nbthread 2\n    tune.ssl.default-dh-param 2048\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n\nlisten tls\n    bind 127.0.0.1:{front} ssl crt {} alpn cloudproxy/1\n    server s1 127.0.0.1:{sink}\n",
            combined.display()
        ),
    )?;
    let pid = procs.add(procs::spawn(
        "haproxy-tls",
        Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
        dir,
    )?);
    procs::wait_tcp(local(front), "haproxy-tls")?;
    Ok((front, pid))
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

pub(crate) fn start_servers(options: &Options) -> Result<Servers, String> {
    let dir = std::fs::canonicalize(&options.out).map_err(|e| e.to_string())?;
    let mut procs = Procs::default();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;

    // Destinations: helpers (sink, echo, HTTP) and iperf3.
    let (sink, echo, http, iperf) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let echo_once = free_port()?;
    procs.add(procs::spawn(
        "helpers",
        Command::new(&me).args([
            "helpers",
            &sink.to_string(),
            &echo.to_string(),
            &http.to_string(),
            &echo_once.to_string(),
        ]),
        &dir,
    )?);
    procs.add(procs::spawn(
        "iperf3-server",
        Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &iperf.to_string()]),
        &dir,
    )?);

    // haproxy: mode tcp with splice, one frontend per destination.
    let (_, fronts) = spawn_haproxy(&dir, &mut procs, "haproxy", &[iperf, sink, echo_once])?;
    let (h_iperf, h_sink, h_echo) = (fronts[0], fronts[1], fronts[2]);

    // socat with 128 KiB buffers.
    let (s_iperf, s_sink) = (free_port()?, free_port()?);
    for (name, front, back) in [
        ("socat-iperf", s_iperf, iperf),
        ("socat-sink", s_sink, sink),
    ] {
        procs.add(procs::spawn(
            name,
            Command::new("socat").args([
                "-b131072",
                &format!("TCP4-LISTEN:{front},bind=127.0.0.1,reuseaddr,fork"),
                &format!("TCP4:127.0.0.1:{back}"),
            ]),
            &dir,
        )?);
    }

    // dante.
    let d_port = free_port()?;
    let dcfg = write(
        &dir,
        "danted.conf",
        &format!(
            "logoutput: stderr\ninternal: 127.0.0.1 port = {d_port}\nexternal: 127.0.0.1\nsocksmethod: none\nclientmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\nclient pass {{\n    from: 127.0.0.0/8 to: 0.0.0.0/0\n}}\nsocks pass {{\n    from: 127.0.0.0/8 to: 0.0.0.0/0\n}}\n"
        ),
    )?;
    procs.add(procs::spawn(
        "danted",
        Command::new("danted")
            .arg("-f")
            .arg(&dcfg)
            .arg("-p")
            .arg(dir.join("danted.pid")),
        &dir,
    )?);

    // coturn, no authentication, loopback peers allowed, its own relay ports.
    let t_port = free_port()?;
    let relay_base = 40_000 + (t_port % 10_000);
    let coturn = procs::spawn(
        "coturn",
        Command::new("turnserver").args([
            "-n",
            "--no-auth",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            &t_port.to_string(),
            "--min-port",
            &relay_base.to_string(),
            "--max-port",
            &(relay_base + 200).to_string(),
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
            &dir.join("turnserver.pid").display().to_string(),
        ]),
        &dir,
    )
    .ok()
    .map(|p| procs.add(p));

    // Our node: fixed app and keys, loopback allowed, SOCKS5 without auth,
    // and a TLS port when the binary can make a certificate.
    let certificate = make_certificate(&dir, options);
    let tls_port = free_port()?;
    let (cp_pid, a_port, k_port) = spawn_cloudproxy(
        &dir,
        &mut procs,
        options,
        "cloudproxy-serve",
        certificate
            .as_ref()
            .ok()
            .map(|(cert, key, _)| (tls_port, cert.as_path(), key.as_path())),
    )?;
    let tls = match certificate {
        Ok((cert, key, pin)) => {
            procs::wait_tcp(local(tls_port), "cloudproxy tls")?;
            spawn_haproxy_tls(&dir, &mut procs, &cert, &key, sink).map(|(h, h_pid)| TlsServers {
                cloudproxy: local(tls_port),
                haproxy_sink: local(h),
                pin,
                cloudproxy_pid: cp_pid,
                haproxy_pid: h_pid,
            })
        }
        Err(e) => Err(e),
    };
    let f_port = free_port()?;
    procs.add(procs::spawn(
        "cloudproxy-forward",
        Command::new(&options.cloudproxy).args([
            "forward",
            "--log",
            "warn",
            "--server",
            &format!("127.0.0.1:{a_port}"),
            "--app-id",
            APP,
            "--credential",
            SECRET_HEX,
            "--listen",
            &format!("127.0.0.1:{f_port}"),
            "--to",
            &format!("127.0.0.1:{iperf}"),
        ]),
        &dir,
    )?);

    for (port, what) in [
        (sink, "helpers"),
        (iperf, "iperf3"),
        (h_iperf, "haproxy"),
        (s_iperf, "socat"),
        (d_port, "danted"),
        (k_port, "cloudproxy socks5"),
        (f_port, "cloudproxy forward"),
    ] {
        procs::wait_tcp(local(port), what)?;
    }
    let coturn = match coturn {
        Some(pid) if !procs.exited(pid) => Some(local(t_port)),
        _ => None,
    };
    Ok(Servers {
        procs,
        log_dir: dir,
        socat_udp: None,
        iperf,
        haproxy_iperf: h_iperf,
        socat_iperf: s_iperf,
        cp_forward_iperf: f_port,
        sink: local(sink),
        echo: local(echo),
        echo_once: local(echo_once),
        http: local(http),
        haproxy_sink: local(h_sink),
        haproxy_echo: local(h_echo),
        socat_sink: local(s_sink),
        danted: local(d_port),
        coturn,
        cp_allocation: local(a_port),
        cp_socks: local(k_port),
        udp_echo: local(9),
        tls,
    })
}

/// haproxy `mode tcp` with splice, one `listen` per back-end port; returns
/// its PID and the front ports in the same order.
fn spawn_haproxy(
    dir: &Path,
    procs: &mut Procs,
    name: &str,
    backs: &[u16],
) -> Result<(u32, Vec<u16>), String> {
    let mut cfg = String::from(
        "global\n    maxconn 9400\n    maxpipes 256\n    nbthread 2\n\ndefaults\n    mode tcp\n    option splice-auto\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n",
    );
    let mut fronts = Vec::new();
    for (i, back) in backs.iter().enumerate() {
        let front = free_port()?;
        fronts.push(front);
        cfg.push_str(&format!(
            "\nlisten l{i}\n    bind 127.0.0.1:{front}\n    server s1 127.0.0.1:{back}\n"
        ));
    }
    let path = write(dir, &format!("{name}.cfg"), &cfg)?;
    let pid = procs.add(procs::spawn(
        name,
        Command::new("haproxy").arg("-db").arg("-f").arg(&path),
        dir,
    )?);
    procs::wait_tcp(local(fronts[0]), name)?;
    Ok((pid, fronts))
}

/// Our node with a fixed app and keys, loopback allowed, SOCKS5 without
/// authentication; returns its PID, allocation port and SOCKS5 port.
fn spawn_cloudproxy(
    dir: &Path,
    procs: &mut Procs,
    options: &Options,
    name: &str,
    tls: Option<(u16, &Path, &Path)>,
) -> Result<(u32, u16, u16), String> {
    let tls = tls.map_or_else(String::new, |(port, cert, key)| {
        format!(
            "\n[tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    let (a_port, r_port, k_port) = (free_port()?, free_port()?, free_port()?);
    let ccfg = write(
        dir,
        &format!("{name}.toml"),
        &format!(
            r#"[listeners]
bind = "127.0.0.1"
allocation_ports = [{a_port}]
tcp_relay_port = {r_port}
udp_relay_ports = "0-1"

[[apps]]
id = "{APP}"
max_sessions = 100000
secrets = ["{SECRET_HEX}"]

[[ticket_keys]]
key_id = 1
secret = "{TICKET_KEY_HEX}"

[allowlist]
allow = ["127.0.0.1"]

[limits]
idle_timeout_ms = 20000
allocation_lifetime_secs = 3600
# The new-sessions and idle-memory rows bind thousands of connections on
# one allocation (one session); the default of 8 bindings per session
# refused all but the first 8.
max_bindings_per_session = 1000000
max_upstream_sockets_per_app = 100000

[socks5]
enabled = true
port = {k_port}
no_auth_app = "{APP}"
{tls}"#
        ),
    )?;
    let pid = procs.add(procs::spawn(
        name,
        Command::new(&options.cloudproxy)
            .args(["serve", "--log", "warn", "--config"])
            .arg(&ccfg),
        dir,
    )?);
    procs::wait_tcp(local(a_port), name)?;
    procs::wait_tcp(local(k_port), name)?;
    Ok((pid, a_port, k_port))
}

impl Servers {
    /// A fresh haproxy in front of the echo server (for memory figures,
    /// where a process that already freed memory would hide growth).
    pub(crate) fn fresh_haproxy(&mut self) -> Result<(u32, SocketAddr), String> {
        let (pid, fronts) = spawn_haproxy(
            &self.log_dir,
            &mut self.procs,
            "haproxy-idle",
            &[self.echo.port()],
        )?;
        Ok((pid, local(fronts[0])))
    }

    /// A fresh cloudproxy node: PID and allocation address.
    pub(crate) fn fresh_cloudproxy(
        &mut self,
        options: &Options,
    ) -> Result<(u32, SocketAddr), String> {
        let (pid, a, _) = spawn_cloudproxy(
            &self.log_dir.clone(),
            &mut self.procs,
            options,
            "cloudproxy-idle",
            None,
        )?;
        Ok((pid, local(a)))
    }

    pub(crate) fn stop(&mut self, pid: u32) {
        self.procs.stop(pid);
    }

    /// socat serves the first UDP peer it hears from: a fresh one per
    /// repetition, relaying to `sink`.
    pub(crate) fn restart_socat_udp(
        &mut self,
        _options: &Options,
        sink: SocketAddr,
    ) -> Result<SocketAddr, String> {
        if let Some(pid) = self.socat_udp.take() {
            self.procs.stop(pid);
        }
        let port = free_port()?;
        let pid = self.procs.add(procs::spawn(
            "socat-udp",
            Command::new("socat").args([
                "-T",
                "60",
                &format!("UDP4-LISTEN:{port},bind=127.0.0.1,reuseaddr"),
                &format!("UDP4:{sink}"),
            ]),
            &self.log_dir,
        )?);
        self.socat_udp = Some(pid);
        std::thread::sleep(Duration::from_millis(150));
        Ok(local(port))
    }
}
