//! `corral run`: a plan run with live progress (a bar per node on a terminal, plain lines
//! otherwise), or one JSON object with `--json`. Exit 0 succeeded, 3 degraded, 1 failed or
//! cancelled, 2 usage, config or plan errors.

use crate::defaults::{load_config, start};
use corral::journal;
use corral::plan::{run_plan, NodeReport, Plan, PlanOptions, PlanStatus};
use corral::Value;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::input::read_input;

/// `corral run PLAN`.
pub async fn run(
    plan_path: &Path,
    config: Option<&Path>,
    input: Option<&str>,
    json: bool,
    resume: Option<&str>,
) -> ExitCode {
    let input = match input.map(read_input) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let plan = match Plan::load(plan_path, &cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let resumed = match resume {
        None => None,
        Some(id) => {
            let db = cfg.supervisor.state_dir.join("corral.db");
            let view = journal::open_reader(&db).and_then(|r| r.run(id));
            match view {
                Ok(Some(v)) => Some(v),
                Ok(None) => {
                    eprintln!("corral: no run `{id}` in the journal");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("corral: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let sup = match start(Ok(cfg)) {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    sup.disable_prewarm();
    // Field paths against what the agents declare (each asked once, then cached).
    let contracts = corral::plan::contracts(&sup, &plan).await;
    if let Err(e) = plan.check_paths(&contracts) {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let stop = crate::defaults::stop_on_signals();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let shown = if json {
        None
    } else {
        Some(tokio::spawn(show_progress(
            rx,
            std::io::stderr().is_terminal(),
        )))
    };
    // Resumed without --input: the input the run was started with.
    let input = input
        .or_else(|| resumed.as_ref().and_then(|v| v.input.clone()))
        .unwrap_or(serde_json::Value::Null);
    let opts = PlanOptions {
        input: Value::from_json(&input),
        resume: resumed,
        stop: Some(stop),
        progress: Some(tx),
        run_id: None,
    };
    let outcome = run_plan(sup.clone(), &plan, opts).await;
    if let Some(s) = shown {
        let _ = s.await;
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).unwrap_or_default()
        );
    } else {
        if let Some(out) = &outcome.output {
            println!("{out}");
        }
        eprintln!(
            "run {}: {} ({} instance(s)); see `corral show {}`",
            outcome.run_id,
            outcome.status.as_str(),
            outcome.nodes.len(),
            outcome.run_id
        );
    }
    match outcome.status {
        PlanStatus::Succeeded => ExitCode::SUCCESS,
        PlanStatus::Degraded => ExitCode::from(3),
        PlanStatus::Failed | PlanStatus::Cancelled => ExitCode::from(1),
    }
}

/// Progress as instances start and end: a bar per node on a terminal, else a line per end.
async fn show_progress(mut rx: tokio::sync::mpsc::UnboundedReceiver<NodeReport>, terminal: bool) {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut failed: HashMap<String, u64> = HashMap::new();
    while let Some(r) = rx.recv().await {
        if !terminal {
            if r.status != "running" {
                let reason = r.attempts.last().map(|a| a.reason.as_str()).unwrap_or("-");
                eprintln!(
                    "{} {} ({} attempt(s), last {reason})",
                    r.id,
                    r.status,
                    r.attempts.len()
                );
            }
            continue;
        }
        let bar = bars.entry(r.node.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(r.node.clone());
            b
        });
        match r.status {
            "running" => bar.inc_length(1),
            "resumed" => {
                bar.inc_length(1);
                bar.inc(1);
            }
            status => {
                bar.inc(1);
                if status != "succeeded" {
                    let n = failed.entry(r.node.clone()).or_default();
                    *n += 1;
                    bar.set_message(format!("{n} {status}"));
                }
            }
        }
    }
    for b in bars.values() {
        b.finish();
    }
}
