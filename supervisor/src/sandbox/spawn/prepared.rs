//! What the spawn child reads, made in the parent: every string as a `CString`, every array
//! NUL-terminated, every number in place, so that the child allocates nothing.

use super::stage::Stage;
use super::{resolve_program, ChildStack, Namespaces, Rlimit, SpawnError, SpawnSpec};
use crate::sandbox::rootfs::MountOps;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// How the child relates to `corral-init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InitKind {
    /// No init: the child execs the agent.
    None,
    /// The child starts the agent, then execs the init, which adopts it.
    Adopt,
    /// The child execs the init alone; it starts the agent when told (a warm stem).
    Stem,
}

/// Everything the child reads, prepared in the parent. Raw pointers point into the owned
/// vectors kept alongside, which outlive the child's use of them (the parent is suspended
/// until `execve`/`_exit`).
pub(super) struct Prepared {
    /// With an init: the agent, started by the child before it execs the init.
    pub(super) agent_path: Option<CString>,
    pub(super) agent_argv: Vec<*const libc::c_char>,
    /// The agent's clone's stack (with an agent to start).
    pub(super) agent_stack: Option<ChildStack>,
    /// Written by the agent's clone when its `execve` failed (the errno, at least 1).
    pub(super) agent_errno: i32,
    /// The bounding set the child inherits holds at most `child::SPAWNER_KEEPS` (see
    /// `child::drop_bounding_set`).
    pub(super) bounding_narrowed: bool,
    pub(super) path: CString,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    pub(super) cwd: Option<CString>,
    pub(super) fds: Vec<(RawFd, RawFd)>,
    pub(super) rlimits: Vec<Rlimit>,
    pub(super) cgroup_fds: Vec<RawFd>,
    pub(super) uid_gid: Option<(u32, u32)>,
    pub(super) no_new_privs: bool,
    pub(super) landlock: Option<RawFd>,
    pub(super) pdeathsig: bool,
    pub(super) parent_pid: libc::pid_t,
    /// The CPU affinity to take back first (the spawning thread's is one CPU): the mask of the
    /// thread that asked for the spawn, or the spawning thread's own before it narrowed it
    /// (see `spawn_now`).
    pub(super) affinity: Option<libc::cpu_set_t>,
    pub(super) ns: Namespaces,
    pub(super) hostname: Option<CString>,
    pub(super) user_maps: Option<[CString; 2]>,
    pub(super) drop_caps: bool,
    pub(super) seccomp: Option<&'static [libc::sock_filter]>,
    pub(super) root: Option<MountOps>,
    pub(super) init_kind: InitKind,
    // Written by the child on failure.
    pub(super) err_stage: Option<Stage>,
    pub(super) err_errno: i32,
}

fn cstr(s: &OsStr, what: &'static str) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul { what })
}

impl Prepared {
    /// Everything `spec` asks for, ready for the child; the root's mount steps are moved out of
    /// `spec` (the child runs them in place and the parent reads which one failed).
    pub(super) fn new(spec: &mut SpawnSpec) -> Result<Prepared, SpawnError> {
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
            agent_stack: agent_path.is_some().then(ChildStack::new),
            agent_path,
            agent_argv,
            agent_errno: 0,
            bounding_narrowed: false,
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
            parent_pid: nix::unistd::getpid().as_raw(),
            affinity: None,
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
            err_stage: None,
            err_errno: 0,
        })
    }
}
