//! No cgroup backend: the machine has no cgroup the supervisor can write to (not root, a
//! read-only `/sys/fs/cgroup`, nothing delegated), or cgroups are switched off.
//!
//! An attempt still gets an [`AgentCgroup`](super::AgentCgroup), one that does nothing: no
//! directories, no attach descriptors, nothing to kill, no counters. Limits are then enforced
//! only by rlimits elsewhere in the sandbox, and [`Cgroups::report`](super::Cgroups::report)
//! says why each one is not enforced by a cgroup.

use std::path::PathBuf;

use super::Stats;

/// The attempt "cgroup" of the none backend.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct NoneLeaf;

impl NoneLeaf {
    /// No directories.
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// No counters.
    pub(super) fn stats(&self) -> Stats {
        Stats::default()
    }
}
