//! Row 9: what the journal costs a call. The plain `corral call` path (spawn → `Done` → the
//! outcome returned by `Supervisor::call`) with the journal on (every run, attempt and output
//! durable before the call returns) against the same supervisor config with
//! `[supervisor] journal = false`, interleaved call by call.

use crate::harness::{self, Env, Sup};
use crate::stats::{fig, p50, Row, Section, Unit};
use anyhow::{anyhow, Result};
use corral::CallOptions;
use corral_proto::Value;
use std::time::{Duration, Instant};

/// The agent keys of row 1: the spawn path without isolation.
pub const PLAIN: &str = "namespaces = []\nnetwork = true\nseccomp = false\nlandlock = false\n\
                         user = \"root\"\nallow_root = true\ndisk = \"unlimited\"\n";

const WARMUP: usize = 3;

/// A supervisor of `echo` (row 1's keys) with the journal on or off.
fn echo_sup(env: &Env, journal: bool) -> Result<Sup> {
    let text = format!(
        "[supervisor]\njournal = {journal}\n\n{}",
        harness::config_text("echo", &env.echo, PLAIN)?
    );
    harness::supervisor(env, &text, false)
}

/// One call, timed from just before `Supervisor::call` until it returned its outcome.
fn timed_call(env: &Env, sup: &Sup) -> Result<Duration> {
    let s = sup.sup.clone();
    env.run(async move {
        let input = Value::map([("n", Value::Int(1))]);
        let t0 = Instant::now();
        let out = s.call("echo", input, CallOptions::default()).await;
        let d = t0.elapsed();
        match out {
            Ok(o) if o.ok() => Ok(d),
            Ok(o) => Err(anyhow!(
                "the call did not complete: {}",
                o.last().map(|r| r.reason.to_string()).unwrap_or_default()
            )),
            Err(e) => Err(anyhow!("{e}")),
        }
    })?
}

/// Row 9.
pub fn row9(env: &Env, sec: &mut Section) -> Result<()> {
    let on = echo_sup(env, true)?;
    let off = echo_sup(env, false)?;
    if on.sup.journal().is_none() || off.sup.journal().is_some() {
        return Err(anyhow!("`[supervisor] journal` did not take effect"));
    }
    let n = env.spawn_iters();
    let (mut with, mut without) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..WARMUP + n {
        // Alternate which goes first, so that neither always follows the other's teardown.
        let (a, b) = if i % 2 == 0 {
            let a = timed_call(env, &on)?;
            (a, timed_call(env, &off)?)
        } else {
            let b = timed_call(env, &off)?;
            (timed_call(env, &on)?, b)
        };
        if i >= WARMUP {
            with.push(a);
            without.push(b);
        }
    }
    let row = Row::new("9", "call spawn→done, journal on", Unit::Time, fig(&with))
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
         before the caller is told; p50 on {} vs off {}; journal file {} after the row",
        p50(&with),
        p50(&without),
        db.map(|b| Unit::Bytes.fmt(b))
            .unwrap_or_else(|_| "unknown".into()),
    ));
    Ok(())
}
