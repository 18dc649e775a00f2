//! `merger`: reconciles the readers' findings into one review, for the plan of `corral demo`.
//! Input `{"parts": [reader outputs], "extra": V?}`; output `{"files", "lines", "code_lines",
//! "todos", "unsafe_blocks", "largest": [the three longest files], "notes": [memory received],
//! "extra": V}`.

use corral_sdk::{run_value, AgentError, Contract, SideEffects, Value};

fn int(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}

fn main() -> std::process::ExitCode {
    let contract =
        Contract::new("merger", env!("CARGO_PKG_VERSION")).side_effects(SideEffects::ReadOnly);
    run_value(contract, |ctx, input| {
        let Some(Value::List(parts)) = input.get("parts") else {
            return Err(AgentError::new(
                "invalid_input",
                "`parts` must be a list of reader outputs",
                false,
            ));
        };
        let sum = |k: &str| parts.iter().map(|p| int(p, k)).sum::<i64>();
        let mut by_size: Vec<&Value> = parts.iter().collect();
        by_size.sort_by_key(|p| std::cmp::Reverse(int(p, "lines")));
        let largest = by_size
            .iter()
            .take(3)
            .map(|p| {
                Value::map([
                    ("path", p.get("path").cloned().unwrap_or(Value::Null)),
                    ("lines", Value::Int(int(p, "lines"))),
                ])
            })
            .collect();
        ctx.progress();
        Ok(Value::map([
            ("files", Value::Int(parts.len() as i64)),
            ("lines", Value::Int(sum("lines"))),
            ("code_lines", Value::Int(sum("code_lines"))),
            ("todos", Value::Int(sum("todos"))),
            ("unsafe_blocks", Value::Int(sum("unsafe_blocks"))),
            ("largest", Value::List(largest)),
            ("notes", Value::List(ctx.memory().to_vec())),
            ("extra", input.get("extra").cloned().unwrap_or(Value::Null)),
        ]))
    })
}
