//! Row 11: fan-out. A plan of one `for_each` node over N items (`echo`, the default isolation,
//! cgroups) run with `corral::plan::run_plan`, `max_parallel = N`: its wall time and instances
//! per second beside raw spawn throughput (posix_spawn + handshake of the same binary, one
//! thread per core); the scheduler's overhead (the plan's wall time minus that of the same N
//! `Supervisor::call`s made directly, all at once); and Python `multiprocessing` (spawn start
//! method) running the same trivial tasks as a peer.

use crate::harness::{self, Env, Sup};
use crate::python_rows::system_python;
use crate::raw::{self, Program};
use crate::stats::{self, Figure, Row, Section, Summary, Unit};
use anyhow::{anyhow, bail, Context, Result};
use corral::plan::{run_plan, Plan, PlanOptions, PlanStatus};
use corral::{CallOptions, Supervisor};
use corral_proto::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The plan: one node fanned out over `$input.items`, each instance `echo {"n": item}`.
pub fn fan_plan(agent: &str, n: usize, input: &str) -> String {
    format!(
        "[plan]\nname = \"fanout\"\nmax_parallel = {n}\n\n[[node]]\nid = \"fan\"\n\
         agent = \"{agent}\"\nfor_each = \"$input.items\"\ninput = {input}\nskip_memory = true\n"
    )
}

/// The run's input: `{"items": [0, 1, …, n-1]}`.
pub fn items(n: usize) -> Value {
    Value::from_json(&serde_json::json!({ "items": (0..n).collect::<Vec<_>>() }))
}

/// Raised from the default 10 s: with 1000 isolated agents started at once on 2 cores, the
/// last ones got `Ready` after more than 10 s (and the failures opened the breaker).
pub const STARTUP_TIMEOUT: &str = "startup_timeout = \"120s\"\n";

/// A supervisor of `echo` with the default isolation and cgroups.
fn isolated_sup(env: &Env) -> Result<Sup> {
    let text = harness::config_text("echo", &env.echo, STARTUP_TIMEOUT)?;
    harness::supervisor(env, &text, true)
}

/// A supervisor of `echo` with row 1's keys: no isolation, no cgroups; the journal on or off.
fn plain_sup(env: &Env, journal: bool) -> Result<Sup> {
    let keys = format!("{}{STARTUP_TIMEOUT}", crate::call_rows::PLAIN);
    let text = format!(
        "[supervisor]\njournal = {journal}\n\n{}",
        harness::config_text("echo", &env.echo, &keys)?
    );
    harness::supervisor(env, &text, false)
}

/// One plan run of `n` instances: its wall time.
fn plan_once(env: &Env, sup: &Arc<Supervisor>, n: usize) -> Result<Duration> {
    let text = fan_plan("echo", n, "{ n = \"$item\" }");
    let plan = Plan::parse(&text, Path::new("fanout.toml"), sup.config())
        .map_err(|e| anyhow!("plan: {e}"))?;
    let s = sup.clone();
    let (wall, out) = env.run(async move {
        let t0 = Instant::now();
        let opts = PlanOptions {
            input: items(n),
            ..Default::default()
        };
        let out = run_plan(s, &plan, opts).await;
        (t0.elapsed(), out)
    })?;
    let out = out.map_err(|e| anyhow!("run_plan: {e}"))?;
    if out.status != PlanStatus::Succeeded || out.nodes.len() != n {
        // Every attempt's reason, and the first failure's message.
        let mut reasons = std::collections::BTreeMap::<String, usize>::new();
        let mut first = None;
        for a in out.nodes.iter().flat_map(|r| r.attempts.iter()) {
            *reasons.entry(a.reason.to_string()).or_default() += 1;
            if a.reason != corral::ExitReason::Completed && first.is_none() {
                first = Some(format!(
                    "{}: {}",
                    a.reason,
                    a.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
                ));
            }
        }
        bail!(
            "plan {} with {} instances; attempts: {reasons:?}; first failure: {}",
            out.status.as_str(),
            out.nodes.len(),
            first.unwrap_or_default()
        );
    }
    Ok(wall)
}

/// The same `n` calls made directly, all at once: their wall time.
fn direct_once(env: &Env, sup: &Arc<Supervisor>, n: usize) -> Result<Duration> {
    let s = sup.clone();
    let (wall, failed) = env.run(async move {
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let s = s.clone();
            set.spawn(async move {
                let input = Value::map([("n", Value::Int(i as i64))]);
                s.call("echo", input, CallOptions::default())
                    .await
                    .map(|o| o.ok())
                    .unwrap_or(false)
            });
        }
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            if !matches!(r, Ok(true)) {
                failed += 1;
            }
        }
        (t0.elapsed(), failed)
    })?;
    if failed > 0 {
        bail!("{failed} of {n} direct calls failed");
    }
    Ok(wall)
}

/// `n` raw spawn + handshake (+ kill, reap) of `path`, spread over one thread per core (each
/// prepares its own argv first, a few µs).
fn raw_once(path: &Path, n: usize) -> Result<Duration> {
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get());
    let t0 = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = n / threads + usize::from(t < n % threads);
                scope.spawn(move || -> Result<()> {
                    let prog = Program::new(path, &[])?;
                    for _ in 0..count {
                        raw::spawn_ready(&prog)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("raw spawn thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(t0.elapsed())
}

/// Python's `multiprocessing` (spawn start method) running `n` trivial tasks: one process per
/// task, all started at once, then a `Pool` of one worker per core. Seconds each.
const MP_SCRIPT: &str = r#"
import json, multiprocessing as mp, os, sys, time

def task(i, q):
    q.put({"n": i})

def echo(i):
    return {"n": i}

if __name__ == "__main__":
    n = int(sys.argv[1])
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=task, args=(i, q)) for i in range(n)]
    for p in procs:
        p.start()
    got = [q.get() for _ in range(n)]
    for p in procs:
        p.join()
    per_task = time.perf_counter() - t0
    assert len(got) == n and all(p.exitcode == 0 for p in procs)
    t0 = time.perf_counter()
    with ctx.Pool(os.cpu_count()) as pool:
        out = pool.map(echo, range(n))
    pooled = time.perf_counter() - t0
    assert len(out) == n
    print(json.dumps({"per_task": per_task, "pool": pooled}))
"#;

/// Run [`MP_SCRIPT`] for `n` tasks: (process per task, pool) in seconds.
fn python_mp(n: usize) -> Result<(f64, f64)> {
    let py = system_python().context("no python3 on PATH")?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("mp_peer.py");
    std::fs::write(&script, MP_SCRIPT)?;
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(n.to_string())
        .current_dir(dir.path())
        .output()
        .with_context(|| format!("run {}", py.display()))?;
    if !out.status.success() {
        bail!(
            "python multiprocessing script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    match (v["per_task"].as_f64(), v["pool"].as_f64()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("unexpected output of the python script: {v}"),
    }
}

fn secs(d: &[Duration]) -> Vec<f64> {
    d.iter().map(Duration::as_secs_f64).collect()
}

fn measured(v: &[f64]) -> Figure {
    match Summary::of(v) {
        Some(s) => Figure::Measured(s),
        None => Figure::NotMeasured("no samples".into()),
    }
}

/// Samples of one fan-out width.
#[derive(Default)]
struct Width {
    plan: Vec<Duration>,
    direct: Vec<Duration>,
    raw: Vec<Duration>,
}

/// Row 11.
pub fn row11(env: &Env, sec: &mut Section) -> Result<()> {
    let sup = isolated_sup(env)?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let widths: [(usize, usize, f64, &str); 2] = if env.quick {
        [(300, 2, 0.5, "11a"), (1000, 1, 1.5, "11b")]
    } else {
        [(300, 5, 0.5, "11a"), (1000, 3, 1.5, "11b")]
    };
    // One plan of a few instances first: the stem, pools and journal warm.
    plan_once(env, &sup.sup, 8).context("warm-up plan")?;
    let mut all = Vec::new();
    for (n, runs, target, id) in widths {
        let mut w = Width::default();
        for _ in 0..runs {
            w.plan.push(plan_once(env, &sup.sup, n)?);
            w.direct.push(direct_once(env, &sup.sup, n)?);
            w.raw.push(raw_once(&env.echo, n)?);
        }
        let row = Row::new(
            id,
            &format!("plan fan-out {n} isolated echo: wall"),
            Unit::Time,
            measured(&secs(&w.plan)),
        )
        .base(
            &format!("raw spawn+hs ×{n}, {cores} threads"),
            measured(&secs(&w.raw)),
        );
        let met = row.corral.p50().map(|p| p <= target);
        sec.rows.push(row.target(&format!("≤ {target} s"), met));
        all.push((n, runs, w));
    }
    // Instances per second and the scheduler's overhead, at the widest fan-out.
    if let Some((n, runs, w)) = all.last() {
        let rate = |d: &[Duration]| -> Vec<f64> {
            d.iter().map(|x| *n as f64 / x.as_secs_f64()).collect()
        };
        let rf = |v: &[f64]| match stats::rate_summary(v) {
            Some(s) => Figure::Measured(s),
            None => Figure::NotMeasured("no samples".into()),
        };
        sec.rows.push(
            Row::new(
                "11c",
                &format!("plan fan-out {n}: instances/s"),
                Unit::Rate,
                rf(&rate(&w.plan)),
            )
            .base("raw spawn+hs/s", rf(&rate(&w.raw)))
            .target("informative", None),
        );
        let per = |d: &[Duration]| -> Vec<f64> {
            d.iter().map(|x| x.as_secs_f64() / *n as f64).collect()
        };
        let mut row = Row::new(
            "11d",
            &format!("plan wall / instance ({n})"),
            Unit::Time,
            measured(&per(&w.plan)),
        )
        .base(
            "direct Supervisor::call, all at once",
            measured(&per(&w.direct)),
        )
        .target("informative", None);
        if let (Some(a), Some(b)) = (row.corral.p50(), row.base.p50()) {
            let d = a - b;
            row.ratio_text = Some(format!(
                "{}{}/inst",
                if d < 0.0 { "−" } else { "+" },
                Unit::Time.fmt(d.abs())
            ));
        }
        sec.rows.push(row);
        sec.note(format!(
            "11d: scheduler overhead per instance = (plan wall − wall of the same {n} \
             Supervisor::calls made directly, all at once) / {n}, from the p50s of {runs} \
             run(s) each; the direct calls are journalled as {n} runs of their own, the plan's \
             as one run of {n} tasks with a checkpoint per instance"
        ));
    }
    for (n, runs, w) in &all {
        sec.note(format!(
            "{}: {runs} run(s) of run_plan over {n} items (one for_each node, max_parallel {n}, \
             echo with the default isolation: dynamic uid, own root, pid/ipc/uts/mount/net \
             namespaces, cgroups, seccomp, landlock; journal on; startup_timeout 120s, as with the \
             default 10s the last of 1000 agents started at once missed it here), interleaved with the same \
             calls made directly (p50 {}) and with {n} raw posix_spawn + handshake + kill of \
             the same binary without any isolation on {cores} threads (p50 {}); plan p50 {} = \
             {:.0} instances/s",
            if *n == 300 { "11a" } else { "11b" },
            Unit::Time.fmt(Summary::of(&secs(&w.direct)).map_or(f64::NAN, |s| s.p50)),
            Unit::Time.fmt(Summary::of(&secs(&w.raw)).map_or(f64::NAN, |s| s.p50)),
            Unit::Time.fmt(Summary::of(&secs(&w.plan)).map_or(f64::NAN, |s| s.p50)),
            Summary::of(&secs(&w.plan)).map_or(f64::NAN, |s| *n as f64 / s.p50),
        ));
    }
    // Contrast: the same 300-way plan without isolation, to tell the scheduler and the
    // supervision from the making of sandboxes.
    if let Some((n, runs, w)) = all.first() {
        for (id, journal) in [("11f", true), ("11g", false)] {
            let plain = plain_sup(env, journal)?;
            plan_once(env, &plain.sup, 8).context("warm-up plan")?;
            let mut p = Vec::new();
            for _ in 0..*runs {
                p.push(plan_once(env, &plain.sup, *n)?);
            }
            let what = if journal {
                format!("plan fan-out {n}, no isolation: wall")
            } else {
                "same, journal = false".to_string()
            };
            sec.rows.push(
                Row::new(id, &what, Unit::Time, measured(&secs(&p)))
                    .base(&format!("raw spawn+hs ×{n} (11a)"), measured(&secs(&w.raw)))
                    .target("contrast", None),
            );
        }
        sec.note(format!(
            "11f/11g: 11a's plan on a supervisor of echo with row 1's keys (no namespaces, no \
             cgroups, no seccomp or landlock, the supervisor's own uid, no disk quota), journal \
             on (11f) and off (11g), {runs} run(s) each after 11a and 11b: what is left when \
             no sandbox is made"
        ));
    }
    // The peer: Python multiprocessing on the same 300 tasks.
    let plan300 = all
        .first()
        .map(|(_, _, w)| measured(&secs(&w.plan)))
        .unwrap_or(Figure::NotMeasured("no samples".into()));
    match python_mp(300) {
        Ok((per_task, pool)) => {
            sec.rows.push(
                Row::new("11e", "plan fan-out 300 (11a)", Unit::Time, plan300)
                    .base("python mp spawn, process/task", Figure::Single(per_task))
                    .target("peer", None),
            );
            sec.note(format!(
                "11e: python3 multiprocessing, start method spawn, 300 trivial tasks (return \
                 {{\"n\": i}}), one Process per task all started at once, results through a \
                 Queue, timed inside Python: {}; a Pool of {cores} spawn workers reused for \
                 the same 300 tasks (not isolated from each other, for contrast): {}",
                Unit::Time.fmt(per_task),
                Unit::Time.fmt(pool)
            ));
        }
        Err(e) => sec.rows.push(
            Row::new(
                "11e",
                "python multiprocessing (peer)",
                Unit::Time,
                Figure::NotMeasured(format!("skipped: {e:#}")),
            )
            .target("peer", None),
        ),
    }
    Ok(())
}
