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
use crate::sandbox::process::{self, PidFd, Reaped};
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
    let agent = spec.agent.clone();
    let t0 = Instant::now();
    let mut record = ExitRecord::begin(&agent.name, &spec.run_id, spec.attempt);
    record.started_at = crate::record::rfc3339(SystemTime::now());

    // Boxed: what the launch holds keeps no room in this future's state while the agent runs
    // (a thousand idle agents each keep one; see the idle row of the bench).
    let (was_warm, launched) = match Box::pin(obtain(&spec)).await {
        Ok(m) => m,
        Err(e) => return spawn_failed(record, t0, e),
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
            return spawn_failed(record, t0, e.to_string());
        }
    };

    // From here on, the process exists: every path below ends in teardown + reap, and if this
    // future is dropped before, the guard does it.
    let mut guard = Teardown::new(pid, pidfd, cgroup.clone(), workspace);
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
    let wire = Wire::new(down, spec.max_frame);
    let mut w = Watch::new(&spec, pid, proto, wire, Beats::new(beat_r), tools);
    let mut verdict = match (&up, setup_error) {
        (Some(up), _) => w.run(&hello, up, guard.pidfd(), stop).await,
        (None, e) => {
            let e = e.map(|e| e.to_string()).unwrap_or_default();
            Verdict::ended(
                ExitReason::SpawnFailed,
                format!("set up pipes: {e}"),
                false,
                false,
            )
        }
    };
    drop(hello);
    let decided_at = Instant::now();

    // Teardown: stop the process (whole group), reap it.
    let mut signals_sent = Vec::new();
    let grace = w.proto.kill_grace();
    let shutdown = w.proto.shutdown();
    // Boxed: a future the attempt awaits once, at its end, need not widen its state.
    let reaped = Box::pin(stop::stop_and_reap(
        guard.pidfd(),
        cgroup.as_ref(),
        verdict.graceful,
        grace,
        || w.wire.send(&shutdown),
        &mut signals_sent,
    ))
    .await;
    if reaped.is_some() {
        guard.set_reaped();
    }
    // (Also here: an agent that never got ready did not ask for the next stem.)
    spec.refill_stem();
    if let (Some(up), None) = (&up, verdict.reason) {
        // Frames the agent wrote just before it exited are still in the pipe.
        if let Some(v) = w.drain_after_exit(up) {
            verdict = v;
        }
    }
    verdict.log(&agent.name);
    w.last_beats();
    w.wire.close();
    drop(up);
    if let Some(t) = log_task {
        record.stderr_tail = stderr_tail(t).await;
    }
    record.log_bytes_dropped = w.proto.log_budget().dropped();

    // What the kernel says, then the removals, left to the reaper.
    let workspace = guard.take_workspace();
    // Read before the workspace (and its quota's tmpfs) goes.
    let disk_full = workspace.as_ref().is_some_and(|w| w.is_full());
    let workspace = match workspace {
        Some(workspace) if agent.keep_workspace => {
            let kept = workspace.keep();
            tracing::info!(agent = %agent.name, pid, workspace = %kept.display(), "workspace kept");
            None
        }
        other => other,
    };
    stop::dispose(None, workspace);
    let counters = match cgroup {
        Some(c) => Box::pin(stop::cgroup_counters(c)).await,
        None => stop::CgroupCounters::default(),
    };
    // Torn down: the process is reaped, the cgroup and workspace are left to the reaper.
    guard.disarm();
    if let Some(peak) = counters.mem_peak {
        w.health.note_peak(peak / 1024);
    }
    // Under corral-init, the agent's own end is in the init's report; without one (the init
    // itself was killed), the init's status stands for the tree.
    let mut reaped = reaped.unwrap_or_default();
    match status_rx.and_then(stop::read_init_status) {
        Some(Ok(r)) => reaped = r,
        Some(Err(errno)) => {
            let e = std::io::Error::from_raw_os_error(errno);
            let message = format!("in the child, execve of the agent failed: {e}");
            verdict = Verdict::ended(ExitReason::SpawnFailed, message, false, false);
        }
        None => {}
    }
    account(&mut record, &reaped, &w, signals_sent, decided_at);
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
        record: finish(record, t0),
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
    w: &Watch<'_>,
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
