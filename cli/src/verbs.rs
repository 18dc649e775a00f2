//! The verbs: `validate`, `call` and `demo`, each returning the process's exit code.

use crate::defaults::{embedded, load_config, start};
use corral::config::exposure;
use corral::{CallOptions, ExitReason, ExitRecord, Stop};
use corral_proto::Value;
use std::path::Path;
use std::process::ExitCode;

/// `corral validate`: load the config and say, per agent, what its settings give away.
pub fn validate(path: Option<&Path>) -> ExitCode {
    match load_config(path) {
        Ok(cfg) => {
            println!(
                "{}: ok, {} agent(s): {}",
                cfg.path.display(),
                cfg.agents.len(),
                cfg.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            );
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
pub async fn call(agent: &str, path: Option<&Path>, input: &str, json: bool) -> ExitCode {
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
    let opts = CallOptions {
        stop: Some(stop),
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
            "output": outcome.output.as_ref().map(Value::to_json),
            "attempts": outcome.attempts,
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

/// `corral demo`: real agents on the embedded defaults, misbehaving on purpose.
pub async fn demo() -> ExitCode {
    let sup = match start(embedded()) {
        Ok(s) => s,
        Err(code) => return code,
    };
    println!("corral demo: real agent processes on the embedded defaults\n");
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
