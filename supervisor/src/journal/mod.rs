//! PLACEHOLDER for the journal's store room (interface only; replaced by the real store).
#![allow(missing_docs, dead_code, unused_variables)]
use serde::Serialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {0}")]
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Degraded,
    Interrupted,
}

pub enum Entry {
    RunStarted {
        run_id: String,
        agent: String,
        kind: String,
        config_hash: String,
        started_at_ms: i64,
    },
    CallStarted {
        run_id: String,
        call: u32,
        agent: String,
        input: serde_json::Value,
        memory: serde_json::Value,
        at_ms: i64,
    },
    AttemptStarted {
        run_id: String,
        call: u32,
        attempt: u32,
        at_ms: i64,
    },
    Event {
        run_id: String,
        call: u32,
        attempt: u32,
        at_ms: i64,
        kind: String,
        payload: serde_json::Value,
    },
    ToolCall {
        run_id: String,
        call: u32,
        attempt: u32,
        seq: u32,
        call_id: u64,
        tool: String,
        args: serde_json::Value,
        status: String,
        result: serde_json::Value,
        duration_ms: u64,
        at_ms: i64,
    },
    AttemptEnded {
        run_id: String,
        call: u32,
        attempt: u32,
        record: serde_json::Value,
        reason: String,
        decision: String,
        pid: Option<u32>,
        started_at: String,
        ended_at: String,
        duration_ms: u64,
    },
    CallEnded {
        run_id: String,
        call: u32,
        output: Option<serde_json::Value>,
        memory: serde_json::Value,
        error: Option<serde_json::Value>,
        at_ms: i64,
    },
    RunEnded {
        run_id: String,
        status: RunStatus,
        at_ms: i64,
    },
}

pub struct RunFilter {
    pub limit: usize,
    pub agent: Option<String>,
    pub status: Option<RunStatus>,
}
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub agent: String,
    pub status: RunStatus,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub attempts: u32,
}
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub run_id: String,
    pub agent: String,
    pub status: RunStatus,
    pub kind: String,
    pub config_hash: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub calls: Vec<CallView>,
}
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub call: u32,
    pub agent: String,
    pub input: serde_json::Value,
    pub memory: serde_json::Value,
    pub memory_out: serde_json::Value,
    pub output: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub attempts: Vec<serde_json::Value>,
    pub tool_calls: Vec<ToolCallView>,
    pub events: Vec<EventView>,
}
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallView {
    pub seq: u32,
    pub attempt: u32,
    pub call_id: u64,
    pub tool: String,
    pub args: serde_json::Value,
    pub status: String,
    pub result: serde_json::Value,
    pub duration_ms: u64,
}
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub attempt: u32,
    pub at: String,
    pub kind: String,
    pub payload: serde_json::Value,
}
pub struct Recovered {
    pub attempts_lost: u64,
    pub runs_interrupted: u64,
}

pub trait Reader {
    fn runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, JournalError>;
    fn run(&self, run_id: &str) -> Result<Option<RunView>, JournalError>;
}

#[derive(Clone)]
pub struct Journal;
impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Ok(Journal)
    }
    pub fn append(&self, e: Entry) {}
    pub async fn durable(&self, e: Entry) -> Result<(), JournalError> {
        Ok(())
    }
    pub async fn flush(&self) -> Result<(), JournalError> {
        Ok(())
    }
    pub fn reader(&self) -> Result<Box<dyn Reader + Send>, JournalError> {
        Err(JournalError::Other("placeholder".into()))
    }
    pub fn recovered(&self) -> Recovered {
        Recovered {
            attempts_lost: 0,
            runs_interrupted: 0,
        }
    }
    pub fn start_pruning(&self, keep: std::time::Duration) {}
}
pub fn open_reader(path: &Path) -> Result<Box<dyn Reader + Send>, JournalError> {
    Err(JournalError::Other("placeholder".into()))
}
impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Degraded => "degraded",
        }
    }
}
