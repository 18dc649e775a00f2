//! Spares made ahead of time, so that a spawn does not wait for a `mkdir`: per-attempt
//! workspaces and per-attempt cgroups are created in the background (on threads of their own,
//! at a lower priority: `sandbox::background_thread`) and taken ready-made. Each spare is still used once and removed after its attempt.

use crate::sandbox::cgroup::{AgentCgroup, CgroupError, CgroupLimits, Cgroups};
use crate::sandbox::owner::Owner;
use crate::sandbox::rootfs::{build_detached, MountOps};
use crate::sandbox::uids::UidPool;
use crate::sandbox::workspace::{Workspace, WorkspaceError};
use std::collections::HashSet;
use std::os::fd::OwnedFd;

/// How workspace directories are named: `ws-<pid>-<start>-<random>`.
const WS_PREFIX: &str = "ws-";
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many spares of each kind are kept ready.
const SPARES: usize = 2;

/// Fresh private workspace directories under one root, made ahead per quota size (each with
/// its tmpfs mounted and its `.tmp` made: an attempt only gives them to its user).
pub struct WorkspacePool {
    root: PathBuf,
    /// `ws-<pid>-<start>-`: whose workspaces these are (see [`WorkspacePool::sweep_stale`]).
    prefix: String,
    spare: Mutex<HashMap<Option<u64>, Vec<Workspace>>>,
    refilling: Mutex<HashMap<Option<u64>, bool>>,
    /// The dynamic uids handed to the attempts these workspaces are for.
    uids: Option<Arc<UidPool>>,
    /// Workspaces whose agent's root is made already (a mount namespace fd), by key.
    rooted: Mutex<HashMap<String, Vec<(Workspace, OwnedFd)>>>,
    rooting: Mutex<HashSet<String>>,
}

impl WorkspacePool {
    /// A pool making directories under `root` (created when missing), for attempts with
    /// dynamic uids from `range`.
    pub fn with_uid_range(root: PathBuf, range: (u32, u32)) -> Arc<WorkspacePool> {
        Arc::new(WorkspacePool {
            root,
            prefix: format!("{WS_PREFIX}{}-", Owner::current().tag()),
            spare: Mutex::new(HashMap::new()),
            refilling: Mutex::new(HashMap::new()),
            uids: Some(UidPool::new(range.0, range.1)),
            rooted: Mutex::new(HashMap::new()),
            rooting: Mutex::new(HashSet::new()),
        })
    }

    /// The dynamic uids.
    pub fn uids(&self) -> Option<&Arc<UidPool>> {
        self.uids.as_ref()
    }

    fn make(&self, disk: Option<u64>) -> Result<Workspace, WorkspaceError> {
        std::fs::create_dir_all(&self.root).map_err(|source| WorkspaceError::Io {
            op: "create the workspace root",
            path: self.root.clone(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&self.prefix)
            .tempdir_in(&self.root)
            .map_err(|source| WorkspaceError::Io {
                op: "create",
                path: self.root.clone(),
                source,
            })?;
        Workspace::make(dir, disk)
    }

    /// Remove the workspaces that supervisors no longer running left under `root` (killed
    /// before they could remove them). Workspaces of live supervisors, this one included, and
    /// names without an owner are left alone. Returns how many were removed.
    pub fn sweep_stale(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(owner) = name.to_str().and_then(|n| Owner::parse(n, WS_PREFIX)) else {
                continue;
            };
            if !owner.is_gone() {
                continue;
            }
            // Its quota's tmpfs first (the supervisor died with it mounted).
            let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => removed += 1,
                Err(err) => tracing::warn!(path = %e.path().display(), "stale workspace: {err}"),
            }
        }
        removed
    }

    /// A fresh workspace with a quota of `disk` bytes (when the host lets us mount): a spare if
    /// one is ready, else made now. The caller tops the spares up ([`WorkspacePool::top_up`])
    /// once its spawn is done, so that making the next one does not compete with the spawn for
    /// the CPU.
    pub fn take(self: &Arc<Self>, disk: Option<u64>) -> Result<Workspace, WorkspaceError> {
        let ready = self
            .spare
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(&disk).and_then(Vec::pop));
        match ready {
            Some(w) => Ok(w),
            None => self.make(disk),
        }
    }

    /// Make spares with a quota of `disk` again in the background if they run short.
    pub fn top_up(self: &Arc<Self>, disk: Option<u64>) {
        self.refill(disk);
    }

    /// A workspace whose agent's root was made ahead for `key` (a mount namespace to join),
    /// if one is ready.
    pub fn take_rooted(&self, key: &str) -> Option<(Workspace, OwnedFd)> {
        self.rooted.lock().ok()?.get_mut(key)?.pop()
    }

    /// Whether fewer than [`SPARES`] roots are ready for `key`.
    pub(crate) fn rooted_short(&self, key: &str) -> bool {
        self.rooted
            .lock()
            .map(|s| s.get(key).map_or(0, Vec::len) < SPARES)
            .unwrap_or(false)
    }

    /// Make roots ahead for `key` until [`SPARES`] are ready, on a thread of the pool's own
    /// (each root is made by a thread that enters a mount namespace of its own: never a
    /// runtime thread). `ops` gives the steps for a workspace. Roots of the same agent made
    /// for another key (its program replaced, say) are dropped.
    pub(crate) fn refill_rooted<F>(self: &Arc<Self>, key: String, disk: Option<u64>, ops: F)
    where
        F: Fn(&Workspace) -> Result<MountOps, String> + Send + 'static,
    {
        let short = |me: &WorkspacePool, key: &str| me.rooted_short(key);
        if !short(self, &key) {
            return;
        }
        if !self.rooting.lock().is_ok_and(|mut r| r.insert(key.clone())) {
            return;
        }
        let agent = key.split('|').next().unwrap_or_default().to_string();
        if let Ok(mut s) = self.rooted.lock() {
            s.retain(|k, _| k == &key || k.split('|').next() != Some(agent.as_str()));
        }
        let me = Arc::downgrade(self);
        let failed_key = key.clone();
        let busy = crate::sandbox::process::busy();
        let started = std::thread::Builder::new()
            .name("corral-roots".into())
            .spawn(move || {
                // Waited for at exit (counted before the thread exists): a root half made
                // would be left behind.
                let _busy = busy;
                crate::sandbox::background_thread();
                while let Some(pool) = me.upgrade() {
                    if !short(&pool, &key) {
                        break;
                    }
                    let made = pool.make(disk).map_err(|e| e.to_string()).and_then(|w| {
                        let fd = build_detached(ops(&w)?).map_err(|e| e.to_string())?;
                        Ok((w, fd))
                    });
                    match made {
                        Ok(r) => {
                            if let Ok(mut s) = pool.rooted.lock() {
                                s.entry(key.clone()).or_default().push(r);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("making a root ahead: {e}");
                            break;
                        }
                    }
                }
                if let Some(pool) = me.upgrade() {
                    if let Ok(mut r) = pool.rooting.lock() {
                        r.remove(&key);
                    }
                }
            });
        if let Err(e) = started {
            tracing::warn!("cannot start a thread to make roots ahead: {e}");
            if let Ok(mut r) = self.rooting.lock() {
                r.remove(&failed_key);
            }
        }
    }

    /// Make spares on this thread until [`SPARES`] are ready (nothing when another thread
    /// is at it): what the pools' refill thread does.
    pub(crate) fn fill_here(self: &Arc<Self>, disk: Option<u64>) {
        if self.claim(disk) {
            self.fill(disk);
        }
    }

    fn refill(self: &Arc<Self>, disk: Option<u64>) {
        if !self.claim(disk) {
            return;
        }
        let me = self.clone();
        if !in_background("corral-workspaces", move || me.fill(disk)) {
            self.release(disk);
        }
    }

    /// Mark `disk`'s spares as being made; false when they already are.
    fn claim(&self, disk: Option<u64>) -> bool {
        let Ok(mut busy) = self.refilling.lock() else {
            return false;
        };
        !std::mem::replace(busy.entry(disk).or_insert(false), true)
    }

    fn release(&self, disk: Option<u64>) {
        if let Ok(mut busy) = self.refilling.lock() {
            busy.insert(disk, false);
        }
    }

    /// Make spares until enough are ready, then release the claim.
    fn fill(&self, disk: Option<u64>) {
        let short = || {
            self.spare
                .lock()
                .map(|s| s.get(&disk).map_or(0, Vec::len) < SPARES)
                .unwrap_or(false)
        };
        while short() {
            match self.make(disk) {
                Ok(w) => {
                    if let Ok(mut s) = self.spare.lock() {
                        s.entry(disk).or_default().push(w);
                    }
                }
                Err(e) => {
                    tracing::warn!("making a spare workspace: {e}");
                    break;
                }
            }
        }
        self.release(disk);
    }
}

/// Leaf cgroups made ahead of time, per agent type (each type has its own limits).
pub struct CgroupPool {
    cgroups: Arc<Cgroups>,
    spare: Mutex<HashMap<String, Vec<AgentCgroup>>>,
    refilling: Mutex<HashMap<String, bool>>,
}

impl CgroupPool {
    /// A pool over a cgroup manager.
    pub fn new(cgroups: Arc<Cgroups>) -> Arc<CgroupPool> {
        Arc::new(CgroupPool {
            cgroups,
            spare: Mutex::new(HashMap::new()),
            refilling: Mutex::new(HashMap::new()),
        })
    }

    /// The manager.
    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    fn make(&self, agent: &str, limits: &CgroupLimits) -> Result<AgentCgroup, CgroupError> {
        // Process-wide: several pools (supervisors) in one process share the parent cgroup.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.cgroups.create(&format!("{agent}-{n}"), limits)
    }

    /// A spare made ahead of time also gets its attach fds opened ahead.
    fn make_spare(&self, agent: &str, limits: &CgroupLimits) -> Result<AgentCgroup, CgroupError> {
        let cg = self.make(agent, limits)?;
        cg.open_attach_ahead()?;
        Ok(cg)
    }

    /// A fresh cgroup for one attempt of `agent`: a spare if ready, else made now. The caller
    /// tops the spares up ([`CgroupPool::top_up`]) once its spawn is done.
    pub(crate) fn take(
        self: &Arc<Self>,
        agent: &str,
        limits: &CgroupLimits,
    ) -> Result<AgentCgroup, CgroupError> {
        let ready = self
            .spare
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(agent).and_then(Vec::pop));
        match ready {
            Some(c) => Ok(c),
            None => self.make(agent, limits),
        }
    }

    /// Make spare cgroups of `agent` again in the background if they run short.
    pub(crate) fn top_up(self: &Arc<Self>, agent: &str, limits: &CgroupLimits) {
        self.refill(agent, *limits);
    }

    /// Make spare cgroups of `agent` on this thread until [`SPARES`] are ready (nothing when
    /// another thread is at it): what the pools' refill thread does.
    pub(crate) fn fill_here(self: &Arc<Self>, agent: &str, limits: &CgroupLimits) {
        if self.claim(agent) {
            self.fill(agent, limits);
        }
    }

    fn refill(self: &Arc<Self>, agent: &str, limits: CgroupLimits) {
        if !self.claim(agent) {
            return;
        }
        let me = self.clone();
        let name = agent.to_string();
        if !in_background("corral-cgroups", move || me.fill(&name, &limits)) {
            self.release(agent);
        }
    }

    /// Mark `agent`'s spares as being made; false when they already are.
    fn claim(&self, agent: &str) -> bool {
        let Ok(mut busy) = self.refilling.lock() else {
            return false;
        };
        !std::mem::replace(busy.entry(agent.to_string()).or_insert(false), true)
    }

    fn release(&self, agent: &str) {
        if let Ok(mut busy) = self.refilling.lock() {
            busy.insert(agent.to_string(), false);
        }
    }

    /// Make spares until enough are ready, then release the claim.
    fn fill(&self, agent: &str, limits: &CgroupLimits) {
        let short = || {
            self.spare
                .lock()
                .map(|s| s.get(agent).map_or(0, Vec::len) < SPARES)
                .unwrap_or(false)
        };
        while short() {
            match self.make_spare(agent, limits) {
                Ok(c) => {
                    if let Ok(mut s) = self.spare.lock() {
                        s.entry(agent.to_string()).or_default().push(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(agent = %agent, "making a spare cgroup: {e}");
                    break;
                }
            }
        }
        self.release(agent);
    }
}

/// Run `f` on a thread of its own at the pools' priority ([`crate::sandbox::background_thread`]),
/// not on a runtime's blocking pool: the pools are topped up from the refill thread
/// (`child::launch::Refill`), outside any runtime. Whether the thread started.
fn in_background(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    // Counted before the thread exists, so that an exit cannot slip in between.
    let busy = crate::sandbox::process::busy();
    let started = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _busy = busy;
            crate::sandbox::background_thread();
            f();
        });
    if let Err(e) = &started {
        tracing::warn!("cannot start a thread to make spares ahead: {e}");
    }
    started.is_ok()
}
