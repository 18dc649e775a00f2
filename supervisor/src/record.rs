//! The exit record: the structured account of one attempt, written for every attempt whatever
//! happened to it. Field and variant names are part of corral's interface (`corral call --json`,
//! the journal): they are scripted against and only ever grow.

use serde::{Deserialize, Serialize};

/// Why an attempt ended. Each variant says how it is detected.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
    /// The snake_case name, as in JSON (derived in the same spelling as serde's; a test checks
    /// that the two agree for every variant).
    pub fn as_str(&self) -> &'static str {
        self.into()
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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

impl Decision {
    /// The snake_case name, as in JSON.
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
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
    /// Tool calls made during the attempt, in order: the first 64 and the last 64 at most.
    pub tool_calls: Vec<ToolTrace>,
    /// Tool calls left out of `tool_calls` (those between the first and the last kept, and any
    /// left out to keep the record within [`MAX_RECORD_BYTES`]).
    #[serde(default)]
    pub tool_calls_dropped: u64,
    /// Tool calls of the attempt answered from the run's trace instead of being executed again
    /// (a repeated `read_only` or `idempotent` call, or a `destructive` one already done).
    #[serde(default)]
    pub tool_calls_deduplicated: u64,
    /// A service agent's attempt: how many tasks it finished (absent for a one-shot attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_served: Option<u64>,
    /// A service agent's attempt: the id of the last task it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task_id: Option<u64>,
}

/// One tool call as traced in the exit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolTrace {
    /// Call id chosen by the agent.
    pub call_id: u64,
    /// Tool name.
    pub tool: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Error kind when it did not.
    pub error_kind: Option<String>,
    /// How long it took, from the call to its answer (waits included).
    pub duration_ms: u64,
    /// The call's sequence number within its task, from 1 (part of its idempotency key).
    #[serde(default)]
    pub seq: u64,
    /// Size of its arguments, encoded, in bytes.
    #[serde(default)]
    pub args_bytes: u64,
    /// Hash of its arguments, encoded (FNV-1a 64, hex): the arguments themselves are not kept.
    #[serde(default)]
    pub args_hash: String,
    /// Size of its result, encoded, in bytes (0 for an error).
    #[serde(default)]
    pub result_bytes: u64,
    /// Answered from the trace (an earlier identical call), not executed.
    #[serde(default)]
    pub deduplicated: bool,
    /// Time spent waiting for a free slot (`max_concurrency`), in ms.
    #[serde(default)]
    pub queued_ms: u64,
    /// Time spent waiting for an approval (`approve = "ask"`), in ms.
    #[serde(default)]
    pub approval_ms: u64,
}

impl ExitRecord {
    /// A record of an attempt that starts now: no process yet, nothing measured, reason
    /// `spawn_failed` until something better is known.
    pub(crate) fn begin(agent: &str, run_id: &str, attempt: u32) -> ExitRecord {
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
            tool_calls_dropped: 0,
            tool_calls_deduplicated: 0,
            tasks_served: None,
            last_task_id: None,
        }
    }

    /// Keep the record within [`MAX_RECORD_BYTES`] as compact JSON whatever the agent sent:
    /// `error.kind` is cut to [`MAX_ERROR_KIND`] bytes and `error.message` to
    /// [`MAX_ERROR_MESSAGE`] (both marked with `…`), `stderr_tail` keeps its last
    /// [`MAX_STDERR_TAIL`] bytes, a tool name to 256 bytes and an `error_kind` to
    /// [`MAX_ERROR_KIND`]; then, while the record is still too large, tool calls are dropped
    /// from the middle of `tool_calls` (counted in `tool_calls_dropped`).
    pub(crate) fn bound(&mut self) {
        if let Some(e) = &mut self.error {
            cut(&mut e.kind, MAX_ERROR_KIND);
            cut(&mut e.message, MAX_ERROR_MESSAGE);
        }
        if self.stderr_tail.len() > MAX_STDERR_TAIL {
            let mut start = self.stderr_tail.len() - MAX_STDERR_TAIL;
            while !self.stderr_tail.is_char_boundary(start) {
                start += 1;
            }
            self.stderr_tail.drain(..start);
        }
        for t in &mut self.tool_calls {
            cut(&mut t.tool, corral_proto::message::MAX_TOOL_NAME);
            if let Some(k) = &mut t.error_kind {
                cut(k, MAX_ERROR_KIND);
            }
        }
        // Only a record that could be too large is measured (most are a few hundred bytes).
        let mut size = json_len(self);
        while size > MAX_RECORD_BYTES && !self.tool_calls.is_empty() {
            // Enough calls at once to fit, judging by their average size (at least one).
            let calls = self.tool_calls.len();
            let per_call = self.tool_calls.iter().map(json_len).sum::<usize>() / calls + 1;
            let n = ((size - MAX_RECORD_BYTES) / per_call + 1).min(calls);
            let from = (calls - n) / 2;
            self.tool_calls.drain(from..from + n);
            self.tool_calls_dropped += n as u64;
            size = json_len(self);
        }
    }
}

/// Largest exit record, as compact JSON: 256 KiB. Whatever an agent sends, corral keeps its
/// records within it, cutting long texts and then dropping tool calls from the middle of
/// `tool_calls` (counted in `tool_calls_dropped`).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Longest `error.message` kept, in bytes.
pub(crate) const MAX_ERROR_MESSAGE: usize = 4096;
/// Longest `error.kind` (and tool call `error_kind`) kept, in bytes.
pub(crate) const MAX_ERROR_KIND: usize = 64;
/// Longest `stderr_tail` kept, in bytes.
pub(crate) const MAX_STDERR_TAIL: usize = 4096;

/// Cut `s` to at most `max` bytes on a character boundary, ending it with `…` when cut.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// Length of a value as compact JSON.
fn json_len<T: Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Format a system time as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> ExitRecord {
        let mut r = ExitRecord::begin("a", "r", 1);
        r.error = Some(RecordedError {
            kind: "k".repeat(10_000),
            message: "\u{1}é".repeat(1 << 20),
            retryable: false,
        });
        r.stderr_tail = "\u{2}".repeat(10_000);
        r.tool_calls = (0..5000)
            .map(|i| ToolTrace {
                call_id: i,
                tool: "\u{3}".repeat(10_000),
                ok: false,
                error_kind: Some("\u{4}".repeat(1000)),
                duration_ms: u64::MAX,
                ..Default::default()
            })
            .collect();
        r
    }

    #[test]
    fn a_bound_record_fits_whatever_it_held() {
        let mut r = hostile();
        r.bound();
        let size = serde_json::to_vec(&r).unwrap().len();
        assert!(size <= MAX_RECORD_BYTES, "{size}");
        let e = r.error.as_ref().unwrap();
        assert!(e.message.len() <= MAX_ERROR_MESSAGE && e.message.ends_with('…'));
        assert!(e.kind.len() <= MAX_ERROR_KIND);
        assert_eq!(r.stderr_tail.len(), MAX_STDERR_TAIL);
        assert!(!r.tool_calls.is_empty(), "as many calls as fit are kept");
        assert_eq!(r.tool_calls.len() as u64 + r.tool_calls_dropped, 5000);
        // The first and the last calls stay; those dropped came from the middle.
        assert_eq!(r.tool_calls.first().map(|t| t.call_id), Some(0));
        assert_eq!(r.tool_calls.last().map(|t| t.call_id), Some(4999));
    }

    #[test]
    fn a_small_record_is_left_as_it_is() {
        let mut r = ExitRecord::begin("a", "r", 1);
        r.error = Some(RecordedError {
            kind: "exit_code".into(),
            message: "exited with code 3".into(),
            retryable: true,
        });
        r.stderr_tail = "boom\n".into();
        let before = r.clone();
        r.bound();
        assert_eq!(r, before);
    }

    #[test]
    fn every_reason_is_named_as_serde_names_it() {
        use strum::VariantArray;
        assert_eq!(
            ExitReason::VARIANTS.len(),
            20,
            "a new reason: check its name below"
        );
        for reason in ExitReason::VARIANTS {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json.as_str(), Some(reason.as_str()), "{reason:?}");
            assert_eq!(reason.to_string(), reason.as_str());
            let back: ExitReason = serde_json::from_value(json).unwrap();
            assert_eq!(back, *reason);
        }
        // Spot checks of the words users script against.
        assert_eq!(ExitReason::OomKilled.as_str(), "oom_killed");
        assert_eq!(ExitReason::StartupTimeout.as_str(), "startup_timeout");
    }

    #[test]
    fn an_old_record_without_the_dropped_count_still_reads() {
        let mut v = serde_json::to_value(ExitRecord::begin("a", "r", 1)).unwrap();
        v.as_object_mut().unwrap().remove("tool_calls_dropped");
        let r: ExitRecord = serde_json::from_value(v).unwrap();
        assert_eq!(r.tool_calls_dropped, 0);
    }
}
