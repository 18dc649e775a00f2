//! How a child is made: file descriptors, rlimits, namespaces, cgroups, privileges; and how
//! it is waited for, signalled and reaped.
//!
//! The only room with `unsafe` code (the spawn path), each block with a SAFETY comment. It
//! knows nothing of the protocol, plans or the journal.
//!
//! Outside the crate, only what a caller may ask of the host is public: cgroup support
//! ([`cgroup::Cgroups`]), landlock ([`landlock::abi`]), the system paths an agent sees
//! ([`rootfs::SYSTEM_PATHS`]), and [`process::settled`] (every process handed to the
//! background reaper is gone).

pub mod cgroup;
pub mod landlock;
pub mod process;
pub mod rootfs;

pub(crate) mod netns;
pub(crate) mod netpool;
pub(crate) mod owner;
pub(crate) mod pool;
pub(crate) mod seccomp;
pub(crate) mod spawn;
pub(crate) mod uids;
pub(crate) mod workspace;

pub(crate) use process::become_subreaper;

use std::path::PathBuf;
use std::sync::OnceLock;

/// Where `corral-init` is: `$CORRAL_INIT`, else next to the running executable (or one
/// directory up, for test binaries in `target/*/deps`), else on `PATH`.
pub(crate) fn init_path() -> Option<&'static PathBuf> {
    static P: OnceLock<Option<PathBuf>> = OnceLock::new();
    P.get_or_init(|| {
        if let Some(p) = std::env::var_os("CORRAL_INIT") {
            return Some(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe() {
            let mut dir = exe.parent().map(PathBuf::from);
            for _ in 0..2 {
                if let Some(d) = &dir {
                    let cand = d.join("corral-init");
                    if cand.is_file() {
                        return Some(cand);
                    }
                    dir = d.parent().map(PathBuf::from);
                }
            }
        }
        spawn::resolve_program(std::path::Path::new("corral-init")).ok()
    })
    .as_ref()
}

/// Lower the calling thread's priority (nice 10): the pools' makers, whose work is for spawns
/// to come, and the disposal threads, which remove what attempts left: both should yield a core
/// to an agent starting or to the supervisor's own work when both want it (a restart's spawn
/// ran beside the removal of the workspace its attempt left), without being starved under a
/// steady load (`SCHED_IDLE` would be). Threads it
/// starts inherit it. Nothing is lost if it cannot be set.
pub(crate) fn background_thread() {
    // SAFETY: setpriority with PRIO_PROCESS and a thread id changes that thread's nice value
    // only (Linux); gettid cannot fail. No memory is passed.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
}
