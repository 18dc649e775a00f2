//! cgroup v2: the unified hierarchy, used when memory, pids or cpu is delegated to the
//! supervisor's own cgroup (systemd `Delegate=yes`, or root on a pure v2 host).
//!
//! The no-internal-processes rule says a cgroup that hands controllers to its children
//! (`cgroup.subtree_control`) may hold no processes itself. So the supervisor enables the
//! controllers in its own cgroup `<own>`, moving itself (and whatever else is in `<own>`) into
//! a `<own>/supervisor` leaf first when the kernel refuses with `EBUSY`, then creates the
//! shared `<own>/corral` with the controllers enabled again, and puts attempts below it:
//! `<own>/corral/<leaf>`. A supervisor started later in the same cgroup finds itself in
//! `<own>/supervisor` and uses `<own>` again.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    cpu_quota_us, flat_members, kill_pass, kill_until_empty, leaf_names_in, members,
    mkdir_existing_ok, read_file, read_keyed, read_number, rmdir_shared_if_empty, rmdir_tree,
    writable, write_file, CgroupError, CgroupLimit, CgroupLimits, CgroupMount, Enforcement,
    OwnCgroup, Stats, CORRAL_DIR, CPU_PERIOD_US,
};

/// The leaf the supervisor moves itself into when its own cgroup must give up its processes.
pub(super) const SUPERVISOR_LEAF: &str = "supervisor";
/// How long a freeze may take before killing anyway (kernels without `cgroup.kill`).
const FREEZE_DEADLINE: Duration = Duration::from_millis(100);

/// The v2 hierarchy as the supervisor uses it.
#[derive(Debug, Clone)]
pub(super) struct V2 {
    /// The supervisor's own cgroup (the parent of `supervisor` when it moved itself there).
    base: PathBuf,
    /// Controllers enabled in `base/cgroup.subtree_control` (a subset of memory, pids, cpu).
    enabled: Vec<&'static str>,
}

/// Controllers listed in a `cgroup.controllers` / `cgroup.subtree_control` file.
fn controllers(path: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(read_file(path)?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// When `dir` is a `supervisor` leaf that a corral supervisor made (its parent hands out our
/// controllers and holds no process), the parent is the cgroup to work in.
fn adopted_parent(dir: &Path) -> Option<PathBuf> {
    if dir.file_name()? != SUPERVISOR_LEAF {
        return None;
    }
    let parent = dir.parent()?;
    let subtree = controllers(&parent.join("cgroup.subtree_control")).ok()?;
    let delegates = ["memory", "pids", "cpu"]
        .iter()
        .any(|c| subtree.iter().any(|s| s == c));
    let empty = read_file(&parent.join("cgroup.procs"))
        .ok()?
        .trim()
        .is_empty();
    (delegates && empty).then(|| parent.to_path_buf())
}

/// Find the supervisor's cgroup and enable the controllers for its subtree. `Err` when there is
/// no usable v2 hierarchy at all; otherwise each limit says how it is enforced or why not.
pub(super) fn probe(
    mounts: &[CgroupMount],
    own: &[OwnCgroup],
) -> Result<(V2, Enforcement), String> {
    let mount_list: Vec<&CgroupMount> = mounts.iter().filter(|m| m.v2).collect();
    if mount_list.is_empty() {
        return Err("no cgroup2 filesystem mounted".to_string());
    }
    let own_path = own
        .iter()
        .find(|o| o.hierarchy == 0 && o.controllers.is_empty())
        .ok_or("no 0:: line in /proc/self/cgroup")?;
    let dir = mount_list
        .iter()
        .find_map(|m| m.dir_of(&own_path.path))
        .ok_or_else(|| {
            format!(
                "own cgroup {} is outside the mounted part ({})",
                own_path.path,
                mount_list[0].mount_point.display()
            )
        })?;
    let base = adopted_parent(&dir).unwrap_or(dir);
    let available = controllers(&base.join("cgroup.controllers")).map_err(|e| e.to_string())?;
    let mut wanted = Vec::new();
    let mut reasons: [Option<String>; 3] = [None, None, None];
    for limit in CgroupLimit::ALL {
        let c = limit.controller();
        if available.iter().any(|a| a == c) {
            wanted.push(c);
        } else {
            let listed = if available.is_empty() {
                "it lists none: no controllers delegated".to_string()
            } else {
                format!("it lists {:?}", available.join(" "))
            };
            reasons[limit as usize] = Some(format!(
                "no {c} controller in {} ({listed})",
                base.join("cgroup.controllers").display()
            ));
        }
    }
    if !wanted.is_empty() {
        if let Err(why) = writable(&base) {
            for c in wanted.drain(..) {
                reasons[limit_of(c) as usize] = Some(why.clone());
            }
        }
    }
    let mut enabled = Vec::new();
    if !wanted.is_empty() {
        let failure = match enable_in_own(&base, &wanted) {
            Ok(()) => String::new(),
            Err(e) => format!(": {e}"),
        };
        let now = controllers(&base.join("cgroup.subtree_control")).unwrap_or_default();
        for c in wanted {
            if now.iter().any(|s| s == c) {
                enabled.push(c);
            } else {
                reasons[limit_of(c) as usize] = Some(format!(
                    "cannot enable {c} in {}{failure}",
                    base.join("cgroup.subtree_control").display()
                ));
            }
        }
    }
    let at = base.join(CORRAL_DIR).display().to_string();
    let enforcement: Enforcement =
        CgroupLimit::ALL.map(|limit| match reasons[limit as usize].take() {
            Some(why) => Err(why),
            None => Ok(match limit {
                CgroupLimit::Memory => {
                    format!("cgroup v2 memory.max (+ memory.swap.max = 0 where present) under {at}")
                }
                CgroupLimit::Pids => format!("cgroup v2 pids.max under {at}"),
                CgroupLimit::Cpu => {
                    format!("cgroup v2 cpu.max (quota per {CPU_PERIOD_US} us) under {at}")
                }
            }),
        });
    Ok((V2 { base, enabled }, enforcement))
}

fn limit_of(controller: &str) -> CgroupLimit {
    match controller {
        "memory" => CgroupLimit::Memory,
        "pids" => CgroupLimit::Pids,
        _ => CgroupLimit::Cpu,
    }
}

/// Enable `wanted` in `dir/cgroup.subtree_control`, one controller per write. Returns the
/// error of the first write that fails.
fn enable(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let now = controllers(&path)?;
    for c in wanted.iter().filter(|c| !now.iter().any(|n| n == *c)) {
        write_file(&path, &format!("+{c}"))?;
    }
    Ok(())
}

/// Enable controllers in the supervisor's own cgroup; on `EBUSY` (it holds processes: the
/// supervisor at least) move every process of it into `supervisor` and try again.
fn enable_in_own(base: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    let mut tries = 0;
    loop {
        match enable(base, wanted) {
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && tries < 5 =>
            {
                tries += 1;
                evacuate(base)?;
            }
            other => return other,
        }
    }
}

/// Move every process of `base` into `base/supervisor`.
fn evacuate(base: &Path) -> Result<(), CgroupError> {
    let leaf = base.join(SUPERVISOR_LEAF);
    mkdir_existing_ok(&leaf)?;
    let target = leaf.join("cgroup.procs");
    let procs = read_file(&base.join("cgroup.procs"))?;
    for pid in procs.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match write_file(&target, pid) {
            // Exited meanwhile.
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    tracing::info!(
        from = %base.display(),
        to = %leaf.display(),
        "cgroup v2: moved processes into a leaf to delegate controllers"
    );
    Ok(())
}

impl V2 {
    /// A manager rooted at `base` with no controllers (tests of the directory handling on a
    /// host whose v2 hierarchy has none).
    #[cfg(test)]
    pub(super) fn without_controllers(base: PathBuf) -> V2 {
        V2 {
            base,
            enabled: Vec::new(),
        }
    }

    fn shared(&self) -> PathBuf {
        self.base.join(CORRAL_DIR)
    }

    /// The (not yet created) leaf `name`.
    pub(super) fn leaf(&self, name: &str) -> Leaf {
        Leaf {
            dir: self.shared().join(name),
        }
    }

    /// Create the leaf (and the shared directory with controllers enabled) and write the
    /// limits. On failure the leaf is removed again.
    pub(super) fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Leaf, CgroupError> {
        let shared = self.shared();
        let mut tries = 0;
        loop {
            mkdir_existing_ok(&shared)?;
            match enable(&shared, &self.enabled) {
                // Another supervisor removed the shared directory between the two steps.
                Err(CgroupError::Read { source, .. } | CgroupError::Open { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && tries < 10 =>
                {
                    tries += 1;
                    continue;
                }
                other => other?,
            }
            let dir = shared.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 10 => tries += 1,
                Err(source) => return Err(CgroupError::CreateDir { path: dir, source }),
            }
        }
        let leaf = self.leaf(name);
        if let Err(e) = self.apply(&leaf.dir, limits) {
            if let Err(cleanup) = leaf.remove() {
                tracing::warn!(error = %cleanup, "cgroup v2: cleaning up a failed create");
            }
            return Err(e);
        }
        Ok(leaf)
    }

    fn apply(&self, dir: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let has = |c: &str| self.enabled.contains(&c);
        if let (true, Some(bytes)) = (has("memory"), limits.memory) {
            write_file(&dir.join("memory.max"), &bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_file(&swap, "0")?;
            }
        }
        if let (true, Some(max)) = (has("pids"), limits.pids) {
            write_file(&dir.join("pids.max"), &max.to_string())?;
        }
        if let (true, Some(fraction)) = (has("cpu"), limits.cpu_quota) {
            let value = format!("{} {CPU_PERIOD_US}", cpu_quota_us(fraction));
            write_file(&dir.join("cpu.max"), &value)?;
        }
        Ok(())
    }

    /// Names of all leaves (ours and other supervisors') in the shared directory.
    pub(super) fn leaf_names(&self) -> Result<BTreeSet<String>, CgroupError> {
        let mut names = BTreeSet::new();
        leaf_names_in(&self.shared(), &mut names)?;
        Ok(names)
    }
}

/// One attempt's directory.
#[derive(Debug)]
pub(super) struct Leaf {
    dir: PathBuf,
}

impl Leaf {
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    pub(super) fn members(&self) -> Result<BTreeSet<u32>, CgroupError> {
        members(&[&self.dir])
    }

    /// [`Self::members`] when the leaf has no sub-cgroup, else `None`.
    pub(super) fn flat_members(&self) -> Result<Option<BTreeSet<u32>>, CgroupError> {
        flat_members(&[&self.dir])
    }

    /// Whether no live process is inside (`cgroup.events` `populated 0`; an exited process
    /// leaves it as it exits, before it is reaped).
    pub(super) fn unpopulated(&self) -> bool {
        read_keyed(&self.dir.join("cgroup.events"), "populated") == Some(0)
    }

    /// Kill a cgroup whose members were just listed (`before`; an empty list ends it at once):
    /// `cgroup.kill` (5.14+) kills the whole subtree at once; older kernels freeze with
    /// `cgroup.freeze`, SIGKILL each member and thaw. Then stragglers are killed until empty.
    pub(super) fn kill_listed(&self, before: &BTreeSet<u32>) -> Result<usize, CgroupError> {
        if before.is_empty() {
            return Ok(0);
        }
        let dirs = [self.dir.as_path()];
        let mut killed = BTreeSet::new();
        let kill_file = self.dir.join("cgroup.kill");
        let freeze_file = self.dir.join("cgroup.freeze");
        if kill_file.exists() {
            write_file(&kill_file, "1")?;
            killed = before.clone();
        } else if freeze_file.exists() {
            write_file(&freeze_file, "1")?;
            let events = self.dir.join("cgroup.events");
            let started = Instant::now();
            while started.elapsed() < FREEZE_DEADLINE
                && read_keyed(&events, "frozen").is_some_and(|f| f == 0)
            {
                thread::sleep(Duration::from_micros(500));
            }
            let pass = kill_pass(&dirs);
            let thawed = write_file(&freeze_file, "0");
            killed = pass?;
            thawed?;
        }
        kill_until_empty(&dirs, &mut killed)?;
        Ok(killed.len())
    }

    pub(super) fn stats(&self) -> Stats {
        let d = &self.dir;
        Stats {
            oom_kills: read_keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0),
            pids_limit_hits: read_keyed(&d.join("pids.events"), "max").unwrap_or(0),
            memory_peak_bytes: read_number(&d.join("memory.peak")),
        }
    }

    /// `rmdir` the leaf, then the shared directory if it is now empty.
    pub(super) fn remove(&self) -> Result<(), CgroupError> {
        let result = rmdir_tree(&self.dir);
        if let Some(shared) = self.dir.parent() {
            rmdir_shared_if_empty(shared);
        }
        result
    }
}
