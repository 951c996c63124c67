//! The enterprise boxes of issue 16's scenarios, real ones from Debian,
//! each started by the scenario that needs it in `cloud` and stopped (by
//! PID, when its [`Daemon`] is dropped) when that scenario ends:
//!
//! - a DPI gateway: haproxy in TCP mode that lets through only connections
//!   opening with a TLS ClientHello (scenario 10);
//! - an explicit HTTP proxy: squid with Basic authentication
//!   (`basic_ncsa_auth`), CONNECT allowed to port 443 only (scenario 11);
//! - a TLS-intercepting proxy: squid-openssl with `ssl_bump bump all` and
//!   its own CA, which the client does not trust (scenario 13).
//!
//! Their configs, password file, CA and certificate database live in the
//! run's directory under `target/e2e/`, removed with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::bed::{BUMP_PORT, GATEWAY, NODE_A, NTLM_PORT, SQUID, SQUID_PORT, TLS_PORT};
use super::processes::{Daemon, must, run_bounded};
use crate::Result;

/// What the scenarios run, and the Debian package each comes from.
/// `squid-openssl` conflicts with (and replaces) `squid`; it serves both
/// squid scenarios.
pub(super) const DEBIAN_TOOLS: [(&str, &str); 6] = [
    ("/usr/bin/python3", "python3"),
    ("/usr/sbin/haproxy", "haproxy"),
    ("/usr/sbin/squid", "squid-openssl"),
    (CERTGEN, "squid-openssl"),
    ("/usr/bin/openssl", "openssl"),
    ("/usr/bin/socat", "socat"),
];

const CERTGEN: &str = "/usr/lib/squid/security_file_certgen";
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

/// The proxy user squid's password file knows.
pub(super) const PROXY_USER: &str = "e2e-user";

/// Installs what [`DEBIAN_TOOLS`] lists and is missing.
pub(super) fn provision() -> Result {
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(bin, _)| !Path::new(bin).is_file())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    crate::provision::apt_install(
        "e2e scenarios 10, 11 and 13 run haproxy, squid-openssl, openssl and socat",
        &missing,
    )?;
    // Debian starts the packaged squid and haproxy services on the host;
    // the scenarios run their own in `cloud` and need nothing from those.
    Ok(())
}

/// A directory squid (which drops to the `proxy` user) can read and write.
fn squid_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    must(Command::new("chown").arg("proxy:proxy").arg(&path))?;
    Ok(path)
}

/// haproxy in TCP mode on the gateway's 443: a connection whose first bytes
/// are not a TLS ClientHello is rejected; the rest goes on to node A's TLS
/// port untouched (no termination).
pub(super) fn dpi_gateway(cloud: &str, dir: &Path) -> Result<Daemon> {
    let config = format!(
        "# cloudproxy e2e scenario 10: a DPI gateway that passes only TLS
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend dpi
    bind {GATEWAY}:{TLS_PORT}
    tcp-request inspect-delay 5s
    tcp-request content reject unless {{ req.ssl_hello_type 1 }}
    default_backend node_a

backend node_a
    server node_a {NODE_A}:{TLS_PORT}
"
    );
    let path = dir.join("haproxy-dpi.cfg");
    std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Daemon::start_listening(
        cloud,
        "haproxy",
        &["-db", "-f", &path.to_string_lossy()],
        dir.join("haproxy-dpi.log"),
        &format!("{GATEWAY}:{TLS_PORT}"),
    )
}

/// What every squid of the bed shares: no cache, no DNS (names come from
/// `hosts_file`), its files in `home`.
fn squid_common(home: &Path) -> String {
    let h = home.display();
    format!(
        "pid_filename none
cache_log {h}/cache.log
access_log stdio:{h}/access.log
cache deny all
hosts_file {h}/hosts
dns_nameservers 127.0.0.1
coredump_dir {h}
shutdown_lifetime 0 seconds
"
    )
}

fn start_squid(cloud: &str, home: &Path, config: &str, port: u16) -> Result<Daemon> {
    let path = home.join("squid.conf");
    std::fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
    std::fs::write(home.join("hosts"), format!("{NODE_A} node-a.cloud.test\n"))
        .map_err(|e| format!("writing squid's hosts file: {e}"))?;
    let check = run_bounded(
        Command::new("squid").args(["-k", "parse", "-f", &path.to_string_lossy()]),
        Duration::from_secs(20),
    )?;
    if !check.status.is_some_and(|s| s.success()) {
        return Err(format!(
            "squid -k parse rejected {}:\n{}{}",
            path.display(),
            check.stdout,
            check.stderr
        ));
    }
    Daemon::start_listening(
        cloud,
        "squid",
        &["-N", "-d", "1", "-f", &path.to_string_lossy()],
        home.join("squid.out"),
        &format!("{SQUID}:{port}"),
    )
}

/// squid on 3128 with Basic authentication: `user` with `password` (an
/// APR1 hash from `openssl passwd -apr1`, which `basic_ncsa_auth` reads);
/// CONNECT only to port 443 and only for authenticated users.
pub(super) fn squid_basic_auth(
    cloud: &str,
    dir: &Path,
    password: &str,
) -> Result<(Daemon, PathBuf)> {
    let home = squid_dir(dir, "squid-auth")?;
    let hash = run_bounded(
        Command::new("openssl").args(["passwd", "-apr1", password]),
        Duration::from_secs(10),
    )?;
    let hash = hash.stdout.trim();
    if !hash.starts_with("$apr1$") {
        return Err(format!("openssl passwd -apr1 printed {hash:?}"));
    }
    let passwd = home.join("passwd");
    std::fs::write(&passwd, format!("{PROXY_USER}:{hash}\n"))
        .map_err(|e| format!("writing {}: {e}", passwd.display()))?;
    let config = format!(
        "# cloudproxy e2e scenario 11: an explicit proxy with Basic auth
http_port {SQUID}:{SQUID_PORT}
{common}auth_param basic program {NCSA_AUTH} {passwd}
auth_param basic children 2
auth_param basic realm cloudproxy-e2e
acl authenticated proxy_auth REQUIRED
acl tls_port port 443
acl CONNECT method CONNECT
http_access deny !CONNECT
http_access deny CONNECT !tls_port
http_access allow CONNECT authenticated
http_access deny all
",
        common = squid_common(&home),
        passwd = passwd.display(),
    );
    let squid = start_squid(cloud, &home, &config, SQUID_PORT)?;
    Ok((squid, home.join("access.log")))
}

/// The project's NTLM helper for squid: a challenge with target info, and
/// the NTLMv2 response checked against one user and password. squid's own
/// `ntlm_fake_auth` accepts any password (and sends a malformed challenge).
const NTLMV2_HELPER: &str = include_str!("helpers/ntlmv2_auth.py");

/// The NTLM domain of scenario 14.
pub(super) const NTLM_DOMAIN: &str = "CORP";

/// squid on 3130 demanding NTLM (no other scheme) from `CORP\e2e-user`
/// with `password`; CONNECT only to port 443 and only when authenticated.
pub(super) fn squid_ntlm(cloud: &str, dir: &Path, password: &str) -> Result<(Daemon, PathBuf)> {
    let home = squid_dir(dir, "squid-ntlm")?;
    let helper = home.join("ntlmv2_auth.py");
    std::fs::write(&helper, NTLMV2_HELPER)
        .map_err(|e| format!("writing {}: {e}", helper.display()))?;
    let config = format!(
        "# cloudproxy e2e scenario 14 (A1): an explicit proxy demanding NTLM
http_port {SQUID}:{NTLM_PORT}
{common}auth_param ntlm program /usr/bin/python3 {helper} {NTLM_DOMAIN} {PROXY_USER} {password}
auth_param ntlm children 2
acl authenticated proxy_auth REQUIRED
acl tls_port port 443
acl CONNECT method CONNECT
http_access deny !CONNECT
http_access deny CONNECT !tls_port
http_access allow CONNECT authenticated
http_access deny all
",
        common = squid_common(&home),
        helper = helper.display(),
    );
    must(Command::new("chown").args(["-R", "proxy:proxy"]).arg(&home))?;
    let squid = start_squid(cloud, &home, &config, NTLM_PORT)?;
    Ok((squid, home.join("access.log")))
}

/// squid-openssl on 3129 bumping every CONNECT with certificates its own CA
/// signs (generated here with openssl; nobody trusts it).
pub(super) fn squid_ssl_bump(cloud: &str, dir: &Path) -> Result<Daemon> {
    let home = squid_dir(dir, "squid-bump")?;
    let (ca, ca_key) = (home.join("ca.pem"), home.join("ca-key.pem"));
    must(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=cloudproxy e2e intercepting CA"])
            .args(["-addext", "basicConstraints=critical,CA:true"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    )?;
    // The certificate database must not exist yet; certgen creates it.
    let db = home.join("ssl_db");
    must(
        Command::new(CERTGEN)
            .arg("-c")
            .arg("-s")
            .arg(&db)
            .args(["-M", "4MB"]),
    )?;
    must(Command::new("chown").args(["-R", "proxy:proxy"]).arg(&home))?;
    let config = format!(
        "# cloudproxy e2e scenario 13: TLS interception (ssl-bump, own CA)
http_port {SQUID}:{BUMP_PORT} ssl-bump tls-cert={ca} tls-key={ca_key} generate-host-certificates=on dynamic_cert_mem_cache_size=4MB
{common}sslcrtd_program {CERTGEN} -s {db} -M 4MB
sslcrtd_children 2
ssl_bump bump all
sslproxy_cert_error allow all
tls_outgoing_options flags=DONT_VERIFY_PEER
acl tls_port port 443
acl CONNECT method CONNECT
http_access allow CONNECT tls_port
http_access allow all
",
        common = squid_common(&home),
        ca = ca.display(),
        ca_key = ca_key.display(),
        db = db.display(),
    );
    start_squid(cloud, &home, &config, BUMP_PORT)
}
