//! Writing: a batch of entries in one transaction, recovery of what a dead supervisor left
//! unfinished, and pruning in steps.
//!
//! Entries are idempotent where they can be (a start written twice is written once), so that a
//! caller may send again what a failed batch held.

use rusqlite::{params, Transaction};
use sha2::{Digest, Sha256};

use super::schema::{BLOB_COLUMNS, BLOB_THRESHOLD};
use super::SqliteStore;
use crate::journal::{Entry, JournalError, Recovered, RunStatus};
use crate::record::{Decision, ExitReason, ExitRecord, Phase, RecordedError};
use crate::sandbox::owner::Owner;

/// Runs whose next event `seq` is remembered; past this the memory is dropped (and re-read).
const MAX_OPEN_RUNS: usize = 10_000;

/// A payload as stored: its JSON text inline, or the hash of a blob holding it.
#[derive(Default)]
struct Stored {
    inline: Option<String>,
    blob: Option<String>,
}

/// Stores a payload: small ones inline, large ones once in `blobs` by sha256.
fn put(tx: &Transaction<'_>, value: &serde_json::Value) -> rusqlite::Result<Stored> {
    let text = value.to_string();
    if text.len() <= BLOB_THRESHOLD {
        return Ok(Stored {
            inline: Some(text),
            blob: None,
        });
    }
    let hash = hex(&Sha256::digest(text.as_bytes()));
    let size = i64::try_from(text.len()).unwrap_or(i64::MAX);
    tx.prepare_cached("INSERT OR IGNORE INTO blobs (hash, size, data) VALUES (?1, ?2, ?3)")?
        .execute(params![hash, size, text])?;
    Ok(Stored {
        inline: None,
        blob: Some(hash),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Milliseconds since the epoch of an RFC 3339 time (`None` if it is not one).
fn parse_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

fn ms_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn append(store: &mut SqliteStore, batch: &[Entry]) -> Result<(), JournalError> {
    let owner = store.owner;
    let path = store.path.clone();
    let tx = store
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| super::sql_error(&path, e))?;
    for entry in batch {
        write_one(&tx, owner, &mut store.next_seq, entry)
            .map_err(|e| super::sql_error(&path, e))?;
    }
    tx.commit().map_err(|e| super::sql_error(&path, e))?;
    if store.next_seq.len() > MAX_OPEN_RUNS {
        store.next_seq.clear();
    }
    Ok(())
}

fn write_one(
    tx: &Transaction<'_>,
    owner: Owner,
    next_seq: &mut std::collections::HashMap<String, u64>,
    entry: &Entry,
) -> rusqlite::Result<()> {
    match entry {
        Entry::RunStarted {
            run_id,
            agent,
            kind,
            config_hash,
            started_at_ms,
            input,
        } => {
            let input = match input {
                Some(v) => put(tx, v)?,
                None => Stored::default(),
            };
            tx.prepare_cached(
                "INSERT OR IGNORE INTO runs (run_id, agent, kind, config_hash, status,
                     started_at_ms, owner_pid, owner_start, input, input_blob)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                run_id,
                agent,
                kind,
                config_hash,
                started_at_ms,
                owner.pid,
                ms_i64(owner.start),
                input.inline,
                input.blob
            ])?;
        }
        Entry::CallStarted {
            run_id,
            call,
            agent,
            input,
            memory,
            at_ms,
        } => {
            let (input, memory) = (put(tx, input)?, put(tx, memory)?);
            tx.prepare_cached(
                "INSERT OR IGNORE INTO calls (run_id, call, agent, input, input_blob, memory,
                     memory_blob, started_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                run_id,
                call,
                agent,
                input.inline,
                input.blob,
                memory.inline,
                memory.blob,
                at_ms
            ])?;
        }
        Entry::AttemptStarted {
            run_id,
            call,
            attempt,
            at_ms,
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO attempts (run_id, call, attempt, agent, started_at_ms)
                 VALUES (?1, ?2, ?3,
                     COALESCE((SELECT agent FROM calls WHERE run_id = ?1 AND call = ?2),
                              (SELECT agent FROM runs WHERE run_id = ?1), ''),
                     ?4)",
            )?
            .execute(params![run_id, call, attempt, at_ms])?;
        }
        Entry::Event {
            run_id,
            call,
            attempt,
            at_ms,
            kind,
            payload,
        } => {
            let seq = match next_seq.get_mut(run_id) {
                Some(seq) => seq,
                None => {
                    let last: i64 = tx
                        .prepare_cached(
                            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?1",
                        )?
                        .query_row([run_id], |r| r.get(0))?;
                    next_seq
                        .entry(run_id.clone())
                        .or_insert(u64::try_from(last).unwrap_or(0) + 1)
                }
            };
            let this = *seq;
            *seq += 1;
            let payload = put(tx, payload)?;
            tx.prepare_cached(
                "INSERT INTO events (run_id, seq, call, attempt, at_ms, kind, payload,
                     payload_blob)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                run_id,
                ms_i64(this),
                call,
                attempt,
                at_ms,
                kind,
                payload.inline,
                payload.blob
            ])?;
        }
        Entry::ToolCall {
            run_id,
            call,
            attempt,
            seq,
            call_id,
            tool,
            args,
            status,
            result,
            duration_ms,
            deduplicated,
            at_ms,
        } => {
            let (args, result) = (put(tx, args)?, put(tx, result)?);
            tx.prepare_cached(
                "INSERT OR IGNORE INTO tool_calls (run_id, call, attempt, seq, call_id, tool,
                     args, args_blob, status, result, result_blob, duration_ms, at_ms,
                     deduplicated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                run_id,
                call,
                attempt,
                seq,
                // SQLite integers are signed: ids past i64::MAX keep their bits.
                i64::from_ne_bytes(call_id.to_ne_bytes()),
                tool,
                args.inline,
                args.blob,
                status,
                result.inline,
                result.blob,
                ms_i64(*duration_ms),
                at_ms,
                deduplicated
            ])?;
        }
        Entry::AttemptEnded {
            run_id,
            call,
            attempt,
            record,
            reason,
            decision,
            pid,
            started_at,
            ended_at,
            duration_ms,
        } => {
            let started_ms = parse_ms(started_at).unwrap_or_else(crate::journal::now_ms);
            let ended_ms = parse_ms(ended_at).unwrap_or_else(crate::journal::now_ms);
            let agent = record.get("agent").and_then(|a| a.as_str());
            tx.prepare_cached(
                "INSERT INTO attempts (run_id, call, attempt, agent, reason, decision, pid,
                     started_at, ended_at, started_at_ms, ended_at_ms, duration_ms, record)
                 VALUES (?1, ?2, ?3,
                     COALESCE(?4, (SELECT agent FROM calls WHERE run_id = ?1 AND call = ?2), ''),
                     ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 ON CONFLICT (run_id, call, attempt) DO UPDATE SET
                     agent = COALESCE(?4, agent), reason = ?5, decision = ?6, pid = ?7,
                     started_at = ?8, ended_at = ?9, started_at_ms = ?10, ended_at_ms = ?11,
                     duration_ms = ?12, record = ?13",
            )?
            .execute(params![
                run_id,
                call,
                attempt,
                agent,
                reason,
                decision,
                pid,
                started_at,
                ended_at,
                started_ms,
                ended_ms,
                ms_i64(*duration_ms),
                record.to_string()
            ])?;
        }
        Entry::CallEnded {
            run_id,
            call,
            output,
            memory,
            error,
            at_ms,
        } => {
            let output = match output {
                Some(o) => put(tx, o)?,
                None => Stored {
                    inline: None,
                    blob: None,
                },
            };
            let memory = put(tx, memory)?;
            let error = error.as_ref().map(|e| e.to_string());
            let updated = tx
                .prepare_cached(
                    "UPDATE calls SET output = ?3, output_blob = ?4, memory_after = ?5,
                         memory_after_blob = ?6, error = ?7, ended_at_ms = ?8
                     WHERE run_id = ?1 AND call = ?2",
                )?
                .execute(params![
                    run_id,
                    call,
                    output.inline,
                    output.blob,
                    memory.inline,
                    memory.blob,
                    error,
                    at_ms
                ])?;
            if updated == 0 {
                // Its start was never written (a failed batch): keep the end all the same.
                tx.prepare_cached(
                    "INSERT INTO calls (run_id, call, agent, output, output_blob, memory_after,
                         memory_after_blob, error, started_at_ms, ended_at_ms)
                     VALUES (?1, ?2, COALESCE((SELECT agent FROM runs WHERE run_id = ?1), ''),
                         ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                )?
                .execute(params![
                    run_id,
                    call,
                    output.inline,
                    output.blob,
                    memory.inline,
                    memory.blob,
                    error,
                    at_ms
                ])?;
            }
        }
        Entry::RunEnded {
            run_id,
            status,
            at_ms,
        } => {
            tx.prepare_cached("UPDATE runs SET status = ?2, ended_at_ms = ?3 WHERE run_id = ?1")?
                .execute(params![run_id, status.as_str(), at_ms])?;
            next_seq.remove(run_id);
        }
    }
    Ok(())
}

/// The record of an attempt found unfinished: what the journal knows of it, reason `lost`.
fn lost_record(
    agent: &str,
    run_id: &str,
    attempt: u32,
    started_at_ms: i64,
    now_ms: i64,
) -> ExitRecord {
    let mut r = ExitRecord::begin(agent, run_id, attempt);
    r.started_at = crate::journal::sqlite::read::rfc3339_ms(started_at_ms);
    r.ended_at = crate::journal::sqlite::read::rfc3339_ms(now_ms);
    r.duration_ms = u64::try_from(now_ms.saturating_sub(started_at_ms)).unwrap_or(0);
    r.reason = ExitReason::Lost;
    r.phase = Phase::Busy;
    r.decision = Decision::None;
    r.error = Some(RecordedError {
        kind: "lost".into(),
        message: "the supervisor running this attempt stopped before it ended (crash or \
                  kill); found unfinished in the journal"
            .into(),
        retryable: true,
    });
    r
}

pub(super) fn mark_unfinished(
    store: &mut SqliteStore,
    now_ms: i64,
) -> Result<Recovered, JournalError> {
    let path = store.path.clone();
    let me = store.owner;
    let e = |e| super::sql_error(&path, e);
    // Runs still `running` whose supervisor is gone (not this one, not a live one).
    let mut orphans = Vec::new();
    {
        let mut stmt = store
            .conn
            .prepare("SELECT run_id, owner_pid, owner_start FROM runs WHERE status = 'running'")
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            })
            .map_err(e)?;
        for row in rows {
            let (run_id, pid, start) = row.map_err(e)?;
            let owner = match (pid.and_then(|p| u32::try_from(p).ok()), start) {
                (Some(pid), Some(start)) => Some(Owner {
                    pid,
                    start: u64::try_from(start).unwrap_or(0),
                }),
                _ => None,
            };
            if owner.is_none_or(|o| o != me && o.is_gone()) {
                orphans.push(run_id);
            }
        }
    }
    let mut recovered = Recovered::default();
    let tx = store
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e)?;
    for run_id in &orphans {
        let open: Vec<(u32, u32, String, i64)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT call, attempt, agent, started_at_ms FROM attempts
                     WHERE run_id = ?1 AND reason IS NULL",
                )
                .map_err(e)?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)?
        };
        for (call, attempt, agent, started_ms) in open {
            let record = lost_record(&agent, run_id, attempt, started_ms, now_ms);
            let json = serde_json::to_string(&record).map_err(|err| JournalError::Payload {
                what: "lost record",
                reason: err.to_string(),
            })?;
            tx.execute(
                "UPDATE attempts SET reason = 'lost', decision = 'none', started_at = ?4,
                     ended_at = ?5, ended_at_ms = ?6, duration_ms = ?7, record = ?8
                 WHERE run_id = ?1 AND call = ?2 AND attempt = ?3",
                params![
                    run_id,
                    call,
                    attempt,
                    record.started_at,
                    record.ended_at,
                    now_ms,
                    ms_i64(record.duration_ms),
                    json
                ],
            )
            .map_err(e)?;
            recovered.attempts_lost += 1;
        }
        tx.execute(
            "UPDATE calls SET ended_at_ms = ?2,
                 error = '{\"kind\":\"lost\",\"message\":\"the supervisor stopped before the call ended\",\"retryable\":true}'
             WHERE run_id = ?1 AND ended_at_ms IS NULL",
            params![run_id, now_ms],
        )
        .map_err(e)?;
        tx.execute(
            "UPDATE runs SET status = ?2, ended_at_ms = ?3 WHERE run_id = ?1",
            params![run_id, RunStatus::Interrupted.as_str(), now_ms],
        )
        .map_err(e)?;
        recovered.runs_interrupted += 1;
    }
    tx.commit().map_err(e)?;
    Ok(recovered)
}

pub(super) fn prune(
    store: &mut SqliteStore,
    older_than_ms: i64,
    max_rows: usize,
) -> Result<u64, JournalError> {
    let path = store.path.clone();
    let e = |e| super::sql_error(&path, e);
    let limit = i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX);
    let tx = store
        .conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e)?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS prune_runs (run_id TEXT PRIMARY KEY);
         CREATE TEMP TABLE IF NOT EXISTS prune_blobs (hash TEXT PRIMARY KEY);
         DELETE FROM prune_runs; DELETE FROM prune_blobs;",
    )
    .map_err(e)?;
    let n = tx
        .execute(
            "INSERT INTO prune_runs SELECT run_id FROM runs
             WHERE status != 'running' AND ended_at_ms < ?1
             ORDER BY ended_at_ms LIMIT ?2",
            params![older_than_ms, limit],
        )
        .map_err(e)?;
    if n == 0 {
        return Ok(0);
    }
    for (table, column) in BLOB_COLUMNS {
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO prune_blobs SELECT {column} FROM {table}
                 WHERE run_id IN (SELECT run_id FROM prune_runs) AND {column} IS NOT NULL"
            ),
            [],
        )
        .map_err(e)?;
    }
    for table in [
        "events",
        "tool_calls",
        "ledger",
        "attempts",
        "calls",
        "runs",
    ] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM prune_runs)"),
            [],
        )
        .map_err(e)?;
    }
    let still_used = BLOB_COLUMNS
        .iter()
        .map(|(t, c)| format!("NOT EXISTS (SELECT 1 FROM {t} WHERE {c} = prune_blobs.hash)"))
        .collect::<Vec<_>>()
        .join(" AND ");
    tx.execute(
        &format!(
            "DELETE FROM blobs WHERE hash IN (SELECT hash FROM prune_blobs WHERE {still_used})"
        ),
        [],
    )
    .map_err(e)?;
    tx.commit().map_err(e)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
