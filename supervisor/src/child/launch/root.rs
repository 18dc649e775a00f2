//! What an agent's root is made of (its paths), and roots made ahead of their process: the key
//! that names one and the steps that make one for a workspace (see `sandbox::rootfs` and
//! `WorkspacePool::take_rooted`).

use super::is_root;
use crate::config::AgentSpec;
use crate::sandbox::workspace::Workspace;

/// Arguments naming existing files (a script for an interpreter, a data file): the agent may
/// read them.
pub(super) fn arg_paths(spec: &AgentSpec) -> Vec<std::path::PathBuf> {
    spec.command
        .iter()
        .skip(1)
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute() && p.exists())
        .collect()
}

/// What the agent may read beyond the system paths (its program, its arguments' files, its
/// cwd unless in the workspace, `readonly_paths`) and write (its workspace, with the `.tmp`
/// that is its /tmp, and `writable_paths`).
pub(super) fn agent_paths(
    spec: &AgentSpec,
    resolved: &std::path::Path,
    arg_paths: &[std::path::PathBuf],
    cwd: &std::path::Path,
    workspace: &Workspace,
) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>) {
    // The program where it really is: a link to it (a virtual environment's `bin/python`)
    // cannot be bound, and is seen where a `readonly_paths` directory holds it.
    let real = std::fs::canonicalize(resolved).unwrap_or_else(|_| resolved.to_path_buf());
    let mut read = vec![real];
    read.extend(arg_paths.iter().cloned());
    if !cwd.starts_with(workspace.path()) {
        read.push(cwd.to_path_buf());
    }
    read.extend(spec.readonly_paths.iter().cloned());
    let mut write = vec![workspace.path().to_path_buf()];
    write.extend(spec.writable_paths.iter().cloned());
    (read, write)
}

/// The root of an agent with these paths (see `sandbox::rootfs`).
pub(super) fn root_plan(
    read: &[std::path::PathBuf],
    write: &[std::path::PathBuf],
    init: Option<&std::path::PathBuf>,
    workspace: &Workspace,
    own_proc: bool,
) -> crate::sandbox::rootfs::RootPlan {
    let mut plan = crate::sandbox::rootfs::RootPlan::new();
    for p in read.iter().chain(init) {
        plan.read_only(p);
    }
    for p in write {
        plan.writable(p);
    }
    plan.tmp(&workspace.tmp()).own_proc(own_proc);
    plan
}

/// Roots made ahead (see `WorkspacePool::take_rooted`): for an agent in a mount namespace of
/// its own under a root supervisor, the key naming what its root is made of — each path with
/// its device and inode, so that a program replaced or a directory made anew since gives
/// another key and a stale root is never used — and how to make one for a workspace.
pub(super) struct RootAhead {
    pub(super) key: String,
    resolved: std::path::PathBuf,
    init: Option<std::path::PathBuf>,
}

impl RootAhead {
    pub(super) fn of(agent: &AgentSpec) -> Option<RootAhead> {
        use crate::config::Namespace;
        use std::fmt::Write as _;
        use std::os::unix::fs::MetadataExt;
        if !is_root()
            || !agent.namespaces.contains(&Namespace::Mount)
            || agent.namespaces.contains(&Namespace::User)
            || agent.keep_workspace
        {
            return None;
        }
        let program = agent.command.first()?;
        let resolved =
            crate::sandbox::spawn::resolve_program(std::path::Path::new(program)).ok()?;
        let pid = agent.namespaces.contains(&Namespace::Pid);
        let init = crate::sandbox::init_path().filter(|_| pid).cloned();
        let mut key = format!("{}|{:?}|{pid}|", agent.name, agent.disk);
        let args = arg_paths(agent);
        for p in std::iter::once(&resolved)
            .chain(&args)
            .chain(agent.cwd.iter())
            .chain(&agent.readonly_paths)
            .chain(&agent.writable_paths)
            .chain(init.iter())
        {
            let id = std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
            let _ = write!(key, "{}={id:?};", p.display());
        }
        Some(RootAhead {
            key,
            resolved,
            init,
        })
    }

    /// The steps that make this root of `agent` for `workspace`, ahead of its process.
    pub(super) fn ops(
        &self,
        agent: &AgentSpec,
        workspace: &Workspace,
    ) -> Result<crate::sandbox::rootfs::MountOps, String> {
        let cwd = agent
            .cwd
            .clone()
            .unwrap_or_else(|| workspace.path().to_path_buf());
        let args = arg_paths(agent);
        let (read, write) = agent_paths(agent, &self.resolved, &args, &cwd, workspace);
        let pid = agent.namespaces.contains(&crate::config::Namespace::Pid);
        root_plan(&read, &write, self.init.as_ref(), workspace, pid)
            .compile_ahead()
            .map_err(|e| e.to_string())
    }
}
