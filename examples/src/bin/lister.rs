//! `lister`: lists the source files of a tree, for the review plan of `corral demo`.
//! Input `{"root": DIR, "max": N?}`; output `{"root": DIR, "files": [absolute paths, sorted]}`
//! (regular files ending in `.rs`, `.py`, `.md` or `.toml`, hidden entries skipped, at most `max`,
//! default 500).

use corral_sdk::{run, AgentError, Contract, Schema, SideEffects};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct In {
    root: String,
    max: Option<usize>,
}

#[derive(Serialize)]
struct Out {
    root: String,
    files: Vec<String>,
}

const EXTS: [&str; 4] = ["rs", "py", "md", "toml"];

fn walk(dir: &Path, out: &mut Vec<PathBuf>, max: usize) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= max {
            break;
        }
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = e.file_type()?;
        let path = e.path();
        if kind.is_dir() {
            walk(&path, out, max)?;
        } else if kind.is_file()
            && path
                .extension()
                .is_some_and(|x| EXTS.iter().any(|e| x == *e))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let contract = Contract::new("lister", env!("CARGO_PKG_VERSION"))
        .input(
            Schema::object()
                .field("root", Schema::String)
                .optional("max", Schema::Int),
        )
        .output(
            Schema::object()
                .field("root", Schema::String)
                .field("files", Schema::list(Schema::String)),
        )
        .side_effects(SideEffects::ReadOnly);
    run(contract, |ctx, input: In| {
        let mut files = Vec::new();
        walk(Path::new(&input.root), &mut files, input.max.unwrap_or(500))
            .map_err(|e| AgentError::new("io", format!("{}: {e}", input.root), false))?;
        ctx.progress();
        ctx.remember(format!(
            "listed {} file(s) under {}",
            files.len(),
            input.root
        ));
        Ok(Out {
            root: input.root,
            files: files.iter().map(|p| p.display().to_string()).collect(),
        })
    })
}
