//! A command tool's program: made exactly like an agent's process (its uid, rlimits, cgroup,
//! namespaces, root, landlock and seccomp, from the tool's settings resolved as an agent's),
//! but spoken to as a filter: the input is written to its stdin, its stdout is the result,
//! bounded. It runs until it exits or its timeout; then, whichever came first, its whole tree
//! is killed (process group and cgroup, or its pid namespace with `corral-init`) and reaped,
//! and its workspace and cgroup go to the reaper. A dropped run kills the tree too (`guard`).

use super::guard::Teardown;
use super::launch::launch_with;
use super::poller::{Poller, Ready};
use super::{stop, AgentSpec, Pools};
use crate::sandbox::process;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of stderr kept (the end).
const STDERR_TAIL: usize = 4096;

/// How a command tool's run ended.
#[derive(Debug, Default)]
pub(crate) struct ToolRun {
    /// Its exit code, when it exited.
    pub(crate) exit_code: Option<i32>,
    /// The signal that ended it.
    pub(crate) signal: Option<i32>,
    /// Its stdout (at most the bound asked for).
    pub(crate) stdout: Vec<u8>,
    /// It wrote more than the bound to stdout (the rest was not read).
    pub(crate) stdout_over: bool,
    /// The end of its stderr.
    pub(crate) stderr_tail: String,
    /// It ran past its timeout and was killed.
    pub(crate) timed_out: bool,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Run the program of `tool` in its sandbox with `input` on stdin, at most `timeout`, keeping
/// at most `max_out` bytes of stdout. `Err`: it could not be started.
pub(crate) async fn run_tool(
    tool: &AgentSpec,
    pools: &Pools,
    (run_id, attempt): (&str, u32),
    input: Vec<u8>,
    timeout: Duration,
    max_out: u64,
) -> Result<ToolRun, String> {
    let (stdin_r, stdin_w) = pipe().map_err(|e| format!("create pipe: {e}"))?;
    let launched = launch_with(
        tool,
        pools,
        (run_id, attempt),
        false,
        Some(stdin_r),
        None,
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    if let Some(refill) = launched.refill {
        refill.run();
    }
    let pid = launched.spawned.pid;
    let mut guard = Teardown::new(
        pid,
        launched.spawned.pidfd,
        launched.cgroup.clone(),
        launched.workspace,
    );
    // Not a protocol agent: its fd 3, 4 and beat pipe are closed on our side.
    drop((launched.up_r, launched.down_w, launched.beat_r));
    let sender = tokio::net::unix::pipe::Sender::from_owned_fd(stdin_w);
    let out = tokio::net::unix::pipe::Receiver::from_owned_fd(launched.out_r);
    let err = tokio::net::unix::pipe::Receiver::from_owned_fd(launched.err_r);
    let (Ok(mut sender), Ok(out), Ok(err)) = (sender, out, err) else {
        return Err("cannot watch the tool's pipes".into());
    };
    let poller = Poller::new()
        .and_then(|p| p.add(guard.pidfd().as_fd(), Ready::EXIT).map(|()| p))
        .map_err(|e| format!("watch the tool's pidfd: {e}"))?;
    let exited = || async {
        while let Ok(ready) = poller.ready().await {
            if ready.has(Ready::EXIT) {
                return;
            }
        }
    };
    // Input, output and error, each on a task of its own (a full pipe must not block the rest).
    let writer = tokio::spawn(async move {
        let _ = sender.write_all(&input).await;
        // Dropped: EOF on its stdin.
    });
    let reader = tokio::spawn(read_bounded(out, max_out));
    let tail = tokio::spawn(read_tail(err));
    let timed_out = tokio::time::timeout(timeout, exited()).await.is_err();
    // Whichever came first, nothing it started outlives it.
    process::kill_group(pid, libc::SIGKILL);
    process::pidfd_kill(guard.pidfd());
    if let Some(cg) = launched.cgroup.clone() {
        let _ = tokio::task::spawn_blocking(move || {
            let members = cg.pids().unwrap_or_default();
            let _ = cg.kill_all();
            process::reap_adopted(&members);
        })
        .await;
    }
    exited().await;
    let reaped = process::try_reap(pid);
    if reaped.is_some() {
        guard.set_reaped();
        let workspace = guard.take_workspace();
        guard.disarm();
        stop::dispose(launched.cgroup, workspace);
    }
    // (Not reaped: the guard, dropped, kills and reaps on the reaper thread.)
    drop(guard);
    writer.abort();
    // The tree is gone, so its pipes end; a stray that escaped both group and cgroup (neither
    // namespace nor cgroup) could hold them: not waited for long.
    let grace = Duration::from_secs(1);
    let (stdout, stdout_over) = match tokio::time::timeout(grace, reader).await {
        Ok(Ok(r)) => r,
        _ => (Vec::new(), false),
    };
    let stderr_tail = match tokio::time::timeout(grace, tail).await {
        Ok(Ok(t)) => t,
        _ => String::new(),
    };
    let mut reaped = reaped.unwrap_or_default();
    if let Some(Ok(r)) = launched.status_rx.and_then(stop::read_init_status) {
        reaped = r;
    }
    Ok(ToolRun {
        exit_code: reaped.exit_code,
        signal: reaped.signal,
        stdout,
        stdout_over,
        stderr_tail,
        timed_out,
    })
}

/// Read to EOF keeping at most `max` bytes; past it, stop reading (the writer then gets EPIPE).
async fn read_bounded(mut r: tokio::net::unix::pipe::Receiver, max: u64) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) => {
                if (buf.len() + n) as u64 > max {
                    return (buf, true);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Read to EOF keeping the last [`STDERR_TAIL`] bytes.
async fn read_tail(mut r: tokio::net::unix::pipe::Receiver) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}
