//! The verbs: `validate`, `call` and `demo`, each returning the process's exit code.

use crate::approve::TerminalApprover;
use crate::defaults::{load_config, start};
use corral::config::exposure;
use corral::tools::Broker;
use corral::{CallOptions, ExitReason, ExitRecord, Stop};
use corral_proto::Value;
use std::path::Path;
use std::process::ExitCode;

/// `corral validate`: load the config and say, per agent, what its settings give away.
pub fn validate(path: Option<&Path>, plan: Option<&Path>) -> ExitCode {
    match load_config(path) {
        Ok(cfg) => {
            if let Some(p) = plan {
                match corral::plan::Plan::load(p, &cfg) {
                    Ok(plan) => println!(
                        "{}: ok, plan `{}` with {} node(s)",
                        p.display(),
                        plan.name,
                        plan.nodes.len()
                    ),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                }
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
            for (name, spec) in &cfg.agents {
                let found = exposure::assess(spec);
                if let Some(why) = corral::config::reach::unreachable_program(spec) {
                    println!("agent `{name}`: warning: command: {why}");
                }
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
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
    let input: serde_json::Value = match serde_json::from_str(input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("corral: --input is not valid JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let sup = match start(load_config(path)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // One call: a warm stem made after it would only be thrown away at exit.
    sup.disable_prewarm();
    // SIGINT/SIGTERM stop the agent with escalation and still print its record (reason
    // `shutdown`), instead of leaving it to PDEATHSIG.
    let (stop_handle, stop) = Stop::new();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        stop_handle.stop(ExitReason::Shutdown);
    });
    // Tool calls go through the broker of the config's tools.
    let mut broker = Broker::for_supervisor(&sup);
    if approve {
        broker = broker.with_approver(std::sync::Arc::new(TerminalApprover));
    }
    let (tools, _broker_task) = std::sync::Arc::new(broker).serve();
    let opts = CallOptions {
        stop: Some(stop),
        tools: Some(tools),
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
