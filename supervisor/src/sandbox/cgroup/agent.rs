//! One attempt's cgroup(s): attach descriptors, members, kill, counters, removal.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{none, v1, v2, CgroupError};

/// The counters read from an attempt's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Stats {
    pub(super) oom_kills: u64,
    pub(super) pids_limit_hits: u64,
    pub(super) memory_peak_bytes: Option<u64>,
}

#[derive(Debug)]
pub(super) enum AgentInner {
    V2(v2::Leaf),
    V1(v1::Leaf),
    None(none::NoneLeaf),
}

impl AgentInner {
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        match self {
            AgentInner::V2(l) => l.paths(),
            AgentInner::V1(l) => l.paths(),
            AgentInner::None(l) => l.paths(),
        }
    }

    pub(super) fn stats(&self) -> Stats {
        match self {
            AgentInner::V2(l) => l.stats(),
            AgentInner::V1(l) => l.stats(),
            AgentInner::None(l) => l.stats(),
        }
    }
}

/// The cgroup(s) of one attempt. Dropping it kills whatever is still inside and removes the
/// directories (best effort, failures logged); when processes may be inside and the drop
/// happens on an async runtime, that is done on the reaper thread (see
/// [`crate::sandbox::process::defer`]): it waits for the processes to go.
///
/// Counters stay readable after [`AgentCgroup::remove`]: they are read just before the
/// directories go.
#[derive(Debug)]
pub(crate) struct AgentCgroup {
    inner: AgentInner,
    /// (Shared with the leaf, which names its directories by it.)
    name: Arc<str>,
    /// Set once the directories are gone: the last counters read before removal. (Boxed, as
    /// the fds below: an attempt keeps its cgroup for its agent's whole life, and these only
    /// at its start or end.)
    removed: Mutex<Option<Box<Stats>>>,
    /// Attach fds opened ahead of time (see [`AgentCgroup::open_attach_ahead`]).
    attach_ahead: Mutex<Option<Box<[OwnedFd]>>>,
    /// Set once a process may have been put inside (attach fds handed out, or an attach).
    used: AtomicBool,
}

impl AgentCgroup {
    /// The cgroup(s) of leaf `name`; `used` when a process may be inside already.
    pub(super) fn new(inner: AgentInner, name: Arc<str>, used: bool) -> AgentCgroup {
        AgentCgroup {
            inner,
            name,
            removed: Mutex::new(None),
            attach_ahead: Mutex::new(None),
            used: AtomicBool::new(used),
        }
    }

    /// The leaf directory name (`corral-<pid>-<starttime>-<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Open the attach file of each hierarchy in use (`O_WRONLY | O_CLOEXEC`). The child writes
    /// `0` into each before `exec`, which attaches it (and so everything it will start). Empty
    /// without a cgroup backend.
    ///
    /// On v1 the file is `tasks`, not `cgroup.procs`: the child is single-threaded at that
    /// point, so moving its one thread is moving the process, and the kernel moves the calling
    /// thread (`0`) through `tasks` without the global thread-group lock that a `cgroup.procs`
    /// write takes, whose first writer waits for an RCU grace period (~0.3 ms at p50 and the
    /// whole 15–25 ms p99 of an isolated spawn on v1, measured). On v2 it is `cgroup.procs`.
    pub fn attach_fds(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.used.store(true, Ordering::Relaxed);
        if let Some(fds) = self.attach_ahead.lock().ok().and_then(|mut a| a.take()) {
            return Ok(fds.into_vec());
        }
        self.open_attach_fds()
    }

    /// Open the attach fds now (a pool making spare cgroups does this off the spawn path: five
    /// opens on cgroupfs are ~65 µs of an isolated spawn); [`AgentCgroup::attach_fds`] then
    /// hands them out once.
    pub fn open_attach_ahead(&self) -> Result<(), CgroupError> {
        let fds = self.open_attach_fds()?;
        if let Ok(mut a) = self.attach_ahead.lock() {
            *a = Some(fds.into_boxed_slice());
        }
        Ok(())
    }

    fn open_attach_fds(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        let file = match &self.inner {
            AgentInner::V1(_) => "tasks",
            _ => "cgroup.procs",
        };
        self.inner
            .paths()
            .into_iter()
            .map(|p| p.join(file))
            .collect::<Vec<_>>()
            .iter()
            .map(|path| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError::Open {
                        path: path.clone(),
                        source,
                    })
            })
            .collect()
    }

    /// Move an existing process into the attempt's cgroup(s) (fallback to
    /// [`AgentCgroup::attach_fds`]; slower on v1).
    #[cfg(test)]
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        self.used.store(true, Ordering::Relaxed);
        let value = pid.to_string();
        for path in self.procs_files() {
            super::write_file(&path, &value)?;
        }
        Ok(())
    }

    #[cfg(test)]
    fn procs_files(&self) -> Vec<PathBuf> {
        self.inner
            .paths()
            .into_iter()
            .map(|p| p.join("cgroup.procs"))
            .collect()
    }

    /// Every process in the attempt (sub-cgroups included). Empty once removed or without a
    /// backend.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let set = match &self.inner {
            AgentInner::V2(l) => l.members()?,
            AgentInner::V1(l) => l.members()?,
            AgentInner::None(_) => BTreeSet::new(),
        };
        Ok(set.into_iter().collect())
    }

    /// Whether nothing is inside, as a listing of every hierarchy says, when that listing is
    /// small: `false` when a leaf has a sub-cgroup (listing those is for a blocking thread:
    /// [`Self::kill_all_listed`]), when something is inside, or when it cannot be read. `true`
    /// without a backend.
    pub fn seen_empty_flat(&self) -> bool {
        let flat = match &self.inner {
            AgentInner::V2(l) => l.flat_members(),
            AgentInner::V1(l) => l.flat_members(),
            AgentInner::None(_) => Ok(Some(BTreeSet::new())),
        };
        matches!(flat, Ok(Some(pids)) if pids.is_empty())
    }

    /// Kill everything inside and wait (up to about a second) until the cgroup is empty.
    /// Returns how many processes were signalled.
    pub fn kill_all(&self) -> Result<usize, CgroupError> {
        self.kill_all_listed().1
    }

    /// At the end of an attempt whose first process (the one the cgroup was made for) has
    /// exited but is not reaped yet: whether the cgroup's own counter shows nothing else inside
    /// (v1: `pids.current`, which counts tasks until they are reaped, at most 1: that zombie;
    /// v2: `populated 0`). One small read instead of listing every hierarchy; `false` without
    /// such a counter (then list: [`Self::kill_all_listed`]). `true` without a backend.
    pub fn holds_only_exited_leader(&self) -> bool {
        match &self.inner {
            AgentInner::V2(l) => l.unpopulated(),
            AgentInner::V1(l) => l.at_most_one_task(),
            AgentInner::None(_) => true,
        }
    }

    /// Kill everything inside as [`Self::kill_all`] does, and also return the processes found
    /// inside before the kill (what [`Self::pids`] would have said), listing them once: the
    /// pids, then how many were signalled or why the cgroup could not be emptied.
    pub fn kill_all_listed(&self) -> (Vec<u32>, Result<usize, CgroupError>) {
        let listed = match &self.inner {
            AgentInner::V2(l) => l.members(),
            AgentInner::V1(l) => l.members(),
            AgentInner::None(_) => Ok(BTreeSet::new()),
        };
        let before = match listed {
            Ok(before) => before,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let killed = match &self.inner {
            AgentInner::V2(l) => l.kill_listed(&before),
            AgentInner::V1(l) => l.kill_listed(&before),
            AgentInner::None(_) => Ok(0),
        };
        (before.into_iter().collect(), killed)
    }

    fn stats(&self) -> Stats {
        let removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        match removed.as_deref() {
            Some(stats) => *stats,
            None => self.inner.stats(),
        }
    }

    /// What an attempt's end records, each counter file read once: OOM kills, forks refused
    /// because of the pids limit, and the highest memory use (what the tests' accessors below
    /// read one by one).
    pub fn end_counters(&self) -> (u64, u64, Option<u64>) {
        let s = self.stats();
        (s.oom_kills, s.pids_limit_hits, s.memory_peak_bytes)
    }

    /// OOM kills the kernel recorded in the attempt (v2 `memory.events` `oom_kill`, v1
    /// `memory.oom_control` `oom_kill`). `0` without a memory controller.
    #[cfg(test)]
    pub fn oom_kills(&self) -> u64 {
        self.stats().oom_kills
    }

    /// Forks refused because of the pids limit (`pids.events` `max`). `0` without a pids
    /// controller or without the file (older v1 kernels).
    #[cfg(test)]
    pub fn pids_limit_hits(&self) -> u64 {
        self.stats().pids_limit_hits
    }

    /// Highest memory use seen (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    #[cfg(test)]
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.stats().memory_peak_bytes
    }

    /// `rmdir` every directory of the attempt (call [`AgentCgroup::kill_all`] first: a cgroup
    /// with processes cannot be removed). Idempotent. The shared `corral` directory is removed
    /// too when this was its last attempt.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        if removed.is_some() {
            return Ok(());
        }
        let stats = self.inner.stats();
        match &self.inner {
            AgentInner::V2(l) => l.remove()?,
            AgentInner::V1(l) => l.remove()?,
            AgentInner::None(_) => {}
        }
        *removed = Some(Box::new(stats));
        Ok(())
    }

    /// The attempt's directories, one per hierarchy in use (none without a backend).
    #[cfg(test)]
    pub fn paths(&self) -> Vec<PathBuf> {
        self.inner.paths()
    }
}

impl Drop for AgentCgroup {
    fn drop(&mut self) {
        let removed = self
            .removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if removed {
            return;
        }
        let may_wait = self.used.load(Ordering::Relaxed)
            && !crate::sandbox::process::on_reaper()
            && tokio::runtime::Handle::try_current().is_ok();
        if may_wait {
            // Emptying it waits for its processes to go: not on a runtime thread.
            let rest = AgentCgroup {
                inner: std::mem::replace(&mut self.inner, AgentInner::None(none::NoneLeaf)),
                name: self.name.clone(),
                removed: Mutex::new(None),
                attach_ahead: Mutex::new(None),
                used: AtomicBool::new(true),
            };
            crate::sandbox::process::defer(move || drop(rest));
            return;
        }
        if let Err(e) = self.kill_all() {
            tracing::warn!(cgroup = %self.name, error = %e, "dropping cgroup: kill failed");
        }
        if let Err(e) = self.remove() {
            tracing::warn!(cgroup = %self.name, error = %e, "dropping cgroup: remove failed");
        }
    }
}
