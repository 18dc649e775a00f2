//! `toolbox`: an agent that makes the tool calls it is given, for the tests of the tool broker.
//!
//! Its contract declares the tools named in `TOOLBOX_TOOLS` (comma-separated; `*` when unset).
//! Input `{"calls":[{"tool":T,"args":V},…], "fail_attempts":N, "exit_attempts":N}`: it makes
//! the calls in order, then fails (retryable) while its attempt is at most `fail_attempts`, or
//! exits with code 3 while it is at most `exit_attempts`; else it answers
//! `{"attempt":A,"results":[{"ok":true,"value":V}|{"ok":false,"error":{"kind","message","retryable"}},…]}`.

use corral_sdk::{run_value, AgentError, Contract, Ctx, Schema, SideEffects, Value};

fn handle(ctx: &mut Ctx, input: Value) -> Result<Value, AgentError> {
    let calls = match input.get("calls") {
        Some(Value::List(l)) => l.clone(),
        _ => Vec::new(),
    };
    let mut results = Vec::new();
    for c in calls {
        let tool = c
            .get("tool")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let args = c.get("args").cloned().unwrap_or(Value::Null);
        results.push(match ctx.call_tool(&tool, args) {
            Ok(v) => Value::map([("ok", Value::Bool(true)), ("value", v)]),
            Err(e) => Value::map([
                ("ok", Value::Bool(false)),
                (
                    "error",
                    Value::map([
                        ("kind", Value::from(e.kind)),
                        ("message", Value::from(e.message)),
                        ("retryable", Value::Bool(e.retryable)),
                    ]),
                ),
            ]),
        });
        ctx.progress();
    }
    let attempt = i64::from(ctx.attempt());
    let at_most = |key: &str| input.get(key).and_then(Value::as_i64).unwrap_or(0);
    if attempt <= at_most("exit_attempts") {
        std::process::exit(3);
    }
    if attempt <= at_most("fail_attempts") {
        return Err(AgentError::new("flaky", "failing on request", true));
    }
    Ok(Value::map([
        ("attempt", Value::Int(attempt)),
        ("results", Value::List(results)),
    ]))
}

fn main() -> std::process::ExitCode {
    let mut contract = Contract::new("toolbox", env!("CARGO_PKG_VERSION"))
        .input(Schema::Any)
        .output(Schema::Any)
        .side_effects(SideEffects::Destructive);
    let tools = std::env::var("TOOLBOX_TOOLS").unwrap_or_else(|_| "*".into());
    for t in tools.split(',').filter(|t| !t.is_empty()) {
        contract = contract.tool(t);
    }
    run_value(contract, handle)
}
