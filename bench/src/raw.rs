//! Baselines written by hand, without corral: what the operating system costs by itself.
//!
//! - [`spawn_ready`]: `posix_spawn` of an agent with two pipes on fds 3/4 and `/dev/null` on
//!   fd 0, then the handshake (`Hello` down, `Ready` up) done inline; the process is then
//!   killed and reaped outside the timed part.
//! - [`spawn_exit`]: `posix_spawn` of a program with nothing but a minimal environment, timed
//!   to its exit (for `/bin/true` and `bwrap … /bin/true`).
//! - [`command_pre_exec`]: `std::process::Command` with a no-op `pre_exec`, which forces
//!   `fork()`, timed until `spawn` returns (after `exec`).
//! - [`pipe_frames`]: frames through a pipe inside this process: a writer thread doing one
//!   `write` per frame, a reader decoding them with `FrameDecoder`.
//! - [`restart`]: a hand-written restart: kill -9, reap, spawn again, handshake.
//!
//! Children are registered with corral's orphan reaper (once a supervisor exists in this
//! process it reaps every exited child it does not know), so their exit status stays ours.

use anyhow::{anyhow, bail, Context, Result};
use corral_proto::frame::{self, FrameDecoder, FrameReader};
use corral_proto::{Down, Hello, Log, LogLevel, Up, PROTOCOL_VERSION};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A program, its argv and a minimal environment, as C strings prepared once.
pub struct Program {
    path: CString,
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
}

impl Program {
    /// `path` (absolute) with `args` after `argv[0]`; environment `PATH` and `HOME` only.
    pub fn new(path: &Path, args: &[&str]) -> Result<Program> {
        let cpath = CString::new(path.as_os_str().as_bytes())?;
        let mut a = vec![cpath.clone()];
        for s in args {
            a.push(CString::new(*s)?);
        }
        let env = vec![
            CString::new("PATH=/usr/local/bin:/usr/bin:/bin")?,
            CString::new("HOME=/tmp")?,
        ];
        let mut argv: Vec<_> = a.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = env.iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Program {
            path: cpath,
            _args: a,
            argv,
            _env: env,
            envp,
        })
    }
}

/// A pipe (read end, write end), both close-on-exec and above fd 4.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fresh fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((lift(r)?, lift(w)?))
}

/// Keep pipe fds above 4 so that `dup2` onto 3/4 never meets a source fd there.
fn lift(fd: OwnedFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() > 4 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd we then own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 5) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()).context("fcntl(F_DUPFD_CLOEXEC)");
    }
    // SAFETY: `new` was just returned by fcntl.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `posix_spawn` with the given fd dups (source, target) and `/dev/null` on fd 0.
fn posix_spawn(prog: &Program, dups: &[(i32, i32)], devnull_stdin: bool) -> Result<i32> {
    let mut pid: libc::pid_t = 0;
    // SAFETY: the file actions object is initialised, used and destroyed here; every pointer
    // handed to posix_spawn (path, argv, envp, the /dev/null string) outlives the call.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut fa);
        for &(src, dst) in dups {
            libc::posix_spawn_file_actions_adddup2(&mut fa, src, dst);
        }
        if devnull_stdin {
            libc::posix_spawn_file_actions_addopen(
                &mut fa,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            );
        }
        let r = libc::posix_spawn(
            &mut pid,
            prog.path.as_ptr(),
            &fa,
            std::ptr::null(),
            prog.argv.as_ptr() as *const *mut libc::c_char,
            prog.envp.as_ptr() as *const *mut libc::c_char,
        );
        libc::posix_spawn_file_actions_destroy(&mut fa);
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r)).context("posix_spawn");
        }
    }
    Ok(pid)
}

/// Wait for `pid` to exit; its wait status, or `None` when it was not ours to wait for.
fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    (r == pid).then_some(status)
}

fn kill_and_reap(pid: i32) {
    // SAFETY: signalling our own child, which has not been reaped yet (its pid is reserved).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
}

/// A running agent started by hand, handshake done. Dropping it kills and reaps it.
pub struct RawAgent {
    /// Its pid.
    pub pid: i32,
    alive: bool,
    _down: File,
    _up: File,
}

impl RawAgent {
    /// SIGKILL and reap it now.
    fn kill(&mut self) {
        if self.alive {
            kill_and_reap(self.pid);
            self.alive = false;
        }
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `Hello` corral would send, encoded.
fn hello() -> Result<Vec<u8>> {
    Ok(frame::encode(&Down::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        agent_id: "raw".into(),
        run_id: "raw-run".into(),
        attempt: 1,
        heartbeat_interval_ms: 1000,
        max_frame: frame::DEFAULT_MAX_FRAME,
    }))?)
}

/// Spawn `prog` and do the handshake; returns the running agent and the instant
/// `posix_spawn` returned (after the child's `exec`).
pub fn start_agent_at(prog: &Program) -> Result<(RawAgent, Instant)> {
    let (down_r, down_w) = pipe()?;
    let (up_r, up_w) = pipe()?;
    let pid = posix_spawn(
        prog,
        &[(down_r.as_raw_fd(), 3), (up_w.as_raw_fd(), 4)],
        true,
    )?;
    let spawned = Instant::now();
    drop(down_r);
    drop(up_w);
    let agent = RawAgent {
        pid,
        alive: true,
        _down: File::from(down_w),
        _up: File::from(up_r),
    };
    (&agent._down).write_all(&hello()?)?;
    let mut reader = FrameReader::new(&agent._up);
    match reader.read_frame::<Up>()? {
        Some(Up::Ready(_)) => Ok((agent, spawned)),
        other => Err(anyhow!("expected Ready, got {other:?}")),
    }
}

/// Spawn `prog` and do the handshake; returns the running agent.
pub fn start_agent(prog: &Program) -> Result<RawAgent> {
    Ok(start_agent_at(prog)?.0)
}

/// Time `posix_spawn` + handshake of `prog`: (until `posix_spawn` returned, until `Ready`
/// is decoded).
pub fn spawn_ready(prog: &Program) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let (agent, spawned) = start_agent_at(prog)?;
    let d = t0.elapsed();
    drop(agent);
    Ok((spawned - t0, d))
}

/// Time `posix_spawn` of `prog` (stdin `/dev/null`) to its exit; an exit status other than 0
/// is an error.
pub fn spawn_exit(prog: &Program) -> Result<Duration> {
    let t0 = Instant::now();
    let pid = posix_spawn(prog, &[], true)?;
    let status = reap(pid).ok_or_else(|| anyhow!("lost child {pid} to another reaper"))?;
    let d = t0.elapsed();
    if status != 0 {
        bail!("exited with wait status {status:#x}");
    }
    Ok(d)
}

/// Time `Command::spawn` with a no-op `pre_exec` (forces `fork`), until `spawn` returns.
pub fn command_pre_exec(program: &Path) -> Result<Duration> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure does nothing, so it cannot break any invariant of the forked child.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let d = t0.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    Ok(d)
}

/// The frame `chaos {"do":"frames"}` sends, encoded.
pub fn log_frame() -> Result<Vec<u8>> {
    Ok(frame::encode(&Up::Log(Log {
        level: LogLevel::Trace,
        message: "x".into(),
    }))?)
}

/// Frames per second through an in-process pipe: one `write` per frame, decoded by the reader.
pub fn pipe_frames(n: u64) -> Result<f64> {
    let bytes = log_frame()?;
    let (r, w) = pipe()?;
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = File::from(w);
        for _ in 0..n {
            // One write system call per frame, like the SDK's `log_at`.
            w.write_all(&bytes)?;
        }
        Ok(())
    });
    let mut r = File::from(r);
    let mut dec = FrameDecoder::new(frame::DEFAULT_MAX_FRAME);
    let mut chunk = [0u8; 16 * 1024];
    let mut got: u64 = 0;
    loop {
        let k = r.read(&mut chunk)?;
        if k == 0 {
            break;
        }
        dec.push(&chunk[..k]);
        while let Some(m) = dec.next::<Up>()? {
            std::hint::black_box(&m);
            got += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow!("writer thread panicked"))??;
    if got != n {
        bail!("decoded {got} frames of {n}");
    }
    Ok(n as f64 / secs)
}

/// A hand-written restart: SIGKILL the agent, reap it, spawn a new one and handshake. Returns
/// the new agent and the time from the kill to its `Ready`.
pub fn restart(prog: &Program, mut agent: RawAgent) -> Result<(RawAgent, Duration)> {
    let t0 = Instant::now();
    agent.kill();
    drop(agent);
    let next = start_agent(prog)?;
    Ok((next, t0.elapsed()))
}
