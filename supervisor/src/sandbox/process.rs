//! Processes after the spawn: waiting for exit through a pidfd, reaping with rusage, signalling
//! a whole process group, and the subreaper that adopts whatever an agent double-forks.
//!
//! The supervisor is a child subreaper, so orphans of agents are reparented to it. Each
//! attempt reaps its own agent (with `wait4`, for status and rusage) and, after killing its
//! cgroup, exactly the pids that were in it ([`reap_adopted`]). Nothing here waits for "any
//! child": a program embedding corral keeps its own children's exit statuses. (With a pid
//! namespace, orphans go to the namespace's `corral-init` instead.)
//!
//! The reaper ([`defer`], [`kill_and_reap`]) is one background thread for the blocking end of
//! what was dropped rather than torn down (an attempt's future, a warm stem, a cgroup with
//! processes in it): the kill is sent at once by the thread that dropped it, and the waiting,
//! reaping and removal happen on the reaper, so that a drop never blocks a runtime worker.

use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// How a process ended, and what it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
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

/// Process-level errors.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Registering the pidfd with the runtime failed.
    #[error("watch pidfd of pid {pid}: {source}")]
    Watch {
        /// The process.
        pid: i32,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Reap `pid` if it has exited. `None` while it still runs.
pub fn try_reap(pid: i32) -> Option<Reaped> {
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    if r != pid {
        return None;
    }
    let ms = |tv: libc::timeval| (tv.tv_sec as u64) * 1000 + (tv.tv_usec as u64) / 1000;
    let mut out = Reaped {
        cpu_user_ms: ms(ru.ru_utime),
        cpu_sys_ms: ms(ru.ru_stime),
        max_rss_kb: ru.ru_maxrss.max(0) as u64,
        ..Default::default()
    };
    if libc::WIFEXITED(status) {
        out.exit_code = Some(libc::WEXITSTATUS(status));
    } else if libc::WIFSIGNALED(status) {
        out.signal = Some(libc::WTERMSIG(status));
        out.core_dumped = libc::WCOREDUMP(status);
    }
    Some(out)
}

/// A pidfd registered with the runtime: readable once the process has exited.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
}

impl PidFd {
    /// Watch `pidfd` of `pid`.
    pub fn new(pid: i32, pidfd: OwnedFd) -> Result<PidFd, ProcessError> {
        // SAFETY: an OwnedFd is a valid open fd that stays open, and refers to the same pidfd,
        // for as long as the AsyncFd owns it; its as_raw_fd always returns that fd.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .map_err(|e| ProcessError::Watch {
            pid,
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(PidFd { fd, pid })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Wait until the process has exited (it is then a zombie until reaped).
    pub async fn exited(&self) {
        // A pidfd stays readable once the process has exited: no need to clear readiness.
        let _ = self.fd.readable().await;
    }

    /// Poll form of [`PidFd::exited`]: registers the task's waker, no future to keep.
    pub fn poll_exited(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.fd.poll_read_ready(cx).map(|_| ())
    }

    /// A second descriptor of the same pidfd (for the reaper, when this one goes with the
    /// runtime it is registered with).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.get_ref().try_clone()
    }

    /// Send a signal to the process itself, race-free (cannot hit a reused pid).
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

/// SIGKILL the process of a pidfd (not registered with the runtime). Returns whether it was
/// sent.
pub fn pidfd_kill(pidfd: &OwnedFd) -> bool {
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

/// Send `sig` to every process of process group `pgid`. Returns whether any existed.
pub fn kill_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill with a negative pid signals the group; pgid > 1 excludes "all processes".
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Whether a process with this pid exists (zombies included).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    pid > 0 && unsafe { libc::kill(pid, 0) == 0 }
}

/// Make this process a child subreaper: orphans of its descendants are reparented to it
/// instead of init, so they stay ours to reap and kill.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reap processes of an agent's tree that were reparented to this subreaper. Only the pids
/// given are touched (never a child some other part of the program is waiting for); pids that
/// are not our children, or not yet exited, are left alone. Returns how many were reaped.
pub fn reap_adopted(pids: &[u32]) -> usize {
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

/// Blocking work handed to the reaper thread.
type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    static ON_REAPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How long the reaper waits for a killed process to exit before it leaves the wait to a
/// thread of its own (a process stuck in the kernel must not hold up the others).
const EXIT_WAIT_MS: u16 = 5000;

/// Whether this thread is the reaper.
pub fn on_reaper() -> bool {
    ON_REAPER.with(|r| r.get())
}

/// Run `job` on the reaper thread, after the jobs handed to it before (at once, here, when
/// called on the reaper itself or when the thread cannot be started).
pub fn defer(job: impl FnOnce() + Send + 'static) {
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

/// Wait until the jobs handed to the reaper before this call are done (for tests, and for a
/// program that wants nothing left behind when it exits).
pub async fn settled() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    defer(move || {
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// End a process that has not been reaped yet, without blocking: SIGKILL to it (through
/// `pidfd` when given) and to its process group now; then, on the reaper thread, once it has
/// exited, SIGKILL to the group again, `then` (to empty its cgroup, say), and the reap.
pub fn kill_and_reap(pid: i32, pidfd: Option<OwnedFd>, then: impl FnOnce() + Send + 'static) {
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
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
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
