//! `reader`: reads one source file and counts what a reviewer looks at first, for the review
//! plan of `corral demo`. Input `{"path": FILE}`; output `{"path", "lines", "code_lines",
//! "todos", "unsafe_blocks", "longest_line"}`. Each instance sees one file and nothing else.

use corral_sdk::{run, AgentError, Contract, Schema, SideEffects};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct In {
    path: String,
}

#[derive(Serialize)]
struct Out {
    path: String,
    lines: usize,
    code_lines: usize,
    todos: usize,
    unsafe_blocks: usize,
    longest_line: usize,
}

fn main() -> std::process::ExitCode {
    let contract = Contract::new("reader", env!("CARGO_PKG_VERSION"))
        .input(Schema::object().field("path", Schema::String))
        .output(Schema::Any)
        .side_effects(SideEffects::ReadOnly);
    run(contract, |ctx, input: In| {
        let text = std::fs::read_to_string(&input.path)
            .map_err(|e| AgentError::new("io", format!("{}: {e}", input.path), false))?;
        let mut out = Out {
            path: input.path,
            lines: 0,
            code_lines: 0,
            todos: 0,
            unsafe_blocks: 0,
            longest_line: 0,
        };
        for line in text.lines() {
            out.lines += 1;
            let t = line.trim();
            if !t.is_empty() && !t.starts_with("//") && !t.starts_with('#') {
                out.code_lines += 1;
            }
            if t.contains("TODO") || t.contains("FIXME") {
                out.todos += 1;
            }
            if t.contains("unsafe {") {
                out.unsafe_blocks += 1;
            }
            out.longest_line = out.longest_line.max(line.chars().count());
            if out.lines.is_multiple_of(256) {
                ctx.progress();
            }
        }
        ctx.progress();
        Ok(out)
    })
}
