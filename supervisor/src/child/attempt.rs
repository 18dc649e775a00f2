//! One attempt from spawn to exit record, in order: get the process (a warm stem or a launch),
//! set up its pipes and the drain of its output, watch it (see `watch`), stop and reap it (see
//! `stop`), then account: what the kernel and the watch found, decided into a reason (see
//! `verdict`) and written into the [`ExitRecord`].
//!
//! Nothing that the next attempt does not need is awaited before the record is returned: the
//! removal of the cgroup and of the workspace goes to the reaper thread once the counters are
//! read.

use super::guard::Teardown;
use super::launch::{launch, Launched};
use super::protocol::Protocol;
use super::verdict::{self, Evidence, Verdict};
use super::watch::Watch;
use super::wire::{Beats, Wire};
use super::{logs, stop};
use super::{AttemptEvent, AttemptOutcome, AttemptSpec, Pools, TaskInput, ToolRequest};
use crate::record::{ExitReason, ExitRecord};
use crate::sandbox::cgroup::AgentCgroup;
use crate::sandbox::process::{self, PidFd, Reaped};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, watch};

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

/// The record's times, and its bounds applied: the last thing done to it.
fn finish(mut record: ExitRecord, t0: Instant) -> ExitRecord {
    record.ended_at = crate::record::rfc3339(SystemTime::now());
    record.duration_ms = t0.elapsed().as_millis() as u64;
    record.bound();
    record
}

/// The outcome of an attempt whose process could not be made.
fn spawn_failed(mut record: ExitRecord, t0: Instant, message: String) -> AttemptOutcome {
    record.reason = ExitReason::SpawnFailed;
    record.error = verdict::err("spawn_failed", message, false);
    AttemptOutcome {
        output: None,
        memory: Vec::new(),
        contract: None,
        record: finish(record, t0),
    }
}

/// The process: a warm stem of this agent type when one is waiting (released with this
/// attempt's environment), else made now. Whether it was warm.
async fn obtain(spec: &AttemptSpec) -> Result<(bool, Launched), String> {
    let agent = &spec.agent;
    if let Some(stem) = spec.stems.as_ref().and_then(|s| s.take(&agent.name)) {
        match stem.release(agent, &spec.run_id, spec.attempt) {
            Ok(l) => return Ok((true, l)),
            Err(e) => tracing::debug!(agent = %agent.name, "warm stem unusable: {e}"),
        }
    }
    let pools = Pools {
        workspaces: spec.workspaces.clone(),
        cgroups: spec.cgroups.clone(),
    };
    launch(agent, &pools, &spec.run_id, spec.attempt, false)
        .await
        .map(|l| (false, l))
}

async fn attempt(
    spec: AttemptSpec,
    task: TaskInput,
    tools: Option<mpsc::Sender<ToolRequest>>,
    stop: watch::Receiver<Option<ExitReason>>,
) -> AttemptOutcome {
    // Three stages; only the watch waits long, and its future holds no more than it needs:
    // the starting and the finishing are boxed (a future awaited once need not widen this
    // one's state), and what the agent's whole life needs is in one box of its own.
    let mut running = match Box::pin(start(spec, task, tools)).await {
        Ok(running) => running,
        Err(outcome) => return *outcome,
    };
    let verdict = running.watch(stop).await;
    Box::pin(running.finish(verdict)).await
}

/// An attempt whose process exists: what its watch and its teardown need.
pub(super) struct Running {
    /// The conversation, the pipes, the beats, health, tools.
    w: Watch,
    /// Kills and reaps the process (and removes the cgroup and workspace) if this is dropped
    /// before the teardown.
    guard: Teardown,
    /// The agent's frames (`None`: the pipes could not be set up; `setup_error` says why).
    up: Option<pipe::Receiver>,
    setup_error: Option<std::io::Error>,
    /// The drain of stdout and stderr; its result is the stderr tail.
    log_task: Option<tokio::task::JoinHandle<Vec<u8>>>,
    cgroup: Option<Arc<AgentCgroup>>,
    /// `corral-init`'s record of the agent, when it runs under one.
    status_rx: Option<OwnedFd>,
    /// When the attempt started, for the record.
    started: SystemTime,
    t0: Instant,
}

/// Get the process and set up its pipes, the drain of its output and the conversation (its
/// `Hello` said). `Err`: the outcome of an attempt whose process could not be made.
async fn start(
    spec: AttemptSpec,
    task: TaskInput,
    tools: Option<mpsc::Sender<ToolRequest>>,
) -> Result<Box<Running>, Box<AttemptOutcome>> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let failed = |spec: &AttemptSpec, pid: Option<i32>, message: String| {
        let mut record = ExitRecord::begin(&spec.agent.name, &spec.run_id, spec.attempt);
        record.started_at = crate::record::rfc3339(started);
        record.pid = pid.map(|p| p as u32);
        Box::new(spawn_failed(record, t0, message))
    };
    let (was_warm, launched) = match obtain(&spec).await {
        Ok(m) => m,
        Err(e) => return Err(failed(&spec, None, e)),
    };
    let Launched {
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
    } = launched;
    let pid = spawned.pid;
    spec.emit(|| AttemptEvent::Spawned {
        agent: spec.agent.name.clone(),
        attempt: spec.attempt,
        pid,
        warm: was_warm,
    });
    let pidfd = match PidFd::new(pid, spawned.pidfd) {
        Ok(p) => p,
        Err(e) => {
            // Not waited for here: the reaper thread reaps it.
            process::kill_and_reap(pid, None, || {});
            return Err(failed(&spec, Some(pid), e.to_string()));
        }
    };

    // From here on, the process exists: every path ends in teardown + reap, and if the attempt
    // is dropped before, the guard does it.
    let mut guard = Teardown::new(pid, pidfd, cgroup.clone(), workspace);
    let agent = spec.agent.clone();
    let proto = Protocol::new(agent.clone(), task, spec.max_frame, tools.is_some(), t0);
    let hello = proto.hello(&spec.run_id, spec.attempt);
    let budget = proto.log_budget().clone();
    let piped = (|| -> std::io::Result<_> {
        Ok((
            pipe::Receiver::from_owned_fd(up_r)?,
            pipe::Sender::from_owned_fd(down_w)?,
            pipe::Receiver::from_owned_fd(out_r)?,
            pipe::Receiver::from_owned_fd(err_r)?,
        ))
    })();
    let (up, down, log_task, setup_error) = match piped {
        Ok((up, down, out, errp)) => {
            let drain = logs::drain(out, errp, agent.name.clone(), pid, budget);
            let log_task = tokio::spawn(drain);
            guard.set_logs(log_task.abort_handle());
            (Some(up), Some(down), Some(log_task), None)
        }
        Err(e) => (None, None, None, Some(e)),
    };
    let mut wire = Wire::new(down, spec.max_frame);
    wire.send(&hello);
    let w = Watch::new(spec, pid, proto, wire, Beats::new(beat_r), tools);
    Ok(Box::new(Running {
        w,
        guard,
        up,
        setup_error,
        log_task,
        cgroup,
        status_rx,
        started,
        t0,
    }))
}

impl Running {
    /// Watch the agent until the attempt's end is decided (see `watch`).
    async fn watch(&mut self, stop: watch::Receiver<Option<ExitReason>>) -> Verdict {
        match &self.up {
            Some(up) => self.w.run(up, self.guard.pidfd(), stop).await,
            None => {
                let e = self.setup_error.take().map(|e| e.to_string());
                let message = format!("set up pipes: {}", e.unwrap_or_default());
                Verdict::ended(ExitReason::SpawnFailed, message, false, false)
            }
        }
    }

    /// Stop and reap the process, then account for the attempt.
    async fn finish(mut self: Box<Self>, mut verdict: Verdict) -> AttemptOutcome {
        let decided_at = Instant::now();
        let w = &mut self.w;
        let agent = w.spec.agent.clone();
        let pid = self.guard.pidfd().pid();

        // Teardown: stop the process (whole group), reap it.
        let mut signals_sent = Vec::new();
        let shutdown = w.proto.shutdown();
        let reaped = stop::stop_and_reap(
            self.guard.pidfd(),
            self.cgroup.as_ref(),
            verdict.graceful,
            w.proto.kill_grace(),
            || w.wire.send(&shutdown),
            &mut signals_sent,
        )
        .await;
        if reaped.is_some() {
            self.guard.set_reaped();
        }
        // (Also here: an agent that never got ready did not ask for the next stem.)
        w.spec.refill_stem();
        if let (Some(up), None) = (&self.up, verdict.reason) {
            // Frames the agent wrote just before it exited are still in the pipe.
            if let Some(v) = w.drain_after_exit(up) {
                verdict = v;
            }
        }
        verdict.log(&agent.name);
        w.last_beats();
        w.wire.close();
        self.up = None;
        let mut record = ExitRecord::begin(&agent.name, &w.spec.run_id, w.spec.attempt);
        record.started_at = crate::record::rfc3339(self.started);
        record.pid = Some(pid as u32);
        if let Some(t) = self.log_task.take() {
            record.stderr_tail = stderr_tail(t).await;
        }
        record.log_bytes_dropped = w.proto.log_budget().dropped();

        // What the kernel says, then the removals, left to the reaper.
        let workspace = self.guard.take_workspace();
        // Read before the workspace (and its quota's tmpfs) goes.
        let disk_full = workspace.as_ref().is_some_and(|ws| ws.is_full());
        let workspace = match workspace {
            Some(workspace) if agent.keep_workspace => {
                let kept = workspace.keep();
                tracing::info!(agent = %agent.name, pid, workspace = %kept.display(), "workspace kept");
                None
            }
            other => other,
        };
        stop::dispose(None, workspace);
        let counters = match self.cgroup.take() {
            Some(c) => stop::cgroup_counters(c).await,
            None => stop::CgroupCounters::default(),
        };
        // Torn down: the process is reaped, the cgroup and workspace are left to the reaper.
        self.guard.disarm();
        if let Some(peak) = counters.mem_peak {
            w.health.note_peak(peak / 1024);
        }
        // Under corral-init, the agent's own end is in the init's report; without one (the
        // init itself was killed), the init's status stands for the tree.
        let mut reaped = reaped.unwrap_or_default();
        match self.status_rx.take().and_then(stop::read_init_status) {
            Some(Ok(r)) => reaped = r,
            Some(Err(errno)) => {
                let e = std::io::Error::from_raw_os_error(errno);
                let message = format!("in the child, execve of the agent failed: {e}");
                verdict = Verdict::ended(ExitReason::SpawnFailed, message, false, false);
            }
            None => {}
        }
        account(&mut record, &reaped, w, signals_sent, decided_at);
        let evidence = Evidence {
            reaped,
            oom: counters.oom,
            pids_hits: counters.pids_hits,
            disk_full,
            truncated: w.truncated.take(),
        };
        let (reason, error) = verdict::decide(verdict, &evidence, &agent);
        record.oom_killed = counters.oom;
        record.reason = reason;
        record.error = error;
        let done = w.proto.finish();
        record.tool_calls = done.tool_calls;
        record.tool_calls_dropped = done.tool_calls_dropped;
        let completed = reason == ExitReason::Completed;
        AttemptOutcome {
            output: done.output.filter(|_| completed),
            memory: if completed { done.memory } else { Vec::new() },
            contract: done.contract,
            record: finish(record, self.t0),
        }
    }
}

/// The last bytes of stderr, once the drain has reached the end of both streams. Stragglers
/// are dead, so the pipes reach EOF; an escaped process that still holds them must not hold up
/// the record.
async fn stderr_tail(mut drain: tokio::task::JoinHandle<Vec<u8>>) -> String {
    match tokio::time::timeout(Duration::from_millis(250), &mut drain).await {
        Ok(Ok(tail)) => String::from_utf8_lossy(&tail).into_owned(),
        _ => {
            drain.abort();
            String::new()
        }
    }
}

/// What the process and the watch say, into the record.
fn account(
    record: &mut ExitRecord,
    r: &Reaped,
    w: &Watch,
    signals_sent: Vec<String>,
    decided_at: Instant,
) {
    record.exit_code = r.exit_code;
    record.signal = r.signal;
    record.signal_name = r.signal.map(verdict::signal_name);
    record.core_dumped = r.core_dumped;
    record.cpu_user_ms = r.cpu_user_ms;
    record.cpu_sys_ms = r.cpu_sys_ms;
    record.max_rss_kb = r.max_rss_kb;
    record.signals_sent = signals_sent;
    record.peak_rss_kb = w.health.peak_rss_kb;
    record.last_rss_kb = w.health.last_rss_kb;
    record.progress = w.proto.progress();
    record.phase = w.proto.phase();
    // Measured when the end was decided, not after the teardown that followed.
    record.last_heartbeat_age_ms = w
        .proto
        .last_alive()
        .map(|t| decided_at.saturating_duration_since(t).as_millis() as u64);
}
