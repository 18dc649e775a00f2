//! What the host says about a config that parsed: the checks a file alone cannot make, run by
//! `corral validate` (as errors) and when a supervisor starts (as warnings; the spawn gives
//! the final word). Each problem is located at the key that causes it.
//!
//! Checked per agent: the program, resolved exactly as the spawn resolves it (and which file a
//! bare name became), executable by the agent's uid, and startable inside its sandbox (the
//! program and a `#!` interpreter reachable by a dynamic uid and visible in the agent's root);
//! `cwd`, `readonly_paths` and `writable_paths` exist; `user` and `group` exist; `open_files`
//! within the host's `fs.nr_open`. Nothing here changes the host.

use super::resolve::Ctx;
use super::schema::Settings;
use super::{AgentSpec, Config, ConfigError, Location, Namespace};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where an agent's keys are set in the file (its own table first, else `[defaults]`), kept so
/// that a problem found later, on the resolved values, can point at its key.
#[derive(Debug, Clone, Default)]
pub struct Places {
    /// The agent's table name.
    pub table: Option<Location>,
    /// Keys set (`command`, `cwd`, `user`, …) and where; list items as `key[i]`.
    pub keys: BTreeMap<String, Location>,
}

impl Places {
    pub(super) fn of(ctx: &Ctx<'_>, table: usize, defaults: &Settings, own: &Settings) -> Places {
        let mut keys = BTreeMap::new();
        let mut put = |key: &str, span: Option<std::ops::Range<usize>>| {
            if let Some(span) = span {
                keys.insert(key.to_string(), ctx.location(span.start));
            }
        };
        let program = own
            .command
            .as_ref()
            .and_then(|c| c.get_ref().first().map(Spanned::span));
        put("command", program);
        let one =
            |f: fn(&Settings) -> Option<std::ops::Range<usize>>| f(own).or_else(|| f(defaults));
        put("cwd", one(|s| s.cwd.as_ref().map(Spanned::span)));
        put("user", one(|s| s.user.as_ref().map(Spanned::span)));
        put("group", one(|s| s.group.as_ref().map(Spanned::span)));
        let open_files = one(|s| s.open_files.as_ref().map(Spanned::span));
        put("open_files", open_files.map(|v| ctx.key_span(v)));
        let cpu_quota = one(|s| s.cpu_quota.as_ref().map(Spanned::span));
        put("cpu_quota", cpu_quota.map(|v| ctx.key_span(v)));
        for key in ["readonly_paths", "writable_paths"] {
            let list = |s: &Settings| match key {
                "readonly_paths" => s
                    .readonly_paths
                    .as_ref()
                    .map(|v| v.iter().map(Spanned::span).collect::<Vec<_>>()),
                _ => s
                    .writable_paths
                    .as_ref()
                    .map(|v| v.iter().map(Spanned::span).collect::<Vec<_>>()),
            };
            for (i, span) in list(own)
                .or_else(|| list(defaults))
                .into_iter()
                .flatten()
                .enumerate()
            {
                put(&format!("{key}[{i}]"), Some(span));
            }
        }
        Places {
            table: Some(ctx.location(table)),
            keys,
        }
    }
}

/// What the host says about a config: problems (each at its key) and notes (what a bare
/// program name became).
#[derive(Debug, Default)]
pub struct HostReport {
    /// What would make an agent fail to start, located.
    pub problems: Vec<ConfigError>,
    /// Per agent, what was found (`command: `python3` is /usr/bin/python3`).
    pub notes: Vec<(String, String)>,
}

impl HostReport {
    /// The problems as one error (in file order), if any.
    pub fn error(self) -> Option<ConfigError> {
        ConfigError::from_all(self.problems)
    }
}

/// Check every agent of `config` against this host.
pub fn host(config: &Config) -> HostReport {
    let mut report = HostReport::default();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    for (name, spec) in &config.agents {
        let places = config.places.get(name).cloned().unwrap_or_default();
        let mut problem = |key: &str, message: String| {
            let location = places.keys.get(key).copied().or(places.table);
            report.problems.push(ConfigError::Invalid {
                path: config.path.clone(),
                location,
                message: format!("agent `{name}`: {message}"),
            });
        };
        if let Some(note) = program(spec, &mut |m| problem("command", m)) {
            report.notes.push((name.clone(), note));
        }
        if let Some(cwd) = &spec.cwd {
            if let Some(why) = missing_dir(cwd) {
                problem("cwd", format!("cwd {}: {why}", cwd.display()));
            }
        }
        for (key, list) in [
            ("readonly_paths", &spec.readonly_paths),
            ("writable_paths", &spec.writable_paths),
        ] {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = std::fs::metadata(p) {
                    problem(
                        &format!("{key}[{i}]"),
                        format!("{key}: {}: {e}", p.display()),
                    );
                }
            }
        }
        if !spec.dynamic_user() {
            if let Some(user) = &spec.user {
                if let Some(why) = no_user(user) {
                    problem("user", format!("user `{user}`: {why}"));
                }
            }
        }
        if let Some(group) = &spec.group {
            if let Some(why) = no_group(group) {
                problem("group", format!("group `{group}`: {why}"));
            }
        }
        if let (Some(n), Some(max)) = (spec.open_files, nr_open) {
            if n > max {
                problem(
                    "open_files",
                    format!(
                        "open_files = {n} is more than this host allows a process \
                         (fs.nr_open = {max})"
                    ),
                );
            }
        }
    }
    // A command tool's program, as an agent's (it runs in an agent's sandbox): found now, not
    // at its first call.
    for (name, tool) in &config.tools {
        if let crate::config::ToolKind::Command(spec) = &tool.kind {
            let _ = program(spec, &mut |m| {
                report.problems.push(ConfigError::Invalid {
                    path: config.path.clone(),
                    location: None,
                    message: format!("tool `{name}`: {m}"),
                })
            });
        }
    }
    report
}

/// Why `dir` cannot be a working directory, if it cannot.
fn missing_dir(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_dir() => Some("not a directory".into()),
        Ok(_) => None,
    }
}

fn no_user(user: &str) -> Option<String> {
    if user.parse::<u32>().is_ok() {
        return None;
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => None,
        Ok(None) => Some("no such user on this host".into()),
        Err(e) => Some(format!("cannot look it up: {e}")),
    }
}

fn no_group(group: &str) -> Option<String> {
    if group.parse::<u32>().is_ok() {
        return None;
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(_)) => None,
        Ok(None) => Some("no such group on this host".into()),
        Err(e) => Some(format!("cannot look it up: {e}")),
    }
}

/// The program as the spawn will find it: problems reported, the file it is returned as a
/// note.
fn program(spec: &AgentSpec, problem: &mut dyn FnMut(String)) -> Option<String> {
    let given = spec.command.first()?;
    let resolved = match crate::sandbox::spawn::resolve_program(Path::new(given)) {
        Ok(p) => p,
        Err(e) => {
            problem(format!("command: {e}"));
            return None;
        }
    };
    let meta = match std::fs::metadata(&resolved) {
        Ok(m) => m,
        Err(e) => {
            problem(format!("command: {}: {e}", resolved.display()));
            return None;
        }
    };
    if !meta.is_file() {
        problem(format!("command: {} is not a file", resolved.display()));
        return None;
    }
    let mode = meta.permissions().mode();
    let bit = if spec.dynamic_user() { 0o001 } else { 0o111 };
    if mode & bit == 0 {
        let who = if spec.dynamic_user() {
            "by other users (the agent runs as a uid of its own)"
        } else {
            "(no execute permission)"
        };
        problem(format!(
            "command: {} (mode {:o}) is not executable {who}",
            resolved.display(),
            mode & 0o7777
        ));
    }
    if let Some(why) = super::reach::unreachable_program(spec) {
        problem(format!("command: {why}"));
    }
    if let Some(interp) = interpreter(&resolved) {
        if let Some(why) = unstartable(spec, &interp) {
            problem(format!(
                "command: {} starts with `#!{}`, {why}",
                resolved.display(),
                interp.display()
            ));
        }
    }
    let real = std::fs::canonicalize(&resolved).unwrap_or_else(|_| resolved.clone());
    let shown = if real == resolved {
        format!("{}", resolved.display())
    } else {
        format!("{} ({})", resolved.display(), real.display())
    };
    Some(format!("command: `{given}` is {shown}"))
}

/// The interpreter of a `#!` script.
fn interpreter(program: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(program).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?.trim();
    let first = text.split_whitespace().next()?;
    Some(PathBuf::from(first))
}

/// Why the agent could not run `interp` inside its sandbox, if it could not.
fn unstartable(spec: &AgentSpec, interp: &Path) -> Option<String> {
    let meta = match std::fs::metadata(interp) {
        Ok(m) => m,
        Err(e) => return Some(format!("which cannot be found: {e}")),
    };
    if spec.dynamic_user() && meta.permissions().mode() & 0o001 == 0 {
        return Some("which other users may not execute".into());
    }
    let real = std::fs::canonicalize(interp).unwrap_or_else(|_| interp.to_path_buf());
    let granted = |p: &Path| {
        crate::sandbox::rootfs::SYSTEM_PATHS
            .iter()
            .any(|s| p.starts_with(s))
            || spec
                .readonly_paths
                .iter()
                .chain(&spec.writable_paths)
                .any(|g| p.starts_with(g))
    };
    if spec.namespaces.contains(&Namespace::Mount) && !granted(&real) {
        return Some(format!(
            "which is outside the agent's root ({} is neither a system path nor in \
             readonly_paths): grant its directory in readonly_paths",
            real.display()
        ));
    }
    if spec.dynamic_user() {
        let probe = AgentSpec {
            command: vec![real.display().to_string()],
            ..spec.clone()
        };
        if let Some(why) = super::reach::unreachable_program(&probe) {
            return Some(format!("and {why}"));
        }
    }
    None
}

#[cfg(test)]
#[path = "check/tests.rs"]
mod tests;
