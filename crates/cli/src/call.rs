//! A short call between two engines in one channel, measured: what `demo`
//! runs and what `probe --edge` uses to check a call end to end.
//!
//! Alice sends numbered pings as reliable messages; Bob answers each with a
//! pong carrying the same number. Both check that what they receive arrives
//! exactly once and in order, Alice measures round trips, and both send
//! media at a voice-like 50 packets a second and count what arrives.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cloudproxy_engine::{
    Bytes, ConnectionState, Credential, Engine, EngineError, Event, ProxyMode, ProxyType,
    StateReason,
};
use serde::Serialize;

/// What the call needs.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec {
    pub(crate) app_id: String,
    pub(crate) credential: Credential,
    pub(crate) edge_tcp: SocketAddr,
    pub(crate) edge_udp: SocketAddr,
    /// `set_parameters` strings, applied in order to both engines.
    pub(crate) params: Vec<String>,
    /// Applied after the parameters, when set.
    pub(crate) mode: Option<ProxyMode>,
    pub(crate) duration: Duration,
    pub(crate) channel: String,
    /// Print progress to stderr: a line redrawn every second on a terminal,
    /// a plain line every few seconds otherwise.
    pub(crate) progress: bool,
}

/// The measured result; serialised by `demo --json`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) ok: bool,
    pub(crate) error: Option<String>,
    /// A stable name for the failures a script acts on:
    /// `untrusted_certificate` (a TLS-intercepting proxy?) and
    /// `proxy_auth_failed` (the HTTP proxy answered 407). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error_kind: Option<&'static str>,
    /// From `join_channel` to joined, the slower of the two engines.
    pub(crate) connect_ms: Option<f64>,
    /// "udp", "tcp", "tls" or "http-proxy" through the proxy, or "direct".
    pub(crate) path: Option<String>,
    pub(crate) fallback_reason: Option<String>,
    pub(crate) messages_sent: u64,
    pub(crate) messages_received: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) messages_missing: u64,
    pub(crate) rtt_p50_ms: Option<f64>,
    pub(crate) rtt_p99_ms: Option<f64>,
    pub(crate) media_sent: u64,
    pub(crate) media_received: u64,
    pub(crate) failovers: u64,
    pub(crate) failover_ms: Vec<f64>,
    /// Every engine event in arrival order, each a JSON object of a stable
    /// shape (see [`event_json`]).
    pub(crate) events: Vec<serde_json::Value>,
}

const PING: u8 = b'P';
const PONG: u8 = b'O';
/// Reliable messages per second from Alice (each answered by Bob).
const PING_RATE: u64 = 50;
/// Media datagrams per second from each side.
const MEDIA_RATE: u64 = 50;
/// Off a terminal, a progress line every this many seconds.
const PLAIN_PROGRESS_EVERY: u64 = 5;
/// After the last send, how long to wait for what is in flight.
const DRAIN: Duration = Duration::from_secs(5);
/// After the last send, media still missing is counted lost once none has
/// arrived for this long (UDP says nothing of a loss; a datagram still in
/// flight on a busy machine is not one).
const MEDIA_QUIET: Duration = Duration::from_millis(500);

fn message(kind: u8, seq: u64, sent_at: Duration) -> Bytes {
    let mut m = Vec::with_capacity(17);
    m.push(kind);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(
        &u64::try_from(sent_at.as_nanos())
            .unwrap_or(u64::MAX)
            .to_be_bytes(),
    );
    Bytes::from(m)
}

fn parse(payload: &[u8]) -> Option<(u8, u64, Duration)> {
    if payload.len() != 17 {
        return None;
    }
    let seq = u64::from_be_bytes(payload[1..9].try_into().ok()?);
    let nanos = u64::from_be_bytes(payload[9..17].try_into().ok()?);
    Some((payload[0], seq, Duration::from_nanos(nanos)))
}

/// Exactly-once, in-order bookkeeping for one direction.
#[derive(Debug, Default)]
struct Sequence {
    next: u64,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl Sequence {
    fn see(&mut self, seq: u64) {
        if seq == self.next + 1 {
            self.next = seq;
            self.received += 1;
        } else if seq <= self.next {
            self.duplicates += 1;
        } else {
            self.out_of_order += 1;
            self.next = seq;
            self.received += 1;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// The stable `error_kind` of a join error, for the failures a script
/// tells apart.
fn error_kind(e: &EngineError) -> Option<&'static str> {
    match e {
        EngineError::UntrustedCertificate { .. } => Some("untrusted_certificate"),
        EngineError::ProxyAuthFailed { .. } => Some("proxy_auth_failed"),
        EngineError::AutoFailed { proxy, .. } => error_kind(proxy),
        _ => None,
    }
}

fn engine(spec: &CallSpec) -> Result<Engine, String> {
    let engine = Engine::builder(spec.app_id.clone(), spec.credential.clone())
        .media_network(spec.edge_tcp, spec.edge_udp)
        .build()
        .map_err(|e| e.to_string())?;
    for params in &spec.params {
        engine
            .set_parameters(params)
            .map_err(|e| format!("set_parameters({params}): {e}"))?;
    }
    if let Some(mode) = spec.mode {
        engine.set_cloud_proxy(mode).map_err(|e| e.to_string())?;
    }
    Ok(engine)
}

/// Runs the call; never panics, reports failures in the summary.
pub(crate) async fn run(spec: &CallSpec) -> Summary {
    let mut summary = Summary::default();
    if let Err(e) = call(spec, &mut summary).await {
        summary.error = Some(e);
    }
    summary.messages_missing = summary
        .messages_sent
        .saturating_sub(summary.messages_received);
    summary.ok = summary.error.is_none()
        && summary.messages_sent > 0
        && summary.messages_missing == 0
        && summary.duplicates == 0
        && summary.out_of_order == 0
        && summary.media_received > 0;
    if summary.error.is_none() && !summary.ok {
        summary.error = Some(format!(
            "the call did not deliver everything: {} of {} messages, {} duplicates, {} out of order, {} media packets",
            summary.messages_received,
            summary.messages_sent,
            summary.duplicates,
            summary.out_of_order,
            summary.media_received
        ));
    }
    summary
}

async fn call(spec: &CallSpec, summary: &mut Summary) -> Result<(), String> {
    let alice = engine(spec)?;
    let bob = engine(spec)?;
    let direct = !spec
        .params
        .iter()
        .any(|p| p.contains("enable_proxy\":true") || p.contains("enable_proxy\": true"))
        && matches!(spec.mode, None | Some(ProxyMode::Off));
    let mut alice_events = alice.events();
    let mut bob_events = bob.events();

    // Join both, timing each.
    let started = Instant::now();
    let (a, b) = tokio::join!(
        timed(alice.join_channel(&spec.channel, 1)),
        timed(bob.join_channel(&spec.channel, 2))
    );
    let (a_time, a) = a;
    let (b_time, b) = b;
    for (who, result) in [("alice", a), ("bob", b)] {
        if let Err(e) = result {
            summary.error_kind = error_kind(&e);
            return Err(format!("{who} could not join: {e}"));
        }
    }
    summary.connect_ms = Some(ms(a_time.max(b_time)));
    if direct {
        summary.path = Some("direct".into());
    }

    let mut tracker = EventTracker::default();
    let mut alice_pongs = Sequence::default();
    let mut bob_pings = Sequence::default();
    let mut rtts: Vec<Duration> = Vec::new();
    let (mut pings_sent, mut pongs_sent) = (0u64, 0u64);
    let (mut alice_media, mut bob_media) = (0u64, 0u64);

    let mut ping_tick = tokio::time::interval(Duration::from_millis(1000 / PING_RATE));
    let mut media_tick = tokio::time::interval(Duration::from_millis(1000 / MEDIA_RATE));
    let mut progress_tick = tokio::time::interval(Duration::from_secs(1));
    let sending_until = tokio::time::Instant::now() + spec.duration;
    let hard_stop = sending_until + DRAIN;
    let mut media_seq = 0u64;
    let redraw = std::io::stderr().is_terminal();
    let mut progress_ticks = 0u64;

    let mut last_media = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        let sending = now < sending_until;
        let drained = Drain {
            messages_sent: pings_sent,
            pongs_received: alice_pongs.received,
            pings_received: bob_pings.received,
            media_sent: summary.media_sent,
            media_received: alice_media + bob_media,
        };
        if !sending && drained.done(now.saturating_duration_since(last_media.max(sending_until))) {
            break;
        }
        // Wakes the loop when the media quiet period ends (armed only while
        // media is missing and the period runs, so it never spins).
        let quiet_until = last_media.max(sending_until) + MEDIA_QUIET;
        let awaiting_media =
            !sending && drained.media_received < drained.media_sent && now < quiet_until;
        tokio::select! {
            _ = ping_tick.tick(), if sending => {
                pings_sent += 1;
                alice.send_message(message(PING, pings_sent, started.elapsed())).map_err(|e| format!("alice send: {e}"))?;
            }
            _ = media_tick.tick(), if sending => {
                media_seq += 1;
                let frame = Bytes::from(media_seq.to_be_bytes().to_vec());
                if alice.send_media(frame.clone()).is_ok() { summary.media_sent += 1; }
                if bob.send_media(frame).is_ok() { summary.media_sent += 1; }
            }
            Some(m) = bob.recv_message() => {
                if let Some((PING, seq, sent_at)) = parse(&m.payload) {
                    bob_pings.see(seq);
                    pongs_sent += 1;
                    bob.send_message(message(PONG, seq, sent_at)).map_err(|e| format!("bob send: {e}"))?;
                }
            }
            Some(m) = alice.recv_message() => {
                if let Some((PONG, seq, sent_at)) = parse(&m.payload) {
                    alice_pongs.see(seq);
                    rtts.push(started.elapsed().saturating_sub(sent_at));
                }
            }
            Some(_) = alice.recv_media() => {
                alice_media += 1;
                last_media = tokio::time::Instant::now();
            }
            Some(_) = bob.recv_media() => {
                bob_media += 1;
                last_media = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(quiet_until), if awaiting_media => {}
            Some(event) = alice_events.recv() => tracker.note("alice", &event, summary),
            Some(event) = bob_events.recv() => tracker.note("bob", &event, summary),
            _ = progress_tick.tick(), if spec.progress => {
                progress_ticks += 1;
                // A terminal gets one line redrawn every second; a file or a
                // pipe gets a plain line every few seconds instead.
                if redraw || (progress_ticks - 1) % PLAIN_PROGRESS_EVERY == 0 {
                    let mut sorted = rtts.clone();
                    sorted.sort_unstable();
                    let line = format!(
                        "  {:>5.1} s  messages {} of {} delivered  media {} of {} received  rtt p50 {}  path {}",
                        started.elapsed().as_secs_f64(),
                        alice_pongs.received + bob_pings.received,
                        pings_sent + pongs_sent,
                        alice_media + bob_media,
                        summary.media_sent,
                        percentile(&sorted, 50.0).map_or("-".into(), |v| format!("{v:.2} ms")),
                        summary.path.as_deref().unwrap_or("not yet known"),
                    );
                    if redraw {
                        eprint!("\r{line}   ");
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
            () = tokio::time::sleep_until(hard_stop) => break,
        }
    }
    if spec.progress && redraw {
        eprintln!();
    }
    // Late events (for instance a failover that just finished).
    while let Some(event) = alice_events.try_recv() {
        tracker.note("alice", &event, summary);
    }
    while let Some(event) = bob_events.try_recv() {
        tracker.note("bob", &event, summary);
    }

    summary.messages_sent = pings_sent + pongs_sent;
    summary.messages_received = alice_pongs.received + bob_pings.received;
    summary.duplicates = alice_pongs.duplicates + bob_pings.duplicates;
    summary.out_of_order = alice_pongs.out_of_order + bob_pings.out_of_order;
    summary.media_received = alice_media + bob_media;
    rtts.sort_unstable();
    summary.rtt_p50_ms = percentile(&rtts, 50.0).map(|v| (v * 1000.0).round() / 1000.0);
    summary.rtt_p99_ms = percentile(&rtts, 99.0).map(|v| (v * 1000.0).round() / 1000.0);

    let _ = bob.leave_channel().await;
    let _ = alice.leave_channel().await;
    Ok(())
}

/// What has been sent and received when the sending stops: the call is
/// over once every message is answered and every media datagram arrived,
/// or no media has arrived for [`MEDIA_QUIET`] (the rest is lost).
#[derive(Debug, Clone, Copy)]
struct Drain {
    messages_sent: u64,
    pongs_received: u64,
    pings_received: u64,
    media_sent: u64,
    media_received: u64,
}

impl Drain {
    /// `quiet`: how long since the later of the last media arrival and the
    /// end of sending.
    fn done(self, quiet: Duration) -> bool {
        let messages =
            self.pongs_received >= self.messages_sent && self.pings_received >= self.messages_sent;
        let media = self.media_received >= self.media_sent || quiet >= MEDIA_QUIET;
        messages && media
    }
}

async fn timed<T>(fut: impl std::future::Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let out = fut.await;
    (started.elapsed(), out)
}

/// Turns events into the summary's path, fallback and failover figures.
#[derive(Debug, Default)]
struct EventTracker {
    reconnecting_since: [Option<Instant>; 2],
}

impl EventTracker {
    fn note(&mut self, who: &'static str, event: &Event, summary: &mut Summary) {
        summary.events.push(event_json(who, event));
        let slot = usize::from(who == "bob");
        match event {
            Event::ProxyConnected { proxy_type, .. } => {
                summary.path = Some(path_name(*proxy_type).into());
            }
            Event::MediaFallbackToTcp { why } => summary.fallback_reason = Some(why.clone()),
            Event::ConnectionStateChanged {
                state: ConnectionState::Reconnecting,
                ..
            } => {
                self.reconnecting_since[slot].get_or_insert_with(Instant::now);
            }
            Event::ConnectionStateChanged {
                state: ConnectionState::Connected,
                ..
            } => {
                if let Some(since) = self.reconnecting_since[slot].take() {
                    summary.failovers += 1;
                    summary.failover_ms.push(ms(since.elapsed()));
                }
            }
            _ => {}
        }
    }
}

/// The summary's name for a rung: "udp", "tcp", "tls" or "http-proxy".
fn path_name(proxy_type: ProxyType) -> &'static str {
    match proxy_type {
        ProxyType::Udp => "udp",
        ProxyType::Tcp => "tcp",
        ProxyType::Tls => "tls",
        ProxyType::HttpProxy => "http-proxy",
    }
}

/// An engine event as `demo --json` reports it: an object naming the
/// engine (`"alice"` or `"bob"`) and the event in snake case, with the
/// event's fields by name (durations in milliseconds). Scripts can rely
/// on this shape; a kind this version does not know is `"other"`.
fn event_json(who: &str, event: &Event) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::ConnectionStateChanged { state, reason } => json!({
            "engine": who,
            "event": "connection_state_changed",
            "state": state_name(*state),
            "reason": reason_name(*reason),
        }),
        Event::ProxyConnected {
            proxy_type,
            elapsed,
        } => json!({
            "engine": who,
            "event": "proxy_connected",
            "proxy_type": path_name(*proxy_type),
            "elapsed_ms": ms(*elapsed),
        }),
        Event::MediaFallbackToTcp { why } => json!({
            "engine": who,
            "event": "media_fallback_to_tcp",
            "why": why,
        }),
        Event::DirectPathFailed { why } => json!({
            "engine": who,
            "event": "direct_path_failed",
            "why": why,
        }),
        Event::UserJoined { uid, member_id } => json!({
            "engine": who,
            "event": "user_joined",
            "uid": uid,
            "member_id": member_id,
        }),
        Event::UserLeft { uid, member_id } => json!({
            "engine": who,
            "event": "user_left",
            "uid": uid,
            "member_id": member_id,
        }),
        Event::ParameterWarning { warning } => json!({
            "engine": who,
            "event": "parameter_warning",
            "warning": warning.to_string(),
        }),
        _ => json!({ "engine": who, "event": "other" }),
    }
}

fn state_name(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::Disconnected => "disconnected",
        ConnectionState::Connecting => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Reconnecting => "reconnecting",
        ConnectionState::Failed => "failed",
        _ => "other",
    }
}

fn reason_name(reason: StateReason) -> &'static str {
    match reason {
        StateReason::Joining => "joining",
        StateReason::SettingProxyServer => "setting_proxy_server",
        StateReason::Joined => "joined",
        StateReason::Interrupted => "interrupted",
        StateReason::KeepaliveTimeout => "keepalive_timeout",
        StateReason::RelaySilent => "relay_silent",
        StateReason::Resumed => "resumed",
        StateReason::Rejoined => "rejoined",
        StateReason::JoinFailed => "join_failed",
        StateReason::ReconnectFailed => "reconnect_failed",
        StateReason::Left => "left",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_duplicates_and_gaps() {
        let mut s = Sequence::default();
        for seq in [1, 2, 2, 3, 5, 4, 6] {
            s.see(seq);
        }
        assert_eq!((s.received, s.duplicates, s.out_of_order), (5, 2, 1));
    }

    #[test]
    fn media_in_flight_when_sending_stops_is_waited_for() {
        let in_flight = Drain {
            messages_sent: 50,
            pongs_received: 50,
            pings_received: 50,
            media_sent: 102,
            media_received: 100,
        };
        // Every message answered, two datagrams still on their way: not
        // over until they arrive or the media has been quiet long enough.
        assert!(!in_flight.done(Duration::ZERO));
        assert!(!in_flight.done(MEDIA_QUIET / 2));
        assert!(in_flight.done(MEDIA_QUIET));
        let all_there = Drain {
            media_received: 102,
            ..in_flight
        };
        assert!(all_there.done(Duration::ZERO));
        let message_missing = Drain {
            pongs_received: 49,
            ..all_there
        };
        assert!(!message_missing.done(MEDIA_QUIET));
    }

    #[test]
    fn events_have_a_stable_json_shape() {
        let event = Event::ConnectionStateChanged {
            state: ConnectionState::Connecting,
            reason: StateReason::Joining,
        };
        assert_eq!(
            event_json("alice", &event),
            serde_json::json!({
                "engine": "alice",
                "event": "connection_state_changed",
                "state": "connecting",
                "reason": "joining",
            })
        );
        let event = Event::ProxyConnected {
            proxy_type: ProxyType::HttpProxy,
            elapsed: Duration::from_micros(2500),
        };
        assert_eq!(
            event_json("bob", &event),
            serde_json::json!({
                "engine": "bob",
                "event": "proxy_connected",
                "proxy_type": "http-proxy",
                "elapsed_ms": 2.5,
            })
        );
    }

    #[test]
    fn messages_round_trip() {
        let m = message(PING, 42, Duration::from_micros(1500));
        assert_eq!(parse(&m), Some((PING, 42, Duration::from_micros(1500))));
        assert_eq!(parse(b"short"), None);
    }
}
