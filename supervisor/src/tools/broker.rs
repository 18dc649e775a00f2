//! The [`Broker`]: the steps of a tool call (see the room's docs) over the configured tools.

use super::approve::{ApprovalRequest, Approver};
use super::ledger::{DedupKey, DedupTrace, LedgerEntry, LedgerKey, MemoryLedger, ToolLedger};
use super::{command, err, fs, http, permitted, ErrorKind, ToolError};
use crate::child::Pools;
use crate::clock::{Clock, SystemClock};
use crate::config::{Approve, Config, Effect, ToolKind, ToolSpec};
use crate::policy::{Admission, Breaker};
use crate::{Supervisor, ToolRequest};
use corral_proto::{AgentError, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

/// Largest arguments a `command` or `http` tool is sent, as JSON, in bytes.
pub const MAX_ARGS_JSON: usize = 4 << 20;
/// Calls a broker handles at once, all runs together; more are answered `too_many_calls`.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Requests waiting in a broker's channel.
const CHANNEL: usize = 256;

/// `s` cut to at most `max` bytes (on a character boundary, marked `…`).
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One configured tool and its state.
struct Tool {
    spec: ToolSpec,
    slots: Option<Arc<Semaphore>>,
    breaker: Option<Mutex<Breaker>>,
    http: Option<http::Client>,
}

/// Serves the tool calls of any number of runs (see the room's docs). Cheap to share: wrap it
/// in an [`Arc`] and [`Broker::serve`] it, or call [`Broker::handle`] from a loop of your own.
pub struct Broker {
    tools: HashMap<String, Tool>,
    pools: Option<Pools>,
    ledger: Arc<dyn ToolLedger>,
    approver: Option<Arc<dyn Approver>>,
    dedup: DedupTrace,
    clock: Arc<dyn Clock>,
    in_flight: Arc<Semaphore>,
    executions: AtomicU64,
    /// Calls dispatched and answered at once.
    inline: AtomicU64,
    /// Built-in calls whose work was too large to do inline, sent to the blocking pool.
    offloaded: AtomicU64,
}

impl Broker {
    /// A broker of the tools of `config`, with an in-memory ledger and no approver (calls
    /// that need an approval are denied). Command tools need a sandbox: see
    /// [`Broker::for_supervisor`].
    pub fn new(config: &Config) -> Broker {
        let tools = config
            .tools
            .values()
            .map(|spec| {
                let tool = Tool {
                    slots: spec
                        .max_concurrency
                        .map(|n| Arc::new(Semaphore::new(n as usize))),
                    breaker: spec.breaker.clone().map(|b| Mutex::new(Breaker::new(b))),
                    http: matches!(spec.kind, ToolKind::Http(_)).then(|| http::Client::new(spec)),
                    spec: spec.clone(),
                };
                (spec.name.clone(), tool)
            })
            .collect();
        Broker {
            tools,
            pools: None,
            ledger: Arc::new(MemoryLedger::new()),
            approver: None,
            dedup: DedupTrace::default(),
            clock: Arc::new(SystemClock),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            executions: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            offloaded: AtomicU64::new(0),
        }
    }

    /// A broker of the tools of `sup`'s config whose command tools run in sandboxes made
    /// like its agents'.
    pub fn for_supervisor(sup: &Supervisor) -> Broker {
        let mut b = Broker::new(sup.config());
        b.pools = Some(sup.pools());
        if let Some(ledger) = sup.tool_ledger() {
            b.ledger = ledger;
        }
        b
    }

    /// Record destructive calls in `ledger` (instead of memory).
    pub fn with_ledger(mut self, ledger: Arc<dyn ToolLedger>) -> Broker {
        self.ledger = ledger;
        self
    }

    /// Ask `approver` about calls of tools with `approve = "ask"`.
    pub fn with_approver(mut self, approver: Arc<dyn Approver>) -> Broker {
        self.approver = Some(approver);
        self
    }

    /// Run the tools' circuit breakers on `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Broker {
        self.clock = clock;
        self
    }

    /// Calls executed so far (not answered from the trace or refused).
    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    /// A channel to give [`crate::CallOptions::tools`], and the task answering what arrives on
    /// it (each call as [`Broker::dispatch`] says, at most [`MAX_IN_FLIGHT`] at once). The task
    /// ends when every sender is gone.
    pub fn serve(self: &Arc<Self>) -> (mpsc::Sender<ToolRequest>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<ToolRequest>(CHANNEL);
        let broker = self.clone();
        let task = tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                broker.dispatch(req);
            }
        });
        (tx, task)
    }

    /// Answer `req` as [`Broker::serve`] does: at once, here, when nothing in it waits (a
    /// refusal, or a built-in's small work without approval or queue: the common case costs
    /// no task and no thread), else on a task of its own; past [`MAX_IN_FLIGHT`] calls in
    /// flight it is answered `too_many_calls`. Call it from a task of the runtime.
    pub fn dispatch(self: &Arc<Self>, req: ToolRequest) {
        self.dispatch_with(req, true)
    }

    /// [`Broker::dispatch`], but nothing of the call's work is done here: it goes to a task of
    /// its own at once (past `too_many_calls`). For an owner that has answered enough calls
    /// in place in one turn (see the attempt's `Watch`).
    pub fn dispatch_on_task(self: &Arc<Self>, req: ToolRequest) {
        self.dispatch_with(req, false)
    }

    fn dispatch_with(self: &Arc<Self>, req: ToolRequest, here_allowed: bool) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let e = ToolError::new(
                ErrorKind::TooManyCalls,
                format!("the tool broker has {MAX_IN_FLIGHT} calls in flight"),
            );
            let _ = req.reply.send(Err(e.to_agent()));
            return;
        };
        // A command or an http tool goes to its task at once (making a sandbox or a request
        // may take a while before it first waits); a built-in (or a refusal) is tried here.
        let here = here_allowed
            && match self.tools.get(&req.call.tool) {
                Some(tool) => matches!(tool.spec.kind, ToolKind::Builtin(_)),
                None => true,
            };
        let b = self.clone();
        let mut call = Box::pin(async move {
            b.handle(req).await;
            drop(permit);
        });
        if here {
            // Polled once here. Whatever it waits on registers the waker of each poll, so the
            // task that takes it over when it waits is the one woken.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if call.as_mut().poll(&mut cx).is_ready() {
                self.inline.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        tokio::spawn(call);
    }

    /// Built-in calls whose work went to the blocking pool (past what is done inline).
    pub fn offloaded(&self) -> u64 {
        self.offloaded.load(Ordering::Relaxed)
    }

    /// Calls [`Broker::dispatch`] answered at once, without a task of their own (a call sent
    /// to the blocking pool counts too when its work is done by its first poll).
    pub fn answered_inline(&self) -> u64 {
        self.inline.load(Ordering::Relaxed)
    }

    /// Answer one request (the answer goes to its `reply`, its note filled in).
    pub async fn handle(&self, req: ToolRequest) {
        let result = self.answer(&req).await;
        if let Err(e) = &result {
            tracing::debug!(agent = %req.agent, tool = %req.call.tool, "tool call refused or failed: {e}");
        }
        let _ = req.reply.send(result);
    }

    /// The answer to `req` (its note filled in); nothing is sent.
    pub async fn answer(&self, req: &ToolRequest) -> Result<Value, AgentError> {
        self.decide(req).await.map_err(|e| e.to_agent())
    }

    async fn decide(&self, req: &ToolRequest) -> Result<Value, ToolError> {
        permitted(req)?;
        let name = &req.call.tool;
        let Some(tool) = self.tools.get(name) else {
            return err(
                ErrorKind::UnknownTool,
                format!("tool `{name}` is granted but no such tool is configured"),
            );
        };
        let spec = &tool.spec;
        let encoded = corral_proto::frame::encode(&req.call.args).map_err(|e| {
            ToolError::new(
                ErrorKind::TooLarge,
                format!("the arguments cannot be encoded: {e}"),
            )
        })?;
        let args_hash = crate::policy::input_key(&encoded[4..]);
        req.note.set(|n| {
            n.args_bytes = encoded.len() as u64 - 4;
            n.args_hash = args_hash.clone();
        });
        drop(encoded);
        // Answered from the trace: an identical read, or a destructive call already made.
        let dedup_key = spec.dedup.then(|| DedupKey::of(req, spec, &args_hash));
        if let Some(k) = &dedup_key {
            if let Some(v) = self.dedup.get(&req.run_id, k) {
                req.note.set(|n| n.deduplicated = true);
                return self.within(spec, v, req);
            }
        }
        // The idempotency key of a destructive call.
        let key = (spec.effect == Effect::Destructive).then(|| LedgerKey {
            run_id: req.run_id.clone(),
            task: req.task.clone(),
            seq: req.seq,
        });
        if let Some(key) = &key {
            if let Some(v) = self.recorded(key, name, &args_hash)? {
                req.note.set(|n| n.deduplicated = true);
                return v.map_err(|e| ToolError {
                    kind: kind_named(&e.kind),
                    message: e.message,
                });
            }
        }
        if spec.approve == Approve::Ask || req.spec.approve_tools.iter().any(|t| t == name) {
            self.approve(req, spec).await?;
        }
        let probe = self.admit(tool)?;
        let _slot = match &tool.slots {
            Some(slots) => {
                let t0 = Instant::now();
                let slot = slots.clone().acquire_owned().await.ok();
                req.note
                    .set(|n| n.queued_ms = t0.elapsed().as_millis() as u64);
                slot
            }
            None => None,
        };
        if let Some(key) = &key {
            self.ledger
                .begin(key, name, &args_hash)
                .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("not run: {e}")))?;
        }
        self.executions.fetch_add(1, Ordering::Relaxed);
        // A command enforces its timeout itself (and kills its tree at it).
        let result = if matches!(spec.kind, ToolKind::Command(_)) {
            self.execute(tool, req).await
        } else {
            match tokio::time::timeout(spec.timeout, self.execute(tool, req)).await {
                Ok(r) => r,
                Err(_) => err(
                    ErrorKind::Timeout,
                    format!("tool `{name}` ran past its timeout ({:?})", spec.timeout),
                ),
            }
        };
        let result = result.and_then(|v| self.within(spec, v, req));
        self.learn(tool, &result, probe);
        if let Some(key) = &key {
            let recorded = result.clone().map_err(|e| e.to_agent());
            if let Err(e) = self.ledger.finish(key, &recorded) {
                tracing::warn!(tool = %name, run = %req.run_id, "tool ledger: {e}");
            }
        }
        if let (Some(k), Ok(v)) = (dedup_key, &result) {
            self.dedup.put(&req.run_id, k, v);
        }
        result
    }

    /// What the ledger recorded of a destructive call: its result, `unknown_outcome` when it
    /// began and never finished (or the agent now makes another call at that place).
    fn recorded(
        &self,
        key: &LedgerKey,
        tool: &str,
        args_hash: &str,
    ) -> Result<Option<Result<Value, AgentError>>, ToolError> {
        let entry = self
            .ledger
            .lookup(key)
            .map_err(|e| ToolError::new(ErrorKind::ToolFailed, format!("not run: {e}")))?;
        let same = |t: &str, h: &str| t == tool && h == args_hash;
        match entry {
            None => Ok(None),
            Some(LedgerEntry::Finished {
                tool: t,
                args_hash: h,
                result,
            }) if same(&t, &h) => Ok(Some(result)),
            Some(LedgerEntry::Started {
                tool: t,
                args_hash: h,
            }) if same(&t, &h) => err(
                ErrorKind::UnknownOutcome,
                format!(
                    "call {} of this task (`{tool}`) began in an earlier attempt and never \
                     finished: it may or may not have taken effect, and is not run again",
                    key.seq
                ),
            ),
            Some(_) => err(
                ErrorKind::UnknownOutcome,
                format!(
                    "call {} of this task was another call (tool or arguments) in an earlier \
                     attempt; what that did is not repeated and this one is not run",
                    key.seq
                ),
            ),
        }
    }

    /// Wait for an approval, at most `approve_timeout`.
    async fn approve(&self, req: &ToolRequest, spec: &ToolSpec) -> Result<(), ToolError> {
        let Some(approver) = &self.approver else {
            return err(
                ErrorKind::ApprovalDenied,
                format!(
                    "tool `{}` needs an approval and no one is asked (corral call --approve)",
                    spec.name
                ),
            );
        };
        let args = serde_json::to_string(&req.call.args.to_json()).unwrap_or_default();
        let ask = ApprovalRequest {
            agent: req.agent.clone(),
            run_id: req.run_id.clone(),
            attempt: req.attempt,
            tool: spec.name.clone(),
            call_id: req.call.call_id,
            args: clip(&args, 4096),
        };
        let t0 = Instant::now();
        let answer = tokio::time::timeout(spec.approve_timeout, approver.ask(ask)).await;
        req.note
            .set(|n| n.approval_ms = t0.elapsed().as_millis() as u64);
        match answer {
            Ok(Ok(true)) => Ok(()),
            Ok(_) => err(
                ErrorKind::ApprovalDenied,
                format!("the call of `{}` was not approved", spec.name),
            ),
            Err(_) => err(
                ErrorKind::ApprovalDenied,
                format!(
                    "no approval of `{}` within approve_timeout ({:?})",
                    spec.name, spec.approve_timeout
                ),
            ),
        }
    }

    /// The breaker's admission: `circuit_open` at once when open; whether this call probes.
    fn admit(&self, tool: &Tool) -> Result<bool, ToolError> {
        let Some(b) = &tool.breaker else {
            return Ok(false);
        };
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        match b.admit(self.clock.now()) {
            Admission::Closed => Ok(false),
            Admission::Probe => Ok(true),
            Admission::Rejected { retry_after } => err(
                ErrorKind::CircuitOpen,
                format!(
                    "the circuit breaker of tool `{}` is open; next probe in {} ms",
                    tool.spec.name,
                    retry_after.as_millis()
                ),
            ),
        }
    }

    /// Teach the breaker: failures and timeouts count, refusals do not.
    fn learn(&self, tool: &Tool, result: &Result<Value, ToolError>, _probe: bool) {
        let Some(b) = &tool.breaker else { return };
        let mut b = b.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        match result {
            Ok(_) => b.on_success(now),
            Err(e) if matches!(e.kind, ErrorKind::ToolFailed | ErrorKind::Timeout) => {
                b.on_failure(now)
            }
            Err(_) => b.on_uncounted(),
        }
    }

    /// `v` if it is within `max_response` encoded (its size noted).
    fn within(&self, spec: &ToolSpec, v: Value, req: &ToolRequest) -> Result<Value, ToolError> {
        let len = corral_proto::frame::encode(&v)
            .map(|b| b.len() as u64 - 4)
            .map_err(|e| {
                ToolError::new(
                    ErrorKind::TooLarge,
                    format!("the result cannot be sent: {e}"),
                )
            })?;
        req.note.set(|n| n.result_bytes = len);
        if len > spec.max_response {
            return err(
                ErrorKind::TooLarge,
                format!(
                    "the result of `{}` is {len} bytes encoded, more than max_response ({} bytes)",
                    spec.name, spec.max_response
                ),
            );
        }
        Ok(v)
    }

    async fn execute(&self, tool: &Tool, req: &ToolRequest) -> Result<Value, ToolError> {
        let spec = &tool.spec;
        match &spec.kind {
            ToolKind::Builtin(b) => {
                let (b, reach, max) = (*b, fs::Reach::of(req), spec.max_response);
                // Small work here and now; larger work on the blocking pool.
                if let Some(done) = fs::run_inline(b, &req.call.args, &reach, max) {
                    return done;
                }
                let (reach, args) = (reach.into_owned(), req.call.args.clone());
                self.offloaded.fetch_add(1, Ordering::Relaxed);
                tokio::task::spawn_blocking(move || fs::run(b, &args, &reach, max))
                    .await
                    .unwrap_or_else(|e| {
                        err(ErrorKind::ToolFailed, format!("the tool panicked: {e}"))
                    })
            }
            ToolKind::Command(sandbox) => {
                command::run(spec, sandbox, self.pools.as_ref(), req).await
            }
            ToolKind::Http(h) => match &tool.http {
                Some(client) => http::run(spec, h, client, &req.call.args).await,
                None => err(ErrorKind::ToolFailed, "no http client"),
            },
        }
    }
}

/// The kind of a recorded error, by name.
fn kind_named(name: &str) -> ErrorKind {
    use ErrorKind::*;
    [
        PermissionDenied,
        UnknownTool,
        Timeout,
        CircuitOpen,
        TooLarge,
        ToolFailed,
        UnknownOutcome,
        ApprovalDenied,
        TooManyCalls,
    ]
    .into_iter()
    .find(|k| k.as_str() == name)
    .unwrap_or(ToolFailed)
}
