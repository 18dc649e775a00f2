//! The store's interface: what a backend must do ([`Store`] for the writer, [`Reader`] for
//! `corral runs` and `corral show`) and the views a reader returns. No SQL here.

use serde::Serialize;

use super::{Entry, JournalError, Recovered, RunStatus};

/// A journal backend, driven by one writer.
pub trait Store: Send {
    /// Writes the batch in one transaction: all of it, or (on error) none of it.
    fn append(&mut self, batch: &[Entry]) -> Result<(), JournalError>;
    /// Attempts left without an end by a supervisor that is gone get a `lost` record (with
    /// what is known); their runs become `interrupted`.
    fn mark_unfinished(&mut self, now_ms: i64) -> Result<Recovered, JournalError>;
    /// Deletes finished runs that ended before `older_than_ms`, at most `max_rows` runs (with
    /// their calls, attempts, events, tool calls and the payloads only they used). Returns the
    /// number of runs deleted: 0 when nothing is left to prune.
    fn prune(&mut self, older_than_ms: i64, max_rows: usize) -> Result<u64, JournalError>;
    /// Folds the write-ahead log back into the database file.
    fn checkpoint(&mut self) -> Result<(), JournalError>;
    /// How to open readers of this store, each with a connection of its own (called from
    /// any thread while the store itself lives on the writer's).
    fn readers(&self) -> ReaderSource;
}

/// Opens a reader of a store: see [`Store::readers`].
pub type ReaderSource =
    std::sync::Arc<dyn Fn() -> Result<Box<dyn Reader + Send>, JournalError> + Send + Sync>;

/// Reading runs back.
pub trait Reader {
    /// Recent runs, newest first.
    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, JournalError>;
    /// One run with everything recorded about it; `None` if unknown.
    fn run(&self, run_id: &str) -> Result<Option<RunView>, JournalError>;
}

/// Which runs [`Reader::runs`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFilter {
    /// At most this many (newest first).
    pub limit: usize,
    /// Only runs of this agent.
    pub agent: Option<String>,
    /// Only runs in this state.
    pub status: Option<RunStatus>,
}

impl Default for RunFilter {
    fn default() -> RunFilter {
        RunFilter {
            limit: 20,
            agent: None,
            status: None,
        }
    }
}

/// One line of `corral runs` (its JSON is that of `corral runs --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// The run.
    pub run_id: String,
    /// Its agent.
    pub agent: String,
    /// Its state.
    pub status: RunStatus,
    /// When it started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Attempts recorded, over all its calls.
    pub attempts: u32,
}

/// One run with everything recorded (`corral show --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    /// The run.
    pub run_id: String,
    /// Its agent.
    pub agent: String,
    /// Its state.
    pub status: RunStatus,
    /// `"call"` or `"plan"`.
    pub kind: String,
    /// The hash of the config it ran with.
    pub config_hash: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// A plan run's input, as recorded at its start (runs journalled before it was recorded,
    /// and calls, have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Its calls, in order.
    pub calls: Vec<CallView>,
}

/// One task given to an agent within a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallView {
    /// Its number in the run, from 1.
    pub call: u32,
    /// The agent.
    pub agent: String,
    /// The input as sent.
    pub input: serde_json::Value,
    /// The memory as sent.
    pub memory: serde_json::Value,
    /// The output, if it succeeded.
    pub output: Option<serde_json::Value>,
    /// The memory the call left (from its end), if it ended.
    pub memory_after: Option<serde_json::Value>,
    /// The error, if it failed.
    pub error: Option<serde_json::Value>,
    /// The exit record of each attempt, in order (a `lost` one for an attempt found
    /// unfinished; `null` for one still running).
    pub attempts: Vec<serde_json::Value>,
    /// Every tool call, in order (attempt, then seq).
    pub tool_calls: Vec<ToolCallView>,
    /// Every event, in order.
    pub events: Vec<EventView>,
}

/// A recorded tool call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallView {
    /// Order within the attempt, from 1.
    pub seq: u32,
    /// The attempt that made it.
    pub attempt: u32,
    /// The id the agent chose.
    pub call_id: u64,
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub args: serde_json::Value,
    /// `"ok"` or the error kind.
    pub status: String,
    /// The value or the error.
    pub result: serde_json::Value,
    /// How long it took.
    pub duration_ms: u64,
    /// Answered from the run's trace (or the ledger) instead of being executed.
    pub deduplicated: bool,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// Order within the run, from 1.
    pub seq: u64,
    /// The attempt.
    pub attempt: u32,
    /// When (RFC 3339).
    pub at: String,
    /// What kind.
    pub kind: String,
    /// Its data.
    pub payload: serde_json::Value,
}
