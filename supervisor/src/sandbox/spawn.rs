//! The spawn path: a vfork-style `clone(CLONE_VM | CLONE_VFORK)` that runs a few raw system
//! calls in the child and then `execve`s the agent.
//!
//! Why not `std::process::Command`: its `pre_exec` forces a full `fork()`, whose cost grows with
//! the supervisor's memory (tens of milliseconds for a 1 GiB parent). A `CLONE_VM` child shares
//! the parent's memory until `execve`, so spawning costs the same whatever the supervisor's size.
//!
//! The price is discipline: between `clone` and `execve` the child runs on a private stack in the
//! parent's address space, so it may only make async-signal-safe system calls over data prepared
//! beforehand. It allocates nothing, takes no locks and touches no Rust runtime state. Every
//! string, array and number it needs lives in a `Prepared` built in the parent. Errors travel
//! back through the same shared memory (the stage and the errno), which the parent reads once
//! `clone` returns (with `CLONE_VFORK` that is after the child's `execve` or `_exit`).
//!
//! Spawning happens on a dedicated thread that lives as long as the process
//! ([`Spawner`]): `PR_SET_PDEATHSIG` fires when the *thread* that created the child exits, so
//! it must not be a pool thread that may retire; and the async runtime is never blocked.
//!
//! What the child does, in order: reset signal dispositions and unblock signals; `setsid`;
//! attach itself to its cgroups (writes `0` to each attach fd: `tasks` on v1, `cgroup.procs` on v2); rlimits; `chdir`;
//! arrange fds 0–4; drop group/user; `PR_SET_PDEATHSIG` (after the uid change, which clears it)
//! and the `getppid` check; `no_new_privs`; landlock; close every other fd; `execve`.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;

/// Spawning failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A string contained a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which string.
        what: &'static str,
    },
    /// The program could not be found.
    #[error("program `{0}` not found in PATH")]
    NotFound(String),
    /// A system call in the parent failed.
    #[error("{op}: {source}")]
    Parent {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A step in the child failed before exec.
    #[error("in the child, {stage} failed: {source}")]
    Child {
        /// The failing step.
        stage: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spawner thread is gone.
    #[error("the spawner thread is not running")]
    SpawnerGone,
}

/// One resource limit: `(resource, soft, hard)`.
pub type Rlimit = (libc::__rlimit_resource_t, u64, u64);

/// Everything about how to start one process. Build it, then hand it to [`Spawner::spawn`].
#[derive(Debug, Default)]
pub struct SpawnSpec {
    program: PathBuf,
    resolved: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    fds: Vec<(OwnedFd, RawFd)>,
    rlimits: Vec<Rlimit>,
    cgroup_fds: Vec<OwnedFd>,
    uid_gid: Option<(u32, u32)>,
    no_new_privs: bool,
    landlock: Option<OwnedFd>,
    pdeathsig: bool,
    ns: Namespaces,
    init: Option<PathBuf>,
    /// With an init: start only the init, which waits on fd 7 for the agent's argv and
    /// environment (a warm sandbox; see `corral-init --stem`).
    stem: bool,
    drop_caps: bool,
    seccomp: bool,
    /// With a mount namespace: the root built for the agent.
    root: Option<crate::sandbox::rootfs::MountOps>,
}

/// Which namespaces the child gets, and how they are set up.
#[derive(Debug, Default, Clone)]
pub struct Namespaces {
    /// Own pid namespace (the agent runs under `corral-init`).
    pub pid: bool,
    /// Own IPC namespace.
    pub ipc: bool,
    /// Own UTS namespace, with this host name.
    pub uts: Option<String>,
    /// Own mount namespace: private propagation, a fresh tmpfs on `/tmp`, and (with `pid`)
    /// a `/proc` of its own.
    pub mount: bool,
    /// Network: `None` shares the host's; `Some(fd)` joins that namespace; see `net_own`.
    pub net_join: Option<RawFd>,
    /// A network namespace of its own, loopback only.
    pub net_own: bool,
    /// A user namespace mapping root inside to this uid/gid outside.
    pub user_map: Option<(u32, u32)>,
}

impl Namespaces {
    fn clone_flags(&self) -> libc::c_int {
        let mut f = 0;
        if self.pid {
            f |= libc::CLONE_NEWPID;
        }
        if self.ipc {
            f |= libc::CLONE_NEWIPC;
        }
        if self.uts.is_some() {
            f |= libc::CLONE_NEWUTS;
        }
        if self.mount {
            f |= libc::CLONE_NEWNS;
        }
        if self.net_own {
            f |= libc::CLONE_NEWNET;
        }
        if self.user_map.is_some() {
            f |= libc::CLONE_NEWUSER;
        }
        f
    }
}

impl SpawnSpec {
    /// A process running `program` (looked up in PATH when it has no `/`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        SpawnSpec {
            program: program.into(),
            no_new_privs: true,
            pdeathsig: true,
            ..Default::default()
        }
    }

    /// Arguments after `argv[0]`.
    pub fn args(mut self, args: impl IntoIterator<Item = String>) -> Self {
        self.args = args.into_iter().collect();
        self
    }

    /// The complete environment (nothing is inherited).
    pub fn env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// Working directory.
    pub fn cwd(mut self, cwd: Option<PathBuf>) -> Self {
        self.cwd = cwd;
        self
    }

    /// Make `fd` appear as `target` in the child (targets 0..=7 are supported).
    pub fn fd(mut self, fd: OwnedFd, target: RawFd) -> Self {
        self.fds.push((fd, target));
        self
    }

    /// Add a resource limit.
    pub fn rlimit(mut self, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Self {
        self.rlimits.push((resource, soft, hard));
        self
    }

    /// Attach fds (`tasks` on v1, `cgroup.procs` on v2) the child writes itself into before exec.
    pub fn cgroup_fds(mut self, fds: Vec<OwnedFd>) -> Self {
        self.cgroup_fds = fds;
        self
    }

    /// Drop to this uid/gid (root supervisors only).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid_gid = Some((uid, gid));
        self
    }

    /// A landlock ruleset fd to restrict the child with (the child adds a read rule for the
    /// `/proc` it mounts, which the parent cannot name).
    pub fn landlock(mut self, ruleset: Option<OwnedFd>) -> Self {
        self.landlock = ruleset;
        self
    }

    /// Namespaces to create or join.
    pub fn namespaces(mut self, ns: Namespaces) -> Self {
        self.ns = ns;
        self
    }

    /// With a mount namespace: the root to build for the agent (see `sandbox::rootfs`).
    pub fn root(mut self, ops: crate::sandbox::rootfs::MountOps) -> Self {
        self.root = Some(ops);
        self
    }

    /// Run the program under this init (required with a pid namespace); its status record
    /// arrives on `status`, which becomes fd 5.
    pub fn init(mut self, init: PathBuf, status: OwnedFd) -> Self {
        self.init = Some(init);
        self.fds.push((status, 5));
        self
    }

    /// Make this a stem: the init starts alone and waits for the agent's start record on
    /// `control`, which becomes fd 7 (requires [`SpawnSpec::init`]).
    pub fn stem(mut self, control: OwnedFd) -> Self {
        self.stem = true;
        self.fds.push((control, 7));
        self
    }

    /// Drop every capability (bounding set included) before exec.
    pub fn drop_caps(mut self, on: bool) -> Self {
        self.drop_caps = on;
        self
    }

    /// Install the seccomp deny list before exec.
    pub fn seccomp(mut self, on: bool) -> Self {
        self.seccomp = on;
        self
    }

    /// The program as given.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The program's path, already looked up (skips the `PATH` search at spawn).
    pub fn resolved(mut self, path: PathBuf) -> Self {
        self.resolved = Some(path);
        self
    }
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (also its process group and session id).
    pub pid: i32,
    /// A pidfd for it: readable when it exits; signals sent through it cannot hit a reused pid.
    pub pidfd: OwnedFd,
}

/// Steps of the child, for error reports. Index = stage number.
const STAGES: &[&str] = &[
    "none",
    "sigaction",
    "sigprocmask",
    "setsid",
    "cgroup attach",
    "setrlimit",
    "chdir",
    "dup2",
    "setgroups",
    "setgid",
    "setuid",
    "prctl(PR_SET_PDEATHSIG)",
    "parent check",
    "prctl(PR_SET_NO_NEW_PRIVS)",
    "landlock_restrict_self",
    "close_range",
    "execve",
    "write user namespace maps",
    "setns(network)",
    "make mounts private",
    "mount tmpfs on /tmp",
    "mount /proc",
    "sethostname",
    "bring up loopback",
    "landlock rule for /tmp or /proc",
    "drop capability bounding set",
    "capset",
    "seccomp",
    "open_tree(kept directory under /tmp)",
    "move_mount(kept directory under /tmp)",
    "mkdir in private /tmp",
    "clone(agent)",
    "build the agent's root",
    "prctl(PR_SET_DUMPABLE)",
];
const CAP_KILL: i32 = 5;
const CAP_SETGID: i32 = 6;
const CAP_SETUID: i32 = 7;
const CAP_SETPCAP: i32 = 8;
/// Stage of a failed root build (the step is named by `MountOps::failed_step`).
const STAGE_ROOT: i32 = 32;

/// Everything the child reads, prepared in the parent. Raw pointers point into the owned
/// vectors kept alongside, which outlive the child's use of them (the parent is suspended
/// until `execve`/`_exit`).
struct Prepared {
    /// With an init: the agent, started by the child before it execs the init.
    agent_path: Option<CString>,
    agent_argv: Vec<*const libc::c_char>,
    agent_stack: Vec<u8>,
    agent_errno: i32,
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    cwd: Option<CString>,
    fds: Vec<(RawFd, RawFd)>,
    rlimits: Vec<Rlimit>,
    cgroup_fds: Vec<RawFd>,
    uid_gid: Option<(u32, u32)>,
    no_new_privs: bool,
    landlock: Option<RawFd>,
    pdeathsig: bool,
    parent_pid: libc::pid_t,
    ns: Namespaces,
    hostname: Option<CString>,
    user_maps: Option<[CString; 2]>,
    drop_caps: bool,
    seccomp: Option<&'static [libc::sock_filter]>,
    root: Option<crate::sandbox::rootfs::MountOps>,
    init_kind: InitKind,
    // Written by the child on failure.
    err_stage: i32,
    err_errno: i32,
}

fn cstr(s: &OsStr, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul { what })
}

/// Find `program` in `PATH` when it has no slash.
pub fn resolve_program(program: &Path) -> Result<PathBuf, SpawnError> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(SpawnError::NotFound(program.display().to_string()))
}

impl Prepared {
    fn new(spec: &mut SpawnSpec) -> Result<Prepared, SpawnError> {
        let mut p = Self::build(spec)?;
        p.root = spec.root.take();
        Ok(p)
    }

    fn build(spec: &SpawnSpec) -> Result<Prepared, SpawnError> {
        let program = match &spec.resolved {
            Some(p) => p.clone(),
            None => resolve_program(&spec.program)?,
        };
        let mut strings = Vec::with_capacity(spec.args.len() + spec.env.len() + 3);
        // The agent's argv: the program as given, then its arguments.
        strings.push(cstr(spec.program.as_os_str(), "argv[0]")?);
        for a in &spec.args {
            strings.push(cstr(OsStr::new(a), "an argument")?);
        }
        let argc = strings.len();
        for (k, v) in &spec.env {
            strings.push(cstr(
                OsStr::new(&format!("{k}={v}")),
                "an environment entry",
            )?);
        }
        let envc = strings.len();
        let mut agent_argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        agent_argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[argc..envc].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        let program_c = cstr(program.as_os_str(), "program path")?;
        // Under an init, the child starts the agent itself (so the agent is on its way while
        // the init starts), then becomes the init, which adopts it.
        let (path, argv, agent_path) = match &spec.init {
            Some(init) if spec.stem => {
                strings.push(cstr(init.as_os_str(), "init path")?);
                strings.push(cstr(OsStr::new("--stem"), "init argument")?);
                // The stem's init starts the agent later, as this user.
                if let Some((uid, gid)) = spec.uid_gid {
                    strings.push(cstr(OsStr::new(&uid.to_string()), "init argument")?);
                    strings.push(cstr(OsStr::new(&gid.to_string()), "init argument")?);
                }
                let mut argv: Vec<_> = strings[envc..].iter().map(|s| s.as_ptr()).collect();
                argv.push(std::ptr::null());
                (cstr(init.as_os_str(), "init path")?, argv, None)
            }
            Some(init) => {
                strings.push(cstr(init.as_os_str(), "init path")?);
                strings.push(cstr(OsStr::new("--adopt"), "init argument")?);
                let mut argv: Vec<_> = strings[envc..].iter().map(|s| s.as_ptr()).collect();
                argv.push(std::ptr::null());
                (cstr(init.as_os_str(), "init path")?, argv, Some(program_c))
            }
            None => (program_c, agent_argv.clone(), None),
        };
        let cwd = match &spec.cwd {
            Some(c) => Some(cstr(c.as_os_str(), "working directory")?),
            None => None,
        };
        Ok(Prepared {
            agent_stack: if agent_path.is_some() {
                vec![0u8; CHILD_STACK]
            } else {
                Vec::new()
            },
            agent_path,
            agent_argv,
            agent_errno: 0,
            path,
            argv,
            envp,
            _strings: strings,
            cwd,
            fds: spec
                .fds
                .iter()
                .map(|(fd, t)| (fd.as_raw_fd(), *t))
                .collect(),
            rlimits: spec.rlimits.clone(),
            cgroup_fds: spec.cgroup_fds.iter().map(|f| f.as_raw_fd()).collect(),
            uid_gid: spec.uid_gid,
            no_new_privs: spec.no_new_privs,
            landlock: spec.landlock.as_ref().map(|f| f.as_raw_fd()),
            pdeathsig: spec.pdeathsig,
            // SAFETY: getpid has no preconditions.
            parent_pid: unsafe { libc::getpid() },
            ns: spec.ns.clone(),
            hostname: match &spec.ns.uts {
                Some(h) => Some(cstr(OsStr::new(h), "host name")?),
                None => None,
            },
            user_maps: match spec.ns.user_map {
                Some((uid, gid)) => Some([
                    cstr(OsStr::new(&format!("0 {uid} 1")), "uid map")?,
                    cstr(OsStr::new(&format!("0 {gid} 1")), "gid map")?,
                ]),
                None => None,
            },
            root: None,
            init_kind: match (&spec.init, spec.stem) {
                (None, _) => InitKind::None,
                (Some(_), false) => InitKind::Adopt,
                (Some(_), true) => InitKind::Stem,
            },
            drop_caps: spec.drop_caps,
            // Built here, in the parent: the child must not allocate.
            seccomp: spec.seccomp.then(crate::sandbox::seccomp::program),
            err_stage: 0,
            err_errno: 0,
        })
    }
}

/// The highest fd number a spec may map to. Sources are moved above it first.
const MAX_TARGET: RawFd = 7;

/// Move fds that could collide with a target (numbers 0..=MAX_TARGET) above that range: the
/// sources of the mapped fds, and the landlock ruleset, which the child uses after its `dup2`s
/// (a ruleset that landed on a low number, free again in a long-running supervisor, was
/// overwritten by a pipe and the spawn failed with EBADFD).
fn lift_low_fds(spec: &mut SpawnSpec) -> Result<(), SpawnError> {
    for (fd, _) in spec.fds.iter_mut() {
        lift(fd)?;
    }
    if let Some(fd) = spec.landlock.as_mut() {
        lift(fd)?;
    }
    Ok(())
}

/// Replace `fd` by a duplicate above MAX_TARGET when it is not already there.
fn lift(fd: &mut OwnedFd) -> Result<(), SpawnError> {
    if fd.as_raw_fd() > MAX_TARGET {
        return Ok(());
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd we then own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, MAX_TARGET + 1) };
    if new < 0 {
        return Err(SpawnError::Parent {
            op: "fcntl(F_DUPFD_CLOEXEC)",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    *fd = unsafe { OwnedFd::from_raw_fd(new) };
    Ok(())
}

/// The child side. Runs in the parent's address space on its own stack: raw syscalls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Prepared` the parent passed to clone; the parent is suspended
    // (CLONE_VFORK) until we exec or exit, so nothing else touches it meanwhile.
    let p = unsafe { &mut *(arg as *mut Prepared) };
    // SAFETY: every call below is an async-signal-safe libc wrapper over data prepared by the
    // parent; no allocation, no locks.
    unsafe {
        let fail = |p: &mut Prepared, stage: i32| -> libc::c_int {
            p.err_stage = stage;
            p.err_errno = *libc::__errno_location();
            libc::_exit(127)
        };
        // 1. Default dispositions, so no parent handler runs here or survives into the agent
        //    (exec resets handled signals, but not ignored ones such as Rust's SIGPIPE).
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // EINVAL for the few reserved numbers is fine.
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return fail(p, 2);
        }
        // 2. Own session and process group: the group is what we kill.
        if libc::setsid() < 0 {
            return fail(p, 3);
        }
        // 3. Attach to cgroups before anything else can fork.
        for &fd in &p.cgroup_fds {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return fail(p, 4);
            }
        }
        // 3b. Namespaces: user maps first (they grant the rest), then network, mounts, name.
        if let Some(maps) = &p.user_maps {
            if write_file(c"/proc/self/setgroups", b"deny") != 0
                || write_file(c"/proc/self/uid_map", maps[0].as_bytes()) != 0
                || write_file(c"/proc/self/gid_map", maps[1].as_bytes()) != 0
            {
                return fail(p, 17);
            }
        }
        if let Some(fd) = p.ns.net_join {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return fail(p, 18);
            }
        }
        if p.ns.net_own && loopback_up_raw() != 0 {
            return fail(p, 23);
        }
        if p.ns.mount {
            // The agent's own root (see `sandbox::rootfs`), else only private propagation.
            let rc = match &mut p.root {
                Some(ops) => ops.apply(),
                None => {
                    let none = std::ptr::null::<libc::c_char>();
                    libc::mount(
                        none,
                        c"/".as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    )
                }
            };
            if rc != 0 {
                return fail(p, STAGE_ROOT);
            }
            // The parent could not name a fresh /proc: grant it here (everything else the
            // agent sees is a bind of a host inode the parent's rules name).
            if let (Some(rs), true) = (p.landlock, p.ns.pid) {
                let fd = libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                if fd < 0
                    || crate::sandbox::landlock::add_rule_raw(
                        rs,
                        fd,
                        crate::sandbox::landlock::READ,
                    ) != 0
                {
                    return fail(p, 24);
                }
                libc::close(fd);
            }
        }
        if let Some(h) = &p.hostname {
            if libc::sethostname(h.as_ptr(), h.as_bytes().len()) != 0 {
                return fail(p, 22);
            }
        }
        // 4. rlimits.
        for &(res, soft, hard) in &p.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(res, &lim) != 0 {
                return fail(p, 5);
            }
        }
        if let Some(cwd) = &p.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                return fail(p, 6);
            }
        }
        // 5. fds: sources are all above MAX_TARGET (see lift_low_fds), so no dup2 clobbers
        //    another source.
        for &(src, target) in &p.fds {
            if libc::dup2(src, target) < 0 {
                return fail(p, 7);
            }
        }
        // 6. Privileges: the bounding set goes first (it needs CAP_SETPCAP), then the ids,
        //    then whatever capabilities are left.
        // Under an init, the init keeps root (and its uid stays apart from the agent's, so the
        // agent cannot reach it) with only the capabilities it needs: CAP_KILL to forward
        // signals, and for a stem CAP_SETUID/CAP_SETGID to start its agent as the agent's user
        // and CAP_SETPCAP to empty the agent's bounding set (else it would keep these three).
        // The agent drops everything itself (`agent_main`, or the stem's init).
        let under_init = p.init_kind != InitKind::None;
        if p.drop_caps {
            for cap in 0..64 {
                let keep = match p.init_kind {
                    InitKind::None => false,
                    InitKind::Adopt => cap == CAP_KILL,
                    InitKind::Stem => {
                        [CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP].contains(&cap)
                    }
                };
                if !keep
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    return fail(p, 25);
                }
            }
        }
        if let (Some((uid, gid)), false) = (p.uid_gid, under_init) {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return fail(p, 8);
            }
            if libc::setgid(gid) != 0 {
                return fail(p, 9);
            }
            if libc::setuid(uid) != 0 {
                return fail(p, 10);
            }
        }
        if p.drop_caps && !under_init && clear_caps() != 0 {
            return fail(p, 26);
        }
        // 7. Die with the supervisor. Set after the uid change (which clears it), then check
        //    the parent did not die before it took effect.
        if p.pdeathsig {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return fail(p, 11);
            }
            // In a new pid namespace the parent is outside it and getppid() reads 0.
            let expected = if p.ns.pid { 0 } else { p.parent_pid };
            if libc::getppid() != expected {
                *libc::__errno_location() = libc::ESRCH;
                return fail(p, 12);
            }
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return fail(p, 13);
        }
        if let Some(rs) = p.landlock {
            if libc::syscall(libc::SYS_landlock_restrict_self, rs, 0) != 0 {
                return fail(p, 14);
            }
        }
        if let Some(prog) = p.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &fprog as *const libc::sock_fprog as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return fail(p, 27);
            }
        }
        // 8. Nothing but 0..=7 crosses exec.
        if libc::syscall(
            libc::SYS_close_range,
            (MAX_TARGET + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            return fail(p, 15);
        }
        if p.agent_path.is_some() {
            // The agent first (pid 2 of the namespace), in a vfork-style clone of its own; we
            // resume once it has exec'd, then become its init.
            let top = {
                let end = p.agent_stack.as_mut_ptr() as usize + p.agent_stack.len();
                (end & !15) as *mut libc::c_void
            };
            let arg = (p as *mut Prepared).cast();
            let agent = libc::clone(
                agent_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg,
            );
            if agent < 0 {
                return fail(p, 31);
            }
            let errno = std::ptr::read_volatile(&p.agent_errno);
            if errno != 0 {
                libc::waitpid(agent, std::ptr::null_mut(), 0);
                *libc::__errno_location() = errno;
                return fail(p, 16);
            }
        }
        libc::execve(p.path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        fail(p, 16)
    }
}

/// How the child relates to `corral-init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitKind {
    /// No init: the child execs the agent.
    None,
    /// The child starts the agent, then execs the init, which adopts it.
    Adopt,
    /// The child execs the init alone; it starts the agent when told (a warm stem).
    Stem,
}

/// Clear every capability of the calling thread (effective, permitted, inheritable).
///
/// # Safety
/// A raw system call over stack data: callable between clone and exec.
unsafe fn clear_caps() -> libc::c_long {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr())
}

/// The agent's side under an init: namespaces, limits, landlock and seccomp are in place (it
/// shares the child's); it drops the init's status fd, every capability (the bounding set
/// too) and takes the agent's ids, so that it shares nothing with its init but the sandbox,
/// then execs.
extern "C" fn agent_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Prepared`; the child that cloned us is suspended
    // (CLONE_VFORK) until we exec or exit. Raw system calls only.
    unsafe {
        let p = &mut *(arg as *mut Prepared);
        libc::close(5);
        let mut ok = true;
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                ok = false;
            }
        }
        if let (Some((uid, gid)), true) = (p.uid_gid, ok) {
            ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0;
        }
        if ok {
            ok = clear_caps() == 0;
        }
        if let (Some(path), true) = (&p.agent_path, ok) {
            libc::execve(path.as_ptr(), p.agent_argv.as_ptr(), p.envp.as_ptr());
        }
        std::ptr::write_volatile(&mut p.agent_errno, (*libc::__errno_location()).max(1));
        libc::_exit(127)
    }
}

/// Write `data` to a file by path with raw calls (for the child). Returns 0 on success.
///
/// # Safety
/// Only raw system calls; callable between clone and exec.
unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) -> libc::c_int {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return -1;
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    libc::close(fd);
    if n == data.len() as isize {
        0
    } else {
        -1
    }
}

/// Set IFF_UP on `lo` with raw calls (for the child). Returns 0 on success.
///
/// # Safety
/// Only raw system calls over a stack-allocated request; callable between clone and exec.
unsafe fn loopback_up_raw() -> libc::c_int {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    if sock < 0 {
        return -1;
    }
    let mut req: libc::ifreq = std::mem::zeroed();
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
    if rc == 0 {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
    }
    libc::close(sock);
    rc
}

/// Size of the child's private stack. The child makes a handful of system calls.
const CHILD_STACK: usize = 64 * 1024;

/// Start a process now, on the calling thread. Prefer [`Spawner::spawn`]: the thread that
/// calls this must outlive the child (PDEATHSIG is tied to it).
pub fn spawn_now(mut spec: SpawnSpec, stack: &mut Vec<u8>) -> Result<Spawned, SpawnError> {
    lift_low_fds(&mut spec)?;
    let mut prepared = Prepared::new(&mut spec)?;
    if stack.len() < CHILD_STACK {
        stack.resize(CHILD_STACK, 0);
    }
    let mut pidfd: libc::c_int = -1;
    // SAFETY: blocking every signal around clone keeps parent handlers from running in the
    // child before it resets them; the old mask is restored right after.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // The stack grows down: pass its (16-byte aligned) top.
    let top = {
        let end = stack.as_mut_ptr() as usize + stack.len();
        (end & !15) as *mut libc::c_void
    };
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_PIDFD
        | libc::SIGCHLD
        | prepared.ns.clone_flags();
    // SAFETY: `child_main` only performs raw system calls over `prepared`, which stays alive
    // and untouched until clone returns (CLONE_VFORK suspends us until the child execs or
    // exits). `top` is the top of a live, writable, aligned buffer of CHILD_STACK bytes.
    // With CLONE_PIDFD the kernel stores the pidfd through the parent_tid pointer.
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            flags,
            (&mut prepared as *mut Prepared).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_err = std::io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    if pid < 0 {
        return Err(SpawnError::Parent {
            op: "clone",
            source: clone_err,
        });
    }
    // SAFETY: the kernel installed a fresh pidfd for us (CLONE_PIDFD).
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // Volatile: the child wrote these through another path the compiler cannot see.
    // SAFETY: plain reads of fields of a live local.
    let (stage, errno) = unsafe {
        (
            std::ptr::read_volatile(&prepared.err_stage),
            std::ptr::read_volatile(&prepared.err_errno),
        )
    };
    drop(spec); // our copies of the child's fds close here
    if stage != 0 {
        let mut status = 0;
        // SAFETY: reaping our own child, which has exited (it called _exit).
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let step = prepared.root.as_ref().and_then(|r| r.failed_step());
        return Err(SpawnError::Child {
            stage: match (stage, step) {
                (STAGE_ROOT, Some(step)) => format!("building the agent's root ({step})"),
                _ => STAGES
                    .get(stage as usize)
                    .copied()
                    .unwrap_or("unknown")
                    .into(),
            },
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(Spawned { pid, pidfd })
}

type Job = (
    SpawnSpec,
    tokio::sync::oneshot::Sender<Result<Spawned, SpawnError>>,
);

/// A long-lived thread that spawns processes, so the async runtime never blocks on a spawn and
/// PDEATHSIG is tied to a thread that never exits.
pub struct Spawner {
    tx: std::sync::Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    /// The process-wide spawner (started on first use).
    pub fn global() -> &'static Spawner {
        static SPAWNER: OnceLock<Spawner> = OnceLock::new();
        SPAWNER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let _ = std::thread::Builder::new()
                .name("corral-spawner".into())
                .spawn(move || {
                    let mut stack = vec![0u8; CHILD_STACK];
                    while let Ok((spec, reply)) = rx.recv() {
                        let _ = reply.send(spawn_now(spec, &mut stack));
                    }
                });
            Spawner {
                tx: std::sync::Mutex::new(tx),
            }
        })
    }

    /// Spawn on the spawner thread and wait (asynchronously) for the result.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .lock()
            .map_err(|_| SpawnError::SpawnerGone)?
            .send((spec, reply))
            .map_err(|_| SpawnError::SpawnerGone)?;
        rx.await.map_err(|_| SpawnError::SpawnerGone)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An fd of ours numbered at most MAX_TARGET, if one is free now.
    fn low_fd() -> Option<OwnedFd> {
        let f = std::fs::File::open("/dev/null").ok()?;
        // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns the lowest free number >= 3, ours.
        let low = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if low < 0 {
            return None;
        }
        // SAFETY: `low` was just returned by fcntl and is owned by nobody else.
        let low = unsafe { OwnedFd::from_raw_fd(low) };
        (low.as_raw_fd() <= MAX_TARGET).then_some(low)
    }

    #[test]
    fn a_ruleset_on_a_low_fd_is_lifted_above_the_targets() {
        let Some(low) = low_fd() else {
            eprintln!("skipped: no fd number up to {MAX_TARGET} is free in this process");
            return;
        };
        let mut spec = SpawnSpec::new("true").landlock(Some(low));
        lift_low_fds(&mut spec).expect("lift");
        let lifted = spec.landlock.as_ref().expect("still there").as_raw_fd();
        assert!(lifted > MAX_TARGET, "the ruleset stays on fd {lifted}");
    }
}
