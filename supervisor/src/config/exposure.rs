//! What each agent's settings give away: the threat model of `docs/isolation.md`, per agent,
//! for `corral validate`. Pure: it reads an [`AgentSpec`] and says, for every loosening of the
//! default, what an agent running hostile code could then do. The default says nothing.

use super::{AgentSpec, Namespace, Netns};

/// How much a loosening gives away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Worth knowing; containment holds.
    Note,
    /// The agent can reach something outside its sandbox.
    Warning,
}

impl Level {
    /// `note` or `warning`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Note => "note",
            Level::Warning => "warning",
        }
    }
}

/// One loosening and what it gives away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// How much.
    pub level: Level,
    /// The key (or keys) responsible.
    pub key: &'static str,
    /// What the agent can do because of it.
    pub gives_away: String,
}

fn w(key: &'static str, gives_away: impl Into<String>) -> Exposure {
    Exposure {
        level: Level::Warning,
        key,
        gives_away: gives_away.into(),
    }
}

fn n(key: &'static str, gives_away: impl Into<String>) -> Exposure {
    Exposure {
        level: Level::Note,
        key,
        gives_away: gives_away.into(),
    }
}

/// Every loosening of `spec` against the default, worst first.
pub fn assess(spec: &AgentSpec) -> Vec<Exposure> {
    let has = |x: Namespace| spec.namespaces.contains(&x);
    let mut out = Vec::new();
    match spec.user.as_deref() {
        Some("root") | Some("0") => out.push(w(
            "user/allow_root",
            "runs as host uid 0: it owns every host file it can reach (chmod, chown, setuid bits \
             on them) and can signal any process that shares its namespaces",
        )),
        Some(u) if u != "dynamic" => out.push(w(
            "user",
            format!(
                "runs as `{u}`, shared with every other process of that user (other attempts of \
                 this agent included): it can read and write their files and signal them where \
                 its namespaces let it see them"
            ),
        )),
        _ => {}
    }
    if !has(Namespace::Mount) {
        out.push(if spec.landlock {
            w(
                "namespaces (no mount)",
                "sees the host's file system; landlock still limits it to its own paths, but it \
                 can connect to pathname Unix sockets it can name, and /tmp is the host's",
            )
        } else {
            w(
                "namespaces (no mount) + landlock = false",
                "reads every world-readable host file, writes every world-writable place (/tmp, \
                 /dev/shm) and connects to every pathname Unix socket its uid may use",
            )
        });
    } else if !spec.landlock {
        out.push(n(
            "landlock = false",
            "no second layer under its own root: what it sees it may use as its uid allows",
        ));
    }
    if !has(Namespace::Pid) {
        out.push(w(
            "namespaces (no pid)",
            "sees the host's processes; no corral-init reaps its orphans or holds its tree \
             together (a cgroup, when there is one, still does)",
        ));
    }
    if spec.network {
        out.push(w(
            "network = true",
            "reaches the host's network and everything it reaches",
        ));
    } else if !has(Namespace::Net) {
        out.push(w(
            "namespaces (no net)",
            if spec.landlock {
                "shares the host's network: landlock still denies TCP, but UDP (the host's and \
                 beyond) is reachable"
            } else {
                "shares the host's network: TCP and UDP to the host and beyond"
            },
        ));
    } else if spec.netns == Netns::Shared {
        out.push(n(
            "netns = \"shared\"",
            "shares one loopback with every agent of netns = \"shared\": it can connect to their \
             listening TCP and UDP sockets",
        ));
    }
    if has(Namespace::User) {
        out.push(n(
            "namespaces (user)",
            "for an unprivileged supervisor only: a root supervisor refuses to start this agent \
             (under root each agent already has a uid of its own)",
        ));
    }
    if !has(Namespace::Ipc) {
        out.push(n(
            "namespaces (no ipc)",
            "shares System V IPC and POSIX message queues with the host; its uid is retired \
             after each attempt (objects of it may remain)",
        ));
    }
    if !spec.seccomp {
        out.push(w(
            "seccomp = false",
            "may create namespaces through clone (user namespaces open much of the kernel to \
             it), use keyrings, bpf, io_uring, perf events, and set setuid bits on its own files",
        ));
    }
    if spec.disk.is_none() {
        out.push(w(
            "disk = \"unlimited\"",
            "may fill the file system of state_dir through its workspace and /tmp",
        ));
    } else if spec.keep_workspace {
        out.push(n(
            "keep_workspace = true",
            "its workspace is a plain directory: the disk quota is not enforced, and its uid is \
             retired after each attempt",
        ));
    }
    for (key, missing) in [
        ("memory = \"unlimited\"", spec.memory.is_none()),
        ("pids = \"unlimited\"", spec.pids.is_none()),
        ("cpu_time = \"unlimited\"", spec.cpu_time.is_none()),
    ] {
        if missing {
            out.push(w(key, "may exhaust the host's share of this resource"));
        }
    }
    if !spec.writable_paths.is_empty() {
        out.push(n(
            "writable_paths",
            "writes outlive the attempt; what its uid leaves there is given to the owner of each \
             directory when the attempt ends",
        ));
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.level));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec::builtin("a", vec!["/bin/true".into()])
    }

    #[test]
    fn the_default_gives_nothing_away() {
        assert_eq!(assess(&spec()), vec![]);
    }

    #[test]
    fn each_opt_out_is_named() {
        let mut s = spec();
        s.user = Some("root".into());
        s.allow_root = true;
        s.namespaces.clear();
        s.landlock = false;
        s.seccomp = false;
        s.disk = None;
        let keys: Vec<&str> = assess(&s).iter().map(|e| e.key).collect();
        for k in [
            "user/allow_root",
            "namespaces (no mount) + landlock = false",
            "namespaces (no pid)",
            "namespaces (no net)",
            "seccomp = false",
            "disk = \"unlimited\"",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert_eq!(assess(&s)[0].level, Level::Warning, "worst first");
    }

    #[test]
    fn shared_netns_is_a_note() {
        let mut s = spec();
        s.netns = Netns::Shared;
        let e = assess(&s);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].level, Level::Note);
    }
}
