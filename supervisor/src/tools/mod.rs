//! Tools and permissions: the broker that every tool call of an agent goes through.
//!
//! An agent reaches the world only by the `ToolCall`s it sends; the attempt makes each one a
//! [`ToolRequest`] for its owner, and a [`Broker`] (made from the config, one per supervisor,
//! serving any number of runs) answers it: called in the attempt's own task
//! ([`crate::ToolSink::Broker`], as `corral call` and the daemon call theirs, so that a call
//! answered at once goes back in the same turn), or behind a channel ([`Broker::serve`]) for
//! an owner that wants to see the requests first. For each call, in order:
//!
//! 1. **Permission**: the tool must be in the contract, granted by `[agents.NAME] tools` and
//!    not in `deny_tools` (which always wins), else `permission_denied`; granted but not
//!    configured: `unknown_tool`.
//! 2. **Approval** (`approve = "ask"`): the call waits for an [`Approver`] (the terminal of
//!    `corral call --approve`, a channel in tests and the daemon) or `approve_timeout`
//!    (`approval_denied`). The wait is noted in the trace; the agent's heartbeats go on.
//! 3. **De-duplication**: a `read_only`/`idempotent` call repeated with identical args within a
//!    run is answered from the run's trace; a `destructive` call is keyed (run, task, its
//!    sequence number within the task) in a [`ToolLedger`]: a repeat gets the recorded result,
//!    or `unknown_outcome` when its execution began and never finished. Never executed twice.
//! 4. **Circuit breaker** (`breaker = { failures, open_for }`): open → `circuit_open` at once.
//! 5. **Concurrency** (`max_concurrency`): callers beyond it queue; the wait is noted.
//! 6. **Execution** within `timeout`: a built-in (`fs`: confined beneath the workspace and the
//!    granted paths), a sandboxed program (`command`) or a JSON POST (`http`); a result larger
//!    than `max_response` is `too_large`, a failure `tool_failed` with its reason.
//!
//! Cost: a call that waits for nothing (a refusal, or a built-in's small work without approval
//! or queue) is answered where it arrives ([`Broker::dispatch`]): no task, no thread, and the
//! agent's workspace is resolved beneath a descriptor its attempt opened once. Whatever may
//! wait runs on a task of its own, and a built-in's larger work on the blocking pool.
//!
//! Bounds: a call's arguments are at most the protocol's `MAX_TOOL_CALL` (checked at the pipe)
//! and [`MAX_ARGS_JSON`] as JSON; calls in flight per broker at most [`MAX_IN_FLIGHT`]; the
//! de-duplication trace and the in-memory ledger keep at most [`ledger::MAX_RUNS`] runs and
//! [`ledger::MAX_BYTES`] bytes of results. Secrets (`header_env`) are read at each call and
//! never traced. What the agent sees is an [`AgentError`] whose kind is one of [`ErrorKind`].
//!
//! Rooms: `broker` (the steps above), `fs` (built-ins), `command`, `http`, `ledger`
//! (de-duplication and at-most-once), `approve` (approvers).

mod approve;
mod broker;
mod command;
mod fs;
mod http;
pub mod ledger;

pub use approve::{ApprovalRequest, Approver, ChannelApprover};
pub use broker::{Broker, MAX_ARGS_JSON, MAX_IN_FLIGHT};
pub use ledger::{LedgerEntry, LedgerKey, MemoryLedger, ToolLedger};

use crate::ToolRequest;
use corral_proto::AgentError;

/// The kinds of error an agent gets from a tool call (`error.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ErrorKind {
    /// Not in the contract, not granted, or denied by `deny_tools`.
    PermissionDenied,
    /// Granted, but no such tool is configured.
    UnknownTool,
    /// The tool ran past its `timeout` (and was killed).
    Timeout,
    /// The tool's circuit breaker is open.
    CircuitOpen,
    /// Arguments or result past their bound.
    TooLarge,
    /// The tool failed (its exit reason or error in the message).
    ToolFailed,
    /// A destructive call began earlier and never finished: it may or may not have happened.
    UnknownOutcome,
    /// Approval was refused, or not given within `approve_timeout`.
    ApprovalDenied,
    /// More calls in flight than the broker takes.
    TooManyCalls,
}

impl ErrorKind {
    /// The name the agent sees.
    pub fn as_str(&self) -> &'static str {
        self.into()
    }

    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::CircuitOpen | ErrorKind::TooManyCalls
        )
    }
}

/// A tool call's failure, as the broker decided it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", .kind.as_str())]
pub struct ToolError {
    /// Its kind.
    pub kind: ErrorKind,
    /// What happened, for the agent (never holding a secret).
    pub message: String,
}

impl ToolError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ToolError {
        ToolError {
            kind,
            message: message.into(),
        }
    }

    /// What the agent receives.
    pub fn to_agent(&self) -> AgentError {
        AgentError::new(
            self.kind.as_str(),
            self.message.clone(),
            self.kind.retryable(),
        )
    }
}

/// Shorthand for an error of `kind`.
fn err<T>(kind: ErrorKind, message: impl Into<String>) -> Result<T, ToolError> {
    Err(ToolError::new(kind, message))
}

/// The request's tool may be called by its agent: in the contract, granted, not denied.
pub(crate) fn permitted(req: &ToolRequest) -> Result<(), ToolError> {
    let tool = &req.call.tool;
    let spec = &req.spec;
    if spec.deny_tools.iter().any(|t| t == tool) {
        return err(
            ErrorKind::PermissionDenied,
            format!(
                "tool `{tool}` is denied to agent `{}` (deny_tools)",
                req.agent
            ),
        );
    }
    if !req.contract_tools.iter().any(|t| t == tool || t == "*") {
        return err(
            ErrorKind::PermissionDenied,
            format!("tool `{tool}` is not declared in the agent's contract"),
        );
    }
    if !spec.tools.iter().any(|t| t == tool) {
        return err(
            ErrorKind::PermissionDenied,
            format!(
                "tool `{tool}` is not granted to agent `{}` (its `tools` in the config)",
                req.agent
            ),
        );
    }
    Ok(())
}
