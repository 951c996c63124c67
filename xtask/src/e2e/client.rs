//! The client side: `cloudproxy demo --json` and `cloudproxy probe --json`
//! run inside `corp`, and what they print, read with serde into the shapes
//! `crates/cli` writes (`call::Summary`, `probe_cmd::Report`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::bed::{EDGE, EDGE_PORT};
use super::processes::{APP_ID, Finished, Running, in_ns, run_bounded, spawn};
use crate::Result;

/// The guide's setting: the proxy on.
pub(super) const ENABLE: &str = r#"{"rtc.enable_proxy":true}"#;

/// How long past its own seconds a demo may run before it counts as a hang.
const DEMO_GRACE: Duration = Duration::from_secs(45);
/// How long a probe may run.
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// One `cloudproxy demo` call.
pub(super) struct Call<'a> {
    /// `--proxy`: an address, a list, or a name.
    pub(super) proxy: &'a str,
    /// `--params`: the app's setParameters JSON.
    pub(super) params: &'a str,
    /// `--mode`, when not the default.
    pub(super) mode: Option<&'a str>,
    /// `--seconds` of call.
    pub(super) seconds: u32,
}

impl<'a> Call<'a> {
    /// A 3 s call through `proxy` with `{"rtc.enable_proxy":true}`.
    pub(super) fn enabled(proxy: &'a str) -> Self {
        Self {
            proxy,
            params: ENABLE,
            mode: None,
            seconds: 3,
        }
    }

    fn limit(&self) -> Duration {
        Duration::from_secs(u64::from(self.seconds)) + DEMO_GRACE
    }
}

/// Runs the client binary in `corp` with the app's credentials.
pub(super) struct Client {
    pub(super) bin: PathBuf,
    pub(super) corp: String,
    pub(super) secret: String,
}

impl Client {
    fn demo_cmd(&self, call: &Call<'_>) -> Command {
        let mut cmd = in_ns(&self.corp, &self.bin);
        cmd.args(["demo", "--proxy", call.proxy])
            .arg("--edge")
            .arg(format!("{EDGE}:{EDGE_PORT},{EDGE}:{EDGE_PORT}"))
            .args(["--app-id", APP_ID, "--credential", &self.secret])
            .args(["--seconds", &call.seconds.to_string(), "--json"])
            .args(["--params", call.params]);
        if let Some(mode) = call.mode {
            cmd.args(["--mode", mode]);
        }
        cmd
    }

    /// A whole call, to its end (or its limit).
    pub(super) fn demo(&self, call: &Call<'_>) -> Result<Demo> {
        self.spawn_demo(call)?.finish()
    }

    /// A call that runs while the scenario acts on the bed (kills a node,
    /// changes the firewall); [`RunningDemo::finish`] collects it.
    pub(super) fn spawn_demo(&self, call: &Call<'_>) -> Result<RunningDemo> {
        Ok(RunningDemo {
            running: spawn(&mut self.demo_cmd(call))?,
            limit: call.limit(),
        })
    }

    /// `probe --server SERVER --timeout-ms 1500 --json`.
    pub(super) fn probe(&self, server: &str) -> Result<Probe> {
        let out = run_bounded(
            in_ns(&self.corp, &self.bin).args([
                "probe",
                "--server",
                server,
                "--app-id",
                APP_ID,
                "--credential",
                &self.secret,
                "--timeout-ms",
                "1500",
                "--json",
            ]),
            PROBE_LIMIT,
        )?;
        if out.status.is_none() {
            return Err(format!(
                "probe did not finish within {PROBE_LIMIT:?}\n{}",
                out.stderr
            ));
        }
        let report = last_json_object(&out.stdout)
            .map_err(|e| format!("probe --json output: {e}\n{}\n{}", out.stdout, out.stderr))?;
        Ok(Probe { out, report })
    }
}

/// The scenarios drive `cloudproxy demo`; say so plainly if this build has
/// none.
pub(super) fn require_demo(bin: &Path) -> Result {
    let out = Command::new(bin)
        .args(["demo", "--help"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !help.contains("--proxy") || !help.contains("--edge") {
        return Err(format!(
            "{} has no `demo --proxy SERVER --edge TCP,UDP` subcommand yet; the e2e scenarios need it",
            bin.display()
        ));
    }
    Ok(())
}

/// A demo still running.
pub(super) struct RunningDemo {
    running: Running,
    limit: Duration,
}

impl RunningDemo {
    /// When the process started.
    pub(super) fn started(&self) -> Instant {
        self.running.started
    }

    /// Waits for the call to end; past its limit it is killed and reported
    /// as a hang.
    pub(super) fn finish(self) -> Result<Demo> {
        Demo::parse(self.running.finish(self.limit), self.limit)
    }
}

/// What `demo --json` prints (`crates/cli/src/call.rs`, `Summary`).
#[derive(Debug, Deserialize)]
pub(super) struct DemoSummary {
    pub(super) ok: bool,
    pub(super) error: Option<String>,
    /// `untrusted_certificate` or `proxy_auth_failed` when the join failed
    /// that way.
    pub(super) error_kind: Option<String>,
    /// From `join_channel` to joined, the slower of the two engines.
    pub(super) connect_ms: Option<f64>,
    /// "udp" or "tcp" through the proxy, or "direct".
    pub(super) path: Option<String>,
    pub(super) fallback_reason: Option<String>,
    pub(super) messages_sent: u64,
    pub(super) messages_received: u64,
    pub(super) duplicates: u64,
    pub(super) out_of_order: u64,
    pub(super) media_sent: u64,
    pub(super) media_received: u64,
    pub(super) failovers: u64,
    pub(super) failover_ms: Vec<f64>,
    /// The engines' events: objects with `engine`, `event` (snake case)
    /// and the event's fields (`crates/cli/src/call.rs`, `event_json`).
    pub(super) events: Vec<serde_json::Value>,
}

/// A finished demo: the process and its summary.
pub(super) struct Demo {
    pub(super) out: Finished,
    pub(super) summary: DemoSummary,
}

impl Demo {
    fn parse(out: Finished, limit: Duration) -> Result<Self> {
        if out.status.is_none() {
            return Err(format!(
                "demo still running after {limit:?}: killed (a hang)\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            ));
        }
        match last_json_object(&out.stdout) {
            Ok(summary) => Ok(Self { out, summary }),
            Err(e) => Err(format!(
                "demo --json output: {e}\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )),
        }
    }

    /// The connect time; NaN (failing every bound) when the call never
    /// connected.
    pub(super) fn connect_ms(&self) -> f64 {
        self.summary.connect_ms.unwrap_or(f64::NAN)
    }

    /// The first event of this kind (`"proxy_connected"`, ...).
    pub(super) fn event(&self, kind: &str) -> Option<&serde_json::Value> {
        self.summary.events.iter().find(|e| e["event"] == kind)
    }

    /// `ok` true in the summary.
    pub(super) fn ok(&self) -> bool {
        self.summary.ok
    }

    /// Exit status 0.
    pub(super) fn exit_success(&self) -> bool {
        self.out.status.is_some_and(|s| s.success())
    }

    /// The whole summary, for failure messages.
    pub(super) fn dump(&self) -> String {
        format!(
            "demo exit {:?} after {:.1?}\nsummary: {}\nstderr (tail):\n{}",
            self.out.status.and_then(|s| s.code()),
            self.out.elapsed,
            self.out.stdout.trim(),
            tail(&self.out.stderr, 15)
        )
    }
}

/// What `probe --json` prints (`crates/cli/src/probe_cmd.rs`, `Report`).
#[derive(Debug, Deserialize)]
pub(super) struct ProbeReport {
    pub(super) checks: Vec<ProbeCheck>,
    /// `works_over_udp`, `works_only_over_tcp`, `credential_refused`,
    /// `proxy_refused` or `does_not_work`.
    pub(super) verdict: String,
    pub(super) proxy_refusal: Option<String>,
    pub(super) missing_rules: Vec<String>,
}

/// One port the probe checked (its outcome's other fields are not read).
#[derive(Debug, Deserialize)]
pub(super) struct ProbeCheck {
    /// "TCP" or "UDP".
    pub(super) protocol: String,
    /// "allocation", "message relay" or "media relay".
    pub(super) role: String,
    /// `ip:port`.
    pub(super) address: String,
    /// `open`, `blocked`, `refused` or `timeout`.
    pub(super) state: String,
}

/// A finished probe: the process and its report.
pub(super) struct Probe {
    pub(super) out: Finished,
    pub(super) report: ProbeReport,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last JSON object printed: the last line starting with `{` from which
/// a `T` parses (progress lines may come before it; trailing text is
/// ignored).
fn last_json_object<T: DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    let starts = text
        .match_indices('{')
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n');
    let mut last_err = "no JSON object in the output".to_owned();
    for start in starts.collect::<Vec<_>>().into_iter().rev() {
        match serde_json::Deserializer::from_str(&text[start..])
            .into_iter::<T>()
            .next()
        {
            Some(Ok(value)) => return Ok(value),
            Some(Err(e)) => last_err = format!("JSON: {e}"),
            None => {}
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_demo_summary_after_progress_lines() {
        let text = "progress {not json}\n{\n  \"ok\": true, \"error\": null, \"connect_ms\": 6.5,\n  \"path\": \"udp\", \"fallback_reason\": null, \"messages_sent\": 150,\n  \"messages_received\": 150, \"duplicates\": 0, \"out_of_order\": 0,\n  \"messages_missing\": 0, \"rtt_p50_ms\": 1.0, \"rtt_p99_ms\": null,\n  \"media_sent\": 300, \"media_received\": 298, \"failovers\": 1,\n  \"failover_ms\": [1.1, 2], \"events\": [{\"engine\": \"alice\", \"event\": \"proxy_connected\", \"proxy_type\": \"udp\"}, {\"event\": \"a\\\"b\\u00e9\"}]\n}\n";
        let s: DemoSummary = last_json_object(text).unwrap();
        assert!(s.ok);
        assert_eq!(s.connect_ms, Some(6.5));
        assert_eq!(s.path.as_deref(), Some("udp"));
        assert_eq!(s.failover_ms, [1.1, 2.0]);
        assert_eq!(s.events[0]["proxy_type"], "udp");
        assert_eq!(s.events[1]["event"], "a\"bé");
    }

    #[test]
    fn reads_the_probe_report() {
        let text = r#"{"server":"10.231.0.2","checks":[{"protocol":"TCP","role":"allocation","address":"10.231.0.2:1080","state":"open","latency_us":120},{"protocol":"UDP","role":"allocation","address":"10.231.0.2:1080","state":"timeout"}],"verdict":"works_only_over_tcp","proxy_refusal":null,"echo_error":null,"missing_rules":["allow UDP to 10.231.0.2 port 1080 (allocation)"],"relays_not_checked":null}"#;
        let r: ProbeReport = last_json_object(text).unwrap();
        assert_eq!(r.checks.len(), 2);
        assert_eq!(r.checks[1].state, "timeout");
        assert_eq!(r.verdict, "works_only_over_tcp");
        assert_eq!(r.proxy_refusal, None);
    }

    #[test]
    fn says_what_is_wrong() {
        let missing = last_json_object::<ProbeReport>("{\"checks\": []}").unwrap_err();
        assert!(missing.contains("missing field `verdict`"), "{missing}");
        assert!(last_json_object::<ProbeReport>("{\"a\": }").is_err());
        assert_eq!(
            last_json_object::<ProbeReport>("nothing").unwrap_err(),
            "no JSON object in the output"
        );
    }
}
