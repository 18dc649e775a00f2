//! Plan runs that outlive the daemon: each submitted plan run is remembered in
//! `<state_dir>/plans/<run_id>.json` (its plan's path and text, and its input) until it ends;
//! a daemon that starts finds the ones its predecessor left (a crash, or a drain that stopped
//! them) and resumes each from the journal, re-running only the instances that did not finish.

use super::Daemon;
use crate::plan::{run_plan, Plan, PlanOptions};
use corral_proto::Value;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a plan run needs to be resumed.
#[derive(Serialize, Deserialize)]
struct Remembered {
    path: String,
    text: String,
    input: serde_json::Value,
}

fn dir(d: &Daemon) -> PathBuf {
    d.sup.config().supervisor.state_dir.join("plans")
}

/// Remember plan run `run_id` until [`forget`].
pub(super) fn remember(d: &Daemon, run_id: &str, path: &str, text: &str, input: &Value) {
    let r = Remembered {
        path: path.to_string(),
        text: text.to_string(),
        input: input.to_json(),
    };
    let dir = dir(d);
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        let bytes = serde_json::to_vec(&r).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".{run_id}.json"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(format!("{run_id}.json")))
    });
    if let Err(e) = written {
        tracing::warn!(
            run = run_id,
            "cannot remember the plan run for a restart: {e}"
        );
    }
}

/// Plan run `run_id` ended: nothing to resume.
pub(super) fn forget(d: &Daemon, run_id: &str) {
    let _ = std::fs::remove_file(dir(d).join(format!("{run_id}.json")));
}

/// Resume every plan run a previous daemon left unfinished, in the background.
pub(super) fn resume_left(d: &Arc<Daemon>) {
    let Ok(entries) = std::fs::read_dir(dir(d)) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.path();
        let Some(run_id) = file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .filter(|n| !n.starts_with('.'))
            .map(str::to_string)
        else {
            continue;
        };
        let d = d.clone();
        tokio::spawn(async move { resume_one(&d, &run_id, &file).await });
    }
}

async fn resume_one(d: &Arc<Daemon>, run_id: &str, file: &Path) {
    let left = std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok());
    let Some(left) = left else {
        tracing::warn!(run = run_id, file = %file.display(), "unreadable; not resumed");
        return;
    };
    let plan = match Plan::parse(&left.text, Path::new(&left.path), d.sup.config()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                run = run_id,
                "plan no longer valid with this config; not resumed: {e}"
            );
            return;
        }
    };
    let view = d
        .sup
        .journal()
        .and_then(|j| j.reader().ok())
        .and_then(|r| r.run(run_id).ok().flatten());
    tracing::info!(run = run_id, plan = %plan.name, "resuming a plan run left by the previous daemon");
    // Under way like a submitted run: in `status` and the metrics, cancelled by `corral
    // cancel`, stopped by a drain.
    let (handle, stop) = crate::Stop::new();
    d.runs.lock().unwrap_or_else(|p| p.into_inner()).insert(
        run_id.to_string(),
        super::state::RunEntry {
            what: plan.name.clone(),
            stop: Some(handle),
            task: None,
        },
    );
    let why = stop.clone();
    let opts = PlanOptions {
        input: Value::from_json(&left.input),
        resume: view,
        run_id: Some(run_id.to_string()),
        stop: Some(stop),
        progress: Some(d.plan_progress()),
    };
    match run_plan(d.sup.clone(), &plan, opts).await {
        Ok(o) => {
            tracing::info!(
                run = run_id,
                status = o.status.as_str(),
                "resumed plan run ended"
            );
            super::handler::finished(d, run_id, o.status.as_str());
            // Left for the next daemon again only when this one's drain stopped it.
            if o.status != crate::plan::PlanStatus::Cancelled
                || why.reason() != Some(crate::ExitReason::Shutdown)
            {
                forget(d, run_id);
            }
        }
        Err(e) => {
            // Not run (another supervisor may run it now, see `plan::run_plan`): kept for the
            // next daemon.
            d.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(run_id);
            tracing::warn!(run = run_id, "resumed plan run failed: {e}");
        }
    }
}
