//! The tool ledger's table: destructive calls recorded before they run and when they finish,
//! by idempotency key (run, task, call number), so that a retried attempt or a resumed run —
//! in this process or the next — never runs one twice.
//!
//! A connection of its own (WAL lets it write beside the writer thread, waiting on SQLite's
//! lock at most [`super::BUSY_TIMEOUT`]); each write is its own durable transaction, since a
//! `begin` must be on disk before the call runs. Small, synchronous writes: the caller runs them
//! off the async workers.

use super::{open_error, sql_error};
use crate::journal::JournalError;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the ledger holds under one key.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    /// The tool.
    pub tool: String,
    /// The arguments' hash.
    pub args_hash: String,
    /// `None` while it runs (or when it never finished); else `{"ok": value}` or
    /// `{"err": {kind, message, retryable}}`.
    pub result: Option<serde_json::Value>,
}

/// The ledger table of one journal file.
pub struct LedgerStore {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for LedgerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LedgerStore {
    /// The ledger of the journal at `path` (opened, and migrated, by the journal first).
    pub fn open(path: &Path) -> Result<LedgerStore, JournalError> {
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        conn.busy_timeout(super::BUSY_TIMEOUT)
            .map_err(|e| open_error(path, e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_error(path, e))?;
        Ok(LedgerStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is recorded under the key.
    pub fn lookup(
        &self,
        run_id: &str,
        task: &str,
        seq: u64,
    ) -> Result<Option<LedgerRow>, JournalError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT tool, args_hash, result FROM ledger WHERE run_id = ?1 AND task = ?2 AND seq = ?3",
                params![run_id, task, seq as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| sql_error(&self.path, e))?;
        let Some((tool, args_hash, result)) = row else {
            return Ok(None);
        };
        let result = match result {
            None => None,
            Some(text) => Some(
                serde_json::from_str(&text).map_err(|e| JournalError::Payload {
                    what: "ledger result",
                    reason: e.to_string(),
                })?,
            ),
        };
        Ok(Some(LedgerRow {
            tool,
            args_hash,
            result,
        }))
    }

    /// Execution under the key begins (durable when this returns).
    pub fn begin(
        &self,
        run_id: &str,
        task: &str,
        seq: u64,
        tool: &str,
        args_hash: &str,
    ) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO ledger (run_id, task, seq, tool, args_hash, result, begun_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
                params![run_id, task, seq as i64, tool, args_hash, crate::journal::now_ms()],
            )
            .map(drop)
            .map_err(|e| sql_error(&self.path, e))
    }

    /// Execution under the key finished with `result` (`{"ok": …}` or `{"err": …}`).
    pub fn finish(
        &self,
        run_id: &str,
        task: &str,
        seq: u64,
        result: &serde_json::Value,
    ) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "UPDATE ledger SET result = ?4, finished_at_ms = ?5
                 WHERE run_id = ?1 AND task = ?2 AND seq = ?3",
                params![
                    run_id,
                    task,
                    seq as i64,
                    result.to_string(),
                    crate::journal::now_ms()
                ],
            )
            .map(drop)
            .map_err(|e| sql_error(&self.path, e))
    }
}
