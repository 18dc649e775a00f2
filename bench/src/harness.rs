//! What every corral measurement shares: the runtime, the built agents, supervisors made from
//! TOML text, and one timed `Supervisor::call` up to the agent's `Ready`.

use anyhow::{anyhow, Context, Result};
use corral::{AttemptEvent, CallOptions, Supervisor};
use corral_proto::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Everything a row needs to run.
pub struct Env {
    /// The multi-threaded runtime the supervisors run on (as many workers as cores).
    pub rt: tokio::runtime::Runtime,
    /// Fewer iterations.
    pub quick: bool,
    /// The `echo` agent.
    pub echo: PathBuf,
    /// The `chaos` agent.
    pub chaos: PathBuf,
}

impl Env {
    /// Run `fut` as a task on a runtime worker (as corral's own tasks run) and wait for it.
    pub fn run<T, F>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.rt
            .block_on(self.rt.spawn(fut))
            .map_err(|e| anyhow!("benchmark task failed: {e}"))
    }

    /// Iterations for a spawn row.
    pub fn spawn_iters(&self) -> usize {
        if self.quick {
            50
        } else {
            200
        }
    }
}

/// A supervisor for one agent type built from TOML keys, and the directory its config names.
pub struct Sup {
    /// The supervisor.
    pub sup: Arc<Supervisor>,
    _dir: tempfile::TempDir,
}

/// The config text of one agent `name` running `command`, with extra `keys`.
pub fn config_text(name: &str, command: &Path, keys: &str) -> Result<String> {
    let cmd = serde_json::to_string(&command.display().to_string())?;
    Ok(format!("[agents.{name}]\ncommand = [{cmd}]\n{keys}\n"))
}

/// Parse `text` and start a supervisor; `cgroups`: detect cgroups (`Supervisor::new`) or run
/// without any (`Supervisor::with_cgroups(cfg, None)`).
pub fn supervisor(env: &Env, text: &str, cgroups: bool) -> Result<Sup> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("corral.toml");
    let cfg = corral::Config::parse(text, &path).map_err(|e| anyhow!("config: {e}"))?;
    let _g = env.rt.enter();
    let sup = if cgroups {
        Supervisor::new(cfg)
    } else {
        Supervisor::with_cgroups(cfg, None)
    }
    .context("start supervisor")?;
    Ok(Sup {
        sup: Arc::new(sup),
        _dir: dir,
    })
}

/// One call timed from just before `Supervisor::call` to its events.
#[derive(Debug, Clone)]
pub struct ReadySample {
    /// To the supervisor's reading of `Ready` (the event's `at`), as the raw baseline times
    /// its own read of it.
    pub ready: Duration,
    /// To the `Ready` event reaching this task (which polls it beside the call: after the task
    /// has gone down to the agent, often after its result has come back).
    pub seen: Duration,
    /// To the `Spawned` event.
    pub spawned: Option<Duration>,
    /// What isolation the agent had (when asked to inspect).
    pub isolation: Option<String>,
    /// Whether the call completed its task.
    pub completed: bool,
    /// Whether the agent started in a warm stem.
    pub warm: bool,
}

/// Call `agent` with `input` and time the way to `Ready`. An attempt that never got ready is
/// an `Err` with its exit reason and message.
pub async fn corral_ready(
    sup: Arc<Supervisor>,
    agent: String,
    input: Value,
    inspect: bool,
) -> Result<ReadySample, String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opts = CallOptions {
        events: Some(tx),
        ..Default::default()
    };
    let t0 = Instant::now();
    let call = sup.call(&agent, input, opts);
    let watch = async {
        let mut spawned = None;
        let mut warm_start = false;
        let mut ready = None;
        let mut iso = None;
        while let Some(ev) = rx.recv().await {
            match ev {
                AttemptEvent::Spawned { warm, .. } => {
                    spawned = Some(t0.elapsed());
                    warm_start = warm;
                }
                AttemptEvent::Ready { pid, at, .. } => {
                    let seen = t0.elapsed();
                    if ready.is_none() {
                        ready = Some((at.saturating_duration_since(t0), seen, pid));
                        if inspect {
                            iso = Some(isolation_of(pid));
                        }
                    }
                }
                AttemptEvent::Exited(_) => break,
                AttemptEvent::Watchdog { .. }
                | AttemptEvent::Sample { .. }
                | AttemptEvent::TaskStarted { .. }
                | AttemptEvent::TaskEnded { .. } => {}
            }
        }
        (spawned, ready, iso, warm_start)
    };
    let (out, (spawned, ready, isolation, warm)) = tokio::join!(call, watch);
    let out = out.map_err(|e| e.to_string())?;
    match ready {
        Some((ready, seen, _pid)) => Ok(ReadySample {
            ready,
            seen,
            spawned,
            isolation,
            completed: out.ok(),
            warm,
        }),
        None => Err(match out.last() {
            Some(rec) => format!(
                "{}: {}",
                rec.reason,
                rec.error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default()
            ),
            None => "no attempt was made".into(),
        }),
    }
}

/// Which namespaces (and cgroup) `pid` does not share with this process, read from `/proc`.
pub fn isolation_of(pid: i32) -> String {
    let link = |p: String| std::fs::read_link(p).ok();
    let mut own = Vec::new();
    for ns in ["pid", "ipc", "uts", "mnt", "net", "user"] {
        let theirs = link(format!("/proc/{pid}/ns/{ns}"));
        let mine = link(format!("/proc/self/ns/{ns}"));
        if theirs.is_some() && theirs != mine {
            own.push(ns);
        }
    }
    let cg = |p: String| std::fs::read_to_string(p).ok();
    let cgroup = match (
        cg(format!("/proc/{pid}/cgroup")),
        cg("/proc/self/cgroup".into()),
    ) {
        (Some(a), Some(b)) if a != b => "own",
        (Some(_), Some(_)) => "shared",
        _ => "unknown",
    };
    format!(
        "own namespaces: {}; cgroup: {cgroup}",
        if own.is_empty() {
            "none".to_string()
        } else {
            own.join(",")
        }
    )
}

/// `VmRSS` of this process, in bytes.
pub fn rss_bytes() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// User + system CPU time of this process (all threads, not children).
pub fn cpu_time() -> Duration {
    // SAFETY: zeroed rusage is a valid out-parameter for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// An executable named `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
