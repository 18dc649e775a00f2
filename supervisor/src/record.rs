//! The exit record: the structured account of one attempt, written for every attempt whatever
//! happened to it. Field and variant names are part of corral's interface (`corral call --json`,
//! the journal): they are scripted against and only ever grow.

use serde::{Deserialize, Serialize};

/// Why an attempt ended. Each variant says how it is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The agent answered `Done` and its output matched the contract.
    Completed,
    /// The agent answered `Failed` with a structured error.
    AgentError,
    /// The process exited by itself with a code before finishing its task.
    ExitCode,
    /// The process was ended by a signal corral did not send.
    Signal,
    /// No frame arrived within `heartbeat_timeout`.
    Hung,
    /// Heartbeats arrived but the progress counter did not move within `stall_timeout`.
    Stalled,
    /// The task ran past `wall_time`.
    Deadline,
    /// No `Ready` within `startup_timeout` of the spawn.
    StartupTimeout,
    /// The memory cgroup's OOM-kill counter rose during the attempt.
    OomKilled,
    /// The kernel ended the agent for exceeding RLIMIT_CPU (SIGXCPU/SIGKILL at the hard limit).
    CpuLimit,
    /// The pids controller refused forks during the attempt and the agent then failed.
    PidsLimit,
    /// The agent failed with its `disk` quota (workspace and `/tmp`) used up: its writes were
    /// failing with `ENOSPC`.
    DiskLimit,
    /// The process could not be started (exec failed, sandbox set-up failed).
    SpawnFailed,
    /// The agent broke the wire protocol: undecodable or oversized frame, wrong message, version
    /// mismatch.
    ProtocolViolation,
    /// The input or output did not match the agent's declared contract.
    ContractViolation,
    /// The task was cancelled by its owner.
    Cancelled,
    /// Not started: the agent type's circuit breaker is open.
    CircuitOpen,
    /// Not started: this input is quarantined after repeated identical crashes.
    Quarantined,
    /// Stopped because the supervisor is shutting down.
    Shutdown,
    /// The outcome is unknown: the supervisor died while the attempt ran (found on recovery).
    Lost,
}

impl ExitReason {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExitReason::Completed => "completed",
            ExitReason::AgentError => "agent_error",
            ExitReason::ExitCode => "exit_code",
            ExitReason::Signal => "signal",
            ExitReason::Hung => "hung",
            ExitReason::Stalled => "stalled",
            ExitReason::Deadline => "deadline",
            ExitReason::StartupTimeout => "startup_timeout",
            ExitReason::OomKilled => "oom_killed",
            ExitReason::CpuLimit => "cpu_limit",
            ExitReason::PidsLimit => "pids_limit",
            ExitReason::DiskLimit => "disk_limit",
            ExitReason::SpawnFailed => "spawn_failed",
            ExitReason::ProtocolViolation => "protocol_violation",
            ExitReason::ContractViolation => "contract_violation",
            ExitReason::Cancelled => "cancelled",
            ExitReason::CircuitOpen => "circuit_open",
            ExitReason::Quarantined => "quarantined",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Lost => "lost",
        }
    }

    /// Whether the attempt counts as a success.
    pub fn is_success(&self) -> bool {
        matches!(self, ExitReason::Completed)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the agent was in its life when the attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Spawned, handshake not finished.
    Starting,
    /// Ready, no task.
    Idle,
    /// Working on a task.
    Busy,
    /// Waiting for a tool result.
    ToolCall,
    /// Being stopped.
    Stopping,
}

/// What the owner decided after the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Nothing further (success, or no policy applies).
    None,
    /// Another attempt follows after `backoff_ms`.
    Retry,
    /// Handed up: fallback node, parent, or the agent type went fatal.
    Escalate,
    /// Given up.
    Abort,
    /// The input was quarantined.
    Quarantine,
}

/// A structured error as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedError {
    /// Machine-readable class.
    pub kind: String,
    /// Detail.
    pub message: String,
    /// Whether trying again may help.
    pub retryable: bool,
}

impl From<corral_proto::AgentError> for RecordedError {
    fn from(e: corral_proto::AgentError) -> Self {
        RecordedError {
            kind: e.kind,
            message: e.message,
            retryable: e.retryable,
        }
    }
}

/// One attempt, fully accounted for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Agent name from the config.
    pub agent: String,
    /// Run the attempt belonged to.
    pub run_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// OS pid (as seen by the supervisor); null when the spawn failed.
    pub pid: Option<u32>,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub ended_at: String,
    /// Wall time of the attempt.
    pub duration_ms: u64,
    /// Why it ended.
    pub reason: ExitReason,
    /// Exit code when the process exited by itself.
    pub exit_code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// Signal name (`SIGKILL`).
    pub signal_name: Option<String>,
    /// Whether a core dump was written.
    pub core_dumped: bool,
    /// Which signals corral itself sent, in order (`SIGTERM`, `SIGKILL`).
    pub signals_sent: Vec<String>,
    /// User CPU of the agent and its reaped descendants.
    pub cpu_user_ms: u64,
    /// System CPU of the agent and its reaped descendants.
    pub cpu_sys_ms: u64,
    /// Peak resident set in KiB, from rusage.
    pub max_rss_kb: u64,
    /// Peak resident set in KiB, from sampling (null if never sampled).
    pub peak_rss_kb: Option<u64>,
    /// Last sampled resident set in KiB (null if never sampled).
    pub last_rss_kb: Option<u64>,
    /// The agent's structured error, or corral's description of the failure.
    pub error: Option<RecordedError>,
    /// Last bytes of stderr, capped.
    pub stderr_tail: String,
    /// Milliseconds since the last frame from the agent when it ended.
    pub last_heartbeat_age_ms: Option<u64>,
    /// Life phase when it ended.
    pub phase: Phase,
    /// Last progress counter seen.
    pub progress: u64,
    /// Retries of this task before this attempt.
    pub retry_count: u32,
    /// Restarts of this agent type counted by the intensity window.
    pub restart_count: u32,
    /// Delay chosen before the next attempt, null if none follows.
    pub backoff_ms: Option<u64>,
    /// What was decided after this attempt.
    pub decision: Decision,
    /// Log bytes dropped over `log_limit`.
    pub log_bytes_dropped: u64,
    /// Whether the cgroup recorded an OOM kill.
    pub oom_killed: bool,
    /// Tool calls made during the attempt, in order.
    pub tool_calls: Vec<ToolTrace>,
}

/// One tool call as traced in the exit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolTrace {
    /// Call id chosen by the agent.
    pub call_id: u64,
    /// Tool name.
    pub tool: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Error kind when it did not.
    pub error_kind: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

impl ExitRecord {
    /// A record of an attempt that starts now: no process yet, nothing measured, reason
    /// `spawn_failed` until something better is known.
    pub fn begin(agent: &str, run_id: &str, attempt: u32) -> ExitRecord {
        let now = rfc3339(std::time::SystemTime::now());
        ExitRecord {
            agent: agent.to_string(),
            run_id: run_id.to_string(),
            attempt,
            pid: None,
            started_at: now.clone(),
            ended_at: now,
            duration_ms: 0,
            reason: ExitReason::SpawnFailed,
            exit_code: None,
            signal: None,
            signal_name: None,
            core_dumped: false,
            signals_sent: Vec::new(),
            cpu_user_ms: 0,
            cpu_sys_ms: 0,
            max_rss_kb: 0,
            peak_rss_kb: None,
            last_rss_kb: None,
            error: None,
            stderr_tail: String::new(),
            last_heartbeat_age_ms: None,
            phase: Phase::Starting,
            progress: 0,
            retry_count: 0,
            restart_count: 0,
            backoff_ms: None,
            decision: Decision::None,
            log_bytes_dropped: 0,
            oom_killed: false,
            tool_calls: Vec::new(),
        }
    }
}

/// Format a system time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
