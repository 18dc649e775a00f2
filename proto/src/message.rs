//! The messages of the corral protocol.
//!
//! [`Down`] flows supervisor → agent on fd 3, [`Up`] flows agent → supervisor on fd 4. Both are
//! plain enums (externally tagged, which is what bincode needs): the variant index is the first
//! varint of every payload. Variant order and field order are the wire format; they only change
//! together with [`PROTOCOL_VERSION`]. `Hello` is variant 0 of `Down` and its first field is the
//! protocol version in every version, so any agent can read the version it is offered.
//!
//! Conversation: `Hello` → `Ready`; then per task `Task` → any number of `Heartbeat`, `Log`,
//! `ToolCall` (each answered by `ToolResult`) → exactly one `Done` or `Failed`. `Cancel` and
//! `Shutdown` may arrive at any time. Heartbeats flow from `Ready` on, busy or idle.

use crate::contract::Contract;
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. Exchanged in `Hello` and `Ready`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest tool name, in bytes, a `ToolCall` may carry; a longer one is a protocol violation.
pub const MAX_TOOL_NAME: usize = 256;

/// Largest `ToolCall` payload, in bytes (its name and arguments, encoded), whatever
/// `Hello.max_frame` allows; a larger one is a protocol violation, detected from the frame's
/// first payload byte before the rest is read.
pub const MAX_TOOL_CALL: usize = 1 << 20;

/// Most tool calls an agent may have outstanding (asked, not yet answered) at once; a call past
/// it is refused with kind `too_many_calls`.
pub const MAX_OUTSTANDING_CALLS: usize = 64;

/// The first payload byte of every `Up::ToolCall` frame: its variant index (a one-byte varint).
pub const UP_TOOL_CALL_TAG: u8 = 3;

/// Supervisor → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Down {
    /// First message on every connection. Variant 0 forever.
    Hello(Hello),
    /// One unit of work.
    Task(Task),
    /// The answer to an agent's `ToolCall`.
    ToolResult(ToolResult),
    /// Abandon the task with this id; answer `Failed` with kind `cancelled` if still running.
    Cancel(Cancel),
    /// Finish up and exit within `grace_ms`; after that the process tree is killed.
    Shutdown(Shutdown),
}

/// Agent → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Up {
    /// Answer to `Hello`: the agent's protocol version and contract.
    Ready(Ready),
    /// Liveness, with a progress counter that must move while work moves.
    Heartbeat(Heartbeat),
    /// A log line from the agent.
    Log(Log),
    /// The agent asks the supervisor to run a tool.
    ToolCall(ToolCall),
    /// The task finished with an output.
    Done(Done),
    /// The task (or, with `task_id` 0, the handshake) failed.
    Failed(Failed),
}

/// Handshake offer from the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field: read by agents of any version.
    pub protocol: u32,
    /// The agent's configured name.
    pub agent_id: String,
    /// The run this attempt belongs to.
    pub run_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// How often the agent must send `Heartbeat`, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The largest frame the supervisor accepts, in bytes.
    pub max_frame: u32,
}

/// A task for the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique within the connection; echoed in `Done`/`Failed`.
    pub task_id: u64,
    /// The input, validated against the contract's input schema before it is sent.
    pub input: Value,
    /// Notes handed down from upstream (empty when the node skips memory).
    pub memory: Vec<Value>,
}

/// Result of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The `call_id` of the `ToolCall` answered.
    pub call_id: u64,
    /// The tool's output, or why it failed (kind `denied`, `unknown_tool`, `timeout`, …).
    pub result: Result<Value, AgentError>,
}

/// Cancel a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// The task to cancel.
    pub task_id: u64,
}

/// Ask the agent to exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    /// Time the agent has before it is killed, in milliseconds.
    pub grace_ms: u64,
}

/// Handshake answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// The agent's protocol version; must equal the supervisor's.
    pub protocol: u32,
    /// What the agent accepts, returns and may call.
    pub contract: Contract,
}

/// Liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// A counter the agent bumps as work advances; a counter that stops moving while heartbeats
    /// continue is a stall.
    pub progress: u64,
}

/// Severity of a [`Log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Wire tag 0.
    Trace,
    /// Wire tag 1.
    Debug,
    /// Wire tag 2.
    Info,
    /// Wire tag 3.
    Warn,
    /// Wire tag 4.
    Error,
}

/// A log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// Severity.
    pub level: LogLevel,
    /// The text.
    pub message: String,
}

/// A tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Chosen by the agent, unique within the connection.
    pub call_id: u64,
    /// A tool the contract declares.
    pub tool: String,
    /// The tool's arguments.
    pub args: Value,
}

/// Successful end of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// The task finished.
    pub task_id: u64,
    /// The output, validated against the contract's output schema on receipt.
    pub output: Value,
    /// Notes to hand downstream.
    pub memory: Vec<Value>,
}

/// Failed end of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// The task that failed; 0 when the handshake itself failed.
    pub task_id: u64,
    /// What went wrong.
    pub error: AgentError,
}

/// A structured error from an agent or a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// A short machine-readable class: `invalid_input`, `panic`, `protocol_mismatch`, `cancelled`…
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether trying again may succeed. `false` is never retried by the supervisor.
    pub retryable: bool,
}

impl AgentError {
    /// A new error.
    pub fn new(kind: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        AgentError {
            kind: kind.into(),
            message: message.into(),
            retryable,
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}{}",
            self.kind,
            self.message,
            if self.retryable { " (retryable)" } else { "" }
        )
    }
}

impl std::error::Error for AgentError {}

impl Up {
    /// The message's name, as used in exit records (`last message kind`).
    pub fn name(&self) -> &'static str {
        match self {
            Up::Ready(_) => "ready",
            Up::Heartbeat(_) => "heartbeat",
            Up::Log(_) => "log",
            Up::ToolCall(_) => "tool_call",
            Up::Done(_) => "done",
            Up::Failed(_) => "failed",
        }
    }
}

/// The error both sides report when the versions differ.
pub fn version_mismatch(supervisor: u32, agent: u32) -> String {
    format!(
        "protocol version mismatch: supervisor speaks corral protocol v{supervisor}, agent speaks v{agent}"
    )
}
