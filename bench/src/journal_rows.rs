//! Row 8: the journal. Durable events per second through the real writer (queued with
//! `Journal::append`, then one `flush` that resolves once they are committed) beside raw
//! SQLite inserts of the same rows in one transaction, same file settings, same run.

use std::time::Instant;

use anyhow::{Context, Result};
use corral::journal::{Entry, Journal};

use crate::harness::Env;
use crate::stats::{self, Figure, Row, Section, Unit};

fn event(i: u64) -> Entry {
    Entry::Event {
        run_id: "bench".into(),
        call: 1,
        attempt: 1,
        at_ms: i64::try_from(i).unwrap_or(0),
        kind: "log".into(),
        payload: serde_json::json!({"line": i, "text": "an agent said something worth keeping"}),
    }
}

/// One run through the writer: events per second, from the first append to the flush's ack.
fn through_writer(env: &Env, n: u64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let journal = Journal::open(&dir.path().join("corral.db"))?;
    journal.append(Entry::RunStarted {
        run_id: "bench".into(),
        agent: "echo".into(),
        kind: "call".into(),
        config_hash: "h".into(),
        started_at_ms: 0,
        input: None,
    });
    env.rt.block_on(journal.flush())?;
    let events: Vec<Entry> = (0..n).map(event).collect();
    let t = Instant::now();
    for e in events {
        journal.append(e);
    }
    env.rt.block_on(journal.flush())?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The baseline: the same rows by hand, one prepared insert each, one transaction.
fn raw_sqlite(n: u64) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = rusqlite::Connection::open(dir.path().join("raw.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, call INTEGER,
             attempt INTEGER, at_ms INTEGER, kind TEXT, payload TEXT,
             PRIMARY KEY (run_id, seq))",
    )?;
    let payloads: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"line": i, "text": "an agent said something worth keeping"})
                .to_string()
        })
        .collect();
    let t = Instant::now();
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO events (run_id, seq, call, attempt, at_ms, kind, payload)
             VALUES ('bench', ?1, 1, 1, ?1, 'log', ?2)",
        )?;
        for (i, p) in payloads.iter().enumerate() {
            stmt.execute(rusqlite::params![i as i64, p])?;
        }
    }
    tx.commit()?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

pub fn row8(env: &Env, sec: &mut Section) -> Result<()> {
    let (n, runs) = if env.quick { (20_000, 3) } else { (100_000, 7) };
    let (mut corral, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        corral.push(through_writer(env, n).context("through the journal's writer")?);
        raw.push(raw_sqlite(n).context("raw SQLite")?);
    }
    let rf = |v: &[f64]| match stats::rate_summary(v) {
        Some(s) => Figure::Measured(s),
        None => Figure::NotMeasured("no samples".into()),
    };
    let row = Row::new(
        "8",
        "Durable journal events/s (writer)",
        Unit::Rate,
        rf(&corral),
    )
    .base("raw SQLite, one transaction", rf(&raw));
    let met = row.corral.p50().map(|r| r >= 50_000.0);
    sec.rows.push(row.target("≥ 50 k/s", met));
    sec.note(format!(
        "8: {n} small log events (JSON payloads) queued with Journal::append, then one flush \
         that resolves after the commit (WAL, synchronous=FULL): events/s from the first append \
         to the ack; baseline: the same rows through one prepared INSERT each in one \
         transaction on a fresh file with the same settings; {runs} runs each, interleaved"
    ));
    Ok(())
}
