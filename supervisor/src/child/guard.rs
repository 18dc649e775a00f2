//! A dropped attempt still ends its process. [`Teardown`] holds what an attempt must not leave
//! behind (its process tree, cgroup, workspace and log drain); when the attempt's future is
//! dropped before it got through its own teardown (a caller's timeout, `select!`, an aborted
//! task, a runtime shutting down), the tree is SIGKILLed at once and the wait, the reap and the
//! removals are left to the reaper thread (see [`process::kill_and_reap`]): the thread that
//! dropped the future, a runtime worker maybe, never blocks.

use crate::sandbox::cgroup::AgentCgroup;
use crate::sandbox::process::{self, PidFd};
use std::sync::Arc;

/// See the module docs. Disarmed by [`Teardown::disarm`] once the attempt has torn down (a
/// leader not reaped by then is still killed and reaped when it drops).
pub(super) struct Teardown {
    pid: i32,
    pidfd: PidFd,
    /// The leader has been reaped: its pid (and group id) may be someone else's now.
    reaped: bool,
    cgroup: Option<Arc<AgentCgroup>>,
    workspace: Option<crate::sandbox::workspace::Workspace>,
    logs: Option<tokio::task::AbortHandle>,
}

impl Teardown {
    /// Guard the process `pidfd` (pid `pid`), its cgroup and its workspace.
    pub(super) fn new(
        pid: i32,
        pidfd: PidFd,
        cgroup: Option<Arc<AgentCgroup>>,
        workspace: crate::sandbox::workspace::Workspace,
    ) -> Teardown {
        Teardown {
            pid,
            pidfd,
            reaped: false,
            cgroup,
            workspace: Some(workspace),
            logs: None,
        }
    }

    /// The process.
    pub(super) fn pidfd(&self) -> &PidFd {
        &self.pidfd
    }

    /// The task draining stdout and stderr: aborted if the attempt is dropped.
    pub(super) fn set_logs(&mut self, logs: tokio::task::AbortHandle) {
        self.logs = Some(logs);
    }

    /// The leader has been reaped.
    pub(super) fn set_reaped(&mut self) {
        self.reaped = true;
    }

    /// The workspace, for the attempt to keep or remove itself.
    pub(super) fn take_workspace(&mut self) -> Option<crate::sandbox::workspace::Workspace> {
        self.workspace.take()
    }

    /// The attempt has torn down by itself (removed its cgroup, kept or removed its workspace,
    /// waited for its log drain).
    pub(super) fn disarm(&mut self) {
        self.cgroup = None;
        self.workspace = None;
        self.logs = None;
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(logs) = self.logs.take() {
            logs.abort();
        }
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
            process::kill_and_reap(self.pid, self.pidfd.try_clone_fd().ok(), rest);
        }
    }
}
