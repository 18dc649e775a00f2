//! The tool ledger kept in the journal: destructive calls are recorded there before they run
//! and when they finish, so that at-most-once holds across retried attempts, resumed runs and
//! supervisor restarts (the in-memory ledger holds within one process only).
//!
//! The broker calls the ledger synchronously; each write is a small durable SQLite transaction,
//! run off the async workers (`block_in_place`) when called from a multi-threaded runtime.

use crate::journal::sqlite::LedgerStore;
use crate::journal::JournalError;
use crate::tools::{LedgerEntry, LedgerKey, ToolLedger};
use corral_proto::{AgentError, Value};

/// [`ToolLedger`] over the journal's `ledger` table.
#[derive(Debug)]
pub struct JournalLedger {
    store: LedgerStore,
}

impl JournalLedger {
    /// The ledger of the journal file at `path`.
    pub fn open(path: &std::path::Path) -> Result<JournalLedger, JournalError> {
        Ok(JournalLedger {
            store: LedgerStore::open(path)?,
        })
    }
}

/// Run blocking `f` without stalling the async worker it is called on.
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn io(e: JournalError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl ToolLedger for JournalLedger {
    fn lookup(&self, key: &LedgerKey) -> std::io::Result<Option<LedgerEntry>> {
        let row = off_worker(|| self.store.lookup(&key.run_id, &key.task, key.seq)).map_err(io)?;
        Ok(row.map(|r| match r.result {
            None => LedgerEntry::Started {
                tool: r.tool,
                args_hash: r.args_hash,
            },
            Some(result) => {
                let result = match (result.get("ok"), result.get("err")) {
                    (Some(v), _) => Ok(Value::from_json(v)),
                    (None, Some(e)) => Err(AgentError::new(
                        e.get("kind")
                            .and_then(|k| k.as_str())
                            .unwrap_or("tool_failed"),
                        e.get("message").and_then(|m| m.as_str()).unwrap_or(""),
                        e.get("retryable")
                            .and_then(|r| r.as_bool())
                            .unwrap_or(false),
                    )),
                    (None, None) => Err(AgentError::new(
                        "tool_failed",
                        "the ledger's record of this call is unreadable",
                        false,
                    )),
                };
                LedgerEntry::Finished {
                    tool: r.tool,
                    args_hash: r.args_hash,
                    result,
                }
            }
        }))
    }

    fn begin(&self, key: &LedgerKey, tool: &str, args_hash: &str) -> std::io::Result<()> {
        off_worker(|| {
            self.store
                .begin(&key.run_id, &key.task, key.seq, tool, args_hash)
        })
        .map_err(io)
    }

    fn finish(&self, key: &LedgerKey, result: &Result<Value, AgentError>) -> std::io::Result<()> {
        let json = match result {
            Ok(v) => serde_json::json!({ "ok": v.to_json() }),
            Err(e) => serde_json::json!({ "err": super::journal::error_json(e) }),
        };
        off_worker(|| self.store.finish(&key.run_id, &key.task, key.seq, &json)).map_err(io)
    }
}
