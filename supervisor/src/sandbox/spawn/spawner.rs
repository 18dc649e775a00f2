//! The threads that spawn: long-lived, so that `PR_SET_PDEATHSIG` (tied to the thread that
//! made the child) never fires early and the async runtime never blocks on a spawn.
//!
//! They are grouped in lanes, one per CPU the supervisor may run on, each thread pinned to its
//! lane's CPU, and a spawn goes to the lane of the CPU its caller runs on. Handing a job to a
//! thread that sleeps on another CPU means waking that CPU, which on a VM costs tens to over a
//! hundred µs each way (measured at a service agent's restart: 70–140 µs to reach the spawner,
//! 75–80 µs back); a thread on the caller's own CPU is woken without one. A lane whose threads
//! are all busy passes the job to the least busy lane, so a burst from one caller still uses
//! every core. A lane starts with one thread and grows, up to four per core the supervisor
//! may use (a CPU quota counts) spread over the lanes, when a spawn whose child mostly waits
//! (see `THREADS_PER_CORE`) finds its threads busy: spawns that only run (no mount or network
//! namespace) gain nothing from more threads than cores, and a daemon keeping a thousand
//! plain agents keeps two threads, not eight (each keeps its stack and its allocator's arena).
//! The child takes back the mask of the thread that asked for it as its
//! first step (see `child.rs`), read at each spawn, so agents run wherever the supervisor may
//! now (a mask or cpuset changed since start included).

use super::{spawn_now, ChildStack, SpawnError, SpawnSpec, Spawned};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

/// A spawn, the mask of the thread that asked for it (what its child takes back), and where the
/// result goes.
type Job = (
    SpawnSpec,
    Option<libc::cpu_set_t>,
    tokio::sync::oneshot::Sender<Result<Spawned, SpawnError>>,
);

/// Spawner threads per core the supervisor may use (`available_parallelism`, which honours a
/// CPU quota), spread over the lanes, for spawns whose child mostly waits. A spawn keeps its
/// thread suspended until the child has built its sandbox and exec'd (`CLONE_VFORK`), and
/// much of that time the child waits rather than runs (the unmount of the host's tree waits
/// for an RCU grace period, which concurrent unmounts share), so several spawns at once
/// overlap their waits. (Measured with the fan-out rows of `corral-bench`: 300 isolated agents
/// at once took about half as long with 8 threads as with 1, on 2 cores.)
const THREADS_PER_CORE: usize = 4;

/// The threads of one CPU (how many started, how many it may have), and the jobs given to
/// them and not yet done.
struct Lane {
    cpu: Option<usize>,
    threads: AtomicUsize,
    max: usize,
    /// The mask a child takes back when its caller's could not be read.
    whole: Option<libc::cpu_set_t>,
    tx: Mutex<mpsc::Sender<Job>>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    pending: Arc<AtomicUsize>,
}

impl Lane {
    fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// Hand `job` to this lane's threads: `None` once they have it, the job back when none is
    /// left to take it. A job whose child mostly waits, finding every thread busy, starts one
    /// more (up to the lane's most).
    fn offer(&self, job: Job) -> Option<Job> {
        let pending = self.pending.fetch_add(1, Ordering::Relaxed);
        if job.0.waits() && pending >= self.threads() {
            self.grow();
        }
        let back = match self.tx.lock() {
            Ok(tx) => tx.send(job).err().map(|e| e.0),
            Err(_) => Some(job),
        };
        if back.is_some() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        back
    }

    /// Start one more thread, unless the lane has its most.
    fn grow(&self) {
        let mut n = self.threads();
        while n < self.max {
            match self
                .threads
                .compare_exchange(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if let Err(e) = start_thread(self.cpu, self.whole, &self.rx, &self.pending) {
                        self.threads.fetch_sub(1, Ordering::Relaxed);
                        tracing::warn!(
                            "cannot start spawner thread {n} for CPU {:?}: {e}",
                            self.cpu
                        );
                    }
                    return;
                }
                Err(now) => n = now,
            }
        }
    }
}

/// Long-lived threads that spawn processes (see the module doc).
pub struct Spawner {
    /// Lanes with at least one thread running.
    lanes: Vec<Lane>,
}

impl Spawner {
    /// The process-wide spawner (its threads started on first use).
    pub fn global() -> &'static Spawner {
        static SPAWNER: OnceLock<Spawner> = OnceLock::new();
        SPAWNER.get_or_init(Spawner::start)
    }

    fn start() -> Spawner {
        // The CPUs to make lanes for, and the mask a child takes back when its caller's cannot be
        // read: the one threads are started with.
        let whole = current_mask();
        let total = THREADS_PER_CORE * std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut cpus: Vec<Option<usize>> = match &whole {
            Some(mask) => (0..libc::CPU_SETSIZE as usize)
                // SAFETY: CPU_ISSET reads a bit of a whole cpu_set_t we hold.
                .filter(|&c| unsafe { libc::CPU_ISSET(c, mask) })
                .map(Some)
                .collect(),
            None => Vec::new(),
        };
        if cpus.is_empty() {
            // Without a mask to pin by, one lane of unpinned threads.
            cpus.push(None);
        }
        // Under a CPU quota there are more CPUs than cores' worth of threads: lanes for the
        // first CPUs only (callers elsewhere go to the least busy lane).
        cpus.truncate(total);
        let per_lane = total.div_ceil(cpus.len());
        Spawner {
            lanes: cpus
                .into_iter()
                .filter_map(|cpu| lane(cpu, whole, per_lane))
                .collect(),
        }
    }

    /// How many spawner threads there may be.
    pub fn capacity(&self) -> usize {
        self.lanes.iter().map(|l| l.max).sum()
    }

    /// Spawn on a spawner thread and wait (asynchronously) for the result.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let mut job = (spec, current_mask(), reply);
        let first = self.pick().ok_or(SpawnError::SpawnerGone)?;
        // The picked lane, else any other whose threads still run.
        let others = self.lanes.iter().filter(|l| !std::ptr::eq(*l, first));
        for lane in std::iter::once(first).chain(others) {
            match lane.offer(job) {
                None => return rx.await.map_err(|_| SpawnError::SpawnerGone)?,
                Some(back) => job = back,
            }
        }
        Err(SpawnError::SpawnerGone)
    }

    /// The lane of the calling thread's CPU, unless all its threads are busy: then the lane
    /// with the fewest jobs waiting beyond its threads (then the fewest jobs).
    fn pick(&self) -> Option<&Lane> {
        // SAFETY: sched_getcpu has no preconditions; -1 on failure.
        let here = unsafe { libc::sched_getcpu() };
        let local = usize::try_from(here)
            .ok()
            .and_then(|c| self.lanes.iter().find(|l| l.cpu == Some(c)));
        match local {
            Some(l) if l.pending() < l.threads() => Some(l),
            _ => self
                .lanes
                .iter()
                .min_by_key(|l| (l.pending().saturating_sub(l.threads()), l.pending())),
        }
    }
}

/// A lane for `cpu` (its threads pinned there; `None`: unpinned) of one thread, that may grow
/// to `max`. Their children take back the asking thread's mask, or `whole` when it could not
/// be read. `None` when no thread could be started.
fn lane(cpu: Option<usize>, whole: Option<libc::cpu_set_t>, max: usize) -> Option<Lane> {
    let (tx, rx) = mpsc::channel::<Job>();
    let lane = Lane {
        cpu,
        threads: AtomicUsize::new(0),
        max,
        whole,
        tx: Mutex::new(tx),
        rx: Arc::new(Mutex::new(rx)),
        pending: Arc::new(AtomicUsize::new(0)),
    };
    lane.grow();
    // The lane's other threads take its jobs; a lane with none is left out (spawns go to the
    // others; with no lane at all they fail with `SpawnerGone`).
    (lane.threads() > 0).then_some(lane)
}

/// Start a spawner thread taking the jobs of `rx` (see [`lane`]).
fn start_thread(
    cpu: Option<usize>,
    whole: Option<libc::cpu_set_t>,
    rx: &Arc<Mutex<mpsc::Receiver<Job>>>,
    pending: &Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let (rx, pending) = (rx.clone(), pending.clone());
    std::thread::Builder::new()
        .name("corral-spawner".into())
        .spawn(move || {
            // Pinned, children start here and take a whole mask back; if pinning fails, each
            // spawn narrows and restores around its clone instead (`spawn_now`).
            let pinned = cpu.is_some_and(pin_to);
            NARROWED.set(narrow_bounding_set());
            let mut stack = ChildStack::new();
            loop {
                // The lock is held only to take the next job, never across a spawn.
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => break,
                };
                let Ok((spec, mask, reply)) = job else { break };
                let restore = if pinned { mask.or(whole) } else { None };
                let out = spawn_now(spec, &mut stack, restore);
                pending.fetch_sub(1, Ordering::Relaxed);
                let _ = reply.send(out);
            }
        })
        .map(drop)
}

/// The calling thread's CPU mask.
fn current_mask() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, which the kernel fills whole; thread 0
    // is the calling thread.
    unsafe {
        let mut mask: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mask) == 0)
            .then_some(mask)
    }
}

thread_local! {
    /// This spawner thread's bounding set holds at most `child::SPAWNER_KEEPS`.
    static NARROWED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a spawner thread that narrowed its bounding set.
pub(super) fn narrowed() -> bool {
    NARROWED.get()
}

/// Empty the calling thread's capability bounding set but for what an init keeps
/// (`child::SPAWNER_KEEPS`), once, so that its children inherit it and drop only those few
/// (see `child::drop_bounding_set`). The bounding set limits only what an `execve` or a
/// `capset` may gain: the thread keeps every capability it has, and a child that makes a user
/// namespace starts there with a full set. Whether every other capability is gone: not
/// without `CAP_SETPCAP` (a supervisor that is not root); then children drop them all.
fn narrow_bounding_set() -> bool {
    for cap in 0..64 {
        if super::child::SPAWNER_KEEPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments, on the calling thread's own credentials; the
        // thread never execs (its children do, after `drop_bounding_set`).
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            // EINVAL: past the kernel's last capability, every one before it dropped.
            return std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL);
        }
    }
    true
}

/// Pin the calling thread to `cpu`.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: as in `current_mask`; CPU_SET writes a bit of the set we hold (cpu is below
    // CPU_SETSIZE: it came from one).
    unsafe {
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_true(sp: &Spawner) -> Result<(), SpawnError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let spawned = rt.block_on(sp.spawn(SpawnSpec::new("/bin/true")))?;
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None);
        Ok(())
    }

    /// A lane whose threads could not start is left out, and spawns asked from a CPU without
    /// a lane go to a lane that has threads; with none at all they fail cleanly.
    #[test]
    fn spawns_reach_a_lane_with_threads_or_fail_cleanly() {
        assert!(lane(Some(0), None, 0).is_none(), "a lane without threads");
        // One unpinned lane of one thread, for no CPU: whatever CPU asks, it is picked.
        let sp = Spawner {
            lanes: lane(None, None, 1).into_iter().collect(),
        };
        for _ in 0..3 {
            run_true(&sp).expect("spawned through the only lane");
        }
        assert_eq!(sp.lanes[0].pending(), 0);
        let none = Spawner { lanes: Vec::new() };
        assert!(matches!(run_true(&none), Err(SpawnError::SpawnerGone)));
    }

    /// A lane starts with one thread; spawns that only run never add one; it grows one at a
    /// time to its most, and no further.
    #[test]
    fn a_lane_starts_with_one_thread_and_grows_to_its_most() {
        let sp = Spawner {
            lanes: lane(None, None, 3).into_iter().collect(),
        };
        assert_eq!(sp.lanes[0].threads(), 1);
        assert_eq!(sp.capacity(), 3);
        // Four at once: the later ones find the thread busy (most likely), and start none.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let spawn = || sp.spawn(SpawnSpec::new("/bin/true"));
        let all = rt.block_on(async { tokio::join!(spawn(), spawn(), spawn(), spawn()) });
        for spawned in [all.0, all.1, all.2, all.3] {
            let pid = spawned.expect("spawned").pid;
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        assert_eq!(sp.lanes[0].threads(), 1, "a plain spawn started a thread");
        for want in [2, 3, 3] {
            sp.lanes[0].grow();
            assert_eq!(sp.lanes[0].threads(), want);
        }
        for _ in 0..4 {
            run_true(&sp).expect("spawned by the grown lane");
        }
    }
}
