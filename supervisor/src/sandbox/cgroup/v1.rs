//! cgroup v1: one hierarchy per controller, each mounted on its own (usually
//! `/sys/fs/cgroup/<controller>`).
//!
//! For each controller used (memory, pids and cpu for limits; freezer for freezing before a
//! kill; not cpuacct, whose CPU counter no record uses, while its own hierarchy cost an
//! attempt one more `mkdir`, attach and `rmdir`) the supervisor's own directory is the mount
//! point (from `/proc/self/mountinfo`, matched on the controller in the super options) joined with
//! its own path in that hierarchy (from `/proc/self/cgroup`). An attempt gets
//! `<own>/corral/<leaf>` in every such hierarchy; co-mounted controllers (`cpu,cpuacct`) share
//! one directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    cpu_quota_us, flat_members, kill_pass, kill_until_empty, leaf_names_in, members, mkdir_leaf,
    read_file, read_keyed, read_number, rmdir_shared_if_empty, rmdir_tree, writable, write_file,
    CgroupError, CgroupLimits, CgroupMount, Enforcement, OwnCgroup, Stats, CORRAL_DIR,
    CPU_PERIOD_US,
};

/// How long a freeze may take before killing anyway (the kill then lands at thaw).
const FREEZE_DEADLINE: Duration = Duration::from_millis(100);

/// The v1 hierarchies the supervisor can use. Shared (`Arc`) by each attempt's [`Leaf`], which
/// finds its directories from it rather than keeping a path per hierarchy (a thousand idle
/// agents would keep five thousand paths).
#[derive(Debug, Clone)]
pub(super) struct V1 {
    /// The supervisor's own directory in each hierarchy used, without duplicates.
    bases: Vec<PathBuf>,
    /// Index into `bases` per controller, when usable.
    memory: Option<usize>,
    pids: Option<usize>,
    cpu: Option<usize>,
    freezer: Option<usize>,
    /// `memory.memsw.limit_in_bytes` exists (swap accounting is on).
    memsw: bool,
    /// `cpu.cfs_quota_us` exists (the kernel has CFS bandwidth control).
    cfs: bool,
}

/// Where the supervisor's own cgroup for `controller` is, if it is usable.
fn locate(controller: &str, mounts: &[CgroupMount], own: &[OwnCgroup]) -> Result<PathBuf, String> {
    let line = own
        .iter()
        .find(|o| o.hierarchy != 0 && o.controllers.iter().any(|c| c == controller))
        .ok_or_else(|| format!("no v1 {controller} hierarchy in /proc/self/cgroup"))?;
    let candidates: Vec<&CgroupMount> = mounts
        .iter()
        .filter(|m| !m.v2 && m.options.iter().any(|o| o == controller))
        .collect();
    if candidates.is_empty() {
        return Err(format!("the v1 {controller} hierarchy is not mounted"));
    }
    let dir = candidates
        .iter()
        .find_map(|m| m.dir_of(&line.path))
        .ok_or_else(|| {
            format!(
                "own {controller} cgroup {} is outside the mounted part ({})",
                line.path,
                candidates[0].mount_point.display()
            )
        })?;
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    writable(&dir)?;
    Ok(dir)
}

/// Find the hierarchies. `Err` when there is no v1 hierarchy at all; otherwise each limit says
/// how it is enforced or why not.
pub(super) fn probe(
    mounts: &[CgroupMount],
    own: &[OwnCgroup],
) -> Result<(V1, Enforcement), String> {
    if !mounts.iter().any(|m| !m.v2) {
        return Err("no cgroup v1 hierarchy mounted".to_string());
    }
    let mut bases: Vec<PathBuf> = Vec::new();
    let mut index = |dir: PathBuf| match bases.iter().position(|b| *b == dir) {
        Some(i) => i,
        None => {
            bases.push(dir);
            bases.len() - 1
        }
    };
    let memory = locate("memory", mounts, own)
        .and_then(|dir| {
            if dir.join("memory.limit_in_bytes").exists() {
                Ok(dir)
            } else {
                Err(format!("no memory.limit_in_bytes in {}", dir.display()))
            }
        })
        .map(&mut index);
    let pids = locate("pids", mounts, own).map(&mut index);
    let cpu = locate("cpu", mounts, own).map(&mut index);
    let freezer = locate("freezer", mounts, own).map(&mut index).ok();

    let memsw = memory
        .as_ref()
        .is_ok_and(|&i| bases[i].join("memory.memsw.limit_in_bytes").exists());
    let cfs = cpu
        .as_ref()
        .is_ok_and(|&i| bases[i].join("cpu.cfs_quota_us").exists());
    let at = |i: usize| bases[i].join(CORRAL_DIR).display().to_string();
    let enforcement: Enforcement = [
        memory.as_ref().map_err(Clone::clone).map(|&i| {
            let swap = if memsw {
                " + memory.memsw.limit_in_bytes (no swap)"
            } else {
                " (no swap accounting: memory.memsw.* missing)"
            };
            format!("cgroup v1 memory.limit_in_bytes{swap} under {}", at(i))
        }),
        pids.as_ref()
            .map_err(Clone::clone)
            .map(|&i| format!("cgroup v1 pids.max under {}", at(i))),
        cpu.as_ref().map_err(Clone::clone).and_then(|&i| {
            if cfs {
                Ok(format!(
                    "cgroup v1 cpu.cfs_quota_us per cpu.cfs_period_us {CPU_PERIOD_US} under {}",
                    at(i)
                ))
            } else {
                Err(format!(
                    "the kernel has no CFS bandwidth control (no cpu.cfs_quota_us in {})",
                    bases[i].display()
                ))
            }
        }),
    ];
    let v1 = V1 {
        memory: memory.ok(),
        pids: pids.ok(),
        cpu: cpu.ok(),
        freezer,
        memsw,
        cfs,
        bases,
    };
    Ok((v1, enforcement))
}

impl V1 {
    /// The (not yet created) leaf `name` in every hierarchy.
    pub(super) fn leaf(self: &Arc<Self>, name: &Arc<str>) -> Leaf {
        Leaf {
            v1: self.clone(),
            name: name.clone(),
        }
    }

    /// Create the leaf in every hierarchy and write the limits. On failure the directories
    /// this call made are removed again (never ones that already existed).
    pub(super) fn create(
        self: &Arc<Self>,
        name: &Arc<str>,
        limits: &CgroupLimits,
    ) -> Result<Leaf, CgroupError> {
        let leaf = self.leaf(name);
        let mut made = Vec::new();
        let mut result = Ok(());
        for base in &self.bases {
            match mkdir_leaf(&base.join(CORRAL_DIR), name) {
                Ok(dir) => made.push(dir),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result.and_then(|()| leaf.apply(limits)) {
            for dir in &made {
                if let Err(cleanup) = rmdir_tree(dir) {
                    tracing::warn!(error = %cleanup, "cgroup v1: cleaning up a failed create");
                }
                if let Some(shared) = dir.parent() {
                    rmdir_shared_if_empty(shared);
                }
            }
            return Err(e);
        }
        Ok(leaf)
    }

    /// Names of all leaves (ours and other supervisors') in the shared directories.
    pub(super) fn leaf_names(&self) -> Result<BTreeSet<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for base in &self.bases {
            leaf_names_in(&base.join(CORRAL_DIR), &mut names)?;
        }
        Ok(names)
    }
}

/// One attempt's directories: `<base>/corral/<name>` in each hierarchy of `V1::bases`, made
/// when asked for (they are wanted at the attempt's start and end only).
#[derive(Debug)]
pub(super) struct Leaf {
    v1: Arc<V1>,
    name: Arc<str>,
}

impl Leaf {
    fn dir(&self, controller: Option<usize>) -> Option<PathBuf> {
        controller.map(|i| self.at(&self.v1.bases[i]))
    }

    fn at(&self, base: &Path) -> PathBuf {
        base.join(CORRAL_DIR).join(&*self.name)
    }

    fn all(&self) -> Vec<PathBuf> {
        self.v1.bases.iter().map(|b| self.at(b)).collect()
    }

    fn apply(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        if let (Some(dir), Some(bytes)) = (self.dir(self.v1.memory), limits.memory) {
            let bytes = bytes.to_string();
            write_file(&dir.join("memory.limit_in_bytes"), &bytes)?;
            // After limit_in_bytes: memsw must never be below it. Equal means "no swap", so
            // an overrun is an OOM kill rather than a slow swap-out.
            if self.v1.memsw {
                write_file(&dir.join("memory.memsw.limit_in_bytes"), &bytes)?;
            }
        }
        if let (Some(dir), Some(max)) = (self.dir(self.v1.pids), limits.pids) {
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        if let (Some(dir), Some(fraction), true) =
            (self.dir(self.v1.cpu), limits.cpu_quota, self.v1.cfs)
        {
            write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write_file(
                &dir.join("cpu.cfs_quota_us"),
                &cpu_quota_us(fraction).to_string(),
            )?;
        }
        Ok(())
    }

    pub(super) fn paths(&self) -> Vec<PathBuf> {
        self.all()
    }

    /// Members across all hierarchies (a process half-attached is still found).
    pub(super) fn members(&self) -> Result<BTreeSet<u32>, CgroupError> {
        let all = self.all();
        members(&all.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }

    /// [`Self::members`] when no hierarchy's leaf has a sub-cgroup, else `None`.
    pub(super) fn flat_members(&self) -> Result<Option<BTreeSet<u32>>, CgroupError> {
        let all = self.all();
        flat_members(&all.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }

    /// Whether nothing but an exited leader can be inside: `pids.current` (which counts
    /// every task until it is reaped, zombies included) is at most 1. `false` without a pids
    /// hierarchy, or when it cannot be read.
    pub(super) fn at_most_one_task(&self) -> bool {
        self.dir(self.v1.pids)
            .and_then(|d| read_number(&d.join("pids.current")))
            .is_some_and(|n| n <= 1)
    }

    /// Kill a cgroup whose members were just listed (`before`; an empty list ends it at once):
    /// freeze (when the freezer is mounted, so nothing forks between reading and killing),
    /// SIGKILL every member, thaw (frozen tasks die only once thawed), then kill stragglers and
    /// wait until empty.
    pub(super) fn kill_listed(&self, before: &BTreeSet<u32>) -> Result<usize, CgroupError> {
        if before.is_empty() {
            return Ok(0);
        }
        let all = self.all();
        let all: Vec<&Path> = all.iter().map(PathBuf::as_path).collect();
        let mut killed = BTreeSet::new();
        if let Some(freezer) = self.dir(self.v1.freezer).filter(|d| d.is_dir()) {
            let state = freezer.join("freezer.state");
            write_file(&state, "FROZEN")?;
            let started = Instant::now();
            while started.elapsed() < FREEZE_DEADLINE {
                match read_file(&state) {
                    Ok(s) if s.trim() == "FROZEN" => break,
                    Ok(_) => thread::sleep(Duration::from_micros(500)),
                    Err(_) => break,
                }
            }
            let pass = kill_pass(&all);
            let thawed = write_file(&state, "THAWED");
            killed = pass?;
            thawed?;
        }
        kill_until_empty(&all, &mut killed)?;
        Ok(killed.len())
    }

    pub(super) fn stats(&self) -> Stats {
        let memory = self.dir(self.v1.memory);
        Stats {
            oom_kills: memory
                .as_ref()
                .and_then(|d| read_keyed(&d.join("memory.oom_control"), "oom_kill"))
                .unwrap_or(0),
            pids_limit_hits: self
                .dir(self.v1.pids)
                .and_then(|d| read_keyed(&d.join("pids.events"), "max"))
                .unwrap_or(0),
            memory_peak_bytes: memory
                .and_then(|d| read_number(&d.join("memory.max_usage_in_bytes"))),
        }
    }

    /// `rmdir` the leaf in every hierarchy (all are tried; the first error is returned), then
    /// the shared `corral` directories if they are now empty.
    pub(super) fn remove(&self) -> Result<(), CgroupError> {
        let mut first = None;
        let dirs = self.all();
        for dir in &dirs {
            if let Err(e) = rmdir_tree(dir) {
                first.get_or_insert(e);
            }
        }
        for dir in &dirs {
            if let Some(shared) = dir.parent() {
                rmdir_shared_if_empty(shared);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
