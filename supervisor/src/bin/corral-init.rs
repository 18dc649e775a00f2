//! `corral-init`: the first process of an agent's pid namespace.
//!
//! An agent must not be pid 1 of its namespace: the kernel drops signals that pid 1 has no
//! handler for, so `abort()` would not die by SIGABRT and a default SIGTERM would be ignored,
//! and nobody would reap the agent's orphans. Like tini in containers, this tiny program is
//! pid 1 instead. With `--adopt` (how corral runs it) the agent was already started by the
//! process that then exec'd this program, as pid 2; otherwise it starts the agent itself
//! (`argv[1..]`, same environment and fds 0–4). It forwards
//! termination signals to every process of the namespace, reaps orphans, and when the agent
//! ends writes how it ended (raw wait status and rusage) to fd 5 for the supervisor, then
//! exits — which makes the kernel kill whatever else is left in the namespace.
//!
//! Record on fd 5 (little-endian, 29 bytes): kind u8 (0 = agent ended, 1 = agent could not be
//! started), status i32 (raw wait status, or errno for kind 1), utime_ms u64, stime_ms u64,
//! maxrss_kb u64. Its codec is the library's `exit_status` module, compiled into this program
//! by `#[path]` (the supervisor reads what this writes with the same code).
//!
//! It cannot be reached from the agent: it keeps root (the agent has a uid of its own) with
//! only `CAP_KILL` (and, for a stem, `CAP_SETUID`/`CAP_SETGID`/`CAP_SETPCAP`, with which it
//! starts its agent with no capability at all, bounding set included), makes itself non-dumpable
//! (so no `/proc/1/fd/5`, no ptrace, even for an agent of the same uid in a user namespace),
//! and its fds 5 and 7 never reach the agent.
//!
//! With `--stem [UID GID]` it is a warm sandbox: everything around the agent is in place (namespaces,
//! cgroup, limits, privileges, fds 0–6) and it waits on fd 7 for the agent to start:
//! `argc: u32 LE, envc: u32 LE`, then `1 + argc + envc` NUL-terminated strings (the program's
//! path, its argv, then its environment). End of file instead means the stem is not needed: it
//! exits quietly.

#![no_main]
// No Rust runtime set-up (stack-guard discovery reads /proc/self/maps, which costs a measurable
// part of an isolated spawn): this program is entered at the C `main` below.

use std::ffi::{CStr, CString};

// The record's codec, shared with the supervisor that reads it. Included by path rather than by
// linking the library: this program stays std + libc (no runtime, nothing else of the library).
// The decoding half is the reader's.
#[allow(dead_code)]
#[path = "../exit_status.rs"]
mod exit_status;

use exit_status::InitRecord;

const STATUS_FD: i32 = 5;
const CONTROL_FD: i32 = 7;
/// The largest start record accepted on fd 7.
const MAX_START: usize = 4 << 20;
const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    // SAFETY: kill is async-signal-safe; -1 from pid 1 means every process in the namespace.
    unsafe {
        libc::kill(-1, sig);
    }
}

fn report(record: InitRecord) {
    let rec = record.encode();
    // SAFETY: writing a buffer we own to an fd we were handed.
    unsafe {
        libc::write(STATUS_FD, rec.as_ptr().cast(), rec.len());
    }
}

/// The agent could not be started: `errno` says why.
fn not_started(errno: i32) {
    report(InitRecord::NotStarted { errno });
}

/// Entered directly by the C runtime.
///
/// # Safety
/// Called by the C runtime with the process's `argc`/`argv`.
#[no_mangle]
pub unsafe extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: argv holds argc valid NUL-terminated strings (C runtime contract).
    let args: Vec<CString> = (1..argc.max(0) as isize)
        .map(|i| unsafe { CStr::from_ptr(*argv.offset(i)) }.to_owned())
        .collect();
    run(args)
}

/// One line saying what this is, for a person who runs it by hand.
const USAGE: &str = "corral-init: the first process of an agent's pid namespace, started by \
                     corral (usage: corral-init --adopt | --stem [UID GID] | PROGRAM [ARGS...], \
                     with the status pipe on fd 5); not meant to be run by hand";

fn run(args: Vec<CString>) -> libc::c_int {
    // Run by hand (from a terminal, a script): corral always hands over fd 5 for the record.
    // SAFETY: F_GETFD on a number we do not own only asks whether it is open.
    let has_status_fd = unsafe { libc::fcntl(STATUS_FD, libc::F_GETFD) } != -1;
    if !has_status_fd {
        eprintln!("{USAGE}");
        return 2;
    }
    if args.is_empty() {
        eprintln!(
            "corral-init: usage: corral-init --adopt | corral-init PROGRAM [ARGS...] (started by corral)"
        );
        not_started(libc::EINVAL);
        return 2;
    }
    // SAFETY: plain libc calls on our own process: fd flags, signal dispositions, and a
    // posix_spawn whose argument arrays are NUL-terminated and outlive the call.
    unsafe {
        // First of all: nothing of ours is readable through /proc by the agent.
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            not_started(std::io::Error::last_os_error().raw_os_error().unwrap_or(1));
            return 127;
        }
        libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        for sig in FORWARDED {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
        if args[0].as_bytes() == b"--adopt" {
            // corral started the agent before exec'ing us: it is our child, pid 2 of the
            // namespace (the first process after its init).
            return wait_for(2);
        }
        extern "C" {
            static environ: *const *mut libc::c_char;
        }
        // A stem starts its agent as this user (`--stem UID GID`).
        let ids: Option<(u32, u32)> = match args.get(1..3) {
            Some([u, g]) if args[0].as_bytes() == b"--stem" => match (parse_id(u), parse_id(g)) {
                (Some(u), Some(g)) => Some((u, g)),
                _ => {
                    not_started(libc::EINVAL);
                    return 2;
                }
            },
            _ => None,
        };
        let (path, args, env) = if args[0].as_bytes() == b"--stem" {
            libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC);
            match read_start() {
                Some(start) => start,
                None => std::process::exit(0), // not needed after all
            }
        } else {
            (args[0].clone(), args, Vec::new())
        };
        if args.is_empty() {
            not_started(libc::EINVAL);
            std::process::exit(127);
        }
        let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
        argv.push(std::ptr::null_mut());
        let mut envp: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr() as *mut _).collect();
        envp.push(std::ptr::null_mut());
        let envp_ptr = if env.is_empty() {
            environ
        } else {
            envp.as_ptr()
        };
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        let mut def: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut def);
        for sig in FORWARDED {
            libc::sigaddset(&mut def, sig);
        }
        libc::sigaddset(&mut def, libc::SIGPIPE);
        libc::posix_spawnattr_setsigdefault(&mut attr, &def);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
        );
        let mut pid: libc::pid_t = 0;
        let rc = match ids {
            None => libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                std::ptr::null(),
                &attr,
                argv.as_ptr(),
                envp_ptr,
            ),
            Some(ids) => spawn_as(&mut pid, &path, &argv, envp_ptr, ids),
        };
        if rc != 0 {
            not_started(rc);
            std::process::exit(127);
        }
        wait_for(pid)
    }
}

fn parse_id(s: &CString) -> Option<u32> {
    s.to_str().ok()?.parse().ok()
}

/// What the agent's clone needs, made before it runs.
struct AsUser<'a> {
    path: &'a CStr,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    uid: u32,
    gid: u32,
    /// Written by the clone when a step fails (it shares our memory until its exec).
    errno: i32,
}

/// Start the agent as `ids` (what `posix_spawn` cannot do), the way `posix_spawn` starts a
/// process: a `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own (no copy of our memory;
/// we resume once it has exec'd), where it sets default signals, drops every capability
/// (bounding set included), takes the ids and execs. Returns 0 or the errno of the failed step.
///
/// # Safety
/// `argv` and `envp` are NUL-terminated arrays of C strings that outlive the call.
unsafe fn spawn_as(
    pid: &mut libc::pid_t,
    path: &CStr,
    argv: &[*mut libc::c_char],
    envp: *const *mut libc::c_char,
    (uid, gid): (u32, u32),
) -> libc::c_int {
    extern "C" fn agent(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the parent's `AsUser`; the parent is suspended (CLONE_VFORK) until
        // we exec or exit. Raw system calls only: we share the parent's memory, so nothing
        // here may allocate, take a lock or touch libc state (hence no libc `setuid`, whose
        // all-threads broadcast assumes a process of its own).
        unsafe {
            let a = &mut *(arg as *mut AsUser);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            for sig in FORWARDED.iter().chain(&[libc::SIGPIPE]) {
                libc::sigaction(*sig, &dfl, std::ptr::null_mut());
            }
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            let mut ok = true;
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    // EINVAL past the last capability this kernel knows (and for every
                    // higher number: they have no gaps): the set is empty.
                    ok = *libc::__errno_location() == libc::EINVAL;
                    break;
                }
            }
            if ok
                && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, a.gid, a.gid, a.gid) == 0
                && libc::syscall(libc::SYS_setresuid, a.uid, a.uid, a.uid) == 0
                && clear_caps() == 0
            {
                libc::execve(a.path.as_ptr(), a.argv, a.envp);
            }
            std::ptr::write_volatile(&mut a.errno, (*libc::__errno_location()).max(1));
            libc::_exit(127)
        }
    }
    let mut stack = vec![0u8; 64 * 1024];
    let top = ((stack.as_mut_ptr() as usize + stack.len()) & !15) as *mut libc::c_void;
    let mut a = AsUser {
        path,
        argv: argv.as_ptr().cast(),
        envp: envp.cast(),
        uid,
        gid,
        errno: 0,
    };
    let child = libc::clone(
        agent,
        top,
        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
        (&mut a as *mut AsUser).cast(),
    );
    if child < 0 {
        return *libc::__errno_location();
    }
    *pid = child;
    // Volatile: the clone wrote it through memory the compiler does not see change.
    match std::ptr::read_volatile(&a.errno) {
        0 => 0,
        e => {
            libc::waitpid(child, std::ptr::null_mut(), 0);
            e
        }
    }
}

/// Clear the effective, permitted and inheritable capabilities of the calling thread (the
/// ambient ones go with them).
///
/// # Safety
/// A raw system call over stack data: callable in the agent's clone.
unsafe fn clear_caps() -> libc::c_long {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    let hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    // Two of { effective, permitted, inheritable }, all empty.
    let data = [0u32; 6];
    libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr())
}

/// Read the start record from fd 7 (see the module docs). `None` at end of file or on a
/// malformed record.
fn read_start() -> Option<(CString, Vec<CString>, Vec<CString>)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut want = 8usize;
    let mut counts = None;
    loop {
        while buf.len() < want {
            // SAFETY: reading into a buffer we own from an fd we were handed.
            let n = unsafe { libc::read(CONTROL_FD, chunk.as_mut_ptr().cast(), chunk.len()) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if n <= 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n as usize]);
            if buf.len() > MAX_START {
                return None;
            }
        }
        let (argc, envc) = match counts {
            Some(c) => c,
            None => {
                let argc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                let envc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                counts = Some((argc, envc));
                (argc, envc)
            }
        };
        let strings: Vec<&[u8]> = buf[8..].split_inclusive(|b| *b == 0).collect();
        let whole = strings.iter().filter(|s| s.last() == Some(&0)).count();
        if whole > argc + envc {
            let mut out = strings
                .into_iter()
                .take(1 + argc + envc)
                .map(|s| CStr::from_bytes_with_nul(s).ok().map(CStr::to_owned));
            let path = out.next()??;
            let args: Option<Vec<CString>> = out.by_ref().take(argc).collect();
            let env: Option<Vec<CString>> = out.collect();
            return Some((path, args?, env?));
        }
        want = buf.len() + 1;
    }
}

/// Reap children until `pid` (the agent) ends; report it; exit (the kernel then kills what is
/// left in the namespace).
fn wait_for(pid: libc::pid_t) -> libc::c_int {
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter; wait4 on our own children.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(-1, &mut status, 0, &mut ru) };
        if r == pid {
            report(InitRecord::ended(status, &ru));
            std::process::exit(0);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            not_started(libc::ECHILD);
            std::process::exit(1);
        }
    }
}
