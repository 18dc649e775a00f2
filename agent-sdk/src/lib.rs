//! # corral-sdk: write an agent that corral can supervise
//!
//! An agent is a small program. It declares a [`Contract`] (what it accepts, returns and may
//! call), and hands a handler to [`run`]. The SDK does the rest: the handshake on fds 3/4,
//! heartbeats at the interval the supervisor asked for, typed decoding of
//! inputs and encoding of outputs, tool calls, turning a panic into a structured `Failed`, and
//! a clean exit on `Shutdown` or SIGTERM. No async runtime is needed.
//!
//! An agent has two threads: the handler's (`main`) and one I/O thread, which reads the
//! supervisor's frames, beats at each tick and catches SIGTERM. (It was three threads, one for
//! each. Two threads and two stacks fewer per agent; an agent killed with SIGKILL ends only
//! when its last thread has, though the restart rows did not move beyond their noise: see
//! `docs/bench.md`.)
//!
//! ```no_run
//! use corral_sdk::{run, AgentError, Contract, Ctx, Schema};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { text: String }
//! #[derive(Serialize)]
//! struct Output { shout: String }
//!
//! fn handle(ctx: &mut Ctx, input: Input) -> Result<Output, AgentError> {
//!     ctx.progress(); // tell the supervisor work is moving
//!     ctx.log(format!("shouting {} bytes", input.text.len()));
//!     Ok(Output { shout: input.text.to_uppercase() })
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let contract = Contract::new("shout", "1.0.0")
//!         .input(Schema::object().field("text", Schema::String))
//!         .output(Schema::object().field("shout", Schema::String));
//!     run(contract, handle)
//! }
//! ```
//!
//! Started outside corral (no fds 3 and 4), an agent prints one line saying so and exits 2.
//!
//! Panics in the handler become `Failed { kind: "panic", retryable: true }`: a panic may come
//! from transient state, and the supervisor's quarantine stops an input that panics the same way
//! again and again.

use corral_proto::beat::{monotonic_ns, BEAT_FD};
use corral_proto::frame::{self, FrameDecoder, FrameReader};
use corral_proto::{
    Done, Down, Failed, Heartbeat, Hello, Log, LogLevel, Ready, ToolCall, Up, PROTOCOL_VERSION,
};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use corral_proto::{AgentError, Contract, Schema, SideEffects, Value};
pub use tool_error::{ToolError, ToolErrorKind};

mod tool_error;

/// The fd the supervisor writes to (the agent reads).
pub const DOWN_FD: i32 = 3;
/// The fd the agent writes to (the supervisor reads).
pub const UP_FD: i32 = 4;

/// What can go wrong in the SDK itself (not in the handler).
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// fds 3/4 are missing: not started by corral.
    #[error("this program is a corral agent: start it under corral (file descriptors 3 and 4 are not open)")]
    NotUnderCorral,
    /// The wire broke.
    #[error("corral wire error: {0}")]
    Frame(#[from] corral_proto::FrameError),
    /// The supervisor spoke out of turn.
    #[error("corral protocol error: {0}")]
    Protocol(String),
}

struct Shared {
    writer: Mutex<File>,
    progress: AtomicU64,
    busy: AtomicBool,
    cancelled: AtomicBool,
    ignore_shutdown: AtomicBool,
    /// Heartbeats stopped for good (`Misbehave::stop_heartbeats`).
    beats_stopped: AtomicBool,
    /// The beat pipe, when corral gave one.
    beat: Option<File>,
}

impl Shared {
    fn send(&self, msg: &Up) -> Result<(), SdkError> {
        self.send_encoded(&frame::encode(msg)?)
    }

    /// Write one frame encoded already.
    fn send_encoded(&self, bytes: &[u8]) -> Result<(), SdkError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(bytes).map_err(corral_proto::FrameError::Io)?;
        Ok(())
    }
}

enum Event {
    Task(corral_proto::Task),
    ToolResult(corral_proto::ToolResult),
    Cancel(u64),
    Shutdown,
}

/// The handler's view of the world during one task.
pub struct Ctx {
    shared: Arc<Shared>,
    events: Receiver<Event>,
    hello: Hello,
    task_id: u64,
    memory_in: Vec<Value>,
    memory_out: Vec<Value>,
    next_call: u64,
    deferred: Vec<Event>,
}

impl Ctx {
    /// Bump the progress counter carried by heartbeats. A counter that stops moving while
    /// heartbeats continue is what the supervisor calls a stall.
    pub fn progress(&self) {
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// The current progress counter.
    pub fn progress_count(&self) -> u64 {
        self.shared.progress.load(Ordering::Relaxed)
    }

    /// Send an info log line to the supervisor.
    pub fn log(&self, message: impl Into<String>) {
        self.log_at(LogLevel::Info, message)
    }

    /// Send a log line at a level.
    pub fn log_at(&self, level: LogLevel, message: impl Into<String>) {
        let _ = self.shared.send(&Up::Log(Log {
            level,
            message: message.into(),
        }));
    }

    /// Call a tool through the supervisor and wait for its result. The tool must be declared
    /// in the contract and allowed by the supervisor's config. A name over
    /// [`corral_proto::message::MAX_TOOL_NAME`] bytes, or a call over
    /// [`corral_proto::message::MAX_TOOL_CALL`] bytes encoded, is refused here (kind
    /// `too_large`) instead of being sent: the supervisor would end the attempt for it.
    pub fn call_tool<A: Serialize + 'static>(
        &mut self,
        tool: &str,
        args: A,
    ) -> Result<Value, AgentError> {
        use corral_proto::message::{MAX_TOOL_CALL, MAX_TOOL_NAME};
        let args = corral_proto::value::to_value_owned(args)
            .map_err(|e| AgentError::new("invalid_args", e.to_string(), false))?;
        if tool.len() > MAX_TOOL_NAME {
            return Err(AgentError::new(
                "too_large",
                format!(
                    "a tool name is at most {MAX_TOOL_NAME} bytes; this one is {}",
                    tool.len()
                ),
                false,
            ));
        }
        self.next_call += 1;
        let call_id = self.next_call;
        let bytes = frame::encode(&Up::ToolCall(ToolCall {
            call_id,
            tool: tool.to_string(),
            args,
        }))
        .map_err(|e| AgentError::new("invalid_args", e.to_string(), false))?;
        if bytes.len() - 4 > MAX_TOOL_CALL {
            return Err(AgentError::new(
                "too_large",
                format!(
                    "a tool call is at most {MAX_TOOL_CALL} bytes encoded; this one is {}",
                    bytes.len() - 4
                ),
                false,
            ));
        }
        self.shared
            .send_encoded(&bytes)
            .map_err(|e| AgentError::new("io", e.to_string(), true))?;
        loop {
            match self.events.recv() {
                Ok(Event::ToolResult(r)) if r.call_id == call_id => return r.result,
                Ok(Event::ToolResult(_)) => {} // answer to an abandoned call
                Ok(Event::Cancel(id)) if id == self.task_id => {
                    self.shared.cancelled.store(true, Ordering::SeqCst);
                    return Err(AgentError::new("cancelled", "task cancelled", false));
                }
                Ok(other) => self.deferred.push(other),
                Err(_) => return Err(AgentError::new("io", "supervisor went away", true)),
            }
        }
    }

    /// [`Ctx::call_tool`] with its error typed: a [`ToolError`] whose [`ToolErrorKind`] says
    /// what the supervisor's broker decided (`permission_denied`, `timeout`, …).
    pub fn tool<A: Serialize + 'static>(
        &mut self,
        tool: &str,
        args: A,
    ) -> Result<Value, ToolError> {
        self.call_tool(tool, args).map_err(ToolError::from)
    }

    /// Run a task on agent `name` as a step of this one and return its output. The supervisor
    /// runs it as a child of this task, in the same run, within this agent's quotas
    /// (`max_depth`, `max_children`); the tool `agent:NAME` must be in the contract and granted
    /// in the config. A failed child is a `ToolError` of kind `agent_failed`, a quota
    /// exceeded one of kind `quota_exceeded`.
    pub fn call_agent<I: Serialize + 'static>(
        &mut self,
        name: &str,
        input: I,
    ) -> Result<Value, ToolError> {
        self.tool(&format!("agent:{name}"), input)
    }

    /// Notes handed down with this task.
    pub fn memory(&self) -> &[Value] {
        &self.memory_in
    }

    /// Add a note to hand downstream (after the notes received).
    pub fn remember(&mut self, note: impl Into<Value>) {
        self.memory_out.push(note.into());
    }

    /// Whether the supervisor asked to cancel this task or shut down.
    pub fn cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// The agent's configured name.
    pub fn agent_id(&self) -> &str {
        &self.hello.agent_id
    }

    /// The run this attempt belongs to.
    pub fn run_id(&self) -> &str {
        &self.hello.run_id
    }

    /// Attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.hello.attempt
    }

    /// This task's id.
    pub fn task_id(&self) -> u64 {
        self.task_id
    }

    /// Hooks for agents that test supervisors by misbehaving on purpose. Not for real agents.
    pub fn misbehave(&self) -> Misbehave<'_> {
        Misbehave { ctx: self }
    }
}

/// Deliberate misbehaviour, for testing supervisors (see the `chaos` example agent).
pub struct Misbehave<'a> {
    ctx: &'a Ctx,
}

impl Misbehave<'_> {
    /// Stop sending heartbeats for good.
    pub fn stop_heartbeats(&self) {
        self.ctx.shared.beats_stopped.store(true, Ordering::SeqCst);
    }

    /// Ignore `Shutdown` and SIGTERM from now on.
    pub fn ignore_shutdown(&self) {
        self.ctx
            .shared
            .ignore_shutdown
            .store(true, Ordering::SeqCst);
    }

    /// Write raw bytes on the beat pipe (fd 6), bypassing the beat format. Returns what one
    /// `write` returned (the pipe does not block: a full pipe is `WouldBlock`).
    pub fn write_beat_raw(&self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.ctx.shared.beat.as_ref() {
            Some(mut b) => b.write(bytes),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no beat pipe (fd 6) was given",
            )),
        }
    }

    /// Write raw bytes on the agent→supervisor pipe, bypassing framing.
    pub fn write_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self
            .ctx
            .shared
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        w.write_all(bytes)
    }
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid argument.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Run an agent with a typed handler. Returns the process exit code for `main`.
pub fn run<I, O, F>(contract: Contract, mut handler: F) -> ExitCode
where
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
    F: FnMut(&mut Ctx, I) -> Result<O, AgentError>,
{
    run_value(contract, move |ctx, input| {
        let typed: I = corral_proto::value::from_value_owned(input)
            .map_err(|e| AgentError::new("invalid_input", e.to_string(), false))?;
        let out = handler(ctx, typed)?;
        corral_proto::value::to_value_owned(out)
            .map_err(|e| AgentError::new("invalid_output", e.to_string(), false))
    })
}

/// Run an agent with a handler over raw [`Value`]s.
pub fn run_value<F>(contract: Contract, handler: F) -> ExitCode
where
    F: FnMut(&mut Ctx, Value) -> Result<Value, AgentError>,
{
    match serve(contract, handler) {
        Ok(code) => code,
        Err(SdkError::NotUnderCorral) => {
            eprintln!("{}", SdkError::NotUnderCorral);
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("corral-sdk: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve<F>(contract: Contract, mut handler: F) -> Result<ExitCode, SdkError>
where
    F: FnMut(&mut Ctx, Value) -> Result<Value, AgentError>,
{
    if !fd_is_open(DOWN_FD) || !fd_is_open(UP_FD) {
        return Err(SdkError::NotUnderCorral);
    }
    // SAFETY: both descriptors were checked open above; corral hands them to this process and
    // nothing else in it owns them, so taking ownership here is sound.
    let (down, up) = unsafe { (File::from_raw_fd(DOWN_FD), File::from_raw_fd(UP_FD)) };
    let mut reader = FrameReader::new(down);
    let hello = match reader.read_frame::<Down>()? {
        Some(Down::Hello(h)) => h,
        Some(other) => {
            return Err(SdkError::Protocol(format!(
                "expected Hello first, got {other:?}"
            )))
        }
        None => return Err(SdkError::Protocol("supervisor closed before Hello".into())),
    };
    let max_frame = hello.max_frame.max(1024);
    let shared = Arc::new(Shared {
        writer: Mutex::new(up),
        progress: AtomicU64::new(0),
        busy: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        ignore_shutdown: AtomicBool::new(false),
        beats_stopped: AtomicBool::new(false),
        beat: open_beat_pipe(),
    });
    if hello.protocol != PROTOCOL_VERSION {
        let msg = corral_proto::message::version_mismatch(hello.protocol, PROTOCOL_VERSION);
        let _ = shared.send(&Up::Failed(Failed {
            task_id: 0,
            error: AgentError::new("protocol_mismatch", msg.clone(), false),
        }));
        eprintln!("corral-sdk: {msg}");
        return Ok(ExitCode::from(2));
    }
    shared.send(&Up::Ready(Ready {
        protocol: PROTOCOL_VERSION,
        contract,
    }))?;

    let (tx, rx) = channel();
    spawn_io(
        reader.into_inner(),
        FrameDecoder::new(max_frame),
        &shared,
        tx,
        Duration::from_millis(hello.heartbeat_interval_ms.max(1)),
    );

    let mut ctx = Ctx {
        shared: shared.clone(),
        events: rx,
        hello,
        task_id: 0,
        memory_in: Vec::new(),
        memory_out: Vec::new(),
        next_call: 0,
        deferred: Vec::new(),
    };
    loop {
        let ev = if ctx.deferred.is_empty() {
            match ctx.events.recv() {
                Ok(ev) => ev,
                Err(_) => return Ok(ExitCode::SUCCESS),
            }
        } else {
            ctx.deferred.remove(0)
        };
        match ev {
            Event::Task(task) => {
                ctx.task_id = task.task_id;
                ctx.memory_in = task.memory;
                ctx.memory_out.clear();
                shared.cancelled.store(false, Ordering::SeqCst);
                shared.busy.store(true, Ordering::SeqCst);
                let result = catch_unwind(AssertUnwindSafe(|| handler(&mut ctx, task.input)));
                shared.busy.store(false, Ordering::SeqCst);
                let msg = match result {
                    Ok(Ok(output)) => {
                        let mut memory = std::mem::take(&mut ctx.memory_in);
                        memory.append(&mut ctx.memory_out);
                        Up::Done(Done {
                            task_id: ctx.task_id,
                            output,
                            memory,
                        })
                    }
                    Ok(Err(error)) => Up::Failed(Failed {
                        task_id: ctx.task_id,
                        error,
                    }),
                    Err(payload) => {
                        let text = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "handler panicked".into());
                        Up::Failed(Failed {
                            task_id: ctx.task_id,
                            error: AgentError::new("panic", text, true),
                        })
                    }
                };
                shared.send_encoded(&answer(msg, ctx.hello.max_frame)?)?;
            }
            Event::Shutdown => return Ok(ExitCode::SUCCESS),
            Event::Cancel(_) | Event::ToolResult(_) => {} // nothing running: nothing to cancel
        }
    }
}

/// A task's answer as a frame. An output that cannot be sent (nested past the protocol's limit,
/// or over `max_frame` with its memory) becomes a `Failed` saying why (`invalid_output`,
/// `too_large`) instead of a frame the supervisor would refuse.
fn answer(msg: Up, max_frame: u32) -> Result<Vec<u8>, SdkError> {
    let Up::Done(done) = &msg else {
        return Ok(frame::encode(&msg)?);
    };
    let task_id = done.task_id;
    let error = match frame::encode(&msg) {
        Ok(bytes) if bytes.len() - 4 <= max_frame as usize => return Ok(bytes),
        Ok(bytes) => AgentError::new(
            "too_large",
            format!(
                "the output (with its memory) cannot be sent: a frame of {} bytes is over the \
                 maximum of {max_frame}",
                bytes.len() - 4
            ),
            false,
        ),
        Err(e) => AgentError::new(
            "invalid_output",
            format!("the output cannot be sent: {e}"),
            false,
        ),
    };
    Ok(frame::encode(&Up::Failed(Failed { task_id, error }))?)
}

/// The beat pipe, when corral gave one (see `corral_proto::beat`): beats there cost the
/// supervisor no wake-up. Without it, beats are `Heartbeat` frames on fd 4.
fn open_beat_pipe() -> Option<File> {
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
fn spawn_io(
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
