//! The threads that spawn: long-lived, so that `PR_SET_PDEATHSIG` (tied to the thread that
//! made the child) never fires early and the async runtime never blocks on a spawn.
//!
//! They are grouped in lanes, one per CPU the supervisor may run on, each thread pinned to its
//! lane's CPU, and a spawn goes to the lane of the CPU its caller runs on. Handing a job to a
//! thread that sleeps on another CPU means waking that CPU, which on a VM costs tens to over a
//! hundred µs each way (measured at a service agent's restart: 70–140 µs to reach the spawner,
//! 75–80 µs back); a thread on the caller's own CPU is woken without one. A lane whose threads
//! are all busy passes the job to the least busy lane, so a burst from one caller still uses
//! every core. The child takes back the mask of the thread that asked for it as its first step
//! (see `child.rs`), read at each spawn, so agents run wherever the supervisor may now (a mask
//! or cpuset changed since start included).

use super::{spawn_now, SpawnError, SpawnSpec, Spawned, CHILD_STACK};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

/// A spawn, the mask of the thread that asked for it (what its child takes back), and where the
/// result goes.
type Job = (
    SpawnSpec,
    Option<libc::cpu_set_t>,
    tokio::sync::oneshot::Sender<Result<Spawned, SpawnError>>,
);

/// Threads per lane. A spawn keeps its thread suspended until the child has built its sandbox
/// and exec'd (`CLONE_VFORK`), and much of that time the child waits rather than runs (the
/// unmount of the host's tree waits for an RCU grace period, which concurrent unmounts share),
/// so several spawns at once overlap their waits. (Measured with the fan-out rows of
/// `corral-bench`: 300 isolated agents at once took about half as long with 8 threads as with
/// 1, on 2 cores.)
const THREADS_PER_LANE: usize = 4;

/// The threads of one CPU, and the jobs given to them and not yet done.
struct Lane {
    cpu: Option<usize>,
    tx: Mutex<mpsc::Sender<Job>>,
    pending: Arc<AtomicUsize>,
}

/// Long-lived threads that spawn processes (see the module doc).
pub struct Spawner {
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
        let cpus: Vec<Option<usize>> = match &whole {
            Some(mask) => (0..libc::CPU_SETSIZE as usize)
                // SAFETY: CPU_ISSET reads a bit of a whole cpu_set_t we hold.
                .filter(|&c| unsafe { libc::CPU_ISSET(c, mask) })
                .map(Some)
                .collect(),
            None => Vec::new(),
        };
        // Without a mask to pin by, one lane of unpinned threads (one per core's worth).
        let cpus = if cpus.is_empty() {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return Spawner {
                lanes: vec![lane(None, None, THREADS_PER_LANE * n)],
            };
        } else {
            cpus
        };
        Spawner {
            lanes: cpus
                .into_iter()
                .map(|cpu| lane(cpu, whole, THREADS_PER_LANE))
                .collect(),
        }
    }

    /// Spawn on a spawner thread and wait (asynchronously) for the result.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let lane = self.pick();
        let mask = current_mask();
        let (reply, rx) = tokio::sync::oneshot::channel();
        lane.pending.fetch_add(1, Ordering::Relaxed);
        let sent = lane
            .tx
            .lock()
            .map_err(|_| SpawnError::SpawnerGone)
            .and_then(|tx| {
                tx.send((spec, mask, reply))
                    .map_err(|_| SpawnError::SpawnerGone)
            });
        if let Err(e) = sent {
            lane.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        rx.await.map_err(|_| SpawnError::SpawnerGone)?
    }

    /// The lane of the calling thread's CPU, unless all its threads are busy: then the least
    /// busy lane.
    fn pick(&self) -> &Lane {
        // SAFETY: sched_getcpu has no preconditions; -1 on failure.
        let here = unsafe { libc::sched_getcpu() };
        let local = usize::try_from(here)
            .ok()
            .and_then(|c| self.lanes.iter().find(|l| l.cpu == Some(c)));
        match local {
            Some(l) if l.pending.load(Ordering::Relaxed) < THREADS_PER_LANE => l,
            _ => self
                .lanes
                .iter()
                .min_by_key(|l| l.pending.load(Ordering::Relaxed))
                .unwrap_or(&self.lanes[0]),
        }
    }
}

/// Start `threads` spawner threads on `cpu` (pinned; `None`: unpinned). Their children take
/// back the asking thread's mask, or `whole` when it could not be read.
fn lane(cpu: Option<usize>, whole: Option<libc::cpu_set_t>, threads: usize) -> Lane {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let pending = Arc::new(AtomicUsize::new(0));
    for i in 0..threads {
        let (rx, pending) = (rx.clone(), pending.clone());
        let started = std::thread::Builder::new()
            .name("corral-spawner".into())
            .spawn(move || {
                // Pinned, children start here and take a whole mask back; if pinning fails, each
                // spawn narrows and restores around its clone instead (`spawn_now`).
                let pinned = cpu.is_some_and(pin_to);
                let mut stack = vec![0u8; CHILD_STACK];
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
            });
        if let Err(e) = started {
            // The threads started before take every job; with none, spawns fail with
            // `SpawnerGone`.
            tracing::warn!("cannot start spawner thread {i} for CPU {cpu:?}: {e}");
        }
    }
    Lane {
        cpu,
        tx: Mutex::new(tx),
        pending,
    }
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
