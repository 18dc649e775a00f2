//! The steps of the spawn child as errors name them.

use std::fmt;

/// A step of the spawn child, named in the error when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Taking back the CPU affinity the spawning thread had (it is placed beside it).
    Affinity,
    /// Unblocking every signal.
    SignalMask,
    /// A session (and process group) of its own.
    Session,
    /// Writing itself into its cgroups.
    CgroupAttach,
    /// Writing the user namespace's uid and gid maps.
    UserMaps,
    /// Joining the shared network namespace.
    JoinNetwork,
    /// Bringing up loopback in a network namespace of its own.
    Loopback,
    /// Building the agent's root (`MountOps::failed_step` names the step).
    Root,
    /// The landlock rule for the `/proc` the child mounted.
    ProcRule,
    /// Setting the host name.
    Hostname,
    /// Resource limits.
    Rlimit,
    /// The working directory.
    Chdir,
    /// Placing fds 0..=7.
    Fds,
    /// Emptying the capability bounding set.
    BoundingSet,
    /// Dropping supplementary groups.
    Setgroups,
    /// Taking the agent's gid.
    Setgid,
    /// Taking the agent's uid.
    Setuid,
    /// Clearing every capability.
    Capabilities,
    /// Asking for SIGKILL when the supervisor's spawner thread dies.
    Pdeathsig,
    /// Checking that the parent did not die before that took effect.
    ParentCheck,
    /// `no_new_privs`.
    NoNewPrivs,
    /// Restricting itself with the landlock ruleset.
    Landlock,
    /// Installing the seccomp filter.
    Seccomp,
    /// Closing every fd above 7.
    CloseFds,
    /// Starting the agent (under an init) in a clone of its own.
    CloneAgent,
    /// `execve` of the agent or of its init.
    Execve,
}

impl Stage {
    /// The step as error messages have always named it.
    fn name(self) -> &'static str {
        match self {
            Stage::Affinity => "sched_setaffinity",
            Stage::SignalMask => "sigprocmask",
            Stage::Session => "setsid",
            Stage::CgroupAttach => "cgroup attach",
            Stage::UserMaps => "write user namespace maps",
            Stage::JoinNetwork => "setns(network)",
            Stage::Loopback => "bring up loopback",
            Stage::Root => "build the agent's root",
            Stage::ProcRule => "landlock rule for /tmp or /proc",
            Stage::Hostname => "sethostname",
            Stage::Rlimit => "setrlimit",
            Stage::Chdir => "chdir",
            Stage::Fds => "dup2",
            Stage::BoundingSet => "drop capability bounding set",
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            Stage::Capabilities => "capset",
            Stage::Pdeathsig => "prctl(PR_SET_PDEATHSIG)",
            Stage::ParentCheck => "parent check",
            Stage::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            Stage::Landlock => "landlock_restrict_self",
            Stage::Seccomp => "seccomp",
            Stage::CloseFds => "close_range",
            Stage::CloneAgent => "clone(agent)",
            Stage::Execve => "execve",
        }
    }

    /// The step, with the root-building step that failed when there is one.
    pub(super) fn describe(self, root_step: Option<&str>) -> StageText<'_> {
        StageText(self, root_step)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`Stage`] as an error names it: "building the agent's root (`step`)" when the failing
/// root step is known, else the stage's name.
pub(super) struct StageText<'a>(Stage, Option<&'a str>);

impl fmt::Display for StageText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageText(Stage::Root, Some(step)) => write!(f, "building the agent's root ({step})"),
            StageText(stage, _) => stage.fmt(f),
        }
    }
}

/// A step's result: on failure, the stage, with `errno` left as the failing call set it.
pub(super) type Step = Result<(), Stage>;

/// `Ok` when `ok`, else `Err(stage)` (`errno` untouched).
pub(super) fn check(ok: bool, stage: Stage) -> Step {
    if ok {
        Ok(())
    } else {
        Err(stage)
    }
}
