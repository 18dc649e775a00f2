//! `corral demo`: a real multi-agent plan on the embedded defaults — a review of a source tree
//! by a lister, one isolated reader per file and a merger, with agents that crash, hang and fail
//! on purpose — and, with `--chaos`, the table of single agents misbehaving.

use crate::defaults::{demo_tree, embedded, start};
use corral::plan::{run_plan, Plan, PlanOptions, PlanStatus};
use corral::{CallOptions, Value};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// The plan the demo runs.
const REVIEW: &str = include_str!("../../examples/plans/review.toml");

/// The tree reviewed: corral's own sources, written out as real files.
const TREE: &[(&str, &str)] = &[
    ("proto/lib.rs", include_str!("../../proto/src/lib.rs")),
    ("proto/frame.rs", include_str!("../../proto/src/frame.rs")),
    ("proto/value.rs", include_str!("../../proto/src/value.rs")),
    (
        "proto/message.rs",
        include_str!("../../proto/src/message.rs"),
    ),
    (
        "proto/contract.rs",
        include_str!("../../proto/src/contract.rs"),
    ),
    ("proto/beat.rs", include_str!("../../proto/src/beat.rs")),
    (
        "policy/mod.rs",
        include_str!("../../supervisor/src/policy/mod.rs"),
    ),
    (
        "policy/backoff.rs",
        include_str!("../../supervisor/src/policy/backoff.rs"),
    ),
    (
        "policy/breaker.rs",
        include_str!("../../supervisor/src/policy/breaker.rs"),
    ),
    (
        "policy/intensity.rs",
        include_str!("../../supervisor/src/policy/intensity.rs"),
    ),
    (
        "policy/quarantine.rs",
        include_str!("../../supervisor/src/policy/quarantine.rs"),
    ),
    (
        "policy/restart.rs",
        include_str!("../../supervisor/src/policy/restart.rs"),
    ),
    (
        "policy/rng.rs",
        include_str!("../../supervisor/src/policy/rng.rs"),
    ),
    (
        "plan/mod.rs",
        include_str!("../../supervisor/src/plan/mod.rs"),
    ),
    (
        "plan/expr.rs",
        include_str!("../../supervisor/src/plan/expr.rs"),
    ),
    (
        "plan/schedule.rs",
        include_str!("../../supervisor/src/plan/schedule.rs"),
    ),
    ("replay.rs", include_str!("../../supervisor/src/replay.rs")),
    ("record.rs", include_str!("../../supervisor/src/record.rs")),
    ("stop.rs", include_str!("../../supervisor/src/stop.rs")),
    ("clock.rs", include_str!("../../supervisor/src/clock.rs")),
    (
        "agents/echo.rs",
        include_str!("../../examples/src/bin/echo.rs"),
    ),
    (
        "agents/chaos.rs",
        include_str!("../../examples/src/bin/chaos.rs"),
    ),
    (
        "agents/shout.rs",
        include_str!("../../examples/src/bin/shout.rs"),
    ),
    (
        "agents/lister.rs",
        include_str!("../../examples/src/bin/lister.rs"),
    ),
    (
        "agents/reader.rs",
        include_str!("../../examples/src/bin/reader.rs"),
    ),
    (
        "agents/merger.rs",
        include_str!("../../examples/src/bin/merger.rs"),
    ),
    ("agents/review.toml", REVIEW),
    ("cli/main.rs", include_str!("main.rs")),
    ("cli/demo.rs", include_str!("demo.rs")),
    ("README.md", include_str!("../../README.md")),
];

/// Write the tree (directories 0755, files 0644: the agents run as uids of their own).
pub fn write_tree(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, text) in TREE {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
}

/// `corral demo`: the review plan.
pub async fn review() -> ExitCode {
    let tree = demo_tree();
    if let Err(e) = write_tree(&tree) {
        eprintln!("corral: writing the demo's tree {}: {e}", tree.display());
        return ExitCode::from(2);
    }
    let cfg = match embedded() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let plan = match Plan::parse(REVIEW, Path::new("examples/plans/review.toml"), &cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let sup = match start(Ok(cfg)) {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    sup.disable_prewarm();
    println!(
        "corral demo: plan `review` over {} files in {} — a lister, one isolated reader per \
         file, a merger; `catalog` crashes once, `style` hangs once, `spelling` fails (optional)\n",
        TREE.len(),
        tree.display()
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<corral::plan::NodeReport>();
    let printer = tokio::spawn(async move {
        let mut reads = 0;
        while let Some(r) = rx.recv().await {
            if r.status == "running" {
                continue;
            }
            if r.node == "read" && r.status == "succeeded" {
                reads += 1;
                continue;
            }
            let reasons: Vec<&str> = r.attempts.iter().map(|a| a.reason.as_str()).collect();
            println!(
                "  {:<10} {:<10} attempts: {}",
                r.id,
                r.status,
                reasons.join(" → ")
            );
        }
        reads
    });
    let input = Value::map([("root", Value::from(tree.display().to_string()))]);
    let outcome = run_plan(
        sup.clone(),
        &plan,
        PlanOptions {
            input,
            progress: Some(tx),
            ..Default::default()
        },
    )
    .await;
    let reads = printer.await.unwrap_or(0);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    println!("  read[*]    succeeded  {reads} isolated readers, one per file\n");
    if let Some(out) = &outcome.output {
        println!(
            "review: {}\n",
            serde_json::to_string_pretty(out).unwrap_or_default()
        );
    }
    println!(
        "run {} ended {} ({} instances).\nSee it:    corral show {}\nReplay it: corral replay {}   (one task)\nMisbehaving agents one by one: corral demo --chaos",
        outcome.run_id,
        outcome.status.as_str(),
        outcome.nodes.len(),
        outcome.run_id,
        outcome.run_id
    );
    match outcome.status {
        PlanStatus::Succeeded | PlanStatus::Degraded => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// `corral demo --chaos`: real agents on the embedded defaults, misbehaving on purpose.
pub async fn chaos() -> ExitCode {
    let sup = match start(embedded()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!("corral demo --chaos: real agent processes on the embedded defaults\n");
    let cases: &[(&str, &str)] = &[
        ("echo", r#"{"hello":"world"}"#),
        ("chaos", r#"{"do":"ok"}"#),
        ("chaos", r#"{"do":"fail","retryable":false}"#),
        ("chaos", r#"{"do":"exit","code":3}"#),
        ("chaos", r#"{"do":"crash"}"#),
        ("chaos", r#"{"do":"garbage"}"#),
        ("chaos", r#"{"do":"huge_frame"}"#),
        ("chaos", r#"{"do":"hang"}"#),
        ("chaos", r#"{"do":"hog_mb","mb":600}"#),
        ("chaos", r#"{"do":"read","path":"/root/.profile"}"#),
    ];
    println!(
        "{:<6} {:<34} {:<9} {:<28} {:>5} {:>8}  detail",
        "agent", "input", "result", "reasons", "tries", "ms"
    );
    let python = crate::defaults::python_agent().is_some();
    let py_case: &[(&str, &str)] = if python {
        &[("pyecho", r#"{"lang":"python"}"#)]
    } else {
        &[]
    };
    for (agent, input) in cases.iter().chain(py_case) {
        let json: serde_json::Value = serde_json::from_str(input).unwrap_or_default();
        let started = std::time::Instant::now();
        match sup
            .call(agent, Value::from_json(&json), CallOptions::default())
            .await
        {
            Ok(o) => {
                let reasons: Vec<_> = o.attempts.iter().map(|a| a.reason.as_str()).collect();
                let detail = match (&o.output, o.last()) {
                    (Some(out), _) => out.to_json().to_string(),
                    (None, Some(last)) => last
                        .error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                println!(
                    "{:<6} {:<34} {:<9} {:<28} {:>5} {:>8}  {}",
                    agent,
                    input,
                    if o.ok() { "ok" } else { "failed" },
                    dedup(&reasons),
                    o.attempts.len(),
                    started.elapsed().as_millis(),
                    detail
                );
            }
            Err(e) => println!("{agent:<6} {input:<34} error: {e}"),
        }
    }
    if !python {
        println!("pyecho (a Python agent) skipped: no python3 in the system paths on PATH");
    }
    println!("\nEvery attempt above has a full exit record: try\n  corral call chaos --input '{{\"do\":\"crash\"}}' --json");
    ExitCode::SUCCESS
}

fn dedup(reasons: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < reasons.len() {
        let mut j = i;
        while j < reasons.len() && reasons[j] == reasons[i] {
            j += 1;
        }
        out.push(if j - i > 1 {
            format!("{}×{}", reasons[i], j - i)
        } else {
            reasons[i].to_string()
        });
        i = j;
    }
    out.join(",")
}
