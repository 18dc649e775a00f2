//! Processes after the spawn: waiting for exit through a pidfd, reaping with rusage, signalling
//! a whole process group, and the subreaper that adopts whatever an agent double-forks.
//!
//! The supervisor is a child subreaper, so orphans of agents are reparented to it. Each
//! attempt reaps its own agent (with `wait4`, for status and rusage) and, after killing its
//! cgroup, exactly the pids that were in it ([`reap_adopted`]). Nothing here waits for "any
//! child": a program embedding corral keeps its own children's exit statuses. (With a pid
//! namespace, orphans go to the namespace's `corral-init` instead.)

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
