//! The pools' top-up after a spawn ([`Refill`]), carried out by one refill thread once the
//! agent is ready rather than between its spawn and its handshake.

use super::root::RootAhead;
use super::{CgroupLimits, Pools, WorkspacePool};
use crate::config::AgentSpec;
use crate::sandbox::pool::CgroupPool;
use crate::sandbox::process::{busy, Busy};
use crate::sandbox::workspace::Workspace;
use std::sync::{Arc, Weak};

/// Top-ups waiting for the refill thread, at most: the queue's memory stays bounded whatever
/// the rate of spawns. Each looks at its pools afresh when it is carried out.
const REFILLS_QUEUED: usize = 64;

/// The pools' top-up after a spawn: not beside the spawn, nor before the agent is ready.
/// Making a root or a network namespace takes a core for a millisecond, a workspace or a cgroup
/// a good part of one: work the agent's own start would wait for on a small machine (the
/// spawning thread and the runtime are queued behind it already). An attempt runs it when its
/// agent is ready, or ends; a stem or a command tool at once.
pub(in crate::child) struct Refill {
    /// The pools, not kept alive by a top-up waiting in the queue.
    pub(super) pools: WeakPools,
    pub(super) disk: Option<u64>,
    /// The workspace came from the spares (not with a root made ahead).
    pub(super) from_spares: bool,
    pub(super) agent: String,
    pub(super) limits: CgroupLimits,
    /// A root to make ahead for the next attempt, and the agent it is made for.
    pub(super) root: Option<(RootAhead, AgentSpec)>,
}

impl Refill {
    /// Hand the top-up to the pools' refill thread (one channel send): telling the makers
    /// starts threads, which the caller (a runtime thread, with an agent just ready whose
    /// event is on its way) should not wait for. Done here when that thread cannot be had.
    pub(in crate::child) fn run(self) {
        use std::sync::mpsc::TrySendError;
        // Each queued top-up counts as work the process waits for before it exits
        // (`process::settled`): a spare half made at exit would be left behind.
        type Job = (Refill, Busy);
        type Tx = std::sync::Mutex<std::sync::mpsc::SyncSender<Job>>;
        static TX: std::sync::OnceLock<Option<Tx>> = std::sync::OnceLock::new();
        let tx = TX.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(REFILLS_QUEUED);
            std::thread::Builder::new()
                .name("corral-refill".into())
                .spawn(move || {
                    crate::sandbox::background_thread();
                    while let Ok((r, busy)) = rx.recv() {
                        r.now(true);
                        drop(busy);
                    }
                })
                .map_err(|e| tracing::warn!("cannot start the pools' refill thread: {e}"))
                .ok()
                .map(|_| std::sync::Mutex::new(tx))
        });
        let unsent = match tx.as_ref().map(|tx| tx.lock()) {
            Some(Ok(tx)) => match tx.try_send((self, busy())) {
                // Dropped when 64 wait already: its pools stay short until the next spawn of
                // their kind, which makes what it lacks itself and asks again.
                Ok(()) | Err(TrySendError::Full(_)) => None,
                Err(TrySendError::Disconnected((r, _))) => Some(r),
            },
            _ => Some(self),
        };
        if let Some(r) = unsent {
            r.now(false);
        }
    }

    /// Top the pools up: on the refill thread (`here`), workspaces and cgroups are made on it;
    /// elsewhere each pool's maker is told (none of them waits for the making). Roots and
    /// network namespaces have makers of their own either way.
    fn now(self, here: bool) {
        let Refill {
            pools,
            disk,
            from_spares,
            agent,
            limits,
            root,
        } = self;
        // Nothing for a supervisor that is gone (its pools are held by nothing else now).
        let Some(pools) = pools.upgrade() else {
            return;
        };
        crate::sandbox::netpool::top_up();
        if let Some((a, spec)) = root {
            let key = a.key.clone();
            pools
                .workspaces
                .refill_rooted(key, disk, move |w: &Workspace| a.ops(&spec, w));
        }
        if from_spares {
            match here {
                true => pools.workspaces.fill_here(disk),
                false => pools.workspaces.top_up(disk),
            }
        }
        if let Some(pool) = &pools.cgroups {
            match here {
                true => pool.fill_here(&agent, &limits),
                false => pool.top_up(&agent, &limits),
            }
        }
    }
}

/// [`Pools`] held weakly.
pub(in crate::child) struct WeakPools {
    workspaces: Weak<WorkspacePool>,
    cgroups: Option<Weak<CgroupPool>>,
}

impl WeakPools {
    pub(super) fn of(p: &Pools) -> WeakPools {
        WeakPools {
            workspaces: Arc::downgrade(&p.workspaces),
            cgroups: p.cgroups.as_ref().map(Arc::downgrade),
        }
    }

    /// The pools, if their supervisor still holds them.
    fn upgrade(&self) -> Option<Pools> {
        let cgroups = match &self.cgroups {
            Some(c) => Some(c.upgrade()?),
            None => None,
        };
        Some(Pools {
            workspaces: self.workspaces.upgrade()?,
            cgroups,
        })
    }
}
