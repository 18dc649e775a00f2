//! One supervised process, from spawn to exit record.
//!
//! [`run_attempt`] gets the agent's process (a warm stem released with this attempt's
//! environment, or one made now: see `launch`), does the handshake, sends one task, watches the
//! agent (heartbeats on fd 4 or the beat pipe, progress, deadlines, protocol, contract, health
//! samples), relays tool calls to its owner over a channel, stops it with escalation
//! (Shutdown → SIGTERM → `kill_grace` → SIGKILL of the whole group), reaps it with rusage and
//! returns an [`ExitRecord`] saying exactly what happened. It never panics on anything the agent
//! does and never blocks on it: frames are read from a non-blocking pipe into a bounded decoder,
//! writes to the agent are non-blocking with what does not fit kept for when the pipe drains,
//! stdout/stderr are always drained, and the beat pipe is read without blocking. One timer per
//! attempt, moved early onto a shared grid so that agents beating in step share wake-ups.
//!
//! Whatever the agent sends, what the supervisor holds for it stays bounded (see `bounds`):
//! tool calls, bytes waiting for an agent that does not read (its frames are then no longer
//! read), the trace and the size of the exit record, log bytes. A dropped attempt still kills
//! and reaps its process (see `guard`).
//!
//! The child knows nothing of plans, the journal or retries: the owner (see [`crate::run`])
//! decides what follows and fills in `decision`, `backoff_ms` and the counters.

mod bounds;
mod guard;
mod launch;

use bounds::{BoundError, LogBudget, Trace};
use guard::Teardown;
pub use launch::{agent_env, Pools, StemPool};
use launch::{launch, Launched};

use crate::config::AgentSpec;
use crate::record::{ExitReason, ExitRecord, Phase, RecordedError, ToolTrace};
use crate::sandbox::cgroup::{AgentCgroup, CgroupLimits};
use crate::sandbox::pool::{CgroupPool, WorkspacePool};
use crate::sandbox::process::{self, PidFd, Reaped};
use corral_proto::frame::{self, FrameDecoder};
use corral_proto::{
    AgentError, Contract, Down, Hello, Shutdown, Task, ToolCall, ToolResult, Up, Value,
    PROTOCOL_VERSION,
};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};

/// How much of stderr the exit record keeps.
const STDERR_TAIL: usize = 4096;

use corral_proto::beat::{monotonic_ns, BEAT_LEN};

/// The grid watchdog checks are moved onto (at most the heartbeat interval): see
/// `State::next_wake`.
const WAKE_GRID: Duration = Duration::from_millis(100);

/// What one attempt needs to know.
#[derive(Clone)]
pub struct AttemptSpec {
    /// The agent, fully resolved from config.
    pub agent: Arc<AgentSpec>,
    /// The run this attempt belongs to.
    pub run_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Largest frame accepted from the agent.
    pub max_frame: u32,
    /// Cgroups (made ahead of time), when the host has them.
    pub cgroups: Option<Arc<CgroupPool>>,
    /// Workspaces (made ahead of time).
    pub workspaces: Arc<WorkspacePool>,
    /// Warm stems (see [`StemPool`]).
    pub stems: Option<Arc<StemPool>>,
    /// Where to report life events of the attempt (for status displays, tests, benchmarks).
    pub events: Option<mpsc::UnboundedSender<AttemptEvent>>,
}

impl AttemptSpec {
    /// Make a warm stem of this agent type in the background, if it gets one (see
    /// [`StemPool::refill`]).
    fn refill_stem(&self) {
        if let Some(stems) = &self.stems {
            stems.refill(
                self.agent.clone(),
                Pools {
                    workspaces: self.workspaces.clone(),
                    cgroups: self.cgroups.clone(),
                },
            );
        }
    }
}

/// The cgroup limits of every attempt of an agent (`memory`, `pids`, `cpu_quota`).
impl From<&AgentSpec> for CgroupLimits {
    fn from(a: &AgentSpec) -> CgroupLimits {
        CgroupLimits {
            memory: a.memory,
            pids: a.pids,
            cpu_quota: a.cpu_quota,
        }
    }
}

/// Life events of an attempt, reported as they happen.
#[derive(Debug, Clone)]
pub enum AttemptEvent {
    /// The process exists.
    Spawned {
        /// Agent name.
        agent: String,
        /// Attempt number.
        attempt: u32,
        /// Its pid.
        pid: i32,
        /// Started in a warm stem (its sandbox made ahead), not made for this attempt.
        warm: bool,
    },
    /// The handshake finished.
    Ready {
        /// Agent name.
        agent: String,
        /// Attempt number.
        attempt: u32,
        /// Its pid.
        pid: i32,
    },
    /// A watchdog fired (hung, stalled, deadline, startup_timeout, or protocol_violation for
    /// an agent that left fd 3 unread); the kill follows at once.
    Watchdog {
        /// Agent name.
        agent: String,
        /// Its pid.
        pid: i32,
        /// Why.
        reason: ExitReason,
        /// How late after the deadline the watchdog ran, in microseconds.
        late_us: u64,
    },
    /// A health sample (every `sample_interval`, taken when the agent speaks).
    Sample {
        /// Agent name.
        agent: String,
        /// The supervised pid.
        pid: i32,
        /// Resident set of the agent process, KiB.
        rss_kb: u64,
        /// CPU used by the agent process so far, ms (user + system).
        cpu_ms: Option<u64>,
    },
    /// The attempt is over.
    Exited(Box<ExitRecord>),
}

/// The task to run.
#[derive(Debug, Clone)]
pub struct TaskInput {
    /// Task id sent to the agent.
    pub task_id: u64,
    /// The input (shared with the caller, which keeps it for retries).
    pub input: std::sync::Arc<Value>,
    /// Notes handed down.
    pub memory: Vec<Value>,
}

/// A tool call relayed to the owner, with where to send the answer.
#[derive(Debug)]
pub struct ToolRequest {
    /// Which agent asked.
    pub agent: String,
    /// The call as the agent made it.
    pub call: ToolCall,
    /// The answer goes here.
    pub reply: oneshot::Sender<Result<Value, AgentError>>,
}

/// What an attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The output, when the agent completed.
    pub output: Option<Value>,
    /// Notes to hand downstream.
    pub memory: Vec<Value>,
    /// The contract the agent declared, when it got that far.
    pub contract: Option<Contract>,
    /// The account of the attempt.
    pub record: ExitRecord,
}

/// Handles for the owner while an attempt runs.
pub struct AttemptControl {
    /// Set to `Some(reason)` to stop the attempt (`cancelled`, `shutdown`).
    pub stop: watch::Sender<Option<ExitReason>>,
}

/// What the loop decided, before the process is reaped.
struct Verdict {
    reason: Option<ExitReason>,
    error: Option<RecordedError>,
    graceful: bool,
}

fn err(kind: &str, message: impl Into<String>, retryable: bool) -> Option<RecordedError> {
    Some(RecordedError {
        kind: kind.to_string(),
        message: message.into(),
        retryable,
    })
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

/// What a health sample reads: `/proc/<pid>/statm` kept open (bound to that process, even if
/// its pid is reused later) and the process's CPU-time clock. Both are far cheaper than
/// `/proc/<pid>/stat` (measured: sampling 1000 idle agents every 5 s cost ~0.3 % of a core
/// with `stat`).
struct Sampler {
    statm: std::fs::File,
    cpu: Option<nix::time::ClockId>,
}

/// Sampler of `/proc/<pid>`: the process itself, or under `corral-init` its child.
fn open_sampler(pid: i32, under_init: bool) -> Option<Sampler> {
    let target = if under_init {
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        kids.split_whitespace().next()?.parse::<i32>().ok()?
    } else {
        pid
    };
    Some(Sampler {
        statm: std::fs::File::open(format!("/proc/{target}/statm")).ok()?,
        cpu: nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(target)).ok(),
    })
}

/// The page size in KiB.
fn page_kb() -> u64 {
    static KB: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KB.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map(|b| (b as u64) / 1024)
            .unwrap_or(4)
    })
}

/// Where an agent's stdout/stderr bytes go: lines to the log (escaped), within the attempt's
/// log budget.
struct LogSink {
    agent: String,
    pid: i32,
    budget: Arc<LogBudget>,
    /// Partial last line per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    stderr_tail: Vec<u8>,
}

impl LogSink {
    /// Take bytes just read from stream `which` (0 stdout, 1 stderr); `eof` flushes its partial
    /// line.
    fn consume(&mut self, which: usize, data: &[u8], eof: bool) {
        if which == 1 {
            let tail = &mut self.stderr_tail;
            tail.extend_from_slice(data);
            if tail.len() > STDERR_TAIL {
                let cut = tail.len() - STDERR_TAIL;
                tail.drain(..cut);
            }
        }
        let keep = self.budget.take(data.len());
        let stream = if which == 0 { "stdout" } else { "stderr" };
        let (agent, pid) = (&self.agent, self.pid);
        let emit = |line: &[u8]| {
            let text = String::from_utf8_lossy(line);
            tracing::info!(agent = %agent, pid, stream, "{}", bounds::escape(&text));
        };
        let buf = &mut self.partial[which];
        let mut rest = &data[..keep];
        // Complete the pending partial line, then emit whole lines straight from the chunk.
        if !buf.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    buf.extend_from_slice(&rest[..pos]);
                    emit(buf);
                    buf.clear();
                    rest = &rest[pos + 1..];
                }
                None => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            emit(&rest[..pos]);
            rest = &rest[pos + 1..];
        }
        buf.extend_from_slice(rest);
        if buf.len() > 64 * 1024 || (eof && !buf.is_empty()) {
            emit(buf);
            buf.clear();
        }
    }
}

thread_local! {
    /// Per-thread read buffer (never held across an await): a thousand idle agents do not each
    /// keep one, and no read zeroes a fresh one. What is read is consumed before the next await.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
}

/// Drain stdout and stderr to the log, line by line, within the attempt's log budget.
/// Returns the last bytes of stderr.
async fn drain_logs(
    out: pipe::Receiver,
    errp: pipe::Receiver,
    agent: String,
    pid: i32,
    budget: Arc<LogBudget>,
) -> Vec<u8> {
    let mut sink = LogSink {
        agent,
        pid,
        budget,
        partial: [Vec::new(), Vec::new()],
        stderr_tail: Vec::new(),
    };
    let mut open = [true, true];
    let streams = [&out, &errp];
    while open[0] || open[1] {
        let which = tokio::select! {
            r = out.readable(), if open[0] => { if r.is_err() { open[0] = false; continue; } 0 }
            r = errp.readable(), if open[1] => { if r.is_err() { open[1] = false; continue; } 1 }
        };
        let result = SCRATCH.with(|c| {
            let mut c = c.borrow_mut();
            let r = streams[which].try_read(&mut c);
            match &r {
                Ok(n) => sink.consume(which, &c[..*n], *n == 0),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    sink.consume(which, &[], true)
                }
                Err(_) => {}
            }
            r
        });
        match result {
            Ok(0) => open[which] = false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => open[which] = false,
        }
    }
    sink.stderr_tail
}

/// Read the record `corral-init` wrote about the agent (see [`crate::exit_status`]).
/// `Err(errno)` when the agent could not be started inside the namespace.
fn read_init_status(fd: OwnedFd) -> Option<Result<Reaped, i32>> {
    use crate::exit_status::{InitRecord, WaitStatus, RECORD_LEN};
    use std::io::Read;
    let mut buf = [0u8; RECORD_LEN];
    let mut f = std::fs::File::from(fd);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if n < buf.len() {
        return None;
    }
    match InitRecord::decode(&buf)? {
        InitRecord::NotStarted { errno } => Some(Err(errno)),
        InitRecord::Ended {
            status,
            utime_ms,
            stime_ms,
            maxrss_kb,
        } => {
            let w = WaitStatus::decode(status);
            Some(Ok(Reaped {
                exit_code: w.exit_code,
                signal: w.signal,
                core_dumped: w.core_dumped,
                cpu_user_ms: utime_ms,
                cpu_sys_ms: stime_ms,
                max_rss_kb: maxrss_kb,
            }))
        }
    }
}

/// Run one task on one fresh agent process and account for it.
///
/// `tools` receives the agent's tool calls (when `None`, every call is answered `denied`).
/// `stop` lets the owner cancel the attempt.
pub async fn run_attempt(
    spec: AttemptSpec,
    task: TaskInput,
    tools: Option<mpsc::Sender<ToolRequest>>,
    stop: watch::Receiver<Option<ExitReason>>,
) -> AttemptOutcome {
    let events = spec.events.clone();
    let out = attempt(spec, task, tools, stop).await;
    // Every attempt ends with this event, whichever way it ended (a failed spawn included).
    if let Some(tx) = events {
        let _ = tx.send(AttemptEvent::Exited(Box::new(out.record.clone())));
    }
    out
}

async fn attempt(
    spec: AttemptSpec,
    task: TaskInput,
    tools: Option<mpsc::Sender<ToolRequest>>,
    mut stop: watch::Receiver<Option<ExitReason>>,
) -> AttemptOutcome {
    let agent = spec.agent.clone();
    let started_wall = SystemTime::now();
    let t0 = Instant::now();
    let mut record = ExitRecord::begin(&agent.name, &spec.run_id, spec.attempt);
    record.started_at = crate::record::rfc3339(started_wall);
    let finish = |mut record: ExitRecord| {
        record.ended_at = crate::record::rfc3339(SystemTime::now());
        record.duration_ms = t0.elapsed().as_millis() as u64;
        record.bound();
        record
    };
    let spawn_failed = |mut record: ExitRecord, msg: String| AttemptOutcome {
        output: None,
        memory: Vec::new(),
        contract: None,
        record: {
            record.reason = ExitReason::SpawnFailed;
            record.error = err("spawn_failed", msg, false);
            finish(record)
        },
    };

    // The process: a warm stem of this agent type when one is waiting (released with this
    // attempt's environment), else made now. In a block, and the launch boxed: what is moved
    // out here keeps no room in this future's state while the agent runs (a thousand idle
    // agents each keep one; see the idle row of the bench).
    let made = {
        let mut warm = None;
        if let Some(stems) = &spec.stems {
            if let Some(stem) = stems.take(&agent.name) {
                match stem.release(&agent, &spec.run_id, spec.attempt) {
                    Ok(l) => warm = Some(l),
                    Err(e) => tracing::debug!(agent = %agent.name, "warm stem unusable: {e}"),
                }
            }
        }
        let was_warm = warm.is_some();
        let launched = match warm {
            Some(l) => Ok(l),
            None => {
                let pools = Pools {
                    workspaces: spec.workspaces.clone(),
                    cgroups: spec.cgroups.clone(),
                };
                Box::pin(launch(&agent, &pools, &spec.run_id, spec.attempt, false)).await
            }
        };
        launched.map(|l| (was_warm, l))
    };
    let (
        was_warm,
        Launched {
            spawned,
            workspace,
            cgroup,
            status_rx,
            up_r,
            down_w,
            out_r,
            err_r,
            beat_r,
            ..
        },
    ) = match made {
        Ok(m) => m,
        Err(e) => return spawn_failed(record, e),
    };
    let pid = spawned.pid;
    spec.emit(|| AttemptEvent::Spawned {
        agent: agent.name.clone(),
        attempt: spec.attempt,
        pid,
        warm: was_warm,
    });
    record.pid = Some(pid as u32);
    let pidfd = match PidFd::new(pid, spawned.pidfd) {
        Ok(p) => p,
        Err(e) => {
            // Not waited for here: the reaper thread reaps it.
            process::kill_and_reap(pid, None, || {});
            return spawn_failed(record, e.to_string());
        }
    };

    // From here on, the process exists: every path below ends in teardown + reap, and if this
    // future is dropped before, the guard does it.
    let mut guard = Teardown::new(pid, pidfd, cgroup.clone(), workspace);
    let mut st = State::new(&spec, &task, t0, pid);
    st.beats = Some(beat_r);
    let mut verdict;
    // Set up without a temporary that would stay in this future's state across the watch.
    let piped = (|| -> std::io::Result<_> {
        Ok((
            pipe::Receiver::from_owned_fd(up_r)?,
            pipe::Sender::from_owned_fd(down_w)?,
            pipe::Receiver::from_owned_fd(out_r)?,
            pipe::Receiver::from_owned_fd(err_r)?,
        ))
    })()
    .map(|(up, down, out, errp)| {
        let log_task = tokio::spawn(drain_logs(
            out,
            errp,
            agent.name.clone(),
            pid,
            st.log_budget.clone(),
        ));
        (log_task, up, down)
    });
    let (log_task, up, setup_error) = match piped {
        Ok((log_task, up, down)) => {
            guard.set_logs(log_task.abort_handle());
            st.down = Some(down);
            (Some(log_task), Some(up), None)
        }
        Err(e) => (None, None, Some(e)),
    };
    match (&up, setup_error) {
        (Some(up), _) => {
            st.send(&Down::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                agent_id: agent.name.clone(),
                run_id: spec.run_id.clone(),
                attempt: spec.attempt,
                heartbeat_interval_ms: agent.heartbeat_interval.as_millis() as u64,
                max_frame: spec.max_frame,
            }));
            verdict = st.watch(up, guard.pidfd(), tools, &mut stop).await;
            st.decided_at = Some(Instant::now());
        }
        (None, e) => {
            let e = e.map(|e| e.to_string()).unwrap_or_default();
            verdict = Verdict {
                reason: Some(ExitReason::SpawnFailed),
                error: err("spawn_failed", format!("set up pipes: {e}"), false),
                graceful: false,
            };
        }
    }

    // Teardown: stop the process (whole group), reap it, account.
    // Boxed: a future the attempt awaits once, at its end, need not widen its state.
    let reaped = Box::pin(st.stop_and_reap(guard.pidfd(), cgroup.as_ref(), verdict.graceful)).await;
    if reaped.is_some() {
        guard.set_reaped();
    }
    // (Also here: an agent that never got ready did not ask for the next stem.)
    spec.refill_stem();
    if let (Some(up), None) = (&up, verdict.reason) {
        // Frames the agent wrote just before it exited are still in the pipe.
        if let Some(v) = st.drain_after_exit(up) {
            verdict = v;
        }
    }
    // Beats not read yet still tell when the agent was last alive, and how far it got.
    st.absorb_beats();
    st.beats = None;
    st.down = None;
    let stats = match log_task {
        Some(mut t) => {
            // Stragglers are dead, so the pipes reach EOF; an escaped process that still holds
            // them must not hold up the record.
            match tokio::time::timeout(Duration::from_millis(250), &mut t).await {
                Ok(Ok(s)) => Some(s),
                _ => {
                    t.abort();
                    None
                }
            }
        }
        None => None,
    };
    if let Some(tail) = stats {
        record.stderr_tail = String::from_utf8_lossy(&tail).into_owned();
    }
    record.log_bytes_dropped = st.log_budget.dropped();
    let workspace = guard.take_workspace();
    // Read before the workspace (and its quota's tmpfs) goes.
    let disk_full = workspace.as_ref().is_some_and(|w| w.is_full());
    match workspace {
        Some(workspace) if agent.keep_workspace => {
            let kept = workspace.keep();
            tracing::info!(agent = %agent.name, pid, workspace = %kept.display(), "workspace kept");
        }
        Some(workspace) => {
            // Removing a tree is blocking file-system work: off the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(workspace)).await;
        }
        None => {}
    }

    // Counters first, then the directories go (off the runtime; removal keeps the counters).
    let (oom, pids_hits, mem_peak) = match cgroup {
        Some(c) => {
            let name = agent.name.clone();
            tokio::task::spawn_blocking(move || {
                let counters = (
                    c.oom_kills() > 0,
                    c.pids_limit_hits(),
                    c.memory_peak_bytes(),
                );
                if let Err(e) = c.remove() {
                    tracing::warn!(agent = %name, pid, "remove cgroup: {e}");
                }
                counters
            })
            .await
            .unwrap_or((false, 0, None))
        }
        None => (false, 0, None),
    };
    // Torn down: the process is reaped, the cgroup and workspace are gone.
    guard.disarm();
    if let Some(peak) = mem_peak {
        let kb = peak / 1024;
        st.peak_rss_kb = Some(st.peak_rss_kb.unwrap_or(0).max(kb));
    }
    // Under corral-init, the agent's own end is in the init's report; without one (the init
    // itself was killed), the init's status stands for the tree.
    let mut reaped = reaped;
    if let Some(fd) = status_rx {
        match read_init_status(fd) {
            Some(Ok(r)) => reaped = Some(r),
            Some(Err(errno)) => {
                verdict.reason = Some(ExitReason::SpawnFailed);
                verdict.error = err(
                    "spawn_failed",
                    format!(
                        "in the child, execve of the agent failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                    false,
                );
            }
            None => {}
        }
    }
    let r = reaped.unwrap_or_default();
    record.exit_code = r.exit_code;
    record.signal = r.signal;
    record.signal_name = r.signal.map(signal_name);
    record.core_dumped = r.core_dumped;
    record.cpu_user_ms = r.cpu_user_ms;
    record.cpu_sys_ms = r.cpu_sys_ms;
    record.max_rss_kb = r.max_rss_kb;
    record.oom_killed = oom;
    record.signals_sent = st.signals_sent.clone();
    record.peak_rss_kb = st.peak_rss_kb;
    record.last_rss_kb = st.last_rss_kb;
    record.progress = st.progress;
    record.phase = st.phase;
    // Measured when the end was decided, not after the teardown that followed.
    let decided_at = st.decided_at.unwrap_or_else(Instant::now);
    record.last_heartbeat_age_ms = st
        .last_frame
        .map(|t| decided_at.saturating_duration_since(t).as_millis() as u64);
    (record.tool_calls, record.tool_calls_dropped) = st.trace.take();

    // A watchdog fired, but the kernel's counters say a limit was hit first: that is the
    // cause (a fork bomb stopped by its deadline is a pids_limit).
    if matches!(
        verdict.reason,
        Some(ExitReason::Hung | ExitReason::Stalled | ExitReason::Deadline)
    ) && (oom || pids_hits > 0)
    {
        let watchdog = verdict.reason.map(|r| r.as_str()).unwrap_or_default();
        let (reason, kind, what) = if oom {
            (
                ExitReason::OomKilled,
                "oom_killed",
                "the kernel OOM-killed a process of the agent".to_string(),
            )
        } else {
            (
                ExitReason::PidsLimit,
                "pids_limit",
                format!("the pids limit refused {pids_hits} fork(s)"),
            )
        };
        verdict.reason = Some(reason);
        verdict.error = err(
            kind,
            format!("{what}; then the {watchdog} watchdog ended it"),
            false,
        );
    }
    let (reason, error) = match verdict.reason {
        Some(reason) => (reason, verdict.error),
        None => classify(&r, oom, pids_hits, &agent, st.truncated.take()),
    };
    // The agent failed with its disk quota used up: that is the likely cause (its writes
    // were failing with ENOSPC).
    let (reason, error) = match reason {
        ExitReason::ExitCode | ExitReason::Signal | ExitReason::AgentError if disk_full => {
            let was = error
                .as_ref()
                .map(|e| format!(" ({}: {})", e.kind, e.message))
                .unwrap_or_default();
            (
                ExitReason::DiskLimit,
                err(
                    "disk_limit",
                    format!(
                        "the agent failed with its disk quota ({} bytes of workspace and /tmp) used up{was}",
                        agent.disk.unwrap_or(0)
                    ),
                    false,
                ),
            )
        }
        _ => (reason, error),
    };
    record.reason = reason;
    record.error = error;
    let output = if reason == ExitReason::Completed {
        st.output.take()
    } else {
        None
    };
    let record = finish(record);
    AttemptOutcome {
        output,
        memory: if reason == ExitReason::Completed {
            std::mem::take(&mut st.memory_out)
        } else {
            Vec::new()
        },
        contract: st.contract.take(),
        record,
    }
}

impl AttemptSpec {
    fn emit(&self, ev: impl FnOnce() -> AttemptEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev());
        }
    }
}

/// Why a process that ended on its own ended, from evidence.
fn classify(
    r: &Reaped,
    oom: bool,
    pids_hits: u64,
    agent: &AgentSpec,
    truncated: Option<String>,
) -> (ExitReason, Option<RecordedError>) {
    let cpu_ms = r.cpu_user_ms + r.cpu_sys_ms;
    let cpu_limit_ms = agent.cpu_time.map(|d| d.as_millis() as u64);
    let trunc = truncated.map(|t| format!(" ({t})")).unwrap_or_default();
    if oom {
        return (
            ExitReason::OomKilled,
            err(
                "oom_killed",
                format!("the kernel OOM-killed the agent at its memory limit{trunc}"),
                true,
            ),
        );
    }
    if r.signal == Some(libc::SIGXCPU)
        || (r.signal == Some(libc::SIGKILL) && cpu_limit_ms.is_some_and(|lim| cpu_ms + 50 >= lim))
    {
        return (
            ExitReason::CpuLimit,
            err(
                "cpu_limit",
                format!("CPU time limit reached after {cpu_ms} ms of CPU{trunc}"),
                false,
            ),
        );
    }
    if pids_hits > 0 {
        return (
            ExitReason::PidsLimit,
            err(
                "pids_limit",
                format!("the pids limit refused {pids_hits} fork(s){trunc}"),
                false,
            ),
        );
    }
    if let Some(sig) = r.signal {
        return (
            ExitReason::Signal,
            err(
                "signal",
                format!(
                    "killed by {}{}{trunc}",
                    signal_name(sig),
                    if r.core_dumped { " (core dumped)" } else { "" }
                ),
                true,
            ),
        );
    }
    let code = r.exit_code.unwrap_or(-1);
    (
        ExitReason::ExitCode,
        err(
            "exit_code",
            format!("exited with code {code} before finishing its task{trunc}"),
            true,
        ),
    )
}

/// A framing error as a protocol violation's message.
fn frame_error(e: corral_proto::FrameError) -> String {
    format!("{} ({})", e, e.kind())
}

/// What woke the watch loop.
enum Wake {
    Up(std::io::Result<()>),
    Tool(u64, Result<Value, AgentError>),
    Writable(std::io::Result<()>),
    Exited,
    Stop(ExitReason),
    Timer,
}

/// The owner's stop request, awaited by one future kept for the whole watch (made again only
/// when the value changed to "no stop"), on a clone of the receiver so that the value can be
/// read while it waits.
struct StopWait {
    fut: Option<std::pin::Pin<Box<StopFuture>>>,
}

type StopFuture =
    dyn Future<Output = (Option<ExitReason>, watch::Receiver<Option<ExitReason>>)> + Send;

impl StopWait {
    fn new(rx: watch::Receiver<Option<ExitReason>>) -> StopWait {
        let mut w = StopWait { fut: None };
        w.arm(rx);
        w
    }

    fn arm(&mut self, mut rx: watch::Receiver<Option<ExitReason>>) {
        self.fut = Some(Box::pin(async move {
            if rx.changed().await.is_err() {
                // The owner is gone without asking for a stop: nothing will ever come.
                std::future::pending::<()>().await;
            }
            let v = *rx.borrow_and_update();
            (v, rx)
        }));
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<ExitReason> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready((Some(reason), _)) => {
                self.fut = None;
                Poll::Ready(reason)
            }
            Poll::Ready((None, rx)) => {
                self.arm(rx);
                // Registers the new future's waker.
                self.poll(cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The attempt's mutable state while the agent runs.
struct State<'a> {
    spec: &'a AttemptSpec,
    pid: i32,
    task: &'a TaskInput,
    t0: Instant,
    phase: Phase,
    /// The supervisor→agent pipe, written without blocking; what does not fit waits in
    /// `pending` for the pipe to become writable. Past `bounds::MAX_PENDING` bytes waiting,
    /// the agent's frames are not read until it reads (see `State::backpressured`).
    down: Option<pipe::Sender>,
    pending: Vec<u8>,
    /// Since when the agent's frames are not read because it does not read its own.
    blocked_since: Option<Instant>,
    /// Tool calls waiting for the owner's answer.
    tool_waits: Vec<(u64, oneshot::Receiver<Result<Value, AgentError>>)>,
    /// Tool answers ready to send (refusals decided here).
    tool_ready: Vec<(u64, Result<Value, AgentError>)>,
    decoder: FrameDecoder,
    contract: Option<Contract>,
    output: Option<Value>,
    memory_out: Vec<Value>,
    last_frame: Option<Instant>,
    /// The beat pipe (read end), read only when a watchdog is due and at the end: a beat
    /// costs the supervisor no wake-up.
    beats: Option<OwnedFd>,
    /// Bytes of a beat record cut short by a read (only a misbehaving agent writes partial
    /// records).
    beat_rest: ([u8; BEAT_LEN], usize),
    progress: u64,
    last_progress_at: Instant,
    task_sent_at: Option<Instant>,
    last_sample: Option<Instant>,
    sampler: Option<Sampler>,
    last_rss_kb: Option<u64>,
    peak_rss_kb: Option<u64>,
    signals_sent: Vec<String>,
    trace: Trace,
    /// Outstanding tool calls (at most `MAX_OUTSTANDING_CALLS`): tool name and start.
    tool_started: std::collections::HashMap<u64, (String, Instant)>,
    /// The attempt's log budget, shared with the stdout/stderr drain.
    log_budget: Arc<LogBudget>,
    truncated: Option<String>,
    up_open: bool,
    decided_at: Option<Instant>,
}

enum Step {
    Continue,
    End(Verdict),
}

/// What one bounded read found.
#[derive(PartialEq)]
enum ReadState {
    /// Nothing more buffered in the pipe right now.
    Drained,
    /// More may be waiting.
    More,
    /// The writer side is closed.
    Eof,
}

impl<'a> State<'a> {
    fn new(spec: &'a AttemptSpec, task: &'a TaskInput, t0: Instant, pid: i32) -> Self {
        State {
            spec,
            pid,
            task,
            t0,
            phase: Phase::Starting,
            down: None,
            pending: Vec::new(),
            blocked_since: None,
            tool_waits: Vec::new(),
            tool_ready: Vec::new(),
            decoder: FrameDecoder::new(spec.max_frame),
            contract: None,
            output: None,
            memory_out: Vec::new(),
            last_frame: None,
            beats: None,
            beat_rest: ([0; BEAT_LEN], 0),
            progress: 0,
            last_progress_at: t0,
            task_sent_at: None,
            last_sample: None,
            sampler: None,
            last_rss_kb: None,
            peak_rss_kb: None,
            signals_sent: Vec::new(),
            trace: Trace::default(),
            tool_started: std::collections::HashMap::new(),
            log_budget: Arc::new(LogBudget::new(spec.agent.log_limit)),
            truncated: None,
            up_open: true,
            decided_at: None,
        }
    }

    fn agent(&self) -> &AgentSpec {
        &self.spec.agent
    }

    fn send(&mut self, msg: &Down) {
        if self.down.is_none() {
            return;
        }
        if frame::encode_into(msg, &mut self.pending).is_ok() {
            self.flush();
        }
    }

    /// Send a frame encoded already.
    fn send_encoded(&mut self, frame: &[u8]) {
        if self.down.is_none() {
            return;
        }
        self.pending.extend_from_slice(frame);
        self.flush();
    }

    /// Write as much of `pending` as the pipe takes now.
    fn flush(&mut self) {
        let Some(down) = &self.down else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match down.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The agent closed its end: nothing more can be said to it.
                    self.pending.clear();
                    self.down = None;
                    return;
                }
            }
        }
        if self.pending.capacity() > 64 * 1024 {
            self.pending = Vec::new();
        }
    }

    /// Whether the agent's frames are left unread because it does not read its own: more than
    /// `bounds::MAX_PENDING` bytes wait to be written to it. Reading resumes once it reads;
    /// after `heartbeat_timeout` so, the attempt ends as a protocol violation.
    fn backpressured(&self) -> bool {
        self.down.is_some() && bounds::over_pending(self.pending.len())
    }

    /// Note when backpressure starts and ends.
    fn note_backpressure(&mut self, now: Instant) {
        match (self.backpressured(), self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (false, Some(_)) => self.blocked_since = None,
            _ => {}
        }
    }

    /// Send a tool's answer and account for it.
    fn deliver(&mut self, call_id: u64, result: Result<Value, AgentError>, now: Instant) {
        if let Some((tool, at)) = self.tool_started.remove(&call_id) {
            self.trace.push(ToolTrace {
                call_id,
                tool,
                ok: result.is_ok(),
                error_kind: result.as_ref().err().map(|e| e.kind.clone()),
                duration_ms: now.duration_since(at).as_millis() as u64,
            });
        }
        if self.tool_started.is_empty() && self.phase == Phase::ToolCall {
            self.phase = Phase::Busy;
            // The agent could not progress while it waited.
            self.last_progress_at = now;
        }
        self.send(&Down::ToolResult(ToolResult { call_id, result }));
    }

    /// Read the beats waiting in the beat pipe (a few bounded reads, never blocking): each is
    /// a sign of life at the moment the agent wrote it (clamped to now) with its progress.
    fn absorb_beats(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(raw) = self.beats.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let now = Instant::now();
        let Some(mono_now) = monotonic_ns() else {
            return;
        };
        SCRATCH.with(|c| {
            let mut c = c.borrow_mut();
            // A pipe holds 64 KiB by default: a couple of reads drain it.
            for _ in 0..4 {
                let (rest, kept) = self.beat_rest;
                c[..kept].copy_from_slice(&rest[..kept]);
                let n = match nix::unistd::read(raw, &mut c[kept..]) {
                    Ok(n) if n > 0 => n,
                    _ => return, // empty (EAGAIN), or the agent closed its end
                };
                let total = kept + n;
                let whole = total - total % BEAT_LEN;
                for rec in c[..whole].chunks_exact(BEAT_LEN) {
                    let mut r = [0u8; BEAT_LEN];
                    r.copy_from_slice(rec);
                    let (progress, at_ns) = corral_proto::beat::decode(&r);
                    let at = bounds::beat_time(now, mono_now, at_ns, self.t0);
                    if self.last_frame.is_none_or(|t| at > t) {
                        self.last_frame = Some(at);
                    }
                    if progress != self.progress && at >= self.last_progress_at {
                        self.progress = progress;
                        self.last_progress_at = at;
                    }
                }
                let mut rest = [0u8; BEAT_LEN];
                rest[..total - whole].copy_from_slice(&c[whole..total]);
                self.beat_rest = (rest, total - whole);
                if n < c.len() - kept {
                    return; // a short read: the pipe is empty
                }
            }
        });
    }

    /// The watchdog that is due now, if any. Beats are read first when the one due is `hung`
    /// or `stalled`: only they tell whether it really is.
    fn overdue(&mut self) -> Option<(Instant, ExitReason)> {
        let (due, why) = self.next_deadline();
        if Instant::now() < due {
            return None;
        }
        if matches!(why, ExitReason::Hung | ExitReason::Stalled) {
            self.absorb_beats();
            let (due, why) = self.next_deadline();
            return (Instant::now() >= due).then_some((due, why));
        }
        Some((due, why))
    }

    /// When the watch loop must wake next: a watchdog's deadline or the next health sample,
    /// moved earlier onto a grid of the system's monotonic clock so that the wake-ups of many
    /// agents coincide and the runtime wakes once for all of them (a thousand agents whose
    /// checks were spread over the second woke it ~200 times a second). Early is harmless: if
    /// nothing is due yet, the next wake is the exact deadline, so a real hang is caught on time.
    fn next_wake(&self) -> Instant {
        let (deadline, _) = self.next_deadline();
        let exact = match self.last_sample {
            Some(t) => deadline.min(t + self.agent().sample_interval.max(Duration::from_millis(1))),
            None => deadline,
        };
        let grid = self
            .agent()
            .heartbeat_interval
            .clamp(Duration::from_millis(1), WAKE_GRID)
            .as_nanos() as u64;
        let now = Instant::now();
        if let Some(mono_now) = monotonic_ns() {
            let ahead = exact.saturating_duration_since(now).as_nanos() as u64;
            let at = mono_now.saturating_add(ahead);
            let on_grid = at - at % grid;
            if on_grid > mono_now {
                return now + Duration::from_nanos(on_grid - mono_now);
            }
        }
        exact
    }

    /// The earliest moment a watchdog fires, and the reason it would give.
    fn next_deadline(&self) -> (Instant, ExitReason) {
        let a = self.agent();
        match self.phase {
            Phase::Starting => (self.t0 + a.startup_timeout, ExitReason::StartupTimeout),
            _ => {
                let mut best = bounds::liveness_deadline(
                    self.last_frame.unwrap_or(self.t0),
                    self.blocked_since,
                    a.heartbeat_timeout,
                );
                if let Some(sent) = self.task_sent_at {
                    if matches!(self.phase, Phase::Busy | Phase::ToolCall) {
                        // Waiting on a tool is not a stall of the agent, nor is waiting for
                        // it to read (its progress is not read meanwhile).
                        if self.phase == Phase::Busy && self.blocked_since.is_none() {
                            let stall = self.last_progress_at + a.stall_timeout;
                            if stall < best.0 {
                                best = (stall, ExitReason::Stalled);
                            }
                        }
                        let wall = sent + a.wall_time;
                        if wall < best.0 {
                            best = (wall, ExitReason::Deadline);
                        }
                    }
                }
                best
            }
        }
    }

    fn violation(&self, message: String) -> Step {
        Step::End(self.violation_verdict(message))
    }

    fn violation_verdict(&self, message: String) -> Verdict {
        tracing::warn!(agent = %self.agent().name, "protocol violation: {message}");
        Verdict {
            reason: Some(ExitReason::ProtocolViolation),
            error: err("protocol_violation", message, false),
            graceful: false,
        }
    }

    /// Take a health sample if one is due by `now + early`.
    fn sample(&mut self, pid: i32, now: Instant, early: Duration) {
        let due = self
            .last_sample
            .is_none_or(|t| (now + early).duration_since(t) >= self.agent().sample_interval);
        if !due {
            return;
        }
        self.last_sample = Some(now);
        if self.sampler.is_none() {
            let under_init = self
                .agent()
                .namespaces
                .contains(&crate::config::Namespace::Pid);
            self.sampler = open_sampler(pid, under_init);
        }
        let Some(sampler) = &self.sampler else {
            return;
        };
        // CPU first, then statm: a statm read that succeeds (its fd is bound to the process)
        // proves the process was still the one whose clock was read.
        let cpu_ms = sampler
            .cpu
            .and_then(|c| nix::time::clock_gettime(c).ok())
            .map(|t| t.tv_sec().max(0) as u64 * 1000 + t.tv_nsec().max(0) as u64 / 1_000_000);
        let mut buf = [0u8; 128];
        let text = std::os::unix::fs::FileExt::read_at(&sampler.statm, &mut buf, 0)
            .ok()
            .and_then(|n| std::str::from_utf8(&buf[..n]).ok());
        // statm: size resident shared text lib data dt, in pages.
        let rss_kb = text
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|f| f.parse::<u64>().ok())
            .map(|pages| pages * page_kb());
        let Some(kb) = rss_kb else {
            self.sampler = None;
            return;
        };
        self.last_rss_kb = Some(kb);
        self.peak_rss_kb = Some(self.peak_rss_kb.unwrap_or(0).max(kb));
        self.spec.emit(|| AttemptEvent::Sample {
            agent: self.agent().name.clone(),
            pid,
            rss_kb: kb,
            cpu_ms,
        });
    }

    /// Handle one message from the agent.
    fn on_frame(
        &mut self,
        msg: Up,
        now: Instant,
        tools: &Option<mpsc::Sender<ToolRequest>>,
    ) -> Step {
        self.last_frame = Some(now);
        match (self.phase, msg) {
            (_, Up::Log(l)) => {
                // Within the log budget shared with stdout and stderr; escaped, so that it
                // stays one line of the supervisor's log.
                let keep = self.log_budget.take(l.message.len());
                if keep > 0 {
                    let text = bounds::escape(bounds::clip(&l.message, keep));
                    tracing::info!(agent = %self.agent().name, pid = self.pid, level = ?l.level, "{text}");
                }
                Step::Continue
            }
            (Phase::Starting, Up::Ready(r)) => {
                if r.protocol != PROTOCOL_VERSION {
                    return self.violation(corral_proto::message::version_mismatch(
                        PROTOCOL_VERSION,
                        r.protocol,
                    ));
                }
                if let Err(e) = r.contract.input.validate(&self.task.input, "input") {
                    self.contract = Some(r.contract);
                    self.phase = Phase::Idle;
                    return Step::End(Verdict {
                        reason: Some(ExitReason::ContractViolation),
                        error: err("contract_violation", e.to_string(), false),
                        graceful: true,
                    });
                }
                self.contract = Some(r.contract);
                self.spec.emit(|| AttemptEvent::Ready {
                    agent: self.agent().name.clone(),
                    attempt: self.spec.attempt,
                    pid: self.pid,
                });
                // The next stem is made now, not at the spawn: its making would compete with
                // this agent's own start for the CPU.
                self.spec.refill_stem();
                let task = Down::Task(Task {
                    task_id: self.task.task_id,
                    input: Value::clone(&self.task.input),
                    memory: self.task.memory.clone(),
                });
                // The agent was told max_frame in Hello: a larger Task it would refuse.
                let max = self.spec.max_frame as usize;
                let refused = match frame::encode(&task) {
                    Ok(b) if b.len() - 4 <= max => {
                        self.send_encoded(&b);
                        None
                    }
                    Ok(b) => Some(format!(
                        "the task is {} bytes encoded, more than max_frame ({max} bytes)",
                        b.len() - 4
                    )),
                    Err(e) => Some(format!("the task cannot be encoded: {e}")),
                };
                if let Some(message) = refused {
                    return Step::End(Verdict {
                        reason: Some(ExitReason::ContractViolation),
                        error: err("contract_violation", message, false),
                        graceful: true,
                    });
                }
                self.phase = Phase::Busy;
                self.task_sent_at = Some(now);
                self.last_progress_at = now;
                Step::Continue
            }
            (Phase::Starting, Up::Failed(f)) if f.task_id == 0 => {
                let reason = if f.error.kind == "protocol_mismatch" {
                    ExitReason::ProtocolViolation
                } else {
                    ExitReason::AgentError
                };
                Step::End(Verdict {
                    reason: Some(reason),
                    error: Some(f.error.into()),
                    graceful: true,
                })
            }
            (Phase::Busy | Phase::ToolCall | Phase::Idle, Up::Heartbeat(h)) => {
                if h.progress != self.progress {
                    self.progress = h.progress;
                    self.last_progress_at = now;
                }
                Step::Continue
            }
            (Phase::Busy | Phase::ToolCall, Up::ToolCall(call)) => {
                let checked = bounds::check_call(&call, self.tool_started.len(), |id| {
                    self.tool_started.contains_key(&id)
                });
                let refusal = match checked {
                    Ok(refusal) => refusal,
                    Err(e) => return self.violation(e.to_string()),
                };
                self.phase = Phase::ToolCall;
                self.tool_started
                    .insert(call.call_id, (call.tool.clone(), now));
                let call_id = call.call_id;
                if let Some(refusal) = refusal {
                    self.tool_ready.push((call_id, Err(refusal)));
                    return Step::Continue;
                }
                let declared = self
                    .contract
                    .as_ref()
                    .is_some_and(|c| c.tools.iter().any(|t| t == &call.tool || t == "*"));
                if !declared {
                    let refusal = AgentError::new(
                        "undeclared_tool",
                        format!(
                            "tool `{}` is not declared in the agent's contract",
                            call.tool
                        ),
                        false,
                    );
                    self.tool_ready.push((call_id, Err(refusal)));
                    return Step::Continue;
                }
                match tools {
                    Some(t) => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        let req = ToolRequest {
                            agent: self.agent().name.clone(),
                            call,
                            reply: reply_tx,
                        };
                        if t.try_send(req).is_err() {
                            let busy =
                                AgentError::new("unavailable", "tool broker is busy or gone", true);
                            self.tool_ready.push((call_id, Err(busy)));
                        } else {
                            self.tool_waits.push((call_id, reply_rx));
                        }
                    }
                    None => {
                        let denied = AgentError::new(
                            "denied",
                            format!("no tools are configured for agent `{}`", self.agent().name),
                            false,
                        );
                        self.tool_ready.push((call_id, Err(denied)));
                    }
                }
                Step::Continue
            }
            (Phase::Busy | Phase::ToolCall, Up::Done(d)) => {
                if d.task_id != self.task.task_id {
                    return self.violation(format!(
                        "Done for task {} while task {} runs",
                        d.task_id, self.task.task_id
                    ));
                }
                self.phase = Phase::Idle;
                if let Some(c) = &self.contract {
                    if let Err(e) = c.output.validate(&d.output, "output") {
                        return Step::End(Verdict {
                            reason: Some(ExitReason::ContractViolation),
                            error: err("contract_violation", e.to_string(), false),
                            graceful: true,
                        });
                    }
                }
                self.output = Some(d.output);
                self.memory_out = d.memory;
                Step::End(Verdict {
                    reason: Some(ExitReason::Completed),
                    error: None,
                    graceful: true,
                })
            }
            (Phase::Busy | Phase::ToolCall, Up::Failed(f)) => {
                if f.task_id != self.task.task_id {
                    return self.violation(format!(
                        "Failed for task {} while task {} runs",
                        f.task_id, self.task.task_id
                    ));
                }
                self.phase = Phase::Idle;
                Step::End(Verdict {
                    reason: Some(ExitReason::AgentError),
                    error: Some(f.error.into()),
                    graceful: true,
                })
            }
            (phase, msg) => self.violation(format!(
                "unexpected `{}` message while {}",
                msg.name(),
                match phase {
                    Phase::Starting => "starting (before Ready)",
                    Phase::Idle => "idle",
                    Phase::Busy => "busy",
                    Phase::ToolCall => "waiting for a tool",
                    Phase::Stopping => "stopping",
                }
            )),
        }
    }

    /// Read what is available on the up pipe into the decoder. `Err` is a protocol
    /// violation's message.
    fn read_available(
        &mut self,
        up: &pipe::Receiver,
        max_chunks: usize,
    ) -> Result<ReadState, String> {
        // Bounded per call: a flooding agent cannot grow the buffer without bound (frames are
        // handled between calls) nor keep this task from its timers.
        use std::os::fd::AsRawFd;
        SCRATCH.with(|c| {
            let mut c = c.borrow_mut();
            let chunk = &mut c[..16 * 1024];
            let mut chunks = 0;
            while chunks < max_chunks {
                // Refuse a too-large length, or a too-large tool call, before reading its
                // payload.
                self.decoder.wanted().map_err(frame_error)?;
                bounds::check_head(self.decoder.peek_head()).map_err(|e| e.to_string())?;
                let mut got = None;
                // A short read proves the pipe empty: it is reported to the runtime as
                // WouldBlock, which clears the readiness now, instead of one more wake-up and
                // one more read() to learn it.
                let r = up.try_io(|| {
                    let n =
                        nix::unistd::read(up.as_raw_fd(), chunk).map_err(std::io::Error::from)?;
                    got = Some(n);
                    if n > 0 && n < chunk.len() {
                        Err(std::io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(n)
                    }
                });
                match (r, got) {
                    (_, Some(0)) => return Ok(ReadState::Eof),
                    (Ok(n), _) => self.decoder.push(&chunk[..n]),
                    (Err(_), Some(n)) => {
                        self.decoder.push(&chunk[..n]);
                        return Ok(ReadState::Drained);
                    }
                    (Err(e), None) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        return Ok(ReadState::Drained)
                    }
                    (Err(e), None) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    (Err(e), None) => return Err(frame_error(e.into())),
                }
                chunks += 1;
            }
            Ok(ReadState::More)
        })
    }

    /// Decode and handle the complete frames buffered, and send the answers decided here,
    /// until the agent is backpressured (the frames left wait in the decoder).
    fn handle_buffered(&mut self, now: Instant, tools: &Option<mpsc::Sender<ToolRequest>>) -> Step {
        while !self.backpressured() {
            if let Err(e) = bounds::check_head(self.decoder.peek_head()) {
                return self.violation(e.to_string());
            }
            match self.decoder.next::<Up>() {
                Ok(Some(msg)) => {
                    if let Step::End(v) = self.on_frame(msg, now, tools) {
                        return Step::End(v);
                    }
                    for (call_id, result) in std::mem::take(&mut self.tool_ready) {
                        self.deliver(call_id, result, now);
                    }
                }
                Ok(None) => return Step::Continue,
                Err(e) => return self.violation(frame_error(e)),
            }
        }
        Step::Continue
    }

    /// The event loop: frames, exit, watchdogs, tool results, stop requests.
    async fn watch(
        &mut self,
        up: &pipe::Receiver,
        pidfd: &PidFd,
        tools: Option<mpsc::Sender<ToolRequest>>,
        stop: &mut watch::Receiver<Option<ExitReason>>,
    ) -> Verdict {
        let pid = pidfd.pid();
        // One timer per attempt in the runtime's wheel. It is moved earlier when a deadline
        // comes closer, but not later on every frame: when it fires early, the loop re-arms
        // it for the real deadline. A heartbeat therefore costs no timer operation (and a beat
        // on the beat pipe no wake-up at all: beats are read when the timer fires).
        let sleep = tokio::time::sleep_until(self.next_wake().into());
        tokio::pin!(sleep);
        let mut stop_wait = StopWait::new(stop.clone());
        loop {
            self.note_backpressure(Instant::now());
            let wake_at = self.next_wake();
            if wake_at < sleep.deadline().into_std() {
                sleep.as_mut().reset(wake_at.into());
            }
            // Checked here as well as by the timer: an agent flooding frames keeps the read
            // branch ready, and must not keep its watchdog from firing.
            if let Some((due, why)) = self.overdue() {
                self.spec.emit(|| AttemptEvent::Watchdog {
                    agent: self.agent().name.clone(),
                    pid,
                    reason: why,
                    late_us: Instant::now().duration_since(due).as_micros() as u64,
                });
                return self.timeout_verdict(why);
            }
            let wake = std::future::poll_fn(|cx| {
                self.poll_wake(cx, up, pidfd, &mut stop_wait, sleep.as_mut())
            })
            .await;
            match wake {
                Wake::Up(r) => {
                    let now = Instant::now();
                    if r.is_err() {
                        self.up_open = false;
                        continue;
                    }
                    match self.read_available(up, 4) {
                        Ok(state) => {
                            if let Step::End(v) = self.handle_buffered(now, &tools) {
                                return v;
                            }
                            if state == ReadState::Eof {
                                self.up_open = false;
                                // (Whole frames held back by backpressure are no truncation.)
                                let finished = match self.backpressured() {
                                    true => Ok(()),
                                    false => self.decoder.finish(),
                                };
                                if let Err(e) = finished {
                                    // The writer end closed mid-frame: usually the agent died
                                    // while writing; its exit tells more.
                                    self.truncated = Some(e.to_string());
                                }
                            }
                        }
                        Err(e) => return self.violation_verdict(e),
                    }
                    self.sample(pid, now, Duration::ZERO);
                }
                Wake::Tool(call_id, result) => self.deliver(call_id, result, Instant::now()),
                Wake::Writable(r) => {
                    if r.is_ok() {
                        self.flush();
                    } else {
                        self.pending.clear();
                    }
                    // The agent read: frames held back meanwhile are handled now.
                    if let Step::End(v) = self.handle_buffered(Instant::now(), &tools) {
                        return v;
                    }
                }
                Wake::Exited => {
                    return Verdict {
                        reason: None,
                        error: None,
                        graceful: false,
                    };
                }
                Wake::Stop(reason) => {
                    if reason == ExitReason::Cancelled {
                        self.send(&Down::Cancel(corral_proto::Cancel {
                            task_id: self.task.task_id,
                        }));
                    }
                    return Verdict {
                        reason: Some(reason),
                        error: err(
                            reason.as_str(),
                            format!("stopped by its owner: {reason}"),
                            false,
                        ),
                        graceful: true,
                    };
                }
                Wake::Timer => {
                    // Re-check: events (and beats, read now) may have moved the deadline. The
                    // beats are read even when the wake-up came early (on the grid), so that
                    // an agent that is alive is not woken for again at its exact deadline.
                    self.absorb_beats();
                    if let Some((due, why)) = self.overdue() {
                        self.spec.emit(|| AttemptEvent::Watchdog {
                            agent: self.agent().name.clone(),
                            pid,
                            reason: why,
                            late_us: Instant::now().duration_since(due).as_micros() as u64,
                        });
                        return self.timeout_verdict(why);
                    }
                    // A sample due within a quarter of its interval is taken now rather than
                    // with a wake-up of its own.
                    let now = Instant::now();
                    let quarter = self.agent().sample_interval / 4;
                    self.sample(pid, now, quarter);
                    sleep.as_mut().reset(self.next_wake().into());
                }
            }
        }
    }

    /// What woke the watch loop. Sources are polled in place (no future is built per turn):
    /// a heartbeat costs one readiness check per source, not a registration and removal of
    /// a waiter on each. The owner's stop, the exit and the timer come first so that a
    /// flooding agent, whose pipe is always ready, cannot hide them.
    fn poll_wake(
        &mut self,
        cx: &mut std::task::Context<'_>,
        up: &pipe::Receiver,
        pidfd: &PidFd,
        stop_wait: &mut StopWait,
        sleep: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Poll<Wake> {
        if let Poll::Ready(reason) = stop_wait.poll(cx) {
            return Poll::Ready(Wake::Stop(reason));
        }
        if pidfd.poll_exited(cx).is_ready() {
            return Poll::Ready(Wake::Exited);
        }
        if sleep.poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        for i in 0..self.tool_waits.len() {
            if let Poll::Ready(r) = std::pin::Pin::new(&mut self.tool_waits[i].1).poll(cx) {
                let (id, _) = self.tool_waits.swap_remove(i);
                let r = r.unwrap_or_else(|_| {
                    Err(AgentError::new(
                        "unavailable",
                        "tool broker dropped the call",
                        true,
                    ))
                });
                return Poll::Ready(Wake::Tool(id, r));
            }
        }
        if !self.pending.is_empty() {
            if let Some(down) = &self.down {
                if let Poll::Ready(r) = down.poll_write_ready(cx) {
                    return Poll::Ready(Wake::Writable(r));
                }
            }
        }
        if self.up_open && !self.backpressured() {
            if let Poll::Ready(r) = up.poll_read_ready(cx) {
                return Poll::Ready(Wake::Up(r));
            }
        }
        Poll::Pending
    }

    fn timeout_verdict(&self, why: ExitReason) -> Verdict {
        let a = self.agent();
        let message = match why {
            ExitReason::StartupTimeout => {
                format!("no Ready within startup_timeout ({:?})", a.startup_timeout)
            }
            ExitReason::Hung => format!(
                "no frame within heartbeat_timeout ({:?})",
                a.heartbeat_timeout
            ),
            ExitReason::Stalled => format!(
                "heartbeats continued but progress stayed at {} for stall_timeout ({:?})",
                self.progress, a.stall_timeout
            ),
            ExitReason::Deadline => format!("task ran past wall_time ({:?})", a.wall_time),
            ExitReason::ProtocolViolation => {
                return self.violation_verdict(
                    BoundError::NotReading {
                        bytes: self.pending.len(),
                        waited: a.heartbeat_timeout,
                    }
                    .to_string(),
                )
            }
            other => other.to_string(),
        };
        tracing::warn!(agent = %a.name, reason = %why, "{message}");
        Verdict {
            reason: Some(why),
            error: err(why.as_str(), message, true),
            graceful: false,
        }
    }

    /// Process frames the agent wrote before it exited (non-blocking). Returns a verdict when
    /// one of them ends the task (e.g. `Done` raced with the exit).
    fn drain_after_exit(&mut self, up: &pipe::Receiver) -> Option<Verdict> {
        if self.output.is_some() {
            return None;
        }
        // The agent is gone: nothing more can be said to it, so nothing holds its frames back.
        self.pending = Vec::new();
        self.down = None;
        loop {
            let state = self.read_available(up, 4);
            if let Step::End(v) = self.handle_buffered(Instant::now(), &None) {
                return Some(v);
            }
            if !matches!(state, Ok(ReadState::More)) {
                return None;
            }
        }
    }

    /// Stop the process tree with escalation, then reap the leader.
    async fn stop_and_reap(
        &mut self,
        pidfd: &PidFd,
        cgroup: Option<&Arc<AgentCgroup>>,
        graceful: bool,
    ) -> Option<Reaped> {
        let pid = pidfd.pid();
        let grace = self.agent().kill_grace;
        // Did it already exit? (Polls once; does not reap, so the group id stays reserved.)
        let exited_already = tokio::time::timeout(Duration::ZERO, pidfd.exited())
            .await
            .is_ok();
        if !exited_already {
            self.send(&Down::Shutdown(Shutdown {
                grace_ms: grace.as_millis() as u64,
            }));
            if !graceful {
                process::kill_group(pid, libc::SIGTERM);
                self.signals_sent.push("SIGTERM".into());
            }
            if tokio::time::timeout(grace, pidfd.exited()).await.is_err() {
                process::kill_group(pid, libc::SIGKILL);
                pidfd.signal(libc::SIGKILL);
                self.signals_sent.push("SIGKILL".into());
                pidfd.exited().await;
            }
        }
        // Nothing the agent started survives it: the group (the leader is a zombie, so its
        // id cannot have been reused) and the cgroup, before the leader is reaped.
        process::kill_group(pid, libc::SIGKILL);
        if let Some(cg) = cgroup {
            // cgroup file I/O can take milliseconds (v1 waits on RCU): off the runtime.
            let cg = cg.clone();
            let name = self.agent().name.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let members = cg.pids().unwrap_or_default();
                if let Err(e) = cg.kill_all() {
                    tracing::warn!(agent = %name, pid, "kill cgroup: {e}");
                }
                // Escapees reparented to us (no pid namespace) are zombies of ours now.
                process::reap_adopted(&members);
            })
            .await;
        }
        process::try_reap(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(limit: u64) -> LogSink {
        LogSink {
            agent: "t".into(),
            pid: 1,
            budget: Arc::new(LogBudget::new(limit)),
            partial: [Vec::new(), Vec::new()],
            stderr_tail: Vec::new(),
        }
    }

    #[test]
    fn lines_split_across_reads_are_joined() {
        let mut s = sink(1 << 20);
        s.consume(0, b"ab\ncd", false);
        assert_eq!(s.partial[0], b"cd");
        s.consume(0, b"e", false);
        assert_eq!(s.partial[0], b"cde");
        s.consume(0, b"f\ng\nh", false);
        assert_eq!(s.partial[0], b"h");
        s.consume(0, b"", true);
        assert!(
            s.partial[0].is_empty(),
            "end of stream flushes the last line"
        );
    }

    #[test]
    fn bytes_over_the_limit_are_counted_not_kept() {
        let mut s = sink(4);
        s.consume(0, b"0123456789", false);
        assert_eq!(s.budget.dropped(), 6);
        assert_eq!(s.partial[0], b"0123");
        s.consume(1, b"oops\n", false);
        assert_eq!(s.budget.dropped(), 11);
        assert_eq!(
            s.stderr_tail, b"oops\n",
            "the stderr tail is kept beyond the limit"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_bytes() {
        let mut s = sink(0);
        s.consume(1, &vec![b'a'; STDERR_TAIL], false);
        s.consume(1, b"END", false);
        assert_eq!(s.stderr_tail.len(), STDERR_TAIL);
        assert!(s.stderr_tail.ends_with(b"aEND"));
    }
}
