//! Tests of the journal room on real SQLite files: migrations, refusals of files it must not
//! touch, the round trip of a run, blobs, recovery, pruning and the queue's bound.

use std::path::Path;
use std::sync::mpsc;

use serde_json::json;

use super::sqlite::schema::{LATEST, MIGRATIONS};
use super::sqlite::SqliteStore;
use super::*;

fn run_entries(run_id: &str, input: serde_json::Value, ended: bool) -> Vec<Entry> {
    let mut v = vec![
        Entry::RunStarted {
            run_id: run_id.into(),
            agent: "echo".into(),
            kind: "call".into(),
            config_hash: "abc".into(),
            started_at_ms: 1_000,
            input: None,
        },
        Entry::CallStarted {
            run_id: run_id.into(),
            call: 1,
            agent: "echo".into(),
            input: input.clone(),
            memory: json!(["note"]),
            at_ms: 1_001,
        },
        Entry::AttemptStarted {
            run_id: run_id.into(),
            call: 1,
            attempt: 1,
            at_ms: 1_002,
        },
        Entry::Event {
            run_id: run_id.into(),
            call: 1,
            attempt: 1,
            at_ms: 1_003,
            kind: "contract".into(),
            payload: json!({"name": "echo"}),
        },
        Entry::ToolCall {
            run_id: run_id.into(),
            call: 1,
            attempt: 1,
            seq: 1,
            call_id: u64::MAX,
            tool: "fetch".into(),
            args: json!({"url": "x"}),
            status: "denied".into(),
            result: json!({"kind": "denied", "message": "no", "retryable": false}),
            duration_ms: 3,
            deduplicated: false,
            at_ms: 1_004,
        },
    ];
    if ended {
        v.extend([
            Entry::AttemptEnded {
                run_id: run_id.into(),
                call: 1,
                attempt: 1,
                record: json!({"agent": "echo", "reason": "completed", "attempt": 1}),
                reason: "completed".into(),
                decision: "none".into(),
                pid: Some(42),
                started_at: "2024-01-01T00:00:00.000Z".into(),
                ended_at: "2024-01-01T00:00:01.500Z".into(),
                duration_ms: 1_500,
            },
            Entry::CallEnded {
                run_id: run_id.into(),
                call: 1,
                output: Some(input),
                memory: json!(["note", "more"]),
                error: None,
                at_ms: 1_005,
            },
            Entry::RunEnded {
                run_id: run_id.into(),
                status: RunStatus::Succeeded,
                at_ms: 1_006,
            },
        ]);
    }
    v
}

fn count(path: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn status_names_agree_with_serde() {
    use strum::VariantArray;
    for s in RunStatus::VARIANTS {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
}

#[test]
fn a_run_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/corral.db");
    let mut store = SqliteStore::open(&path).unwrap();
    store
        .append(&run_entries("r1", json!({"hello": "world"}), true))
        .unwrap();
    store.append(&run_entries("r2", json!(1), false)).unwrap();
    assert_eq!(count(&path, "PRAGMA user_version"), LATEST);

    let reader = open_reader(&path).unwrap();
    let runs = reader.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 2);
    let r1 = runs.iter().find(|r| r.run_id == "r1").unwrap();
    assert_eq!(r1.status, RunStatus::Succeeded);
    assert_eq!(r1.attempts, 1);
    assert_eq!(r1.started_at, "1970-01-01T00:00:01.000Z");
    let only = RunFilter {
        status: Some(RunStatus::Running),
        ..RunFilter::default()
    };
    assert_eq!(reader.runs(&only).unwrap()[0].run_id, "r2");
    let none = RunFilter {
        agent: Some("other".into()),
        ..RunFilter::default()
    };
    assert!(reader.runs(&none).unwrap().is_empty());

    let view = reader.run("r1").unwrap().unwrap();
    assert_eq!(view.config_hash, "abc");
    let call = &view.calls[0];
    assert_eq!(call.input, json!({"hello": "world"}));
    assert_eq!(call.memory, json!(["note"]));
    assert_eq!(call.memory_after, Some(json!(["note", "more"])));
    assert_eq!(call.output, Some(json!({"hello": "world"})));
    assert_eq!(call.attempts[0]["reason"], "completed");
    assert_eq!(call.tool_calls[0].call_id, u64::MAX);
    assert_eq!(call.tool_calls[0].status, "denied");
    assert_eq!(call.events[0].kind, "contract");
    assert_eq!(call.events[0].seq, 1);
    // The queryable columns beside the record.
    assert_eq!(
        count(
            &path,
            "SELECT ended_at_ms - started_at_ms FROM attempts WHERE run_id = 'r1'"
        ),
        1_500
    );
    assert!(reader.run("nope").unwrap().is_none());
}

#[test]
fn a_missing_file_reads_as_no_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let reader = open_reader(&path).unwrap();
    assert!(reader.runs(&RunFilter::default()).unwrap().is_empty());
    assert!(reader.run("x").unwrap().is_none());
    assert!(!path.exists(), "a reader creates nothing");
}

/// The reading verbs (`runs`, `show`, `replay`) read a journal an older corral wrote: it is
/// brought to this schema first, as the next supervisor would.
#[test]
fn a_reader_of_an_older_journal_upgrades_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&old).unwrap();
        for m in &MIGRATIONS[..MIGRATIONS.len() - 1] {
            conn.execute_batch(m).unwrap();
        }
        conn.pragma_update(None, "user_version", LATEST - 1)
            .unwrap();
        conn.execute(
            "INSERT INTO runs (run_id, agent, kind, config_hash, status, started_at_ms,
                 ended_at_ms) VALUES ('old', 'echo', 'call', 'h', 'failed', 5, 6)",
            [],
        )
        .unwrap();
    }
    let reader = open_reader(&old).unwrap();
    let run = reader.run("old").unwrap().expect("the old run");
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(reader.runs(&RunFilter::default()).unwrap().len(), 1);
    assert_eq!(count(&old, "PRAGMA user_version"), LATEST);
}

#[test]
fn a_v1_database_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO runs (run_id, agent, kind, config_hash, status, started_at_ms,
                 ended_at_ms) VALUES ('old', 'echo', 'call', 'h', 'failed', 5, 6)",
            [],
        )
        .unwrap();
    }
    let journal = Journal::open(&path).unwrap();
    assert_eq!(count(&path, "PRAGMA user_version"), LATEST);
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'attempts_by_end'"
        ),
        1
    );
    let runs = journal
        .reader()
        .unwrap()
        .runs(&RunFilter::default())
        .unwrap();
    assert_eq!(runs[0].run_id, "old");
    assert_eq!(runs[0].status, RunStatus::Failed);
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x)").unwrap();
        conn.pragma_update(None, "user_version", LATEST + 7)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Journal::open(&path).unwrap_err();
    match &err {
        JournalError::TooNew {
            found, supports, ..
        } => {
            assert_eq!((*found, *supports), (LATEST + 7, LATEST));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("corral.db") && text.contains("newer corral"),
        "{text}"
    );
    assert!(matches!(
        open_reader(&path).err(),
        Some(JournalError::TooNew { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// The newer version only in the write-ahead log (its writer went away without folding it in):
/// refused, and the log is left where it is, not folded into the file.
#[test]
fn a_newer_schema_in_the_log_only_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let wal = dir.path().join("corral.db-wal");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
            .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
        conn.execute_batch("CREATE TABLE future (x)").unwrap();
        conn.pragma_update(None, "user_version", LATEST + 7)
            .unwrap();
    }
    let (before, log) = (std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap());
    assert!(!log.is_empty());
    assert!(matches!(
        Journal::open(&path).err(),
        Some(JournalError::TooNew { .. })
    ));
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file is as it was"
    );
    assert!(std::fs::read(&wal).unwrap() == log, "so is its log");
}

#[test]
fn garbage_is_refused_naming_the_file_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(matches!(
        open_reader(&path).err(),
        Some(JournalError::Open { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no -wal or -shm made beside it");
}

#[test]
fn a_truncated_database_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    {
        let mut store = SqliteStore::open(&path).unwrap();
        for i in 0..200 {
            store
                .append(&run_entries(&format!("run-{i}"), json!({"i": i}), true))
                .unwrap();
        }
        store.checkpoint().unwrap();
    }
    // Past a checkpoint, the log is folded in: remove it to leave only the main file.
    for end in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{end}", path.display()));
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 8192, "the database spans several pages ({len} bytes)");
    for cut in [len / 2, len / 2 + 17, 60] {
        let bytes = std::fs::read(&path).unwrap();
        let cut_path = dir.path().join(format!("cut-{cut}.db"));
        std::fs::write(&cut_path, &bytes[..cut as usize]).unwrap();
        let err = Journal::open(&cut_path).unwrap_err();
        assert!(matches!(err, JournalError::Open { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("cut-{cut}.db")) && text.contains("truncated"),
            "{text}"
        );
        assert_eq!(std::fs::metadata(&cut_path).unwrap().len(), cut);
    }
}

#[test]
fn large_payloads_are_stored_once_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let big = json!({"text": "x".repeat(10_000)});
    let mut store = SqliteStore::open(&path).unwrap();
    store.append(&run_entries("a", big.clone(), true)).unwrap();
    store.append(&run_entries("b", big.clone(), true)).unwrap();
    // Input and output of both runs: one blob.
    assert_eq!(count(&path, "SELECT COUNT(*) FROM blobs"), 1);
    assert_eq!(
        count(&path, "SELECT size FROM blobs"),
        big.to_string().len() as i64
    );
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM calls WHERE input IS NULL"),
        2
    );
    let view = open_reader(&path).unwrap().run("b").unwrap().unwrap();
    assert_eq!(view.calls[0].input, big);
    assert_eq!(view.calls[0].output, Some(big));
    // Small ones stay inline.
    store
        .append(&run_entries("c", json!("small"), true))
        .unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM blobs"), 1);
}

#[test]
fn prune_deletes_old_finished_runs_in_steps_and_their_blobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let shared = json!({"text": "s".repeat(5_000)});
    let mut store = SqliteStore::open(&path).unwrap();
    for i in 0..3 {
        let own = json!({"text": format!("{i}").repeat(5_000)});
        let mut e = run_entries(&format!("old-{i}"), own, true);
        e.push(Entry::Event {
            run_id: format!("old-{i}"),
            call: 1,
            attempt: 1,
            at_ms: 1,
            kind: "log".into(),
            payload: shared.clone(),
        });
        store.append(&e).unwrap();
    }
    store
        .append(&run_entries("running", shared.clone(), false))
        .unwrap();
    let mut recent = run_entries("recent", json!(1), true);
    if let Some(Entry::RunEnded { at_ms, .. }) = recent.last_mut() {
        *at_ms = 10_000_000;
    }
    store.append(&recent).unwrap();
    assert_eq!(count(&path, "SELECT COUNT(*) FROM blobs"), 4);

    assert_eq!(store.prune(5_000, 2).unwrap(), 2);
    assert_eq!(store.prune(5_000, 2).unwrap(), 1);
    assert_eq!(store.prune(5_000, 2).unwrap(), 0);
    let left: Vec<String> = open_reader(&path)
        .unwrap()
        .runs(&RunFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&"running".to_string()) && left.contains(&"recent".to_string()));
    for table in ["calls", "attempts", "events", "tool_calls"] {
        let n = count(
            &path,
            &format!("SELECT COUNT(*) FROM {table} WHERE run_id LIKE 'old-%'"),
        );
        assert_eq!(n, 0, "{table}");
    }
    // The shared blob is still used by the running run; the others are gone.
    assert_eq!(count(&path, "SELECT COUNT(*) FROM blobs"), 1);
    let view = open_reader(&path).unwrap().run("running").unwrap().unwrap();
    assert_eq!(view.calls[0].input, shared);
}

/// The pid of a process that has exited and been reaped (gone), with a start time.
fn dead_owner() -> (i64, i64) {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    (i64::from(pid), 12345)
}

#[test]
fn unfinished_work_of_a_dead_supervisor_is_marked_lost_and_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    {
        let mut store = SqliteStore::open(&path).unwrap();
        store.append(&run_entries("dead", json!(1), false)).unwrap();
        store
            .append(&run_entries("alive", json!(2), false))
            .unwrap();
        store.append(&run_entries("done", json!(3), true)).unwrap();
    }
    let (pid, start) = dead_owner();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE runs SET owner_pid = ?1, owner_start = ?2 WHERE run_id = 'dead'",
            [pid, start],
        )
        .unwrap();
    let journal = Journal::open(&path).unwrap();
    assert_eq!(
        journal.recovered(),
        Recovered {
            attempts_lost: 1,
            runs_interrupted: 1
        }
    );
    let reader = journal.reader().unwrap();
    let dead = reader.run("dead").unwrap().unwrap();
    assert_eq!(dead.status, RunStatus::Interrupted);
    assert!(dead.ended_at.is_some());
    let record = &dead.calls[0].attempts[0];
    assert_eq!(record["reason"], "lost");
    assert_eq!(record["run_id"], "dead");
    assert_eq!(record["agent"], "echo");
    assert_eq!(record["error"]["kind"], "lost");
    assert_eq!(dead.calls[0].error.as_ref().unwrap()["kind"], "lost");
    // A run of a live supervisor (this process) is left alone; so is a finished one.
    assert_eq!(
        reader.run("alive").unwrap().unwrap().status,
        RunStatus::Running
    );
    assert_eq!(
        reader.run("done").unwrap().unwrap().status,
        RunStatus::Succeeded
    );
    drop(journal);
    // Nothing is left to recover the second time.
    assert_eq!(
        Journal::open(&path).unwrap().recovered(),
        Recovered::default()
    );
}

#[tokio::test]
async fn durable_resolves_after_commit_and_readers_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let journal = Journal::open(&path).unwrap();
    let mut entries = run_entries("r", json!({"a": 1}), true);
    let last = entries.pop().unwrap();
    for e in entries {
        journal.append(e);
    }
    journal.durable(last).await.unwrap();
    // Another connection (another process would see the same): all of it is there.
    let view = open_reader(&path).unwrap().run("r").unwrap().unwrap();
    assert_eq!(view.status, RunStatus::Succeeded);
    assert_eq!(view.calls[0].tool_calls.len(), 1);
    journal.flush().await.unwrap();
}

/// A store over SQLite that can hold its first append until told to go on (so that the queue
/// fills while the writer is busy, as with a slow disk) and report the size of every batch it
/// committed.
struct Probe {
    inner: SqliteStore,
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    batches: Option<mpsc::Sender<usize>>,
}

impl Store for Probe {
    fn append(&mut self, batch: &[Entry]) -> Result<(), JournalError> {
        if let Some((entered, go)) = self.gate.take() {
            let _ = entered.send(());
            let _ = go.recv();
        }
        self.inner.append(batch)?;
        if let Some(batches) = &self.batches {
            let _ = batches.send(batch.len());
        }
        Ok(())
    }
    fn mark_unfinished(&mut self, now: i64) -> Result<Recovered, JournalError> {
        self.inner.mark_unfinished(now)
    }
    fn prune(&mut self, older: i64, max: usize) -> Result<u64, JournalError> {
        self.inner.prune(older, max)
    }
    fn checkpoint(&mut self) -> Result<(), JournalError> {
        self.inner.checkpoint()
    }
    fn readers(&self) -> ReaderSource {
        self.inner.readers()
    }
}

#[tokio::test]
async fn the_queue_is_bounded_and_never_drops_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let store = Probe {
        inner: SqliteStore::open(&path).unwrap(),
        gate: Some((entered_tx, go_rx)),
        batches: None,
    };
    const LIMIT: usize = 64 * 1024;
    let journal = Journal::open_with_limit(Recovered::default(), Box::new(store), LIMIT).unwrap();
    let mut entries = run_entries("r", json!(1), true);
    let ends = entries.split_off(5);
    let mut head = entries.into_iter();
    // The first entry goes into a batch the writer holds.
    journal.append(head.next().unwrap());
    entered.recv().unwrap();
    for e in head {
        journal.append(e);
    }
    let big = "y".repeat(1000);
    for i in 0..2_000 {
        journal.append(Entry::Event {
            run_id: "r".into(),
            call: 1,
            attempt: 1,
            at_ms: i,
            kind: "log".into(),
            payload: json!(big),
        });
    }
    assert!(
        journal.queued_bytes() <= LIMIT,
        "{}",
        journal.queued_bytes()
    );
    // The queue is full: the ends are queued all the same.
    for e in ends {
        journal.append(e);
    }
    go.send(()).unwrap();
    journal.flush().await.unwrap();
    let view = journal.reader().unwrap().run("r").unwrap().unwrap();
    assert_eq!(view.status, RunStatus::Succeeded);
    assert_eq!(view.calls[0].attempts[0]["reason"], "completed");
    let logs = view.calls[0]
        .events
        .iter()
        .filter(|e| e.kind == "log")
        .count() as u64;
    let dropped = view.calls[0]
        .events
        .iter()
        .find(|e| e.kind == "dropped")
        .expect("a dropped event");
    assert!(logs > 0 && logs < 2_000, "{logs}");
    assert_eq!(dropped.payload["events"].as_u64().unwrap() + logs, 2_000);
}

#[tokio::test]
async fn entries_nobody_waits_on_are_committed_with_the_next_durable_one_or_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.db");
    let (tx, batches) = mpsc::channel();
    let store = Probe {
        inner: SqliteStore::open(&path).unwrap(),
        gate: None,
        batches: Some(tx),
    };
    let journal = Journal::open_with(Box::new(store)).unwrap();
    // A short call's entries, its end awaited: one transaction.
    let mut entries = run_entries("r", json!({"a": 1}), true);
    let n = entries.len();
    let last = entries.pop().unwrap();
    for e in entries {
        journal.append(e);
    }
    journal.durable(last).await.unwrap();
    assert_eq!(batches.recv().unwrap(), n);
    assert!(batches.try_recv().is_err(), "one batch for the whole call");
    // Entries nobody waits on are written all the same, without a flush: the writer does not
    // hold them past the delay.
    let mut more = run_entries("s", json!(2), true);
    more.truncate(3);
    for e in more {
        journal.append(e);
    }
    let got = tokio::task::spawn_blocking(move || batches.recv().unwrap())
        .await
        .unwrap();
    assert_eq!(got, 3);
    let view = open_reader(&path).unwrap().run("s").unwrap();
    assert!(view.is_some(), "the held entries were committed");
}
