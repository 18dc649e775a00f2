//! A dropped attempt still ends its process. [`Teardown`] holds what an attempt must not leave
//! behind (its process tree, cgroup and workspace); when the attempt's future is
//! dropped before it got through its own teardown (a caller's timeout, `select!`, an aborted
//! task, a runtime shutting down), the tree is SIGKILLed at once and the wait, the reap and the
//! removals are left to the reaper thread (see [`process::kill_and_reap`]): the thread that
//! dropped the future, a runtime worker maybe, never blocks.

use crate::sandbox::cgroup::AgentCgroup;
use crate::sandbox::process;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// See the module docs. Disarmed by [`Teardown::disarm`] once the attempt has torn down (a
/// leader not reaped by then is still killed and reaped when it drops).
pub(super) struct Teardown {
    pid: i32,
    pidfd: OwnedFd,
    /// The leader has been reaped: its pid (and group id) may be someone else's now.
    reaped: bool,
    cgroup: Option<Arc<AgentCgroup>>,
    workspace: Option<crate::sandbox::workspace::Workspace>,
}

impl Teardown {
    /// Guard the process `pidfd` (pid `pid`), its cgroup and its workspace.
    pub(super) fn new(
        pid: i32,
        pidfd: OwnedFd,
        cgroup: Option<Arc<AgentCgroup>>,
        workspace: crate::sandbox::workspace::Workspace,
    ) -> Teardown {
        Teardown {
            pid,
            pidfd,
            reaped: false,
            cgroup,
            workspace: Some(workspace),
        }
    }

    /// The process's pidfd.
    pub(super) fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// The process's pid.
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// The process's cgroup, while the attempt has it.
    pub(super) fn cgroup(&self) -> Option<&Arc<AgentCgroup>> {
        self.cgroup.as_ref()
    }

    /// The process's cgroup, for the attempt to hand to the reaper itself.
    pub(super) fn take_cgroup(&mut self) -> Option<Arc<AgentCgroup>> {
        self.cgroup.take()
    }

    /// The workspace's path, while the attempt has it.
    pub(super) fn workspace_path(&self) -> Option<&std::path::Path> {
        self.workspace.as_ref().map(|w| w.path())
    }

    /// The leader has been reaped.
    pub(super) fn set_reaped(&mut self) {
        self.reaped = true;
    }

    /// The workspace, for the attempt to keep or remove itself.
    pub(super) fn take_workspace(&mut self) -> Option<crate::sandbox::workspace::Workspace> {
        self.workspace.take()
    }

    /// The attempt has torn down by itself (handed its cgroup and its workspace to the
    /// reaper, or kept the workspace).
    pub(super) fn disarm(&mut self) {
        self.cgroup = None;
        self.workspace = None;
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.reaped && self.cgroup.is_none() && self.workspace.is_none() {
            return;
        }
        let cgroup = self.cgroup.take();
        let workspace = self.workspace.take();
        let rest = move || {
            if let Some(cg) = cgroup {
                let members = cg.pids().unwrap_or_default();
                if let Err(e) = cg.kill_all() {
                    tracing::warn!(cgroup = cg.name(), "dropped attempt: kill cgroup: {e}");
                }
                // Escapees reparented to us (no pid namespace) are zombies of ours now.
                process::reap_adopted(&members);
                if let Err(e) = cg.remove() {
                    tracing::warn!(cgroup = cg.name(), "dropped attempt: remove cgroup: {e}");
                }
            }
            drop(workspace);
        };
        if self.reaped {
            process::defer(rest);
        } else {
            tracing::debug!(
                pid = self.pid,
                "attempt dropped while its process runs: killed"
            );
            process::kill_and_reap(self.pid, self.pidfd.try_clone().ok(), rest);
        }
    }
}
