//! Whether an agent's program is one its uid can reach: an interpreter installed under a
//! private home (pyenv under `/root`, mode 0700) is not, and the attempt would fail to start.
//! Read from the host's file system for `corral validate`; says what to grant.

use super::AgentSpec;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What keeps the agent's uid from its program, and what to grant; `None` when nothing does
/// (or the program cannot be found, which the spawn reports).
pub fn unreachable_program(spec: &AgentSpec) -> Option<String> {
    let program = spec.command.first()?;
    let resolved = crate::sandbox::spawn::resolve_program(Path::new(program)).ok()?;
    let real = std::fs::canonicalize(&resolved).ok()?;
    if spec.readonly_paths.iter().any(|p| real.starts_with(p)) {
        return None;
    }
    let closed = closed_ancestor(&real)?;
    // An interpreter's prefix: the directory above its `bin`.
    let grant = real
        .parent()
        .filter(|d| d.ends_with("bin"))
        .and_then(Path::parent)
        .or_else(|| real.parent())
        .unwrap_or(&real)
        .to_path_buf();
    Some(format!(
        "the program `{program}` is `{}`, under `{}`, which other users may not enter: the \
         agent's uid cannot run it. Use one under /usr, or grant it: readonly_paths = [\"{}\"] \
         and name the interpreter itself in `command` (a pyenv shim runs pyenv, not python)",
        real.display(),
        closed.display(),
        grant.display()
    ))
}

/// The first directory on the way to `path` that others may not search (no `o+x`).
fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_under_a_closed_directory_is_named_with_what_to_grant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let bin = home.join("py/bin");
        std::fs::create_dir_all(&bin).expect("dirs");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let prog = bin.join("python3");
        std::fs::write(&prog, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut spec = AgentSpec::builtin("a", vec![prog.display().to_string()]);
        let said = unreachable_program(&spec).expect("named");
        assert!(
            said.contains(&format!(
                "readonly_paths = [\"{}\"]",
                home.join("py").display()
            )),
            "{said}"
        );
        spec.readonly_paths = vec![home.join("py")];
        assert_eq!(unreachable_program(&spec), None);
    }

    #[test]
    fn a_system_program_is_reachable() {
        let spec = AgentSpec::builtin("a", vec!["/bin/true".into()]);
        assert_eq!(unreachable_program(&spec), None);
    }
}
