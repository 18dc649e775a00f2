//! Reading runs back, on a read-only connection of its own (WAL: readers never wait for the
//! writer, nor it for them).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::journal::{
    CallView, EventView, JournalError, Reader, RunFilter, RunRow, RunStatus, RunView, ToolCallView,
};

/// RFC 3339 UTC with milliseconds of a time in milliseconds since the epoch.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A reader of one journal file (none: the file does not exist yet, so there are no runs).
pub struct SqliteReader {
    conn: Option<Connection>,
    path: PathBuf,
}

impl SqliteReader {
    /// Opens the file read-only (a missing file, or one without tables yet, reads as empty).
    pub fn open(path: &Path) -> Result<SqliteReader, JournalError> {
        let conn = match super::open_read_only(path)? {
            Some((conn, version)) if version > 0 && version < super::schema::LATEST => {
                // Written by an older corral: brought to this schema first (as the next
                // supervisor would; the migrations only add), then read.
                drop(conn);
                super::SqliteStore::open(path).map_err(|e| JournalError::Open {
                    path: path.to_path_buf(),
                    reason: format!(
                        "written by an older corral (schema version {version}; this one reads \
                         {}), and it could not be upgraded here: {e}",
                        super::schema::LATEST
                    ),
                })?;
                super::open_read_only(path)?.map(|(conn, _)| conn)
            }
            Some((conn, version)) if version > 0 => Some(conn),
            _ => None,
        };
        Ok(SqliteReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> JournalError {
        super::sql_error(&self.path, e)
    }
}

/// A call row: number, agent, input/memory/output/memory after, error.
type RawCall = (u32, String, [Option<String>; 4], Option<String>);

/// A payload column read back: inline text or the blob's, as JSON.
fn json(what: &'static str, text: Option<String>) -> Result<serde_json::Value, JournalError> {
    match text {
        None => Ok(serde_json::Value::Null),
        Some(t) => serde_json::from_str(&t).map_err(|e| JournalError::Payload {
            what,
            reason: e.to_string(),
        }),
    }
}

fn status(text: &str) -> RunStatus {
    text.parse().unwrap_or(RunStatus::Running)
}

/// `COALESCE(col, blob of col_blob)`, the stored JSON text of a payload column.
fn payload(table: &str, column: &str) -> String {
    format!(
        "COALESCE({table}.{column}, (SELECT data FROM blobs WHERE hash = {table}.{column}_blob))"
    )
}

impl Reader for SqliteReader {
    fn runs(&self, f: &RunFilter) -> Result<Vec<RunRow>, JournalError> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.run_id, r.agent, r.status, r.started_at_ms, r.ended_at_ms,
                     (SELECT COUNT(*) FROM attempts a WHERE a.run_id = r.run_id)
                 FROM runs r
                 WHERE (?1 IS NULL OR r.agent = ?1) AND (?2 IS NULL OR r.status = ?2)
                 ORDER BY r.started_at_ms DESC, r.rowid DESC LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![f.agent, f.status.map(|s| s.as_str()), limit], |r| {
                Ok(RunRow {
                    run_id: r.get(0)?,
                    agent: r.get(1)?,
                    status: status(&r.get::<_, String>(2)?),
                    started_at: rfc3339_ms(r.get(3)?),
                    ended_at: r.get::<_, Option<i64>>(4)?.map(rfc3339_ms),
                    attempts: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn run(&self, run_id: &str) -> Result<Option<RunView>, JournalError> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let tx = conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let head = tx
            .query_row(
                &format!(
                    "SELECT agent, status, kind, config_hash, started_at_ms, ended_at_ms, {}
                     FROM runs WHERE run_id = ?1",
                    payload("runs", "input")
                ),
                [run_id],
                |r| {
                    Ok(RunView {
                        run_id: run_id.to_string(),
                        agent: r.get(0)?,
                        status: status(&r.get::<_, String>(1)?),
                        kind: r.get(2)?,
                        config_hash: r.get(3)?,
                        started_at: rfc3339_ms(r.get(4)?),
                        ended_at: r.get::<_, Option<i64>>(5)?.map(rfc3339_ms),
                        input: r
                            .get::<_, Option<String>>(6)?
                            .and_then(|t| serde_json::from_str(&t).ok()),
                        calls: Vec::new(),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(mut view) = head else {
            return Ok(None);
        };
        let raw_calls: Vec<RawCall> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT call, agent, {}, {}, {}, {}, error FROM calls
                     WHERE run_id = ?1 ORDER BY call",
                    payload("calls", "input"),
                    payload("calls", "memory"),
                    payload("calls", "output"),
                    payload("calls", "memory_after"),
                ))
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                        r.get(6)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        for (call, agent, [input, memory, output, memory_after], error) in raw_calls {
            let mut cv = CallView {
                call,
                agent,
                input: json("input", input)?,
                memory: json("memory", memory)?,
                output: output.map(|o| json("output", Some(o))).transpose()?,
                memory_after: memory_after.map(|m| json("memory", Some(m))).transpose()?,
                error: error.map(|e| json("error", Some(e))).transpose()?,
                attempts: Vec::new(),
                tool_calls: Vec::new(),
                events: Vec::new(),
            };
            self.fill_call(&tx, run_id, &mut cv)?;
            view.calls.push(cv);
        }
        Ok(Some(view))
    }
}

impl SqliteReader {
    /// The attempts, tool calls and events of one call.
    fn fill_call(
        &self,
        tx: &rusqlite::Transaction<'_>,
        run_id: &str,
        cv: &mut CallView,
    ) -> Result<(), JournalError> {
        let e = |e| self.err(e);
        let mut stmt = tx
            .prepare(
                "SELECT record, attempt, agent, started_at_ms, pid FROM attempts
                 WHERE run_id = ?1 AND call = ?2 ORDER BY attempt",
            )
            .map_err(e)?;
        type Row = (Option<String>, u32, String, i64, Option<i64>);
        let rows: Vec<Row> = stmt
            .query_map(params![run_id, cv.call], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        for (record, attempt, agent, started_at_ms, pid) in rows {
            cv.attempts.push(match record {
                Some(record) => json("record", Some(record))?,
                // Under way (or its supervisor went away before its end was written): what is
                // known of it, with no reason yet.
                None => serde_json::json!({
                    "attempt": attempt,
                    "agent": agent,
                    "run_id": run_id,
                    "started_at": rfc3339_ms(started_at_ms),
                    "pid": pid,
                    "reason": null,
                    "running": true,
                }),
            });
        }
        let mut stmt = tx
            .prepare(&format!(
                "SELECT seq, attempt, call_id, tool, {}, status, {}, duration_ms, deduplicated
                 FROM tool_calls WHERE run_id = ?1 AND call = ?2 ORDER BY attempt, seq",
                payload("tool_calls", "args"),
                payload("tool_calls", "result"),
            ))
            .map_err(e)?;
        type RawTool = (
            u32,
            u32,
            i64,
            String,
            Option<String>,
            String,
            Option<String>,
            i64,
            bool,
        );
        let tools: Vec<RawTool> = stmt
            .query_map(params![run_id, cv.call], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        for (seq, attempt, call_id, tool, args, status, result, duration_ms, deduplicated) in tools
        {
            cv.tool_calls.push(ToolCallView {
                seq,
                attempt,
                call_id: u64::from_ne_bytes(call_id.to_ne_bytes()),
                tool,
                args: json("args", args)?,
                status,
                result: json("result", result)?,
                duration_ms: u64::try_from(duration_ms).unwrap_or(0),
                deduplicated,
            });
        }
        let mut stmt = tx
            .prepare(&format!(
                "SELECT seq, attempt, at_ms, kind, {} FROM events
                 WHERE run_id = ?1 AND call = ?2 ORDER BY seq",
                payload("events", "payload"),
            ))
            .map_err(e)?;
        let events: Vec<(i64, u32, i64, String, Option<String>)> = stmt
            .query_map(params![run_id, cv.call], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        for (seq, attempt, at_ms, kind, payload) in events {
            cv.events.push(EventView {
                seq: u64::try_from(seq).unwrap_or(0),
                attempt,
                at: rfc3339_ms(at_ms),
                kind,
                payload: json("payload", payload)?,
            });
        }
        Ok(())
    }
}
