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
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    Ok(filter.try_into()?)
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

/// The numbers that have a rule: every other call is allowed whatever its arguments.
fn ruled() -> Vec<u32> {
    let mut v: Vec<u32> = denied().into_iter().map(|n| n as u32).collect();
    v.push(libc::SYS_clone as u32);
    v.push(libc::SYS_personality as u32);
    v.extend(chmods().into_iter().map(|(n, _)| n as u32));
    v.extend(creators().into_iter().map(|(n, _, _)| n as u32));
    v.sort_unstable();
    v.dedup();
    v
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
    p.extend(fast_path(&ruled()).unwrap_or_default());
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
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

    /// Runs `prog` as the kernel would on one call (the instructions this module emits only).
    fn eval(prog: &[sock_filter], arch: u32, nr: c_long, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend((nr as i32).to_ne_bytes());
        data.extend(arch.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for a in args {
            data.extend(a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            let k = i.k;
            match u32::from(i.code) {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += k as usize,
                c if c == libc::BPF_RET | libc::BPF_K => return k,
                c => {
                    let hit = match c {
                        _ if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => acc == k,
                        _ if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => acc > k,
                        _ if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => acc >= k,
                        _ => panic!("instruction {c:#x} at {} not interpreted", pc - 1),
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
            }
        }
    }

    fn call(nr: c_long, args: [u64; 6]) -> u32 {
        eval(program(), AUDIT_ARCH, nr, args)
    }

    fn with(arg: usize, value: u64) -> [u64; 6] {
        let mut a = [0; 6];
        a[arg] = value;
        a
    }

    #[test]
    fn the_program_is_built_once_and_fits() {
        let p = program();
        assert!(!p.is_empty());
        assert!(p.len() < 4096, "{} instructions", p.len());
        assert!(std::ptr::eq(p, program()));
        let mut nrs = denied();
        let all = nrs.len();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), all, "a call is listed twice");
        for (nr, _) in chmods() {
            assert!(!nrs.contains(&nr));
        }
        for (nr, _, _) in creators() {
            assert!(!nrs.contains(&nr));
        }
        assert!(!nrs.contains(&libc::SYS_clone) && !nrs.contains(&libc::SYS_personality));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fchmodat2_has_the_number_libc_gives_it() {
        assert_eq!(SYS_FCHMODAT2, libc::SYS_fchmodat2);
    }

    #[test]
    fn each_rule_answers_as_documented() {
        for nr in denied() {
            assert_eq!(call(nr, [0; 6]), EPERM, "call {nr}");
        }
        for nr in [
            libc::SYS_getpid,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_seccomp,
        ] {
            assert_eq!(call(nr, [u64::MAX; 6]), ALLOW, "call {nr}");
        }
        assert_eq!(call(libc::SYS_clone3, [0; 6]), ENOSYS);
        // Another ABI, and x32 calls on x86_64, die.
        assert_eq!(eval(program(), 0x4000_0003, libc::SYS_getpid, [0; 6]), KILL);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(call(0x4000_0000 | libc::SYS_getpid, [0; 6]), KILL);

        let c = |flags: libc::c_int| call(libc::SYS_clone, with(0, flags as u32 as u64));
        for f in CLONE_NS_FLAGS {
            assert_eq!(c(f | libc::SIGCHLD), EPERM, "clone flag {f:#x}");
        }
        assert_eq!(c(libc::SIGCHLD), ALLOW, "fork");
        let thread = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        assert_eq!(c(thread), ALLOW, "pthread_create");
        assert_eq!(c(libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD), ALLOW);
        // High bits of the flags word do not hide a namespace flag.
        let high = (1u64 << 40) | libc::CLONE_NEWUSER as u64;
        assert_eq!(call(libc::SYS_clone, with(0, high)), EPERM);

        for (nr, arg) in chmods() {
            let m = |mode: u32| call(nr, with(usize::from(arg), u64::from(mode)));
            for plain in [0o644, 0o755, 0o1777, 0o777, 0] {
                assert_eq!(m(plain), ALLOW, "call {nr} mode {plain:o}");
            }
            for setid in [0o4755, 0o2755, 0o6755, 0o4000, 0o2000] {
                assert_eq!(m(setid), EPERM, "call {nr} mode {setid:o}");
            }
            // The mode in the other arguments does not matter.
            assert_eq!(call(nr, with(usize::from(3 - arg), 0o4755)), ALLOW);
        }

        for (nr, flags, mode) in creators() {
            let m = |f: libc::c_int, m: u32| {
                let mut a = [0u64; 6];
                if let Some(flags) = flags {
                    a[usize::from(flags)] = f as u32 as u64;
                }
                a[usize::from(mode)] = u64::from(m);
                call(nr, a)
            };
            let create = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
            let tmpfile = libc::O_TMPFILE | libc::O_RDWR;
            for plain in [0o644, 0o755, 0o1777, 0o600 | libc::S_IFREG] {
                assert_eq!(m(create, plain), ALLOW, "call {nr} mode {plain:o}");
            }
            for setid in [0o4755, 0o2755, 0o6755, 0o4000 | libc::S_IFREG] {
                assert_eq!(m(create, setid), EPERM, "call {nr} mode {setid:o}");
                if flags.is_some() {
                    assert_eq!(m(tmpfile, setid), EPERM, "call {nr} O_TMPFILE {setid:o}");
                    // Without O_CREAT or O_TMPFILE the kernel ignores the mode.
                    assert_eq!(m(libc::O_RDONLY, setid), ALLOW, "call {nr} no create");
                }
            }
        }
        assert_eq!(call(libc::SYS_openat2, [0; 6]), ENOSYS);

        let persona = |p: u64| call(libc::SYS_personality, with(0, p));
        for ok in PERSONAS {
            assert_eq!(persona(ok), ALLOW, "persona {ok:#x}");
        }
        let addr_no_randomize = 0x0004_0000;
        let read_implies_exec = 0x0040_0000;
        for bad in [
            addr_no_randomize,
            read_implies_exec,
            0x0008 | addr_no_randomize,
        ] {
            assert_eq!(persona(bad), EPERM, "persona {bad:#x}");
        }
    }

    #[test]
    fn the_fast_path_changes_no_answer() {
        let fast = fast_path(&ruled()).expect("the fast path fits 8-bit jumps");
        assert!(fast.len() < 200, "{} instructions", fast.len());
        let mut slow = prelude();
        slow.extend(rules().expect("rules").into_iter().map(|i| sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        }));
        let argsets: [[u64; 6]; 4] = [
            [0; 6],
            [u64::MAX; 6],
            [libc::CLONE_NEWUSER as u64, 0o4755, 0o4755, 0o4755, 0, 0],
            [
                0x0004_0000,
                libc::O_CREAT as u64,
                libc::O_CREAT as u64,
                0o6755,
                0,
                0,
            ],
        ];
        for nr in 0..=600 {
            for args in argsets {
                assert_eq!(
                    eval(program(), AUDIT_ARCH, nr, args),
                    eval(&slow, AUDIT_ARCH, nr, args),
                    "call {nr} {args:?}"
                );
            }
        }
    }

    /// The calls the probe child makes, in order.
    const PROBES: [&str; 14] = [
        "clone(CLONE_NEWUSER)",
        "clone(CLONE_NEWNET)",
        "clone3",
        "chmod 04755",
        "fchmodat 02755",
        "fchmod 04755",
        "fchmodat2 04755",
        "chmod 0644",
        "fork",
        "personality(ADDR_NO_RANDOMIZE)",
        "openat(O_CREAT) 04755",
        "mknodat 02755",
        "openat2",
        "openat(O_CREAT) 0644",
    ];

    /// Runs the probes in a child that installs `filter` (after `no_new_privs`), then execs
    /// `true` under it. Returns what each probe saw: 0 when the call succeeded, else its errno.
    fn probe_under(filter: &'static [sock_filter]) -> [i32; PROBES.len()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        let opened = std::fs::File::create(&file).expect("create the probe file");
        let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).expect("no NUL");
        let fresh = |name: &str| {
            std::ffi::CString::new(dir.path().join(name).as_os_str().as_encoded_bytes())
                .expect("no NUL")
        };
        let (created, node, plain) = (fresh("created"), fresh("node"), fresh("plain"));
        let fd = opened.as_raw_fd();
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fresh fds into the array we own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned by nothing else.
        let (mut read, write) = unsafe {
            (
                std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
                OwnedFd::from_raw_fd(fds[1]),
            )
        };
        let wfd = write.as_raw_fd();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: the closure runs in the forked child and only makes raw system calls on memory
        // it owns or that was prepared before the fork (the path, the fds, the filter); it
        // allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                let fprog = libc::sock_fprog {
                    len: filter.len() as libc::c_ushort,
                    filter: filter.as_ptr() as *mut sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        &fprog as *const libc::sock_fprog as libc::c_ulong,
                        0,
                        0,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                let result = |r: c_long| {
                    if r < 0 {
                        *libc::__errno_location()
                    } else {
                        0
                    }
                };
                // A child made by a probe leaves at once; the probe reaps it.
                let clone_probe = |r: c_long| {
                    if r == 0 {
                        libc::_exit(0);
                    }
                    if r > 0 {
                        let mut status = 0;
                        libc::waitpid(r as libc::pid_t, &mut status, libc::__WALL);
                        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                            return -1;
                        }
                        return 0;
                    }
                    result(r)
                };
                let clone = |flags: libc::c_int| {
                    clone_probe(libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0))
                };
                let clone_args = [0u64; 11];
                // struct open_how: flags, mode, resolve.
                let how = [(libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0];
                let p = path.as_ptr();
                let out: [i32; PROBES.len()] = [
                    clone(libc::CLONE_NEWUSER | libc::SIGCHLD),
                    clone(libc::CLONE_NEWNET | libc::SIGCHLD),
                    clone_probe(libc::syscall(
                        libc::SYS_clone3,
                        clone_args.as_ptr(),
                        std::mem::size_of_val(&clone_args),
                    )),
                    result(libc::chmod(p, 0o4755) as c_long),
                    result(libc::syscall(
                        libc::SYS_fchmodat,
                        libc::AT_FDCWD,
                        p,
                        0o2755,
                        0,
                    )),
                    result(libc::fchmod(fd, 0o4755) as c_long),
                    result(libc::syscall(SYS_FCHMODAT2, libc::AT_FDCWD, p, 0o4755, 0)),
                    result(libc::chmod(p, 0o644) as c_long),
                    clone(libc::SIGCHLD),
                    result(libc::syscall(libc::SYS_personality, 0x0004_0000)),
                    result(libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        created.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o4755,
                    )),
                    result(libc::syscall(
                        libc::SYS_mknodat,
                        libc::AT_FDCWD,
                        node.as_ptr(),
                        libc::S_IFREG | 0o2755,
                        0,
                    )),
                    result(libc::syscall(
                        libc::SYS_openat2,
                        libc::AT_FDCWD,
                        p,
                        how.as_ptr(),
                        std::mem::size_of_val(&how),
                    )),
                    result(libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        plain.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    )),
                ];
                let n = std::mem::size_of_val(&out);
                if libc::write(wfd, out.as_ptr().cast(), n) != n as isize {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let status = cmd.status().expect("spawn the probe child");
        assert!(status.success(), "exec under the filter: {status}");
        drop(write);
        let mut bytes = Vec::new();
        read.read_to_end(&mut bytes).expect("read the probes");
        let mut out = [0; PROBES.len()];
        assert_eq!(bytes.len(), std::mem::size_of_val(&out), "probe results");
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = i32::from_ne_bytes(b.try_into().expect("4 bytes"));
        }
        drop(opened);
        out
    }

    fn named(seen: &[i32]) -> Vec<(&'static str, i32)> {
        PROBES.iter().copied().zip(seen.iter().copied()).collect()
    }

    #[test]
    fn a_filtered_child_is_refused_namespaces_and_setid_but_forks() {
        let seen = probe_under(program());
        let e = libc::EPERM;
        let want = [
            e,
            e,
            libc::ENOSYS,
            e,
            e,
            e,
            e,
            0,
            0,
            e,
            e,
            e,
            libc::ENOSYS,
            0,
        ];
        assert_eq!(named(&seen), named(&want));
    }

    /// The same probes under a filter that allows everything: what the rules above refuse does
    /// succeed here, so the test above can fail.
    #[test]
    fn without_the_rules_the_probes_succeed() {
        static ALLOW_ALL: [sock_filter; 1] = [sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root
            || !status
                .lines()
                .any(|l| l.split_whitespace().eq(["Seccomp:", "0"]))
        {
            eprintln!("skipped: needs root and no seccomp filter around the test");
            return;
        }
        let seen = probe_under(&ALLOW_ALL);
        assert_eq!(named(&seen), named(&[0; PROBES.len()]));
    }
}
