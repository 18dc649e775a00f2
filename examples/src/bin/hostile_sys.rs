//! `hostile_sys`: an agent that tries the system calls a sandbox should refuse, one per task,
//! for tests of corral's seccomp filter. Input `{"probe": NAME}`; output
//! `{"ok": B, "errno": N, "error": S}` (`errno` 0 and `error` "" when the call succeeded).
//!
//! | probe | call |
//! |---|---|
//! | `clone_newuser`, `clone_newnet` | raw `clone(CLONE_NEWUSER or CLONE_NEWNET \| SIGCHLD)`; the child exits at once |
//! | `clone3` | raw `clone3` with zeroed `clone_args` |
//! | `unshare_user` | `unshare(CLONE_NEWUSER)` |
//! | `setns` | `setns` on its own uts namespace (fd -1 if that cannot be opened) |
//! | `mount` | a tmpfs on its workspace |
//! | `chmod_setuid`, `chmod_plain` | creates a file in `$TMPDIR` (else the cwd), `chmod` 04755 or 0644 |
//! | `fork` | `fork`, the child exits 0, waited for |
//! | `thread` | a thread started and joined |
//! | `keyctl` | `keyctl(KEYCTL_GET_KEYRING_ID, session keyring)` |
//! | `bpf` | `bpf(BPF_MAP_CREATE)` with an empty attribute |
//! | `perf_event_open` | a software CPU clock on itself, user space only |
//! | `userfaultfd` | `userfaultfd(O_CLOEXEC)` |
//! | `ptrace` | `ptrace(PTRACE_TRACEME)` |
//! | `personality` | turns off address randomisation (and back) |

use corral_sdk::{run_value, AgentError, Contract, Schema, SideEffects, Value};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What one probe saw: `Ok` with the call's result, or the OS error it failed with.
type Seen = Result<(), std::io::Error>;

/// A raw system call's result: negative means it failed with `errno`.
fn check(r: libc::c_long) -> Seen {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The result of a clone-like call: the child leaves at once, the parent reaps it.
fn cloned(r: libc::c_long) -> Seen {
    if r == 0 {
        // SAFETY: in the new child, which shares no memory with us: leave at once.
        unsafe { libc::_exit(0) };
    }
    check(r)?;
    let mut status = 0;
    // SAFETY: waiting for our own child; __WALL also finds one with no exit signal (clone3).
    let w = unsafe { libc::waitpid(r as libc::pid_t, &mut status, libc::__WALL) };
    check(w as libc::c_long)?;
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "child ended with status {status:#x}"
        )))
    }
}

fn raw_clone(flags: libc::c_int) -> Seen {
    // SAFETY: without CLONE_VM the child gets a copy of our memory and leaves at once (in
    // `cloned`); a null stack means it runs on its copy of ours.
    cloned(unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) })
}

/// A scratch file the agent may write: in `$TMPDIR` (its workspace), else the cwd.
fn scratch() -> Result<(PathBuf, CString), std::io::Error> {
    let dir = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join(format!("hostile-{}", std::process::id()));
    std::fs::write(&path, b"#!/bin/sh\n")?;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    Ok((path, c))
}

fn chmod(mode: libc::mode_t) -> Seen {
    let (path, c) = scratch()?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = check(unsafe { libc::chmod(c.as_ptr(), mode) } as libc::c_long);
    let _ = std::fs::remove_file(path);
    r
}

/// Closes `fd` when the call made one.
fn close_if(r: libc::c_long) -> Seen {
    check(r)?;
    // SAFETY: the call just returned this fd to us, and nothing else holds it.
    unsafe { libc::close(r as libc::c_int) };
    Ok(())
}

/// Turns off address randomisation, and back when that went through.
fn personality() -> Seen {
    const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0004_0000;
    // SAFETY: personality takes an integer; 0xffffffff only reads the current persona.
    let now = unsafe { libc::personality(0xffff_ffff) };
    check(now as libc::c_long)?;
    // SAFETY: as above.
    let r = unsafe { libc::personality(now as libc::c_ulong | ADDR_NO_RANDOMIZE) };
    if r >= 0 {
        // SAFETY: as above.
        unsafe { libc::personality(now as libc::c_ulong) };
    }
    check(r as libc::c_long)
}

fn probe(name: &str) -> Result<Seen, AgentError> {
    Ok(match name {
        "clone_newuser" => raw_clone(libc::CLONE_NEWUSER | libc::SIGCHLD),
        "clone_newnet" => raw_clone(libc::CLONE_NEWNET | libc::SIGCHLD),
        "clone3" => {
            // struct clone_args, version 2 (88 bytes), all zero.
            let args = [0u64; 11];
            // SAFETY: the kernel reads `size_of_val(&args)` bytes of the array we own; a child
            // leaves at once (in `cloned`).
            cloned(unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    args.as_ptr(),
                    std::mem::size_of_val(&args),
                )
            })
        }
        // SAFETY: unshare takes no pointers.
        "unshare_user" => check(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long),
        "setns" => {
            let ns = std::fs::File::open("/proc/self/ns/uts");
            let fd = ns.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
            // SAFETY: setns takes an fd (ours or -1) and flags, no pointers.
            check(unsafe { libc::setns(fd, 0) } as libc::c_long)
        }
        "mount" => {
            let dir = std::env::var_os("TMPDIR").unwrap_or_else(|| ".".into());
            let target = CString::new(dir.as_bytes())
                .map_err(|e| AgentError::new("invalid_input", format!("TMPDIR: {e}"), false))?;
            // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
            check(unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            } as libc::c_long)
        }
        "chmod_setuid" => chmod(0o4755),
        "chmod_plain" => chmod(0o644),
        "fork" => {
            // SAFETY: the child only calls `_exit` (in `cloned`).
            cloned(unsafe { libc::fork() } as libc::c_long)
        }
        "thread" => match std::thread::spawn(|| 7).join() {
            Ok(7) => Ok(()),
            _ => Err(std::io::Error::other("the thread did not answer")),
        },
        "keyctl" => {
            const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
            const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
            // SAFETY: this keyctl command takes two integers, no pointers.
            check(unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_GET_KEYRING_ID,
                    KEY_SPEC_SESSION_KEYRING,
                    0,
                )
            })
        }
        "bpf" => {
            const BPF_MAP_CREATE: libc::c_long = 0;
            let attr = [0u8; 128];
            // SAFETY: the kernel reads at most `attr.len()` bytes of the buffer we own.
            close_if(unsafe {
                libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len())
            })
        }
        "perf_event_open" => {
            // struct perf_event_attr: type PERF_TYPE_SOFTWARE, size, config
            // PERF_COUNT_SW_CPU_CLOCK, flags exclude_kernel | exclude_hv.
            let mut attr = [0u64; 16];
            attr[0] = 1 | (128 << 32);
            attr[5] = (1 << 5) | (1 << 6);
            // SAFETY: the kernel reads `size` (128) bytes of the array we own.
            close_if(unsafe {
                libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0)
            })
        }
        // SAFETY: userfaultfd takes flags only.
        "userfaultfd" => close_if(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) }),
        // SAFETY: PTRACE_TRACEME takes no pointers.
        "ptrace" => check(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) }),
        "personality" => personality(),
        other => {
            return Err(AgentError::new(
                "invalid_input",
                format!("unknown probe `{other}`"),
                false,
            ))
        }
    })
}

fn main() -> std::process::ExitCode {
    let contract = Contract::new("hostile_sys", env!("CARGO_PKG_VERSION"))
        .input(Schema::object().field("probe", Schema::String))
        .output(
            Schema::object()
                .field("ok", Schema::Bool)
                .field("errno", Schema::Int)
                .field("error", Schema::String),
        )
        .side_effects(SideEffects::Destructive);
    run_value(contract, |ctx, input| {
        let name = input
            .get("probe")
            .and_then(Value::as_str)
            .ok_or_else(|| AgentError::new("invalid_input", "`probe` must be a string", false))?;
        ctx.log(format!("hostile_sys: {name}"));
        let seen = probe(name)?;
        ctx.progress();
        Ok(match seen {
            Ok(()) => Value::map([
                ("ok", Value::Bool(true)),
                ("errno", Value::Int(0)),
                ("error", Value::from("")),
            ]),
            Err(e) => Value::map([
                ("ok", Value::Bool(false)),
                (
                    "errno",
                    Value::Int(i64::from(e.raw_os_error().unwrap_or(0))),
                ),
                ("error", Value::from(e.to_string())),
            ]),
        })
    })
}
