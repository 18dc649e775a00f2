//! Row 9: what the journal costs a call. The plain `corral call` path (spawn → `Done` → the
//! outcome returned by `Supervisor::call`) with the journal on (every run, attempt and output
//! durable before the call returns) against the same supervisor config with
//! `[supervisor] journal = false`, interleaved call by call.

use crate::harness::{self, Env, Sup};
use crate::stats::{fig, p50, Row, Section, Unit};
use anyhow::{anyhow, Result};
use corral::{AttemptEvent, CallOptions};
use corral_proto::Value;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The agent keys of row 1: the spawn path without isolation.
pub const PLAIN: &str = "namespaces = []\nnetwork = true\nseccomp = false\nlandlock = false\n\
                         user = \"root\"\nallow_root = true\ndisk = \"unlimited\"\n";

const WARMUP: usize = 3;

/// A supervisor of `echo` (row 1's keys) with the journal on or off, and its sync.
fn echo_sup(env: &Env, journal: bool, sync: &str) -> Result<Sup> {
    let text = format!(
        "[supervisor]\njournal = {journal}\njournal_sync = \"{sync}\"\n\n{}",
        harness::config_text("echo", &env.echo, PLAIN)?
    );
    harness::supervisor(env, &text, false)
}

/// One call: from just before `Supervisor::call` until it returned its outcome, and its
/// phases (call → `Ready`, `Ready` → `Exited`, `Exited` → return).
fn timed_call(env: &Env, sup: &Sup) -> Result<(Duration, [Duration; 3])> {
    let s = sup.sup.clone();
    env.run(async move {
        let input = Value::map([("n", Value::Int(1))]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let opts = CallOptions {
            events: Some(tx),
            ..Default::default()
        };
        let t0 = Instant::now();
        let watch = async {
            let (mut ready, mut exited) = (None, None);
            while let Some(ev) = rx.recv().await {
                match ev {
                    AttemptEvent::Ready { .. } => ready = Some(Instant::now()),
                    AttemptEvent::Exited(_) => exited = Some(Instant::now()),
                    _ => {}
                }
            }
            (ready, exited)
        };
        let call = async {
            let out = s.call("echo", input, opts).await;
            (out, Instant::now())
        };
        let ((out, returned), (ready, exited)) = tokio::join!(call, watch);
        let d = returned - t0;
        let (Some(ready), Some(exited)) = (ready, exited) else {
            return Err(anyhow!("no Ready or no Exited event"));
        };
        let phases = [
            ready - t0,
            exited.saturating_duration_since(ready),
            returned.saturating_duration_since(exited),
        ];
        match out {
            Ok(o) if o.ok() => Ok((d, phases)),
            Ok(o) => Err(anyhow!(
                "the call did not complete: {}",
                o.last().map(|r| r.reason.to_string()).unwrap_or_default()
            )),
            Err(e) => Err(anyhow!("{e}")),
        }
    })?
}

/// p50 of each phase, formatted.
fn phases(p: &[[Duration; 3]]) -> String {
    let col = |i: usize| p.iter().map(|x| x[i]).collect::<Vec<_>>();
    format!(
        "call → Ready {}, Ready → Exited {}, Exited → return {}",
        p50(&col(0)),
        p50(&col(1)),
        p50(&col(2))
    )
}

/// Row 9.
pub fn row9(env: &Env, sec: &mut Section) -> Result<()> {
    let on = echo_sup(env, true, "full")?;
    let off = echo_sup(env, false, "full")?;
    let normal = echo_sup(env, true, "normal")?;
    if on.sup.journal().is_none() || off.sup.journal().is_some() {
        return Err(anyhow!("`[supervisor] journal` did not take effect"));
    }
    let n = env.spawn_iters();
    let (mut with, mut without) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut with_p, mut without_p) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut unsynced = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let c = timed_call(env, &normal)?;
        if i >= WARMUP {
            unsynced.push(c.0);
        }
        // Alternate which goes first, so that neither always follows the other's teardown.
        let (a, b) = if i % 2 == 0 {
            let a = timed_call(env, &on)?;
            (a, timed_call(env, &off)?)
        } else {
            let b = timed_call(env, &off)?;
            (timed_call(env, &on)?, b)
        };
        if i >= WARMUP {
            with.push(a.0);
            with_p.push(a.1);
            without.push(b.0);
            without_p.push(b.1);
        }
    }
    let row = Row::new("9", "call spawn→done, journal on", Unit::Time, fig(&with))
        .base("same, journal = false", fig(&without));
    let met = row.ratio().map(|r| r <= 1.1);
    sec.rows.push(row.target("≤ 1.1× journal off", met));
    let row = Row::new(
        "9b",
        "same, journal_sync = \"normal\"",
        Unit::Time,
        fig(&unsynced),
    )
    .base("same, journal = false", fig(&without));
    let met = row.ratio().map(|r| r <= 1.1);
    sec.rows.push(row.target("≤ 1.1× journal off", met));
    let db = on
        .sup
        .config()
        .supervisor
        .state_dir
        .join("corral.db")
        .metadata()
        .map(|m| m.len() as f64);
    sec.note(format!(
        "9: {n} calls of echo {{\"n\":1}} each way after {WARMUP} warm-up, alternating which \
         goes first; row 1's agent keys (no isolation, no cgroups); timed from just before \
         Supervisor::call to its return, so the journalled figure includes making the run, \
         call and attempt rows and the commit (WAL, synchronous=FULL) that must be durable \
         before the caller is told; p50 on {} ({}) vs off {} ({}); journal file {} after \
         the row",
        p50(&with),
        phases(&with_p),
        p50(&without),
        phases(&without_p),
        db.map(|b| Unit::Bytes.fmt(b))
            .unwrap_or_else(|_| "unknown".into()),
    ));
    Ok(())
}
