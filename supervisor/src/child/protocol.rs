//! The conversation with one agent, as a state machine without I/O: messages in, decisions out.
//!
//! [`Protocol`] holds what the supervisor knows of the agent's side of the wire: the phase
//! (starting, busy, waiting for tools, …), the contract it declared, its progress and last sign
//! of life, its outstanding tool calls and their trace. It is told what happened, with the time
//! it happened (`now` is always passed in; nothing here reads a clock), and answers with a
//! [`Step`]: go on, say this to the agent, relay this tool call, print this log line, the
//! handshake is done and this is the task to send, or the attempt ends with this [`Verdict`].
//! It also says when the next watchdog is due ([`Protocol::next_deadline`]) and what a watchdog
//! or a stop request means ([`Protocol::timeout_verdict`], [`Protocol::on_stop`]).
//!
//! The rules, by phase (`Log` is accepted in every phase; anything not listed is a protocol
//! violation):
//!
//! | phase | message | step |
//! |---|---|---|
//! | starting | `Ready` of this protocol version, input within its contract | task sent, busy |
//! | starting | `Ready` of another version | protocol violation |
//! | starting | `Ready` whose contract refuses the input | contract violation |
//! | starting | `Failed` for task 0 | agent error (protocol violation for `protocol_mismatch`) |
//! | busy, tool call, idle | `Heartbeat` | alive; progress moved when it changed |
//! | busy, tool call | `ToolCall` | checked (see `bounds`), refused or relayed; tool call |
//! | busy, tool call | `Done` for this task | completed, or contract violation of the output |
//! | busy, tool call | `Failed` for this task | agent error |
//! | busy, tool call | `Done`/`Failed` for another task | protocol violation |
//!
//! A service agent ([`Protocol::serving`]) gets no task at the handshake: `Ready` leaves it
//! idle, [`Protocol::start_task`] makes it busy, and its `Done`/`Failed` is
//! [`Step::Served`] (idle again) instead of the attempt's end. Watchdogs are per task (the
//! wall deadline and stall count from each task's start); an idle agent must stay alive.
//!
//! The attempt loop (`watch`) owns the pipes, the timer and the owner's channels; it feeds this
//! machine and carries out its steps.

use super::bounds::{self, BoundError, LogBudget, Trace};
use super::verdict::Verdict;
use super::TaskInput;
use crate::config::AgentSpec;
use crate::record::{ExitReason, Phase, ToolTrace};
use corral_proto::{
    AgentError, Cancel, Contract, Down, Hello, LogLevel, Task, ToolCall, Up, Value,
    PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

mod outgoing;
pub(crate) use outgoing::{encode_within, Outgoing};

/// What to do after a message.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing.
    Continue,
    /// Say this to the agent (the answer to a tool call decided here).
    Send(Down),
    /// The agent is ready: report it, then send it the task (a whole frame), or end with the
    /// verdict when the task cannot be sent; `None` for a service agent, which waits idle for
    /// its first task.
    Ready(Option<Result<Vec<u8>, Verdict>>),
    /// A service agent finished its task (output and notes, or its error) and is idle again.
    Served(Result<(Value, Vec<Value>), AgentError>),
    /// Relay this tool call to the owner; its answer comes back through [`Protocol::answer`].
    Relay(ToolCall),
    /// Print this line of the agent's (cut to the log budget, not escaped yet).
    Log(LogLevel, String),
    /// The attempt ends.
    End(Verdict),
}

/// The agent's progress counter and when it last moved.
#[derive(Debug, Clone, Copy)]
struct Progress {
    value: u64,
    since: Instant,
}

/// The agent's tool calls: those outstanding (at most `MAX_OUTSTANDING_CALLS`, with their
/// tool, start and sequence number) and the trace of those answered.
#[derive(Default)]
struct Calls {
    outstanding: HashMap<u64, Outstanding>,
    trace: Trace,
    /// Calls made so far (each call's sequence number within the task).
    seq: u64,
    /// Calls answered from the trace.
    deduplicated: u64,
    /// The contract's tools, shared with each relayed call.
    contract_tools: Option<Arc<[String]>>,
}

/// A call asked and not yet answered.
struct Outstanding {
    tool: String,
    at: Instant,
    seq: u64,
    /// Its arguments, kept for its note only when notes are taken.
    args: Option<Value>,
}

/// The agent's side of the conversation. See the module docs.
pub(super) struct Protocol {
    agent: Arc<AgentSpec>,
    /// The task running (a one-shot attempt's only task; a service agent's current one).
    task: Option<TaskInput>,
    /// A service agent: tasks one after another, idle between them.
    service: bool,
    /// Tasks a service agent finished (completed or failed).
    served: u64,
    /// The id of the last task sent.
    last_task: Option<u64>,
    max_frame: u32,
    /// Whether tool calls have somewhere to go (else they are answered `denied`).
    tools: bool,
    /// The attempt's log budget, shared with the stdout/stderr drain.
    log_budget: Arc<LogBudget>,
    /// When the attempt started.
    t0: Instant,
    phase: Phase,
    /// (Shared by the attempts of its agent type that declared the same: see [`shared`].)
    contract: Option<Arc<Contract>>,
    /// The output and notes of a completed task.
    done: Option<Box<(Value, Vec<Value>)>>,
    progress: Progress,
    /// The last sign of life: a frame, or a beat (clamped to when it was read).
    last_alive: Option<Instant>,
    task_sent_at: Option<Instant>,
    /// Since when the agent's frames are not read because it does not read its own.
    blocked_since: Option<Instant>,
    /// Outstanding tool calls (at most `MAX_OUTSTANDING_CALLS`): tool name and start.
    /// Tool calls, once the agent made one (most never do: no room kept for them).
    calls: Option<Box<Calls>>,
    /// Heartbeats received (frames and beats).
    beats: u64,
    /// Where notes of what the agent saw and did go.
    notes: Option<super::Notes>,
}

impl Protocol {
    /// The conversation of an attempt that started at `t0`, before `Hello`.
    pub(super) fn new(
        agent: Arc<AgentSpec>,
        task: TaskInput,
        max_frame: u32,
        tools: bool,
        t0: Instant,
    ) -> Protocol {
        Protocol {
            log_budget: Arc::new(LogBudget::new(agent.log_limit)),
            agent,
            last_task: None,
            task: Some(task),
            service: false,
            served: 0,
            max_frame,
            tools,
            t0,
            phase: Phase::Starting,
            contract: None,
            done: None,
            progress: Progress {
                value: 0,
                since: t0,
            },
            last_alive: None,
            task_sent_at: None,
            blocked_since: None,
            calls: None,
            beats: 0,
            notes: None,
        }
    }

    /// A service agent's conversation: no task at the handshake; tasks are given one after
    /// another with [`Protocol::start_task`], and each ends in [`Step::Served`].
    pub(super) fn serving(mut self) -> Protocol {
        self.task = None;
        self.service = true;
        self
    }

    /// Whether this is a service agent.
    pub(super) fn is_service(&self) -> bool {
        self.service
    }

    /// Whether the agent is ready and has no task (a service agent between tasks).
    pub(super) fn idle(&self) -> bool {
        self.phase == Phase::Idle && self.task.is_none()
    }

    /// Tasks served so far and the id of the last task sent.
    pub(super) fn served(&self) -> (u64, Option<u64>) {
        (self.served, self.last_task)
    }

    /// Give an idle service agent its next task at `now`: the frame to send, or why the task
    /// cannot be given (its input refused by the contract, or too large): the agent stays idle.
    pub(super) fn start_task(
        &mut self,
        task: TaskInput,
        now: Instant,
    ) -> Result<Vec<u8>, AgentError> {
        if let Some(c) = &self.contract {
            if let Err(e) = c.input.validate(&task.input, "input") {
                return Err(AgentError::new("contract_violation", e.to_string(), false));
            }
        }
        let msg = Down::Task(Task {
            task_id: task.task_id,
            input: Value::clone(&task.input),
            memory: task.memory.clone(),
        });
        let frame = encode_within(&msg, self.max_frame, Outgoing::Task)
            .map_err(|e| AgentError::new("contract_violation", e.to_string(), false))?;
        self.last_task = Some(task.task_id);
        self.task = Some(task);
        self.phase = Phase::Busy;
        self.task_sent_at = Some(now);
        self.progress.since = now;
        Ok(frame)
    }

    /// The running task's id (0 when none).
    fn task_id(&self) -> u64 {
        self.task.as_ref().map_or(0, |t| t.task_id)
    }

    /// A service agent's task ended: it is idle again.
    fn served_one(&mut self, result: Result<(Value, Vec<Value>), AgentError>) -> Step {
        self.task = None;
        self.task_sent_at = None;
        self.served += 1;
        Step::Served(result)
    }

    /// Report what the agent sees and does to `notes` (see [`super::Note`]).
    pub(super) fn with_notes(mut self, notes: Option<super::Notes>) -> Protocol {
        self.notes = notes;
        self
    }

    fn note(&self, note: impl FnOnce() -> super::Note) {
        if let Some(n) = &self.notes {
            n(note());
        }
    }

    /// The handshake's offer, the first thing said.
    #[cfg(test)]
    pub(super) fn hello(&self, run_id: &str, attempt: u32) -> Down {
        Self::hello_of(&self.agent, run_id, attempt, self.max_frame)
    }

    /// The handshake's offer for an attempt of `agent`: all of it is known before the process
    /// exists, so it can wait in the pipe for the agent (see `launch::prewrite`).
    pub(super) fn hello_of(agent: &AgentSpec, run_id: &str, attempt: u32, max_frame: u32) -> Down {
        Down::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_id: agent.name.clone(),
            run_id: run_id.to_string(),
            attempt,
            heartbeat_interval_ms: agent.heartbeat_interval.as_millis() as u64,
            max_frame,
        })
    }

    /// Say (once per attempt, in the log) which tools the contract asks for that the config
    /// never grants: calls of them will be refused.
    fn warn_ungranted(&self, contract: &Contract) {
        let a = &self.agent;
        let missing: Vec<&str> = contract
            .tools
            .iter()
            .filter(|t| *t != "*" && (!a.tools.contains(t) || a.deny_tools.contains(t)))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() && self.tools {
            tracing::warn!(agent = %a.name, "the contract asks for tools the config does not grant: {}", missing.join(", "));
        }
    }

    /// The log budget, shared with the stdout/stderr drain.
    pub(super) fn log_budget(&self) -> &Arc<LogBudget> {
        &self.log_budget
    }

    /// From now on tool calls have nowhere to go (the agent is gone): they are answered
    /// `denied`.
    pub(super) fn no_tools(&mut self) {
        self.tools = false;
    }

    /// Handle one message from the agent, received at `now`.
    pub(super) fn on_frame(&mut self, msg: Up, now: Instant) -> Step {
        self.last_alive = Some(now);
        match (self.phase, msg) {
            (_, Up::Log(l)) => {
                // Within the log budget shared with stdout and stderr.
                let keep = self.log_budget.take(l.message.len());
                if keep == 0 {
                    return Step::Continue;
                }
                let mut text = l.message;
                let cut = bounds::clip(&text, keep).len();
                text.truncate(cut);
                Step::Log(l.level, text)
            }
            (Phase::Starting, Up::Ready(r)) => {
                if r.protocol != PROTOCOL_VERSION {
                    let message =
                        corral_proto::message::version_mismatch(PROTOCOL_VERSION, r.protocol);
                    return Step::End(Verdict::violation(message));
                }
                self.note(|| super::Note::Contract(r.contract.clone()));
                self.warn_ungranted(&r.contract);
                let Some(t) = &self.task else {
                    // A service agent: idle until its first task.
                    self.contract = Some(shared(&self.agent.name, r.contract));
                    self.phase = Phase::Idle;
                    return Step::Ready(None);
                };
                let refused = r.contract.input.validate(&t.input, "input");
                self.contract = Some(shared(&self.agent.name, r.contract));
                if let Err(e) = refused {
                    self.phase = Phase::Idle;
                    return Step::End(Verdict::contract(e.to_string()));
                }
                let task = Down::Task(Task {
                    task_id: t.task_id,
                    input: Value::clone(&t.input),
                    memory: t.memory.clone(),
                });
                self.last_task = Some(t.task_id);
                // The agent was told max_frame in Hello: a larger Task it would refuse.
                match encode_within(&task, self.max_frame, Outgoing::Task) {
                    Ok(frame) => {
                        self.phase = Phase::Busy;
                        self.task_sent_at = Some(now);
                        self.progress.since = now;
                        Step::Ready(Some(Ok(frame)))
                    }
                    Err(e) => Step::Ready(Some(Err(Verdict::contract(e.to_string())))),
                }
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
                self.beats += 1;
                if h.progress != self.progress.value {
                    self.progress = Progress {
                        value: h.progress,
                        since: now,
                    };
                }
                Step::Continue
            }
            (Phase::Busy | Phase::ToolCall, Up::ToolCall(call)) => self.on_call(call, now),
            (Phase::Busy | Phase::ToolCall, Up::Done(d)) => {
                if d.task_id != self.task_id() {
                    return Step::End(Verdict::violation(format!(
                        "Done for task {} while task {} runs",
                        d.task_id,
                        self.task_id()
                    )));
                }
                self.phase = Phase::Idle;
                if let Some(c) = &self.contract {
                    if let Err(e) = c.output.validate(&d.output, "output") {
                        return Step::End(Verdict::contract(e.to_string()));
                    }
                }
                if self.service {
                    return self.served_one(Ok((d.output, d.memory)));
                }
                self.done = Some(Box::new((d.output, d.memory)));
                Step::End(Verdict::completed())
            }
            (Phase::Busy | Phase::ToolCall, Up::Failed(f)) => {
                if f.task_id != self.task_id() {
                    return Step::End(Verdict::violation(format!(
                        "Failed for task {} while task {} runs",
                        f.task_id,
                        self.task_id()
                    )));
                }
                self.phase = Phase::Idle;
                if self.service {
                    return self.served_one(Err(f.error));
                }
                Step::End(Verdict {
                    reason: Some(ExitReason::AgentError),
                    error: Some(f.error.into()),
                    graceful: true,
                })
            }
            (phase, msg) => Step::End(Verdict::violation(format!(
                "unexpected `{}` message while {}",
                msg.name(),
                match phase {
                    Phase::Starting => "starting (before Ready)",
                    Phase::Idle => "idle",
                    Phase::Busy => "busy",
                    Phase::ToolCall => "waiting for a tool",
                    Phase::Stopping => "stopping",
                }
            ))),
        }
    }

    /// A beat read at `read_at` (`mono_now` on the monotonic clock), dated `at_ns` by the agent:
    /// a sign of life at that date (clamped to when it was read, and to the attempt's start),
    /// with its progress.
    pub(super) fn on_beat(&mut self, progress: u64, at_ns: u64, read_at: Instant, mono_now: u64) {
        self.beats += 1;
        let at = bounds::beat_time(read_at, mono_now, at_ns, self.t0);
        if self.last_alive.is_none_or(|t| at > t) {
            self.last_alive = Some(at);
        }
        if progress != self.progress.value && at >= self.progress.since {
            self.progress = Progress {
                value: progress,
                since: at,
            };
        }
    }

    /// Whether the agent's frames are left unread (because it does not read its own), as of
    /// `now`: while they are, it cannot be told hung or stalled, only given a
    /// `heartbeat_timeout` to read.
    pub(super) fn set_blocked(&mut self, blocked: bool, now: Instant) {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (false, Some(_)) => self.blocked_since = None,
            _ => {}
        }
    }

    /// The earliest moment a watchdog fires, and the reason it would give.
    pub(super) fn next_deadline(&self) -> (Instant, ExitReason) {
        let a = &self.agent;
        if self.phase == Phase::Starting {
            return (self.t0 + a.startup_timeout, ExitReason::StartupTimeout);
        }
        let mut best = bounds::liveness_deadline(
            self.last_alive.unwrap_or(self.t0),
            self.blocked_since,
            a.heartbeat_timeout,
        );
        if let Some(sent) = self.task_sent_at {
            if matches!(self.phase, Phase::Busy | Phase::ToolCall) {
                // Waiting on a tool is not a stall of the agent, nor is waiting for it to read
                // (its progress is not read meanwhile).
                if self.phase == Phase::Busy && self.blocked_since.is_none() {
                    let stall = self.progress.since + a.stall_timeout;
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

    /// The watchdog due at `now`, if any: its deadline and reason.
    pub(super) fn overdue(&self, now: Instant) -> Option<(Instant, ExitReason)> {
        let (due, why) = self.next_deadline();
        (now >= due).then_some((due, why))
    }

    /// The verdict of watchdog `why`; `unread` is how many bytes wait for the agent to read.
    pub(super) fn timeout_verdict(&self, why: ExitReason, unread: usize) -> Verdict {
        let a = &self.agent;
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
                self.progress.value, a.stall_timeout
            ),
            ExitReason::Deadline => format!("task ran past wall_time ({:?})", a.wall_time),
            ExitReason::ProtocolViolation => {
                let e = BoundError::NotReading {
                    bytes: unread,
                    waited: a.heartbeat_timeout,
                };
                return Verdict::violation(e.to_string());
            }
            other => other.to_string(),
        };
        Verdict::ended(why, message, true, false)
    }

    /// The owner asks the attempt to stop for `reason`: what to tell the agent (a cancelled
    /// task is cancelled), and the verdict.
    pub(super) fn on_stop(&self, reason: ExitReason) -> (Option<Down>, Verdict) {
        let cancel = (reason == ExitReason::Cancelled && self.task.is_some()).then(|| {
            Down::Cancel(Cancel {
                task_id: self.task_id(),
            })
        });
        let message = format!("stopped by its owner: {reason}");
        (cancel, Verdict::ended(reason, message, false, true))
    }

    /// The `Shutdown` message, with the grace the agent has.
    pub(super) fn shutdown(&self) -> Down {
        Down::Shutdown(corral_proto::Shutdown {
            grace_ms: self.agent.kill_grace.as_millis() as u64,
        })
    }

    /// Where the conversation got.
    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// The agent's progress counter.
    pub(super) fn progress(&self) -> u64 {
        self.progress.value
    }

    /// The last sign of life.
    pub(super) fn last_alive(&self) -> Option<Instant> {
        self.last_alive
    }

    /// Whether the agent completed its task.
    pub(super) fn completed(&self) -> bool {
        self.done.is_some()
    }

    /// What the attempt produced: the output and notes (when it completed), the contract, and
    /// the trace of its tool calls with how many were dropped from it.
    pub(super) fn finish(&mut self) -> Finished {
        self.note(|| super::Note::Summary {
            heartbeats: self.beats,
            progress: self.progress.value,
        });
        let (tool_calls, dropped) = match &mut self.calls {
            Some(calls) => calls.trace.take(),
            None => (Vec::new(), 0),
        };
        let (output, memory) = match self.done.take() {
            Some(done) => (Some(done.0), done.1),
            None => (None, Vec::new()),
        };
        Finished {
            tool_calls_deduplicated: self.deduplicated(),
            output,
            memory,
            #[cfg(test)]
            contract: self.contract.take().map(Arc::unwrap_or_clone),
            tool_calls,
            tool_calls_dropped: dropped,
        }
    }

    /// How long the agent is given to exit after `Shutdown` before it is killed.
    pub(super) fn kill_grace(&self) -> Duration {
        self.agent.kill_grace
    }
}

/// The contracts agents declared, the last one per agent type. The attempts of a type that
/// declare the same contract (a service's thousand instances, say) share one copy instead of
/// keeping one each (~0.35 KiB for a small contract, measured under `corral serve`). One entry
/// per agent name of the config, whatever agents send: an agent's contract replaces the entry
/// only when it differs from the one kept, and is compared whole first (it is bounded by the
/// frame it came in).
static CONTRACTS: Mutex<Vec<(String, Weak<Contract>)>> = Mutex::new(Vec::new());

/// `contract`, declared by an agent of type `agent`, or the equal one already kept. (Compared
/// outside the lock: a large contract holds up no other attempt's `Ready`.)
fn shared(agent: &str, contract: Contract) -> Arc<Contract> {
    let kept = |f: &mut dyn FnMut(&mut Weak<Contract>)| {
        let mut all = CONTRACTS.lock().unwrap_or_else(|p| p.into_inner());
        let i = match all.iter().position(|(name, _)| name == agent) {
            Some(i) => i,
            None => {
                all.push((agent.to_string(), Weak::new()));
                all.len() - 1
            }
        };
        f(&mut all[i].1);
    };
    let mut known = None;
    kept(&mut |slot| known = slot.upgrade());
    if let Some(known) = known.filter(|k| **k == contract) {
        return known;
    }
    let contract = Arc::new(contract);
    kept(&mut |slot| *slot = Arc::downgrade(&contract));
    contract
}

/// See [`Protocol::finish`].
pub(super) struct Finished {
    pub(super) output: Option<Value>,
    pub(super) memory: Vec<Value>,
    /// The contract the agent declared (what the tests check of the handshake).
    #[cfg(test)]
    pub(super) contract: Option<Contract>,
    pub(super) tool_calls: Vec<ToolTrace>,
    pub(super) tool_calls_dropped: u64,
    pub(super) tool_calls_deduplicated: u64,
}

mod calls;
#[cfg(test)]
mod tests;
