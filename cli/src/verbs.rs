//! The verbs: `validate`, `call` and `demo`, each returning the process's exit code.

use crate::approve::TerminalApprover;
use crate::defaults::{load_config, start};
use corral::config::exposure;
use corral::tools::Broker;
use corral::{CallOptions, ExitRecord};
use corral_proto::Value;
use std::path::Path;
use std::process::ExitCode;

/// What `corral validate` does beyond checking.
pub struct Validate {
    /// Start each agent once up to `Ready` (`--start`).
    pub start: bool,
    /// Print the resolved config (`--print`).
    pub print: bool,
}

/// `corral validate`: load the config, check it against this host (every problem, in file
/// order, exit 2), and say per agent what its program is and what its settings give away.
pub async fn validate(path: Option<&Path>, plan: Option<&Path>, how: Validate) -> ExitCode {
    // A file: every problem of its values and of the host at once (the embedded defaults
    // are checked for the host below).
    let local = Path::new("corral.toml");
    let file = path.or_else(|| local.exists().then_some(local));
    let loaded = match file {
        Some(f) => corral::Config::check_all(f),
        None => load_config(None),
    };
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let report = corral::config::check::host(&cfg);
    let notes = report.notes.clone();
    if let Some(e) = report.error() {
        eprintln!("{e}");
        if cfg.path == Path::new(crate::defaults::EMBEDDED) {
            eprintln!("{}", crate::defaults::missing_agents_hint());
        }
        return ExitCode::from(2);
    }
    if let Some(p) = plan {
        let plan = match corral::plan::Plan::load(p, &cfg) {
            Ok(plan) => plan,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        // Field paths against what the agents declare (each asked once, then cached).
        let sup = match start(Ok(cfg.clone())) {
            Ok(s) => s,
            Err(code) => return code,
        };
        sup.disable_prewarm();
        let contracts = corral::plan::contracts(&sup, &plan).await;
        if let Err(e) = plan.check_paths(&contracts) {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        println!(
            "{}: ok, plan `{}` with {} node(s); field paths checked against {} contract(s)",
            p.display(),
            plan.name,
            plan.nodes.len(),
            contracts.len()
        );
    }
    if how.print {
        print!("{}", cfg.render_resolved());
        return ExitCode::SUCCESS;
    }
    println!(
        "{}: ok, {} agent(s): {}",
        cfg.path.display(),
        cfg.agents.len(),
        cfg.agents.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    for problem in cfg.tool_problems() {
        println!("warning: {problem}");
    }
    for (name, note) in &notes {
        println!("agent `{name}`: {note}");
    }
    for (name, spec) in &cfg.agents {
        let found = exposure::assess(spec);
        if found.is_empty() {
            println!("agent `{name}`: fully contained (the default; docs/isolation.md)");
        }
        for e in found {
            println!(
                "agent `{name}`: {}: {}: {}",
                e.level.as_str(),
                e.key,
                e.gives_away
            );
        }
    }
    if how.start {
        return start_each(cfg).await;
    }
    ExitCode::SUCCESS
}

/// `--start`: each agent started once up to `Ready`; exit 1 when one could not start.
async fn start_each(cfg: corral::Config) -> ExitCode {
    let names: Vec<String> = cfg.agents.keys().cloned().collect();
    let sup = match start(Ok(cfg)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    sup.disable_prewarm();
    let mut failed = 0;
    for name in names {
        match sup.probe(&name).await {
            Ok(p) => match &p.contract {
                Some(c) => {
                    println!(
                        "agent `{name}`: started: contract `{}` {}, input {}, output {}, tools [{}]",
                        c.name,
                        c.version,
                        c.input.describe(),
                        c.output.describe(),
                        c.tools.join(", ")
                    );
                    // What the contract asks for and the config never grants: every call of
                    // it will be refused `permission_denied`.
                    let granted = sup
                        .config()
                        .agents
                        .get(&name)
                        .map(|a| a.tools.clone())
                        .unwrap_or_default();
                    for t in c.tools.iter().filter(|t| *t != "*" && !granted.contains(t)) {
                        println!(
                            "agent `{name}`: warning: its contract asks for tool `{t}`, which \
                             its `tools` does not grant: its calls of it will be refused"
                        );
                    }
                }
                None => {
                    failed += 1;
                    let why = p
                        .record
                        .error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_default();
                    println!(
                        "agent `{name}`: did not start: {}: {why}",
                        p.record.reason.as_str()
                    );
                    let tail: Vec<&str> = p.record.stderr_tail.lines().collect();
                    for line in &tail[tail.len().saturating_sub(10)..] {
                        println!("agent `{name}`: stderr: {line}");
                    }
                }
            },
            Err(e) => {
                failed += 1;
                println!("agent `{name}`: did not start: {e}");
            }
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `corral call`: one task on one fresh agent process; its output (or every record, `--json`).
pub async fn call(
    agent: &str,
    path: Option<&Path>,
    input: &str,
    json: bool,
    approve: bool,
) -> ExitCode {
    let input = match crate::input::read_input(input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    let sup = match start(load_config(path)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // One call: a warm stem made after it would only be thrown away at exit.
    sup.disable_prewarm();
    // SIGINT/SIGTERM/SIGHUP stop the agent with escalation and still print its record (reason
    // `shutdown`), instead of leaving it to PDEATHSIG.
    let stop = crate::defaults::stop_on_signals();
    // Tool calls go through the broker of the config's tools.
    let mut broker = Broker::for_supervisor(&sup);
    if approve {
        broker = broker.with_approver(std::sync::Arc::new(TerminalApprover));
    }
    let opts = CallOptions {
        stop: Some(stop),
        tools: Some(std::sync::Arc::new(broker).into()),
        ..Default::default()
    };
    let outcome = match sup.call(agent, Value::from_json(&input), opts).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        let doc = serde_json::json!({
            "run_id": outcome.run_id,
            "output": outcome.output.as_ref().map(Value::to_json),
            "attempts": outcome.attempts,
            "tool_calls_deduplicated": outcome.tool_calls_deduplicated(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if let Some(out) = &outcome.output {
        println!("{}", out.to_json());
    }
    if outcome.ok() {
        ExitCode::SUCCESS
    } else {
        if !json {
            if let Some(last) = outcome.last() {
                eprintln!("corral: {}", describe_failure(last, outcome.attempts.len()));
            }
        }
        ExitCode::from(1)
    }
}

/// One line saying why a task failed.
fn describe_failure(last: &ExitRecord, attempts: usize) -> String {
    let msg = last
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    format!(
        "task failed: {} after {} attempt(s): {}",
        last.reason, attempts, msg
    )
}
