//! How the process of an attempt is made: its environment, the spawn specification from
//! config (limits, namespaces, privileges, landlock), its workspace, cgroup and pipes, and the
//! warm stems (`stem.rs`: sandboxes made ahead, each waiting for its agent; see
//! `docs/isolation.md`). What can go wrong is a [`LaunchError`].

mod error;
mod refill;
mod root;
mod stem;

use error::io_error;
pub use error::LaunchError;
pub(super) use refill::Refill;
use root::{agent_paths, arg_paths, root_plan, RootAhead};
pub use stem::StemPool;

use super::{AgentCgroup, AgentSpec, CgroupLimits, CgroupPool, WorkspacePool};
use crate::sandbox::spawn::{SpawnSpec, Spawner};
use crate::sandbox::workspace::Workspace;
use corral_proto::beat::BEAT_FD;
use std::os::fd::OwnedFd;
use std::sync::Arc;

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Put the handshake's `Hello` in the (empty) down pipe before the agent starts, so that it
/// reads it at once instead of waiting for the supervisor to be scheduled after the spawn:
/// the thread that spawned is often queued behind the starting agent on its core until the
/// agent blocks. Only a frame of at most `PIPE_BUF` bytes, which an empty pipe takes whole
/// and at once. Whether it was written; if not, the attempt sends it as any other frame.
fn prewrite(down_w: &OwnedFd, frame: &[u8]) -> bool {
    frame.len() <= libc::PIPE_BUF
        && matches!(nix::unistd::write(down_w, frame), Ok(n) if n == frame.len())
}

/// The environment an agent starts with: nothing inherited but `env_pass`.
pub fn agent_env(
    spec: &AgentSpec,
    run_id: &str,
    attempt: u32,
    home: &std::path::Path,
) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    env.insert("HOME".into(), home.display().to_string());
    env.insert("TMPDIR".into(), home.display().to_string());
    for name in &spec.env_pass {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.clone(), v);
        }
    }
    env.insert("CORRAL_AGENT".into(), spec.name.clone());
    env.insert("CORRAL_RUN_ID".into(), run_id.to_string());
    env.insert("CORRAL_ATTEMPT".into(), attempt.to_string());
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// Devices every agent may read, beside the system paths of its root
/// (`sandbox::rootfs::SYSTEM_PATHS`, which landlock grants read and execute too).
const DEVICES_READ: &[&str] = &["/dev/urandom", "/dev/random", "/dev/zero"];
/// Devices every agent may write.
const SYSTEM_WRITE: &[&str] = &["/dev/null", "/dev/full"];

/// Whether this process runs as root.
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Resolve `user`/`group` names (or numbers) to ids, once per pair: a name service lookup can
/// be slow (NSS over the network), and it runs on the spawn path.
fn resolve_ids(agent: &str, user: &str, group: Option<&str>) -> Result<(u32, u32), LaunchError> {
    type Key = (String, Option<String>);
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<Key, (u32, u32)>>,
    > = std::sync::OnceLock::new();
    let key = (user.to_string(), group.map(str::to_string));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(ids) = cache.lock().ok().and_then(|c| c.get(&key).copied()) {
        return Ok(ids);
    }
    let ids = lookup_ids(agent, user, group)?;
    if let Ok(mut c) = cache.lock() {
        c.insert(key, ids);
    }
    Ok(ids)
}

fn lookup_ids(agent: &str, user: &str, group: Option<&str>) -> Result<(u32, u32), LaunchError> {
    let u = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(uid.into()),
        Err(_) => nix::unistd::User::from_name(user),
    }
    .map_err(|source| LaunchError::LookupUser {
        agent: agent.to_string(),
        user: user.to_string(),
        source,
    })?
    .ok_or_else(|| LaunchError::NoSuchUser {
        agent: agent.to_string(),
        user: user.to_string(),
    })?;
    let gid = match group {
        None => u.gid.as_raw(),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(g)
                .map_err(|source| LaunchError::LookupGroup {
                    agent: agent.to_string(),
                    group: g.to_string(),
                    source,
                })?
                .ok_or_else(|| LaunchError::NoSuchGroup {
                    agent: agent.to_string(),
                    group: g.to_string(),
                })?
                .gid
                .as_raw(),
        },
    };
    Ok((u.uid.as_raw(), gid))
}

/// Who the agent runs as on the host: a dynamic uid (with its lease), a named user, or (not
/// root) the supervisor's own uid.
struct Identity {
    /// Host (uid, gid) the agent's files and processes belong to.
    host: Option<(u32, u32)>,
    lease: Option<crate::sandbox::uids::UidLease>,
}

fn identity(spec: &AgentSpec, pools: &Pools) -> Result<Identity, LaunchError> {
    let agent = &spec.name;
    if !is_root() {
        // An unprivileged supervisor cannot change ids: the agent keeps ours (never root).
        return Ok(Identity {
            host: None,
            lease: None,
        });
    }
    if spec.dynamic_user() {
        let uids = pools
            .workspaces
            .uids()
            .ok_or_else(|| LaunchError::NoUidRange {
                agent: agent.clone(),
            })?;
        let lease = uids.take().map_err(|source| LaunchError::Uid {
            agent: agent.clone(),
            source,
        })?;
        let id = lease.uid();
        return Ok(Identity {
            host: Some((id, id)),
            lease: Some(lease),
        });
    }
    let user = spec.user.as_deref().unwrap_or("dynamic");
    let (uid, gid) = resolve_ids(agent, user, spec.group.as_deref())?;
    if (uid == 0 || gid == 0) && !spec.allow_root {
        return Err(LaunchError::RootUser {
            agent: agent.clone(),
            user: user.to_string(),
            uid,
            gid,
        });
    }
    Ok(Identity {
        host: Some((uid, gid)),
        lease: None,
    })
}

/// The per-attempt spawn specification from config: limits, namespaces, privileges, the
/// agent's root, landlock. Returns the read end of the init's status pipe when the agent runs
/// under `corral-init`, and a network namespace made ahead that the spawn joins (to be kept
/// until it has).
fn spawn_spec(
    spec: &AgentSpec,
    env: Vec<(String, String)>,
    cwd: std::path::PathBuf,
    workspace: &crate::sandbox::workspace::Workspace,
    // A root made ahead for this workspace (a mount namespace fd), and the agent's host ids.
    (root_ns, ids): (Option<std::os::fd::RawFd>, Option<(u32, u32)>),
    cgroup: Option<&AgentCgroup>,
    cgroup_mem: bool,
) -> Result<(SpawnSpec, Option<OwnedFd>, Option<OwnedFd>), LaunchError> {
    use crate::config::Namespace;
    let agent = &spec.name;
    let program = spec
        .command
        .first()
        .ok_or_else(|| LaunchError::EmptyCommand {
            agent: agent.clone(),
        })?;
    let resolved = crate::sandbox::spawn::resolve_program(std::path::Path::new(program)).map_err(
        |source| LaunchError::Spawn {
            agent: agent.clone(),
            source,
        },
    )?;
    // Fail here, before any process exists, when the program cannot be executed.
    nix::unistd::access(&resolved, nix::unistd::AccessFlags::X_OK).map_err(|e| {
        LaunchError::NotExecutable {
            agent: agent.clone(),
            path: resolved.clone(),
            source: e.into(),
        }
    })?;
    let mut s = SpawnSpec::new(program)
        .resolved(resolved.clone())
        .args(spec.command.iter().skip(1).cloned())
        .env(env)
        .cwd(Some(cwd.clone()))
        .rlimit(libc::RLIMIT_CORE, 0, 0)
        .seccomp(spec.seccomp);
    if let Some(cpu) = spec.cpu_time {
        let secs = cpu.as_secs().max(1);
        // SIGXCPU at the soft limit, SIGKILL one second later at the hard limit.
        s = s.rlimit(libc::RLIMIT_CPU, secs, secs + 1);
    }
    if let Some(n) = spec.open_files {
        s = s.rlimit(libc::RLIMIT_NOFILE, n, n);
    }
    if let Some(n) = spec.file_size {
        s = s.rlimit(libc::RLIMIT_FSIZE, n, n);
    }
    if let (Some(m), false) = (spec.memory, cgroup_mem) {
        s = s.rlimit(libc::RLIMIT_AS, m, m);
    }
    if let Some(cg) = cgroup {
        s = s.cgroup_fds(
            cg.attach_fds()
                .map_err(|source| LaunchError::CgroupAttach {
                    agent: agent.clone(),
                    source,
                })?,
        );
    }
    let root = is_root();
    let has = |n: Namespace| spec.namespaces.contains(&n);
    if root && has(Namespace::User) {
        // The child of a root supervisor cannot map itself to another host uid, and under
        // root the agent already has a uid of its own: the namespace would only make it root
        // inside one.
        return Err(LaunchError::UserNamespaceUnderRoot {
            agent: agent.clone(),
        });
    }
    let user_ns = !root && !spec.namespaces.is_empty();
    let mut ns = crate::sandbox::spawn::Namespaces {
        pid: has(Namespace::Pid),
        ipc: has(Namespace::Ipc),
        uts: has(Namespace::Uts)
            .then(|| format!("corral-{}", spec.name).chars().take(64).collect()),
        mount: has(Namespace::Mount),
        mount_join: root_ns.is_some() && has(Namespace::Mount),
        net_join: None,
        net_own: false,
        // Root inside maps to our own (unprivileged) ids: never to host root.
        user_map: user_ns.then(|| {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        }),
    };
    // A private namespace made ahead, held until the spawn has joined it.
    let mut made_ahead = None;
    if has(Namespace::Net) && !spec.network {
        // Joining a namespace made here needs privilege over the host's user namespace.
        let shared = spec.netns == crate::config::Netns::Shared;
        if shared && !user_ns {
            match crate::sandbox::netns::shared() {
                Ok(fd) => ns.net_join = Some(std::os::fd::AsRawFd::as_raw_fd(fd)),
                Err(_) => ns.net_own = true,
            }
        } else {
            made_ahead = (!user_ns).then(crate::sandbox::netpool::take).flatten();
            match &made_ahead {
                Some(fd) => ns.net_join = Some(std::os::fd::AsRawFd::as_raw_fd(fd)),
                None => ns.net_own = true,
            }
        }
    }
    let mut status_rx = None;
    let init = crate::sandbox::init_path().filter(|_| ns.pid);
    if ns.pid {
        let init = init.ok_or_else(|| LaunchError::NoInit {
            agent: agent.clone(),
        })?;
        let (rx, tx) = pipe_pair().map_err(io_error(agent, "create status pipe"))?;
        s = s.init(init.clone(), tx);
        status_rx = Some(rx);
    }
    if let (Some((uid, gid)), false) = (ids, user_ns) {
        s = s.user(uid, gid);
    }
    // The agent's paths, looked up (its program's real path, its arguments' files) only for
    // what names them: a root built at the spawn, and landlock.
    let paths = || agent_paths(spec, &resolved, &arg_paths(spec), &cwd, workspace);
    let mut looked_up = None;
    if ns.mount {
        let ops = match root_ns {
            // Made ahead with this workspace: the child enters it.
            Some(fd) => crate::sandbox::rootfs::MountOps::join(fd, ns.pid),
            None => {
                let (read, write) = looked_up.get_or_insert_with(paths);
                root_plan(read, write, init, workspace, ns.pid).compile()
            }
        };
        s = s.root(ops.map_err(|source| LaunchError::Root {
            agent: agent.clone(),
            source,
        })?);
    }
    let own_tmp = ns.mount;
    s = s.drop_caps(root && !user_ns).namespaces(ns);
    if !spec.landlock {
        return Ok((s, status_rx, made_ahead));
    }
    // The agent's /tmp is a mount of the workspace's `.tmp` on its own: landlock walks the
    // agent's view of the path, which reaches that directory without passing its workspace,
    // so it needs a rule of its own.
    let tmp = workspace.tmp();
    let (read_paths, write_paths) = looked_up.unwrap_or_else(paths);
    match crate::sandbox::landlock::Ruleset::build_with(
        crate::sandbox::rootfs::SYSTEM_PATHS
            .iter()
            .chain(DEVICES_READ)
            .map(std::path::Path::new)
            .chain(init.map(|p| p.as_path())),
        SYSTEM_WRITE.iter().map(std::path::Path::new),
        read_paths.iter().map(|p| p.as_path()),
        write_paths
            .iter()
            .map(|p| p.as_path())
            .chain(own_tmp.then_some(tmp.as_path())),
        // Without network and without a network namespace of its own (an opt-out), TCP is
        // denied by landlock; in its own namespace the agent may use its loopback.
        !spec.network && !has(Namespace::Net),
    ) {
        Ok(rs) => s = s.landlock(Some(rs.into_fd())),
        Err(source) if spec.strict => {
            return Err(LaunchError::Landlock {
                agent: agent.clone(),
                source,
            })
        }
        Err(e) => tracing::debug!(agent = %spec.name, "file-system confinement off: {e}"),
    }
    Ok((s, status_rx, made_ahead))
}

/// The pools an attempt draws from.
#[derive(Clone)]
pub struct Pools {
    /// Workspaces.
    pub workspaces: Arc<WorkspacePool>,
    /// Cgroups, when the host has them.
    pub cgroups: Option<Arc<CgroupPool>>,
}

/// A process made for an attempt, with everything the supervisor keeps of it.
pub(super) struct Launched {
    pub(super) spawned: crate::sandbox::spawn::Spawned,
    pub(super) workspace: Workspace,
    pub(super) cgroup: Option<Arc<AgentCgroup>>,
    pub(super) status_rx: Option<OwnedFd>,
    pub(super) up_r: OwnedFd,
    pub(super) down_w: OwnedFd,
    pub(super) out_r: OwnedFd,
    pub(super) err_r: OwnedFd,
    pub(super) beat_r: OwnedFd,
    /// A stem's fd 7: where the agent's start record goes.
    pub(super) control: Option<OwnedFd>,
    /// The agent's program when the sandbox was made (device, inode): its landlock rule names
    /// that file, so a stem is not used for a program replaced since.
    pub(super) program: Option<(u64, u64)>,
    /// The `Hello` waits in the down pipe already.
    pub(super) hello_sent: bool,
    /// The pools' top-up, for whoever holds the process to run when it suits (see [`Refill`]).
    pub(super) refill: Option<Box<Refill>>,
}

/// The program `agent` runs: its path, and its device and inode.
fn program_identity(agent: &AgentSpec) -> Option<(std::path::PathBuf, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let program = agent.command.first()?;
    let path = crate::sandbox::spawn::resolve_program(std::path::Path::new(program)).ok()?;
    let m = std::fs::metadata(&path).ok()?;
    Some((path, (m.dev(), m.ino())))
}

/// Wait for a turn to launch: at most twice as many launches are under way as there are
/// spawner threads, so a burst of a thousand agents does not make a thousand spawns' worth of
/// pipes, environments and programs at once (they would wait for a spawner thread anyway),
/// whose memory, freed in between the agents' long-lived state, the supervisor would keep.
/// A caller that makes state of its own for the launch (an attempt's start) takes its turn
/// before making it, and hands it to [`launch`].
pub(crate) async fn turn() -> Turn {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    Turn {
        _permit: TURNS
            // (At least one: with no spawner thread, a launch goes on to fail there.)
            .get_or_init(|| tokio::sync::Semaphore::new((2 * Spawner::global().capacity()).max(1)))
            .acquire()
            .await
            .ok(),
    }
}

/// A turn to launch (see [`turn`]), held until the launch is done.
pub(crate) struct Turn {
    _permit: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// Make the process of an attempt: workspace, cgroup, pipes, spawn. With `stem`, only the
/// sandbox and its `corral-init` are made, waiting for [`stem::Stem::release`].
/// `turn`: one taken already (else one is waited for here).
pub(super) async fn launch(
    agent: &AgentSpec,
    pools: &Pools,
    (run_id, attempt): (&str, u32),
    stem: bool,
    hello: Option<&[u8]>,
    turn: Option<Turn>,
) -> Result<Launched, LaunchError> {
    launch_with(agent, pools, (run_id, attempt), stem, None, hello, turn).await
}

/// [`launch`], with `stdin` as the process's fd 0 instead of `/dev/null` (a command tool reads
/// its arguments there). `hello`: the encoded `Hello` frame to leave in the down pipe for the
/// agent (see [`prewrite`]).
pub(super) async fn launch_with(
    agent: &AgentSpec,
    pools: &Pools,
    (run_id, attempt): (&str, u32),
    stem: bool,
    stdin: Option<OwnedFd>,
    hello: Option<&[u8]>,
    turn: Option<Turn>,
) -> Result<Launched, LaunchError> {
    let _turn = match turn {
        Some(t) => t,
        None => self::turn().await,
    };
    // Workspace: a fresh private directory per attempt, under the state directory (made ahead
    // of time; kept visible in the agent's private /tmp if the state directory is under /tmp).
    // Its user: a uid of its own unless the config names one.
    let Identity { host: ids, lease } = identity(agent, pools)?;
    // Not with keep_workspace: a kept workspace must outlive its mount.
    let disk = agent.disk.filter(|_| !agent.keep_workspace);
    let workspace_error = |source| LaunchError::Workspace {
        agent: agent.name.clone(),
        source,
    };
    // A workspace whose root was made ahead, when one is ready (the pool is topped up once
    // the spawn is done).
    let ahead = RootAhead::of(agent);
    let pooled = ahead
        .as_ref()
        .and_then(|a| pools.workspaces.take_rooted(&a.key));
    let from_spares = pooled.is_none();
    let (mut workspace, root_ns) = match pooled {
        Some((w, fd)) => (w, Some(fd)),
        None => (pools.workspaces.take(disk).map_err(workspace_error)?, None),
    };
    workspace.assign(ids, lease).map_err(workspace_error)?;
    // Strays of an attempt with neither a pid namespace nor a cgroup are found by their uid;
    // files it may leave in `writable_paths` keep the uid from being handed out again.
    if let Some(lease) = workspace.uid_mut() {
        if !agent.namespaces.contains(&crate::config::Namespace::Pid) && pools.cgroups.is_none() {
            lease.sweep_on_release();
        }
        lease.reclaim_on_release(&agent.writable_paths);
        if !agent.namespaces.contains(&crate::config::Namespace::Ipc) {
            // System V objects of the uid would outlive the attempt.
            lease.remove_ipc_on_release();
        }
    }
    let cwd = agent
        .cwd
        .clone()
        .unwrap_or_else(|| workspace.path().to_path_buf());
    let env = agent_env(agent, run_id, attempt, workspace.path());

    // Cgroup for the attempt.
    let limits = CgroupLimits {
        memory: agent.memory,
        pids: agent.pids,
        cpu_quota: agent.cpu_quota,
    };
    let cgroup: Option<Arc<AgentCgroup>> = match &pools.cgroups {
        Some(pool) => Some(Arc::new(pool.take(&agent.name, &limits).map_err(
            |source| LaunchError::Cgroup {
                agent: agent.name.clone(),
                source,
            },
        )?)),
        None => None,
    };
    let cgroup_mem = pools
        .cgroups
        .as_ref()
        .map(|c| !c.cgroups().unenforceable(&limits).contains(&"memory"))
        .unwrap_or(false);

    // Pipes: down (fd 3), up (fd 4), stdout, stderr, beats (fd 6; both ends non-blocking), and
    // a stem's control pipe (fd 7).
    let pipes = (|| -> std::io::Result<_> {
        let beat = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(std::io::Error::from)?;
        let control = if stem { Some(pipe_pair()?) } else { None };
        Ok((
            pipe_pair()?,
            pipe_pair()?,
            pipe_pair()?,
            pipe_pair()?,
            beat,
            control,
        ))
    })();
    let ((down_r, down_w), (up_r, up_w), (out_r, out_w), (err_r, err_w), (beat_r, beat_w), control) =
        pipes.map_err(io_error(&agent.name, "create pipes"))?;
    let hello_sent = hello.is_some_and(|h| prewrite(&down_w, h));
    let devnull = match stdin {
        Some(fd) => fd,
        None => std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(io_error(&agent.name, "open /dev/null"))?,
    };
    let (sspec, status_rx, _netns_held) = spawn_spec(
        agent,
        env,
        cwd,
        &workspace,
        (root_ns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd), ids),
        cgroup.as_deref(),
        cgroup_mem,
    )?;
    let mut sspec = sspec
        .fd(devnull, 0)
        .fd(out_w, 1)
        .fd(err_w, 2)
        .fd(down_r, 3)
        .fd(up_w, 4)
        .fd(beat_w, BEAT_FD);
    let control = match control {
        Some((rx, tx)) => {
            sspec = sspec.stem(rx);
            Some(tx)
        }
        None => None,
    };
    let spawned = Spawner::global()
        .spawn(sspec)
        .await
        .map_err(|source| LaunchError::Spawn {
            agent: agent.name.clone(),
            source,
        })?;
    // (The agent's settings are copied for the refill only when a root is wanted.)
    let refill = Refill {
        pools: refill::WeakPools::of(pools),
        disk,
        from_spares,
        agent: agent.name.clone(),
        limits,
        root: ahead
            .filter(|a| pools.workspaces.rooted_short(&a.key))
            .map(|a| (a, agent.clone())),
    };
    Ok(Launched {
        spawned,
        workspace,
        cgroup,
        status_rx,
        up_r,
        down_w,
        out_r,
        err_r,
        beat_r,
        control,
        // Only a stem needs it (checked at its release): no extra lookups on a cold spawn.
        program: if stem {
            program_identity(agent).map(|(_, id)| id)
        } else {
            None
        },
        hello_sent,
        // A stem is made ahead of any agent: its pools are topped up at once.
        refill: if stem {
            refill.run();
            None
        } else {
            Some(Box::new(refill))
        },
    })
}
