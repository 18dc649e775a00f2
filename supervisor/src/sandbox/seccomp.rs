//! seccomp: a deny list of system calls no agent needs (ptrace, mount, kexec, bpf, module
//! loading, …). Denied calls fail with `EPERM`; everything else is allowed. A call from another
//! architecture's ABI (e.g. 32-bit on x86_64) kills the process, since the syscall numbers
//! would not match the list.
//!
//! The filter is a static classic-BPF program built once; the child installs it with
//! `prctl(PR_SET_SECCOMP)` after `no_new_privs`, with no allocation.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// System calls an agent is never allowed.
pub fn denied() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    v
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program (built once, lives for the process).
pub fn program() -> &'static [libc::sock_filter] {
    static P: OnceLock<Vec<libc::sock_filter>> = OnceLock::new();
    P.get_or_init(|| {
        const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
        // struct seccomp_data { int nr; __u32 arch; ... }
        let mut p = vec![
            stmt(LD_W_ABS, 4), // arch
            jump(JEQ_K, AUDIT_ARCH, 1, 0),
            stmt(RET_K, RET_KILL_PROCESS),
            stmt(LD_W_ABS, 0), // nr
        ];
        #[cfg(target_arch = "x86_64")]
        {
            // x32 ABI calls have bit 30 set: refuse them.
            const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
            p.push(jump(JGE_K, 0x4000_0000, 0, 1));
            p.push(stmt(RET_K, RET_KILL_PROCESS));
        }
        let deny = denied();
        let n = deny.len();
        for (i, nr) in deny.iter().enumerate() {
            // On match jump to the ERRNO return after the remaining checks and the ALLOW.
            let to_errno = (n - i) as u8;
            p.push(jump(JEQ_K, *nr as u32, to_errno, 0));
        }
        p.push(stmt(RET_K, RET_ALLOW));
        p.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
        p
    })
}
