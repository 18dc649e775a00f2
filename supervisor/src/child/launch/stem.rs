//! Warm stems: a [`launch`]ed sandbox whose `corral-init` waits for its agent, one per agent
//! type at most, made again in the background each time one is used (see `docs/isolation.md`).

use super::{agent_env, io_error, launch, program_identity, LaunchError, Launched, Pools};
use crate::config::AgentSpec;
use crate::sandbox::process;
use std::sync::Arc;

/// A warm sandbox: a [`launch`]ed stem whose `corral-init` waits for its agent.
pub(in crate::child) struct Stem(Launched);

impl Stem {
    /// Start the agent in it, with this attempt's environment (one write of the start record
    /// `corral-init --stem` reads on fd 7). A stem that is gone is discarded.
    pub(in crate::child) fn release(
        self,
        agent: &AgentSpec,
        run_id: &str,
        attempt: u32,
        hello: Option<&[u8]>,
    ) -> Result<Launched, LaunchError> {
        let mut l = self.0;
        let name = || agent.name.clone();
        let pid = nix::unistd::Pid::from_raw(l.spawned.pid);
        if !matches!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::StillAlive)
        ) {
            // Reaped just now (or not ours): its parts go with `l`.
            return Err(LaunchError::StemGone { agent: name() });
        }
        let started = (|| {
            let (path, id) = program_identity(agent)
                .ok_or_else(|| LaunchError::ProgramGone { agent: name() })?;
            if l.program != Some(id) {
                return Err(LaunchError::ProgramChanged { agent: name() });
            }
            let env = agent_env(agent, run_id, attempt, l.workspace.path());
            let record = start_record(&path, &agent.command, &env)
                .ok_or_else(|| LaunchError::Nul { agent: name() })?;
            let control = l
                .control
                .take()
                .ok_or_else(|| LaunchError::NotAStem { agent: name() })?;
            // Before the agent can start: it finds its `Hello` waiting.
            l.hello_sent = hello.is_some_and(|h| super::prewrite(&l.down_w, h));
            let mut f = std::fs::File::from(control);
            std::io::Write::write_all(&mut f, &record)
                .map_err(io_error(&agent.name, "start the agent"))
        })();
        match started {
            Ok(()) => Ok(l),
            Err(e) => {
                Stem(l).discard();
                Err(e)
            }
        }
    }

    /// End an unused stem without blocking: its init exits at once on end of file of fd 7;
    /// SIGKILL as well (through the pidfd), then the reaper thread reaps it and removes its
    /// workspace and cgroup.
    fn discard(self) {
        let Launched {
            spawned,
            workspace,
            cgroup,
            control,
            ..
        } = self.0;
        drop(control);
        process::kill_and_reap(spawned.pid, Some(spawned.pidfd), move || {
            drop(cgroup);
            drop(workspace);
        });
    }
}

/// The start record of `corral-init --stem`: `argc: u32 LE, envc: u32 LE`, then the program
/// path, the `argc` arguments and the `envc` `NAME=value` entries, each NUL-terminated.
/// `None` when one of them holds a NUL byte.
fn start_record(
    path: &std::path::Path,
    argv: &[String],
    env: &[(String, String)],
) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    out.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    out.extend_from_slice(&(env.len() as u32).to_le_bytes());
    let mut push = |b: &[u8]| -> Option<()> {
        if b.contains(&0) {
            return None;
        }
        out.extend_from_slice(b);
        out.push(0);
        Some(())
    };
    push(path.as_os_str().as_bytes())?;
    for a in argv {
        push(a.as_bytes())?;
    }
    for (k, v) in env {
        push(format!("{k}={v}").as_bytes())?;
    }
    Some(out)
}

/// Warm stems, at most one per agent type, made again in the background each time one is used.
/// An agent type gets one only when it runs under `corral-init` (a pid namespace) and
/// `prewarm` is on: the stem is its whole sandbox, made ahead, so a call pays only for the
/// agent's own start.
#[derive(Default)]
pub struct StemPool {
    spare: std::sync::Mutex<std::collections::HashMap<String, Stem>>,
    making: std::sync::Mutex<std::collections::HashSet<String>>,
    disabled: std::sync::atomic::AtomicBool,
}

impl StemPool {
    /// A new, empty pool.
    pub fn new() -> Arc<StemPool> {
        Arc::new(StemPool::default())
    }

    /// The warm stems waiting now: agent name and the pid of the stem's `corral-init`.
    pub fn waiting(&self) -> Vec<(String, i32)> {
        self.spare
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(k, v)| (k.clone(), v.0.spawned.pid))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(in crate::child) fn take(&self, agent: &str) -> Option<Stem> {
        self.spare.lock().ok()?.remove(agent)
    }

    /// Whether `agent` gets stems at all: `prewarm` on, a pid namespace, and the pool enabled.
    pub(crate) fn wants(&self, agent: &AgentSpec) -> bool {
        agent.prewarm
            && agent.namespaces.contains(&crate::config::Namespace::Pid)
            && !self.disabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Make no more stems (one-shot callers such as `corral call`, for which a stem made after
    /// the call would only be thrown away).
    pub fn disable(&self) {
        self.disabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Make a stem for `agent` now unless one is waiting, and wait until it is. `Ok(false)`
    /// when this agent type gets no stems. The error is a `LaunchError`'s message.
    pub async fn make_now(&self, agent: Arc<AgentSpec>, pools: Pools) -> Result<bool, String> {
        if !self.wants(&agent) {
            return Ok(false);
        }
        if self.spare.lock().is_ok_and(|s| s.contains_key(&agent.name)) {
            return Ok(true);
        }
        let l = launch(&agent, &pools, ("", 0), true, None, None)
            .await
            .map_err(|e| e.to_string())?;
        self.put(&agent.name, l).await;
        Ok(true)
    }

    /// Keep `l` as the stem of `agent`; one made meanwhile by someone else is discarded.
    async fn put(&self, agent: &str, l: Launched) {
        let old = self
            .spare
            .lock()
            .ok()
            .and_then(|mut s| s.insert(agent.to_string(), Stem(l)));
        if let Some(old) = old {
            let _ = tokio::task::spawn_blocking(move || old.discard()).await;
        }
    }

    /// Make a stem for `agent` in the background unless one is there or on its way.
    pub fn refill(self: &Arc<Self>, agent: Arc<AgentSpec>, pools: Pools) {
        if !self.wants(&agent) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self
            .spare
            .lock()
            .map_or(true, |s| s.contains_key(&agent.name))
        {
            return;
        }
        if !self
            .making
            .lock()
            .is_ok_and(|mut m| m.insert(agent.name.clone()))
        {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let made = launch(&agent, &pools, ("", 0), true, None, None).await;
            let Some(me) = me.upgrade() else {
                if let Ok(l) = made {
                    let _ = tokio::task::spawn_blocking(move || Stem(l).discard()).await;
                }
                return;
            };
            match made {
                Ok(l) => me.put(&agent.name, l).await,
                Err(e) => tracing::debug!(agent = %e.agent(), "making a warm stem: {e}"),
            }
            if let Ok(mut m) = me.making.lock() {
                m.remove(&agent.name);
            };
        });
    }
}

impl Drop for StemPool {
    fn drop(&mut self) {
        let spares = match self.spare.get_mut() {
            Ok(s) => std::mem::take(s),
            Err(p) => std::mem::take(p.into_inner()),
        };
        for (_, stem) in spares {
            stem.discard();
        }
    }
}
