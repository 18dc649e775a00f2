//! Cgroups: the kernel's accounting and limits for a whole attempt, not just one process.
//!
//! rlimits bind a single process; an agent that forks escapes them. This room puts every
//! attempt in a cgroup of its own so that memory, the number of processes and CPU time are
//! limited for the agent and everything it starts, so that "kill the attempt" means every
//! process in it, and so that the kernel's counters (OOM kills, refused forks, peak memory, CPU
//! time) can be read into the exit record afterwards.
//!
//! [`Cgroups::detect`] looks at the machine once per supervisor and picks a backend:
//!
//! - `v2` (`v2.rs`): the unified hierarchy with the controllers delegated to the supervisor's
//!   own cgroup (systemd `Delegate=yes`). Attempts live under `<own>/corral/`.
//! - `v1` (`v1.rs`): one hierarchy per controller (memory, pids, cpu, and freezer for
//!   freezing). Attempts live under `<mount>/<own>/corral/` in each.
//! - `none` (`none.rs`): no usable cgroup (not root, read-only, nothing delegated). Nothing is
//!   enforced and [`Cgroups::report`] says why, limit by limit.
//!
//! Detection never fails; whatever part of the limits the machine can enforce is enforced and
//! the rest is reported ([`Cgroups::unenforceable`] feeds `strict = true` checks).
//!
//! Every attempt directory is named `corral-<pid>-<starttime>-<name>` after the supervisor that
//! made it (pid and its start time from `/proc/<pid>/stat` field 22), so that
//! [`Cgroups::sweep_stale`] can recognise and remove the leftovers of a crashed supervisor
//! without touching those of live ones sharing the same parent cgroup. The intermediate
//! `corral` directory is shared by all supervisors of a parent cgroup: it is created if
//! missing and only removed when empty.
//!
//! The `/proc` files detection reads (`/proc/self/mountinfo`, `/proc/self/cgroup`) are split
//! into fields by the `procfs` crate, line by line so that one line it cannot read is skipped
//! rather than failing detection; it keeps the kernel's octal escapes (`\040` for a space) in
//! mount paths, which are undone here. The start times come from `/proc/<pid>/stat` the same
//! way (see `sandbox::owner`).
//!
//! Besides the backends: `agent.rs` is one attempt's `AgentCgroup`, `mounts.rs` reads where
//! the hierarchies are, `files.rs` holds the file, directory and kill helpers they share.
//!
//! The dispatch is a plain enum over the backends (no trait objects). Nothing here is `unsafe`:
//! attaching the child happens in the child itself, which writes `0` into the
//! `AgentCgroup::attach_fds` before `exec` (the spawn path owns that code).

mod agent;
mod files;
mod mounts;
mod none;
mod v1;
mod v2;

pub(crate) use agent::AgentCgroup;
use agent::{AgentInner, Stats};
use files::{
    flat_members, kill_pass, kill_until_empty, leaf_names_in, members, mkdir_existing_ok,
    mkdir_leaf, read_file, read_keyed, read_number, rmdir_shared_if_empty, rmdir_tree, writable,
    write_file,
};
use mounts::{parse_mountinfo, parse_proc_cgroup};
pub(crate) use mounts::{CgroupMount, OwnCgroup};

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

/// Name of the directory, inside the supervisor's own cgroup, that holds the attempts' leaves.
pub(crate) const CORRAL_DIR: &str = "corral";
/// Prefix of every attempt's leaf directory.
pub(crate) const LEAF_PREFIX: &str = "corral-";
/// CFS period written with every CPU quota, in microseconds.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long [`AgentCgroup::kill_all`] waits for the cgroup to empty.
const KILL_DEADLINE: Duration = Duration::from_secs(1);
/// How long `rmdir` is retried while the kernel still reports the cgroup busy.
const RMDIR_DEADLINE: Duration = Duration::from_millis(500);
/// Longest directory name the kernel accepts.
const NAME_MAX: usize = 255;

/// Limits for one attempt, as resolved from the config. `None` means "no limit".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    /// Memory (anonymous + page cache) in bytes; swap is limited to nothing where possible.
    pub memory: Option<u64>,
    /// Number of processes (and threads) in the attempt.
    pub pids: Option<u64>,
    /// CPU time as a fraction of one core (`0.5` = half a core, `2.0` = two cores).
    pub cpu_quota: Option<f64>,
}

/// Which kind of cgroup the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The unified hierarchy (cgroup v2).
    V2,
    /// The legacy per-controller hierarchies (cgroup v1).
    V1,
    /// No cgroup: nothing enforced by the kernel, no statistics.
    None,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::V2 => "cgroup v2",
            Backend::V1 => "cgroup v1",
            Backend::None => "none",
        })
    }
}

/// What went wrong with a cgroup file or directory. Every variant names the operation and the
/// path, so that the message alone says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `mkdir` of a cgroup directory failed.
    #[error("create dir {}: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `rmdir` of a cgroup directory failed (EBUSY: processes are still inside).
    #[error("remove dir {}: {source}", .path.display())]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Listing a cgroup directory failed.
    #[error("list dir {}: {source}", .path.display())]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Opening a cgroup file failed.
    #[error("open {}: {source}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading a cgroup file failed.
    #[error("read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing a value into a cgroup file failed (a limit, a pid, a freeze request).
    #[error("write {value:?} to {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A cgroup file did not have the expected shape.
    #[error("parse {}: {detail}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// `kill(pid, SIGKILL)` failed for a member of the cgroup.
    #[error("kill pid {pid} in {}: {source}", .path.display())]
    Kill {
        /// The process.
        pid: u32,
        /// The cgroup it was listed in.
        path: PathBuf,
        /// The underlying error.
        source: Errno,
    },
    /// Processes were still listed after killing and waiting.
    #[error("kill all in {}: {pids:?} still inside after {waited:?}", .path.display())]
    NotEmpty {
        /// The cgroup.
        path: PathBuf,
        /// Who was still listed.
        pids: Vec<u32>,
        /// How long we waited.
        waited: Duration,
    },
    /// A limit cannot be written as asked.
    #[error("invalid {limit} limit {value}: {why}")]
    InvalidLimit {
        /// `memory`, `pids` or `cpu_quota`.
        limit: &'static str,
        /// The value asked for.
        value: String,
        /// Why it is refused.
        why: &'static str,
    },
}

/// The three limits, in the order used by the per-limit tables below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupLimit {
    Memory = 0,
    Pids = 1,
    Cpu = 2,
}

impl CgroupLimit {
    const ALL: [CgroupLimit; 3] = [CgroupLimit::Memory, CgroupLimit::Pids, CgroupLimit::Cpu];

    /// The name users see (config key, `unenforceable` entries).
    fn name(self) -> &'static str {
        match self {
            CgroupLimit::Memory => "memory",
            CgroupLimit::Pids => "pids",
            CgroupLimit::Cpu => "cpu_quota",
        }
    }

    /// The controller that enforces it.
    fn controller(self) -> &'static str {
        match self {
            CgroupLimit::Memory => "memory",
            CgroupLimit::Pids => "pids",
            CgroupLimit::Cpu => "cpu",
        }
    }

    fn wanted(self, limits: &CgroupLimits) -> bool {
        match self {
            CgroupLimit::Memory => limits.memory.is_some(),
            CgroupLimit::Pids => limits.pids.is_some(),
            CgroupLimit::Cpu => limits.cpu_quota.is_some(),
        }
    }
}

/// For each [`CgroupLimit`]: how the backend enforces it (`Ok`), or why it cannot (`Err`).
pub(crate) type Enforcement = [Result<String, String>; 3];

#[cfg(test)]
use crate::sandbox::owner::parse_stat_start_time;
pub(crate) use crate::sandbox::owner::Owner;

/// The backend chosen at detection.
#[derive(Debug, Clone)]
enum Inner {
    V2(v2::V2),
    V1(std::sync::Arc<v1::V1>),
    None,
}

/// The cgroup manager: one per supervisor process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cgroups {
    inner: Inner,
    owner: Owner,
    /// How (or why not) each limit is enforced.
    enforcement: Enforcement,
}

impl Cgroups {
    /// Look at the machine and pick the backend that enforces the most of memory, pids and cpu
    /// (v2 on a tie). Never fails: without a usable cgroup the backend is [`Backend::None`] and
    /// [`Cgroups::report`] carries the reasons.
    ///
    /// On v2 this may move the supervisor from its own cgroup into a `supervisor` leaf below it
    /// so that controllers can be enabled for the `corral` subtree (the no-internal-processes
    /// rule), as systemd-delegated daemons do.
    pub fn detect() -> Cgroups {
        let owner = Owner::current();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let proc_cgroup = match fs::read_to_string("/proc/self/cgroup") {
            Ok(s) => s,
            Err(e) => {
                return Cgroups::disabled_with(
                    owner,
                    &format!("cannot read /proc/self/cgroup: {e}"),
                )
            }
        };
        let mounts = parse_mountinfo(&mountinfo);
        let own = parse_proc_cgroup(&proc_cgroup);

        let v2 = v2::probe(&mounts, &own);
        let v1 = v1::probe(&mounts, &own);
        let count = |e: &Enforcement| e.iter().filter(|r| r.is_ok()).count();
        let (n2, n1) = (
            v2.as_ref().map_or(0, |(_, e)| count(e)),
            v1.as_ref().map_or(0, |(_, e)| count(e)),
        );
        let chosen = match (v2, v1) {
            (Ok((v2, e)), _) if n2 > 0 && n2 >= n1 => (Inner::V2(v2), e),
            (_, Ok((v1, e))) if n1 > 0 => (Inner::V1(std::sync::Arc::new(v1)), e),
            (r2, r1) => {
                let why = |limit: CgroupLimit| {
                    let w2 = match &r2 {
                        Ok((_, e)) => e[limit as usize].clone().err().unwrap_or_default(),
                        Err(w) => w.clone(),
                    };
                    let w1 = match &r1 {
                        Ok((_, e)) => e[limit as usize].clone().err().unwrap_or_default(),
                        Err(w) => w.clone(),
                    };
                    Err(format!("v2: {w2}; v1: {w1}"))
                };
                (Inner::None, CgroupLimit::ALL.map(why))
            }
        };
        let cgroups = Cgroups {
            inner: chosen.0,
            owner,
            enforcement: chosen.1,
        };
        tracing::debug!(
            backend = %cgroups.backend(),
            enforcement = ?cgroups.enforcement,
            "cgroups detected"
        );
        cgroups
    }

    /// A manager that uses no cgroup at all (e.g. cgroups switched off in the config).
    pub fn disabled(reason: &str) -> Cgroups {
        Cgroups::disabled_with(Owner::current(), reason)
    }

    fn disabled_with(owner: Owner, reason: &str) -> Cgroups {
        Cgroups {
            inner: Inner::None,
            owner,
            enforcement: CgroupLimit::ALL.map(|_| Err(reason.to_string())),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::V2(_) => Backend::V2,
            Inner::V1(_) => Backend::V1,
            Inner::None => Backend::None,
        }
    }

    /// One line per limit: how it is enforced here, or why it is not; limits that are not
    /// wanted say so (and what would enforce them).
    pub fn report(&self, wanted: &CgroupLimits) -> Vec<String> {
        CgroupLimit::ALL
            .iter()
            .map(|&limit| {
                let name = limit.name();
                match (&self.enforcement[limit as usize], limit.wanted(wanted)) {
                    (Ok(how), true) => format!("{name}: {how}"),
                    (Err(why), true) => format!("{name}: not enforced: {why}"),
                    (Ok(how), false) => format!("{name}: no limit set (would be {how})"),
                    (Err(why), false) => {
                        format!("{name}: no limit set (could not be enforced: {why})")
                    }
                }
            })
            .collect()
    }

    /// Which of the wanted limits cannot be enforced here (`memory`, `pids`, `cpu_quota`).
    pub fn unenforceable(&self, wanted: &CgroupLimits) -> Vec<&'static str> {
        CgroupLimit::ALL
            .iter()
            .filter(|&&l| l.wanted(wanted) && self.enforcement[l as usize].is_err())
            .map(|l| l.name())
            .collect()
    }

    /// Make the leaf cgroup(s) of one attempt, named `corral-<pid>-<starttime>-<name>`, and
    /// write the limits that this backend enforces (the others are ignored: see
    /// [`Cgroups::unenforceable`]). `name` must be unique per attempt; characters other than
    /// ASCII letters, digits, `.`, `_` and `-` are replaced by `_`.
    pub(crate) fn create(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<AgentCgroup, CgroupError> {
        validate(limits)?;
        let leaf: std::sync::Arc<str> = leaf_name(self.owner, name).into();
        let inner = match &self.inner {
            Inner::V2(v2) => AgentInner::V2(v2.create(&leaf, limits)?),
            Inner::V1(v1) => AgentInner::V1(v1.create(&leaf, limits)?),
            Inner::None => AgentInner::None(none::NoneLeaf),
        };
        tracing::debug!(leaf = &*leaf, paths = ?inner.paths(), "cgroup created");
        Ok(AgentCgroup::new(inner, leaf, false))
    }

    /// Remove the leftover attempt cgroups of supervisors that no longer exist: kill whatever
    /// still runs in them, then `rmdir`. Leaves of live supervisors (this one included) are
    /// never touched. Returns how many attempts were removed; an attempt that cannot be
    /// removed is logged and skipped. Fails only when a `corral` directory cannot be listed.
    pub fn sweep_stale(&self) -> Result<usize, CgroupError> {
        let candidates = match &self.inner {
            Inner::V2(v2) => v2.leaf_names()?,
            Inner::V1(v1) => v1.leaf_names()?,
            Inner::None => return Ok(0),
        };
        let mut removed = 0;
        for leaf in candidates {
            let Some(owner) = parse_leaf_owner(&leaf) else {
                continue;
            };
            if owner == self.owner || !owner.is_gone() {
                continue;
            }
            let name: std::sync::Arc<str> = leaf.as_str().into();
            let inner = match &self.inner {
                Inner::V2(v2) => AgentInner::V2(v2.leaf(&leaf)),
                Inner::V1(v1) => AgentInner::V1(v1.leaf(&name)),
                Inner::None => unreachable!("returned above"),
            };
            let cgroup = AgentCgroup::new(inner, name, true);
            let killed = match cgroup.kill_all() {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(leaf, error = %e, "stale cgroup: kill failed");
                    0
                }
            };
            match cgroup.remove() {
                Ok(()) => {
                    tracing::info!(leaf, killed, owner_pid = owner.pid, "removed stale cgroup");
                    removed += 1;
                }
                Err(e) => tracing::warn!(leaf, error = %e, "stale cgroup: remove failed"),
            }
        }
        Ok(removed)
    }
}

/// Refuse limits no backend could write.
fn validate(limits: &CgroupLimits) -> Result<(), CgroupError> {
    if let Some(q) = limits.cpu_quota {
        if !q.is_finite() || q <= 0.0 {
            return Err(CgroupError::InvalidLimit {
                limit: "cpu_quota",
                value: q.to_string(),
                why: "must be a finite number of cores above 0",
            });
        }
    }
    Ok(())
}

/// The CFS quota in microseconds per [`CPU_PERIOD_US`] for a fraction of one core.
fn cpu_quota_us(fraction: f64) -> u64 {
    ((fraction * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US)
}

/// `corral-<pid>-<start>-<name>`, with `name` made safe for a directory name and the whole
/// cut to the kernel's limit.
fn leaf_name(owner: Owner, name: &str) -> String {
    let mut leaf = format!("{LEAF_PREFIX}{}-", owner.tag());
    leaf.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '_'
        }
    }));
    leaf.truncate(NAME_MAX);
    leaf
}

/// The owner encoded in a leaf name, if it is one of ours.
fn parse_leaf_owner(leaf: &str) -> Option<Owner> {
    Owner::parse(leaf, LEAF_PREFIX)
}

#[cfg(test)]
mod tests;
