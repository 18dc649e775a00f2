//! The agent's own clone under `corral-init`: started by the spawn child (pid 1 of the
//! namespace) with every restriction already in force, it drops what the init keeps and execs
//! the agent as pid 2. Like the child, raw system calls only.

#![warn(unsafe_op_in_unsafe_fn)]

use super::child::{drop_bounding_set, exec};
use super::prepared::{InitKind, Prepared};

/// The agent's side under an init: namespaces, limits, landlock and seccomp are in place (it
/// shares the child's); it drops the init's status fd, every capability (the bounding set
/// too) and takes the agent's ids, so that it shares nothing with its init but the sandbox,
/// then execs. On failure it leaves the errno in `agent_errno` for the child.
pub(super) extern "C" fn agent_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Prepared`; the child that cloned us is suspended
    // (CLONE_VFORK) until we exec or exit.
    let p = unsafe { &mut *arg.cast::<Prepared>() };
    // SAFETY: we are the agent's clone, in the sandbox, before its exec.
    if unsafe { agent_drop_privileges(p) } {
        if let Some(path) = &p.agent_path {
            // SAFETY: the parent's NUL-terminated strings and arrays. Returns only on failure.
            unsafe { exec(path, &p.agent_argv, &p.envp) };
        }
    }
    // SAFETY: errno is readable at any time; the write is to the live `Prepared`, which the
    // child reads once we are gone; `_exit` skips every Rust clean-up.
    unsafe {
        std::ptr::write_volatile(&mut p.agent_errno, (*libc::__errno_location()).max(1));
        libc::_exit(127)
    }
}

/// The agent's privileges under an init: close the init's status fd (5), empty the bounding
/// set, take the agent's ids, clear every capability. Whether all went through (`errno` set
/// otherwise).
///
/// # Safety
/// Only in the agent's clone ([`agent_main`]).
unsafe fn agent_drop_privileges(p: &Prepared) -> bool {
    // SAFETY: raw calls with integer arguments, an empty group list and stack data (capset);
    // `drop_bounding_set` in the agent's clone, which its contract allows.
    unsafe {
        libc::close(5);
        let mut ok = drop_bounding_set(InitKind::None, p.bounding_narrowed).is_ok();
        if let (Some((uid, gid)), true) = (p.uid_gid, ok) {
            // Raw system calls, not libc's: in a CLONE_VM child libc's setuid would broadcast
            // to the supervisor's threads (its all-threads setxid), under its locks.
            ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
        }
        ok && clear_caps() == 0
    }
}

/// Clear every capability of the calling thread (effective, permitted, inheritable).
///
/// # Safety
/// A raw system call over stack data: callable between clone and exec.
pub(super) unsafe fn clear_caps() -> libc::c_long {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: a version-3 header and the two data structs it expects, on our stack.
    unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) }
}
