//! seccomp: the system calls an agent is refused, in the spirit of Docker's default profile.
//! Whatever is not named here is allowed, up to the newest call this list was reviewed against
//! ([`REVIEWED_UP_TO`]; a newer one fails with `ENOSYS`); what is named fails with `EPERM`:
//!
//! - new namespaces: `unshare`, `setns`, and `clone` with any `CLONE_NEW*` flag (threads and
//!   `fork` pass). `clone3` fails with `ENOSYS` instead: its flags sit in memory a filter cannot
//!   read, and `ENOSYS` makes libc fall back to `clone`, whose flags it can.
//! - mounts (old and new API, `open_tree_attr` included), keyrings, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`,
//!   other processes' memory (`ptrace`, `process_vm_*`, `kcmp`), modules and kexec, `reboot`,
//!   swap, `acct`, clock setting, quotas, `syslog`, file handles (`*_handle_at`),
//!   `lookup_dcookie`, `vhangup`, `uselib`, `iopl`/`ioperm`.
//! - `personality` with any persona but those Docker allows (Linux, 32-bit Linux, `UNAME26`,
//!   both, and the query): no turning off address randomisation or `READ_IMPLIES_EXEC`.
//! - `chmod`, `fchmod`, `fchmodat`, `fchmodat2` with `S_ISUID` or `S_ISGID` in the mode; plain
//!   modes (0644, 0755, …) pass. The same bits at creation too: `open`/`openat` with `O_CREAT`
//!   or `O_TMPFILE`, `creat`, `mknod`, `mknodat`. `openat2`, whose mode sits in memory, fails
//!   with `ENOSYS` like `clone3` (callers fall back to `openat`).
//!
//! A call through another architecture's ABI (32-bit or x32 on x86_64) kills the process: its
//! numbers would not match these rules. Calls the kernel no longer has (`create_module`,
//! `nfsservctl`, `_sysctl`, …) are not listed: they fail with `ENOSYS` anyway. NUMA memory
//! policy calls stay allowed (Docker refuses them for want of `CAP_SYS_NICE`, which the kernel
//! checks itself where it matters), and so does `seccomp`: an agent may narrow its own filter.
//!
//! The program is written here, not compiled by `seccompiler`: the kernel's cost of installing
//! a filter grows with its length (it translates and JIT-compiles every instruction, then runs
//! the filter once per system call number to cache the calls always allowed), and every cold
//! spawn pays it. `seccompiler`'s program for these rules was 583 instructions and took 89 µs
//! to install (p50 of 200 on a quiet 2-core machine); it checks each flag and mode bit as a rule
//! of its own, where one `JSET` per argument says the same. This one is a binary search over the
//! ruled numbers whose leaves hold each call's check: 153 instructions, ~40 µs to install. Its
//! tests keep `seccompiler` as the reference: the same rules compiled by it must give the same
//! answer for every system call number under a few hundred argument sets.
//!
//! Before the rules, a prelude checks the architecture, kills x32 calls and answers `clone3`
//! and `openat2` with `ENOSYS`. Every argument checked is read through its low 32 bits, all
//! the kernel reads of it (flags, modes and the persona are `int`-sized).
//!
//! The program is built once, in the parent; the spawn child installs it with
//! `prctl(PR_SET_SECCOMP)` after `no_new_privs`, with no allocation.

use libc::{c_long, sock_filter};
use std::collections::BTreeMap;
use std::sync::OnceLock;

// The argument words are read at their low address: their low half on a little-endian machine.
#[cfg(not(target_endian = "little"))]
compile_error!("the seccomp program reads arguments' low halves as little-endian words");
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// `fchmodat2` (Linux 6.6) has this number on x86_64 and aarch64 alike; libc does not name it
/// on every architecture yet.
const SYS_FCHMODAT2: c_long = 452;
/// `open_tree_attr` (Linux 6.15): `open_tree` with mount attributes, a way to clone a mount
/// without its read-only flag. Same number on x86_64 and aarch64; libc does not name it yet.
const SYS_OPEN_TREE_ATTR: c_long = 467;

/// The highest system call number whose call this filter was written against (`file_setattr`,
/// Linux 6.17, on x86_64 and aarch64 alike). A number above it is a call added to the kernel
/// since, which nobody has judged: it is answered with `ENOSYS`, as if the kernel were older,
/// which libc and programs already handle (Docker's default profile answers unknown calls so).
/// Raise it only after reading what the new calls do.
pub const REVIEWED_UP_TO: u32 = 469;

/// The flags that make `clone` create namespaces (all in its first argument's low 32 bits).
pub const CLONE_NS_FLAGS: [libc::c_int; 8] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWTIME,
];

/// Mode bits `chmod` and friends may not set.
const SETID_BITS: [libc::mode_t; 2] = [libc::S_ISUID, libc::S_ISGID];

/// Personas `personality` may set (Docker's list): `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `UNAME26 | PER_LINUX32`, and `0xffffffff`, which only reads the current one.
const PERSONAS: [u64; 5] = [0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// The program could not be laid out (a mistake in this module, caught by its tests).
#[derive(Debug, thiserror::Error)]
#[error("the seccomp program does not fit classic BPF: a jump from instruction {at} is too far")]
pub struct SeccompError {
    /// The instruction whose jump does not fit 8 bits.
    at: usize,
}

/// System calls an agent is refused whatever their arguments.
pub fn denied() -> Vec<c_long> {
    let mut v = vec![
        // Namespaces and mounts.
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        SYS_OPEN_TREE_ATTR,
        libc::SYS_mount_setattr,
        // Keyrings.
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        // Kernel attack surface an agent has no use for.
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_lookup_dcookie,
        // Other processes.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        // Modules and kexec.
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        // The machine.
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        // Files by handle, past any path check.
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    v
}

/// The `chmod` family with the index of its mode argument.
fn chmods() -> Vec<(c_long, u8)> {
    let mut v = vec![
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (SYS_FCHMODAT2, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push((libc::SYS_chmod, 1));
    v
}

/// Calls that give a new file the mode in one of their arguments: the number, the argument
/// holding the open flags (`None`: the mode is always used) and the mode's argument.
fn creators() -> Vec<(c_long, Option<u8>, u8)> {
    let mut v = vec![(libc::SYS_openat, Some(2), 3), (libc::SYS_mknodat, None, 2)];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        (libc::SYS_open, Some(1), 2),
        (libc::SYS_creat, None, 1),
        (libc::SYS_mknod, None, 1),
    ]);
    v
}

/// The open flags with which the kernel uses the mode: `O_CREAT`, and `O_TMPFILE` (whose file
/// can then be linked in), without the `O_DIRECTORY` bit that `O_TMPFILE` includes.
const MODE_FLAGS: [libc::c_int; 2] = [libc::O_CREAT, libc::O_TMPFILE & !libc::O_DIRECTORY];

/// What a ruled call is answered with (`EPERM` when it matches, else allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Always refused.
    Deny,
    /// Refused when argument `arg` has any bit of `mask` set.
    AnyBit {
        /// The argument.
        arg: u8,
        /// The bits.
        mask: u32,
    },
    /// Refused when argument `flags` has a bit of [`MODE_FLAGS`] set and argument `mode` a set-id
    /// bit: a file created with that mode.
    Creates {
        /// The open flags' argument.
        flags: u8,
        /// The mode's argument.
        mode: u8,
    },
    /// Refused unless argument 0 is one of [`PERSONAS`].
    Persona,
}

/// Every ruled call by number: what the search sends on to a check (every other call is
/// allowed whatever its arguments).
fn checks() -> BTreeMap<u32, Check> {
    let setid = SETID_BITS.iter().fold(0, |m, &b| m | b);
    let mut c: BTreeMap<u32, Check> = denied()
        .into_iter()
        .map(|nr| (nr as u32, Check::Deny))
        .collect();
    // Flags are `unsigned long`, but the kernel reads only their low half for `clone`.
    let ns = CLONE_NS_FLAGS.iter().fold(0, |m, &f| m | f as u32);
    c.insert(libc::SYS_clone as u32, Check::AnyBit { arg: 0, mask: ns });
    for (nr, mode) in chmods() {
        c.insert(
            nr as u32,
            Check::AnyBit {
                arg: mode,
                mask: setid,
            },
        );
    }
    // The same bits given at creation: `open(O_CREAT, 04755)` or `mknod` would otherwise leave
    // the set-id file that `chmod` may not.
    for (nr, flags, mode) in creators() {
        let check = match flags {
            None => Check::AnyBit {
                arg: mode,
                mask: setid,
            },
            Some(flags) => Check::Creates { flags, mode },
        };
        c.insert(nr as u32, check);
    }
    c.insert(libc::SYS_personality as u32, Check::Persona);
    c
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
// Offsets in `struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }`.
const NR: u32 = 0;
const ARCH_AT: u32 = 4;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

/// Where argument `arg`'s low half sits in `seccomp_data`.
fn arg_at(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Kill calls of another ABI, and answer `clone3`, `openat2` and every call above
/// [`REVIEWED_UP_TO`] with `ENOSYS`. Falls through to the next instruction, with the call's
/// number loaded, for every other call.
fn prelude() -> Vec<sock_filter> {
    let mut p = vec![
        stmt(LD_W_ABS, ARCH_AT),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 calls carry the same AUDIT_ARCH, with bit 30 set in their number.
        p.push(jump(JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    }
    // `clone3` and `openat2` keep their flags and mode in memory a filter cannot read; a call
    // newer than this filter has not been judged.
    p.push(jump(JGT_K, REVIEWED_UP_TO, 2, 0));
    p.push(jump(JEQ_K, libc::SYS_clone3 as u32, 1, 0));
    p.push(jump(JEQ_K, libc::SYS_openat2 as u32, 0, 1));
    p.push(stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    p
}

/// A jump target while the program is laid out.
#[derive(Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// This leaf's `RET ALLOW` at its end.
    Allow,
    /// This leaf's `RET EPERM` at its end.
    Deny,
    /// An instruction, by index in the program.
    At(usize),
}

/// One instruction while the program is laid out: a statement (`jt`/`jf` unused) or a jump.
struct Node {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

impl Node {
    fn stmt(code: u16, k: u32) -> Node {
        Node {
            code,
            k,
            jt: To::Next,
            jf: To::Next,
        }
    }
}

/// A leaf of the search: up to four numbers, each compared and sent to its check; a number
/// that is none of them is allowed. Laid out as the comparisons, `RET ALLOW`, the checks, then
/// the leaf's own `RET ALLOW` and `RET EPERM` that the checks jump to.
fn leaf(nrs: &[(u32, Check)], out: &mut Vec<Node>) {
    let first = out.len();
    for &(nr, _) in nrs {
        out.push(Node {
            code: JEQ_K,
            k: nr,
            jt: To::Deny,
            jf: To::Next,
        });
    }
    out.push(Node::stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    for (i, &(_, check)) in nrs.iter().enumerate() {
        if check == Check::Deny {
            continue;
        }
        out[first + i].jt = To::At(out.len());
        match check {
            Check::Deny => {}
            Check::AnyBit { arg, mask } => {
                out.push(Node::stmt(LD_W_ABS, arg_at(arg)));
                out.push(Node {
                    code: JSET_K,
                    k: mask,
                    jt: To::Deny,
                    jf: To::Allow,
                });
            }
            Check::Creates { flags, mode } => {
                let creating = MODE_FLAGS.iter().fold(0, |m, &f| m | f as u32);
                let setid = SETID_BITS.iter().fold(0, |m, &b| m | b);
                out.push(Node::stmt(LD_W_ABS, arg_at(flags)));
                out.push(Node {
                    code: JSET_K,
                    k: creating,
                    jt: To::Next,
                    jf: To::Allow,
                });
                out.push(Node::stmt(LD_W_ABS, arg_at(mode)));
                out.push(Node {
                    code: JSET_K,
                    k: setid,
                    jt: To::Deny,
                    jf: To::Allow,
                });
            }
            Check::Persona => {
                out.push(Node::stmt(LD_W_ABS, arg_at(0)));
                for (i, p) in PERSONAS.iter().enumerate() {
                    let last = i + 1 == PERSONAS.len();
                    out.push(Node {
                        code: JEQ_K,
                        k: *p as u32,
                        jt: To::Allow,
                        jf: if last { To::Deny } else { To::Next },
                    });
                }
            }
        }
    }
    // The leaf's own returns, each only when something jumps to it (a leaf of plain denials
    // needs no second ALLOW).
    let end = out.len();
    let used = |want: fn(&To) -> bool| {
        out[first..end]
            .iter()
            .any(|n| want(&n.jt) || (n.code != RET_K && want(&n.jf)))
    };
    let (wants_allow, wants_deny) = (
        used(|t| matches!(t, To::Allow)),
        used(|t| matches!(t, To::Deny)),
    );
    let allow = out.len();
    if wants_allow {
        out.push(Node::stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    }
    let deny = out.len();
    if wants_deny {
        out.push(Node::stmt(RET_K, EPERM));
    }
    for n in &mut out[first..end] {
        for to in [&mut n.jt, &mut n.jf] {
            *to = match *to {
                To::Allow => To::At(allow),
                To::Deny => To::At(deny),
                other => other,
            };
        }
    }
}

/// A binary search over `nrs` (sorted by number), from the number loaded by the prelude: any
/// call not among them returns ALLOW after a handful of comparisons, and the kernel, which runs
/// the filter once per system call number when it is installed, walks only that path.
fn search(nrs: &[(u32, Check)], out: &mut Vec<Node>) -> usize {
    let start = out.len();
    if nrs.len() <= 4 {
        leaf(nrs, out);
        return start;
    }
    let mid = nrs.len() / 2;
    out.push(Node {
        code: JGE_K,
        k: nrs[mid].0,
        jt: To::Next,
        jf: To::Next,
    });
    let below = search(&nrs[..mid], out);
    let above = search(&nrs[mid..], out);
    out[start].jt = To::At(above);
    out[start].jf = To::At(below);
    start
}

/// The whole program: the prelude, then the search with each call's check in its leaves.
pub fn build() -> Result<Vec<sock_filter>, SeccompError> {
    let mut p = prelude();
    let base = p.len();
    let mut nodes = Vec::new();
    search(&checks().into_iter().collect::<Vec<_>>(), &mut nodes);
    for (i, n) in nodes.iter().enumerate() {
        let rel = |to: To| -> Result<u8, SeccompError> {
            let target = match to {
                To::Next => i + 1,
                To::At(t) => t,
                // Resolved by `leaf` for every instruction it lays out.
                To::Allow | To::Deny => return Err(SeccompError { at: base + i }),
            };
            target
                .checked_sub(i + 1)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or(SeccompError { at: base + i })
        };
        p.push(match n.code {
            LD_W_ABS | RET_K => stmt(n.code, n.k),
            _ => jump(n.code, n.k, rel(n.jt)?, rel(n.jf)?),
        });
    }
    Ok(p)
}

/// The filter program (built once, lives for the process).
///
/// # Panics
/// If the rules do not compile: they are constants, so this never passes the tests.
pub fn program() -> &'static [sock_filter] {
    static P: OnceLock<Vec<sock_filter>> = OnceLock::new();
    P.get_or_init(|| build().unwrap_or_else(|e| panic!("{e}")))
}

#[cfg(test)]
mod tests;
