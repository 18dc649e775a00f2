//! seccomp: the system calls an agent is refused, in the spirit of Docker's default profile.
//! Whatever is not named here is allowed; what is named fails with `EPERM`:
//!
//! - new namespaces: `unshare`, `setns`, and `clone` with any `CLONE_NEW*` flag (threads and
//!   `fork` pass). `clone3` fails with `ENOSYS` instead: its flags sit in memory a filter cannot
//!   read, and `ENOSYS` makes libc fall back to `clone`, whose flags it can.
//! - mounts (old and new API), keyrings, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`,
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
//! The rules are compiled by `seccompiler` (Firecracker's): conditions on arguments turned into
//! classic BPF with their jump offsets and argument halves right, which hand-written BPF easily
//! gets wrong. One of its filters has a single action for every match and no x32 check, so a
//! short hand-written prelude runs first: check the architecture, kill x32 calls, answer
//! `clone3` and `openat2` with `ENOSYS`; every other call falls through to the compiled rules.
//!
//! The program is built once, in the parent; the spawn child installs it with
//! `prctl(PR_SET_SECCOMP)` after `no_new_privs`, with no allocation.

use libc::{c_long, sock_filter};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// `fchmodat2` (Linux 6.6) has this number on x86_64 and aarch64 alike; libc does not name it
/// on every architecture yet.
const SYS_FCHMODAT2: c_long = 452;

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

/// The rules did not compile (a mistake in this module, caught by its tests).
#[derive(Debug, thiserror::Error)]
#[error("the seccomp rules do not compile: {0}")]
pub struct SeccompError(#[from] seccompiler::BackendError);

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

/// A 32-bit condition on argument `arg`.
fn dword(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(SeccompError::from)
}

/// One rule per bit: any of `bits` set in argument `arg` matches.
fn any_bit(arg: u8, bits: impl IntoIterator<Item = u64>) -> Result<Vec<SeccompRule>, SeccompError> {
    bits.into_iter()
        .map(|b| {
            let set = dword(arg, SeccompCmpOp::MaskedEq(b), b)?;
            Ok(SeccompRule::new(vec![set])?)
        })
        .collect()
}

/// The rules compiled by `seccompiler`: a match fails with `EPERM`, the rest is allowed.
fn rules() -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rule_map()?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    Ok(filter.try_into()?)
}

/// Every rule, by system call number: what [`rules`] compiles, and what the fast path
/// ([`ruled`]) sends on to it.
fn rule_map() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|nr| (nr, Vec::new())).collect();
    // Flags are `unsigned long`, but the kernel reads only their low half for `clone`.
    let ns = CLONE_NS_FLAGS.iter().map(|&f| f as u32 as u64);
    rules.insert(libc::SYS_clone, any_bit(0, ns)?);
    for (nr, mode) in chmods() {
        rules.insert(nr, any_bit(mode, SETID_BITS.map(u64::from))?);
    }
    // The same bits given at creation: `open(O_CREAT, 04755)` or `mknod` would otherwise leave
    // the set-id file that `chmod` may not.
    for (nr, flags, mode) in creators() {
        let rule = match flags {
            None => any_bit(mode, SETID_BITS.map(u64::from))?,
            Some(flags) => {
                let mut v = Vec::new();
                for f in MODE_FLAGS {
                    for b in SETID_BITS {
                        let f = f as u32 as u64;
                        let b = u64::from(b);
                        v.push(SeccompRule::new(vec![
                            dword(flags, SeccompCmpOp::MaskedEq(f), f)?,
                            dword(mode, SeccompCmpOp::MaskedEq(b), b)?,
                        ])?);
                    }
                }
                v
            }
        };
        rules.insert(nr, rule);
    }
    // The kernel takes the persona as an `unsigned int`.
    let other_persona = PERSONAS
        .iter()
        .map(|&p| dword(0, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(other_persona)?],
    );
    Ok(rules)
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
// Offsets in `struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }`.
const NR: u32 = 0;
const ARCH_AT: u32 = 4;

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

/// What one `seccompiler` filter cannot say: kill calls of another ABI, and answer `clone3` and
/// `openat2` with `ENOSYS`. Falls through to the next instruction for every other call.
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
        const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
        p.push(jump(JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS));
    }
    // `clone3` and `openat2` keep their flags and mode in memory a filter cannot read.
    p.push(jump(JEQ_K, libc::SYS_clone3 as u32, 1, 0));
    p.push(jump(JEQ_K, libc::SYS_openat2 as u32, 0, 1));
    p.push(stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    p
}

/// The numbers that have a rule, from the rules themselves: every other call is allowed
/// whatever its arguments.
fn ruled() -> Result<Vec<u32>, SeccompError> {
    Ok(rule_map()?.keys().map(|&n| n as u32).collect())
}

/// A jump target while the fast path is laid out.
#[derive(Clone, Copy)]
enum To {
    /// The compiled rules, right after the fast path.
    Rules,
    /// An instruction of the fast path.
    At(usize),
}

/// One instruction of the fast path: a comparison of the number, or `RET ALLOW`.
struct Node {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// A binary search over `nrs` (sorted): a number among them falls through to the compiled
/// rules, any other returns ALLOW after a handful of comparisons. Without it every call would
/// walk the rules' linear chain, and the kernel, which runs the filter once per system call
/// number when it is installed (to cache the calls always allowed), would take ~200 µs of each
/// spawn doing so. `None` when a jump would not fit classic BPF's 8-bit offsets.
fn fast_path(nrs: &[u32]) -> Option<Vec<sock_filter>> {
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    fn lay(nrs: &[u32], out: &mut Vec<Node>) -> usize {
        let start = out.len();
        if nrs.len() <= 4 {
            for &n in nrs {
                let next = out.len() + 1;
                out.push(Node {
                    code: JEQ_K,
                    k: n,
                    jt: To::Rules,
                    jf: To::At(next),
                });
            }
            out.push(Node {
                code: RET_K,
                k: libc::SECCOMP_RET_ALLOW,
                jt: To::At(0),
                jf: To::At(0),
            });
            return start;
        }
        let mid = nrs.len() / 2;
        out.push(Node {
            code: JGE_K,
            k: nrs[mid],
            jt: To::At(0),
            jf: To::At(0),
        });
        let below = lay(&nrs[..mid], out);
        let above = lay(&nrs[mid..], out);
        out[start].jt = To::At(above);
        out[start].jf = To::At(below);
        start
    }
    let mut nodes = Vec::new();
    lay(nrs, &mut nodes);
    let end = nodes.len();
    let rel = |i: usize, to: To| -> Option<u8> {
        let target = match to {
            To::Rules => end,
            To::At(t) => t,
        };
        u8::try_from(target.checked_sub(i + 1)?).ok()
    };
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if n.code == RET_K {
                return Some(stmt(RET_K, n.k));
            }
            Some(jump(n.code, n.k, rel(i, n.jt)?, rel(i, n.jf)?))
        })
        .collect()
}

/// The whole program: the prelude, the fast path (when it fits), then the compiled rules
/// (which check the architecture again).
pub fn build() -> Result<Vec<sock_filter>, SeccompError> {
    let mut p = prelude();
    p.extend(fast_path(&ruled()?).unwrap_or_default());
    p.extend(rules()?.into_iter().map(|i| sock_filter {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }));
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
