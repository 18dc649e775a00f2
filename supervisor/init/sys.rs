//! The system calls `corral-init` makes, raw: the program links no C library (see `main.rs`).
//! Each returns the kernel's answer: a value, or `-errno`.

use core::arch::asm;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const MMAP: usize = 9;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const FCNTL: usize = 72;
    pub const SETGROUPS: usize = 116;
    pub const SETRESUID: usize = 117;
    pub const SETRESGID: usize = 119;
    pub const CAPSET: usize = 126;
    pub const PRCTL: usize = 157;
    pub const EXIT_GROUP: usize = 231;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const MMAP: usize = 222;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const RT_SIGACTION: usize = 134;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const WAIT4: usize = 260;
    pub const KILL: usize = 129;
    pub const FCNTL: usize = 25;
    pub const SETGROUPS: usize = 159;
    pub const SETRESUID: usize = 147;
    pub const SETRESGID: usize = 149;
    pub const CAPSET: usize = 91;
    pub const PRCTL: usize = 167;
    pub const EXIT_GROUP: usize = 94;
}

pub const EINTR: i32 = 4;
pub const E2BIG: i32 = 7;
pub const ECHILD: i32 = 10;
pub const ENOMEM: i32 = 12;
pub const EINVAL: i32 = 22;

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGQUIT: i32 = 3;
pub const SIGUSR1: i32 = 10;
pub const SIGUSR2: i32 = 12;
pub const SIGPIPE: i32 = 13;
pub const SIGTERM: i32 = 15;
pub const SIGCHLD: usize = 17;

pub const F_GETFD: usize = 1;
pub const F_SETFD: usize = 2;
pub const FD_CLOEXEC: usize = 1;
pub const PR_SET_DUMPABLE: usize = 4;
pub const PR_CAPBSET_DROP: usize = 24;
const SA_RESTART: u64 = 0x1000_0000;
#[cfg(target_arch = "x86_64")]
const SA_RESTORER: u64 = 0x0400_0000;

/// # Safety
/// A raw system call: the caller vouches for what the kernel will read and write.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn call(n: usize, a: [usize; 6]) -> isize {
    let r: isize;
    // SAFETY: the kernel's x86_64 calling convention; rcx and r11 are clobbered.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a[0], in("rsi") a[1],
             in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// # Safety
/// A raw system call: the caller vouches for what the kernel will read and write.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub unsafe fn call(n: usize, a: [usize; 6]) -> isize {
    let r: isize;
    // SAFETY: the kernel's aarch64 calling convention.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a[0] as isize => r, in("x1") a[1],
             in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5], options(nostack));
    }
    r
}

/// The errno of a failed call's return value (`-errno`), else 0.
pub fn errno(r: isize) -> i32 {
    if r < 0 {
        (-r) as i32
    } else {
        0
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe {
        call(
            nr::READ,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }
}

pub fn write(fd: i32, buf: &[u8]) -> isize {
    // SAFETY: the kernel reads `buf`.
    unsafe {
        call(
            nr::WRITE,
            [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }
}

pub fn close(fd: i32) {
    // SAFETY: no memory is passed.
    unsafe { call(nr::CLOSE, [fd as usize, 0, 0, 0, 0, 0]) };
}

pub fn fcntl(fd: i32, cmd: usize, arg: usize) -> isize {
    // SAFETY: only the int-argument commands are used.
    unsafe { call(nr::FCNTL, [fd as usize, cmd, arg, 0, 0, 0]) }
}

pub fn prctl(option: usize, arg: usize) -> isize {
    // SAFETY: only the int-argument options are used.
    unsafe { call(nr::PRCTL, [option, arg, 0, 0, 0, 0]) }
}

pub fn kill(pid: isize, sig: i32) {
    // SAFETY: no memory is passed.
    unsafe { call(nr::KILL, [pid as usize, sig as usize, 0, 0, 0, 0]) };
}

pub fn exit(code: i32) -> ! {
    // SAFETY: ends the process.
    unsafe { call(nr::EXIT_GROUP, [code as usize, 0, 0, 0, 0, 0]) };
    #[allow(clippy::empty_loop)]
    loop {}
}

/// `fork`, as `clone(SIGCHLD)`: our memory copied (it is small), the child on its own.
pub fn fork() -> isize {
    // SAFETY: no new stack and no shared memory: the child continues as a copy of us.
    unsafe { call(nr::CLONE, [SIGCHLD, 0, 0, 0, 0, 0]) }
}

/// `wait4(-1, ..)`: the pid reaped, its raw status and its rusage's user and system time (ms)
/// and peak resident set (KiB).
pub fn wait_any() -> Result<(i32, i32, [u64; 3]), i32> {
    let mut status: i32 = 0;
    // struct rusage: two timevals (16 bytes each) then 14 longs; ru_maxrss is the first.
    let mut ru = [0i64; 18];
    // SAFETY: the kernel writes an int and a struct rusage (144 bytes) we own.
    let r = unsafe {
        call(
            nr::WAIT4,
            [
                usize::MAX,
                &mut status as *mut i32 as usize,
                0,
                ru.as_mut_ptr() as usize,
                0,
                0,
            ],
        )
    };
    if r < 0 {
        return Err(errno(r));
    }
    let ms = |s: i64, u: i64| (s.max(0) as u64) * 1000 + (u.max(0) as u64) / 1000;
    Ok((
        r as i32,
        status,
        [ms(ru[0], ru[1]), ms(ru[2], ru[3]), ru[4].max(0) as u64],
    ))
}

/// `execve`; returns the errno when it fails.
///
/// # Safety
/// `path` is NUL-terminated; `argv` and `envp` are NULL-terminated arrays of such strings.
pub unsafe fn execve(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> i32 {
    // SAFETY: per our contract.
    errno(unsafe {
        call(
            nr::EXECVE,
            [path as usize, argv as usize, envp as usize, 0, 0, 0],
        )
    })
}

/// Drop every capability from the bounding set, take the ids (when given: under an unprivileged
/// supervisor the agent stays root of its user namespace) and clear the capability sets: the
/// agent holds none either way (with one, in a user namespace, it could trace its init and open
/// its status fd). Then not dumpable again, whatever `fs.suid_dumpable` made of the uid change
/// (its `execve` makes the agent dumpable as any program). 0 or an errno.
pub fn become_agent(ids: Option<(u32, u32)>) -> i32 {
    for cap in 0..64 {
        let r = prctl(PR_CAPBSET_DROP, cap);
        if r < 0 {
            // EINVAL past the last capability this kernel knows: the set is empty.
            if errno(r) != EINVAL {
                return errno(r);
            }
            break;
        }
    }
    // SAFETY: setgroups with no list; plain ids; capset over a header and data we own
    // (_LINUX_CAPABILITY_VERSION_3: two of { effective, permitted, inheritable }, all empty).
    unsafe {
        if let Some((uid, gid)) = ids {
            for (n, a) in [
                (nr::SETGROUPS, [0, 0, 0]),
                (nr::SETRESGID, [gid as usize; 3]),
                (nr::SETRESUID, [uid as usize; 3]),
            ] {
                let r = call(n, [a[0], a[1], a[2], 0, 0, 0]);
                if r < 0 {
                    return errno(r);
                }
            }
        }
        let hdr: [u32; 2] = [0x2008_0522, 0];
        let data = [0u32; 6];
        let r = call(
            nr::CAPSET,
            [hdr.as_ptr() as usize, data.as_ptr() as usize, 0, 0, 0, 0],
        );
        if r < 0 {
            return errno(r);
        }
    }
    errno(prctl(PR_SET_DUMPABLE, 0))
}

/// One word of memory shared with the children forked after (anonymous, `MAP_SHARED`): how
/// the agent's process reports a failure before its `execve` without an fd (an agent may have
/// no fd to spare: `open_files` counts 0–7). `None` when the kernel refuses.
pub fn shared_word() -> Option<&'static core::sync::atomic::AtomicI32> {
    // SAFETY: a fresh anonymous mapping of one page, readable and writable, never unmapped: a
    // valid, aligned AtomicI32 (zero) for the life of the process.
    unsafe {
        let p = call(nr::MMAP, [0, 4096, 3, 0x01 | 0x20, usize::MAX, 0]);
        (p > 0).then(|| &*(p as *const core::sync::atomic::AtomicI32))
    }
}

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl corral_init_restorer",
    "corral_init_restorer:",
    "mov rax, 15", // rt_sigreturn
    "syscall",
);

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn corral_init_restorer();
}

/// Install `handler` (or the default when `None`) for `sig`, restarting interrupted calls.
pub fn signal(sig: i32, handler: Option<extern "C" fn(i32)>) {
    // The kernel's struct sigaction: handler, flags, restorer, mask.
    #[cfg(target_arch = "x86_64")]
    let (flags, restorer) = (
        SA_RESTART | SA_RESTORER,
        corral_init_restorer as *const () as usize,
    );
    // aarch64 returns through the vDSO's trampoline when no restorer is given.
    #[cfg(target_arch = "aarch64")]
    let (flags, restorer) = (SA_RESTART, 0usize);
    let act: [u64; 4] = [
        handler.map_or(0, |h| h as *const () as usize as u64),
        if handler.is_some() { flags } else { 0 },
        if handler.is_some() {
            restorer as u64
        } else {
            0
        },
        0,
    ];
    // SAFETY: the kernel reads a struct sigaction we own; an 8-byte signal set.
    unsafe {
        call(
            nr::RT_SIGACTION,
            [sig as usize, act.as_ptr() as usize, 0, 8, 0, 0],
        )
    };
}

/// Set the signal mask: every signal blocked (`true`) or none.
pub fn block_all(on: bool) {
    let set: u64 = if on { !0 } else { 0 };
    // SAFETY: SIG_SETMASK (2) from an 8-byte set we own.
    unsafe {
        call(
            nr::RT_SIGPROCMASK,
            [2, &set as *const u64 as usize, 0, 8, 0, 0],
        )
    };
}
