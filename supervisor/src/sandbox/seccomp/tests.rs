//! Tests of the seccomp filter: an interpreter run over the program for every rule, the program
//! against `seccompiler`'s compilation of the same rules, an expectation table written from the
//! kernel's ABI, and real children that install it. Past 600 lines because the reference rules
//! and the probe child's calls are long lists; they share the interpreter and the helpers here.
use super::*;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
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
                    _ if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => acc & k != 0,
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
    // Its length is what every cold spawn pays to install it (see the module's doc).
    assert!(p.len() <= 200, "{} instructions", p.len());
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
    // Calls newer than the filter are answered as a kernel without them would; the newest
    // reviewed ones are judged.
    assert_eq!(call(c_long::from(REVIEWED_UP_TO) + 1, [0; 6]), ENOSYS);
    assert_eq!(call(0x3fff_ffff, [0; 6]), ENOSYS);
    assert_eq!(call(c_long::from(REVIEWED_UP_TO), [0; 6]), ALLOW);
    assert_eq!(call(SYS_OPEN_TREE_ATTR, [0; 6]), EPERM);
    assert_eq!(call(-1, [0; 6]), KILL);
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

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// A 32-bit condition on argument `arg`.
fn dword(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("a valid condition")
}

/// One rule per bit: any of `bits` set in argument `arg` matches.
fn any_bit(arg: u8, bits: impl IntoIterator<Item = u64>) -> Vec<SeccompRule> {
    bits.into_iter()
        .map(|b| {
            let set = dword(arg, SeccompCmpOp::MaskedEq(b), b);
            SeccompRule::new(vec![set]).expect("a valid rule")
        })
        .collect()
}

/// The same rules written for `seccompiler`, one rule per flag and mode bit, as its documented
/// conditions say them: the reference the program is checked against.
fn reference() -> Vec<sock_filter> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|nr| (nr, Vec::new())).collect();
    let ns = CLONE_NS_FLAGS.iter().map(|&f| f as u32 as u64);
    rules.insert(libc::SYS_clone, any_bit(0, ns));
    for (nr, mode) in chmods() {
        rules.insert(nr, any_bit(mode, SETID_BITS.map(u64::from)));
    }
    for (nr, flags, mode) in creators() {
        let rule = match flags {
            None => any_bit(mode, SETID_BITS.map(u64::from)),
            Some(flags) => {
                let mut v = Vec::new();
                for f in MODE_FLAGS {
                    for b in SETID_BITS {
                        let (f, b) = (f as u32 as u64, u64::from(b));
                        v.push(
                            SeccompRule::new(vec![
                                dword(flags, SeccompCmpOp::MaskedEq(f), f),
                                dword(mode, SeccompCmpOp::MaskedEq(b), b),
                            ])
                            .expect("a valid rule"),
                        );
                    }
                }
                v
            }
        };
        rules.insert(nr, rule);
    }
    let other_persona = PERSONAS
        .iter()
        .map(|&p| dword(0, SeccompCmpOp::Ne, p))
        .collect();
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(other_persona).expect("a valid rule")],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )
    .expect("the reference compiles");
    let compiled: BpfProgram = filter.try_into().expect("the reference compiles");
    let mut p = prelude();
    p.extend(compiled.into_iter().map(|i| sock_filter {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }));
    p
}

/// Argument sets that reach every branch of every check: nothing, everything, each bit of each
/// checked argument alone, each creation flag with each mode, each persona and its neighbours.
fn argument_sets() -> Vec<[u64; 6]> {
    let mut sets = vec![[0; 6], [u64::MAX; 6], [u64::from(u32::MAX); 6]];
    for arg in 0..4 {
        for bit in 0..64 {
            sets.push(with(arg, 1 << bit));
            let mut all_but = [u64::MAX; 6];
            all_but[arg] &= !(1 << bit);
            sets.push(all_but);
        }
    }
    let modes = [
        0,
        0o644,
        0o4755,
        0o2755,
        0o6755,
        0o1777,
        libc::S_IFREG | 0o4000,
    ];
    let flags = [
        0,
        libc::O_CREAT,
        libc::O_TMPFILE,
        libc::O_DIRECTORY,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        libc::O_TMPFILE | libc::O_RDWR,
    ];
    for f in flags {
        for m in modes {
            let (f, m) = (f as u32 as u64, u64::from(m));
            // openat (flags 2, mode 3) and open (flags 1, mode 2).
            sets.push([0, 0, f, m, 0, 0]);
            sets.push([0, f, m, 0, 0, 0]);
        }
    }
    for p in PERSONAS {
        for q in [p, p ^ 1, p.wrapping_add(1), p | 0x0004_0000, p | (1 << 32)] {
            sets.push(with(0, q));
        }
    }
    sets
}

#[test]
fn the_program_answers_as_seccompiler_compiles_the_same_rules() {
    let reference = reference();
    assert!(
        reference.len() > 2 * program().len(),
        "the reference is {} instructions, the program {}",
        reference.len(),
        program().len()
    );
    let sets = argument_sets();
    for nr in 0..=600 {
        for args in &sets {
            assert_eq!(
                eval(program(), AUDIT_ARCH, nr, *args),
                eval(&reference, AUDIT_ARCH, nr, *args),
                "call {nr} {args:x?}"
            );
        }
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [
        0x4000_0000 | libc::SYS_getpid,
        0x4000_0000 | libc::SYS_clone,
    ] {
        assert_eq!(eval(program(), AUDIT_ARCH, nr, [0; 6]), KILL);
    }
    // Another architecture's calls die, whatever the number (AUDIT_ARCH_I386 here).
    for nr in [0, libc::SYS_getpid, 20, 310, 0x3fff_ffff] {
        assert_eq!(eval(program(), 0x4000_0003, nr, [0; 6]), KILL, "i386 {nr}");
    }
}

/// What is refused, written out here from the kernel's ABI (numbers, argument positions and
/// bits as literals), not from the module's tables: a wrong argument index or a flag missing
/// there is caught here, where the comparison with `seccompiler` (built from the same tables)
/// cannot see it.
#[cfg(target_arch = "x86_64")]
#[test]
fn an_independent_table_of_what_is_refused() {
    // clone(2) = 56: flags in argument 0; each CLONE_NEW* bit.
    for bit in [
        0x1000_0000u64, // NEWUSER
        0x0002_0000,    // NEWNS
        0x2000_0000,    // NEWPID
        0x4000_0000,    // NEWNET
        0x0800_0000,    // NEWIPC
        0x0400_0000,    // NEWUTS
        0x0200_0000,    // NEWCGROUP
        0x0000_0080,    // NEWTIME
    ] {
        assert_eq!(call(56, with(0, bit | 17)), EPERM, "clone {bit:#x}");
        assert_eq!(
            call(56, with(1, bit | 17)),
            ALLOW,
            "clone {bit:#x} in argument 1"
        );
    }
    // (number, argument holding the mode) of chmod 90, fchmod 91, fchmodat 268,
    // fchmodat2 452, creat 85, mknod 133, mknodat 259.
    for (nr, mode) in [
        (90, 1),
        (91, 1),
        (268, 2),
        (452, 2),
        (85, 1),
        (133, 1),
        (259, 2),
    ] {
        for bits in [0o4000u64, 0o2000] {
            assert_eq!(
                call(nr, with(mode, bits | 0o755)),
                EPERM,
                "{nr} mode {bits:o}"
            );
            let other = if mode == 1 { 2 } else { 1 };
            assert_eq!(
                call(nr, with(other, bits | 0o755)),
                ALLOW,
                "{nr} argument {other}"
            );
        }
        assert_eq!(call(nr, with(mode, 0o1777)), ALLOW, "{nr} sticky");
    }
    // (number, flags argument, mode argument) of open 2 and openat 257; O_CREAT 0o100 and
    // __O_TMPFILE 0o20000000.
    for (nr, flags, mode) in [(2, 1, 2), (257, 2, 3)] {
        for create in [0o100u64, 0o20000000 | 0o200000] {
            let mut a = [0u64; 6];
            a[flags] = create | 0o2;
            a[mode] = 0o4755;
            assert_eq!(call(nr, a), EPERM, "{nr} flags {create:o}");
            a[mode] = 0o755;
            assert_eq!(call(nr, a), ALLOW, "{nr} plain mode");
            a[flags] = 0o200000; // O_DIRECTORY alone creates nothing
            a[mode] = 0o4755;
            assert_eq!(call(nr, a), ALLOW, "{nr} no creation");
        }
    }
    // personality 135: ADDR_NO_RANDOMIZE 0x0040000, READ_IMPLIES_EXEC 0x0400000.
    assert_eq!(call(135, with(0, 0x0040000)), EPERM);
    assert_eq!(call(135, with(0, 0x0400000 | 0x0008)), EPERM);
    assert_eq!(call(135, with(0, 0xffff_ffff)), ALLOW);
    // Refused whatever their arguments: unshare 272, setns 308, mount 165, pivot_root 155,
    // ptrace 101, bpf 321, keyctl 250, io_uring_setup 425, open_tree 428, open_tree_attr 467,
    // fsopen 430, mount_setattr 442, userfaultfd 323, process_vm_writev 311, kexec_load 246,
    // init_module 175.
    for nr in [
        272, 308, 165, 155, 101, 321, 250, 425, 428, 467, 430, 442, 323, 311, 246, 175,
    ] {
        assert_eq!(call(nr, [0; 6]), EPERM, "call {nr}");
    }
    // clone3 435 and openat2 437: their flags are in memory.
    assert_eq!(call(435, [0; 6]), ENOSYS);
    assert_eq!(call(437, [0; 6]), ENOSYS);
}

#[test]
fn each_creation_flag_is_one_bit() {
    // The program tests them with one `JSET`, the rules as "all of its bits".
    for f in MODE_FLAGS {
        assert_eq!(f.count_ones(), 1, "{f:#o}");
    }
}

/// The calls the probe child makes, in order.
const PROBES: [&str; 17] = [
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
    "openat(O_TMPFILE) 02755",
    "open_tree_attr(OPEN_TREE_CLONE)",
    "clone(CLONE_NEWCGROUP)",
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
    let dir_c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("no NUL");
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
            let clone =
                |flags: libc::c_int| clone_probe(libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0));
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
                result(libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    dir_c.as_ptr(),
                    libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                    0o2755,
                )),
                result(libc::syscall(
                    SYS_OPEN_TREE_ATTR,
                    libc::AT_FDCWD,
                    dir_c.as_ptr(),
                    1 | libc::O_CLOEXEC, // OPEN_TREE_CLONE
                    std::ptr::null::<u8>(),
                    0,
                )),
                clone(libc::CLONE_NEWCGROUP | libc::SIGCHLD),
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
        e,
        e,
        e,
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
    let mut seen = probe_under(&ALLOW_ALL);
    // A kernel before 6.15 has no `open_tree_attr`: nothing to refuse there.
    let ota = PROBES
        .iter()
        .position(|p| p.starts_with("open_tree_attr"))
        .expect("probed");
    if seen[ota] == libc::ENOSYS {
        eprintln!("this kernel has no open_tree_attr");
        seen[ota] = 0;
    }
    assert_eq!(named(&seen), named(&[0; PROBES.len()]));
}
