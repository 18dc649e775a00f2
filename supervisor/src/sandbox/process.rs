//! Processes after the spawn: waiting for exit through a pidfd, reaping with rusage, signalling
//! a whole process group, and the subreaper that adopts whatever an agent double-forks.
//!
//! The supervisor is a child subreaper, so orphans of agents are reparented to it. Each
//! attempt reaps its own agent (with `wait4`, for status and rusage) and, after killing its
//! cgroup, exactly the pids that were in it (`reap_adopted`), then the zombies of its tree that
//! had exited on their own (`reap_orphans_of`). Nothing here waits for "any child": a program
//! embedding corral keeps its own children's exit statuses. (With a pid namespace, orphans go
//! to the namespace's `corral-init` instead.)
//!
//! The reaper (`defer`, `kill_and_reap`) is one background thread for the blocking end of
//! what was dropped rather than torn down (an attempt's future, a warm stem, a cgroup with
//! processes in it): the kill is sent at once by the thread that dropped it, and the waiting,
//! reaping and removal happen on the reaper, so that a drop never blocks a runtime worker.
//! What an attempt that ended normally leaves (its emptied cgroup, its workspace) is removed
//! by a few disposal threads (`dispose_later`), several at once.
//!
//! Wait statuses are decoded in one place, `crate::exit_status::WaitStatus`, with libc's macros (pure
//! functions): `nix`'s `WaitStatus` cannot hold a real-time signal (`WaitStatus::from_raw`, and
//! so `nix`'s `waitpid`, answer `EINVAL` for one, after the process is reaped), and an agent
//! may die of one. For the same reason `try_reap` and `reap_adopted` call `wait4` and
//! `waitpid` themselves (`nix` has no `wait4`, which gives the rusage, either). Signals to pids
//! and groups and the subreaper `prctl` go through `nix`; `pidfd_send_signal` is a raw call
//! (`nix` has none).

use crate::exit_status::{timeval_ms, WaitStatus};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, OwnedFd};

/// How a process ended, and what it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reaped {
    /// Exit code when it exited.
    pub exit_code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// Whether a core was dumped.
    pub core_dumped: bool,
    /// User CPU, including reaped descendants.
    pub cpu_user_ms: u64,
    /// System CPU, including reaped descendants.
    pub cpu_sys_ms: u64,
    /// Peak RSS in KiB.
    pub max_rss_kb: u64,
}

/// Reap `pid` if it has exited. `None` while it still runs.
pub(crate) fn try_reap(pid: i32) -> Option<Reaped> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    if r != pid {
        return None;
    }
    Some(Reaped {
        cpu_user_ms: timeval_ms(ru.ru_utime),
        cpu_sys_ms: timeval_ms(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss.max(0) as u64,
        ..WaitStatus::decode(status).into()
    })
}

impl From<WaitStatus> for Reaped {
    /// The end alone (no rusage).
    fn from(end: WaitStatus) -> Reaped {
        Reaped {
            exit_code: end.exit_code,
            signal: end.signal,
            core_dumped: end.core_dumped,
            ..Reaped::default()
        }
    }
}

/// SIGKILL the process of a pidfd (not registered with the runtime). Returns whether it was
/// sent.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with a pidfd we hold and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Send `sig` to every process of process group `pgid`. Returns whether any existed (false
/// too for a number that is not a standard signal: none is sent).
pub(crate) fn kill_group(pgid: i32, sig: i32) -> bool {
    // pgid > 1 excludes "every process" (-1) and our own group (0).
    if pgid <= 1 {
        return false;
    }
    let Ok(sig) = Signal::try_from(sig) else {
        return false;
    };
    killpg(Pid::from_raw(pgid), sig).is_ok()
}

/// Make this process a child subreaper: orphans of its descendants are reparented to it
/// instead of init, so they stay ours to reap and kill.
pub(crate) fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// Reap processes of an agent's tree that were reparented to this subreaper. Only the pids
/// given are touched (never a child some other part of the program is waiting for); pids that
/// are not our children, or not yet exited, are left alone. Returns how many were reaped.
pub(crate) fn reap_adopted(pids: &[u32]) -> usize {
    let mut n = 0;
    for &pid in pids {
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with WNOHANG; ECHILD for pids that are not ours.
        if unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) } == pid as i32 {
            n += 1;
        }
    }
    n
}

/// Reap the zombies of `leader`'s tree that were reparented to this subreaper and exited on
/// their own before its attempt's end (a cgroup lists no zombie, so [`reap_adopted`] misses
/// them, and they would stay ours for good): the zombie children of the main thread (orphans
/// go to a subreaper's first live thread; agents themselves are children of the spawner
/// threads) in `leader`'s session, or of `leader`'s uid when that is not ours. Call it while
/// `leader` is an unreaped zombie: its pid, so its session id, cannot have been reused. No
/// other child is touched (a program embedding corral keeps its own). Returns how many.
pub(crate) fn reap_orphans_of(leader: i32) -> usize {
    let me = std::process::id();
    let Ok(children) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
        return 0;
    };
    let uid = |pid: i32| -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        line.split_whitespace().next()?.parse().ok()
    };
    let ours = nix::unistd::geteuid().as_raw();
    // Read only once a zombie is found (most often the main thread has no child at all).
    let mut leader_uid = None;
    let mut n = 0;
    for pid in children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if pid == leader {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, ppid, pgrp, session.
        let mut rest = stat
            .rsplit_once(") ")
            .map_or("", |(_, r)| r)
            .split_whitespace();
        let (state, session) = (rest.next(), rest.nth(2).and_then(|s| s.parse::<i32>().ok()));
        if state != Some("Z") {
            continue;
        }
        let leader_uid = *leader_uid.get_or_insert_with(|| uid(leader).filter(|&u| u != ours));
        if session == Some(leader) || leader_uid.is_some() && uid(pid) == leader_uid {
            n += reap_adopted(&[pid as u32]);
        }
    }
    n
}

/// Blocking work handed to the reaper thread.
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static ON_REAPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How long the reaper waits for a killed process to exit before it leaves the wait to a
/// thread of its own (a process stuck in the kernel must not hold up the others).
const EXIT_WAIT_MS: u16 = 5000;

/// Whether this thread is the reaper.
pub(crate) fn on_reaper() -> bool {
    ON_REAPER.with(|r| r.get())
}

/// Run `job` on the reaper thread, after the jobs handed to it before (at once, here, when
/// called on the reaper itself or when the thread cannot be started).
pub(crate) fn defer(job: impl FnOnce() + Send + 'static) {
    static TX: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    if on_reaper() {
        return job();
    }
    let tx = TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("corral-reaper".into())
            .spawn(move || {
                ON_REAPER.with(|r| r.set(true));
                while let Ok(job) = rx.recv() {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a reaper job panicked");
                    }
                }
            });
        if let Err(e) = started {
            // The receiver went with the closure: every send fails and runs its job in place.
            tracing::warn!("cannot start the reaper thread: {e}");
        }
        tx
    });
    if let Err(std::sync::mpsc::SendError(job)) = tx.send(Box::new(job)) {
        job();
    }
}

/// Most threads that remove what attempts left (see [`dispose_later`]). One is started with the
/// first use, the others as removals need them, and they stay.
const DISPOSERS: usize = 8;

/// The removals handed to [`dispose_later`] and not finished yet, and the threads doing them.
struct Disposals {
    pending: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
    threads: std::sync::Mutex<Disposers>,
}

/// The disposal threads' queue, how many threads there are, and how many jobs wait in the
/// queue against how many threads wait for one.
struct Disposers {
    tx: std::sync::mpsc::Sender<Job>,
    rx: std::sync::Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>,
    started: usize,
    /// A thread could not be started (said once).
    refused: bool,
    /// (jobs queued and not taken yet, threads waiting for a job)
    counts: std::sync::Arc<(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    )>,
}

impl Disposers {
    /// Queue `job`, first starting one more thread when the jobs already queued are as many as
    /// the threads waiting for one (and not all are started). The job back when no thread
    /// runs and none could be started.
    fn queue(&mut self, job: Job) -> Result<(), Job> {
        use std::sync::atomic::Ordering;
        let short = self.counts.0.load(Ordering::SeqCst) >= self.counts.1.load(Ordering::SeqCst);
        if short && self.started < DISPOSERS {
            self.start();
        }
        if self.started == 0 {
            return Err(job);
        }
        self.counts.0.fetch_add(1, Ordering::SeqCst);
        self.tx.send(job).map_err(|e| {
            self.counts.0.fetch_sub(1, Ordering::SeqCst);
            e.0
        })
    }

    fn start(&mut self) {
        use std::sync::atomic::Ordering;
        let (rx, counts) = (self.rx.clone(), self.counts.clone());
        let ok = std::thread::Builder::new()
            .name("corral-dispose".into())
            .spawn(move || {
                // Removals wait for no one: a spawn beside them goes first.
                super::background_thread();
                loop {
                    // The lock is held only to take the next job.
                    counts.1.fetch_add(1, Ordering::SeqCst);
                    let job = rx.lock().map(|rx| rx.recv());
                    counts.1.fetch_sub(1, Ordering::SeqCst);
                    let Ok(Ok(job)) = job else { break };
                    counts.0.fetch_sub(1, Ordering::SeqCst);
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!("a disposal job panicked");
                    }
                    disposals().done();
                }
            });
        match ok {
            Ok(_) => self.started += 1,
            // Said once: a host out of threads would otherwise say it at every removal.
            Err(e) if !self.refused => {
                self.refused = true;
                tracing::warn!(
                    "cannot start a disposal thread: {e} (removals wait or run in place)"
                );
            }
            Err(_) => {}
        }
    }
}

fn disposals() -> &'static Disposals {
    static D: std::sync::OnceLock<Disposals> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let mut first = Disposers {
            tx,
            rx: std::sync::Arc::new(std::sync::Mutex::new(rx)),
            started: 0,
            refused: false,
            counts: Default::default(),
        };
        // One from the start, while threads can be had (a pids limit the agents reach later
        // may refuse more); the rest as removals need them.
        first.start();
        Disposals {
            pending: std::sync::Mutex::new(0),
            idle: std::sync::Condvar::new(),
            threads: std::sync::Mutex::new(first),
        }
    })
}

/// Work on a thread of its own that must end before the process may (the pools' making: a
/// spare half made at exit would be left behind): [`settled`] waits for it as for a removal.
/// Held for as long as the work runs.
pub(crate) struct Busy(());

/// Count work as running until the [`Busy`] is dropped.
pub(crate) fn busy() -> Busy {
    if let Ok(mut n) = disposals().pending.lock() {
        *n += 1;
    }
    Busy(())
}

impl Drop for Busy {
    fn drop(&mut self) {
        disposals().done();
    }
}

impl Disposals {
    fn done(&self) {
        if let Ok(mut n) = self.pending.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Block until no removal is pending.
    fn wait_idle(&self) {
        let Ok(mut n) = self.pending.lock() else {
            return;
        };
        while *n > 0 {
            match self.idle.wait(n) {
                Ok(g) => n = g,
                Err(_) => return,
            }
        }
    }
}

/// Remove what an ended attempt left (its emptied cgroup, its workspace and the workspace's
/// tmpfs) on one of a few threads of their own, several at once: unmounting a workspace waits
/// for an RCU grace period, which concurrent unmounts share, so one after another on the
/// reaper drained only a few dozen workspaces a second, and the mounts that piled up meanwhile
/// made every new mount namespace (each agent's root) slower to copy and to detach.
/// [`settled`] waits for these too.
pub(crate) fn dispose_later(job: impl FnOnce() + Send + 'static) {
    let d = disposals();
    // Counted before a thread can take it (and count it done).
    if let Ok(mut n) = d.pending.lock() {
        *n += 1;
    }
    let queued = match d.threads.lock() {
        Ok(mut t) => t.queue(Box::new(job)),
        Err(_) => Err(Box::new(job) as Job),
    };
    // No thread to take it (none could be started): the job runs in place.
    if let Err(job) = queued {
        job();
        d.done();
    }
}

/// Wait until the jobs handed to the reaper before this call are done, and the removals
/// they handed on (for tests, and for a program that wants nothing left behind when it exits).
pub async fn settled() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    defer(move || {
        disposals().wait_idle();
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Like [`settled`], blocking the calling thread (for code outside a runtime, such as a test
/// fixture's drop).
pub fn settle_blocking() {
    let (tx, rx) = std::sync::mpsc::channel();
    defer(move || {
        disposals().wait_idle();
        let _ = tx.send(());
    });
    let _ = rx.recv();
}

/// End a process that has not been reaped yet, without blocking: SIGKILL to it (through
/// `pidfd` when given) and to its process group now; then, on the reaper thread, once it has
/// exited, SIGKILL to the group again, `then` (to empty its cgroup, say), and the reap.
pub(crate) fn kill_and_reap(
    pid: i32,
    pidfd: Option<OwnedFd>,
    then: impl FnOnce() + Send + 'static,
) {
    if let Some(fd) = &pidfd {
        pidfd_kill(fd);
    }
    kill_group(pid, libc::SIGKILL);
    defer(move || {
        if let Some(fd) = &pidfd {
            use std::os::fd::AsFd;
            let mut fds = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, EXIT_WAIT_MS);
        }
        // The leader is not reaped, so the group id cannot have been reused.
        kill_group(pid, libc::SIGKILL);
        then();
        if try_reap(pid).is_none() {
            let waited = std::thread::Builder::new()
                .name("corral-reap-wait".into())
                .spawn(move || {
                    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
                    drop(pidfd);
                });
            if let Err(e) = waited {
                tracing::warn!(pid, "cannot wait for a killed process: {e}");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a process with this pid exists (zombies included).
    fn pid_alive(pid: i32) -> bool {
        // Signal 0: only existence and permission are checked.
        pid > 0 && nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn wait_statuses_decode_exits_signals_and_cores() {
        let exited = |code: i32| code << 8;
        assert_eq!(WaitStatus::decode(exited(3)).exit_code, Some(3));
        assert_eq!(WaitStatus::decode(exited(0)).signal, None);
        let killed = WaitStatus::decode(libc::SIGKILL);
        assert_eq!(
            (killed.exit_code, killed.signal),
            (None, Some(libc::SIGKILL))
        );
        assert!(!killed.core_dumped);
        assert!(WaitStatus::decode(libc::SIGSEGV | 0x80).core_dumped);
        // A real-time signal, which nix's WaitStatus cannot name.
        let rt = libc::SIGRTMIN() + 2;
        assert_eq!(WaitStatus::decode(rt).signal, Some(rt));
        // Stopped (0x7f): neither.
        assert_eq!(
            WaitStatus::decode((libc::SIGSTOP << 8) | 0x7f),
            WaitStatus::default()
        );
        let r = Reaped {
            max_rss_kb: 1,
            ..WaitStatus::decode(exited(7)).into()
        };
        assert_eq!((r.exit_code, r.max_rss_kb), (Some(7), 1));
    }

    #[tokio::test]
    async fn a_killed_process_is_reaped_by_the_reaper() {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        // SAFETY: pidfd_open on our own child, no pointers.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        // SAFETY: a fresh fd we own.
        let pidfd =
            (raw >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = ran.clone();
        kill_and_reap(pid, pidfd, move || {
            seen.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        settled().await;
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!pid_alive(pid), "{pid} is still there (a zombie?)");
        drop(child);
    }

    #[tokio::test]
    async fn settled_waits_for_the_disposals_handed_on() {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Arc::new(std::sync::Mutex::new(gate_rx));
        // Handed on from the reaper, as an attempt's guard does; the first one waits until the
        // test lets it go, after `settled` has been asked for.
        for i in 0..20 {
            let (done, gate) = (done.clone(), gate.clone());
            defer(move || {
                dispose_later(move || {
                    if i == 0 {
                        let _ = gate.lock().map(|g| g.recv());
                    }
                    assert_eq!(
                        std::thread::current().name(),
                        Some("corral-dispose"),
                        "a disposal ran elsewhere"
                    );
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            });
        }
        let settled = tokio::spawn(settled());
        gate_tx.send(()).expect("the first disposal waits");
        settled.await.expect("settled");
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 20);
    }

    #[test]
    fn a_burst_of_removals_gets_threads_of_its_own() {
        // Four removals handed on at once, each waiting until all four run: they pass only
        // when a thread is started for each of them (not one after another on the first). A
        // thread already waiting for work must not keep more from starting.
        let (warm_tx, warm_rx) = std::sync::mpsc::channel();
        dispose_later(move || {
            let _ = warm_tx.send(());
        });
        warm_rx.recv().expect("a removal ran");
        let running =
            std::sync::Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let (running, tx) = (running.clone(), tx.clone());
            dispose_later(move || {
                let (n, cv) = &*running;
                let Ok(mut n) = n.lock() else { return };
                *n += 1;
                cv.notify_all();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while *n < 4 {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    n = match cv.wait_timeout(n, left) {
                        Ok((g, _)) => g,
                        Err(_) => return,
                    };
                }
                let _ = tx.send(*n);
            });
        }
        drop(tx);
        let seen: Vec<usize> = rx.iter().collect();
        assert_eq!(seen, [4, 4, 4, 4], "the removals did not all run at once");
    }

    #[tokio::test]
    async fn jobs_run_in_order_and_on_the_reaper() {
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3 {
            let tx = tx.clone();
            defer(move || {
                let _ = tx.send((i, on_reaper()));
            });
        }
        settled().await;
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, [(0, true), (1, true), (2, true)]);
        assert!(!on_reaper());
    }
}
