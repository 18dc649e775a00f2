//! The control socket's messages.

use serde::{Deserialize, Serialize};

/// Largest request frame the daemon reads (a plan's text and its input fit).
pub const MAX_REQUEST: u32 = 4 * 1024 * 1024;

/// Largest response frame the client reads.
pub const MAX_RESPONSE: u32 = 64 * 1024 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// `corral ps`: the agents' processes.
    Ps,
    /// `corral status`: the daemon's summary.
    Status,
    /// `corral stop AGENT`: stop a service agent's instances (they stay stopped).
    Stop {
        /// The agent.
        agent: String,
    },
    /// `corral start AGENT`: start a stopped service agent.
    Start {
        /// The agent.
        agent: String,
    },
    /// `corral restart AGENT`: stop and start a service agent's instances.
    Restart {
        /// The agent.
        agent: String,
    },
    /// `corral submit AGENT --input JSON`.
    SubmitTask {
        /// The agent.
        agent: String,
        /// The input, JSON text.
        input: String,
        /// Answer when the task is over, not only when it is accepted.
        wait: bool,
    },
    /// `corral submit --plan PLAN`: the plan's text is sent (the daemon reads no file for a
    /// client).
    SubmitPlan {
        /// The plan file's name (for error locations).
        path: String,
        /// Its text.
        text: String,
        /// The run's input, JSON text.
        input: String,
        /// Answer when the run is over.
        wait: bool,
    },
    /// `corral cancel RUN_ID`.
    Cancel {
        /// The run.
        run_id: String,
    },
    /// `corral reset AGENT`: close the breaker, lift quarantine.
    Reset {
        /// The agent.
        agent: String,
    },
    /// `corral logs AGENT [-f]`.
    Logs {
        /// The agent.
        agent: String,
        /// Go on with new lines as they come.
        follow: bool,
    },
    /// `corral events -f`: the agents' life events and runs' ends as they happen.
    Events,
    /// `corral approvals`: tool calls waiting for an operator.
    Approvals,
    /// `corral approve ID` / `corral deny ID`.
    Decide {
        /// The pending call's id.
        id: String,
        /// Approve (true) or deny.
        allow: bool,
    },
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Done: a JSON document (final).
    Json(String),
    /// A submission was accepted under this run id (final unless the client waits).
    Accepted {
        /// The run.
        run_id: String,
    },
    /// A task or run is over (final): what `corral call --json` / `corral run --json` print,
    /// as pretty JSON text, with the status and the plain output.
    Finished {
        /// The `--json` document.
        json: String,
        /// The output alone, JSON text (`null` when none).
        output: String,
        /// The exit code `call`/`run` would give.
        exit: u8,
        /// The line `corral run` prints on stderr (empty for a task).
        summary: String,
    },
    /// One line of a stream (logs, events).
    Line(String),
    /// Refused or failed (final).
    Error {
        /// `denied`, `unknown_agent`, `unknown_run`, `bad_request`, `busy`, `draining`,
        /// `invalid_plan`, `not_service`, `unsupported`.
        kind: String,
        /// What is wrong, one line.
        message: String,
    },
}

impl Response {
    /// An error answer.
    pub fn error(kind: &str, message: impl Into<String>) -> Response {
        Response::Error {
            kind: kind.to_string(),
            message: message.into(),
        }
    }

    /// Whether nothing follows this answer (an `Accepted` is final unless more was asked).
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Line(_) | Response::Accepted { .. })
    }
}
