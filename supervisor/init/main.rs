//! `corral-init`: the first process of an agent's pid namespace.
//!
//! An agent must not be pid 1 of its namespace: the kernel drops signals that pid 1 has no
//! handler for, so `abort()` would not die by SIGABRT and a default SIGTERM would be ignored,
//! and nobody would reap the agent's orphans. Like tini in containers, this tiny program is
//! pid 1 instead. With `--adopt` (how corral runs it) the agent was already started by the
//! process that then exec'd this program, as pid 2; otherwise it starts the agent itself
//! (`argv[1..]`, same environment and fds 0–4). It forwards termination signals to every
//! process of the namespace, reaps orphans, and when the agent ends writes how it ended (raw
//! wait status and rusage) to fd 5 for the supervisor, then exits — which makes the kernel kill
//! whatever else is left in the namespace. The record's codec is the library's `init_record`
//! module, compiled into this program by `#[path]`.
//!
//! It cannot be reached from the agent: it keeps root (the agent has a uid of its own) with
//! only `CAP_KILL` (and, for a stem, `CAP_SETUID`/`CAP_SETGID`/`CAP_SETPCAP`, with which its
//! agent's process drops to no capability at all, bounding set included), makes itself
//! non-dumpable (so no `/proc/1/fd/5`, no ptrace, even for an agent of the same uid in a user
//! namespace), and its fds 5 and 7 never reach the agent.
//!
//! With `--stem [UID GID]` it is a warm sandbox: everything around the agent is in place
//! (namespaces, cgroup, limits, privileges, fds 0–6). Its agent's process is made at once, as
//! the agent's user with no capabilities, and waits on fd 7 for its program: `argc: u32 LE,
//! envc: u32 LE`, then `1 + argc + envc` NUL-terminated strings (the program's path, its argv,
//! then its environment), which it execs. End of file instead means the stem is not needed:
//! both exit quietly.
//!
//! Why this program links neither `std` nor a C library, and enters at `_start`: every spawn
//! with a pid namespace execs it, and a C library's start-up is most of an exec's cost where
//! the CPU's identification is trapped by a hypervisor (glibc asks it dozens of times; each
//! `cpuid` took 8.5 µs on the 2-core test machine, so a static glibc "return 0" took 690 µs to
//! spawn and reap, against 160 µs for this kind of program). Without `std`, a panic cannot
//! unwind, so it is built by the library's build script with `panic=abort` (cargo's profiles
//! cannot set that for one binary) and placed beside the other binaries as `corral-init`.

#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "../src/init_record.rs"]
mod init_record;
mod run;
mod sys;

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call corral_init_entry",
    "ud2",
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, #0",
    "mov x30, #0",
    "mov x0, sp",
    "and x1, x0, #-16",
    "mov sp, x1",
    "bl corral_init_entry",
    "brk #0",
);

/// Entered from `_start` with the initial stack: `argc`, `argv[argc]`, NULL, `envp`, NULL.
///
/// # Safety
/// Called once, by `_start`, with the stack the kernel built.
#[no_mangle]
unsafe extern "C" fn corral_init_entry(sp: *const usize) -> ! {
    // SAFETY: the kernel's initial stack layout (see above).
    unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *const *const u8;
        let envp = argv.add(argc + 1);
        run::main(argc, argv, envp)
    }
}

/// Named by the precompiled `core`'s unwind tables; never called (`panic=abort`).
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    sys::exit(127)
}
