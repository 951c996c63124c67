//! Child processes the bench starts, and stops again by PID whatever happens.
//!
//! Every server runs in its own process group (its PID is the group id), so a
//! server that forks workers (danted) is stopped with all of them. The
//! [`Procs`] guard stops everything it started when dropped, which covers
//! early returns and panics; a Ctrl-C handler does the same through the
//! global registry.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process groups alive right now, for the Ctrl-C handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A started server.
pub(crate) struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `cmd` in its own process group, output to `log_dir/<name>.log`.
pub(crate) fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Result<Proc, String> {
    let log = File::create(log_dir.join(format!("{name}.log")))
        .map_err(|e| format!("{name}: log file: {e}"))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {name} ({cmd:?}): {e}"))?;
    LIVE.lock().unwrap().push(child.id());
    Ok(Proc {
        name: name.to_owned(),
        child,
    })
}

/// Stops a server: SIGTERM to its group, SIGKILL after a second.
pub(crate) fn stop(mut proc: Proc) {
    stop_inner(&mut proc);
}

fn stop_inner(proc: &mut Proc) {
    let pid = proc.child.id();
    if proc.child.try_wait().ok().flatten().is_none() {
        signal_group(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if proc.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Whatever is left of the group (forked workers, a stuck leader).
    signal_group(pid, "KILL");
    let _ = proc.child.kill();
    let _ = proc.child.wait();
    LIVE.lock().unwrap().retain(|p| *p != pid);
    let _ = &proc.name;
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Stops every server still registered (Ctrl-C path).
pub(crate) fn stop_all_registered() {
    let pids: Vec<u32> = LIVE.lock().unwrap().drain(..).collect();
    for pid in pids {
        signal_group(pid, "KILL");
    }
}

/// Owns started servers; stops them all when dropped.
#[derive(Default)]
pub(crate) struct Procs {
    procs: Vec<Proc>,
}

impl Procs {
    pub(crate) fn add(&mut self, proc: Proc) -> u32 {
        let pid = proc.pid();
        self.procs.push(proc);
        pid
    }

    /// Stops the server with this PID now.
    pub(crate) fn stop(&mut self, pid: u32) {
        if let Some(i) = self.procs.iter().position(|p| p.pid() == pid) {
            stop(self.procs.swap_remove(i));
        }
    }

    /// Whether the server with this PID has exited.
    pub(crate) fn exited(&mut self, pid: u32) -> bool {
        self.procs
            .iter_mut()
            .find(|p| p.pid() == pid)
            .is_none_or(|p| p.child.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for mut proc in self.procs.drain(..) {
            stop_inner(&mut proc);
        }
    }
}

/// Waits until something accepts TCP connections on `addr` (bounded).
pub(crate) fn wait_tcp(addr: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} did not listen on {addr} within 10 s"))
}

/// Runs a command to completion within `limit`, returning its stdout.
pub(crate) fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let pid = child.id();
    LIVE.lock().unwrap().push(pid);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            signal_group(pid, "KILL");
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    LIVE.lock().unwrap().retain(|p| *p != pid);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    match status {
        None => Err(format!("{cmd:?} took longer than {limit:?}")),
        Some(s) if !s.success() => Err(format!(
            "{cmd:?} failed ({s}): {}{}",
            stdout.chars().take(400).collect::<String>(),
            String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(400)
                .collect::<String>()
        )),
        Some(_) => Ok(stdout),
    }
}

/// Resident set size of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

/// CPU time (user and system, all threads, exited ones included) a process
/// has used so far, from `/proc/PID/stat`. Its unit is `USER_HZ`, which
/// Linux fixes at 100 per second in its ABI on every architecture, so the
/// resolution is 10 ms: fine against the seconds a load run takes.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    stat_cpu_time(&stat).ok_or_else(|| {
        format!(
            "{path}: expected utime and stime in fields 14 and 15, found {:?}",
            stat.trim()
        )
    })
}

/// utime + stime from the text of `/proc/PID/stat`.
fn stat_cpu_time(stat: &str) -> Option<Duration> {
    const USER_HZ: u64 = 100;
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses; the fields after its last `)` start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    let (user, system) = (ticks()?, ticks()?);
    Some(Duration::from_millis((user + system) * 1000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_utime_plus_stime_after_a_command_name_with_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(stat_cpu_time(stat), Some(Duration::from_millis(3250)));
        assert_eq!(stat_cpu_time("4242 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let used = cpu_time(std::process::id()).expect("our own /proc/PID/stat");
        let again = cpu_time(std::process::id()).expect("our own /proc/PID/stat");
        assert!(
            again >= used,
            "CPU time went back from {used:?} to {again:?}"
        );
    }
}
