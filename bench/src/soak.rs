//! The soak (`corral-bench --soak DURATION`): 300-way fan-outs of isolated agents making tool
//! calls, back to back, for DURATION, watching what the supervising process keeps.
//!
//! Each round is two fan-outs of 300 `chaos {"do":"tools"}` instances (default isolation,
//! cgroups, journal on), each instance making [`CALLS`] `fs.list` calls:
//!
//! - one through `corral::plan::run_plan` (one `for_each` node, `max_parallel = 300`); a plan
//!   run routes no tool calls to a broker, so those calls are answered `permission_denied`
//!   by the attempt (and traced and journalled as such);
//! - one as 300 `Supervisor::call`s at once, their calls executed by one `Broker` (made from
//!   the config, as `corral call` makes it, and called in each attempt's task as it calls it).
//!
//! Between rounds, at least every [`EVERY`], once the reaper has finished the round's
//! clean-up, a sample: the process's RSS and open fds, the directories under the cgroup roots
//! corral uses, the workspaces under `<state_dir>/work` and the journal's size (db + wal).
//! At the end the samples are printed as a table, and a verdict per column: flat, or what
//! grows and by how much. Nothing fails on a figure.

use crate::harness::{self, Env};
use crate::plan_rows::{fan_plan, items};
use crate::stats::Unit;
use crate::tool_rows::{tool_keys, tool_results, tools_input};
use anyhow::{anyhow, Result};
use corral::plan::{run_plan, Plan, PlanOptions, PlanStatus};
use corral::tools::Broker;
use corral::{CallOptions, Supervisor, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Instances per fan-out.
const WIDTH: usize = 300;
/// Tool calls per instance.
const CALLS: usize = 4;
/// Least time between two samples.
const EVERY: Duration = Duration::from_secs(10);

/// `"90s"`, `"10m"`, `"1h"`, `"500ms"`: a number and a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}`: expected a duration like 60s, 10m or 1h"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => return Err(format!("`{text}`: a duration needs a unit (s, m, h)")),
        u => return Err(format!("`{text}`: unknown unit `{u}` (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err(format!("`{text}`: the soak needs a duration above zero"));
    }
    Ok(d)
}

/// One sample.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Duration,
    rounds: u64,
    instances: u64,
    executed: u64,
    denied: u64,
    rss: f64,
    fds: u64,
    cgroup_dirs: u64,
    workspaces: u64,
    journal: f64,
}

/// What is counted along the way.
#[derive(Debug, Default)]
struct Counts {
    rounds: u64,
    instances: u64,
    executed: u64,
    denied: u64,
    failed: u64,
    first_failure: Option<String>,
    /// Calls through the broker that did not succeed, and the first one's error.
    broker_errors: u64,
    first_broker_error: Option<String>,
}

impl Counts {
    fn failure(&mut self, what: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(what);
    }

    /// Count the `results` of one instance's output.
    fn results(&mut self, out: &Value, via_broker: bool) {
        let (ok, _) = tool_results(out);
        let total = out.to_json()["results"].as_array().map_or(0, |a| a.len());
        if via_broker {
            self.executed += ok as u64;
            self.denied += (total - ok) as u64;
            if ok < total {
                self.broker_errors += (total - ok) as u64;
                let json = out.to_json();
                if let Some(e) = json["results"]
                    .as_array()
                    .and_then(|l| l.iter().find(|r| r["ok"] != true))
                {
                    self.first_broker_error
                        .get_or_insert_with(|| e["error"].to_string());
                }
            }
        } else {
            self.denied += total as u64;
        }
    }
}

fn count_entries(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().count() as u64)
}

/// The `corral` directories under this process's cgroups, in every hierarchy mounted under
/// `/sys/fs/cgroup` (v1 controllers, co-mounted ones, or the v2 tree).
fn cgroup_roots() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let rel = path.trim_start_matches('/');
        let mut candidates = vec![];
        if ctrls.is_empty() {
            candidates.push(base.join(rel));
            candidates.push(base.join("unified").join(rel));
        } else {
            let ctrls = ctrls.trim_start_matches("name=");
            candidates.push(base.join(ctrls).join(rel));
            for c in ctrls.split(',') {
                candidates.push(base.join(c).join(rel));
            }
        }
        for c in candidates {
            let dir = c.join("corral");
            if let Ok(real) = dir.canonicalize() {
                if real.is_dir() && !roots.contains(&real) {
                    roots.push(real);
                }
            }
        }
    }
    roots
}

/// Directories below the cgroup roots (leaves and the directories holding them).
fn cgroup_dirs(roots: &[PathBuf]) -> u64 {
    fn walk(d: &Path, depth: u32) -> u64 {
        if depth > 3 {
            return 0;
        }
        std::fs::read_dir(d).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| 1 + walk(&e.path(), depth + 1))
                .sum()
        })
    }
    roots.iter().map(|r| walk(r, 0)).sum()
}

fn file_len(p: &Path) -> f64 {
    std::fs::metadata(p).map_or(0.0, |m| m.len() as f64)
}

fn sample(sup: &Supervisor, started: Instant, c: &Counts) -> Sample {
    let state = &sup.config().supervisor.state_dir;
    Sample {
        at: started.elapsed(),
        rounds: c.rounds,
        instances: c.instances,
        executed: c.executed,
        denied: c.denied,
        rss: harness::rss_bytes().unwrap_or(f64::NAN),
        fds: count_entries(Path::new("/proc/self/fd")),
        cgroup_dirs: cgroup_dirs(&cgroup_roots()),
        workspaces: count_entries(&state.join("work")),
        journal: file_len(&state.join("corral.db")) + file_len(&state.join("corral.db-wal")),
    }
}

/// One plan fan-out (tool calls denied: plans route none to a broker).
async fn plan_round(sup: Arc<Supervisor>, plan: &Plan, c: &mut Counts) {
    let mut input = items(WIDTH).to_json();
    input["calls"] = tools_input(CALLS).to_json()["calls"].clone();
    let opts = PlanOptions {
        input: Value::from_json(&input),
        ..Default::default()
    };
    match run_plan(sup, plan, opts).await {
        Ok(out) => {
            c.instances += out.nodes.len() as u64;
            if out.status != PlanStatus::Succeeded {
                c.failure(format!("plan run ended {}", out.status.as_str()));
            }
            if let Some(serde_json::Value::Array(outs)) = &out.output {
                for o in outs {
                    c.results(&Value::from_json(o), false);
                }
            }
        }
        Err(e) => c.failure(format!("run_plan: {e}")),
    }
}

/// 300 direct calls at once, their tool calls executed by `broker`.
async fn direct_round(sup: Arc<Supervisor>, broker: &Arc<Broker>, c: &mut Counts) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..WIDTH {
        let s = sup.clone();
        // Called in each attempt's task, as `corral call` calls its broker.
        let opts = CallOptions {
            tools: Some(broker.clone().into()),
            ..Default::default()
        };
        set.spawn(async move { s.call("chaos", tools_input(CALLS), opts).await });
    }
    while let Some(r) = set.join_next().await {
        c.instances += 1;
        match r {
            Ok(Ok(out)) => match &out.output {
                Some(v) => c.results(v, true),
                None => c.failure(format!(
                    "call failed: {}",
                    out.last().map(|r| r.reason.to_string()).unwrap_or_default()
                )),
            },
            Ok(Err(e)) => c.failure(format!("call: {e}")),
            Err(e) => c.failure(format!("task: {e}")),
        }
    }
}

/// What one column did over the soak: flat, or how much it grew.
fn verdict(
    samples: &[Sample],
    name: &str,
    get: impl Fn(&Sample) -> f64,
    slack: f64,
    fmt: impl Fn(f64) -> String,
) -> String {
    // The first sample is before any agent; judge from the first one after a round.
    let after: Vec<&Sample> = samples.iter().filter(|s| s.rounds > 0).collect();
    let (Some(first), Some(last)) = (after.first(), after.last()) else {
        return format!("{name}: not enough samples");
    };
    let quarter = (after.len() / 4).max(1);
    let early = after[..quarter]
        .iter()
        .map(|s| get(s))
        .fold(f64::NAN, f64::max);
    let late = after[after.len() - quarter..]
        .iter()
        .map(|s| get(s))
        .fold(f64::NAN, f64::min);
    let grew = late - early;
    let per_k = if last.instances > first.instances {
        grew / ((last.instances - first.instances) as f64 / 1000.0)
    } else {
        f64::NAN
    };
    if grew > slack && grew > early.abs() * 0.05 {
        format!(
            "{name}: GROWS from {} to {} (+{} per 1000 instances)",
            fmt(early),
            fmt(late),
            fmt(per_k)
        )
    } else {
        format!(
            "{name}: flat ({} early, {} late; first sample before any agent: {})",
            fmt(early),
            fmt(late),
            fmt(samples.first().map_or(f64::NAN, &get))
        )
    }
}

/// Run the soak for `total` and print its table.
pub fn run(env: &Env, total: Duration) -> Result<()> {
    let keys = tool_keys(crate::plan_rows::STARTUP_TIMEOUT);
    let text = harness::config_text("chaos", &env.chaos, &keys)?;
    let sup = harness::supervisor(env, &text, true)?;
    let plan_text = fan_plan(
        "chaos",
        WIDTH,
        "{ do = \"tools\", calls = \"$input.calls\" }",
    );
    let plan = Plan::parse(&plan_text, Path::new("soak.toml"), sup.sup.config())
        .map_err(|e| anyhow!("plan: {e}"))?;
    let broker = Arc::new(Broker::for_supervisor(&sup.sup));
    let started = Instant::now();
    let mut c = Counts::default();
    let mut samples = vec![sample(&sup.sup, started, &c)];
    eprintln!(
        "soak: {} of {WIDTH}-way fan-outs ({CALLS} fs.list calls per instance), a sample at \
         least every {}s",
        Unit::Time.fmt(total.as_secs_f64()),
        EVERY.as_secs()
    );
    while started.elapsed() < total {
        let s = sup.sup.clone();
        let (p, b) = (plan.clone(), broker.clone());
        c = env.run(async move {
            let mut c = c;
            plan_round(s.clone(), &p, &mut c).await;
            direct_round(s, &b, &mut c).await;
            c.rounds += 1;
            // Workspaces and cgroups are removed on the reaper thread: sample at rest.
            corral::sandbox::process::settled().await;
            c
        })?;
        let last = samples.last().map_or(Duration::ZERO, |s| s.at);
        if started.elapsed() - last >= EVERY || started.elapsed() >= total {
            let s = sample(&sup.sup, started, &c);
            eprintln!(
                "soak: {:>4.0}s rounds {} instances {} tool calls {} executed / {} denied, \
                 RSS {}, fds {}, cgroup dirs {}, workspaces {}, journal {}",
                s.at.as_secs_f64(),
                s.rounds,
                s.instances,
                s.executed,
                s.denied,
                Unit::Bytes.fmt(s.rss),
                s.fds,
                s.cgroup_dirs,
                s.workspaces,
                Unit::Bytes.fmt(s.journal)
            );
            samples.push(s);
        }
    }
    print_report(&samples, &c, total);
    Ok(())
}

fn print_report(samples: &[Sample], c: &Counts, total: Duration) {
    println!(
        "corral-bench --soak {} — {} cores — {WIDTH}-way fan-outs, {CALLS} tool calls per \
         instance\n",
        Unit::Time.fmt(total.as_secs_f64()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| t (s) | rounds | instances | tool calls executed | denied | RSS | open fds | cgroup \
         dirs | workspaces | journal (db+wal) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in samples {
        println!(
            "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64(),
            s.rounds,
            s.instances,
            s.executed,
            s.denied,
            Unit::Bytes.fmt(s.rss),
            s.fds,
            s.cgroup_dirs,
            s.workspaces,
            Unit::Bytes.fmt(s.journal)
        );
    }
    let mib = |v: f64| Unit::Bytes.fmt(v);
    let n = |v: f64| format!("{v:.0}");
    println!();
    for line in [
        verdict(samples, "RSS", |s| s.rss, 4.0 * 1024.0 * 1024.0, mib),
        verdict(samples, "open fds", |s| s.fds as f64, 8.0, n),
        verdict(samples, "cgroup dirs", |s| s.cgroup_dirs as f64, 4.0, n),
        verdict(samples, "workspaces", |s| s.workspaces as f64, 4.0, n),
        verdict(samples, "journal", |s| s.journal, 0.0, mib)
            + " (the journal keeps every run unless [supervisor] journal_keep is set)",
    ] {
        println!("- {line}");
    }
    let last = samples.last().cloned().unwrap_or_default();
    let calls = last.executed + last.denied;
    println!(
        "- {} rounds, {} instances, {calls} tool calls ({} executed by the broker, {} denied \
         in plan runs); {} failed instance(s){}",
        c.rounds,
        c.instances,
        last.executed,
        last.denied,
        c.failed,
        c.first_failure
            .as_ref()
            .map(|f| format!(", the first: {f}"))
            .unwrap_or_default()
    );
    if c.broker_errors > 0 {
        println!(
            "- {} call(s) through the broker did not succeed (counted as denied above); the first: {}",
            c.broker_errors,
            c.first_broker_error.as_deref().unwrap_or("?")
        );
    }
    let real = last.at >= Duration::from_secs(600) && calls >= 10_000;
    println!(
        "- a real soak is ≥ 10 minutes and ≥ 10 000 tool calls: {}",
        if real {
            "this one is"
        } else {
            "this one is NOT (a short check)"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_number_and_a_unit() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["60", "s", "", "0s", "10 parsecs", "-5s", "1.5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Sample {
                rounds: i as u64,
                instances: i as u64 * 600,
                fds: *v as u64,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn a_column_that_stays_is_flat_and_one_that_climbs_grows() {
        let n = |v: f64| format!("{v:.0}");
        let flat = samples(&[15.0, 53.0, 53.0, 54.0, 53.0, 53.0]);
        let v = verdict(&flat, "fds", |s| s.fds as f64, 8.0, n);
        assert!(v.starts_with("fds: flat"), "{v}");
        let leak = samples(&[15.0, 53.0, 90.0, 130.0, 170.0, 210.0]);
        let v = verdict(&leak, "fds", |s| s.fds as f64, 8.0, n);
        assert!(v.starts_with("fds: GROWS from 53 to 210"), "{v}");
        let none = samples(&[15.0]);
        let v = verdict(&none, "fds", |s| s.fds as f64, 8.0, n);
        assert!(v.contains("not enough samples"), "{v}");
    }
}
