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
    for why in degraded() {
        println!("warning: isolation degraded: {why}");
    }
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
        "run {} ended {} ({} instances).\nSee it:    {me} show {}\nReplay it: {me} replay {}   (one task)\nMisbehaving agents one by one: {me} demo --chaos",
        outcome.run_id,
        outcome.status.as_str(),
        outcome.nodes.len(),
        outcome.run_id,
        outcome.run_id,
        me = me(),
    );
    match outcome.status {
        PlanStatus::Succeeded | PlanStatus::Degraded => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// The running binary, as a command a shell can run: `corral` when that is what `PATH` finds,
/// else its path.
pub fn me() -> String {
    let exe = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("corral"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    });
    match exe {
        Some(e) if on_path.as_ref() == e.canonicalize().ok().as_ref() => "corral".into(),
        Some(e) => e.display().to_string(),
        None => "corral".into(),
    }
}

/// Why isolation is weaker on this host than the defaults ask, one reason a line (empty when
/// nothing is missing).
pub fn degraded() -> Vec<String> {
    let mut why = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        why.push(
            "not running as root: agents run as your own uid (no uid of their own, no \
             cgroups unless delegated)"
                .to_string(),
        );
    }
    let wanted = corral::sandbox::cgroup::CgroupLimits {
        memory: Some(1),
        pids: Some(1),
        cpu_quota: Some(1.0),
    };
    let missing = corral::sandbox::cgroup::Cgroups::detect().unenforceable(&wanted);
    for m in &missing {
        why.push(format!(
            "no cgroup {m} controller here: the {m} limit is not enforced by a cgroup"
        ));
    }
    if let Err(e) = corral::sandbox::landlock::abi() {
        why.push(format!(
            "{e}: readonly_paths/writable_paths are not enforced"
        ));
    }
    why
}

/// One row of `demo --chaos`: the call, what it shows, and how it must end.
struct Row {
    agent: &'static str,
    input: &'static str,
    shows: &'static str,
    /// The reason of the last attempt; `None`: any (the row is skipped from the check).
    ends: Option<&'static str>,
}

const fn row(
    agent: &'static str,
    input: &'static str,
    ends: &'static str,
    shows: &'static str,
) -> Row {
    Row {
        agent,
        input,
        shows,
        ends: Some(ends),
    }
}

/// `corral demo --chaos`: real agents on the embedded defaults, misbehaving on purpose. Exit 1
/// when a row does not end as it should.
pub async fn chaos() -> ExitCode {
    let sup = match start(embedded()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!("corral demo --chaos: real agent processes on the embedded defaults\n");
    let degraded = degraded();
    let memory_cgroup = !degraded.iter().any(|d| d.contains("cgroup memory"));
    for why in &degraded {
        println!("warning: isolation degraded: {why}");
    }
    if !degraded.is_empty() {
        println!();
    }
    let mut cases = vec![
        row(
            "echo",
            r#"{"hello":"world"}"#,
            "completed",
            "a well-behaved agent: one attempt, its output",
        ),
        row(
            "chaos",
            r#"{"do":"ok"}"#,
            "completed",
            "the chaos agent behaving: completed",
        ),
        row(
            "chaos",
            r#"{"do":"fail","retryable":false}"#,
            "agent_error",
            "a structured failure marked not retryable: one attempt, no retry",
        ),
        row(
            "chaos",
            r#"{"do":"exit","code":3}"#,
            "exit_code",
            "an exit before finishing: retried by policy, then given up",
        ),
        row(
            "chaos",
            r#"{"do":"crash"}"#,
            "signal",
            "a crash (abort): the signal recorded by name, retried",
        ),
        row(
            "chaos",
            r#"{"do":"garbage"}"#,
            "protocol_violation",
            "bytes that are not a frame: a protocol violation",
        ),
        row(
            "chaos",
            r#"{"do":"huge_frame"}"#,
            "protocol_violation",
            "a frame claiming 4 GiB: refused before anything is read",
        ),
        row(
            "chaos",
            r#"{"do":"hang"}"#,
            "hung",
            "no heartbeat: killed after heartbeat_timeout",
        ),
        Row {
            agent: "chaos",
            input: r#"{"do":"hog_mb","mb":600}"#,
            shows: "600 MiB against a 512 MiB limit: killed by the cgroup's OOM killer",
            ends: memory_cgroup.then_some("oom_killed"),
        },
        row(
            "chaos",
            r#"{"do":"read","path":"/root/.profile"}"#,
            "completed",
            "reading the host's files: not in the agent's root (its answer says why)",
        ),
    ];
    if crate::defaults::python_agent().is_some() {
        cases.push(row(
            "pyecho",
            r#"{"lang":"python"}"#,
            "completed",
            "an agent in Python (the corral_agent SDK)",
        ));
    }
    println!(
        "{:<6} {:<34} {:<9} {:<28} {:>5} {:>8}  detail",
        "agent", "input", "result", "reasons", "tries", "ms"
    );
    let mut unexpected = Vec::new();
    for case in &cases {
        let (agent, input) = (case.agent, case.input);
        println!("\n# {}", case.shows);
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
                let last = reasons.last().copied().unwrap_or("none");
                if case.ends.is_some_and(|want| want != last) {
                    unexpected.push(format!(
                        "{agent} {input}: ended {last}, expected {}",
                        case.ends.unwrap_or("")
                    ));
                }
            }
            Err(e) => {
                println!("{agent:<6} {input:<34} error: {e}");
                unexpected.push(format!("{agent} {input}: {e}"));
            }
        }
    }
    if crate::defaults::python_agent().is_none() {
        println!("\npyecho (a Python agent) skipped: no python3 in the system paths on PATH");
    }
    println!(
        "\nEvery attempt above has a full exit record: try\n  {} call chaos --input '{{\"do\":\"crash\"}}' --json",
        me()
    );
    if unexpected.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "\ncorral demo: {} row(s) did not end as expected:",
            unexpected.len()
        );
        for u in &unexpected {
            eprintln!("  {u}");
        }
        ExitCode::from(1)
    }
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
