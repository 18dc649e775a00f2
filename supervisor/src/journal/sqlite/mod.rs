//! The SQLite backend: the one room where the journal's SQL lives.
//!
//! One file in WAL mode with `synchronous = FULL` (the default): a transaction is on disk (the
//! log synced) before its commit returns, so an entry acknowledged as durable survives a
//! `kill -9` of the process and a power loss alike; batching makes that one sync per batch, not
//! per entry. With `[supervisor] journal_sync = "normal"` (`synchronous = NORMAL`) a commit is
//! in the log, in the kernel's cache, when it returns: it survives a crash or `kill -9` of
//! corral, and a power loss may take the last commits since the log was last synced.
//!
//! Opening never changes a file it does not understand: the header is checked first (not a
//! database, or shorter than its header says: a clear error naming the file), then the schema
//! version (newer than this build: [`JournalError::TooNew`]); only then is anything written
//! (WAL mode, migrations). Payloads past [`schema::BLOB_THRESHOLD`] bytes of JSON are kept once
//! in `blobs`, by sha256.

mod claim;
pub use claim::{claim_run, Claim};
mod ledger;
pub use ledger::{LedgerRow, LedgerStore};
mod read;
pub mod schema;
mod write;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::{Entry, JournalError, Reader, ReaderSource, Recovered, Store};
use crate::sandbox::owner::Owner;

pub use read::SqliteReader;

/// How long a statement waits for another connection's lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The journal in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    owner: Owner,
    /// The next event `seq` of each open run (read from the file on a miss).
    next_seq: HashMap<String, u64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) and migrates the journal at `path`.
    /// Does not mark anything unfinished: [`Store::mark_unfinished`] does.
    pub fn open(path: &Path) -> Result<SqliteStore, JournalError> {
        SqliteStore::open_synced(path, true)
    }

    /// [`SqliteStore::open`], syncing the log at every commit (`full`) or not (see the module
    /// docs).
    pub fn open_synced(path: &Path, full: bool) -> Result<SqliteStore, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
                op: "create the journal's directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        check_header(path)?;
        // A file of a newer schema is refused by a read-only look first: a read-write
        // connection closed on it would fold its write-ahead log into it.
        drop(open_read_only(path)?);
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(path, e))?;
        check_version(&conn, path)?;
        wal_mode(&conn, path)?;
        conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })
            .map_err(|e| open_error(path, e))?;
        let mut store = SqliteStore {
            conn,
            path: path.to_path_buf(),
            owner: Owner::current(),
            next_seq: HashMap::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Applies the migrations after the file's version, each in a transaction of its own.
    fn migrate(&mut self) -> Result<(), JournalError> {
        self.migrate_to(schema::LATEST)
    }

    /// Brings the schema to `version` (tests stop at older ones). Each step reads the version
    /// inside its own write transaction (`BEGIN IMMEDIATE`), so two supervisors opening one
    /// journal at once never both apply the same migration: the second waits, then sees it done.
    pub(crate) fn migrate_to(&mut self, version: i64) -> Result<(), JournalError> {
        let path = self.path.clone();
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| open_error(&path, e))?;
            let v = check_version(&tx, &path)?;
            let Some(sql) = usize::try_from(v)
                .ok()
                .filter(|_| v < version)
                .and_then(|i| schema::MIGRATIONS.get(i))
            else {
                return Ok(());
            };
            tx.execute_batch(sql).map_err(|e| open_error(&path, e))?;
            tx.pragma_update(None, "user_version", v + 1)
                .map_err(|e| open_error(&path, e))?;
            tx.commit().map_err(|e| open_error(&path, e))?;
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection (tests and the bench compare with raw inserts).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: rusqlite::Error) -> JournalError {
        sql_error(&self.path, e)
    }
}

impl Store for SqliteStore {
    fn append(&mut self, batch: &[Entry]) -> Result<(), JournalError> {
        write::append(self, batch)
    }

    fn mark_unfinished(&mut self, now_ms: i64) -> Result<Recovered, JournalError> {
        write::mark_unfinished(self, now_ms)
    }

    fn prune(&mut self, older_than_ms: i64, max_rows: usize) -> Result<u64, JournalError> {
        write::prune(self, older_than_ms, max_rows)
    }

    fn checkpoint(&mut self) -> Result<(), JournalError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }

    fn readers(&self) -> ReaderSource {
        let path = self.path.clone();
        std::sync::Arc::new(move || {
            SqliteReader::open(&path).map(|r| Box::new(r) as Box<dyn Reader + Send>)
        })
    }
}

/// An error of a running journal: a full disk and corruption have names of their own.
pub(crate) fn sql_error(path: &Path, e: rusqlite::Error) -> JournalError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => JournalError::Full { path },
        // A write that failed with ENOSPC often comes back as a plain I/O error (the WAL's
        // append); the file system says whether that is why.
        Some(ErrorCode::SystemIoFailure) if fs_full(&path) => JournalError::Full { path },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => JournalError::Corrupt {
            path,
            reason: e.to_string(),
        },
        _ => JournalError::Sql { path, source: e },
    }
}

/// Whether the file system holding `path` has (almost) no room left for it.
fn fs_full(path: &Path) -> bool {
    let dir = path.parent().unwrap_or(Path::new("."));
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()) < 64 * 1024)
        .unwrap_or(false)
}

/// An error while opening: a file SQLite cannot read is [`JournalError::Open`].
pub(crate) fn open_error(path: &Path, e: rusqlite::Error) -> JournalError {
    match sql_error(path, e) {
        JournalError::Corrupt { path, reason } => JournalError::Open { path, reason },
        other => other,
    }
}

/// Put the file in WAL mode. Two supervisors creating one journal at once both ask; the one
/// that finds the other's lock waits its turn (the busy handler does not cover this step), up
/// to [`BUSY_TIMEOUT`].
fn wal_mode(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let until = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r.map_err(|e| open_error(path, e)),
        }
    }
}

/// The schema version of an open file, refusing one newer than this build.
fn check_version(conn: &Connection, path: &Path) -> Result<i64, JournalError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| open_error(path, e))?;
    if found > schema::LATEST {
        return Err(JournalError::TooNew {
            path: path.to_path_buf(),
            found,
            supports: schema::LATEST,
        });
    }
    Ok(found)
}

/// What the first 100 bytes of a SQLite file say, checked before SQLite touches it: a file that
/// is not a database, or is shorter than its header says (truncated), is refused unchanged.
/// A missing or empty file is a new journal.
fn check_header(path: &Path) -> Result<(), JournalError> {
    let bad = |reason: String| JournalError::Open {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(JournalError::Io {
                op: "open the journal",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let io = |source| JournalError::Io {
        op: "read the journal's header",
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(());
    }
    let mut header = Vec::with_capacity(100);
    file.by_ref()
        .take(100)
        .read_to_end(&mut header)
        .map_err(io)?;
    if !header.starts_with(b"SQLite format 3\0") {
        return Err(bad(
            "not a SQLite database (its first bytes are not a SQLite header); \
                        corral leaves it as it is: move it away to start a new journal"
                .into(),
        ));
    }
    if header.len() < 100 {
        return Err(bad(format!(
            "truncated: {len} bytes, shorter than a SQLite header"
        )));
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let pages = u64::from(be32(28));
    // The page count in the header is valid only when the change counter matches it, and
    // the file alone holds the database only when there is no write-ahead log beside it (a
    // checkpoint cut short, e.g. by a full disk, leaves a header ahead of the file while the
    // log still holds every page).
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let has_wal = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    if !has_wal && be32(24) == be32(92) && pages > 0 && len < pages.saturating_mul(page_size) {
        return Err(bad(format!(
            "truncated: {len} bytes, but its header says {pages} pages of {page_size} bytes"
        )));
    }
    Ok(())
}

/// Opens `path` read-only for a reader (`None`: no such file); same checks as the writer's.
pub(crate) fn open_read_only(path: &Path) -> Result<Option<(Connection, i64)>, JournalError> {
    if !path.exists() {
        return Ok(None);
    }
    check_header(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| open_error(path, e))?;
    let version = check_version(&conn, path)?;
    Ok(Some((conn, version)))
}
