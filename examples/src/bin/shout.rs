//! `shout`: a typed agent with a strict contract. Input `{"text": S, "lie": B?}`, output
//! `{"shout": S}`. With `"lie": true` it answers with an output that breaks its own contract,
//! which the supervisor must catch (`contract_violation`).

use corral_sdk::{run_value, AgentError, Contract, Schema, SideEffects, Value};

fn main() -> std::process::ExitCode {
    let contract = Contract::new("shout", env!("CARGO_PKG_VERSION"))
        .input(
            Schema::object()
                .field("text", Schema::String)
                .optional("lie", Schema::Bool),
        )
        .output(Schema::object().field("shout", Schema::String))
        .side_effects(SideEffects::ReadOnly);
    run_value(contract, |ctx, input| {
        ctx.progress();
        let text = input
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| AgentError::new("invalid_input", "text must be a string", false))?;
        if input.get("lie").and_then(Value::as_bool) == Some(true) {
            return Ok(Value::map([("shout", Value::Int(text.len() as i64))]));
        }
        Ok(Value::map([("shout", Value::from(text.to_uppercase()))]))
    })
}
