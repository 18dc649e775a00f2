//! What the daemon holds: the supervisor, the service agents, the runs under way, the recent
//! log lines of each agent, the event stream and the metrics; and the views of them that
//! `ps` and `status` print.

use super::service::ServiceAgent;
use crate::child::{AttemptEvent, Note, Notes, ServiceTask, TaskState};
use crate::control::Approvals;
use crate::health::Metrics;
use crate::{ExitReason, ExitRecord, StopHandle, Supervisor};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

/// Log lines kept per agent for `corral logs`.
pub(crate) const LOG_LINES: usize = 1000;
/// Longest log line kept (longer ones are cut).
const LOG_LINE_MAX: usize = 4096;
/// Events buffered for `events -f` followers (a slower follower skips).
const EVENT_BUFFER: usize = 4096;
/// Most runs (tasks and plans) under way at once; more are refused `busy`.
pub(crate) const MAX_RUNS: usize = 10_000;

/// Where a service agent's instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceState {
    /// Spawned, no `Ready` yet.
    Starting,
    /// Ready, taking tasks.
    Ready,
    /// Working on a task.
    Busy,
    /// Ended; restarting after its backoff.
    Backoff,
    /// Stopped (by an operator, a reload or the drain).
    Stopped,
}

impl InstanceState {
    const ALL: [InstanceState; 5] = [
        InstanceState::Starting,
        InstanceState::Ready,
        InstanceState::Busy,
        InstanceState::Backoff,
        InstanceState::Stopped,
    ];

    /// Its name, as `ps` and `status` show it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Busy => "busy",
            InstanceState::Backoff => "backoff",
            InstanceState::Stopped => "stopped",
        }
    }
}

/// One service instance as `ps` shows it (kept for each instance: its agent's name is its
/// service's, its sizes are no larger than they need to be).
#[derive(Debug, Clone)]
pub(crate) struct InstanceInfo {
    pub index: u32,
    pub state: InstanceState,
    pub pid: Option<i32>,
    pub since: Instant,
    pub restarts: u64,
    pub last_exit: Option<ExitReason>,
    /// KiB (a `u32` holds 4 TiB).
    pub rss_kb: Option<u32>,
    pub cpu_ms: Option<u64>,
    pub backoff_until: Option<Instant>,
}

impl InstanceInfo {
    pub fn new(index: u32) -> InstanceInfo {
        InstanceInfo {
            index,
            state: InstanceState::Starting,
            pid: None,
            since: Instant::now(),
            restarts: 0,
            last_exit: None,
            rss_kb: None,
            cpu_ms: None,
            backoff_until: None,
        }
    }
}

/// A run under way (a task or a plan run).
pub(crate) struct RunEntry {
    pub what: String,
    pub stop: Option<StopHandle>,
    /// A task of a service agent: its cancellation.
    pub task: Option<crate::child::TaskCancel>,
}

/// The daemon's state, shared by its tasks.
pub struct Daemon {
    pub(crate) sup: Arc<Supervisor>,
    pub(crate) services: Mutex<BTreeMap<String, ServiceAgent>>,
    /// Service agents stopped by an operator (`corral stop`), kept stopped across reloads.
    pub(crate) stopped: Mutex<std::collections::BTreeSet<String>>,
    pub(crate) runs: Mutex<HashMap<String, RunEntry>>,
    logs: Mutex<HashMap<String, VecDeque<String>>>,
    pub(crate) events: broadcast::Sender<String>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) approvals: Arc<dyn Approvals>,
    /// `max_agents`: a permit per live agent process.
    slots: Option<Arc<Semaphore>>,
    pub(crate) draining: AtomicBool,
    pub(crate) seq: AtomicU64,
    pub(crate) started: Instant,
    /// The config file the daemon runs on.
    pub(crate) config_path: std::path::PathBuf,
    pub(crate) reloads: AtomicU64,
}

impl Daemon {
    pub(crate) fn new(
        sup: Arc<Supervisor>,
        approvals: Arc<dyn Approvals>,
        config_path: std::path::PathBuf,
    ) -> Daemon {
        let slots = sup
            .config()
            .supervisor
            .max_agents
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        Daemon {
            sup,
            services: Mutex::new(BTreeMap::new()),
            stopped: Mutex::new(Default::default()),
            runs: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            metrics: Arc::new(Metrics::new()),
            approvals,
            slots,
            draining: AtomicBool::new(false),
            seq: AtomicU64::new(1),
            started: Instant::now(),
            config_path,
            reloads: AtomicU64::new(0),
        }
    }

    /// A slot under `max_agents` for one agent process (waits for one); `None` while draining.
    pub(crate) async fn agent_slot(&self) -> Option<Option<OwnedSemaphorePermit>> {
        if self.draining.load(Ordering::SeqCst) {
            return None;
        }
        match &self.slots {
            None => Some(None),
            Some(s) => s.clone().acquire_owned().await.ok().map(Some),
        }
    }

    /// Notes of an agent's attempts: its `Log` lines kept for `corral logs`, its tool calls
    /// counted in the metrics as they are answered.
    pub(crate) fn log_notes(self: &Arc<Self>, agent: &str) -> Notes {
        let d = Arc::downgrade(self);
        let agent = agent.to_string();
        Arc::new(move |note| {
            let Some(d) = d.upgrade() else { return };
            match note {
                Note::Logs(lines) => {
                    for l in lines {
                        d.log_line(&agent, &format!("{:?} {}", l.level, l.text));
                    }
                }
                Note::ToolCall { tool, result, .. } => {
                    let status = result.as_ref().err().map_or("ok", |e| e.kind.as_str());
                    d.metrics.tool_call(&tool, status);
                }
                _ => {}
            }
        })
    }

    /// Keep one line of `agent`'s log (the oldest goes past [`LOG_LINES`]) and send it to
    /// the event stream's followers of that agent.
    pub(crate) fn log_line(&self, agent: &str, line: &str) {
        let mut line = line.to_string();
        if line.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        // Only configured agents get a buffer (names come from the config, not from agents).
        let q = logs.entry(agent.to_string()).or_default();
        if q.len() == LOG_LINES {
            q.pop_front();
        }
        q.push_back(line.clone());
        drop(logs);
        if self.events.receiver_count() == 0 {
            return;
        }
        let _ = self
            .events
            .send(serde_json::json!({"event": "log", "agent": agent, "line": line}).to_string());
    }

    /// The recent log lines of `agent`.
    pub(crate) fn recent_logs(&self, agent: &str) -> Vec<String> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.get(agent)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// An attempt's life event, to the event stream.
    pub(crate) fn event_attempt(&self, ev: &AttemptEvent) {
        // Nobody following: no line is made.
        if self.events.receiver_count() == 0 {
            return;
        }
        let v = match ev {
            AttemptEvent::Spawned {
                agent,
                attempt,
                pid,
                warm,
            } => serde_json::json!(
                {"event": "spawned", "agent": agent, "attempt": attempt, "pid": pid, "warm": warm}),
            AttemptEvent::Ready {
                agent,
                attempt,
                pid,
                ..
            } => serde_json::json!(
                {"event": "ready", "agent": agent, "attempt": attempt, "pid": pid}),
            AttemptEvent::Watchdog {
                agent, pid, reason, ..
            } => serde_json::json!(
                {"event": "watchdog", "agent": agent, "pid": pid, "reason": reason.as_str()}),
            AttemptEvent::Sample { .. }
            | AttemptEvent::TaskStarted { .. }
            | AttemptEvent::TaskEnded { .. }
            | AttemptEvent::Exited(_) => return,
        };
        let _ = self.events.send(v.to_string());
    }

    /// Where a plan run tells its instances' ends: their attempts counted in the metrics
    /// (`exits_total`) and published as `exited` events, as each instance ends.
    pub(crate) fn plan_progress(
        self: &Arc<Self>,
    ) -> tokio::sync::mpsc::UnboundedSender<crate::plan::NodeReport> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::plan::NodeReport>();
        let d = self.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                for rec in &r.attempts {
                    d.metrics.exited(rec);
                    d.event_record(rec);
                }
            }
        });
        tx
    }

    /// An attempt's end, to the event stream.
    pub(crate) fn event_record(&self, rec: &ExitRecord) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let line = serde_json::json!({"event": "exited", "record": rec}).to_string();
        let _ = self.events.send(line);
    }

    /// Put a task back in its agent's queue (its instance died with it).
    pub(crate) fn requeue(&self, agent: &str, task: ServiceTask) -> Result<(), String> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = services.get(agent) else {
            return Err(format!("agent `{agent}` is no longer a service agent"));
        };
        s.queue.try_send(task).map_err(|e| e.to_string())
    }

    /// `corral ps`: one row per service instance, one per agent type without instances.
    pub(crate) fn ps(&self) -> Vec<serde_json::Value> {
        let mut rows = Vec::new();
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for name in &self.sup.agent_names() {
            let breaker = self.sup.breaker_state(name);
            self.metrics.breaker(name, breaker);
            // A service agent an operator stopped: its instances, stopped.
            if let Some(n) = self.stopped_instances(name) {
                for index in 0..n {
                    rows.push(serde_json::json!({
                        "name": format!("{name}#{index}"),
                        "agent": name, "instance": index, "service": true,
                        "state": InstanceState::Stopped.as_str(), "pid": null,
                        "uptime_s": null, "restarts": 0, "last_exit_reason": null,
                        "rss_kb": null, "cpu_ms": null, "breaker": breaker, "backoff_ms": null,
                    }));
                }
                continue;
            }
            let Some(s) = services.get(name) else {
                let running = {
                    let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
                    runs.values().filter(|r| r.what == *name).count()
                };
                rows.push(serde_json::json!({
                    "name": name, "instance": null, "service": false,
                    "state": if running > 0 { "running" } else { "idle" },
                    "pid": null, "uptime_s": null, "restarts": 0, "last_exit_reason": null,
                    "rss_kb": null, "cpu_ms": null, "breaker": breaker, "runs": running,
                }));
                continue;
            };
            for i in &s.instances {
                let i = i.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let backoff_ms = i
                    .backoff_until
                    .map(|t| t.saturating_duration_since(now).as_millis() as u64);
                rows.push(serde_json::json!({
                    "name": format!("{name}#{}", i.index),
                    "agent": name, "instance": i.index, "service": true,
                    "state": i.state.as_str(), "pid": i.pid,
                    "uptime_s": i.pid.map(|_| now.saturating_duration_since(i.since).as_secs()),
                    "restarts": i.restarts, "last_exit_reason": i.last_exit.as_ref().map(ExitReason::as_str),
                    "rss_kb": i.rss_kb, "cpu_ms": i.cpu_ms, "breaker": breaker,
                    "backoff_ms": backoff_ms,
                }));
            }
        }
        rows
    }

    /// The instances of service agent `name` when an operator stopped it (`corral stop`).
    fn stopped_instances(&self, name: &str) -> Option<u32> {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if !stopped.contains(name) {
            return None;
        }
        self.sup
            .agent_spec(name)
            .filter(|s| s.service)
            .map(|s| s.instances)
    }

    /// Whether a service instance is still starting (spawned, not ready yet).
    pub(crate) fn any_starting(&self) -> bool {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services.values().any(|s| {
            s.instances.iter().any(|i| {
                i.lock().unwrap_or_else(|p| p.into_inner()).state == InstanceState::Starting
            })
        })
    }

    /// `corral status`: the summary, and the one line `STATUS=` carries.
    pub(crate) fn status(&self) -> (serde_json::Value, String) {
        // Counted in place (it runs every second): no row is built.
        let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut backoff_max: u64 = 0;
        let mut agents = 0;
        let now = Instant::now();
        {
            let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
            for name in &self.sup.agent_names() {
                self.metrics.breaker(name, self.sup.breaker_state(name));
                if let Some(n) = self.stopped_instances(name) {
                    agents += i64::from(n);
                    *by_state.entry(InstanceState::Stopped.as_str()).or_default() += i64::from(n);
                    continue;
                }
                let Some(s) = services.get(name) else {
                    continue;
                };
                for i in &s.instances {
                    let i = i.lock().unwrap_or_else(|p| p.into_inner());
                    agents += 1;
                    if i.state == InstanceState::Backoff {
                        let left = i.backoff_until.map(|t| t.saturating_duration_since(now));
                        backoff_max = backoff_max.max(left.map_or(0, |d| d.as_millis() as u64));
                    }
                    *by_state.entry(i.state.as_str()).or_default() += 1;
                }
            }
        }
        for s in InstanceState::ALL.map(InstanceState::as_str) {
            self.metrics
                .set_agents(s, by_state.get(s).copied().unwrap_or(0));
        }
        let (runs, queued, running) = {
            let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            let tasks = runs
                .values()
                .filter_map(|r| r.task.as_ref().map(|t| t.state()));
            let (mut queued, mut running) = (0, 0);
            for t in tasks {
                match t {
                    TaskState::Queued => queued += 1,
                    TaskState::Running => running += 1,
                    _ => {}
                }
            }
            (runs.len(), queued, running)
        };
        self.metrics.set_runs_active(runs as i64);
        // Healthy: taking tasks, or working on one.
        let healthy = ["ready", "busy"]
            .iter()
            .map(|s| by_state.get(s).copied().unwrap_or(0))
            .sum::<i64>();
        let mut line = format!("{agents} agents, {healthy} healthy");
        for (s, n) in &by_state {
            if *s == "ready" {
                continue;
            }
            line.push_str(&format!(", {n} {s}"));
            if *s == "backoff" && backoff_max > 0 {
                line.push_str(&format!(" {:.0}s", backoff_max as f64 / 1000.0));
            }
        }
        line.push_str(&format!("; {runs} runs"));
        if self.draining.load(Ordering::SeqCst) {
            line.push_str("; draining");
        }
        let v = serde_json::json!({
            "pid": std::process::id(),
            "config": self.config_path.display().to_string(),
            "uptime_s": self.started.elapsed().as_secs(),
            "agents": agents,
            "by_state": by_state,
            "runs": runs,
            "tasks": {"queued": queued, "running": running},
            "reloads": self.reloads.load(Ordering::Relaxed),
            "draining": self.draining.load(Ordering::SeqCst),
            "summary": line,
        });
        (v, line)
    }
}
