//! The agent's I/O thread (see the crate's doc): the supervisor's frames to the handler's
//! thread, a beat at each tick, SIGTERM into a shutdown. Its own room: it shares with the
//! handler's thread only [`Shared`] and the [`Event`] channel.

use super::{fd_is_open, Event, Shared};
use corral_proto::beat::{monotonic_ns, BEAT_FD};
use corral_proto::frame::{self, FrameDecoder};
use corral_proto::{Down, Heartbeat, Up};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The beat pipe, when corral gave one (see `corral_proto::beat`): beats there cost the
/// supervisor no wake-up. Without it, beats are `Heartbeat` frames on fd 4.
pub(crate) fn open_beat_pipe() -> Option<File> {
    if !fd_is_open(BEAT_FD) {
        return None;
    }
    // SAFETY: checked open above; corral hands it to this process and nothing else in it owns
    // it.
    Some(unsafe { File::from_raw_fd(BEAT_FD) })
}

/// Time until the next multiple of `every` on the system-wide monotonic clock. Agents with the
/// same interval beat in step, so the supervisor handles their heartbeats in batches instead of
/// waking once per agent.
fn until_next_tick(every: Duration) -> Duration {
    let Some(now) = monotonic_ns() else {
        return every;
    };
    let now = u128::from(now);
    let step = every.as_nanos().max(1);
    let next = (now / step + 1) * step;
    Duration::from_nanos((next - now).min(u64::MAX as u128) as u64)
}

/// The I/O thread (see the crate's doc): frames from the supervisor to the handler's thread, a
/// beat at each tick of `every`, SIGTERM into a shutdown. It never blocks but in `ppoll`: the
/// down pipe is read only as far as it is readable (a frame may arrive in pieces, or never
/// whole, when the supervisor stops writing it), and a shutdown's grace is one more deadline of
/// the same wait, not a thread (one may not be had at the `pids` limit).
pub(crate) fn spawn_io(
    down: File,
    decoder: FrameDecoder,
    shared: &Arc<Shared>,
    tx: Sender<Event>,
    every: Duration,
) {
    // SIGTERM sets this process's flag, then writes a byte to the socket (both from the
    // handler, async-signal-safe; in that order). A child the agent forks without exec keeps
    // the handler and the socket: its SIGTERM wakes this thread too, but sets only its own
    // flag. Without them, SIGTERM keeps its default action and ends the agent at once.
    let flag = Arc::new(AtomicBool::new(false));
    let sigterm = UnixStream::pair().ok().and_then(|(r, w)| {
        r.set_nonblocking(true).ok()?;
        w.set_nonblocking(true).ok()?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone()).ok()?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, w).ok()?;
        Some(r)
    });
    let mut io = Io {
        down: Some(down),
        decoder,
        buf: vec![0; 16 * 1024],
        shared: shared.clone(),
        tx,
        sigterm,
        sigterm_flag: flag,
        every,
        next_beat: Instant::now() + until_next_tick(every),
        exit_at: None,
    };
    let _ = std::thread::Builder::new()
        .name("corral-io".into())
        .spawn(move || io.run());
}

/// The I/O thread's state.
struct Io {
    /// The down pipe; `None` once it ended for an agent that ignores shutdown.
    down: Option<File>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    tx: Sender<Event>,
    sigterm: Option<UnixStream>,
    /// Set by this process's SIGTERM handler.
    sigterm_flag: Arc<AtomicBool>,
    every: Duration,
    next_beat: Instant,
    /// When a busy handler's grace after a shutdown ends: the process exits then.
    exit_at: Option<Instant>,
}

impl Io {
    fn run(&mut self) {
        use nix::poll::{PollFd, PollFlags};
        loop {
            let beating = !self.shared.beats_stopped.load(Ordering::SeqCst);
            let wake = match (beating.then_some(self.next_beat), self.exit_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map(|at| {
                nix::sys::time::TimeSpec::from_duration(
                    at.saturating_duration_since(Instant::now()),
                )
            });
            let (down_ready, sig_ready) = {
                let mut fds = Vec::with_capacity(2);
                if let Some(d) = &self.down {
                    fds.push(PollFd::new(d.as_fd(), PollFlags::POLLIN));
                }
                if let Some(s) = &self.sigterm {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                }
                if fds.is_empty() && timeout.is_none() {
                    // Nothing left to read and no beats: nothing to do, ever.
                    drop(fds);
                    loop {
                        std::thread::park();
                    }
                }
                match nix::poll::ppoll(&mut fds, timeout, None) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("corral-sdk: poll: {e}");
                        std::process::exit(2);
                    }
                }
                let ready = |fd: Option<&PollFd>| {
                    fd.and_then(|f| f.revents()).is_some_and(|r| !r.is_empty())
                };
                let down = self.down.is_some().then(|| fds.first()).flatten();
                let sig = self
                    .sigterm
                    .is_some()
                    .then(|| fds.get(usize::from(self.down.is_some())))
                    .flatten();
                (ready(down), ready(sig))
            };
            if down_ready {
                self.read_available();
            }
            if sig_ready {
                self.on_sigterm();
            }
            let now = Instant::now();
            if self.exit_at.is_some_and(|at| now >= at) {
                std::process::exit(0);
            }
            if now >= self.next_beat {
                // (Read again: the handler may have stopped them while this thread waited.)
                if !self.shared.beats_stopped.load(Ordering::SeqCst) {
                    self.beat();
                }
                self.next_beat = Instant::now() + until_next_tick(self.every);
            }
        }
    }

    /// What the down pipe holds now (one read: it polled readable, so it does not block),
    /// each whole frame to the handler's thread.
    fn read_available(&mut self) {
        let Some(down) = &self.down else {
            return;
        };
        let n = match std::io::Read::read(&mut &*down, &mut self.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => {
                eprintln!("corral-sdk: {}", corral_proto::FrameError::Io(e));
                std::process::exit(2);
            }
        };
        if n == 0 {
            if let Err(e) = self.decoder.finish() {
                // The supervisor's end closed mid-frame.
                eprintln!("corral-sdk: {e}");
                std::process::exit(2);
            }
            if self.shared.ignore_shutdown.load(Ordering::SeqCst) {
                // Nothing more to read; beats go on.
                self.down = None;
                return;
            }
            std::process::exit(0); // supervisor closed our input: nobody to answer
        }
        self.decoder.push(&self.buf[..n]);
        loop {
            // (`wanted` refuses a frame announced over the maximum before its payload comes.)
            match self
                .decoder
                .wanted()
                .and_then(|_| self.decoder.next::<Down>())
            {
                Ok(Some(msg)) => self.dispatch(msg),
                Ok(None) => return,
                Err(e) => {
                    eprintln!("corral-sdk: {e}");
                    std::process::exit(2);
                }
            }
        }
    }

    fn dispatch(&mut self, msg: Down) {
        let (shared, tx) = (&self.shared, &self.tx);
        match msg {
            Down::Task(t) => {
                let _ = tx.send(Event::Task(t));
            }
            Down::ToolResult(r) => {
                let _ = tx.send(Event::ToolResult(r));
            }
            Down::Cancel(c) => {
                shared.cancelled.store(true, Ordering::SeqCst);
                let _ = tx.send(Event::Cancel(c.task_id));
            }
            Down::Shutdown(s) => {
                if !shared.ignore_shutdown.load(Ordering::SeqCst) {
                    self.shut_down(s.grace_ms / 2);
                }
            }
            Down::Hello(_) => {
                eprintln!("corral-sdk: protocol error: second Hello");
                std::process::exit(2);
            }
        }
    }

    /// Idle: exit now. Busy: flag cancellation, ask the handler's loop to return, and exit
    /// when `grace_ms` have passed (if it has not returned by then).
    fn shut_down(&mut self, grace_ms: u64) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        if !self.shared.busy.load(Ordering::SeqCst) {
            std::process::exit(0);
        }
        let _ = self.tx.send(Event::Shutdown);
        let at = Instant::now() + Duration::from_millis(grace_ms);
        self.exit_at = Some(self.exit_at.map_or(at, |e| e.min(at)));
    }

    fn on_sigterm(&mut self) {
        if let Some(s) = &self.sigterm {
            let mut buf = [0u8; 64];
            while matches!(std::io::Read::read(&mut &*s, &mut buf), Ok(n) if n > 0) {}
        }
        // Only this process's own SIGTERM (not a forked child's).
        if !self.sigterm_flag.swap(false, Ordering::SeqCst)
            || self.shared.ignore_shutdown.load(Ordering::SeqCst)
        {
            return;
        }
        self.shut_down(1000);
    }

    /// One beat: a record on the beat pipe, or a `Heartbeat` frame where corral gave no beat
    /// pipe or it is full (the supervisor drains it when it catches up). The frame is written
    /// only when it cannot block this thread, which must go on reading what the supervisor
    /// sends: the handler's thread is not writing a frame itself (that frame is a sign of life
    /// too) and the up pipe has room.
    fn beat(&mut self) {
        let shared = &self.shared;
        let progress = shared.progress.load(Ordering::Relaxed);
        if let (Some(mut b), Some(now)) = (shared.beat.as_ref(), monotonic_ns()) {
            let record = corral_proto::beat::encode(progress, now);
            // One write of a record shorter than PIPE_BUF: all of it or nothing (EAGAIN when
            // the pipe is full).
            if matches!(b.write(&record), Ok(n) if n == record.len()) {
                return;
            }
        }
        let Ok(bytes) = frame::encode(&Up::Heartbeat(Heartbeat { progress })) else {
            return;
        };
        let Ok(mut w) = shared.writer.try_lock() else {
            return;
        };
        // Room for a frame this small: a pipe that polls writable has a free buffer, and
        // nobody else writes while the lock is held.
        let mut fds = [nix::poll::PollFd::new(
            w.as_fd(),
            nix::poll::PollFlags::POLLOUT,
        )];
        let room = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLOUT));
        if room && w.write_all(&bytes).is_err() {
            // Supervisor gone: no more beats.
            shared.beats_stopped.store(true, Ordering::SeqCst);
        }
    }
}
