//! One attempt from spawn to exit record, in order: get the process (a warm stem or a launch),
//! set up its pipes and their poller, watch it (see `watch`), stop and reap it (see
//! `stop`), then account: what the kernel and the watch found, decided into a reason (see
//! `verdict`) and written into the [`ExitRecord`].
//!
//! Nothing that the next attempt does not need is awaited before the record is returned: the
//! removal of the cgroup and of the workspace goes to the disposal threads
//! (`process::dispose_later`) once the counters are read.

use super::guard::Teardown;
use super::launch::{launch, Launched, Turn};
use super::logs::Logs;
use super::poller::{set_nonblocking, Poller, Ready};
use super::protocol::Protocol;
use super::stop;
use super::verdict::{self, Evidence, Verdict};
use super::watch::Watch;
use super::wire::{Beats, Wire};
use super::{AttemptEvent, AttemptOutcome, AttemptSpec, Pools, TaskInput, ToolSink};
use crate::record::{ExitReason, ExitRecord};
use crate::sandbox::process::Reaped;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Run one task on one fresh agent process and account for it.
///
/// `tools` receives the agent's tool calls (when `None`, every call is answered `denied`).
/// `stop` lets the owner cancel the attempt. `turn`: a launch turn taken already (see
/// [`super::launch_turn`]); without one, the launch waits for one.
pub fn run_attempt(
    spec: AttemptSpec,
    task: TaskInput,
    tools: Option<ToolSink>,
    stop: watch::Receiver<Option<ExitReason>>,
    turn: Option<Turn>,
) -> impl std::future::Future<Output = AttemptOutcome> + Send {
    // Three stages; only the watch waits long, and the future that waits holds no more than
    // it needs: the arguments go into the (boxed) start at once rather than being kept beside
    // it, the stop's wait is made here (the block keeps it, not the receiver it came from),
    // the finishing is boxed too, and what the agent's whole life needs is one box of its own
    // (a thousand idle agents each keep one of each). The last event, `Exited`, is sent by the
    // stage that ends the attempt.
    let start = Box::pin(start(spec, task, tools, turn));
    let stop = super::watch::StopWait::new(stop);
    async move {
        let mut running = match start.await {
            Ok(running) => running,
            Err(outcome) => return *outcome,
        };
        let verdict = running.w.run(stop).await;
        Box::pin(running.finish(verdict)).await
    }
}

/// Run a service agent (`spec.service` set): one process taking tasks from its queue one after
/// another until it dies, a watchdog fires, the queue closes or the owner stops it. The task
/// in flight at the end, if any, is returned in [`AttemptOutcome::in_flight`].
pub fn run_service_attempt(
    spec: AttemptSpec,
    tools: Option<ToolSink>,
    stop: watch::Receiver<Option<ExitReason>>,
    turn: Option<Turn>,
) -> impl std::future::Future<Output = AttemptOutcome> + Send {
    // The placeholder task is never sent: a serving protocol starts without one.
    let task = TaskInput {
        task_id: 0,
        input: Arc::new(corral_proto::Value::Null),
        memory: Vec::new(),
    };
    run_attempt(spec, task, tools, stop, turn)
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
        record: finish(record, t0),
        in_flight: None,
    }
}

/// The process: a warm stem of this agent type when one is waiting (released with this
/// attempt's environment), else made now. Whether it was warm.
async fn obtain(
    spec: &AttemptSpec,
    hello: Option<&[u8]>,
    turn: Option<Turn>,
) -> Result<(bool, Launched), String> {
    let agent = &spec.agent;
    if let Some(stem) = spec.stems.as_ref().and_then(|s| s.take(&agent.name)) {
        match stem.release(agent, &spec.run_id, spec.attempt, hello) {
            Ok(l) => return Ok((true, l)),
            Err(e) => tracing::debug!(agent = %agent.name, "warm stem unusable: {e}"),
        }
    }
    let pools = Pools {
        workspaces: spec.workspaces.clone(),
        cgroups: spec.cgroups.clone(),
    };
    launch(
        agent,
        &pools,
        (&spec.run_id, spec.attempt),
        false,
        hello,
        turn,
    )
    .await
    .map(|l| (false, l))
    .map_err(|e| e.explain(agent))
}

/// An attempt whose process exists: what its watch and its teardown need.
pub(super) struct Running {
    /// The conversation, the pipes, the output, the beats, health, tools; the process's
    /// guard.
    w: Watch,
    /// `corral-init`'s record of the agent, when it runs under one.
    status_rx: Option<OwnedFd>,
    /// When the attempt started, for the record.
    started: SystemTime,
    t0: Instant,
}

/// Get the process and set up its pipes, their poller and the conversation (its `Hello`
/// said). `Err`: the outcome of an attempt whose process could not be made or watched.
async fn start(
    spec: AttemptSpec,
    task: TaskInput,
    tools: Option<ToolSink>,
    turn: Option<Turn>,
) -> Result<Box<Running>, Box<AttemptOutcome>> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let failed = |spec: &AttemptSpec, pid: Option<i32>, message: String| {
        let mut record = ExitRecord::begin(&spec.agent.name, &spec.run_id, spec.attempt);
        record.started_at = crate::record::rfc3339(started);
        record.pid = pid.map(|p| p as u32);
        let out = spawn_failed(record, t0, message);
        // Every attempt ends with this event, whichever way it ended.
        spec.emit(|| AttemptEvent::Exited(Box::new(out.record.clone())));
        Box::new(out)
    };
    // The handshake's offer waits in the pipe before the agent starts (`launch::prewrite`).
    let hello = Protocol::hello_of(&spec.agent, &spec.run_id, spec.attempt, spec.max_frame);
    let mut hello_frame = Vec::new();
    let encoded = corral_proto::frame::encode_into(&hello, &mut hello_frame).is_ok();
    let obtained = obtain(&spec, encoded.then_some(hello_frame.as_slice()), turn).await;
    if let Some(f) = &spec.on_spawn {
        f();
    }
    let (was_warm, launched) = match obtained {
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
        hello_sent,
        refill,
        ..
    } = launched;
    let pid = spawned.pid;
    spec.emit(|| AttemptEvent::Spawned {
        agent: spec.agent.name.clone(),
        attempt: spec.attempt,
        pid,
        warm: was_warm,
    });
    // From here on, the process exists: every path ends in teardown + reap, and if the attempt
    // is dropped before, the guard does it (on the reaper thread).
    let guard = Teardown::new(pid, spawned.pidfd, cgroup, workspace);
    let mut proto = Protocol::new(
        spec.agent.clone(),
        task,
        spec.max_frame,
        tools.is_some(),
        t0,
    )
    .with_notes(spec.notes.clone());
    let service = (spec.service.clone()).map(|q| Box::new(super::watch::Service::new(q)));
    if service.is_some() {
        proto = proto.serving();
    }
    let io = (|| -> std::io::Result<_> {
        let poller = Poller::new()?;
        poller.add(guard.pidfd().as_fd(), Ready::EXIT)?;
        set_nonblocking(up_r.as_fd())?;
        set_nonblocking(down_w.as_fd())?;
        let logs = Logs::new(out_r, err_r, proto.log_budget().clone(), &poller)?;
        Ok((
            Wire::new(Some(up_r), Some(down_w), spec.max_frame),
            poller,
            logs,
        ))
    })();
    let (mut wire, poller, logs) = match io {
        Ok(io) => io,
        Err(e) => {
            if let Some(refill) = refill {
                refill.run();
            }
            let message = format!("set up pipes: {e}");
            return Err(failed(&spec, Some(pid), message));
        }
    };
    if !hello_sent {
        wire.send(&hello, &poller);
    }
    let mut w = Watch::new(
        spec,
        guard,
        proto,
        (wire, poller, logs),
        Beats::new(beat_r),
        tools,
    );
    w.service = service;
    w.refill = refill;
    Ok(Box::new(Running {
        w,
        status_rx,
        started,
        t0,
    }))
}

impl Running {
    /// Stop and reap the process, then account for the attempt.
    async fn finish(mut self: Box<Self>, mut verdict: Verdict) -> AttemptOutcome {
        let decided_at = Instant::now();
        let w = &mut self.w;
        // An agent that never got ready leaves its pools to be topped up now (an attempt
        // dropped before its end does so as its watch goes: `Watch`'s drop).
        if let Some(refill) = w.refill.take() {
            refill.run();
        }
        let agent = w.spec.agent.clone();
        let pid = w.guard.pid();

        // Teardown: stop the process (whole group), reap it. Nothing on the wire wakes the
        // attempt any more: only the exit, and the output read meanwhile.
        w.wire.unwatch(&w.poller);
        let mut signals_sent = Vec::new();
        let shutdown = w.proto.shutdown();
        let (wire, poller) = (&mut w.wire, &w.poller);
        let (reaped, counters) = stop::stop_and_reap(
            (pid, w.guard.pidfd()),
            (poller, &mut w.logs, &agent.name),
            w.guard.cgroup(),
            (
                cgroup_counter_trusted(&agent),
                !agent.namespaces.contains(&crate::config::Namespace::Pid),
            ),
            verdict.graceful,
            w.proto.kill_grace(),
            || {
                wire.send(&shutdown, poller);
                wire.unwatch(poller);
            },
            &mut signals_sent,
        )
        .await;
        if reaped.is_some() {
            w.guard.set_reaped();
        }
        w.poller.remove(w.guard.pidfd().as_fd());
        // (Also here: an agent that never got ready did not ask for the next stem.)
        w.spec.refill_stem();
        if verdict.reason.is_none() {
            // Frames the agent wrote just before it exited are still in the pipe.
            if let Some(v) = w.drain_after_exit() {
                verdict = v;
            }
        }
        verdict.log(&agent.name);
        w.last_beats();
        w.wire.close_down();
        let mut record = ExitRecord::begin(&agent.name, &w.spec.run_id, w.spec.attempt);
        record.started_at = crate::record::rfc3339(self.started);
        record.pid = Some(pid as u32);
        // The rest of the output: stragglers are dead, so the pipes reach their end; an escaped
        // process that still holds them must not hold up the record.
        let rest = w.logs.drain_to_end(&w.poller, &agent.name, pid);
        let _ = tokio::time::timeout(Duration::from_millis(250), rest).await;
        record.stderr_tail = w.logs.stderr_tail();
        record.log_bytes_dropped = w.proto.log_budget().dropped();

        // What the kernel says, then the removals, left to the reaper.
        let workspace = w.guard.take_workspace();
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
        // Read with the cgroup's emptying (`stop_and_reap`); its removal goes to the reaper.
        let counters = counters.unwrap_or_default();
        if let Some(c) = w.guard.take_cgroup() {
            stop::dispose(Some(c), None);
        }
        // Torn down: the process is reaped, the cgroup and workspace are left to the reaper.
        w.guard.disarm();
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
                let message = format!(
                    "agent `{}`: command {}: execve failed: {e}",
                    agent.name,
                    agent.command.first().map(String::as_str).unwrap_or("")
                );
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
        let (reason, error) = verdict::start_failure(
            verdict::decide(verdict, &evidence, &agent),
            w.proto.phase(),
            evidence.reaped.exit_code,
            &record.stderr_tail,
            &agent,
        );
        record.oom_killed = counters.oom;
        record.reason = reason;
        record.error = error;
        let done = w.proto.finish();
        record.tool_calls = done.tool_calls;
        record.tool_calls_dropped = done.tool_calls_dropped;
        record.tool_calls_deduplicated = done.tool_calls_deduplicated;
        let completed = reason == ExitReason::Completed;
        if w.proto.is_service() {
            let (served, last) = w.proto.served();
            record.tasks_served = Some(served);
            record.last_task_id = last;
        }
        let in_flight = w.service.as_mut().and_then(|s| s.current.take());
        let record = finish(record, self.t0);
        // Every attempt ends with this event, whichever way it ended (a failed spawn included:
        // `start`).
        w.spec
            .emit(|| AttemptEvent::Exited(Box::new(record.clone())));
        AttemptOutcome {
            output: done.output.filter(|_| completed),
            memory: if completed { done.memory } else { Vec::new() },
            record,
            in_flight,
        }
    }
}

/// Whether the agent cannot have moved one of its processes out of one cgroup hierarchy alone
/// (see `stop::stop_and_reap`): it runs in a pid namespace (whose end kills everything in it),
/// or not as host root (the cgroup files are root's), or under landlock with no writable path
/// over or under `/sys`, where the cgroup hierarchies are mounted.
fn cgroup_counter_trusted(agent: &crate::config::AgentSpec) -> bool {
    let sys = std::path::Path::new("/sys");
    agent.namespaces.contains(&crate::config::Namespace::Pid)
        || !agent.allow_root
        || agent.landlock
            && !agent
                .writable_paths
                .iter()
                .any(|p| p.starts_with(sys) || sys.starts_with(p))
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

#[cfg(test)]
mod tests {
    use super::cgroup_counter_trusted;
    use crate::config::Config;

    /// Only host root outside a pid namespace that may write under `/sys` (no landlock, or a
    /// writable path over or under it) could leave the counted cgroup hierarchy alone.
    #[test]
    fn the_cgroup_counter_is_trusted_unless_root_could_write_cgroup_files() {
        let root = "user = \"root\"\nallow_root = true\n";
        let cases = [
            ("plain", String::new(), true),
            ("pidns_root", format!("{root}landlock = false"), true),
            ("landlocked_root", format!("{root}namespaces = []"), true),
            (
                "open_root",
                format!("{root}namespaces = []\nlandlock = false"),
                false,
            ),
            (
                "sys_root",
                format!("{root}namespaces = []\nwritable_paths = [\"/sys/fs/cgroup\"]"),
                false,
            ),
            (
                "slash_root",
                format!("{root}namespaces = []\nwritable_paths = [\"/\"]"),
                false,
            ),
        ];
        let text: String = cases
            .iter()
            .map(|(name, keys, _)| format!("[agents.{name}]\ncommand = [\"/bin/true\"]\n{keys}\n"))
            .collect();
        let config = Config::parse(&text, std::path::Path::new("t.toml")).expect("config");
        for (name, _, trusted) in cases {
            assert_eq!(
                cgroup_counter_trusted(&config.agents[name]),
                trusted,
                "{name}"
            );
        }
    }
}
