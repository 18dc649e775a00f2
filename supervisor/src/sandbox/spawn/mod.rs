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
//! Spawning happens on a few dedicated threads that live as long as the process
//! ([`Spawner`]): `PR_SET_PDEATHSIG` fires when the *thread* that created the child exits, so
//! it must not be a pool thread that may retire; and the async runtime is never blocked. A spawn
//! goes to a thread pinned to its caller's CPU (`spawner.rs` says why).
//!
//! What the child does, in order (`child.rs`: one small `unsafe fn` per step, a failure named
//! by its [`Stage`]): reset signal dispositions and unblock signals; `setsid`; attach itself to
//! its cgroups (writes `0` to each attach fd: `tasks` on v1, `cgroup.procs` on v2); user
//! namespace maps, network namespace, the agent's root (and the landlock rule for its `/proc`),
//! host name; rlimits; `chdir`; arrange fds 0–7; drop the bounding set, group/user and
//! capabilities; `PR_SET_PDEATHSIG` (after the uid change, which clears it) and the `getppid`
//! check; `no_new_privs`; landlock; seccomp; close every other fd; under an init, start the
//! agent (`agent.rs`); `execve`. What it reads is made beforehand (`prepared.rs`).

mod agent;
mod child;
mod prepared;
mod spawner;
mod stage;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use prepared::Prepared;
pub use spawner::Spawner;
pub use stage::Stage;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    #[error("in the child, {} failed: {source}", .stage.describe(.root_step.as_deref()))]
    Child {
        /// The failing step.
        stage: Stage,
        /// With [`Stage::Root`]: what the failing step of the root's building was doing
        /// (`MountOps::failed_step`).
        root_step: Option<String>,
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
    /// Own mount namespace, with the root built for the agent (`SpawnSpec::root`; with `pid`
    /// a `/proc` of its own).
    pub mount: bool,
    /// The mount namespace is one made ahead, which the root's steps enter with `setns`: the
    /// clone makes none (copying the host's mount table only to leave it would be wasted).
    pub mount_join: bool,
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
        if self.mount && !self.mount_join {
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
    /// Whether the child waits more than it runs before its `exec` (its spawner thread waiting
    /// with it): it builds a mount namespace or makes a network namespace, whose set-up waits
    /// for RCU grace periods. More spawner threads than cores help such spawns only.
    pub(super) fn waits(&self) -> bool {
        self.ns.mount || self.ns.mount_join || self.ns.net_own
    }

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

/// Size of the child's private stack. The child makes a handful of system calls.
const CHILD_STACK: usize = 64 * 1024;

/// A private stack for a `clone`d child, left uninitialised: only the pages the child really
/// uses are ever touched (a zeroed one would put all 64 KiB in the supervisor's memory, for
/// each spawner thread, and zero them at each spawn that makes one).
pub(super) struct ChildStack(Box<[std::mem::MaybeUninit<u8>]>);

impl ChildStack {
    pub(super) fn new() -> ChildStack {
        ChildStack(Box::new_uninit_slice(CHILD_STACK))
    }

    /// The (16-byte aligned) top of the stack: stacks grow down.
    pub(super) fn top(&mut self) -> *mut libc::c_void {
        let end = self.0.as_mut_ptr() as usize + self.0.len();
        (end & !15) as *mut libc::c_void
    }
}

/// Start a process now, on the calling thread (a [`Spawner`] thread: the thread that calls
/// this must outlive the child, as PDEATHSIG is tied to it). The child starts on this thread's
/// CPU (see below). `restore`: the thread is pinned to that CPU already, and this is the mask
/// the child takes back first thing; `None`: the thread narrows its own mask to its CPU around
/// `clone` and the child takes the old one back.
pub(super) fn spawn_now(
    mut spec: SpawnSpec,
    stack: &mut ChildStack,
    restore: Option<libc::cpu_set_t>,
) -> Result<Spawned, SpawnError> {
    lift_low_fds(&mut spec)?;
    let mut prepared = Prepared::new(&mut spec)?;
    // A new user namespace gives the child a full bounding set there.
    prepared.bounding_narrowed = spawner::narrowed() && prepared.ns.user_map.is_none();
    let mut pidfd: libc::c_int = -1;
    // Every signal blocked around clone keeps parent handlers from running in the child before
    // it resets them; the old mask is restored right after.
    // (It cannot fail: a valid `how` and sets.)
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    let top = stack.top();
    // The child starts on this CPU, not on an idle one: this thread sleeps at once until the
    // child execs (CLONE_VFORK), and waking an idle CPU costs tens of µs on a VM (`docs/bench.md`,
    // five alternating runs each: row 1 1.17–1.21× raw before, 1.13–1.18× after; the cold
    // isolated row 2c' 1.85–1.88 ms before, 1.75–1.86 ms after).
    // The kernel places a new task by the affinity it inherits, so this thread narrows its own
    // to the CPU it runs on around `clone`; the child takes the old mask back first thing.
    let narrowed = if restore.is_some() {
        None
    } else {
        narrow_affinity()
    };
    prepared.affinity = restore.or(narrowed);
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
            child::child_main,
            top,
            flags,
            (&mut prepared as *mut Prepared).cast(),
            &mut pidfd as *mut libc::c_int,
        )
    };
    let clone_err = std::io::Error::last_os_error();
    if let Some(mask) = &narrowed {
        // SAFETY: our own thread (0); the kernel reads a whole cpu_set_t we hold.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) };
    }
    // Restoring the mask saved above.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
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
    if let Some(stage) = stage {
        // Reaping our own child, which has exited (it called _exit).
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        let root_step = match stage {
            Stage::Root => prepared
                .root
                .as_ref()
                .and_then(|r| r.failed_step())
                .map(str::to_string),
            _ => None,
        };
        return Err(SpawnError::Child {
            stage,
            root_step,
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(Spawned { pid, pidfd })
}

/// Narrow the calling thread's CPU affinity to the CPU it runs on; the mask it had, to take
/// back after (`None` when any step fails: nothing was changed).
fn narrow_affinity() -> Option<libc::cpu_set_t> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sched_getcpu reads the running CPU; zeroed cpu_set_t values are valid empty sets,
    // which the calls read and write whole; thread 0 is the calling thread.
    unsafe {
        let cpu = libc::sched_getcpu();
        let mut had: libc::cpu_set_t = std::mem::zeroed();
        if cpu < 0 || libc::sched_getaffinity(0, size, &mut had) != 0 {
            return None;
        }
        let mut here: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut here);
        (libc::sched_setaffinity(0, size, &here) == 0).then_some(had)
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
    fn child_failures_read_as_before() {
        let err = |stage, root_step: Option<&str>| {
            SpawnError::Child {
                stage,
                root_step: root_step.map(str::to_string),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            }
            .to_string()
        };
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(
            err(Stage::Root, Some("bind /usr")),
            format!("in the child, building the agent's root (bind /usr) failed: {eperm}")
        );
        assert_eq!(
            err(Stage::Root, None),
            format!("in the child, build the agent's root failed: {eperm}")
        );
        assert_eq!(
            err(Stage::Pdeathsig, Some("ignored")),
            format!("in the child, prctl(PR_SET_PDEATHSIG) failed: {eperm}")
        );
        assert_eq!(
            Stage::ProcRule.to_string(),
            "landlock rule for /tmp or /proc"
        );
        assert_eq!(Stage::Fds.to_string(), "dup2");
    }

    #[test]
    fn a_failing_step_names_its_stage() {
        // chdir into a directory that is not there: the child's chdir fails with ENOENT.
        let spec = SpawnSpec::new("true").cwd(Some(PathBuf::from("/nonexistent/corral-test")));
        let mut stack = ChildStack::new();
        match spawn_now(spec, &mut stack, None) {
            Err(SpawnError::Child {
                stage: Stage::Chdir,
                root_step: None,
                source,
            }) => assert_eq!(source.raw_os_error(), Some(libc::ENOENT)),
            other => panic!("expected a chdir failure, got {other:?}"),
        }
    }

    /// `/proc/self/status` of `/bin/sh` spawned through the [`Spawner`] from the calling
    /// thread, with `drop_caps(drop)`.
    fn status_of_a_spawn(drop: bool) -> String {
        let (r, w) = nix::unistd::pipe().unwrap();
        let spec = SpawnSpec::new("/bin/sh")
            .args(["-c".to_string(), "cat /proc/self/status".to_string()])
            .drop_caps(drop)
            .fd(w, 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let spawned = rt.block_on(Spawner::global().spawn(spec)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut text).unwrap();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None);
        text
    }

    /// `Cpus_allowed_list` of a process spawned through the [`Spawner`] from the calling
    /// thread, and of the calling thread itself.
    fn allowed_cpus_of_a_spawn() -> (Option<String>, Option<String>) {
        let status = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        };
        let ours = status(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
        (status(&status_of_a_spawn(false)), ours)
    }

    /// `CapBnd` of a process spawned with `drop_caps(drop)`.
    fn bounding_set_of_a_spawn(drop: bool) -> u64 {
        let text = status_of_a_spawn(drop);
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    }

    /// The spawner threads narrow their own bounding set once, to what an init keeps; a child
    /// inherits it, and one that drops its capabilities ends with an empty set.
    #[test]
    fn spawns_inherit_a_narrowed_bounding_set_and_empty_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root may narrow a bounding set");
            return;
        }
        let kept: u64 = child::SPAWNER_KEEPS.iter().map(|&c| 1u64 << c).sum();
        assert_eq!(bounding_set_of_a_spawn(false), kept);
        assert_eq!(bounding_set_of_a_spawn(true), 0);
    }

    /// Spawner threads run pinned, one CPU each; what they start runs wherever its caller may
    /// (it takes the caller's mask back, not its spawner's one CPU), read at each spawn.
    #[test]
    fn a_spawned_process_may_run_wherever_its_caller_may() {
        let (theirs, ours) = allowed_cpus_of_a_spawn();
        assert!(ours.is_some());
        assert_eq!(theirs, ours);
        // A caller narrowed to one CPU after the spawner started: its child gets that one.
        let (theirs, ours, cpu) = std::thread::spawn(|| {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            // SAFETY: zeroed cpu_set_t values are valid empty sets, read and written whole by
            // the kernel for the calling thread (0); CPU_ISSET and CPU_SET read and set one bit.
            let cpu = unsafe {
                let mut all: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size, &mut all), 0);
                let cpu = (0..libc::CPU_SETSIZE as usize)
                    .find(|&c| libc::CPU_ISSET(c, &all))
                    .unwrap();
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut one);
                assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
                cpu
            };
            let (theirs, ours) = allowed_cpus_of_a_spawn();
            (theirs, ours, cpu)
        })
        .join()
        .unwrap();
        assert_eq!(ours, Some(cpu.to_string()));
        assert_eq!(theirs, ours);
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
