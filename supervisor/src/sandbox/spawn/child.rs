//! The clone child: the steps between `clone` and `execve`, in order (the agent's own clone
//! under `corral-init` is `agent.rs`).
//!
//! Everything here runs in the parent's address space on a private stack, with the parent
//! suspended (`CLONE_VFORK`): raw, async-signal-safe system calls over the [`Prepared`] data
//! only; no allocation, no locks, no Rust runtime state. Each step is an `unsafe fn` whose
//! contract is that: call it only in the spawn child, in the order [`run`] keeps (the module
//! doc of `sandbox::spawn` and `docs/isolation.md` say why each comes where it does). A step
//! that fails returns its [`Stage`] with `errno` still set by the failing call; [`child_main`]
//! records both for the parent and exits.
//!
//! seccomp is installed with one raw `prctl(PR_SET_SECCOMP)` of the program built in the parent
//! (`sandbox::seccomp`).

#![warn(unsafe_op_in_unsafe_fn)]

use super::agent::{agent_main, clear_caps};
use super::prepared::{InitKind, Prepared};
use super::stage::{check, Stage, Step};
use super::{ChildStack, Namespaces, Rlimit, MAX_TARGET};
use crate::sandbox::landlock;
use crate::sandbox::rootfs::MountOps;
use std::convert::Infallible;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

const CAP_KILL: i32 = 5;
const CAP_SETGID: i32 = 6;
const CAP_SETUID: i32 = 7;
const CAP_SETPCAP: i32 = 8;

/// What a spawner thread keeps in its capability bounding set: what any init keeps (a stem's,
/// the most; see [`drop_privileges`]).
pub(super) const SPAWNER_KEEPS: [i32; 4] = [CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP];

/// The child side, entered by `clone`. Runs in the parent's address space on its own stack:
/// raw syscalls only. Never returns: it execs, or exits 127 with the failing stage and errno
/// written into the [`Prepared`].
pub(super) extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Prepared` the parent passed to clone; the parent is suspended
    // (CLONE_VFORK) until we exec or exit, so nothing else touches it meanwhile.
    let p = unsafe { &mut *arg.cast::<Prepared>() };
    // SAFETY: we are that child, between clone and execve, which is `run`'s contract.
    let stage = match unsafe { run(p) } {
        Ok(never) => match never {},
        Err(stage) => stage,
    };
    // SAFETY: still in the child; `errno` is as the failing step left it.
    unsafe { fail(p, stage) }
}

/// Record the failing stage and `errno` for the parent, then `_exit(127)`.
///
/// # Safety
/// Only in the spawn child (the parent reads the record once we are gone), right after the
/// failing call (nothing in between may change `errno`).
unsafe fn fail(p: &mut Prepared, stage: Stage) -> ! {
    // SAFETY: errno is readable at any time; the writes are to the live `Prepared`, which the
    // parent reads with volatile loads after we exit; `_exit` skips every Rust clean-up.
    unsafe {
        let errno = *libc::__errno_location();
        std::ptr::write_volatile(&mut p.err_stage, Some(stage));
        std::ptr::write_volatile(&mut p.err_errno, errno);
        libc::_exit(127)
    }
}

/// Every step, in order, then `execve`. Returns only on failure.
///
/// # Safety
/// Only in the spawn child, between clone and execve, with `p` the parent's `Prepared`.
unsafe fn run(p: &mut Prepared) -> Result<Infallible, Stage> {
    // Each step's contract is the spawn child and its place in this order; each SAFETY below
    // says why that place.
    if let Some(mask) = &p.affinity {
        // SAFETY: first: everything after runs where the kernel may move it.
        unsafe { restore_affinity(mask) }?;
    }
    // SAFETY: first: no parent handler may run here.
    unsafe { reset_signals() }?;
    // SAFETY: the group is what the supervisor kills.
    unsafe { new_session() }?;
    // SAFETY: before anything else can fork.
    unsafe { attach_cgroups(&p.cgroup_fds) }?;
    // Namespaces: user maps first (they grant the rest), then network, mounts, name.
    if let Some(maps) = &p.user_maps {
        // SAFETY: in a new user namespace, before anything that needs its rights.
        unsafe { write_user_maps(maps) }?;
    }
    // SAFETY: after the user maps, which may be what allows it.
    unsafe { enter_network(&p.ns) }?;
    if p.ns.mount {
        // SAFETY: in the mount namespace clone gave us.
        unsafe { build_root(p.root.as_mut()) }?;
        if let (Some(ruleset), true) = (p.landlock, p.ns.pid) {
            // SAFETY: after the root, whose fresh /proc this grants; the ruleset fd is ours.
            unsafe { grant_proc(ruleset) }?;
        }
    }
    if let Some(name) = &p.hostname {
        // SAFETY: in the UTS namespace clone gave us.
        unsafe { set_hostname(name) }?;
    }
    // SAFETY: plain limits over prepared data.
    unsafe { set_rlimits(&p.rlimits) }?;
    if let Some(cwd) = &p.cwd {
        // SAFETY: in the agent's root, which is built by now.
        unsafe { change_dir(cwd) }?;
    }
    // SAFETY: every source is above MAX_TARGET (see `lift_low_fds`).
    unsafe { arrange_fds(&p.fds) }?;
    // SAFETY: after everything that needs privilege, before what the ids change resets.
    unsafe { drop_privileges(p) }?;
    if p.pdeathsig {
        // In a new pid namespace the parent is outside it and getppid() reads 0.
        let parent = if p.ns.pid { 0 } else { p.parent_pid };
        // SAFETY: after the uid change, which clears the death signal.
        unsafe { die_with_parent(parent) }?;
    }
    if p.no_new_privs {
        // SAFETY: before landlock, which needs it (or privilege).
        unsafe { set_no_new_privs() }?;
    }
    if let Some(ruleset) = p.landlock {
        // SAFETY: every rule is in (the /proc one above); the fd is ours.
        unsafe { restrict_landlock(ruleset) }?;
    }
    if let Some(program) = p.seccomp {
        // SAFETY: after no_new_privs; the program lives for the process's life.
        unsafe { install_seccomp(program) }?;
    }
    // SAFETY: the ruleset and every source fd are used by now.
    unsafe { close_other_fds() }?;
    if p.agent_path.is_some() {
        // SAFETY: everything above is in force, and is what the agent inherits.
        unsafe { start_agent(p) }?;
    }
    // SAFETY: last; the strings and arrays are the parent's, NUL-terminated.
    Err(unsafe { exec(&p.path, &p.argv, &p.envp) })
}

/// Default dispositions, so no parent handler runs here or survives into the agent (exec
/// resets handled signals, but not ignored ones such as Rust's SIGPIPE); then unblock every
/// signal (the parent blocked them all around clone).
///
/// # Safety
/// Only in the spawn child, first.
unsafe fn reset_signals() -> Step {
    // SAFETY: zeroed sigaction and sigset_t are valid; the calls read and write these stack
    // values only.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // EINVAL for the few reserved numbers is fine.
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) == 0,
            Stage::SignalMask,
        )
    }
}

/// Take back a whole CPU mask (the asking thread's, see `spawn_now`): the spawning thread runs
/// pinned to one CPU (its lane's, or narrowed around `clone`), which placed us there; the agent
/// runs wherever its supervisor may.
///
/// # Safety
/// Only in the spawn child.
unsafe fn restore_affinity(mask: &libc::cpu_set_t) -> Step {
    // SAFETY: our own thread (0); the kernel reads a whole cpu_set_t we hold.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) };
    check(r == 0, Stage::Affinity)
}

/// Own session and process group: the group is what the supervisor kills.
///
/// # Safety
/// Only in the spawn child (it would move the caller out of its session).
unsafe fn new_session() -> Step {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() } >= 0, Stage::Session)
}

/// Write `0` (the caller) into each cgroup attach fd (`tasks` on v1, `cgroup.procs` on v2).
///
/// # Safety
/// Only in the spawn child, before anything can fork; `fds` are open for writing.
unsafe fn attach_cgroups(fds: &[RawFd]) -> Step {
    for &fd in fds {
        // SAFETY: a one-byte write from a static buffer.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        check(n == 1, Stage::CgroupAttach)?;
    }
    Ok(())
}

/// Deny `setgroups` and write the uid and gid maps of our new user namespace.
///
/// # Safety
/// Only in the spawn child, in a user namespace of its own, before the steps that need its
/// rights.
unsafe fn write_user_maps(maps: &[CString; 2]) -> Step {
    // SAFETY: raw open/write/close over NUL-terminated paths and prepared data.
    let ok = unsafe {
        write_file(c"/proc/self/setgroups", b"deny") == 0
            && write_file(c"/proc/self/uid_map", maps[0].as_bytes()) == 0
            && write_file(c"/proc/self/gid_map", maps[1].as_bytes()) == 0
    };
    check(ok, Stage::UserMaps)
}

/// Join the shared network namespace, or bring up loopback in our own.
///
/// # Safety
/// Only in the spawn child, after the user maps; `ns.net_join` is an open namespace fd.
unsafe fn enter_network(ns: &Namespaces) -> Step {
    if let Some(fd) = ns.net_join {
        // SAFETY: setns on an fd the parent keeps open.
        check(
            unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0,
            Stage::JoinNetwork,
        )?;
    }
    if ns.net_own {
        // SAFETY: raw calls over a stack request.
        check(unsafe { loopback_up_raw() } == 0, Stage::Loopback)?;
    }
    Ok(())
}

/// The agent's own root (see `sandbox::rootfs`), else only private propagation.
///
/// # Safety
/// Only in the spawn child, in a mount namespace of its own.
unsafe fn build_root(root: Option<&mut MountOps>) -> Step {
    let rc = match root {
        // SAFETY: `apply`'s contract: the spawn child, in its own mount namespace.
        Some(ops) => unsafe { ops.apply() },
        None => {
            let none = std::ptr::null::<libc::c_char>();
            // SAFETY: a propagation change on "/" with NUL-terminated static strings.
            unsafe {
                libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            }
        }
    };
    check(rc == 0, Stage::Root)
}

/// Grant read access to the `/proc` the child mounted, which the parent could not name
/// (everything else the agent sees is a bind of a host inode the parent's rules name).
///
/// # Safety
/// Only in the spawn child, after its root is built; `ruleset` is a landlock ruleset fd.
unsafe fn grant_proc(ruleset: RawFd) -> Step {
    // SAFETY: open with a static NUL-terminated path.
    let fd = unsafe { libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    check(
        fd >= 0 && landlock::add_rule_raw(ruleset, fd, landlock::READ) == 0,
        Stage::ProcRule,
    )?;
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Set the host name of our UTS namespace.
///
/// # Safety
/// Only in the spawn child, in a UTS namespace of its own.
unsafe fn set_hostname(name: &CStr) -> Step {
    // SAFETY: a NUL-terminated name and its length.
    let rc = unsafe { libc::sethostname(name.as_ptr(), name.to_bytes().len()) };
    check(rc == 0, Stage::Hostname)
}

/// Resource limits.
///
/// # Safety
/// Only in the spawn child.
unsafe fn set_rlimits(limits: &[Rlimit]) -> Step {
    for &(resource, soft, hard) in limits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: a stack rlimit.
        check(
            unsafe { libc::setrlimit(resource, &lim) } == 0,
            Stage::Rlimit,
        )?;
    }
    Ok(())
}

/// The working directory.
///
/// # Safety
/// Only in the spawn child, after its root is built.
unsafe fn change_dir(cwd: &CStr) -> Step {
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::chdir(cwd.as_ptr()) } == 0, Stage::Chdir)
}

/// Place each source fd on its target (0..=7).
///
/// # Safety
/// Only in the spawn child; every source must be above [`MAX_TARGET`], so that no `dup2`
/// clobbers another source.
unsafe fn arrange_fds(fds: &[(RawFd, RawFd)]) -> Step {
    for &(src, target) in fds {
        // SAFETY: dup2 between fds of this process.
        check(unsafe { libc::dup2(src, target) } >= 0, Stage::Fds)?;
    }
    Ok(())
}

/// Privileges: the bounding set goes first (it needs `CAP_SETPCAP`), then the ids, then
/// whatever capabilities are left.
///
/// Under an init, the init keeps root (and its uid stays apart from the agent's, so the agent
/// cannot reach it) with only the capabilities it needs: `CAP_KILL` to forward signals, and
/// for a stem `CAP_SETUID`/`CAP_SETGID` to start its agent as the agent's user and
/// `CAP_SETPCAP` to empty the agent's bounding set (else it would keep these three). The agent
/// drops everything itself ([`agent_main`], or the stem's init).
///
/// # Safety
/// Only in the spawn child, after every step that needs privilege.
unsafe fn drop_privileges(p: &Prepared) -> Step {
    let under_init = p.init_kind != InitKind::None;
    if p.drop_caps {
        // SAFETY: our contract.
        unsafe { drop_bounding_set(p.init_kind, p.bounding_narrowed) }?;
    }
    if let (Some((uid, gid)), false) = (p.uid_gid, under_init) {
        // SAFETY: our contract; after the bounding set.
        unsafe { take_ids(uid, gid) }?;
    }
    if p.drop_caps && !under_init {
        // SAFETY: a raw capset over stack data.
        check(unsafe { clear_caps() } == 0, Stage::Capabilities)?;
    }
    Ok(())
}

/// Empty the capability bounding set but for what the init keeps (see [`drop_privileges`]).
///
/// With `narrowed`, the set holds at most [`SPAWNER_KEEPS`]: the spawner thread that cloned
/// the child emptied its own set but for those when it started (`spawner::narrow_bounding_set`),
/// the child inherited it, and no user namespace was made (a new one starts with a full set).
/// Then only those few are dropped: each drop makes and commits new credentials, and the 41
/// drops of a whole set took 55–90 µs of each spawn here. Otherwise every capability is.
///
/// # Safety
/// Only in the spawn child, or in the agent's clone under an init ([`agent_main`]).
pub(super) unsafe fn drop_bounding_set(init: InitKind, narrowed: bool) -> Step {
    let keep = |cap: i32| match init {
        InitKind::None => false,
        InitKind::Adopt => cap == CAP_KILL,
        InitKind::Stem => SPAWNER_KEEPS.contains(&cap),
    };
    if narrowed {
        for cap in SPAWNER_KEEPS.into_iter().filter(|&c| !keep(c)) {
            // SAFETY: prctl with integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            check(rc == 0, Stage::BoundingSet)?;
        }
        return Ok(());
    }
    for cap in (0..64).filter(|&c| !keep(c)) {
        // SAFETY: prctl with integer arguments; errno is readable at any time.
        let (rc, errno) = unsafe {
            let rc = libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            (rc, *libc::__errno_location())
        };
        // EINVAL: a number past the kernel's last capability, and so is every higher one
        // (the kernel's capabilities are numbered without gaps): nothing left to drop.
        if rc != 0 && errno == libc::EINVAL {
            break;
        }
        check(rc == 0, Stage::BoundingSet)?;
    }
    Ok(())
}

/// No supplementary groups, then the agent's gid and uid.
///
/// # Safety
/// Only in the spawn child (it would drop the supervisor's ids).
unsafe fn take_ids(uid: u32, gid: u32) -> Step {
    // SAFETY: setgroups with an empty list, then plain ids.
    unsafe {
        // Raw system calls, not libc's: in a CLONE_VM child libc's setuid would broadcast to
        // the supervisor's threads (its all-threads setxid), under its locks.
        let none = std::ptr::null::<libc::gid_t>();
        check(
            libc::syscall(libc::SYS_setgroups, 0, none) == 0,
            Stage::Setgroups,
        )?;
        check(
            libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0,
            Stage::Setgid,
        )?;
        check(
            libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0,
            Stage::Setuid,
        )
    }
}

/// Die with the supervisor: `PR_SET_PDEATHSIG` (set after the uid change, which clears it),
/// then check that the parent, `expected` as `getppid` reads it, did not die before it took
/// effect.
///
/// # Safety
/// Only in the spawn child, after the ids change.
unsafe fn die_with_parent(expected: libc::pid_t) -> Step {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(rc == 0, Stage::Pdeathsig)?;
    // SAFETY: getppid has no arguments; errno is writable at any time.
    unsafe {
        if libc::getppid() != expected {
            *libc::__errno_location() = libc::ESRCH;
            return Err(Stage::ParentCheck);
        }
    }
    Ok(())
}

/// `no_new_privs`: exec can grant nothing (no setuid bits, no file capabilities).
///
/// # Safety
/// Only in the spawn child.
unsafe fn set_no_new_privs() -> Step {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc == 0, Stage::NoNewPrivs)
}

/// Restrict ourselves (and so the agent) with the landlock ruleset.
///
/// # Safety
/// Only in the spawn child, after `no_new_privs` (or with privilege); `ruleset` is a landlock
/// ruleset fd.
unsafe fn restrict_landlock(ruleset: RawFd) -> Step {
    // SAFETY: a raw system call with an fd and no flags.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0) };
    check(rc == 0, Stage::Landlock)
}

/// Install the seccomp filter built in the parent.
///
/// # Safety
/// Only in the spawn child, after `no_new_privs` (or with privilege).
unsafe fn install_seccomp(program: &[libc::sock_filter]) -> Step {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program, which lives as long as the process, through a
    // stack `sock_fprog`; it does not write through `filter`.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    check(rc == 0, Stage::Seccomp)
}

/// Nothing but 0..=7 crosses exec: every other fd is marked close-on-exec, so the kernel
/// closes it in `execve` (and in the agent's, under an init).
///
/// Marking them, rather than closing them here, keeps the spawn short: a supervisor with
/// thousands of live agents holds tens of thousands of fds, whose closing took most of each
/// spawn, on a spawner thread, with the parent suspended. `execve` closes them after it
/// has released the parent (`CLONE_VFORK` ends when the new program's memory replaces the
/// old), in the child's own time.
///
/// # Safety
/// Only in the spawn child (it would change the supervisor's fds), once the ruleset and the
/// source fds are no longer needed.
unsafe fn close_other_fds() -> Step {
    // SAFETY: close_range with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (MAX_TARGET + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    check(rc == 0, Stage::CloseFds)
}

/// Start the agent first (pid 2 of the namespace), in a vfork-style clone of its own; we
/// resume once it has exec'd (or failed to), then become its init.
///
/// # Safety
/// Only in the spawn child, last before its `execve`: the agent inherits everything in force.
unsafe fn start_agent(p: &mut Prepared) -> Step {
    let Some(top) = p.agent_stack.as_mut().map(ChildStack::top) else {
        // (Made whenever there is an agent to start: not reached.)
        // SAFETY: errno is writable at any time.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return Err(Stage::CloneAgent);
    };
    let arg = (p as *mut Prepared).cast();
    // SAFETY: `agent_main` only makes raw calls over `p`, which outlives it (CLONE_VFORK
    // suspends us until it execs or exits); `top` is the aligned top of a live stack.
    let agent = unsafe {
        libc::clone(
            agent_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    check(agent >= 0, Stage::CloneAgent)?;
    // SAFETY: volatile read of a field the agent's clone may have written; reaping our own
    // exited child; errno is writable at any time.
    unsafe {
        let errno = std::ptr::read_volatile(&p.agent_errno);
        if errno != 0 {
            libc::waitpid(agent, std::ptr::null_mut(), 0);
            *libc::__errno_location() = errno;
            return Err(Stage::Execve);
        }
    }
    Ok(())
}

/// `execve`; returns only when it failed.
///
/// # Safety
/// Only in the spawn child, last; `argv` and `envp` are NULL-terminated arrays of pointers to
/// live NUL-terminated strings.
pub(super) unsafe fn exec(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Stage {
    // SAFETY: per our contract.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Stage::Execve
}

/// Write `data` to a file by path with raw calls (for the child). Returns 0 on success.
///
/// # Safety
/// Only raw system calls; callable between clone and exec.
unsafe fn write_file(path: &CStr, data: &[u8]) -> libc::c_int {
    // SAFETY: a NUL-terminated path; a write from a live slice; closing what we opened.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return -1;
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n == data.len() as isize {
            0
        } else {
            -1
        }
    }
}

/// Set IFF_UP on `lo` with raw calls (for the child). Returns 0 on success.
///
/// # Safety
/// Only raw system calls over a stack-allocated request; callable between clone and exec.
unsafe fn loopback_up_raw() -> libc::c_int {
    // SAFETY: a socket we close; a zeroed ifreq (valid) naming "lo", read and written by the
    // two ioctls only.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return -1;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(sock);
        rc
    }
}
