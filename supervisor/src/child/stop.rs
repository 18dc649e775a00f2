//! Ending an agent's process and finding out how it ended.
//!
//! [`stop_and_reap`] stops the process tree with escalation (`Shutdown` → SIGTERM →
//! `kill_grace` → SIGKILL of the whole group, and of the cgroup), then reaps the leader with its
//! rusage. After that, what the kernel knows: `corral-init`'s record of the agent under it
//! ([`read_init_status`]), the cgroup's counters ([`cgroup_counters`]). What is left to do
//! (removing the cgroup and the workspace) does not hold up the record nor the next attempt: it
//! goes to the disposal threads ([`dispose`]).

use super::logs::Logs;
use super::poller::{Poller, Ready};
use crate::exit_status::{InitRecord, WaitStatus, RECORD_LEN};
use crate::sandbox::cgroup::AgentCgroup;
use crate::sandbox::process::{self, Reaped};
use crate::sandbox::workspace::Workspace;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// Stop the process tree with escalation, then reap the leader. With a cgroup, its counters
/// are read once it is empty (the whole tree is dead by then: they are final), and returned:
/// in place when its own counter shows nothing but the dead leader inside and `counter_trusted`
/// (the agent cannot have moved a process out of the counted hierarchy alone, see
/// `cgroup_counter_trusted` in `attempt.rs`), else off the runtime after listing, killing and
/// waiting for the cgroup to empty. `orphans_ours`: without a pid namespace, the agent's
/// orphans are reparented to the supervisor; those that exited on their own are reaped too.
///
/// `graceful`: the agent was asked to stop (its task ended, or its owner stopped it) and gets
/// `kill_grace` after `Shutdown`; otherwise SIGTERM goes with it. `say_shutdown` sends
/// `Shutdown`. Its stdout and stderr are read meanwhile (an agent blocked on a full pipe could
/// not exit). Signals sent are added to `signals_sent`. `None` when the leader could not be
/// reaped (it is then the reaper's, see `guard`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn stop_and_reap(
    (pid, pidfd): (i32, &OwnedFd),
    (poller, logs, agent): (&Poller, &mut Logs, &str),
    cgroup: Option<&Arc<AgentCgroup>>,
    (counter_trusted, orphans_ours): (bool, bool),
    graceful: bool,
    grace: Duration,
    say_shutdown: impl FnOnce(),
    signals_sent: &mut Vec<String>,
) -> (Option<Reaped>, Option<CgroupCounters>) {
    // Did it already exit? (Does not reap, so the group id stays reserved.)
    if !exited(pidfd) {
        say_shutdown();
        if !graceful {
            process::kill_group(pid, libc::SIGTERM);
            signals_sent.push("SIGTERM".into());
        }
        let exit = wait_exit(pidfd, poller, logs, agent, pid);
        if tokio::time::timeout(grace, exit).await.is_err() {
            process::kill_group(pid, libc::SIGKILL);
            process::pidfd_kill(pidfd);
            signals_sent.push("SIGKILL".into());
            wait_exit(pidfd, poller, logs, agent, pid).await;
        }
    }
    // Nothing the agent started survives it: the group (the leader is a zombie, so its id
    // cannot have been reused) and the cgroup, before the leader is reaped.
    process::kill_group(pid, libc::SIGKILL);
    let mut counters = None;
    if let Some(cg) = cgroup {
        let read = |cg: &AgentCgroup| {
            let (oom_kills, pids_hits, mem_peak) = cg.end_counters();
            CgroupCounters {
                oom: oom_kills > 0,
                pids_hits,
                mem_peak,
            }
        };
        let alone = cg.holds_only_exited_leader();
        if alone && counter_trusted {
            // Most often nothing else is left, which one small read shows: that and the
            // counters cost less here than a hop to a blocking thread and back. (On v1 the
            // counter is the pids hierarchy's: host root outside a pid namespace could have
            // moved a process out of that one alone, so then every hierarchy is listed.)
            counters = Some(read(cg));
        } else if alone && cg.seen_empty_flat() {
            // Every hierarchy listed, here: a read and a `stat` per hierarchy, for leaves
            // without sub-cgroups only (an agent that made some, whatever their number, is
            // listed on the blocking thread below). Nothing to kill or wait for, so no hop to a
            // blocking thread either; a restart waits for this.
            counters = Some(read(cg));
        } else {
            // Listing, killing and waiting for the cgroup to empty can take milliseconds (v1
            // waits on RCU): off the runtime.
            let cg = cg.clone();
            counters = tokio::task::spawn_blocking(move || {
                let (members, killed) = cg.kill_all_listed();
                if let Err(e) = killed {
                    tracing::warn!(cgroup = cg.name(), pid, "kill cgroup: {e}");
                }
                // Escapees reparented to us (no pid namespace) are zombies of ours now.
                process::reap_adopted(&members);
                read(&cg)
            })
            .await
            .ok();
        }
    }
    if orphans_ours {
        // Before the leader is reaped: its session id stays its own meanwhile.
        process::reap_orphans_of(pid);
    }
    (process::try_reap(pid), counters)
}

/// Whether the process of `pidfd` has exited (it is then a zombie until reaped).
fn exited(pidfd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, 0u16), Ok(n) if n > 0)
}

/// Wait for the exit the poller reports (the pidfd is in its set, and nothing else but the
/// output streams), reading stdout and stderr meanwhile.
async fn wait_exit(pidfd: &OwnedFd, poller: &Poller, logs: &mut Logs, agent: &str, pid: i32) {
    loop {
        match poller.ready().await {
            Ok(ready) if ready.has(Ready::EXIT) => return,
            Ok(ready) => logs.read(ready, agent, pid),
            Err(_) => break,
        }
    }
    // The poller failed (it cannot, short of a bug): ask the pidfd itself, now and then.
    while !exited(pidfd) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Read the record `corral-init` wrote about the agent (see [`crate::exit_status`]), once it
/// has exited. `Err(errno)` when the agent could not be started inside the namespace; `None`
/// without a whole record (the init itself was killed: its own status stands for the tree).
pub(super) fn read_init_status(fd: OwnedFd) -> Option<Result<Reaped, i32>> {
    use std::io::Read;
    let mut buf = [0u8; RECORD_LEN];
    let mut f = std::fs::File::from(fd);
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if n < buf.len() {
        return None;
    }
    Some(reaped_of(InitRecord::decode(&buf)?))
}

/// What `corral-init` reported, as if the supervisor had reaped the agent itself.
fn reaped_of(record: InitRecord) -> Result<Reaped, i32> {
    match record {
        InitRecord::NotStarted { errno } => Err(errno),
        InitRecord::Ended {
            status,
            utime_ms,
            stime_ms,
            maxrss_kb,
        } => {
            let w = WaitStatus::decode(status);
            Ok(Reaped {
                exit_code: w.exit_code,
                signal: w.signal,
                core_dumped: w.core_dumped,
                cpu_user_ms: utime_ms,
                cpu_sys_ms: stime_ms,
                max_rss_kb: maxrss_kb,
            })
        }
    }
}

/// What a cgroup says about the attempt: an OOM kill, forks refused, the memory peak (bytes).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CgroupCounters {
    pub(super) oom: bool,
    pub(super) pids_hits: u64,
    pub(super) mem_peak: Option<u64>,
}

/// Remove a cgroup (emptied already) and a workspace off the runtime, several at once
/// ([`process::dispose_later`]): nothing waits for it (see [`process::settled`] for what
/// does).
pub(super) fn dispose(cgroup: Option<Arc<AgentCgroup>>, workspace: Option<Workspace>) {
    if cgroup.is_none() && workspace.is_none() {
        return;
    }
    process::dispose_later(move || {
        if let Some(c) = cgroup {
            if let Err(e) = c.remove() {
                tracing::warn!(cgroup = c.name(), "remove cgroup: {e}");
            }
        }
        drop(workspace);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_records_read_as_reaped_processes() {
        let killed = InitRecord::Ended {
            status: libc::SIGSEGV | 0x80,
            utime_ms: 12,
            stime_ms: 3,
            maxrss_kb: 4096,
        };
        assert_eq!(
            reaped_of(killed),
            Ok(Reaped {
                exit_code: None,
                signal: Some(libc::SIGSEGV),
                core_dumped: true,
                cpu_user_ms: 12,
                cpu_sys_ms: 3,
                max_rss_kb: 4096,
            })
        );
        let exited = InitRecord::Ended {
            status: 7 << 8,
            utime_ms: 0,
            stime_ms: 0,
            maxrss_kb: 0,
        };
        assert_eq!(reaped_of(exited).map(|r| r.exit_code), Ok(Some(7)));
        assert_eq!(
            reaped_of(InitRecord::NotStarted {
                errno: libc::ENOENT
            }),
            Err(libc::ENOENT)
        );
    }

    #[test]
    fn a_record_is_read_from_the_pipe_whole_or_not_at_all() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let rec = InitRecord::NotStarted { errno: 13 }.encode();
        nix::unistd::write(&w, &rec).expect("write");
        drop(w);
        assert_eq!(read_init_status(r), Some(Err(13)));
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, &rec[..10]).expect("write");
        drop(w);
        assert_eq!(read_init_status(r), None, "cut short: the init was killed");
    }
}
