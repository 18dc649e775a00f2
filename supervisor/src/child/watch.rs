//! The watch: the event loop of one attempt while its agent runs, the I/O around the
//! [`Protocol`] machine.
//!
//! On each wake-up it asks the attempt's poller which of the agent's fds are ready and handles
//! them by priority: the owner's stop, the exit, the timer, tool answers, room on the down
//! pipe, the agent's frames (read into a bounded decoder and handed to the machine), and last
//! its output (see `logs`). It writes what the machine says without blocking (see `wire`),
//! relays tool calls to the owner and their answers back, reads the beat pipe only when a
//! watchdog is due (a beat costs no wake-up), takes health samples when awake anyway, and ends
//! on the process's exit, the owner's stop, or a watchdog. One timer per attempt, moved early
//! onto a grid of the monotonic clock so that agents beating in step share wake-ups.
//!
//! What it keeps while the agent is idle is small on purpose (a thousand idle agents each keep
//! one): the sources are polled in place (no future built per turn), one readiness
//! registration serves all the agent's fds, and buffers are given back once empty.
//!
//! Past ~600 lines on purpose: the loop's order of priorities is the point of this room and
//! reads best in one place; the protocol machine, the wire, the log sink and the cancel
//! handling are rooms of their own.

use super::bounds;
use super::guard::Teardown;
use super::health::Health;
use super::logs::Logs;
use super::poller::{Poller, Ready};
use super::protocol::{Protocol, Step};
use super::verdict::Verdict;
use super::wire::{self, Beats, ReadState, Wire};
use super::{
    AttemptEvent, AttemptSpec, ServiceQueue, ServiceTask, ToolNote, ToolRequest, ToolSink,
};
use crate::record::ExitReason;
use corral_proto::beat::monotonic_ns;
use corral_proto::{AgentError, Up, Value};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The grid watchdog checks are moved onto (at most the heartbeat interval): see
/// [`next_wake`].
const WAKE_GRID: Duration = Duration::from_millis(100);

/// Tool calls a broker called in the attempt's task ([`ToolSink::Broker`]) may answer in place
/// in one pass over the frames read; the rest of the pass's calls go to tasks of their own.
/// (Each answered in place leaves no call outstanding, so the bound on outstanding calls would
/// not hold back an agent that floods small calls: this does, a pass at a time.)
const INLINE_PER_PASS: u8 = 64;

/// A call relayed to the owner, waiting for its answer.
type ToolWait = (
    u64,
    oneshot::Receiver<Result<Value, AgentError>>,
    std::sync::Arc<ToolNote>,
);

/// The owner's tool broker, and the calls waiting for its answers.
struct Tools {
    sink: Option<ToolSink>,
    /// Made at the attempt's first call (most attempts of an idle agent make none).
    calls: Option<Box<Calls>>,
}

/// The calls of an attempt that made one.
struct Calls {
    waits: Vec<ToolWait>,
    /// The workspace opened at the first call, for all the attempt's calls.
    dir: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// The workspace at `path` opened (`O_PATH`) for the file tools; `None` if it cannot be (they
/// then open its path at each call).
fn open_dir(path: &std::path::Path) -> Option<std::sync::Arc<std::os::fd::OwnedFd>> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).ok()?;
    Some(std::sync::Arc::new(fd))
}

/// What woke the watch.
enum Wake {
    Up,
    Tool(u64, Result<Value, AgentError>, std::sync::Arc<ToolNote>),
    Writable,
    Logs(Ready),
    Exited,
    Stop(ExitReason),
    Timer,
    /// The agent's fds cannot be watched any more.
    Lost(std::io::Error),
    /// A service agent's next task (`None`: its queue is closed, the agent is no longer
    /// wanted).
    Task(Option<ServiceTask>),
    /// The owner cancelled the service agent's running task.
    Cancel,
}

/// A service agent's queue, and the wait for its next task (kept across turns, like the stop
/// wait; only polled while the agent is idle).
pub(super) struct Service {
    queue: ServiceQueue,
    next: Option<Pin<Box<dyn Future<Output = Option<ServiceTask>> + Send>>>,
    /// The task running.
    pub(super) current: Option<ServiceTask>,
    /// The wait for the running task's cancel, and the end of the agent's grace once sent
    /// (see `cancel`).
    pub(super) cancel_wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    pub(super) cancel_by: Option<Instant>,
}

impl Service {
    pub(super) fn new(queue: ServiceQueue) -> Service {
        Service {
            queue,
            next: None,
            current: None,
            cancel_wait: None,
            cancel_by: None,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<ServiceTask>> {
        let queue = &self.queue;
        let fut = self.next.get_or_insert_with(|| {
            let q = queue.clone();
            Box::pin(async move { q.recv().await.ok() })
        });
        match fut.as_mut().poll(cx) {
            Poll::Ready(t) => {
                self.next = None;
                Poll::Ready(t)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The owner's stop request, awaited by one future kept for the whole watch (made again only
/// when the value changed to "no stop"), on a clone of the receiver so that the value can be
/// read while it waits.
pub(super) struct StopWait {
    fut: Option<Pin<Box<StopFuture>>>,
}

type StopFuture =
    dyn Future<Output = (Option<ExitReason>, watch::Receiver<Option<ExitReason>>)> + Send;

impl StopWait {
    pub(super) fn new(rx: watch::Receiver<Option<ExitReason>>) -> StopWait {
        let mut w = StopWait { fut: None };
        w.arm(rx);
        w
    }

    fn arm(&mut self, mut rx: watch::Receiver<Option<ExitReason>>) {
        self.fut = Some(Box::pin(async move {
            if rx.changed().await.is_err() {
                // The owner is gone without asking for a stop: nothing will ever come.
                std::future::pending::<()>().await;
            }
            let v = *rx.borrow_and_update();
            (v, rx)
        }));
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ExitReason> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready((Some(reason), _)) => {
                self.fut = None;
                Poll::Ready(reason)
            }
            Poll::Ready((None, rx)) => {
                self.arm(rx);
                // Registers the new future's waker.
                self.poll(cx)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An attempt's state while its agent runs, grouped by concern.
pub(super) struct Watch {
    /// The attempt.
    pub(super) spec: AttemptSpec,
    /// The conversation.
    pub(super) proto: Protocol,
    /// The pipes it travels on.
    pub(super) wire: Wire,
    /// What says which of the agent's fds are ready.
    pub(super) poller: Poller,
    /// Its stdout and stderr.
    pub(super) logs: Logs,
    /// The beat pipe.
    pub(super) beats: Beats,
    /// Health samples.
    pub(super) health: Health,
    tools: Tools,
    /// Calls the broker may still answer in place in this pass ([`INLINE_PER_PASS`]).
    inline_left: u8,
    /// The up pipe ended mid-frame: why (usually the agent died writing; its exit says more).
    pub(super) truncated: Option<String>,
    /// A service agent's queue and task.
    pub(super) service: Option<Box<Service>>,
    /// The pools' top-up after this spawn, run once the agent is ready (or the attempt ends).
    /// (Boxed: an idle agent keeps the field, empty, for as long as it runs.)
    pub(super) refill: Option<Box<super::launch::Refill>>,
    /// `Log` lines read in this wake-up, for the notes (see `handle_buffered`).
    log_batch: Vec<super::LogLine>,
    /// Kills and reaps the process (and removes the cgroup and workspace) if this is dropped
    /// before the teardown. (Last: dropped after the rest.)
    pub(super) guard: Teardown,
}

impl Drop for Watch {
    /// An attempt dropped before its agent was ready (its call dropped, say) still has its
    /// pools topped up.
    fn drop(&mut self) {
        if let Some(refill) = self.refill.take() {
            refill.run();
        }
    }
}

impl Watch {
    pub(super) fn new(
        spec: AttemptSpec,
        guard: Teardown,
        proto: Protocol,
        (wire, poller, logs): (Wire, Poller, Logs),
        beats: Beats,
        tools: Option<ToolSink>,
    ) -> Watch {
        Watch {
            spec,
            proto,
            wire,
            poller,
            logs,
            beats,
            health: Health::default(),
            tools: Tools {
                sink: tools,
                calls: None,
            },
            inline_left: INLINE_PER_PASS,
            truncated: None,
            service: None,
            refill: None,
            log_batch: Vec::new(),
            guard,
        }
    }

    fn agent_name(&self) -> &str {
        &self.spec.agent.name
    }

    /// Carry out a step of the protocol at `now`; `Some` when it ends the attempt.
    fn carry_out(&mut self, step: Step, now: Instant) -> Option<Verdict> {
        match step {
            Step::Continue => None,
            Step::Send(msg) => {
                self.wire.send(&msg, &self.poller);
                None
            }
            Step::Ready(task) => {
                self.spec.emit(|| AttemptEvent::Ready {
                    agent: self.agent_name().to_string(),
                    attempt: self.spec.attempt,
                    pid: self.guard.pid(),
                    at: now,
                });
                // The next stem is made now, not at the spawn, and the pools topped up: their
                // making would compete with this agent's own start for the CPU.
                self.spec.refill_stem();
                if let Some(refill) = self.refill.take() {
                    refill.run();
                }
                match task {
                    Some(Ok(frame)) => {
                        self.wire.send_encoded(&frame, &self.poller);
                        None
                    }
                    Some(Err(v)) => Some(v),
                    None => None,
                }
            }
            Step::Served(result) => {
                if let Some(task) = self.service.as_mut().and_then(|s| s.end()) {
                    let task_id = task.task.task_id;
                    // (The owner may have stopped waiting: nothing to do then.)
                    let _ = task.reply.send(result);
                    self.spec.emit(|| AttemptEvent::TaskEnded { task_id });
                }
                None
            }
            Step::Relay(call) => {
                let call_id = call.call_id;
                let (seq, contract_tools) = self.proto.call_context(call_id);
                let tools = &mut self.tools;
                let workspace = self.guard.workspace_path();
                let mut sent = None;
                if let Some(sink) = tools.sink.as_ref() {
                    let calls = tools.calls.get_or_insert_with(|| {
                        // Opened at the attempt's first call, shared by the rest.
                        Box::new(Calls {
                            waits: Vec::new(),
                            dir: workspace.and_then(open_dir),
                        })
                    });
                    let (reply, mut rx) = oneshot::channel();
                    let note = std::sync::Arc::new(ToolNote::default());
                    let req = ToolRequest {
                        agent: self.spec.agent.name.clone(),
                        call,
                        reply,
                        run_id: self.spec.run_id.clone(),
                        task: match &self.spec.task {
                            Some(t) => t.to_string(),
                            None => self.spec.agent.name.clone(),
                        },
                        attempt: self.spec.attempt,
                        seq,
                        contract_tools,
                        spec: self.spec.agent.clone(),
                        workspace: workspace.map(std::path::Path::to_path_buf),
                        workspace_dir: calls.dir.clone(),
                        note: note.clone(),
                    };
                    sent = Some(match sink {
                        // Past the calls a pass may answer in place, the rest go to tasks of
                        // their own: they stay outstanding until answered, so the agent's bound
                        // on outstanding calls applies again (a flood is refused, cheaply).
                        ToolSink::Broker(broker) if self.inline_left == 0 => {
                            broker.dispatch_on_task(req);
                            true
                        }
                        ToolSink::Broker(broker) => {
                            self.inline_left -= 1;
                            broker.dispatch(req);
                            // Answered at once (the common case): down the pipe now.
                            match rx.try_recv() {
                                Ok(result) => {
                                    self.send_answer(call_id, result, &note);
                                    return None;
                                }
                                Err(oneshot::error::TryRecvError::Closed) => {
                                    let dropped = Err(Protocol::broker_dropped());
                                    self.send_answer(call_id, dropped, &note);
                                    return None;
                                }
                                Err(oneshot::error::TryRecvError::Empty) => true,
                            }
                        }
                        ToolSink::Channel(tx) => match tx.try_send(req) {
                            Ok(()) => true,
                            // The owner is busy (its channel full): the call waits for room,
                            // as any call waits for its answer, instead of failing. What waits
                            // so is bounded by the agent's outstanding calls.
                            Err(mpsc::error::TrySendError::Full(req)) => {
                                let tx = tx.clone();
                                tokio::spawn(async move {
                                    // Closed meanwhile: the request is dropped, and with it
                                    // the reply, which answers the call `unavailable`.
                                    let _ = tx.send(req).await;
                                });
                                true
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => false,
                        },
                    });
                    if sent == Some(true) {
                        if let Some(calls) = self.tools.calls.as_mut() {
                            calls.waits.push((call_id, rx, note));
                        }
                    }
                }
                // No broker, or it is gone: the call is answered now.
                if sent != Some(true) {
                    let answer = self
                        .proto
                        .answer(call_id, Err(Protocol::broker_gone()), now);
                    self.wire.send(&answer, &self.poller);
                }
                None
            }
            Step::Log(level, text) => {
                // Escaped, so that it stays one line of the supervisor's log (only when that
                // log is written: the arguments are evaluated then).
                tracing::info!(agent = %self.agent_name(), pid = self.guard.pid(), level = ?level, "{}", bounds::escape(&text));
                if self.spec.notes.is_some() {
                    self.log_batch.push(super::LogLine { level, text });
                }
                None
            }
            Step::End(v) => Some(v),
        }
    }

    /// The owner's answer to tool call `call_id`: sent first, then traced and noted (the
    /// journal's note built) after.
    fn send_answer(&mut self, call_id: u64, result: Result<Value, AgentError>, note: &ToolNote) {
        let now = Instant::now();
        let sent = self.wire.send_tool_result(call_id, result, &self.poller);
        self.proto.answered(call_id, sent, now, note.get());
    }

    /// Decode and handle the complete frames buffered, until the agent is backpressured (the
    /// frames left wait in the decoder). The `Log` lines among them go to the notes together,
    /// before any other frame's note and at the end.
    fn handle_buffered(&mut self, now: Instant) -> Option<Verdict> {
        self.inline_left = INLINE_PER_PASS;
        let verdict = self.handle_frames(now);
        self.flush_logs();
        verdict
    }

    fn handle_frames(&mut self, now: Instant) -> Option<Verdict> {
        while !self.wire.backpressured() {
            if let Err(e) = bounds::check_head(self.wire.decoder.peek_head()) {
                return Some(Verdict::violation(e.to_string()));
            }
            match self.wire.decoder.next::<Up>() {
                Ok(Some(msg)) => {
                    if !matches!(msg, Up::Log(_)) {
                        // What this frame notes comes after the lines before it.
                        self.flush_logs();
                    }
                    let step = self.proto.on_frame(msg, now);
                    if let Some(v) = self.carry_out(step, now) {
                        return Some(v);
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(Verdict::violation(wire::frame_error(e))),
            }
        }
        None
    }

    /// Hand the `Log` lines gathered to the notes, as one.
    fn flush_logs(&mut self) {
        if self.log_batch.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.log_batch);
        if let Some(notes) = &self.spec.notes {
            notes(super::Note::Logs(lines));
        }
    }

    /// The watchdog that is due now, if any. Beats are read first when the one due is `hung`
    /// or `stalled`: only they tell whether it really is.
    fn overdue(&mut self) -> Option<(Instant, ExitReason)> {
        let due = self.proto.overdue(Instant::now())?;
        if matches!(due.1, ExitReason::Hung | ExitReason::Stalled) {
            self.beats.absorb(&mut self.proto);
            return self.proto.overdue(Instant::now());
        }
        Some(due)
    }

    /// The verdict of the watchdog `due`, reported as an event.
    fn fire(&mut self, (due, why): (Instant, ExitReason)) -> Verdict {
        self.spec.emit(|| AttemptEvent::Watchdog {
            agent: self.agent_name().to_string(),
            pid: self.guard.pid(),
            reason: why,
            late_us: Instant::now().saturating_duration_since(due).as_micros() as u64,
        });
        self.proto.timeout_verdict(why, self.wire.unread())
    }

    /// Take a health sample if one is due by `now + early`, and report it.
    fn sample(&mut self, now: Instant, early: Duration) {
        let agent = &self.spec.agent;
        let under_init = agent.namespaces.contains(&crate::config::Namespace::Pid);
        if let Some(s) = self.health.sample(
            self.guard.pid(),
            under_init,
            now,
            early,
            agent.sample_interval,
        ) {
            self.spec.emit(|| AttemptEvent::Sample {
                agent: agent.name.clone(),
                pid: self.guard.pid(),
                rss_kb: s.rss_kb,
                cpu_ms: s.cpu_ms,
            });
        }
    }

    /// When the watch must wake next: a watchdog's deadline or the next health sample, moved
    /// onto the grid (see [`next_wake`]).
    fn next_wake(&self) -> Instant {
        let (deadline, _) = self.proto.next_deadline();
        let agent = &self.spec.agent;
        let exact = match self.health.next_due(agent.sample_interval) {
            Some(t) => deadline.min(t),
            None => deadline,
        };
        let exact = self.cancel_deadline().map_or(exact, |c| c.min(exact));
        let grid = agent
            .heartbeat_interval
            .clamp(Duration::from_millis(1), WAKE_GRID);
        match monotonic_ns() {
            Some(mono_now) => next_wake(exact, Instant::now(), mono_now, grid),
            None => exact,
        }
    }

    /// The event loop: frames, exit, watchdogs, tool results, stop requests.
    ///
    /// (An `async` block rather than an `async fn`: each idle agent keeps this future, and an
    /// `async fn` would keep its arguments twice.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    pub(super) fn run(
        &mut self,
        mut stop_wait: StopWait,
    ) -> impl Future<Output = Verdict> + Send + '_ {
        async move {
            // One timer per attempt in the runtime's wheel. It is moved earlier when a deadline
            // comes closer, but not later on every frame: when it fires early, the loop re-arms
            // it for the real deadline. A heartbeat therefore costs no timer operation (and a beat
            // on the beat pipe no wake-up at all: beats are read when the timer fires).
            let sleep = tokio::time::sleep_until(self.next_wake().into());
            tokio::pin!(sleep);
            loop {
                self.proto
                    .set_blocked(self.wire.backpressured(), Instant::now());
                self.wire.watch_up(&self.poller);
                let wake_at = self.next_wake();
                if wake_at < sleep.deadline().into_std() {
                    sleep.as_mut().reset(wake_at.into());
                }
                // Checked here as well as by the timer: an agent flooding frames keeps the read
                // branch ready, and must not keep its watchdog from firing.
                if let Some(due) = self.overdue() {
                    return self.fire(due);
                }
                let wake =
                    std::future::poll_fn(|cx| self.poll_wake(cx, &mut stop_wait, sleep.as_mut()))
                        .await;
                match wake {
                    Wake::Up => {
                        let now = Instant::now();
                        let state = match self.wire.read_available(4) {
                            Ok(state) => state,
                            Err(e) => return Verdict::violation(e),
                        };
                        if let Some(v) = self.handle_buffered(now) {
                            return v;
                        }
                        self.wire.settle();
                        if state == ReadState::Eof {
                            self.wire.up_open = false;
                            // (Whole frames held back by backpressure are no truncation.)
                            if !self.wire.backpressured() {
                                if let Err(e) = self.wire.decoder.finish() {
                                    // The writer end closed mid-frame: usually the agent died
                                    // while writing; its exit tells more.
                                    self.truncated = Some(e.to_string());
                                }
                            }
                        }
                        self.sample(now, Duration::ZERO);
                    }
                    Wake::Tool(call_id, result, note) => {
                        self.send_answer(call_id, result, &note);
                    }
                    Wake::Writable => {
                        self.wire.flush(&self.poller);
                        // The agent read: frames held back meanwhile are handled now.
                        if let Some(v) = self.handle_buffered(Instant::now()) {
                            return v;
                        }
                    }
                    Wake::Logs(ready) => {
                        self.logs
                            .read(ready, &self.spec.agent.name, self.guard.pid());
                    }
                    Wake::Exited => return Verdict::exited(),
                    Wake::Stop(reason) => {
                        let (say, verdict) = self.proto.on_stop(reason);
                        if let Some(msg) = say {
                            self.wire.send(&msg, &self.poller);
                        }
                        return verdict;
                    }
                    Wake::Timer => {
                        // Re-check: events (and beats, read now) may have moved the deadline. The
                        // beats are read even when the wake-up came early (on the grid), so that
                        // an agent that is alive is not woken for again at its exact deadline.
                        self.beats.absorb(&mut self.proto);
                        if let Some(due) = self.overdue() {
                            return self.fire(due);
                        }
                        if let Some(v) = self.cancel_overdue(Instant::now()) {
                            return v;
                        }
                        // A sample due within a quarter of its interval is taken now rather than
                        // with a wake-up of its own.
                        let quarter = self.spec.agent.sample_interval / 4;
                        self.sample(Instant::now(), quarter);
                        sleep.as_mut().reset(self.next_wake().into());
                    }
                    Wake::Lost(e) => {
                        let message = format!("watching the agent's process failed: {e}");
                        return Verdict::ended(ExitReason::Lost, message, true, false);
                    }
                    Wake::Task(None) => {
                        let message =
                            "service agent no longer wanted (its queue closed)".to_string();
                        return Verdict::ended(ExitReason::Shutdown, message, false, true);
                    }
                    Wake::Task(Some(task)) => self.start_service_task(task, Instant::now()),
                    Wake::Cancel => self.cancel_task(Instant::now()),
                }
            }
        }
    }

    /// What woke the watch. Sources are polled in place (no future is built per turn); the
    /// agent's fds are asked once, through the poller. The owner's stop, the exit and the timer
    /// come first so that a flooding agent, whose pipes are always ready, cannot hide them;
    /// its output comes last.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        stop_wait: &mut StopWait,
        sleep: Pin<&mut tokio::time::Sleep>,
    ) -> Poll<Wake> {
        if let Poll::Ready(reason) = stop_wait.poll(cx) {
            return Poll::Ready(Wake::Stop(reason));
        }
        let ready = match self.poller.poll(cx) {
            Poll::Ready(Ok(ready)) => ready,
            Poll::Ready(Err(e)) => return Poll::Ready(Wake::Lost(e)),
            Poll::Pending => Ready::default(),
        };
        if ready.has(Ready::EXIT) {
            return Poll::Ready(Wake::Exited);
        }
        if sleep.poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        if self.proto.idle() {
            if let Some(service) = self.service.as_mut() {
                if let Poll::Ready(t) = service.poll_next(cx) {
                    return Poll::Ready(Wake::Task(t));
                }
            }
        }
        if let Some(service) = self.service.as_mut() {
            if service.poll_cancel(cx).is_ready() {
                return Poll::Ready(Wake::Cancel);
            }
        }
        if let Some(calls) = self.tools.calls.as_mut() {
            let waits = &mut calls.waits;
            for i in 0..waits.len() {
                if let Poll::Ready(r) = Pin::new(&mut waits[i].1).poll(cx) {
                    let (id, _, note) = waits.swap_remove(i);
                    let r = r.unwrap_or_else(|_| Err(Protocol::broker_dropped()));
                    return Poll::Ready(Wake::Tool(id, r, note));
                }
            }
        }
        if ready.has(Ready::DOWN) {
            return Poll::Ready(Wake::Writable);
        }
        if ready.has(Ready::UP) {
            return Poll::Ready(Wake::Up);
        }
        if ready.has(Ready::STDOUT) || ready.has(Ready::STDERR) {
            return Poll::Ready(Wake::Logs(ready));
        }
        // (Nothing ready: the poller has registered this task's waker.)
        Poll::Pending
    }

    /// Handle the frames the agent wrote before it exited (non-blocking). Returns a verdict
    /// when one of them ends the task (e.g. `Done` raced with the exit).
    pub(super) fn drain_after_exit(&mut self) -> Option<Verdict> {
        if self.proto.completed() {
            return None;
        }
        // The agent is gone: nothing more can be said to it, so nothing holds its frames back,
        // and its tool calls have nowhere to go.
        self.wire.close_down();
        self.proto.no_tools();
        loop {
            let state = self.wire.read_available(4);
            if let Some(v) = self.handle_buffered(Instant::now()) {
                return Some(v);
            }
            if !matches!(state, Ok(ReadState::More)) {
                return None;
            }
        }
    }

    /// Read the beats not read yet: they still tell when the agent was last alive, and how far
    /// it got. Then the beat pipe is closed.
    pub(super) fn last_beats(&mut self) {
        self.beats.absorb(&mut self.proto);
        self.beats.close();
    }
}

/// `exact` (an instant after `now`, which is `mono_now` on the system's monotonic clock), moved
/// earlier onto a grid of that clock, so that the wake-ups of many agents coincide and the
/// runtime wakes once for all of them (a thousand agents whose checks were spread over the
/// second woke it ~200 times a second). Early is harmless: if nothing is due yet, the next
/// wake is the exact deadline, so a real hang is caught on time. `exact` itself when no point
/// of the grid lies between.
fn next_wake(exact: Instant, now: Instant, mono_now: u64, grid: Duration) -> Instant {
    let grid = (grid.as_nanos() as u64).max(1);
    let ahead = exact.saturating_duration_since(now).as_nanos() as u64;
    let at = mono_now.saturating_add(ahead);
    let on_grid = at - at % grid;
    if on_grid > mono_now {
        now + Duration::from_nanos(on_grid - mono_now)
    } else {
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_move_early_onto_the_grid() {
        let now = Instant::now();
        let ms = |n: u64| now + Duration::from_millis(n);
        let grid = Duration::from_millis(100);
        // 1.030 s on the monotonic clock; a deadline 250 ms ahead (1.280 s) wakes at 1.200 s.
        let mono = 1_030_000_000;
        assert_eq!(next_wake(ms(250), now, mono, grid), ms(170));
        // On the grid already: unchanged.
        assert_eq!(next_wake(ms(70), now, mono, grid), ms(70));
        // No grid point between now and the deadline: the deadline.
        assert_eq!(next_wake(ms(50), now, mono, grid), ms(50));
        // Overdue: at once.
        assert_eq!(next_wake(now, now, mono, grid), now);
    }
}
