//! Running tasks on agents, with the restart policy applied: the owner of children.
//!
//! A [`Supervisor`] holds the resolved config, the host's cgroup manager, and per agent type
//! the policy state that outlives attempts: restart intensity, circuit breaker and quarantine.
//! [`Supervisor::call`] runs one task to its end: admission (intensity, breaker, quarantine),
//! attempts through [`crate::child::run_attempt`], the decision after each (retry after a
//! backoff, escalate, abort, quarantine), all written into each attempt's exit record.

use crate::child::{self, AttemptSpec, StemPool, TaskInput, ToolRequest};
use crate::config::{AgentSpec, Config};
use crate::policy::{
    self, Admission, Backoff, Breaker, Fingerprint, Intensity, IntensityState, IntensityVerdict,
    Quarantine, RetryRules, SplitMix64,
};
use crate::record::{Decision, ExitReason, ExitRecord, RecordedError};
use crate::sandbox::cgroup::{CgroupLimits, Cgroups};
use crate::sandbox::pool::{CgroupPool, WorkspacePool};
use corral_proto::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};

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
}

/// Options of one call.
#[derive(Default)]
pub struct CallOptions {
    /// Run id to use (generated when `None`).
    pub run_id: Option<String>,
    /// Notes handed down with the task.
    pub memory: Vec<Value>,
    /// Where tool calls go (`None`: every call is denied).
    pub tools: Option<mpsc::Sender<ToolRequest>>,
    /// Stop the call: set to `Some(reason)`.
    pub stop: Option<watch::Receiver<Option<ExitReason>>>,
    /// Where to report attempts' life events.
    pub events: Option<mpsc::UnboundedSender<child::AttemptEvent>>,
}

/// Owner of agent processes for one config.
pub struct Supervisor {
    config: Arc<Config>,
    specs: HashMap<String, Arc<AgentSpec>>,
    cgroups: Option<Arc<CgroupPool>>,
    workspaces: Arc<WorkspacePool>,
    stems: Arc<StemPool>,
    types: Mutex<HashMap<String, TypeState>>,
    rng: Mutex<SplitMix64>,
}

/// A fresh, sortable, unique-enough run id: `r<ms since epoch, base 36>-<pid>-<seq>`.
pub fn new_run_id(seq: u64) -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("r{}-{}-{}", base36(ms), std::process::id(), seq)
}

fn base36(mut n: u64) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
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
        Ok(Supervisor {
            config: Arc::new(config),
            specs,
            workspaces,
            stems: StemPool::new(),
            cgroups: cgroups.map(|c| CgroupPool::new(Arc::new(c))),
            types: Mutex::new(HashMap::new()),
            rng: Mutex::new(SplitMix64::new(seed)),
        })
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
        let spec = self.specs.get(name).ok_or_else(|| RunError::UnknownAgent {
            name: name.to_string(),
            config: self.config.path.display().to_string(),
            known: self
                .config
                .agents
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
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

    /// An operator's explicit restart: clears fatal, breaker and quarantine of an agent type.
    pub fn reset_agent(&self, name: &str) {
        let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
        types.remove(name);
    }

    /// Run one task on `agent` to its end, with retries by policy.
    pub async fn call(
        &self,
        agent: &str,
        input: Value,
        opts: CallOptions,
    ) -> Result<CallOutcome, RunError> {
        let spec = self.agent(agent)?;
        // Process-wide, so that several supervisors in one process never share a run id.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let run_id = opts.run_id.clone().unwrap_or_else(|| new_run_id(seq));
        // An input no agent could decode (nesting past the protocol's limit, a frame past
        // `max_frame`) is refused here, before any process exists, with its reason.
        let encoded = child::encode_within(
            &input,
            self.config.supervisor.max_frame,
            child::Outgoing::Input,
        );
        let encoded = match encoded {
            Ok(b) => b,
            Err(e) => {
                return Ok(CallOutcome {
                    output: None,
                    memory: Vec::new(),
                    attempts: vec![not_started(
                        &spec,
                        &run_id,
                        1,
                        ExitReason::ContractViolation,
                        e.to_string(),
                    )],
                })
            }
        };
        let input_key = policy::input_key(&encoded);
        drop(encoded);
        let mut backoff = Backoff::new(spec.backoff.clone());
        let mut attempts: Vec<ExitRecord> = Vec::new();
        // A stop channel of our own only when the caller has none (a channel is ~350 bytes, per
        // call, for as long as the call lasts).
        let (_keep_stop_tx, stop) = match opts.stop.clone() {
            Some(s) => (None, s),
            None => {
                let (tx, rx) = watch::channel(None);
                (Some(tx), rx)
            }
        };
        let input = std::sync::Arc::new(input);
        let mut retries: u32 = 0;
        loop {
            let attempt_no = attempts.len() as u32 + 1;
            // Stopped (during a backoff, or before the first attempt): say so, start nothing.
            let stopped = *stop.borrow();
            if let Some(reason) = stopped {
                let mut rec = not_started(
                    &spec,
                    &run_id,
                    attempt_no,
                    reason,
                    format!("stopped by its owner before the attempt started: {reason}"),
                );
                rec.retry_count = retries;
                attempts.push(rec);
                return Ok(CallOutcome {
                    output: None,
                    memory: Vec::new(),
                    attempts,
                });
            }
            // Admission: quarantine, intensity, breaker.
            let now = Instant::now();
            let gate = self.with_type(&spec, |t| {
                if t.quarantine.is_quarantined(&input_key) {
                    return Err((
                        ExitReason::Quarantined,
                        format!(
                            "input {input_key} is quarantined after {} identical failures",
                            t.quarantine.after()
                        ),
                    ));
                }
                if let IntensityState::Fatal { until } = t.intensity.state(now) {
                    return Err((
                        ExitReason::CircuitOpen,
                        format!(
                            "agent type `{}` is fatal (restart intensity exceeded) for another {} ms",
                            spec.name,
                            until.saturating_duration_since(now).as_millis()
                        ),
                    ));
                }
                match t.breaker.admit(now) {
                    Admission::Rejected { retry_after } => Err((
                        ExitReason::CircuitOpen,
                        format!(
                            "circuit breaker of `{}` is open; next probe in {} ms",
                            spec.name,
                            retry_after.as_millis()
                        ),
                    )),
                    _ => Ok(()),
                }
            });
            if let Err((reason, message)) = gate {
                let mut rec = not_started(&spec, &run_id, attempt_no, reason, message);
                rec.retry_count = retries;
                rec.decision = if reason == ExitReason::Quarantined {
                    Decision::Quarantine
                } else {
                    Decision::Abort
                };
                attempts.push(rec);
                return Ok(CallOutcome {
                    output: None,
                    memory: Vec::new(),
                    attempts,
                });
            }

            let aspec = AttemptSpec {
                agent: spec.clone(),
                run_id: run_id.clone(),
                attempt: attempt_no,
                max_frame: self.config.supervisor.max_frame,
                cgroups: self.cgroups.clone(),
                workspaces: self.workspaces.clone(),
                stems: Some(self.stems.clone()),
                events: opts.events.clone(),
            };
            let task = TaskInput {
                task_id: attempt_no as u64,
                input: input.clone(),
                memory: opts.memory.clone(),
            };
            // Boxed: the outcome outlives the attempt's future, which would otherwise keep a hole
            // of its size beside that future in every call's state for the whole attempt.
            let out =
                Box::new(child::run_attempt(aspec, task, opts.tools.clone(), stop.clone()).await);
            let mut rec = out.record;
            rec.retry_count = retries;
            let reason = rec.reason;
            let outcome = policy::AttemptOutcome {
                reason,
                retryable: rec.error.as_ref().map(|e| e.retryable),
                exit_code: rec.exit_code,
            };
            let now = Instant::now();
            let ran_for = Duration::from_millis(rec.duration_ms);
            // Breaker and quarantine learn from every attempt.
            let quarantined_now = self.with_type(&spec, |t| {
                if reason.is_success() {
                    t.breaker.on_success(now);
                    t.quarantine.record_success(&input_key);
                    false
                } else {
                    if outcome.counts_for_breaker() {
                        t.breaker.on_failure(now);
                    } else {
                        t.breaker.on_uncounted();
                    }
                    let fp = Fingerprint {
                        reason,
                        signal: rec.signal,
                        exit_code: rec.exit_code,
                        last_message: rec.error.as_ref().map(|e| e.kind.clone()),
                    };
                    counts_for_quarantine(reason) && t.quarantine.record_failure(&input_key, &fp)
                }
            });
            backoff.on_healthy_run(ran_for);
            let rules = RetryRules {
                policy: spec.restart,
                max_retries: spec.max_retries,
                no_retry_exit_codes: &spec.no_retry_exit_codes,
            };
            match policy::decide(&rules, &outcome, retries) {
                policy::Verdict::Done => {
                    rec.decision = Decision::None;
                    attempts.push(rec);
                    return Ok(CallOutcome {
                        output: out.output,
                        memory: out.memory,
                        attempts,
                    });
                }
                policy::Verdict::GiveUp { why } => {
                    rec.decision = if quarantined_now {
                        Decision::Quarantine
                    } else {
                        Decision::Abort
                    };
                    tracing::info!(agent = %spec.name, run = %run_id, attempt = attempt_no, "giving up: {why}");
                    attempts.push(rec);
                    return Ok(CallOutcome {
                        output: None,
                        memory: Vec::new(),
                        attempts,
                    });
                }
                policy::Verdict::Retry => {
                    if quarantined_now {
                        rec.decision = Decision::Quarantine;
                        attempts.push(rec);
                        return Ok(CallOutcome {
                            output: None,
                            memory: Vec::new(),
                            attempts,
                        });
                    }
                    let verdict = self.with_type(&spec, |t| t.intensity.record_restart(now));
                    match verdict {
                        IntensityVerdict::Fatal { restart_count, .. } => {
                            rec.restart_count = restart_count;
                            rec.decision = Decision::Escalate;
                            tracing::warn!(agent = %spec.name, restart_count, "restart intensity exceeded: agent type is fatal");
                            attempts.push(rec);
                            return Ok(CallOutcome {
                                output: None,
                                memory: Vec::new(),
                                attempts,
                            });
                        }
                        IntensityVerdict::Allowed { restart_count } => {
                            rec.restart_count = restart_count;
                        }
                    }
                    let r = self.rng.lock().map(|mut g| g.next_f64()).unwrap_or(0.5);
                    let delay = backoff.next_delay(r);
                    rec.backoff_ms = Some(delay.as_millis() as u64);
                    rec.decision = Decision::Retry;
                    attempts.push(rec);
                    retries += 1;
                    // A zero backoff restarts at once (a zero-length sleep still waits for the
                    // timer wheel's next tick, about a millisecond).
                    if !delay.is_zero() {
                        let mut stop_wait = stop.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop_wait.wait_for(|s| s.is_some()) => {}
                        }
                    }
                }
            }
        }
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
fn counts_for_quarantine(reason: ExitReason) -> bool {
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
fn not_started(
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
