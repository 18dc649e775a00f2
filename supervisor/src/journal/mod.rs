//! The journal: a durable record of every run, call, attempt, event and tool call, so that
//! one can ask afterwards which agent ran when, what it saw and did, and run it again.
//!
//! This room is the store and its writer; it knows nothing of children or plans. Callers
//! describe what happened as [`Entry`] values and hand them to a [`Journal`]:
//!
//! - [`Journal::append`] queues an entry and returns at once (the runtime never waits on disk
//!   per event);
//! - [`Journal::durable`] resolves once the transaction holding the entry has committed: an
//!   exit record or a call's output is acknowledged only then;
//! - one writer thread owns the write connection and commits whatever is queued as one
//!   transaction (batching), and prunes old runs in small steps between batches.
//!
//! The SQL lives only in [`sqlite`], behind the [`Store`] and [`Reader`] traits, so that
//! another backend (a shared server database) can be added without touching callers. What is
//! stored, how recovery after a crash works and queries for operators are in
//! `docs/journal.md`.
//!
//! ```no_run
//! # async fn f() -> Result<(), corral::journal::JournalError> {
//! use corral::journal::{Entry, Journal, RunFilter, RunStatus};
//! let journal = Journal::open(std::path::Path::new("state/corral.db"))?;
//! journal.append(Entry::RunStarted {
//!     run_id: "r1".into(), agent: "echo".into(), kind: "call".into(),
//!     config_hash: "…".into(), started_at_ms: 0, input: None,
//! });
//! journal.durable(Entry::RunEnded { run_id: "r1".into(), status: RunStatus::Succeeded, at_ms: 1 }).await?;
//! let runs = journal.reader()?.runs(&RunFilter::default())?;
//! # Ok(()) }
//! ```

mod queue;
pub mod sqlite;
mod store;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use store::{
    CallView, EventView, Reader, ReaderSource, RunFilter, RunRow, RunView, Store, ToolCallView,
};
pub use writer::{CommitObserver, Journal, QUEUE_LIMIT_BYTES};

/// What can go wrong with the journal. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file cannot be opened as a journal: not a database, corrupt or truncated.
    #[error("{}: cannot open the journal: {reason}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written by a newer corral (a schema version this one does not know).
    #[error(
        "{}: the journal has schema version {found}, written by a newer corral; this one \
         supports versions up to {supports}",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supports: i64,
    },
    /// The database went corrupt while in use.
    #[error("{}: the journal is corrupt: {reason}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's words.
        reason: String,
    },
    /// The disk (or the file system holding the journal) is full: nothing of the transaction
    /// was written.
    #[error("{}: the disk holding the journal is full", path.display())]
    Full {
        /// The database file.
        path: PathBuf,
    },
    /// A file operation around the database failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Any other database error.
    #[error("{}: journal: {source}", path.display())]
    Sql {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A stored payload is not the JSON it should be.
    #[error("journal: a stored {what} is not valid JSON: {reason}")]
    Payload {
        /// Which column.
        what: &'static str,
        /// serde_json's words.
        reason: String,
    },
    /// The journal's writer is gone (closed, or it stopped on an earlier error).
    #[error("the journal is closed")]
    Closed,
    /// A batch failed before this entry could be written (the error of that batch).
    #[error("journal: the batch holding this entry failed: {0}")]
    Batch(String),
}

impl JournalError {
    /// A copy for each waiter of a failed batch (rusqlite and io errors are not `Clone`).
    pub(crate) fn for_waiter(&self) -> JournalError {
        match self {
            JournalError::Full { path } => JournalError::Full { path: path.clone() },
            JournalError::Closed => JournalError::Closed,
            JournalError::Corrupt { path, reason } => JournalError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            other => JournalError::Batch(other.to_string()),
        }
    }
}

/// The state of a run, as `corral runs` shows it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RunStatus {
    /// Started and not ended, by a supervisor that is still alive (as far as the journal knows).
    Running,
    /// Ended with the task's output.
    Succeeded,
    /// Ended without an output.
    Failed,
    /// A plan run that ended with optional nodes skipped.
    Degraded,
    /// Found unfinished after the supervisor that ran it was gone (crash, `kill -9`).
    Interrupted,
    /// A daemon's task that an operator cancelled (`corral cancel`). (A cancelled plan run
    /// stays `interrupted`: it can be resumed.)
    Cancelled,
}

impl RunStatus {
    /// The name users script against (serde's spelling; a test checks they agree).
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
}

/// One thing to write. Payloads are JSON (`corral_proto::Value::to_json` round-trips exactly
/// through `Value::from_json`); times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A run began: one task given to corral (`kind` is `"call"`, later `"plan"`).
    RunStarted {
        /// The run.
        run_id: String,
        /// The agent it runs (for a plan, the plan's name).
        agent: String,
        /// `"call"` or `"plan"`.
        kind: String,
        /// A hash of the config the run used.
        config_hash: String,
        /// When.
        started_at_ms: i64,
        /// A plan run's input (a call's is its call's).
        input: Option<serde_json::Value>,
    },
    /// A task was given to an agent (`call` counts from 1 within the run).
    CallStarted {
        /// The run.
        run_id: String,
        /// The task's number in the run, from 1.
        call: u32,
        /// The agent.
        agent: String,
        /// The task input exactly as sent.
        input: serde_json::Value,
        /// The memory notes exactly as sent (a list).
        memory: serde_json::Value,
        /// When.
        at_ms: i64,
    },
    /// An attempt of a call began (before its process exists).
    AttemptStarted {
        /// The run.
        run_id: String,
        /// The call.
        call: u32,
        /// The attempt, from 1.
        attempt: u32,
        /// When.
        at_ms: i64,
    },
    /// Something an attempt said or did (`kind`: `"contract"`, `"log"`, `"progress"`,
    /// `"heartbeats"` (one summary, never one per heartbeat), …).
    Event {
        /// The run.
        run_id: String,
        /// The call.
        call: u32,
        /// The attempt.
        attempt: u32,
        /// When.
        at_ms: i64,
        /// What kind of event.
        kind: String,
        /// Its data.
        payload: serde_json::Value,
    },
    /// A tool call and its answer.
    ToolCall {
        /// The run.
        run_id: String,
        /// The call.
        call: u32,
        /// The attempt.
        attempt: u32,
        /// Order within the attempt, from 1.
        seq: u32,
        /// The id the agent chose.
        call_id: u64,
        /// The tool.
        tool: String,
        /// Its arguments as sent.
        args: serde_json::Value,
        /// `"ok"` or the error kind (`"denied"`, …).
        status: String,
        /// The value, or the error `{kind, message, retryable}`.
        result: serde_json::Value,
        /// How long it took.
        duration_ms: u64,
        /// Answered from the run's trace (or the ledger) instead of being executed.
        deduplicated: bool,
        /// When it was answered.
        at_ms: i64,
    },
    /// An attempt ended with its exit record.
    AttemptEnded {
        /// The run.
        run_id: String,
        /// The call.
        call: u32,
        /// The attempt.
        attempt: u32,
        /// The exit record as JSON (within 256 KiB).
        record: serde_json::Value,
        /// The record's `reason`.
        reason: String,
        /// The record's `decision`.
        decision: String,
        /// The record's `pid`.
        pid: Option<u32>,
        /// The record's `started_at` (RFC 3339).
        started_at: String,
        /// The record's `ended_at` (RFC 3339).
        ended_at: String,
        /// The record's `duration_ms`.
        duration_ms: u64,
    },
    /// A call ended: its output (or error) and the memory it left.
    CallEnded {
        /// The run.
        run_id: String,
        /// The call.
        call: u32,
        /// The output, when the task succeeded.
        output: Option<serde_json::Value>,
        /// The memory after the call.
        memory: serde_json::Value,
        /// The error, when it failed.
        error: Option<serde_json::Value>,
        /// When.
        at_ms: i64,
    },
    /// A run ended.
    RunEnded {
        /// The run.
        run_id: String,
        /// How.
        status: RunStatus,
        /// When.
        at_ms: i64,
    },
}

impl Entry {
    /// The run the entry belongs to.
    pub fn run_id(&self) -> &str {
        match self {
            Entry::RunStarted { run_id, .. }
            | Entry::CallStarted { run_id, .. }
            | Entry::AttemptStarted { run_id, .. }
            | Entry::Event { run_id, .. }
            | Entry::ToolCall { run_id, .. }
            | Entry::AttemptEnded { run_id, .. }
            | Entry::CallEnded { run_id, .. }
            | Entry::RunEnded { run_id, .. } => run_id,
        }
    }
}

/// What [`Store::mark_unfinished`] found left by a supervisor that is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Recovered {
    /// Attempts without an end, now recorded with reason `lost`.
    pub attempts_lost: u64,
    /// Runs without an end, now `interrupted`.
    pub runs_interrupted: u64,
}

/// A reader for `corral runs` and `corral show` without a writer: the database opened read-only
/// (nothing is migrated or marked). A missing file reads as a journal without runs.
pub fn open_reader(path: &Path) -> Result<Box<dyn Reader + Send>, JournalError> {
    sqlite::SqliteReader::open(path).map(|r| Box::new(r) as Box<dyn Reader + Send>)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
