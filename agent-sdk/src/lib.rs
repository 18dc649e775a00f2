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

use corral_proto::frame::{self, FrameDecoder, FrameReader};
use corral_proto::{
    Done, Down, Failed, Hello, Log, LogLevel, Ready, ToolCall, Up, PROTOCOL_VERSION,
};
use serde::{de::DeserializeOwned, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use corral_proto::{AgentError, Contract, Schema, SideEffects, Value};
pub use tool_error::{ToolError, ToolErrorKind};

mod io;
mod tool_error;

use io::{open_beat_pipe, spawn_io};

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
