//! The node's metrics in the OpenMetrics text format, read from the
//! [`Stats`](crate::stats::Stats) atomics at scrape time (a
//! prometheus-client [`Collector`]: nothing is counted twice) plus the two
//! [`Timings`](crate::stats::Timings) histograms.
//!
//! Cardinality rule: every label value comes from a fixed list in this file
//! (transport, direction, outcome, reason). No label carries an app id, a
//! user, a session, an address or a destination, so what clients send cannot
//! add series. `docs/operations.md` lists every metric.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::shared::Shared;

/// The version in `cloudproxy_build_info`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the registry of one node: the collector over its counters and its
/// histograms, all under the `cloudproxy_` prefix.
pub(crate) fn registry(shared: &Arc<Shared>) -> Registry {
    let mut registry = Registry::with_prefix("cloudproxy");
    registry.register_with_unit(
        "session_duration",
        "How long relay sessions (TCP streams, UDP bindings, UDP-over-TCP datagram sessions, SOCKS5) lasted",
        Unit::Seconds,
        shared.timings.session_duration.clone(),
    );
    registry.register_with_unit(
        "allocation_latency",
        "Time from an allocation request's arrival to the node's accepting reply",
        Unit::Seconds,
        shared.timings.allocation_latency.clone(),
    );
    registry.register_collector(Box::new(NodeCollector {
        shared: Arc::clone(shared),
    }));
    registry
}

/// The registry of an admin listener whose node has not started yet: build
/// info, `ready 0` and `draining 0`, so a node stuck before its listeners
/// bind is visible to a scraper (and to the `CloudproxyNotReady` alert).
pub(crate) fn unattached_registry() -> Registry {
    let mut registry = Registry::with_prefix("cloudproxy");
    registry.register_collector(Box::new(UnattachedCollector));
    registry
}

#[derive(Debug)]
struct UnattachedCollector;

impl Collector for UnattachedCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        readiness(&mut e, false, false)
    }
}

/// `build_info`, `ready` and `draining`: what a scrape shows with or without
/// a node.
fn readiness(
    e: &mut DescriptorEncoder<'_>,
    ready: bool,
    draining: bool,
) -> Result<(), std::fmt::Error> {
    gauge(
        e,
        "build_info",
        "Always 1; the label says which version runs",
        &[(&[("version", VERSION)], 1)],
    )?;
    gauge(
        e,
        "ready",
        "1 while every listener is bound and the node is not draining",
        &[(&[], u64::from(ready))],
    )?;
    gauge(
        e,
        "draining",
        "1 once a drain (on demand or for shutdown) has started",
        &[(&[], u64::from(draining))],
    )
}

/// Renders `registry` as OpenMetrics text (ending in `# EOF`).
pub(crate) fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail, and no collector here returns an error.
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("encoding metrics into a String does not fail");
    out
}

/// Renders `registry` in the classic Prometheus text format (0.0.4), for
/// scrapers that do not ask for OpenMetrics and for `promtool check
/// metrics`: the same series, with counters' `HELP` and `TYPE` lines naming
/// the `_total` series, and without `# UNIT` and `# EOF`.
pub(crate) fn render_classic(registry: &Registry) -> String {
    let open = render(registry);
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        if let Some(prefix) = comment {
            let rest = &line[prefix.len()..];
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Reads the node's counters at every scrape.
struct NodeCollector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

/// One series: its label pairs and its value.
type Series<'a> = (&'a [(&'static str, &'static str)], u64);

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[Series<'_>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let &[(&[], value)] = series {
        // One series without labels: no braces.

        let c = ConstCounter::new(value);
        return c.encode(metric);
    }
    for &(labels, value) in series {
        let c = ConstCounter::new(value);
        c.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[Series<'_>],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let &[(&[], value)] = series {
        // One series without labels: no braces.

        let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        return g.encode(metric);
    }
    for &(labels, value) in series {
        let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        g.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Descriptors open in this process, from `/proc/self/fd` (Linux).
fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as u64)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.shared.stats.snapshot();
        let draining = !self.shared.lifecycle.is_accepting();
        // Attached means every listener is bound: ready unless draining.
        readiness(&mut e, !draining, draining)?;
        counter(
            &mut e,
            "allocations",
            "Allocation requests answered, by outcome",
            &[
                (&[("outcome", "accepted")], s.allocations),
                (&[("outcome", "refused")], s.allocations_refused),
            ],
        )?;
        counter(
            &mut e,
            "bindings_refused",
            "Relay bindings refused (bad or expired ticket, destination, quota, malformed)",
            &[(&[], s.bindings_refused)],
        )?;
        counter(
            &mut e,
            "refusals",
            "Allocations and bindings refused, by reason: transport not allowed, session too old, node shutting down, handshake timeout, destination, name-lookup budget, quota",
            &[
                (&[("reason", "transport_not_allowed")], s.transport_refused),
                (&[("reason", "session_too_old")], s.session_too_old_refused),
                (&[("reason", "server_busy")], s.server_busy_refused),
                (&[("reason", "handshake_timeout")], s.handshake_timeouts),
                (&[("reason", "destination")], s.destinations_refused),
                (&[("reason", "lookup_budget")], s.lookups_refused),
                (&[("reason", "quota")], s.quota_refused),
            ],
        )?;
        counter(
            &mut e,
            "quota_refusals",
            "Allocations and bindings refused by a quota (sessions, bindings, upstream sockets)",
            &[(&[], s.quota_refused)],
        )?;
        counter(
            &mut e,
            "login_failures",
            "Failed logins on every listener, by reason: an unknown app or wrong proof, a bad or expired ticket, a wrong SOCKS5 password, or refused unchecked because the source is over its limit",
            &[
                (
                    &[("reason", "bad_credential")],
                    s.login_failures_bad_credential,
                ),
                (&[("reason", "bad_ticket")], s.login_failures_bad_ticket),
                (
                    &[("reason", "expired_ticket")],
                    s.login_failures_expired_ticket,
                ),
                (
                    &[("reason", "socks5_password")],
                    s.login_failures_socks5_password,
                ),
                (&[("reason", "rate_limited")], s.logins_rate_limited),
            ],
        )?;
        counter(
            &mut e,
            "login_limit_engaged",
            "Times a source's login-failure limit engaged",
            &[(&[], s.login_limit_engaged)],
        )?;
        counter(
            &mut e,
            "socks5_auth_refused",
            "SOCKS5 clients refused at authentication",
            &[(&[], s.socks5_auth_refused)],
        )?;
        counter(
            &mut e,
            "handshake_timeouts",
            "Connections closed because their handshake did not finish in time",
            &[(&[], s.handshake_timeouts)],
        )?;
        gauge(
            &mut e,
            "sessions_active",
            "Relay sessions now open: transport tcp is TCP relay and SOCKS5 connections, udp is UDP bindings",
            &[
                (&[("transport", "tcp")], s.tcp_sessions_active),
                (&[("transport", "udp")], s.udp_bindings_active),
            ],
        )?;
        counter(
            &mut e,
            "sessions",
            "Relay sessions opened since start (tcp: TCP relay and SOCKS5 connections; udp: UDP bindings)",
            &[
                (&[("transport", "tcp")], s.tcp_sessions_total),
                (&[("transport", "udp")], s.udp_bindings_total),
            ],
        )?;
        counter(
            &mut e,
            "sessions_ended",
            "Relay sessions ended, by transport (as in cloudproxy_sessions_total) and outcome",
            &[
                (
                    &[("transport", "tcp"), ("outcome", "closed")],
                    s.tcp_sessions_closed,
                ),
                (
                    &[("transport", "tcp"), ("outcome", "idle_timeout")],
                    s.tcp_sessions_idle_timeout,
                ),
                (
                    &[("transport", "tcp"), ("outcome", "session_lifetime")],
                    s.tcp_sessions_lifetime,
                ),
                (
                    &[("transport", "tcp"), ("outcome", "client_error")],
                    s.tcp_sessions_client_error,
                ),
                (
                    &[("transport", "tcp"), ("outcome", "upstream_error")],
                    s.tcp_sessions_upstream_error,
                ),
                (
                    &[("transport", "tcp"), ("outcome", "closed_by_node")],
                    s.tcp_sessions_cancelled,
                ),
                (
                    &[("transport", "tcp"), ("outcome", "not_reading")],
                    s.tcp_sessions_not_reading,
                ),
                (
                    &[("transport", "udp"), ("outcome", "closed")],
                    s.udp_sessions_closed,
                ),
                (
                    &[("transport", "udp"), ("outcome", "idle_timeout")],
                    s.udp_sessions_idle_timeout,
                ),
                (
                    &[("transport", "udp"), ("outcome", "session_lifetime")],
                    s.udp_sessions_lifetime,
                ),
                (
                    &[("transport", "udp"), ("outcome", "shutdown")],
                    s.udp_sessions_shutdown,
                ),
            ],
        )?;
        counter(
            &mut e,
            "tls_handshakes",
            "TLS connections on the TLS port, by outcome: completed with ALPN cloudproxy/1, failed, or refused for their ALPN (none offered, or another protocol)",
            &[
                (&[("outcome", "completed")], s.tls_handshakes),
                (&[("outcome", "failed")], s.tls_handshake_failures),
                (&[("outcome", "alpn_refused")], s.tls_alpn_refused),
            ],
        )?;
        counter(
            &mut e,
            "media_fallbacks",
            "UDP-over-TCP datagram sessions opened: media that fell back to TCP",
            &[(&[], s.media_fallbacks)],
        )?;
        let mut bytes = e.encode_descriptor(
            "relay",
            "Payload bytes relayed, by transport and direction (up: client to destination), counted while sessions run",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for (labels, value) in [
            ([("transport", "tcp"), ("direction", "up")], s.tcp_bytes_up),
            (
                [("transport", "tcp"), ("direction", "down")],
                s.tcp_bytes_down,
            ),
            ([("transport", "udp"), ("direction", "up")], s.udp_bytes_up),
            (
                [("transport", "udp"), ("direction", "down")],
                s.udp_bytes_down,
            ),
        ] {
            ConstCounter::new(value).encode(bytes.encode_family(&labels)?)?;
        }
        counter(
            &mut e,
            "relay_packets",
            "Datagrams relayed (UDP and UDP-over-TCP), by direction",
            &[
                (
                    &[("transport", "udp"), ("direction", "up")],
                    s.udp_packets_up,
                ),
                (
                    &[("transport", "udp"), ("direction", "down")],
                    s.udp_packets_down,
                ),
            ],
        )?;
        counter(
            &mut e,
            "dropped",
            "Input dropped, by reason: malformed connections or datagrams, undeliverable datagrams (unknown binding, wrong token, full queue, oversized), SOCKS5 fragments",
            &[
                (&[("reason", "malformed")], s.malformed),
                (&[("reason", "undeliverable")], s.udp_dropped),
                (&[("reason", "fragment")], s.socks5_fragments_dropped),
            ],
        )?;
        let (sockets, limit) = self.shared.quotas.node_sockets();
        gauge(
            &mut e,
            "upstream_sockets",
            "Upstream sockets held by relay bindings on this node",
            &[(&[], sockets)],
        )?;
        gauge(
            &mut e,
            "upstream_sockets_limit",
            "The most upstream sockets this node may hold (its descriptor budget)",
            &[(&[], limit)],
        )?;
        if let Some(open) = open_fds() {
            gauge(
                &mut e,
                "open_fds",
                "File descriptors open in the process",
                &[(&[], open)],
            )?;
        }
        if let Some(max) = self.shared.nofile {
            gauge(
                &mut e,
                "max_fds",
                "The process's file descriptor limit",
                &[(&[], max)],
            )?;
        }
        Ok(())
    }
}
