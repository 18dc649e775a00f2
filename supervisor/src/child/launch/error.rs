//! What can go wrong in making an attempt's process: [`LaunchError`].

use crate::sandbox::cgroup::CgroupError;
use crate::sandbox::landlock::LandlockError;
use crate::sandbox::rootfs::RootError;
use crate::sandbox::spawn::SpawnError;
use crate::sandbox::uids::UidError;
use crate::sandbox::workspace::WorkspaceError;
use nix::errno::Errno;
use std::io;
use std::path::PathBuf;

/// Making the process of an attempt, or a warm stem, failed. Every variant names the agent
/// type ([`LaunchError::agent`]); the message (`Display`) does not, but for the one about
/// its configuration: it is what the exit record's `spawn_failed` error has always said.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `user = "dynamic"` (the default) under root without a uid range.
    #[error("dynamic users need a uid range")]
    NoUidRange {
        /// The agent type.
        agent: String,
    },
    /// No dynamic uid could be had.
    #[error("{source}")]
    Uid {
        /// The agent type.
        agent: String,
        /// Why.
        source: UidError,
    },
    /// Looking up the configured user failed.
    #[error("look up user `{user}`: {source}")]
    LookupUser {
        /// The agent type.
        agent: String,
        /// The user as configured.
        user: String,
        /// The error.
        source: Errno,
    },
    /// The configured user does not exist.
    #[error("no such user `{user}`")]
    NoSuchUser {
        /// The agent type.
        agent: String,
        /// The user as configured.
        user: String,
    },
    /// Looking up the configured group failed.
    #[error("look up group `{group}`: {source}")]
    LookupGroup {
        /// The agent type.
        agent: String,
        /// The group as configured.
        group: String,
        /// The error.
        source: Errno,
    },
    /// The configured group does not exist.
    #[error("no such group `{group}`")]
    NoSuchGroup {
        /// The agent type.
        agent: String,
        /// The group as configured.
        group: String,
    },
    /// The configured user or group is root, and `allow_root` is off.
    #[error("user `{user}` is uid {uid}, gid {gid}: root, which needs allow_root = true")]
    RootUser {
        /// The agent type.
        agent: String,
        /// The user as configured.
        user: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// The command is empty.
    #[error("empty command")]
    EmptyCommand {
        /// The agent type.
        agent: String,
    },
    /// The program cannot be executed (checked before any process exists).
    #[error("cannot execute {}: {source}", .path.display())]
    NotExecutable {
        /// The agent type.
        agent: String,
        /// The program, looked up.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A root supervisor was asked for a user namespace.
    #[error(
        "agent `{agent}`: a user namespace (namespaces: \"user\") is for an unprivileged \
         supervisor; under root each agent already runs as a host uid of its own (remove \
         \"user\")"
    )]
    UserNamespaceUnderRoot {
        /// The agent type.
        agent: String,
    },
    /// A pid namespace without `corral-init` to run under.
    #[error(
        "a pid namespace needs `corral-init`, which is not installed next to corral nor on PATH"
    )]
    NoInit {
        /// The agent type.
        agent: String,
    },
    /// The agent's root cannot be planned.
    #[error("the agent's root: {source}")]
    Root {
        /// The agent type.
        agent: String,
        /// Why.
        source: RootError,
    },
    /// Landlock is not available and the agent is `strict`.
    #[error("strict: {source}")]
    Landlock {
        /// The agent type.
        agent: String,
        /// Why.
        source: LandlockError,
    },
    /// The attempt's workspace cannot be made or given to its user.
    #[error("create workspace: {source}")]
    Workspace {
        /// The agent type.
        agent: String,
        /// Why.
        source: WorkspaceError,
    },
    /// The attempt's cgroup cannot be made.
    #[error("create cgroup: {source}")]
    Cgroup {
        /// The agent type.
        agent: String,
        /// Why.
        source: CgroupError,
    },
    /// The cgroup's attach files cannot be opened.
    #[error("{source}")]
    CgroupAttach {
        /// The agent type.
        agent: String,
        /// Why.
        source: CgroupError,
    },
    /// A pipe, `/dev/null` or a stem's control pipe failed.
    #[error("{what}: {source}")]
    Io {
        /// The agent type.
        agent: String,
        /// What was being done (`create pipes`, `open /dev/null`, `start the agent`, ...).
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The program was not found, or the spawn itself failed.
    #[error("{source}")]
    Spawn {
        /// The agent type.
        agent: String,
        /// Why.
        source: SpawnError,
    },
    /// A warm stem died while waiting.
    #[error("the stem is no longer running")]
    StemGone {
        /// The agent type.
        agent: String,
    },
    /// The agent's program is gone since its stem was made.
    #[error("the agent's program is not there")]
    ProgramGone {
        /// The agent type.
        agent: String,
    },
    /// The agent's program was replaced since its stem was made.
    #[error("the agent's program changed since the stem was made")]
    ProgramChanged {
        /// The agent type.
        agent: String,
    },
    /// The command or environment of a stem's start record holds a NUL byte.
    #[error("a NUL byte in the command or environment")]
    Nul {
        /// The agent type.
        agent: String,
    },
    /// Released as a stem, but not made as one.
    #[error("not a stem")]
    NotAStem {
        /// The agent type.
        agent: String,
    },
}

impl LaunchError {
    /// The agent type whose process could not be made.
    pub fn agent(&self) -> &str {
        match self {
            LaunchError::NoUidRange { agent }
            | LaunchError::Uid { agent, .. }
            | LaunchError::LookupUser { agent, .. }
            | LaunchError::NoSuchUser { agent, .. }
            | LaunchError::LookupGroup { agent, .. }
            | LaunchError::NoSuchGroup { agent, .. }
            | LaunchError::RootUser { agent, .. }
            | LaunchError::EmptyCommand { agent }
            | LaunchError::NotExecutable { agent, .. }
            | LaunchError::UserNamespaceUnderRoot { agent }
            | LaunchError::NoInit { agent }
            | LaunchError::Root { agent, .. }
            | LaunchError::Landlock { agent, .. }
            | LaunchError::Workspace { agent, .. }
            | LaunchError::Cgroup { agent, .. }
            | LaunchError::CgroupAttach { agent, .. }
            | LaunchError::Io { agent, .. }
            | LaunchError::Spawn { agent, .. }
            | LaunchError::StemGone { agent }
            | LaunchError::ProgramGone { agent }
            | LaunchError::ProgramChanged { agent }
            | LaunchError::Nul { agent }
            | LaunchError::NotAStem { agent } => agent,
        }
    }
}

impl LaunchError {
    /// The message of an exit record's `spawn_failed`: the agent, the key and the path
    /// involved (`agent `x`: cwd /nope: No such file or directory (os error 2)`).
    pub fn explain(&self, spec: &crate::config::AgentSpec) -> String {
        use crate::sandbox::spawn::Stage;
        let agent = &spec.name;
        let program = spec.command.first().map(String::as_str).unwrap_or("");
        match self {
            LaunchError::Spawn {
                source: SpawnError::Child { stage, source, .. },
                ..
            } => match stage {
                Stage::Chdir => {
                    let cwd = spec
                        .cwd
                        .as_ref()
                        .map(|c| c.display().to_string())
                        .unwrap_or_else(|| "(the workspace)".into());
                    format!("agent `{agent}`: cwd {cwd}: {source}")
                }
                Stage::Execve | Stage::CloneAgent => {
                    format!("agent `{agent}`: command {program}: execve failed: {source}")
                }
                Stage::Setuid | Stage::Setgid | Stage::Setgroups => {
                    let user = spec.user.as_deref().unwrap_or("dynamic");
                    format!("agent `{agent}`: user `{user}`: {self}")
                }
                Stage::Rlimit => format!(
                    "agent `{agent}`: a limit (memory, cpu_time, open_files, file_size): {self}"
                ),
                _ => format!("agent `{agent}`: {self}"),
            },
            LaunchError::Spawn {
                source: SpawnError::NotFound(_),
                ..
            }
            | LaunchError::NotExecutable { .. } => format!("agent `{agent}`: command: {self}"),
            LaunchError::NoSuchUser { .. } | LaunchError::LookupUser { .. } => {
                format!("agent `{agent}`: user: {self}")
            }
            LaunchError::NoSuchGroup { .. } | LaunchError::LookupGroup { .. } => {
                format!("agent `{agent}`: group: {self}")
            }
            LaunchError::Cgroup { .. } => format!(
                "agent `{agent}`: memory/pids/cpu_quota ({}): {self}",
                spec.cpu_quota
                    .map_or("no cpu_quota".into(), |q| format!("cpu_quota {q}"))
            ),
            LaunchError::UserNamespaceUnderRoot { .. } => self.to_string(),
            _ => format!("agent `{agent}`: {self}"),
        }
    }
}

/// A [`LaunchError::Io`] of `agent` while doing `what`.
pub(super) fn io_error<'a>(
    agent: &'a str,
    what: &'static str,
) -> impl FnOnce(io::Error) -> LaunchError + 'a {
    move |source| LaunchError::Io {
        agent: agent.to_string(),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explained_messages_name_the_agent_the_key_and_the_path() {
        let spec = crate::config::AgentSpec {
            cwd: Some(PathBuf::from("/nope")),
            ..crate::config::AgentSpec::builtin("x", vec!["/opt/agent".into()])
        };
        let child = |stage| LaunchError::Spawn {
            agent: "x".into(),
            source: SpawnError::Child {
                stage,
                root_step: None,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
        };
        let enoent = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(
            child(crate::sandbox::spawn::Stage::Chdir).explain(&spec),
            format!("agent `x`: cwd /nope: {enoent}")
        );
        assert_eq!(
            child(crate::sandbox::spawn::Stage::Execve).explain(&spec),
            format!("agent `x`: command /opt/agent: execve failed: {enoent}")
        );
    }

    #[test]
    fn messages_read_as_before_and_name_the_agent() {
        let e = LaunchError::UserNamespaceUnderRoot { agent: "a".into() };
        assert_eq!(
            e.to_string(),
            "agent `a`: a user namespace (namespaces: \"user\") is for an unprivileged \
             supervisor; under root each agent already runs as a host uid of its own (remove \
             \"user\")"
        );
        let eacces = io::Error::from_raw_os_error(libc::EACCES);
        let e = LaunchError::NotExecutable {
            agent: "b".into(),
            path: PathBuf::from("/x/y"),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(e.to_string(), format!("cannot execute /x/y: {eacces}"));
        assert_eq!(e.agent(), "b");
        let e = io_error("c", "create pipes")(io::Error::from_raw_os_error(libc::EMFILE));
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(e.to_string(), format!("create pipes: {emfile}"));
        assert_eq!(e.agent(), "c");
        let e = LaunchError::RootUser {
            agent: "d".into(),
            user: "root".into(),
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            e.to_string(),
            "user `root` is uid 0, gid 0: root, which needs allow_root = true"
        );
    }
}
