//! Running tasks on agents, with the restart policy applied: the owner of children.
//!
//! A [`Supervisor`] holds the resolved config, the host's cgroup manager, and per agent type
//! the policy state that outlives attempts: restart intensity, circuit breaker and quarantine.
//! [`Supervisor::call`] runs one task to its end: admission (intensity, breaker, quarantine),
//! attempts through [`crate::child::run_attempt`], the decision after each (retry after a
//! backoff, escalate, abort, quarantine), all written into each attempt's exit record.

mod agents;
mod call;
mod probe;
pub use probe::Probe;
pub(crate) mod journal;
mod ledger;

pub use ledger::JournalLedger;

pub use agents::{RunShare, AGENT_TOOL, MAX_RUN_AGENTS};
use journal::open_journal;
pub use journal::{new_run_id, JournalCall};

use crate::child::{self, StemPool, ToolSink};
use crate::clock::{Clock, SystemClock};
use crate::config::{AgentSpec, Config};
use crate::policy::{Breaker, Intensity, Quarantine, SplitMix64};
use crate::record::{Decision, ExitReason, ExitRecord, RecordedError};
use crate::sandbox::cgroup::{CgroupLimits, Cgroups};
use crate::sandbox::pool::{CgroupPool, WorkspacePool};
use call::{Call, Next};
use corral_proto::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// Running a task failed before any attempt could be made.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No agent of that name in the config.
    #[error("no agent named `{name}` in {config}; configured: {known}")]
    UnknownAgent {
        /// The name asked for.
        name: String,
        /// The config file.
        config: String,
        /// The names that exist.
        known: String,
    },
    /// A limit cannot be enforced and the agent is `strict`.
    #[error("agent `{agent}` is strict and this host cannot enforce: {limits}")]
    Unenforceable {
        /// The agent.
        agent: String,
        /// What cannot be enforced.
        limits: String,
    },
    /// Supervisor set-up failed.
    #[error("supervisor set-up: {0}")]
    Setup(String),
    /// The journal could not be opened, or refused to write what must be durable (the call's
    /// outcome is then not reported as known).
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    /// A run cannot be resumed as asked (another plan, another input, not a plan run, or
    /// another supervisor runs it).
    #[error("cannot resume run `{run_id}`: {reason}")]
    Resume {
        /// The run.
        run_id: String,
        /// Why not.
        reason: String,
    },
}

/// Policy state of one agent type, shared by all its tasks.
struct TypeState {
    intensity: Intensity,
    breaker: Breaker,
    quarantine: Quarantine,
}

/// What a finished call produced.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    /// The output of the successful attempt.
    pub output: Option<Value>,
    /// Notes handed downstream by the successful attempt.
    pub memory: Vec<Value>,
    /// Every attempt, in order.
    pub attempts: Vec<ExitRecord>,
    /// The run the call was (journalled as the task of the call's own run).
    pub run_id: String,
}

impl CallOutcome {
    /// Whether the task succeeded.
    pub fn ok(&self) -> bool {
        self.output.is_some()
    }

    /// The last attempt's record.
    pub fn last(&self) -> Option<&ExitRecord> {
        self.attempts.last()
    }

    /// Tool calls of the call's attempts answered from the run's trace instead of being
    /// executed (`tool_calls_deduplicated` of the run).
    pub fn tool_calls_deduplicated(&self) -> u64 {
        self.attempts
            .iter()
            .map(|a| a.tool_calls_deduplicated)
            .sum()
    }
}

/// Options of one call.
#[derive(Default)]
pub struct CallOptions {
    /// Run id to use (generated when `None`).
    pub run_id: Option<String>,
    /// Notes handed down with the task.
    pub memory: Vec<Value>,
    /// Where tool calls go (`None`: the supervisor's own broker, see
    /// [`Supervisor::set_approver`]).
    pub tools: Option<ToolSink>,
    /// Stop the call from outside: see [`crate::Stop`].
    pub stop: Option<crate::Stop>,
    /// Where to report attempts' life events.
    pub events: Option<mpsc::UnboundedSender<child::AttemptEvent>>,
    /// Leave this call out of the journal (a replay, a benchmark's baseline).
    pub unjournalled: bool,
    /// Where to report what the agents saw and did (besides the journal).
    pub notes: Option<child::Notes>,
    /// Make one attempt only, whatever the restart policy says (a replay).
    pub single_attempt: bool,
    /// Neither consult nor teach the agent type's breaker, quarantine and restart intensity
    /// (a replay: a diagnosis must not be refused by, nor count toward, what live calls did).
    pub unpoliced: bool,
    /// Number the attempts as if this many came before (a replay of attempt N says N).
    pub attempts_before: u32,
    /// Journal the call as a task of this larger run instead of as a run of its own.
    pub journal_call: Option<journal::JournalCall>,
    /// The task's name within its run, the middle of its tool calls' idempotency keys (a
    /// plan's node instance); default the agent's name.
    pub task: Option<String>,
    /// How deep the call is among agents calling agents (0: called by its owner).
    pub depth: u32,
    /// Tools the caller may grant: the agent's own grants are intersected with these (a child
    /// agent gets no tool its caller lacks).
    pub grants: Option<Vec<String>>,
    /// What the calls of the run share (task numbers, children): given by a plan or a calling
    /// agent; a call that is a run of its own makes one.
    pub share: Option<Arc<RunShare>>,
}

/// Owner of agent processes for one config.
pub struct Supervisor {
    config: Arc<Config>,
    /// The agents by name (replaced as a whole by [`Supervisor::update_agents`]).
    specs: std::sync::RwLock<HashMap<String, Arc<AgentSpec>>>,
    cgroups: Option<Arc<CgroupPool>>,
    workspaces: Arc<WorkspacePool>,
    stems: Arc<StemPool>,
    types: Mutex<HashMap<String, TypeState>>,
    rng: Mutex<SplitMix64>,
    /// The policy's time: backoffs, intensity, breaker.
    clock: Arc<dyn Clock>,
    /// Where calls are journalled (`[supervisor] journal`, on by default).
    journal: Option<crate::journal::Journal>,
    /// The tool ledger in the journal (destructive calls at most once across processes).
    ledger: Option<Arc<JournalLedger>>,
    /// The broker of calls made without one of their own (made at the first such call).
    tools: std::sync::OnceLock<ToolSink>,
    /// Who that broker asks about `approve = "ask"` tools (none: such calls are denied).
    approver: Mutex<Option<Arc<dyn crate::tools::Approver>>>,
}

impl Supervisor {
    /// Set up: subreaper, orphan reaper, cgroup detection and a sweep of stale cgroups.
    /// Must be called inside a tokio runtime.
    pub fn new(config: Config) -> Result<Supervisor, RunError> {
        Self::with_cgroups(config, Some(Cgroups::detect()))
    }

    /// Like [`Supervisor::new`] with a given cgroup manager (`None`: no cgroups at all).
    pub fn with_cgroups(config: Config, cgroups: Option<Cgroups>) -> Result<Supervisor, RunError> {
        crate::sandbox::become_subreaper()
            .map_err(|e| RunError::Setup(format!("become child subreaper: {e}")))?;
        if let Some(cg) = &cgroups {
            match cg.sweep_stale() {
                Ok(0) => {}
                Ok(n) => tracing::info!("removed {n} stale cgroup(s) of dead supervisors"),
                Err(e) => tracing::warn!("sweeping stale cgroups: {e}"),
            }
        }
        report_unenforced(&config, cgroups.as_ref());
        for problem in config.tool_problems() {
            tracing::warn!("{problem}");
        }
        // What `corral validate` refuses, said once here too: the spawn gives the final word
        // (a directory may appear, a user be added, before the first call).
        for problem in crate::config::check::host(&config).problems {
            tracing::warn!("{problem}");
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ std::process::id() as u64;
        let specs = config
            .agents
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        let workspaces = WorkspacePool::with_uid_range(
            config.supervisor.state_dir.join("work"),
            config.supervisor.uid_range,
        );
        match workspaces.sweep_stale() {
            0 => {}
            n => tracing::info!("removed {n} workspace(s) left by dead supervisors"),
        }
        let journal = open_journal(&config)?;
        let ledger = match &journal {
            Some(_) => Some(Arc::new(JournalLedger::open(
                &config.supervisor.state_dir.join("corral.db"),
            )?)),
            None => None,
        };
        Ok(Supervisor {
            config: Arc::new(config),
            specs: std::sync::RwLock::new(specs),
            workspaces,
            stems: StemPool::new(),
            cgroups: cgroups.map(|c| CgroupPool::new(Arc::new(c))),
            types: Mutex::new(HashMap::new()),
            rng: Mutex::new(SplitMix64::new(seed)),
            clock: Arc::new(SystemClock),
            journal,
            ledger,
            tools: std::sync::OnceLock::new(),
            approver: Mutex::new(None),
        })
    }

    /// The tool ledger in the journal, when it is on (the broker records destructive calls
    /// there: see `JournalLedger`).
    pub fn tool_ledger(&self) -> Option<Arc<dyn crate::tools::ToolLedger>> {
        self.ledger
            .clone()
            .map(|l| l as Arc<dyn crate::tools::ToolLedger>)
    }

    /// Who is asked about tool calls of `approve = "ask"` tools, for calls that have no broker
    /// of their own (set before the first call).
    pub fn set_approver(&self, approver: Arc<dyn crate::tools::Approver>) {
        *self.approver.lock().unwrap_or_else(|p| p.into_inner()) = Some(approver);
    }

    /// Where tool calls go for a call that has no broker of its own: the supervisor's broker
    /// (every configured tool, the journal's ledger), made at the first use and called in each
    /// attempt's own task.
    pub(crate) fn default_tools(&self) -> ToolSink {
        self.tools
            .get_or_init(|| {
                let mut broker = crate::tools::Broker::for_supervisor(self);
                let approver = self
                    .approver
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(a) = approver {
                    broker = broker.with_approver(a);
                }
                ToolSink::Broker(Arc::new(broker))
            })
            .clone()
    }

    /// The journal calls are written to, when it is on.
    pub fn journal(&self) -> Option<&crate::journal::Journal> {
        self.journal.as_ref()
    }

    /// The journal's file, when it is on.
    pub(crate) fn journal_path(&self) -> Option<std::path::PathBuf> {
        self.journal
            .as_ref()
            .map(|_| self.config.supervisor.state_dir.join("corral.db"))
    }

    /// Run the policy (backoffs, restart intensity, circuit breaker) on `clock` instead of the
    /// system's (see [`crate::clock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Supervisor {
        self.clock = clock;
        self
    }

    /// The warm stems waiting now (agent name, pid of the stem's `corral-init`): see the
    /// `prewarm` key.
    pub fn prewarmed(&self) -> Vec<(String, i32)> {
        self.stems.waiting()
    }

    /// Make a warm stem of `agent` now (unless one is waiting) and wait until it is ready, so
    /// that the next call pays only for the agent's own start. `Ok(false)` when the agent type
    /// gets none (`prewarm = false`, or no pid namespace).
    pub async fn prewarm(&self, agent: &str) -> Result<bool, RunError> {
        let spec = self.agent(agent)?;
        self.stems
            .make_now(
                spec,
                child::Pools {
                    workspaces: self.workspaces.clone(),
                    cgroups: self.cgroups.clone(),
                },
            )
            .await
            .map_err(RunError::Setup)
    }

    /// Make no warm stems from now on (for one-shot use, where one would only be thrown away).
    pub fn disable_prewarm(&self) {
        self.stems.disable();
    }

    /// The pools attempts draw from (command tools run in sandboxes from the same).
    pub(crate) fn pools(&self) -> child::Pools {
        child::Pools {
            workspaces: self.workspaces.clone(),
            cgroups: self.cgroups.clone(),
        }
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cgroup manager, if any.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_deref().map(CgroupPool::cgroups)
    }

    /// Lines saying how each agent's limits are enforced on this host (for start-up reports).
    pub fn enforcement_report(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, a) in &self.config.agents {
            let limits = CgroupLimits::from(a);
            match &self.cgroups {
                Some(cg) => {
                    for line in cg.cgroups().report(&limits) {
                        out.push(format!("{name}: {line}"));
                    }
                }
                None => out.push(format!(
                    "{name}: cgroups disabled; memory by RLIMIT_AS only"
                )),
            }
        }
        out
    }

    fn agent(&self, name: &str) -> Result<Arc<AgentSpec>, RunError> {
        let specs = self.specs.read().unwrap_or_else(|p| p.into_inner());
        let spec = specs.get(name).ok_or_else(|| {
            let mut known: Vec<_> = specs.keys().cloned().collect();
            known.sort();
            RunError::UnknownAgent {
                name: name.to_string(),
                config: self.config.path.display().to_string(),
                known: known.join(", "),
            }
        })?;
        if spec.strict {
            if let Some(cg) = &self.cgroups {
                let missing = cg.cgroups().unenforceable(&CgroupLimits::from(&**spec));
                if !missing.is_empty() {
                    return Err(RunError::Unenforceable {
                        agent: name.to_string(),
                        limits: missing.join(", "),
                    });
                }
            }
        }
        Ok(spec.clone())
    }

    fn with_type<R>(&self, spec: &AgentSpec, f: impl FnOnce(&mut TypeState) -> R) -> R {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        let st = types.entry(spec.name.clone()).or_insert_with(|| TypeState {
            intensity: Intensity::new(spec.intensity.clone()),
            breaker: Breaker::new(spec.breaker.clone()),
            quarantine: Quarantine::new(spec.quarantine_after),
        });
        f(st)
    }

    /// The agents of a reloaded config, in force for calls that start from now on (calls under
    /// way finish on the spec they started with). The policy state (breaker, quarantine,
    /// intensity) of an agent whose settings changed, or that is gone, is dropped; the
    /// `[supervisor]` settings stay those the supervisor was made with.
    pub fn update_agents(&self, config: &Config) {
        let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        let new: HashMap<String, Arc<AgentSpec>> = config
            .agents
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        types.retain(|name, _| match (specs.get(name), new.get(name)) {
            (Some(a), Some(b)) => format!("{a:?}") == format!("{b:?}"),
            _ => false,
        });
        *specs = new;
    }

    /// The names of the agents now configured, sorted.
    pub fn agent_names(&self) -> Vec<String> {
        let specs = self.specs.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = specs.keys().cloned().collect();
        names.sort();
        names
    }

    /// The agent `name` as now configured.
    pub fn agent_spec(&self, name: &str) -> Option<Arc<AgentSpec>> {
        let specs = self.specs.read().unwrap_or_else(|p| p.into_inner());
        specs.get(name).cloned()
    }

    /// One attempt of a service agent (`spec`): a long-lived process that takes its tasks from
    /// `queue` until it dies, a watchdog fires, the queue closes or `stop` says so (see
    /// [`crate::child::ServiceTask`]). No retries here: the daemon's instance loop restarts it.
    #[allow(clippy::too_many_arguments)] // (each is one piece of an attempt: no struct adds clarity)
    pub(crate) fn service_attempt(
        &self,
        spec: Arc<AgentSpec>,
        run_id: String,
        attempt: u32,
        queue: child::ServiceQueue,
        events: Option<child::EventSink>,
        notes: Option<child::Notes>,
        stop: tokio::sync::watch::Receiver<Option<ExitReason>>,
        turn: Option<child::Turn>,
    ) -> impl Future<Output = child::AttemptOutcome> + Send {
        let aspec = child::AttemptSpec {
            agent: spec,
            run_id,
            attempt,
            max_frame: self.config.supervisor.max_frame,
            cgroups: self.cgroups.clone(),
            workspaces: self.workspaces.clone(),
            stems: Some(self.stems.clone()),
            events,
            notes,
            service: Some(queue),
            task: None,
            on_spawn: None,
        };
        child::run_service_attempt(aspec, Some(self.default_tools()), stop, turn)
    }

    /// The launch's turn for an attempt of `spec`, taken before the attempt is made: a burst of
    /// attempts waiting for turns then holds no attempts' starts (~1.7 KiB each, which would
    /// be freed one by one in between the long-lived state of the agents started meanwhile,
    /// where the allocator keeps their room). `None` for an agent that gets warm stems: its
    /// attempt may take one and launch nothing, and would wait behind a burst's cold launches
    /// for a turn it does not use (the launch takes one when it needs it).
    pub(crate) async fn early_turn(&self, spec: &AgentSpec) -> Option<child::Turn> {
        match self.stems.wants(spec) {
            true => None,
            false => Some(child::launch_turn().await),
        }
    }

    /// The circuit breaker's state of `agent` now: `closed`, `open` or `half_open`.
    pub fn breaker_state(&self, agent: &str) -> &'static str {
        let types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        match types.get(agent) {
            Some(t) => t.breaker.label(self.clock.now()),
            None => "closed",
        }
    }

    /// An operator's explicit restart: clears fatal, breaker and quarantine of an agent type.
    pub fn reset_agent(&self, name: &str) {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types.remove(name);
    }

    /// Run one task on `agent` to its end, with retries by policy.
    pub fn call<'a>(
        &'a self,
        agent: &str,
        input: Value,
        opts: CallOptions,
    ) -> impl Future<Output = Result<CallOutcome, RunError>> + Send + 'a {
        // Prepared before the future is made, and the call boxed: what a call keeps while its
        // agent runs is held once (an async fn would keep its arguments beside what it made
        // of them, for the whole call). The future's own room is its largest state's, and
        // it keeps that room for the whole call: every state but the one that waits for an
        // attempt is boxed, its room taken only while it lasts (a thousand calls at once each
        // keep ~200 bytes here instead of ~900).
        let prepared = self.prepare(agent, input, opts).map_err(Box::new);
        async move {
            let mut call = prepared.map_err(|e| *e)?;
            // The record of a retried attempt, queued for the journal with the next attempt's
            // start once that attempt's process exists (see `call::Deferred`), and awaited
            // beside the attempt; or now, when no attempt follows.
            let mut ended: Option<Box<crate::journal::Entry>> = None;
            loop {
                if let Err(refusal) = call.admit() {
                    if let Some(e) = ended.take() {
                        Box::pin(call.journal_now(*e)).await?;
                    }
                    return Box::pin(call.end(refusal, None)).await;
                }
                let turn = Box::pin(call.early_turn()).await;
                let (attempt, deferred) = call.attempt(ended.take().map(|e| *e), turn);
                // Boxed: the outcome outlives the attempt's future, which would otherwise keep
                // a hole of its size beside that future in every call's state for the whole
                // attempt.
                let out = match deferred {
                    None => Box::new(attempt.await),
                    Some((held, rx)) => {
                        // A journal that fails the commit ends the call: the attempt is dropped
                        // (its guard kills and reaps the process).
                        let attempt = async {
                            let out = attempt.await;
                            // (Queued by the spawn already, unless the attempt never got there.)
                            call::fire(&held);
                            Ok::<_, RunError>(Box::new(out))
                        };
                        let durable = async {
                            match rx.await {
                                Ok(d) => d.await.map_err(RunError::from),
                                // Nothing to wait for: the attempt followed no retried one.
                                Err(_) => Ok(()),
                            }
                        };
                        Box::pin(async { tokio::try_join!(attempt, durable) })
                            .await?
                            .0
                    }
                };
                let delay = match call.after(*out) {
                    // Boxed, as the attempt is: the end moves the call into its own state,
                    // which would otherwise be kept beside every attempt.
                    Next::End(rec, done) => return Box::pin(call.end(rec, done)).await,
                    Next::Retry(delay) => delay,
                };
                ended = call.retried_entry().map(Box::new);
                Box::pin(call.back_off(delay)).await;
            }
        }
    }

    /// A call of `input` on `agent`, ready to make its first attempt.
    fn prepare(
        &self,
        agent: &str,
        input: Value,
        opts: CallOptions,
    ) -> Result<Box<Call<'_>>, RunError> {
        let spec = self.agent(agent)?;
        // Process-wide, so that several supervisors in one process never share a run id.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let run_id = opts.run_id.clone().unwrap_or_else(|| new_run_id(seq));
        Ok(Box::new(Call::new(self, spec, run_id, input, opts)))
    }
}

/// Say once, at start-up, which configured limits this host cannot enforce and what stands in.
fn report_unenforced(config: &Config, cgroups: Option<&Cgroups>) {
    let landlock = crate::sandbox::landlock::abi();
    for (name, a) in &config.agents {
        let limits = CgroupLimits::from(a);
        let missing = cgroups
            .map(|c| c.unenforceable(&limits))
            .unwrap_or_else(|| {
                let mut v = Vec::new();
                if a.memory.is_some() {
                    v.push("memory");
                }
                if a.pids.is_some() {
                    v.push("pids");
                }
                if a.cpu_quota.is_some() {
                    v.push("cpu_quota");
                }
                v
            });
        for m in missing {
            let instead = match m {
                "memory" => "RLIMIT_AS (address space) instead",
                "pids" => "nothing instead (RLIMIT_NPROC is per user, not per agent)",
                _ => "RLIMIT_CPU (cpu_time) bounds total CPU instead",
            };
            tracing::warn!(agent = %name, "{m} limit not enforced by a cgroup on this host: {instead}");
        }
        if let Err(e) = &landlock {
            tracing::warn!(agent = %name, "{e}: readonly_paths/writable_paths are not enforced");
        }
    }
}

/// Quarantine tracks crashes of an input, not refusals or admin stops.
pub(super) fn counts_for_quarantine(reason: ExitReason) -> bool {
    !matches!(
        reason,
        ExitReason::Completed
            | ExitReason::Cancelled
            | ExitReason::Shutdown
            | ExitReason::CircuitOpen
            | ExitReason::Quarantined
            | ExitReason::SpawnFailed
    )
}

/// The record of an attempt that was refused before a process existed.
pub(super) fn not_started(
    spec: &AgentSpec,
    run_id: &str,
    attempt: u32,
    reason: ExitReason,
    message: String,
) -> ExitRecord {
    let mut rec = ExitRecord::begin(&spec.name, run_id, attempt);
    rec.reason = reason;
    rec.decision = Decision::Abort;
    rec.error = Some(RecordedError {
        kind: reason.as_str().to_string(),
        message,
        retryable: reason == ExitReason::CircuitOpen,
    });
    rec
}
