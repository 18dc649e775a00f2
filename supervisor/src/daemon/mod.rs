//! `corral serve`: the daemon. It loads the config, opens the journal, starts the service
//! agents, listens on the control socket (see [`crate::control`]), tells systemd how it is
//! (see [`crate::health::Notifier`]), serves metrics when asked to, and reacts to signals:
//!
//! - SIGTERM / SIGINT: drain. No new work; `STOPPING=1` with `EXTEND_TIMEOUT_USEC`; runs under
//!   way are stopped (`shutdown`: they stay resumable in the journal), service agents are sent
//!   `Shutdown` and given their `kill_grace`, then killed; the journal is flushed; every
//!   workspace and cgroup removed; [`serve`] returns `Ok` (exit 0).
//! - SIGHUP: reload. `RELOADING=1`; the file is read again; an invalid one is logged with its
//!   `file:line:col` and the running config kept; a valid one is applied: a service agent
//!   whose settings changed gets a new generation of instances (the old ones finish the task
//!   they hold on the old settings, then leave), an unchanged one is left alone, new ones
//!   start, removed ones stop; calls started from then on use the new settings. `[supervisor]`
//!   settings other than `admins` need a restart.
//!
//! The main loop also pings the watchdog (`WATCHDOG=1`, when `WATCHDOG_USEC` is set) and keeps
//! `STATUS=` current, once a second; a loop that is stuck pings nothing.
//!
//! - `state`: what the daemon holds, `ps` and `status`.
//! - `service`: service agents and their instance loops.
//! - `handler`: the answers to control requests.

mod approvals;
mod handler;
mod resume;
mod service;
mod state;

pub use approvals::{OperatorApprovals, MAX_PENDING};
pub use state::Daemon;

use crate::config::{Admins, Config, ConfigError};
use crate::control;
use crate::health::{self, Notifier};
use crate::{ExitReason, RunError, Supervisor};
use service::ServiceAgent;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is invalid (`file:line:col`).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The supervisor could not be set up (journal, cgroups, state directory).
    #[error("{0}")]
    Setup(#[from] RunError),
    /// The control socket could not be bound.
    #[error("control socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics address could not be bound.
    #[error("metrics_listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
    /// Another daemon runs on the same state directory (its journal, its plan runs).
    #[error("another corral serve runs on state_dir {dir}{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    StateDirBusy {
        /// The state directory.
        dir: String,
        /// The other daemon, as its lock file says.
        pid: Option<u32>,
    },
    /// The state directory's lock could not be taken.
    #[error("state_dir {dir}: lock: {source}")]
    StateDirLock {
        /// The state directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

/// One daemon per state directory: an exclusive `flock` on `<state_dir>/daemon.lock`, held for
/// the daemon's life (the kernel lets it go with the process, `kill -9` included). A second
/// daemon would resume the first one's plan runs and serve its service agents' journal twice.
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let err = |source| DaemonError::StateDirLock {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("daemon.lock"))
        .map_err(err)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(DaemonError::StateDirBusy {
                dir: dir.display().to_string(),
                pid: text.trim().parse().ok(),
            });
        }
        Err((_, e)) => return Err(err(e.into())),
    };
    // Who holds it, for the next one's message.
    let pid = std::process::id().to_string();
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| lock.write_all(pid.as_bytes()));
    written.map_err(err)?;
    Ok(lock)
}

/// Run the daemon on the config at `path` until SIGTERM or SIGINT. Tool calls that ask for
/// approval wait for the approval verbs (see [`OperatorApprovals`]).
pub async fn serve(path: &Path) -> Result<(), DaemonError> {
    let approvals = Arc::new(OperatorApprovals::default());
    let notifier = Notifier::from_env();
    match health::raise_nofile() {
        Ok((old, new)) if old < new => {
            tracing::info!("open files limit raised from {old} to {new}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
    let config = Config::load(path)?;
    let _state_lock = lock_state_dir(&config.supervisor.state_dir)?;
    let (admins_tx, admins_rx) = watch::channel(config.supervisor.admins.clone());
    let socket = config.supervisor.control_socket.clone();
    let group = config.supervisor.control_group;
    let metrics_at = config.supervisor.metrics_listen;
    let sup = Arc::new(Supervisor::new(config)?);
    sup.set_approver(approvals.clone());
    let daemon = Arc::new(Daemon::new(sup.clone(), approvals, path.to_path_buf()));
    if let Some(j) = sup.journal() {
        let metrics = daemon.metrics.clone();
        j.observe_commits(Arc::new(move |d| metrics.journal_write(d)));
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    start_services(&daemon);
    wait_started(&daemon).await;

    let listener = control::bind(&socket, group).map_err(|source| DaemonError::Socket {
        path: socket.display().to_string(),
        source,
    })?;
    let (closed_tx, closed_rx) = watch::channel(false);
    let handler = Arc::new(handler::Control(Arc::downgrade(&daemon)));
    let server = tokio::spawn(control::serve(listener, admins_rx, handler, closed_rx));
    let metrics_task = match metrics_at {
        Some(addr) => {
            let fut = health::serve_metrics(addr, daemon.metrics.clone())
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: addr.to_string(),
                    source,
                })?;
            Some(tokio::spawn(fut))
        }
        None => None,
    };

    let (_, line) = daemon.status();
    notifier.ready(&line);
    resume::resume_left(&daemon);
    tracing::info!(socket = %socket.display(), "corral daemon ready: {line}");
    let tick = notifier
        .watchdog()
        .map(|w| (w / 2).min(Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = line;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                notifier.reloading();
                reload(&daemon, path, &admins_tx);
                let (_, line) = daemon.status();
                notifier.ready(&line);
                last_status = line;
            }
            _ = ticker.tick() => {
                if notifier.watchdog().is_some() {
                    notifier.watchdog_ping();
                }
                let (_, line) = daemon.status();
                if line != last_status {
                    notifier.status(&line);
                    last_status = line;
                }
            }
        }
    }

    // The drain.
    daemon.draining.store(true, Ordering::SeqCst);
    // The agents as configured now (a reload may have changed their `kill_grace`), and as
    // at start-up (instances of a generation a reload replaced may still be finishing).
    let now: Vec<_> = sup
        .agent_names()
        .iter()
        .filter_map(|n| sup.agent_spec(n))
        .collect();
    let grace = sup
        .config()
        .agents
        .values()
        .chain(now.iter().map(|s| &**s))
        .map(service::drain_time)
        .max()
        .unwrap_or(Duration::from_secs(1))
        + Duration::from_secs(5);
    notifier.stopping(grace);
    tracing::info!("draining: no new work; stopping agents");
    // The socket keeps answering meanwhile: `status` says `draining`, new work is refused
    // `draining`, and waiters get their answers as their runs end.
    for r in daemon
        .runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        if let Some(h) = &r.stop {
            h.stop(ExitReason::Shutdown);
        }
    }
    let services: Vec<ServiceAgent> = {
        let mut s = daemon.services.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *s).into_values().collect()
    };
    for s in &services {
        s.stop(ExitReason::Shutdown);
    }
    let drained = async {
        for s in &services {
            s.ended().await;
        }
        // Runs end once their agents are stopped.
        while !daemon
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("drain took longer than {grace:?}: leaving what is left to the reaper");
    }
    let _ = closed_tx.send(true);
    if let Some(j) = sup.journal() {
        if let Err(e) = j.flush().await {
            tracing::error!("journal flush at shutdown: {e}");
        }
    }
    server.abort();
    if let Some(m) = metrics_task {
        m.abort();
    }
    let _ = std::fs::remove_file(&socket);
    drop(services);
    drop(daemon);
    drop(sup);
    crate::sandbox::process::settled().await;
    tracing::info!("corral daemon stopped");
    Ok(())
}

/// Start the service agents of the config in force (those not stopped by an operator).
fn start_services(daemon: &Arc<Daemon>) {
    let stopped = daemon
        .stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut services = daemon.services.lock().unwrap_or_else(|p| p.into_inner());
    for name in &daemon.sup.agent_names() {
        let Some(spec) = daemon.sup.agent_spec(name) else {
            continue;
        };
        if spec.service && !stopped.contains(name) && !services.contains_key(name) {
            services.insert(name.clone(), ServiceAgent::start(daemon, spec));
        }
    }
}

/// Wait until no service instance is still starting (each is ready, or failed and in its
/// backoff), at most the longest `startup_timeout` and a second.
async fn wait_started(daemon: &Daemon) {
    let limit = daemon
        .sup
        .config()
        .agents
        .values()
        .map(|a| a.startup_timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(1);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !daemon.any_starting() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGHUP: read the config again and apply it, or keep the running one.
/// The `[supervisor]` keys that differ between `running` and `new`, but for `admins` (which a
/// reload applies): they take effect only when the daemon starts again.
fn needs_restart(
    running: &crate::config::SupervisorConfig,
    new: &crate::config::SupervisorConfig,
) -> Vec<&'static str> {
    // Every field named: one added to the section must be placed here or in the reload.
    let crate::config::SupervisorConfig {
        state_dir,
        max_frame,
        uid_range,
        journal,
        journal_keep,
        journal_sync_full,
        max_agents,
        control_socket,
        control_group,
        admins: _,
        metrics_listen,
    } = running;
    [
        ("state_dir", *state_dir != new.state_dir),
        ("max_frame", *max_frame != new.max_frame),
        ("uid_range", *uid_range != new.uid_range),
        ("journal", *journal != new.journal),
        ("journal_keep", *journal_keep != new.journal_keep),
        ("journal_sync", *journal_sync_full != new.journal_sync_full),
        ("max_agents", *max_agents != new.max_agents),
        ("control_socket", *control_socket != new.control_socket),
        ("control_group", *control_group != new.control_group),
        ("metrics_listen", *metrics_listen != new.metrics_listen),
    ]
    .into_iter()
    .filter_map(|(k, differs)| differs.then_some(k))
    .collect()
}

fn reload(daemon: &Arc<Daemon>, path: &Path, admins: &watch::Sender<Admins>) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, the running config is kept: {e}");
            return;
        }
    };
    daemon.reloads.fetch_add(1, Ordering::Relaxed);
    let later = needs_restart(&daemon.sup.config().supervisor, &config.supervisor);
    if !later.is_empty() {
        tracing::warn!(
            keys = %later.join(", "),
            "[supervisor] {} changed: in force at the next restart of the daemon (only `admins` \
             applies at a reload)",
            later.join(", ")
        );
    }
    let old: std::collections::HashMap<String, String> = daemon
        .sup
        .agent_names()
        .iter()
        .filter_map(|n| {
            daemon
                .sup
                .agent_spec(n)
                .map(|s| (n.clone(), format!("{s:?}")))
        })
        .collect();
    daemon.sup.update_agents(&config);
    let _ = admins.send(config.supervisor.admins.clone());
    let mut changed = Vec::new();
    {
        let mut services = daemon.services.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<String> = services.keys().cloned().collect();
        for name in names {
            let now = config.agents.get(&name);
            let same = now.is_some_and(|s| {
                s.service && old.get(&name).is_some_and(|o| *o == format!("{s:?}"))
            });
            if !same {
                if let Some(s) = services.remove(&name) {
                    // In-flight tasks finish on the old spec; the queue is closed to new ones.
                    s.retire();
                }
                changed.push(name);
            }
        }
    }
    // New generations (and new service agents) on the new settings. The running config's
    // agent list is read from the supervisor, which now holds the new one.
    let stopped = daemon
        .stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut services = daemon.services.lock().unwrap_or_else(|p| p.into_inner());
    for (name, spec) in &config.agents {
        if spec.service && !stopped.contains(name) && !services.contains_key(name) {
            if let Some(spec) = daemon.sup.agent_spec(name) {
                services.insert(name.clone(), ServiceAgent::start(daemon, spec));
            }
        }
    }
    tracing::info!(changed = ?changed, "config reloaded from {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::needs_restart;
    use crate::Config;
    use std::path::Path;

    fn sup(text: &str) -> crate::config::SupervisorConfig {
        Config::parse(text, Path::new("corral.toml"))
            .expect("config")
            .supervisor
    }

    #[test]
    fn a_reload_names_the_supervisor_keys_left_for_a_restart() {
        let a = sup("[supervisor]\nmetrics_listen = \"9184\"\nadmins = [\"root\"]\n");
        let b = sup("[supervisor]\nmetrics_listen = \"9185\"\nadmins = [\"1001\"]\n");
        assert_eq!(
            needs_restart(&a, &b),
            ["metrics_listen"],
            "admins apply at a reload"
        );
        assert!(needs_restart(&a, &a).is_empty());
    }
}
