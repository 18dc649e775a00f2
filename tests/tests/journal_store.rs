//! The journal's store against real crashes and a real full disk: a writer process killed
//! with SIGKILL at random points, fifty times over one database, and a journal on a tiny tmpfs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use corral::journal::{open_reader, Entry, Journal, JournalError, RunFilter, RunStatus};
use serde_json::json;

/// Set in the child: the database it writes to.
const CHILD_DB: &str = "CORRAL_JOURNAL_TEST_DB";
/// Set in the child: a tag for its run ids.
const CHILD_TAG: &str = "CORRAL_JOURNAL_TEST_TAG";

fn ended(run_id: &str, attempt: u32, reason: &str) -> Entry {
    Entry::AttemptEnded {
        run_id: run_id.into(),
        call: 1,
        attempt,
        record: json!({"agent": "echo", "run_id": run_id, "attempt": attempt, "reason": reason}),
        reason: reason.into(),
        decision: if reason == "completed" {
            "none"
        } else {
            "retry"
        }
        .into(),
        pid: Some(7),
        started_at: "2024-05-01T10:00:00.000Z".into(),
        ended_at: "2024-05-01T10:00:00.250Z".into(),
        duration_ms: 250,
    }
}

/// One run of two attempts, as a caller would write it; `say` is told what was acknowledged.
async fn write_run(
    journal: &Journal,
    run_id: &str,
    payload_len: usize,
    say: &mut dyn FnMut(&str),
) -> Result<(), JournalError> {
    let now = corral::journal::now_ms();
    journal.append(Entry::RunStarted {
        run_id: run_id.into(),
        agent: "echo".into(),
        kind: "call".into(),
        config_hash: "h".into(),
        started_at_ms: now,
        input: None,
    });
    journal.append(Entry::CallStarted {
        run_id: run_id.into(),
        call: 1,
        agent: "echo".into(),
        input: json!({"run": run_id, "pad": "p".repeat(payload_len)}),
        memory: json!([]),
        at_ms: now,
    });
    for attempt in 1..=2u32 {
        journal.append(Entry::AttemptStarted {
            run_id: run_id.into(),
            call: 1,
            attempt,
            at_ms: now,
        });
        journal.flush().await?;
        say(&format!("begun {run_id} {attempt}"));
        for i in 0..20 {
            journal.append(Entry::Event {
                run_id: run_id.into(),
                call: 1,
                attempt,
                at_ms: now,
                kind: "log".into(),
                payload: json!({"line": i}),
            });
        }
        let reason = if attempt == 1 {
            "agent_error"
        } else {
            "completed"
        };
        journal.durable(ended(run_id, attempt, reason)).await?;
        say(&format!("acked {run_id} {attempt}"));
    }
    journal.append(Entry::CallEnded {
        run_id: run_id.into(),
        call: 1,
        output: Some(json!({"ok": run_id})),
        memory: json!([]),
        error: None,
        at_ms: now,
    });
    journal
        .durable(Entry::RunEnded {
            run_id: run_id.into(),
            status: RunStatus::Succeeded,
            at_ms: now,
        })
        .await?;
    say(&format!("ended {run_id}"));
    Ok(())
}

/// Not a test of its own: the writer process the kill test starts (does nothing otherwise).
#[tokio::test]
async fn child_writer() {
    let (Some(db), Some(tag)) = (std::env::var_os(CHILD_DB), std::env::var_os(CHILD_TAG)) else {
        return;
    };
    let journal = Journal::open(Path::new(&db)).expect("the journal opens after a kill");
    println!("opened");
    for n in 0..100_000 {
        let run_id = format!("k{}-{n}", tag.to_string_lossy());
        write_run(&journal, &run_id, 100, &mut |line| println!("{line}"))
            .await
            .unwrap();
    }
}

/// A small xorshift: random kill points without a crate.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn acked_records_survive_kill_9_and_unfinished_ones_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("corral.db");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let mut acked: Vec<(String, u32)> = Vec::new();
    let mut ended_runs: Vec<String> = Vec::new();
    let mut begun: Vec<(String, u32)> = Vec::new();
    let mut lost_total = 0;
    for round in 0..50 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, &db)
            .env(CHILD_TAG, round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill after a random number of lines (0: while it opens or soon after): just after
        // an attempt began (committed), or just after its end or its run's end was acked.
        let wait_for = rng.below(12);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < wait_for {
            let Some(Ok(line)) = lines.next() else { break };
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("acked"), Some(run), Some(attempt)) => {
                    acked.push((run.to_string(), attempt.parse().unwrap()));
                }
                (Some("begun"), Some(run), Some(attempt)) => {
                    begun.push((run.to_string(), attempt.parse().unwrap()));
                }
                (Some("ended"), Some(run), None) => ended_runs.push(run.to_string()),
                _ => continue,
            }
            seen += 1;
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the writer was killed, not finished: {status}"
        );

        // Opens cleanly; whatever the dead writer left running is now interrupted.
        let journal = Journal::open(&db).unwrap_or_else(|e| panic!("round {round}: {e}"));
        lost_total += journal.recovered().attempts_lost;
        let reader = journal.reader().unwrap();
        for (run, attempt) in &acked {
            let view = reader
                .run(run)
                .unwrap()
                .unwrap_or_else(|| panic!("run {run} missing"));
            let record = &view.calls[0].attempts[*attempt as usize - 1];
            assert_ne!(
                record["reason"], "lost",
                "acked attempt {run}/{attempt} lost"
            );
            assert_eq!(record["attempt"], *attempt);
        }
        // Every attempt that began has a record now: its own, or a `lost` one.
        for (run, attempt) in &begun {
            let view = reader.run(run).unwrap().unwrap();
            let record = &view.calls[0].attempts[*attempt as usize - 1];
            assert!(record["reason"].is_string(), "{run}/{attempt}: {record}");
            if !acked.contains(&(run.clone(), *attempt)) && record["reason"] == "lost" {
                assert_eq!(view.status, RunStatus::Interrupted);
            }
        }
        for run in &ended_runs {
            assert_eq!(
                reader.run(run).unwrap().unwrap().status,
                RunStatus::Succeeded
            );
        }
        let all = RunFilter {
            limit: usize::MAX,
            ..RunFilter::default()
        };
        for row in reader.runs(&all).unwrap() {
            assert_ne!(
                row.status,
                RunStatus::Running,
                "{} left running",
                row.run_id
            );
            let view = reader.run(&row.run_id).unwrap().unwrap();
            for call in &view.calls {
                for record in &call.attempts {
                    assert!(
                        record["reason"].is_string(),
                        "{}: an attempt without a record",
                        row.run_id
                    );
                }
            }
        }
        drop(journal);
    }
    assert!(
        acked.len() > 50,
        "the writer got far enough to matter: {}",
        acked.len()
    );
    eprintln!(
        "acked {} attempts, {} runs ended, {lost_total} attempts found lost",
        acked.len(),
        ended_runs.len()
    );
}

#[tokio::test]
async fn a_full_disk_fails_the_batch_and_leaves_a_consistent_journal() {
    if unsafe { libc::geteuid() } != 0 {
        corral_e2e::skip_or_fail("mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _unmount = Unmount(mnt.clone());
    let db = mnt.join("corral.db");
    let journal = Journal::open(&db).unwrap();
    let mut done = Vec::new();
    let mut failure = None;
    for n in 0..1000 {
        let run_id = format!("full-{n}");
        match write_run(&journal, &run_id, 20_000 + n, &mut |_| {}).await {
            Ok(()) => done.push(run_id),
            Err(e) => {
                failure = Some((run_id, e));
                break;
            }
        }
    }
    let (failed_run, error) = failure.expect("a 1 MiB disk fills up");
    assert!(matches!(error, JournalError::Full { .. }), "{error:?}");
    assert!(error.to_string().contains("corral.db"), "{error}");
    assert!(!done.is_empty());
    drop(journal);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let reader = open_reader(&db).unwrap();
    for run in &done {
        let view = reader.run(run).unwrap().unwrap();
        assert_eq!(view.status, RunStatus::Succeeded);
        assert_eq!(view.calls[0].attempts.len(), 2);
    }
    // The run whose write failed is not shown as finished, nor its refused attempt's end.
    if let Some(view) = reader.run(&failed_run).unwrap() {
        assert_ne!(view.status, RunStatus::Succeeded);
    }
    let complete: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ?1 AND reason = 'completed'",
            [&failed_run],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(complete, 0);
}

/// Unmounts the test's tmpfs however the test ends.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
