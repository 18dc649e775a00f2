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
//! - `v1` (`v1.rs`): one hierarchy per controller (memory, pids, cpu, and cpuacct / freezer
//!   for statistics and freezing). Attempts live under `<mount>/<own>/corral/` in each.
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
//! The dispatch is a plain enum over the backends (no trait objects). Nothing here is `unsafe`:
//! attaching the child happens in the child itself, which writes `0` into the
//! [`AgentCgroup::attach_fds`] before `exec` (the spawn path owns that code).

mod none;
mod v1;
mod v2;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Name of the directory, inside the supervisor's own cgroup, that holds the attempts' leaves.
pub const CORRAL_DIR: &str = "corral";
/// Prefix of every attempt's leaf directory.
pub const LEAF_PREFIX: &str = "corral-";
/// CFS period written with every CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
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
    V1(v1::V1),
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
            (_, Ok((v1, e))) if n1 > 0 => (Inner::V1(v1), e),
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
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<AgentCgroup, CgroupError> {
        validate(limits)?;
        let leaf = leaf_name(self.owner, name);
        let inner = match &self.inner {
            Inner::V2(v2) => AgentInner::V2(v2.create(&leaf, limits)?),
            Inner::V1(v1) => AgentInner::V1(v1.create(&leaf, limits)?),
            Inner::None => AgentInner::None(none::NoneLeaf),
        };
        tracing::debug!(leaf, paths = ?inner.paths(), "cgroup created");
        Ok(AgentCgroup {
            inner,
            name: leaf,
            removed: Mutex::new(None),
            attach_ahead: Mutex::new(None),
            used: AtomicBool::new(false),
        })
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
            let cgroup = AgentCgroup {
                inner: match &self.inner {
                    Inner::V2(v2) => AgentInner::V2(v2.leaf(&leaf)),
                    Inner::V1(v1) => AgentInner::V1(v1.leaf(&leaf)),
                    Inner::None => unreachable!("returned above"),
                },
                name: leaf.clone(),
                removed: Mutex::new(None),
                attach_ahead: Mutex::new(None),
                used: AtomicBool::new(true),
            };
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

/// One cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Which cgroup of the hierarchy appears at the mount point.
    pub root: String,
    /// `true` for `cgroup2`, `false` for `cgroup` (v1).
    pub v2: bool,
    /// Super options: for v1 the controllers (`memory`, `cpu`, `name=systemd`, ...).
    pub options: Vec<String>,
}

impl CgroupMount {
    /// The directory of `own` (a path from `/proc/self/cgroup`) under this mount, when the
    /// mount shows it.
    pub fn dir_of(&self, own: &str) -> Option<PathBuf> {
        let root = self.root.trim_end_matches('/');
        let rel = own.strip_prefix(root)?;
        if !(rel.is_empty() || rel.starts_with('/')) {
            return None;
        }
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        })
    }
}

/// Cgroup mounts in `/proc/self/mountinfo` (fields: id parent dev root mountpoint options
/// [optional...] - fstype source superoptions), split by `procfs`; a line it cannot read is
/// skipped. `procfs` leaves the kernel's octal escapes in paths: they are undone here.
fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let m = procfs::process::MountInfo::from_line(line).ok()?;
            let v2 = match m.fs_type.as_str() {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let mut options: Vec<String> = m
                .super_options
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect();
            options.sort();
            Some(CgroupMount {
                mount_point: PathBuf::from(unescape_mountinfo(&m.mount_point.to_string_lossy())),
                root: unescape_mountinfo(&m.root),
                v2,
                options,
            })
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnCgroup {
    /// `0` for the unified hierarchy.
    pub hierarchy: u32,
    /// Controllers of a v1 hierarchy (`cpu,cpuacct` when co-mounted); empty for v2.
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the cgroup namespace root.
    pub path: String,
}

/// The lines of `/proc/self/cgroup`, parsed by `procfs`; a line it cannot read is skipped.
fn parse_proc_cgroup(text: &str) -> Vec<OwnCgroup> {
    use procfs::FromBufRead;
    text.lines()
        .filter_map(|line| procfs::ProcessCGroups::from_buf_read(line.as_bytes()).ok())
        .flat_map(|groups| groups.0)
        .map(|g| OwnCgroup {
            hierarchy: g.hierarchy,
            controllers: g.controllers,
            path: g.pathname,
        })
        .collect()
}

/// Whether the directory can be written to (`EROFS` on read-only mounts, `EACCES` when not
/// delegated to us).
fn writable(dir: &Path) -> Result<(), String> {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{} is not writable ({e})", dir.display()))
}

// ---------------------------------------------------------------------------------------------
// File helpers shared by the backends.

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `value` in a single `write(2)`, as cgroup files expect.
fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| CgroupError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(value.as_bytes())
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// `mkdir`, treating "already exists" as success.
fn mkdir_existing_ok(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::CreateDir {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `mkdir -p`-like creation of `<shared>/<leaf>` where `shared` is the `corral` directory that
/// other supervisors may remove when they see it empty: retried when it vanishes in between.
fn mkdir_leaf(shared: &Path, leaf: &str) -> Result<PathBuf, CgroupError> {
    let dir = shared.join(leaf);
    let mut tries = 0;
    loop {
        mkdir_existing_ok(shared)?;
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 10 => tries += 1,
            Err(source) => return Err(CgroupError::CreateDir { path: dir, source }),
        }
    }
}

/// Remove the shared `corral` directory if nobody uses it any more.
fn rmdir_shared_if_empty(shared: &Path) {
    if let Err(e) = fs::remove_dir(shared) {
        let benign = matches!(
            e.raw_os_error(),
            Some(libc::EBUSY | libc::ENOTEMPTY | libc::ENOENT | libc::EEXIST)
        );
        if !benign {
            tracing::debug!(
                path = %shared.display(),
                error = %e,
                "cannot remove shared cgroup dir"
            );
        }
    }
}

/// `rmdir` a cgroup directory and any sub-cgroups the agent made in it, deepest first,
/// retrying for a short while on `EBUSY` (exiting tasks are still being released). A missing
/// directory is fine.
fn rmdir_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in sub_dirs(dir)? {
        rmdir_tree(&child)?;
    }
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < RMDIR_DEADLINE =>
            {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::RemoveDir {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Sub-directories of a cgroup directory (sub-cgroups). Missing directory: none.
fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::ListDir {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::ListDir {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Names of our leaves (`corral-*` directories) in a shared `corral` directory.
fn leaf_names_in(shared: &Path, into: &mut BTreeSet<String>) -> Result<(), CgroupError> {
    for dir in sub_dirs(shared)? {
        if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
            if name.starts_with(LEAF_PREFIX) {
                into.insert(name.to_string());
            }
        }
    }
    Ok(())
}

/// Pids in `cgroup.procs` of `dir` and of its sub-cgroups. A missing directory has none.
fn procs_recursive(dir: &Path, into: &mut BTreeSet<u32>) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CgroupError::Read { path, source }),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let pid = line.trim().parse().map_err(|_| CgroupError::Parse {
            path: path.clone(),
            detail: format!("not a pid: {line:?}"),
        })?;
        into.insert(pid);
    }
    for child in sub_dirs(dir)? {
        procs_recursive(&child, into)?;
    }
    Ok(())
}

/// Members of all the given cgroups (and their sub-cgroups).
fn members(dirs: &[&Path]) -> Result<BTreeSet<u32>, CgroupError> {
    let mut pids = BTreeSet::new();
    for dir in dirs {
        procs_recursive(dir, &mut pids)?;
    }
    Ok(pids)
}

/// SIGKILL one member; a process that is already gone is not an error.
fn sigkill(pid: u32, dir: &Path) -> Result<bool, CgroupError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(false);
    };
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(source) => Err(CgroupError::Kill {
            pid,
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// SIGKILL every member of `dirs` once. Returns the pids signalled.
fn kill_pass(dirs: &[&Path]) -> Result<BTreeSet<u32>, CgroupError> {
    let mut killed = BTreeSet::new();
    for pid in members(dirs)? {
        if sigkill(pid, dirs[0])? {
            killed.insert(pid);
        }
    }
    Ok(killed)
}

/// Kill members of `dirs` until none is listed, for at most [`KILL_DEADLINE`]. Pids signalled
/// are added to `killed`.
fn kill_until_empty(dirs: &[&Path], killed: &mut BTreeSet<u32>) -> Result<(), CgroupError> {
    if dirs.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let left = members(dirs)?;
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= KILL_DEADLINE {
            return Err(CgroupError::NotEmpty {
                path: dirs[0].to_path_buf(),
                pids: left.into_iter().collect(),
                waited: started.elapsed(),
            });
        }
        for pid in left {
            if sigkill(pid, dirs[0])? {
                killed.insert(pid);
            }
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// A `key value` line of a flat-keyed cgroup file (`memory.events`, `memory.oom_control`,
/// `pids.events`, `cpu.stat`). Missing file or key: `None`.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A file holding a single number. Missing file: `None`.
fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// One attempt.

/// The counters read from an attempt's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    oom_kills: u64,
    pids_limit_hits: u64,
    memory_peak_bytes: Option<u64>,
    cpu_usage_us: Option<u64>,
}

#[derive(Debug)]
enum AgentInner {
    V2(v2::Leaf),
    V1(v1::Leaf),
    None(none::NoneLeaf),
}

impl AgentInner {
    fn paths(&self) -> Vec<PathBuf> {
        match self {
            AgentInner::V2(l) => l.paths(),
            AgentInner::V1(l) => l.paths(),
            AgentInner::None(l) => l.paths(),
        }
    }

    fn stats(&self) -> Stats {
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
pub struct AgentCgroup {
    inner: AgentInner,
    name: String,
    /// Set once the directories are gone: the last counters read before removal.
    removed: Mutex<Option<Stats>>,
    /// Attach fds opened ahead of time (see [`AgentCgroup::open_attach_ahead`]).
    attach_ahead: Mutex<Option<Vec<OwnedFd>>>,
    /// Set once a process may have been put inside (attach fds handed out, or an attach).
    used: AtomicBool,
}

impl AgentCgroup {
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
            return Ok(fds);
        }
        self.open_attach_fds()
    }

    /// Open the attach fds now (a pool making spare cgroups does this off the spawn path: five
    /// opens on cgroupfs are ~65 µs of an isolated spawn); [`AgentCgroup::attach_fds`] then
    /// hands them out once.
    pub fn open_attach_ahead(&self) -> Result<(), CgroupError> {
        let fds = self.open_attach_fds()?;
        if let Ok(mut a) = self.attach_ahead.lock() {
            *a = Some(fds);
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
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        self.used.store(true, Ordering::Relaxed);
        let value = pid.to_string();
        for path in self.procs_files() {
            write_file(&path, &value)?;
        }
        Ok(())
    }

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

    /// Kill everything inside and wait (up to about a second) until the cgroup is empty.
    /// Returns how many processes were signalled.
    pub fn kill_all(&self) -> Result<usize, CgroupError> {
        match &self.inner {
            AgentInner::V2(l) => l.kill_all(),
            AgentInner::V1(l) => l.kill_all(),
            AgentInner::None(_) => Ok(0),
        }
    }

    fn stats(&self) -> Stats {
        let removed = self.removed.lock().unwrap_or_else(|e| e.into_inner());
        match *removed {
            Some(stats) => stats,
            None => self.inner.stats(),
        }
    }

    /// OOM kills the kernel recorded in the attempt (v2 `memory.events` `oom_kill`, v1
    /// `memory.oom_control` `oom_kill`). `0` without a memory controller.
    pub fn oom_kills(&self) -> u64 {
        self.stats().oom_kills
    }

    /// Forks refused because of the pids limit (`pids.events` `max`). `0` without a pids
    /// controller or without the file (older v1 kernels).
    pub fn pids_limit_hits(&self) -> u64 {
        self.stats().pids_limit_hits
    }

    /// Highest memory use seen (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.stats().memory_peak_bytes
    }

    /// CPU time used, in microseconds (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    pub fn cpu_usage_us(&self) -> Option<u64> {
        self.stats().cpu_usage_us
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
        *removed = Some(stats);
        Ok(())
    }

    /// The attempt's directories, one per hierarchy in use (none without a backend).
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
                name: std::mem::take(&mut self.name),
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

#[cfg(test)]
mod tests;
