//! Taking over an unfinished run to resume it: one atomic update of its row, so that two
//! supervisors never resume the same run at once, nor one a run that another still runs.

use super::{open_error, sql_error};
use crate::journal::JournalError;
use crate::sandbox::owner::Owner;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// What [`claim_run`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The run is this process's now (`running`, owned by it).
    Taken,
    /// Another supervisor that is still alive runs it (its pid, when recorded).
    Busy(Option<u32>),
    /// No such run.
    Missing,
}

/// Make run `run_id` of the journal at `path` this process's to run: its status `running`, its
/// owner this process. A run whose owner is alive stays its owner's (the journal marked every
/// run of a dead supervisor `interrupted` when it was opened, see `mark_unfinished`).
pub fn claim_run(path: &Path, run_id: &str) -> Result<Claim, JournalError> {
    let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(super::BUSY_TIMEOUT)
        .map_err(|e| open_error(path, e))?;
    let me = Owner::current();
    let owner = conn
        .query_row(
            "SELECT status, owner_pid, owner_start FROM runs WHERE run_id = ?1",
            [run_id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            },
        )
        .optional()
        .map_err(|e| sql_error(path, e))?;
    let Some((status, pid, start)) = owner else {
        return Ok(Claim::Missing);
    };
    let owned_by = match (pid.and_then(|p| u32::try_from(p).ok()), start) {
        (Some(pid), Some(start)) => Some(Owner {
            pid,
            start: u64::try_from(start).unwrap_or(0),
        }),
        _ => None,
    };
    // `running` by a live supervisor other than this one: not ours to take.
    if status == "running" && owned_by.is_some_and(|o| o != me && !o.is_gone()) {
        return Ok(Claim::Busy(owned_by.map(|o| o.pid)));
    }
    // The same check, made again inside the update: a supervisor that took it meanwhile
    // changed its owner, and this update then changes nothing.
    let changed = conn
        .execute(
            "UPDATE runs SET status = 'running', ended_at_ms = NULL, owner_pid = ?2,
                 owner_start = ?3
             WHERE run_id = ?1 AND status IS ?4 AND owner_pid IS ?5 AND owner_start IS ?6",
            params![
                run_id,
                me.pid,
                i64::try_from(me.start).unwrap_or(i64::MAX),
                status,
                pid,
                start
            ],
        )
        .map_err(|e| sql_error(path, e))?;
    if changed == 1 {
        Ok(Claim::Taken)
    } else {
        let pid: Option<i64> = conn
            .query_row(
                "SELECT owner_pid FROM runs WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| sql_error(path, e))?
            .flatten();
        Ok(Claim::Busy(pid.and_then(|p| u32::try_from(p).ok())))
    }
}
