//! The scenarios of docs/e2e.md. Each starts with the bed its entry in
//! [`super::SCENARIOS`] describes (firewall, fresh nodes), runs the client,
//! and returns its timings or every expectation that failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::bed::{
    ALLOCATION_PORTS, BUMP_PORT, GATEWAY, NODE_A, NODE_B, NTLM_PORT, PROXY_NAME, SQUID, SQUID_PORT,
    TLS_PORT,
};
use super::checks::{
    Checks, DIRECT_TIMEOUT_MS, INTERCEPTED_FAIL_MS, PROXY_AUTH_FAIL_MS, RECONNECT_WINDOW_MS,
    SILENT_FAILOVER_MS, SLACK_MS, STAGGER_MS, TLS_CONNECT_MS, UDP_PROBE_MS, stat,
};
use super::client::{Call, Demo, RunningDemo};
use super::firewall::{Firewall, Proto};
use super::middleboxes::{self, NTLM_DOMAIN, PROXY_USER};
use super::processes::{Node, Peers, in_ns, run_bounded};
use super::{Bed, Outcome};

/// 1. Proxy off: the direct path to the edge is dropped by the firewall; the
///    join fails within the direct timeout with a clear reason.
pub(super) fn proxy_off(bed: &mut Bed) -> Outcome {
    let d = bed.client.demo(&Call {
        proxy: NODE_A,
        params: r#"{"rtc.enable_proxy":false}"#,
        mode: Some("off"),
        seconds: 2,
    })?;
    let mut c = Checks::new();
    c.check(
        !d.ok() && !d.exit_success(),
        "the call fails (ok false, exit non-zero)",
    );
    let error = d.summary.error.as_deref().unwrap_or("");
    c.check(!error.is_empty(), format!("a clear reason: {error:?}"));
    let wall = d.out.elapsed.as_secs_f64() * 1000.0;
    c.check(
        wall <= DIRECT_TIMEOUT_MS + SLACK_MS + 1000.0,
        format!("gave up in {wall:.0} ms (direct timeout {DIRECT_TIMEOUT_MS} ms + slack)"),
    );
    let timings = vec![format!("failed after {wall:.0} ms (process)")];
    c.done(|| d.dump(), timings)
}

/// 2. The guide's `{"rtc.enable_proxy":true}` with the proxy's address: the
///    call works, media over UDP.
pub(super) fn udp_relay(bed: &mut Bed) -> Outcome {
    let d = bed.client.demo(&Call::enabled(NODE_A))?;
    let mut c = Checks::new();
    c.call(&d);
    c.path(&d, "udp");
    c.check(
        d.event("proxy_connected")
            .is_some_and(|e| e["proxy_type"] == "udp"),
        format!(
            "proxy_connected reports udp: {:?}",
            d.event("proxy_connected")
        ),
    );
    c.check(d.summary.fallback_reason.is_none(), "no fallback");
    let connect = d.connect_ms();
    c.check(connect < 3000.0, format!("connected in {connect} ms"));
    bed.baseline_connect_ms = Some(connect);
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 3. No UDP at all out of corp: media over the TCP relay, and the engine
///    says why.
pub(super) fn tcp_fallback(bed: &mut Bed) -> Outcome {
    let d = bed.client.demo(&Call::enabled(NODE_A))?;
    let mut c = Checks::new();
    c.call(&d);
    c.path(&d, "tcp");
    let reason = d.summary.fallback_reason.as_deref().unwrap_or("");
    c.check(!reason.is_empty(), format!("fallback reason: {reason:?}"));
    c.check(
        d.event("media_fallback_to_tcp").is_some(),
        format!(
            "media_fallback_to_tcp event: {:?}",
            d.event("media_fallback_to_tcp")
        ),
    );
    let connect = d.connect_ms();
    c.check(
        connect <= UDP_PROBE_MS + SLACK_MS,
        format!("connected in {connect} ms (UDP probe {UDP_PROBE_MS} ms + slack)"),
    );
    let mut timings = vec![format!("connect incl. fallback {connect:.0} ms")];
    if let Some(base) = bed.baseline_connect_ms {
        timings.push(format!("fallback cost {:.0} ms", connect - base));
    }
    c.done(|| d.dump(), timings)
}

/// 4. Only allocation port 9700 open; the server setting's port is 0, so the
///    client tries 1080, 8000, 25000 (dropped) and 9700.
pub(super) fn only_9700(bed: &mut Bed) -> Outcome {
    let d = bed.client.demo(&Call::enabled(NODE_A))?;
    let mut c = Checks::new();
    c.call(&d);
    c.path(&d, "udp");
    let connect = d.connect_ms();
    let bound = 3.0 * STAGGER_MS + SLACK_MS;
    c.check(
        connect <= bound,
        format!(
            "connected in {connect} ms (three dropped ports cost a stagger each: bound {bound} ms)"
        ),
    );
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 5. `[2, [B, A], 0]` with B black-holed: connects through A within a
///    stagger, not after B's attempt timeout.
pub(super) fn first_address_black_holed(bed: &mut Bed) -> Outcome {
    let d = bed
        .client
        .demo(&Call::enabled(&format!("{NODE_B},{NODE_A}")))?;
    let mut c = Checks::new();
    c.call(&d);
    c.path(&d, "udp");
    let connect = d.connect_ms();
    let bound = STAGGER_MS + SLACK_MS;
    c.check(
        connect <= bound,
        format!("connected in {connect} ms (a silent address costs one stagger: bound {bound} ms)"),
    );
    let sessions = bed.peers.relay_connections()?;
    c.check(sessions == [0, 0], "no relay connection left behind");
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// The node carrying `demo`'s relay connections, once they appear (8 s at
/// most). On an error the demo is collected for the message.
fn node_in_use(bed: &Bed, demo: RunningDemo) -> std::result::Result<(Node, RunningDemo), String> {
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut in_use = Err("no relay connection appeared within 8 s".to_owned());
    while Instant::now() < deadline {
        in_use = match bed.peers.relay_connections() {
            Ok([a, 0]) if a > 0 => Ok(0),
            Ok([0, b]) if b > 0 => Ok(1),
            Ok([0, 0]) => {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(both) => Err(format!("both nodes carry relay connections: {both:?}")),
            Err(e) => Err(e),
        };
        break;
    }
    match in_use {
        Ok(node) => Ok((node, demo)),
        Err(e) => Err(match demo.finish() {
            Ok(d) => format!("{e}\n{}", d.dump()),
            Err(out) => format!("{e}\n{out}"),
        }),
    }
}

/// 6. Two nodes, `[2, [A, B], 0]`; the node carrying the call is killed
///    (SIGKILL) mid-call. The engine reconnects through the other; every
///    message exactly once and in order; media resumes through the
///    survivor.
pub(super) fn node_killed_mid_call(bed: &mut Bed) -> Outcome {
    let running = bed.client.spawn_demo(&Call {
        seconds: 12,
        ..Call::enabled(&format!("{NODE_A},{NODE_B}"))
    })?;
    let mut c = Checks::new();
    let (victim, running) = node_in_use(bed, running)?;
    // Let the call run a while, then kill the node under it.
    thread::sleep(Duration::from_secs(3));
    let killed_at = running.started().elapsed();
    bed.peers.kill_node(victim);
    let survivor = 1 - victim;
    println!(
        "    killed {} (SIGKILL) at {:.1} s into the call",
        Peers::node_name(victim),
        killed_at.as_secs_f64()
    );
    let d = running.finish()?;
    c.call(&d);
    let failovers = d.summary.failovers;
    let failover_ms = &d.summary.failover_ms;
    c.check(failovers >= 1, format!("failovers reported: {failovers}"));
    c.check(
        !failover_ms.is_empty() && failover_ms.iter().all(|&ms| ms <= RECONNECT_WINDOW_MS),
        format!(
            "failover times {failover_ms:?} ms within the reconnect window {RECONNECT_WINDOW_MS} ms"
        ),
    );
    // The survivor carried no relay before the kill; media through it now
    // means media resumed after the failover.
    let log = bed.peers.stop_node(survivor)?;
    let stats = log
        .lines()
        .find(|l| l.contains("proxy node stopped"))
        .unwrap_or("")
        .to_owned();
    let up = stat(&stats, "udp_packets_up");
    let down = stat(&stats, "udp_packets_down");
    let tcp = stat(&stats, "tcp_sessions_total");
    c.check(
        tcp.is_some_and(|n| n > 0),
        format!(
            "{} took the message channel: tcp_sessions_total {tcp:?}",
            Peers::node_name(survivor)
        ),
    );
    c.check(
        up.is_some_and(|n| n > 0) && down.is_some_and(|n| n > 0),
        format!(
            "media resumed through {}: udp_packets_up {up:?}, udp_packets_down {down:?}",
            Peers::node_name(survivor)
        ),
    );
    bed.peers.start_node(victim)?;
    bed.peers.start_node(survivor)?;
    let timings = vec![
        format!("connect {:.0} ms", d.connect_ms()),
        format!("failover {failover_ms:?} ms"),
    ];
    c.done(|| format!("{}\nsurvivor stats: {stats}", d.dump()), timings)
}

/// 7. `[1, "proxy.corp.test", 0]`: the name comes from corp's hosts file;
///    no DNS query leaves corp.
pub(super) fn domain_from_hosts_file(bed: &mut Bed) -> Outcome {
    let mut c = Checks::new();
    let lookup = run_bounded(
        in_ns(&bed.net.corp, "getent").args(["hosts", PROXY_NAME]),
        Duration::from_secs(10),
    )?;
    c.check(
        lookup.stdout.contains(NODE_A),
        format!("{PROXY_NAME} resolves in corp: {:?}", lookup.stdout.trim()),
    );
    let drops_before = bed.net.dns_drops()?;
    let d = bed.client.demo(&Call::enabled(PROXY_NAME))?;
    c.call(&d);
    c.path(&d, "udp");
    let drops = bed.net.dns_drops()? - drops_before;
    c.check(
        drops == 0,
        format!("no DNS query left corp (dropped: {drops})"),
    );
    let connect = d.connect_ms();
    c.done(|| d.dump(), vec![format!("connect {connect:.0} ms")])
}

/// 8. `cloudproxy probe` in corp, for the rule sets of scenarios 2, 3 and 4
///    (and none at all): exactly the ports the firewall allows open, the
///    rest timing out (dropped), the right verdict and missing rules.
pub(super) fn probe_reports_open_ports(bed: &mut Bed) -> Outcome {
    let mut c = Checks::new();
    let mut timings = Vec::new();
    let mut dumps = String::new();
    let rule_sets = [
        (Firewall::whitelist(), "works_over_udp", true),
        (Firewall::udp_blocked(), "works_only_over_tcp", true),
        (Firewall::only_9700(), "works_over_udp", true),
        (Firewall::nothing(), "does_not_work", false),
    ];
    for (firewall, want_verdict, want_exit) in rule_sets {
        let rules = firewall.name;
        bed.net.set_firewall(&firewall)?;
        let probe = bed.client.probe(NODE_A)?;
        let (out, report) = (&probe.out, &probe.report);
        let _ = writeln!(dumps, "--- {rules}\n{}", out.stdout.trim());
        timings.push(format!("{rules} probe {} ms", out.elapsed.as_millis()));
        let mut seen: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        let mut expected_missing = Vec::new();
        for check in &report.checks {
            let (protocol, role, address, state) = (
                check.protocol.as_str(),
                check.role.as_str(),
                check.address.as_str(),
                check.state.as_str(),
            );
            let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
            let port: u16 = port.parse().unwrap_or(0);
            let proto = if protocol == "UDP" {
                Proto::Udp
            } else {
                Proto::Tcp
            };
            let want = if firewall.allows(proto, host, port) {
                "open"
            } else {
                "timeout"
            };
            c.check(
                state == want,
                format!("{rules}: {protocol} {role} {address} is {state} (expected {want})"),
            );
            if want != "open" {
                expected_missing.push(format!("allow {protocol} to {host} port {port} ({role})"));
            }
            seen.entry((protocol, role)).or_default().push(address);
        }
        // Every allocation port over both protocols was checked; the relays
        // only when an allocation got through.
        for protocol in ["TCP", "UDP"] {
            let mut ports: Vec<String> = seen
                .get(&(protocol, "allocation"))
                .map(|a| a.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_default();
            ports.sort();
            let mut want: Vec<String> = ALLOCATION_PORTS.map(|p| format!("{NODE_A}:{p}")).to_vec();
            want.sort();
            c.check(
                ports == want,
                format!("{rules}: {protocol} allocation ports checked: {ports:?}"),
            );
        }
        let relays_checked = seen.contains_key(&("TCP", "message relay"))
            && seen.contains_key(&("UDP", "media relay"));
        c.check(
            relays_checked == (firewall != Firewall::nothing()),
            format!("{rules}: relays checked: {relays_checked}"),
        );
        let verdict = report.verdict.as_str();
        c.check(
            verdict == want_verdict,
            format!("{rules}: verdict {verdict}"),
        );
        c.check(
            out.status.is_some_and(|s| s.success()) == want_exit,
            format!(
                "{rules}: exit status {:?}",
                out.status.and_then(|s| s.code())
            ),
        );
        let mut missing = report.missing_rules.clone();
        missing.sort();
        expected_missing.sort();
        c.check(
            missing == expected_missing,
            format!("{rules}: missing rules {missing:?}"),
        );
        c.check(
            report.proxy_refusal.is_none(),
            format!("{rules}: no proxy refusal"),
        );
    }
    c.done(|| dumps, timings)
}

/// 12. Two nodes, `[2, [A, B], 0]`; the node carrying the call is
///     black-holed in both directions mid-call (nft drop: nothing closes,
///     nothing is refused). The engines suspect the silence from the acks
///     their messages lack, probe, and fail over to the other node within
///     3 s of the black hole; every message exactly once, in order.
pub(super) fn node_black_holed_mid_call(bed: &mut Bed) -> Outcome {
    let running = bed.client.spawn_demo(&Call {
        seconds: 12,
        ..Call::enabled(&format!("{NODE_A},{NODE_B}"))
    })?;
    let mut c = Checks::new();
    let (victim, running) = node_in_use(bed, running)?;
    let survivor = 1 - victim;
    // Let the call run a while, then black-hole the node under it.
    thread::sleep(Duration::from_secs(3));
    let engines = bed.peers.relay_connections()?[victim];
    let holed = Instant::now();
    let holed_at = running.started().elapsed();
    bed.net
        .set_firewall(&Firewall::whitelist().black_hole(Peers::node_addr(victim)))?;
    println!(
        "    black-holed {} at {:.1} s into the call ({engines} relay connections on it)",
        Peers::node_name(victim),
        holed_at.as_secs_f64()
    );
    // Failed over: the survivor carries every engine's message channel.
    let mut moved_ms = None;
    while holed.elapsed() < Duration::from_secs(10) {
        if bed
            .peers
            .relay_connections()
            .is_ok_and(|n| n[survivor] >= engines.max(1))
        {
            moved_ms = Some(holed.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let d = running.finish()?;
    c.call(&d);
    c.check(
        moved_ms.is_some_and(|ms| ms <= SILENT_FAILOVER_MS),
        format!(
            "{} carries all {engines} engines {moved_ms:?} ms after the black hole (bound {SILENT_FAILOVER_MS} ms)",
            Peers::node_name(survivor)
        ),
    );
    let failovers = d.summary.failovers;
    let failover_ms = &d.summary.failover_ms;
    c.check(
        failovers >= engines.max(1) as u64,
        format!("failovers reported: {failovers}"),
    );
    let silent = d
        .summary
        .events
        .iter()
        .filter(|e| e["state"] == "reconnecting" && e["reason"] == "relay_silent")
        .count();
    c.check(
        silent >= 1,
        format!("the loss is reported as RelaySilent ({silent} engines), not a keepalive timeout"),
    );
    c.check(
        failover_ms.iter().all(|&ms| ms <= SILENT_FAILOVER_MS),
        format!("reconnects {failover_ms:?} ms within {SILENT_FAILOVER_MS} ms"),
    );
    let log = bed.peers.stop_node(survivor)?;
    let stats = log
        .lines()
        .find(|l| l.contains("proxy node stopped"))
        .unwrap_or("")
        .to_owned();
    let up = stat(&stats, "udp_packets_up");
    let down = stat(&stats, "udp_packets_down");
    c.check(
        up.is_some_and(|n| n > 0) && down.is_some_and(|n| n > 0),
        format!(
            "media resumed through {}: udp_packets_up {up:?}, udp_packets_down {down:?}",
            Peers::node_name(survivor)
        ),
    );
    bed.net.set_firewall(&Firewall::whitelist())?;
    bed.peers.restart_nodes()?;
    let timings = vec![
        format!("connect {:.0} ms", d.connect_ms()),
        format!(
            "black hole to failover {}",
            moved_ms.map_or("—".to_owned(), |ms| format!("{ms:.0} ms"))
        ),
        format!("reconnect {failover_ms:?} ms"),
    ];
    c.done(|| format!("{}\nsurvivor stats: {stats}", d.dump()), timings)
}

/// The app's parameters for a client that pins node A's certificate and,
/// with `http_proxy`, goes through that proxy.
fn tls_params(bed: &Bed, http_proxy: Option<&str>) -> String {
    let pin = bed.peers.pin(0);
    match http_proxy {
        Some(proxy) => format!(
            r#"{{"rtc.enable_proxy":true,"rtc.proxy_tls_pin":"{pin}","rtc.http_proxy":"{proxy}"}}"#
        ),
        None => format!(r#"{{"rtc.enable_proxy":true,"rtc.proxy_tls_pin":"{pin}"}}"#),
    }
}

/// What a call over a TLS rung shares: it worked, over `path`, and the
/// `proxy_connected` event names the same rung.
fn tls_call(c: &mut Checks, d: &Demo, path: &str) {
    c.call(d);
    c.path(d, path);
    c.check(
        d.event("proxy_connected")
            .is_some_and(|e| e["proxy_type"] == path),
        format!(
            "proxy_connected reports {path}: {:?}",
            d.event("proxy_connected")
        ),
    );
}

/// 9. Only TCP 443 to the nodes: no UDP, no 4000, no allocation port. The
///    ladder's TLS rung (node A's certificate pinned) carries allocation,
///    messages and media; connected within 2 s.
pub(super) fn only_tls_443(bed: &mut Bed) -> Outcome {
    let params = tls_params(bed, None);
    let d = bed.client.demo(&Call {
        params: &params,
        ..Call::enabled(NODE_A)
    })?;
    let mut c = Checks::new();
    tls_call(&mut c, &d, "tls");
    let connect = d.connect_ms();
    c.check(
        connect <= TLS_CONNECT_MS,
        format!("connected in {connect} ms (bound {TLS_CONNECT_MS} ms)"),
    );
    c.done(
        || d.dump(),
        vec![format!("connect over TLS {connect:.0} ms")],
    )
}

/// 10. 443 only through a DPI gateway (haproxy, `reject unless
///     req.ssl_hello_type 1`) in front of node A's TLS port: the call works
///     over TLS, and a connection that opens with anything but a
///     ClientHello is closed by the gateway with nothing sent back.
pub(super) fn dpi_gateway(bed: &mut Bed) -> Outcome {
    let gateway = middleboxes::dpi_gateway(&bed.net.cloud, &bed.dir)?;
    let params = tls_params(bed, None);
    let d = bed.client.demo(&Call {
        params: &params,
        ..Call::enabled(GATEWAY)
    })?;
    let mut c = Checks::new();
    tls_call(&mut c, &d, "tls");
    let connect = d.connect_ms();
    c.check(
        connect <= TLS_CONNECT_MS,
        format!("connected through the gateway in {connect} ms (bound {TLS_CONNECT_MS} ms)"),
    );
    // Plain TCP on 443: bytes of a cloudproxy frame header, not a TLS
    // record. socat gives up after 8 s of silence; the gateway must close
    // first, with nothing sent back.
    let plain = run_bounded(
        in_ns(&bed.net.corp, "bash").args([
            "-c",
            &format!("printf '\\000\\030plain cloudproxy frame' | socat -T 8 - TCP:{GATEWAY}:{TLS_PORT} | wc -c"),
        ]),
        Duration::from_secs(12),
    )?;
    let plain_ms = plain.elapsed.as_secs_f64() * 1000.0;
    let answered = plain.stdout.trim().parse::<u64>().ok();
    c.check(
        answered == Some(0),
        format!(
            "the plain-TCP attempt got nothing back (bytes: {answered:?}, {})",
            plain.stderr.trim()
        ),
    );
    c.check(
        plain_ms < 6000.0,
        format!(
            "the gateway closed the plain-TCP attempt in {plain_ms:.0} ms (before socat's 8 s)"
        ),
    );
    let log = gateway.log();
    drop(gateway);
    c.done(
        || format!("{}\nhaproxy log:\n{log}", d.dump()),
        vec![
            format!("connect over TLS via gateway {connect:.0} ms"),
            format!("plain TCP closed in {plain_ms:.0} ms"),
        ],
    )
}

/// 11. No route and no DNS out of corp: only squid on 3128 (Basic auth,
///     CONNECT to 443 only). The call goes TLS-through-CONNECT to node A
///     (given by its address: corp can resolve no name, and the client
///     sends the address it was given in its CONNECT). A wrong password is
///     a typed `proxy_auth_failed` within 2 s and a non-zero exit.
pub(super) fn http_proxy_basic_auth(bed: &mut Bed) -> Outcome {
    let password = "horse-11";
    let (squid, access_log) = middleboxes::squid_basic_auth(&bed.net.cloud, &bed.dir, password)?;
    let wrong = "wrong-pw-11";
    let run = through_authenticating_squid(
        bed,
        &format!("http://{PROXY_USER}:{password}@{SQUID}:{SQUID_PORT}"),
        &format!("http://{PROXY_USER}:{wrong}@{SQUID}:{SQUID_PORT}"),
        wrong,
        None,
        &access_log,
    )?;
    drop(squid);
    run.done("", "connect via squid", "wrong password refused")
}

/// What scenarios 11 and 14 run through an authenticating squid: with the
/// right password the call goes TLS-through-CONNECT to node A and squid's
/// access log shows the user; with `wrong` it fails as `proxy_auth_failed`
/// (naming `scheme` when given) within the bound, exit non-zero, and
/// `wrong` appears in no error or event.
fn through_authenticating_squid(
    bed: &mut Bed,
    good_proxy: &str,
    wrong_proxy: &str,
    wrong: &str,
    scheme: Option<&str>,
    access_log: &Path,
) -> crate::Result<AuthRun> {
    let mut c = Checks::new();
    let params = tls_params(bed, Some(good_proxy));
    let d = bed.client.demo(&Call {
        params: &params,
        ..Call::enabled(NODE_A)
    })?;
    tls_call(&mut c, &d, "http-proxy");
    let access = std::fs::read_to_string(access_log).unwrap_or_default();
    c.check(
        access.contains(&format!("CONNECT {NODE_A}:{TLS_PORT} {PROXY_USER}")),
        format!("squid's access log shows {PROXY_USER}'s CONNECT to {NODE_A}:{TLS_PORT}"),
    );
    let params = tls_params(bed, Some(wrong_proxy));
    let w = bed.client.demo(&Call {
        params: &params,
        ..Call::enabled(NODE_A)
    })?;
    let kind = w.summary.error_kind.as_deref();
    let error = w.summary.error.clone().unwrap_or_default();
    c.check(
        !w.ok() && !w.exit_success(),
        "with a wrong password the call fails (ok false, exit non-zero)",
    );
    c.check(
        kind == Some("proxy_auth_failed") && scheme.is_none_or(|s| error.contains(s)),
        format!(
            "error_kind proxy_auth_failed{} (got {kind:?}, error {error:?})",
            scheme.map_or(String::new(), |s| format!(" naming {s}"))
        ),
    );
    c.check(
        !error.contains(wrong) && !w.out.stdout.contains(wrong),
        "the password appears in no error or event",
    );
    let refused_ms = w.out.elapsed.as_secs_f64() * 1000.0;
    c.check(
        refused_ms <= PROXY_AUTH_FAIL_MS,
        format!("the wrong password failed in {refused_ms:.0} ms (bound {PROXY_AUTH_FAIL_MS} ms, process)"),
    );
    Ok(AuthRun {
        checks: c,
        good: d,
        wrong: w,
        access,
        refused_ms,
    })
}

/// One run of [`through_authenticating_squid`].
struct AuthRun {
    checks: Checks,
    good: Demo,
    wrong: Demo,
    access: String,
    refused_ms: f64,
}

impl AuthRun {
    /// The scenario's outcome; `squid_log` (its cache log's tail) goes into
    /// the failure dump.
    fn done(self, squid_log: &str, connected: &str, refused: &str) -> Outcome {
        let Self {
            checks,
            good,
            wrong,
            access,
            refused_ms,
        } = self;
        let connect = good.connect_ms();
        checks.done(
            || {
                format!(
                    "{}\n--- wrong password\n{}\nsquid access log:\n{access}\nsquid:\n{squid_log}",
                    good.dump(),
                    wrong.dump(),
                )
            },
            vec![
                format!("{connected} {connect:.0} ms"),
                format!("{refused} in {refused_ms:.0} ms (process)"),
            ],
        )
    }
}

/// 14 (A1). The only way out is squid demanding NTLM, verified by the
///     project's NTLMv2 helper: `CORP\e2e-user` with the right password
///     connects over TLS through CONNECT (three legs on one connection); a
///     wrong password fails as `proxy_auth_failed` naming NTLM within 2 s.
pub(super) fn http_proxy_ntlm(bed: &mut Bed) -> Outcome {
    let password = "ntlm-14-pw";
    let (squid, access_log) = middleboxes::squid_ntlm(&bed.net.cloud, &bed.dir, password)?;
    let wrong = "wrong-pw";
    // The backslash percent-encoded, as in a URL.
    let run = through_authenticating_squid(
        bed,
        &format!("http://{NTLM_DOMAIN}%5C{PROXY_USER}:{password}@{SQUID}:{NTLM_PORT}"),
        &format!("http://{NTLM_DOMAIN}%5C{PROXY_USER}:{wrong}@{SQUID}:{NTLM_PORT}"),
        wrong,
        Some("NTLM"),
        &access_log,
    )?;
    let log = squid.log();
    drop(squid);
    run.done(
        &tail_lines(&log, 20),
        "connect via NTLM",
        "wrong password refused (NTLM)",
    )
}

/// 13. The only way out is squid-openssl bumping TLS with its own CA. The
///     client pins node A's certificate, so the squid-made one fails at
///     once: `untrusted_certificate`, a message that says so, exit ≠ 0.
pub(super) fn tls_intercepted(bed: &mut Bed) -> Outcome {
    let squid = middleboxes::squid_ssl_bump(&bed.net.cloud, &bed.dir)?;
    let proxy = format!("http://{SQUID}:{BUMP_PORT}");
    let params = tls_params(bed, Some(&proxy));
    let d = bed.client.demo(&Call {
        params: &params,
        ..Call::enabled(NODE_A)
    })?;
    let mut c = Checks::new();
    let kind = d.summary.error_kind.as_deref();
    let error = d
        .summary
        .error
        .as_deref()
        .unwrap_or("")
        .to_ascii_lowercase();
    c.check(
        !d.ok() && !d.exit_success(),
        "the call fails (ok false, exit non-zero)",
    );
    c.check(
        kind == Some("untrusted_certificate"),
        format!("error_kind untrusted_certificate (got {kind:?})"),
    );
    c.check(
        error.contains("trust") || error.contains("intercept"),
        format!("the reason says the certificate is not trusted: {error:?}"),
    );
    let failed_ms = d.out.elapsed.as_secs_f64() * 1000.0;
    c.check(
        failed_ms <= INTERCEPTED_FAIL_MS,
        format!("failed in {failed_ms:.0} ms (bound {INTERCEPTED_FAIL_MS} ms, process)"),
    );
    let log = squid.log();
    drop(squid);
    c.done(
        || format!("{}\nsquid:\n{}", d.dump(), tail_lines(&log, 20)),
        vec![format!("failed (untrusted) in {failed_ms:.0} ms (process)")],
    )
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
