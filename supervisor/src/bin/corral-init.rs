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
//! maxrss_kb u64.

#![no_main]
// No Rust runtime set-up (stack-guard discovery reads /proc/self/maps, which costs a measurable
// part of an isolated spawn): this program is entered at the C `main` below.

use std::ffi::{CStr, CString};

const STATUS_FD: i32 = 5;
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

fn report(kind: u8, status: i32, ru: &libc::rusage) {
    let ms = |tv: libc::timeval| (tv.tv_sec as u64) * 1000 + (tv.tv_usec as u64) / 1000;
    let mut rec = Vec::with_capacity(29);
    rec.push(kind);
    rec.extend_from_slice(&status.to_le_bytes());
    rec.extend_from_slice(&ms(ru.ru_utime).to_le_bytes());
    rec.extend_from_slice(&ms(ru.ru_stime).to_le_bytes());
    rec.extend_from_slice(&(ru.ru_maxrss.max(0) as u64).to_le_bytes());
    // SAFETY: writing a buffer we own to an fd we were handed.
    unsafe {
        libc::write(STATUS_FD, rec.as_ptr().cast(), rec.len());
    }
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

fn run(args: Vec<CString>) -> libc::c_int {
    // SAFETY: zeroed rusage is valid.
    let zero: libc::rusage = unsafe { std::mem::zeroed() };
    if args.is_empty() {
        eprintln!(
            "corral-init: usage: corral-init --adopt | corral-init PROGRAM [ARGS...] (started by corral)"
        );
        report(1, libc::EINVAL, &zero);
        return 2;
    }
    // SAFETY: plain libc calls on our own process: fd flags, signal dispositions, and a
    // posix_spawn whose argument arrays are NUL-terminated and outlive the call.
    unsafe {
        libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        for sig in FORWARDED {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
        if args[0].as_bytes() == b"--adopt" {
            // corral started the agent before exec'ing us: it is our child, pid 2 of the
            // namespace (the first process after its init).
            return wait_for(2, &zero);
        }
        let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr() as *mut _).collect();
        argv.push(std::ptr::null_mut());
        extern "C" {
            static environ: *const *mut libc::c_char;
        }
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
        let rc = libc::posix_spawn(
            &mut pid,
            args[0].as_ptr(),
            std::ptr::null(),
            &attr,
            argv.as_ptr(),
            environ,
        );
        if rc != 0 {
            report(1, rc, &zero);
            std::process::exit(127);
        }
        wait_for(pid, &zero)
    }
}

/// Reap children until `pid` (the agent) ends; report it; exit (the kernel then kills what is
/// left in the namespace).
fn wait_for(pid: libc::pid_t, zero: &libc::rusage) -> libc::c_int {
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter; wait4 on our own children.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(-1, &mut status, 0, &mut ru) };
        if r == pid {
            report(0, status, &ru);
            std::process::exit(0);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            report(1, libc::ECHILD, zero);
            std::process::exit(1);
        }
    }
}
