//! One supervised process, from spawn to exit record.
//!
//! [`run_attempt`] gets the agent's process (a warm stem released with this attempt's
//! environment, or one made now), does the handshake, sends one task, watches the agent
//! (heartbeats on fd 4 or the beat pipe, progress, deadlines, protocol, contract, health
//! samples), relays tool calls to its owner over a channel, stops it with escalation
//! (Shutdown → SIGTERM → `kill_grace` → SIGKILL of the whole group), reaps it with rusage and
//! returns an [`ExitRecord`] saying exactly what happened. It never panics on anything the agent
//! does and never blocks on it.
//!
//! The rooms:
//!
//! - `attempt`: the attempt in order, from getting the process to the exit record.
//! - `launch`: making the process (a cold spawn or a warm stem) and its sandbox.
//! - `protocol`: the conversation with the agent as a state machine without I/O: messages in,
//!   steps out (replies, relays, the task, the verdict); deadlines from injected time.
//! - `watch`: the event loop while the agent runs: wake-ups, timer, tool answers, stop.
//! - `wire`: the pipes to and from the agent, and the beat pipe.
//! - `poller`: one readiness registration per agent for all its fds.
//! - `logs`: stdout and stderr read into the log within the log budget.
//! - `health`: resident set and CPU samples.
//! - `stop`: stop with escalation, reap, and what the kernel says after.
//! - `verdict`: why the attempt ended, from the watch's verdict and the kernel's evidence.
//! - `bounds`: what an agent can make the supervisor hold, and no more.
//! - `guard`: a dropped attempt still kills and reaps its process.
//! - `cancel`: a service task's cancellation, shared by its owner and its instance.
//! - `tool_run`: a command tool's program, made in an agent's sandbox, run to its end or its
//!   timeout (not a protocol agent: JSON in on stdin, out on stdout).
//!
//! A service agent's attempt (an [`AttemptSpec`] with a `service` queue) is the same life
//! with several tasks: after `Ready` it waits idle for a task from the queue, runs it under
//! the same watchdogs (per task: wall deadline, stall; always: heartbeats, limits), answers
//! it on the task's own channel, and waits for the next. Its exit record says how many tasks
//! it served (`tasks_served`) and which was the last (`last_task_id`); a task in flight when
//! it died comes back to the owner in [`AttemptOutcome::in_flight`].
//!
//! The child knows nothing of plans, the journal or retries: the owner (see [`crate::run`])
//! decides what follows and fills in `decision`, `backoff_ms` and the counters.

mod attempt;
mod bounds;
mod cancel;
mod guard;
mod health;
mod launch;
mod logs;
mod poller;
mod protocol;
mod stop;
mod tool_run;
mod verdict;
mod watch;
mod wire;

pub use attempt::{run_attempt, run_service_attempt};
pub use cancel::{TaskCancel, TaskState};
pub(crate) use launch::{turn as launch_turn, Turn};
pub use launch::{Pools, StemPool};
pub(crate) use protocol::{encode_within, Outgoing};
pub(crate) use tool_run::run_tool;
pub(crate) use verdict::signal_name;

use crate::config::AgentSpec;
use crate::record::{ExitReason, ExitRecord};
// (`launch` takes these names from here.)
use crate::sandbox::cgroup::{AgentCgroup, CgroupLimits};
use crate::sandbox::pool::{CgroupPool, WorkspacePool};
use corral_proto::{AgentError, ToolCall, Value};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The largest read into a thread's read buffer.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// Per-thread read buffer (never held across an await): a thousand idle agents do not each
    /// keep one. It is read into as spare capacity, never zeroed, so that its pages are touched
    /// only as far as reads have filled it (a thread reading small frames keeps one page).
    static SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(SCRATCH_LEN));
}

/// Read at most `max` bytes of `fd` (64 KiB at most) into this thread's read buffer, and run
/// `f` on what was read (empty at the end of the stream). Not reentrant: `f` must not call it
/// again.
fn read_scratch<R>(
    fd: std::os::fd::BorrowedFd<'_>,
    max: usize,
    f: impl FnOnce(rustix::io::Result<&[u8]>) -> R,
) -> R {
    SCRATCH.with(|c| {
        let mut buf = c.borrow_mut();
        let spare = buf.spare_capacity_mut();
        let n = max.min(spare.len());
        match rustix::io::read(fd, &mut spare[..n]) {
            Ok((read, _)) => f(Ok(read)),
            Err(e) => f(Err(e)),
        }
    })
}

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
    pub events: Option<EventSink>,
    /// Where to report what the agent saw and did, as it happens (for the journal).
    pub notes: Option<Notes>,
    /// The task's name within its run (see [`ToolRequest::task`]); `None`: the agent's name.
    pub task: Option<Arc<str>>,
    /// A service agent: its tasks come one after another from this queue (shared by the
    /// agent's instances) instead of the one task of the attempt.
    pub service: Option<ServiceQueue>,
    /// Called once, as soon as the attempt's process exists (or could not be made): what its
    /// owner defers until then (the journal's entries of a restart, so that their commit does
    /// not run beside the spawn).
    pub on_spawn: Option<OnSpawn>,
}

/// See [`AttemptSpec::on_spawn`].
pub type OnSpawn = Arc<dyn Fn() + Send + Sync>;

/// Where an attempt's life events go (see [`AttemptSpec::events`]).
#[derive(Clone)]
pub enum EventSink {
    /// A channel the owner reads (a caller's [`crate::CallOptions::events`]).
    Channel(mpsc::UnboundedSender<AttemptEvent>),
    /// A function called with each event where it happens: it must not block. No channel is
    /// made per attempt (a channel's first block of slots is ~1.8 KiB, which a service
    /// instance would keep for its whole life).
    Call(Arc<dyn Fn(AttemptEvent) + Send + Sync>),
}

impl EventSink {
    fn send(&self, ev: AttemptEvent) {
        match self {
            EventSink::Channel(tx) => {
                let _ = tx.send(ev);
            }
            EventSink::Call(f) => f(ev),
        }
    }
}

impl From<mpsc::UnboundedSender<AttemptEvent>> for EventSink {
    fn from(tx: mpsc::UnboundedSender<AttemptEvent>) -> Self {
        EventSink::Channel(tx)
    }
}

/// The queue a service agent's instances take their tasks from, first come first served.
pub type ServiceQueue = async_channel::Receiver<ServiceTask>;

/// A task for a service agent, with where its result goes.
#[derive(Debug)]
pub struct ServiceTask {
    /// The task (its `task_id` is what the agent sees).
    pub task: TaskInput,
    /// Where the result goes: the output and notes, or the agent's error. When the attempt
    /// ends with the task in flight, the task comes back in [`AttemptOutcome::in_flight`]
    /// instead, for the owner to retry or fail.
    pub reply: oneshot::Sender<ServiceResult>,
    /// Its cancellation (see [`TaskCancel`]).
    pub cancel: TaskCancel,
    /// Instances that died with it in flight so far (whichever instance each was): its
    /// retries are counted against `max_retries` by this.
    pub tries: u32,
}

/// The result of a service agent's task.
pub type ServiceResult = Result<(Value, Vec<Value>), AgentError>;

/// What an agent saw and did during an attempt, reported as it happens: what a journal keeps
/// beside the exit record. Each is reported once; nothing here is bounded by the record's caps
/// (the tool calls are all reported, in the order the agent made them).
#[derive(Debug, Clone)]
pub enum Note {
    /// The handshake finished with this contract.
    Contract(corral_proto::Contract),
    /// `Log` frames within the log budget (not escaped), in order: those read in one wake-up
    /// of the attempt together (one note, and one journal event, for a burst of lines).
    Logs(Vec<LogLine>),
    /// A tool call and its answer (refused here, or answered by the owner).
    ToolCall {
        /// Order among the attempt's calls, from 1, by arrival.
        seq: u32,
        /// The agent's id of the call.
        call_id: u64,
        /// The tool asked for.
        tool: String,
        /// Its arguments as sent (within `NOTED_ARGS` (64 KiB); past it their size and hash).
        args: Value,
        /// The answer the agent got.
        result: Result<Value, AgentError>,
        /// From the call to its answer.
        duration_ms: u64,
        /// Answered from the run's trace (or the ledger) instead of being executed.
        deduplicated: bool,
    },
    /// At the attempt's end: heartbeats received (summarised, never one note each) and the
    /// progress counter.
    Summary {
        /// Heartbeats received, by frame or on the beat pipe.
        heartbeats: u64,
        /// The progress counter.
        progress: u64,
    },
}

/// Largest tool-call arguments (encoded) a [`Note::ToolCall`] carries whole; past it the note
/// has `{"$omitted_bytes": N, "$sha256": H}` instead.
pub const NOTED_ARGS: usize = 64 * 1024;

/// A call's arguments as noted (see [`NOTED_ARGS`]); replay compares what it noted the same way.
pub fn noted_args(args: &Value) -> Value {
    match corral_proto::frame::encode(args) {
        Ok(bytes) if bytes.len() - 4 > NOTED_ARGS => Value::map([
            ("$omitted_bytes", Value::Int((bytes.len() - 4) as i64)),
            ("$sha256", Value::from(crate::config::digest(&bytes[4..]))),
        ]),
        _ => args.clone(),
    }
}

/// Where [`Note`]s go: called on the attempt's task, so it must not block.
pub type Notes = Arc<dyn Fn(Note) + Send + Sync>;

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
        /// When the supervisor woke to read the agent's `Ready` (a consumer polled in the same
        /// task as the call sees the event only when the call next waits: after the task has
        /// been sent, often after its result has come back).
        at: std::time::Instant,
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
    /// A service agent was sent a task (its owner's `task_id`).
    TaskStarted {
        /// The task.
        task_id: u64,
    },
    /// A service agent answered its task (or the task was taken back at its end).
    TaskEnded {
        /// The task.
        task_id: u64,
    },
    /// The attempt is over.
    Exited(Box<ExitRecord>),
}

/// One `Log` frame of an agent.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Its level.
    pub level: corral_proto::LogLevel,
    /// Its text.
    pub text: String,
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

/// Where an attempt's tool calls go.
#[derive(Clone)]
pub enum ToolSink {
    /// To whoever reads this channel; it answers each request's `reply`.
    Channel(tokio::sync::mpsc::Sender<ToolRequest>),
    /// To this broker, called in the attempt's own task ([`crate::tools::Broker::dispatch`]):
    /// a call it answers at once (a refusal, a built-in's small work) goes back down the pipe
    /// in the same turn, with no hop to another task and back; the rest go on tasks of their
    /// own, their answers awaited as a channel's are.
    Broker(Arc<crate::tools::Broker>),
}

impl From<tokio::sync::mpsc::Sender<ToolRequest>> for ToolSink {
    fn from(tx: tokio::sync::mpsc::Sender<ToolRequest>) -> ToolSink {
        ToolSink::Channel(tx)
    }
}

impl From<Arc<crate::tools::Broker>> for ToolSink {
    fn from(broker: Arc<crate::tools::Broker>) -> ToolSink {
        ToolSink::Broker(broker)
    }
}

impl std::fmt::Debug for ToolSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ToolSink::Channel(_) => "ToolSink::Channel",
            ToolSink::Broker(_) => "ToolSink::Broker",
        })
    }
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
    /// The run the call belongs to.
    pub run_id: String,
    /// The task within the run (the agent's name for a single call).
    pub task: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The call's sequence number within its task, from 1: every call the agent makes counts,
    /// in order, so an attempt that repeats its predecessor's calls repeats their numbers (the
    /// idempotency key of a destructive call is run, task and this).
    pub seq: u64,
    /// The tools the agent's contract declares (`"*"`: any).
    pub contract_tools: Arc<[String]>,
    /// The agent's settings (its grants and granted paths among them).
    pub spec: Arc<AgentSpec>,
    /// The agent's workspace on the host, when it has one.
    pub workspace: Option<std::path::PathBuf>,
    /// That workspace opened (`O_PATH`, a directory), once per attempt and shared by its calls,
    /// for the file tools to resolve paths beneath; `None`: they open `workspace` themselves.
    pub workspace_dir: Option<Arc<std::os::fd::OwnedFd>>,
    /// What the owner tells the trace about its answer (set before it replies).
    pub note: Arc<ToolNote>,
}

/// What the owner of a tool call tells the attempt's trace about its answer (see
/// [`crate::record::ToolTrace`]): set before replying, read when the answer arrives.
#[derive(Debug, Default)]
pub struct ToolNote(std::sync::Mutex<CallNote>);

/// See [`ToolNote`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallNote {
    /// Answered from the trace, not executed.
    pub deduplicated: bool,
    /// Waited for a free slot, ms.
    pub queued_ms: u64,
    /// Waited for an approval, ms.
    pub approval_ms: u64,
    /// Size of the arguments, encoded.
    pub args_bytes: u64,
    /// Hash of the arguments, encoded.
    pub args_hash: String,
    /// Size of the result, encoded.
    pub result_bytes: u64,
}

impl ToolNote {
    /// Change the note.
    pub fn set(&self, f: impl FnOnce(&mut CallNote)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// What it says now.
    pub fn get(&self) -> CallNote {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What an attempt produced.
#[derive(Debug)]
pub struct AttemptOutcome {
    /// The output, when the agent completed.
    pub output: Option<Value>,
    /// Notes to hand downstream.
    pub memory: Vec<Value>,
    /// The account of the attempt.
    pub record: ExitRecord,
    /// A service agent's task that was running when the attempt ended (not answered).
    pub in_flight: Option<ServiceTask>,
}

impl AttemptSpec {
    fn emit(&self, ev: impl FnOnce() -> AttemptEvent) {
        if let Some(sink) = &self.events {
            sink.send(ev());
        }
    }
}
