//! The journal's verbs: `runs` (recent runs), `show` (one run's timeline) and `replay` (run a
//! recorded task again and compare), each returning the process's exit code.

use crate::defaults::{load_config, start};
use corral::journal::{self, CallView, Reader, RunFilter, RunStatus, RunView};
use corral::replay::{self, ReplayReport};
use corral::Config;
use std::path::Path;
use std::process::ExitCode;

/// Longest JSON shown on one line of a readable timeline; `--json` gives it whole.
const SHOWN: usize = 200;

/// The journal's reader for the config at `path`, or the exit code after saying why not.
fn reader(path: Option<&Path>) -> Result<(Config, Box<dyn Reader + Send>), ExitCode> {
    let cfg = load_config(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })?;
    let db = cfg.supervisor.state_dir.join("corral.db");
    let reader = journal::open_reader(&db).map_err(|e| {
        eprintln!("corral: {e}");
        ExitCode::from(2)
    })?;
    Ok((cfg, reader))
}

/// One recorded run, or the exit code after saying it is unknown (2).
fn find(reader: &dyn Reader, run_id: &str) -> Result<RunView, ExitCode> {
    match reader.run(run_id) {
        Ok(Some(run)) => Ok(run),
        Ok(None) => {
            eprintln!("corral: no run `{run_id}` in the journal");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("corral: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// `corral runs`: recent runs, newest first.
pub fn runs(
    path: Option<&Path>,
    json: bool,
    limit: usize,
    agent: Option<String>,
    status: Option<RunStatus>,
) -> ExitCode {
    let (_, reader) = match reader(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let rows = match reader.runs(&RunFilter {
        limit,
        agent,
        status,
    }) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<28} {:<16} {:<12} {:<24} {:<24} {:>8}",
        "RUN", "AGENT", "STATUS", "STARTED", "ENDED", "ATTEMPTS"
    );
    for r in rows {
        println!(
            "{:<28} {:<16} {:<12} {:<24} {:<24} {:>8}",
            r.run_id,
            r.agent,
            r.status.as_str(),
            r.started_at,
            r.ended_at.as_deref().unwrap_or("-"),
            r.attempts
        );
    }
    ExitCode::SUCCESS
}

/// `corral show RUN_ID`: the timeline of one run.
pub fn show(path: Option<&Path>, run_id: &str, json: bool) -> ExitCode {
    let (_, reader) = match reader(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let run = match find(&*reader, run_id) {
        Ok(run) => run,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
    } else {
        print!("{}", timeline(&run));
    }
    ExitCode::SUCCESS
}

/// `v` as one line of JSON, cut to [`SHOWN`] characters.
fn brief(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
        None => s,
    }
}

/// A run as readable text.
fn timeline(run: &RunView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} · {} · {} · {} → {}",
        run.run_id,
        run.agent,
        run.status.as_str(),
        run.started_at,
        run.ended_at.as_deref().unwrap_or("(not ended)")
    );
    for call in &run.calls {
        call_timeline(&mut out, call);
    }
    out
}

fn call_timeline(out: &mut String, call: &CallView) {
    use std::fmt::Write;
    // A plan's node instance, or an agent called by another: said first.
    let place = call.events.iter().find_map(|e| {
        let p = &e.payload;
        match e.kind.as_str() {
            "node" => {
                let node = p.get("node")?.as_str()?;
                let at = match p.get("index").and_then(|i| i.as_u64()) {
                    Some(i) => format!("node {node}[{i}]"),
                    None => format!("node {node}"),
                };
                Some(match p.get("parent").and_then(|x| x.as_str()) {
                    Some(parent) => format!("{at} (in place of {parent}) · "),
                    None => format!("{at} · "),
                })
            }
            "child" => Some(format!(
                "called by task {} · ",
                p.get("parent_call").and_then(|c| c.as_u64()).unwrap_or(0)
            )),
            _ => None,
        }
    });
    let _ = writeln!(
        out,
        "\ncall {} · {}agent {}",
        call.call,
        place.unwrap_or_default(),
        call.agent
    );
    let _ = writeln!(out, "  input:  {}", brief(&call.input));
    let _ = writeln!(out, "  memory: {}", brief(&call.memory));
    for rec in &call.attempts {
        let field = |k: &str| rec.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let text = |k: &str| {
            rec.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string()
        };
        let attempt = field("attempt").as_u64().unwrap_or(0) as u32;
        if field("running") == true {
            let _ = writeln!(
                out,
                "  attempt {attempt} · {} → (no end recorded: under way, or its supervisor \
                 went away)",
                text("started_at"),
            );
        } else {
            let _ = writeln!(
                out,
                "  attempt {attempt} · {} → {} ({} ms) · {} · decision {}",
                text("started_at"),
                text("ended_at"),
                field("duration_ms"),
                text("reason"),
                text("decision"),
            );
        }
        if let Some(e) = rec.get("error").filter(|e| !e.is_null()) {
            let _ = writeln!(out, "    error: {}", brief(e));
        }
        for t in call.tool_calls.iter().filter(|t| t.attempt == attempt) {
            let _ = writeln!(
                out,
                "    tool {} {} {} → {} {} ({} ms)",
                t.seq,
                t.tool,
                brief(&t.args),
                t.status,
                brief(&t.result),
                t.duration_ms
            );
        }
        for ev in call.events.iter().filter(|e| e.attempt == attempt) {
            let _ = writeln!(out, "    {}: {}", ev.kind, brief(&ev.payload));
        }
    }
    match (&call.output, &call.error) {
        (Some(o), _) => {
            let _ = writeln!(out, "  output: {}", brief(o));
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "  failed: {}", brief(e));
        }
        (None, None) => {
            let _ = writeln!(out, "  (no outcome recorded)");
        }
    }
}

/// `corral replay RUN_ID`: 0 identical, 1 divergent, 2 unknown run or set-up error.
pub async fn replay(path: Option<&Path>, run_id: &str, json: bool) -> ExitCode {
    let (cfg, reader) = match reader(path) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let run = match find(&*reader, run_id) {
        Ok(run) => run,
        Err(code) => return code,
    };
    drop(reader);
    let sup = match start(Ok(cfg)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    sup.disable_prewarm();
    let report = match replay::replay(&sup, &run).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", readable(&report));
    }
    if report.identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A replay's report as readable text.
fn readable(r: &ReplayReport) -> String {
    match &r.divergence {
        None => format!(
            "run {}: replay identical (same tool calls, same outcome)\n",
            r.run_id
        ),
        Some(d) => format!(
            "run {}: replay diverged at {} {}\n  recorded: {}\n  replayed: {}\n",
            r.run_id,
            d.kind,
            d.seq,
            brief(&d.recorded),
            brief(&d.replayed)
        ),
    }
}
