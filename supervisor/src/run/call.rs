//! One call: admission, attempts, and the decision after each, until the call ends.
//!
//! [`Call`] carries what a call keeps across its attempts (the input and its quarantine key,
//! the backoff sequence, the records so far); the supervisor's policy state per agent type is
//! consulted and taught at each step: [`Call::admit`] before an attempt, [`Call::after`] once it
//! ended, [`Call::back_off`] between. Every way a call ends goes through [`Call::end`].

use super::agents::{self, RunShare};
use super::journal::CallJournal;
use super::{counts_for_quarantine, not_started, CallOptions, CallOutcome, RunError, Supervisor};
use crate::child::{self, AttemptSpec, TaskInput};
use crate::config::AgentSpec;
use crate::journal::Entry;
use crate::policy::{
    self, Admission, Backoff, Fingerprint, IntensityState, IntensityVerdict, RetryRules,
};
use crate::record::{Decision, ExitReason, ExitRecord};
use corral_proto::Value;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// A record queued for the journal, durable once this resolves.
pub(super) type Durable =
    Pin<Box<dyn Future<Output = Result<(), crate::journal::JournalError>> + Send>>;

/// The journal's entries of an attempt's start (and the record of the attempt before it, when
/// it was retried), held back until the attempt's process exists: their commit, synced, would
/// otherwise run beside the spawn and slow it down. Queued by [`fire`], in that order and
/// before any note of the attempt; the record's durability is sent on `tx`.
pub(super) struct Deferred {
    journal: crate::journal::Journal,
    ended: Option<Entry>,
    started: Entry,
    tx: oneshot::Sender<Durable>,
}

/// See [`Deferred`]; shared by the attempt's spawn hook and the call.
pub(super) type Held = Arc<Mutex<Option<Box<Deferred>>>>;

/// Queue what `held` holds, once (the attempt's process exists, or the attempt is over).
pub(super) fn fire(held: &Held) {
    let d = held.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(d) = d {
        if let Some(e) = d.ended {
            let _ = d.tx.send(Box::pin(d.journal.durable_many(vec![e])));
        }
        d.journal.append(d.started);
    }
}

/// An attempt's future, and what it holds back for the journal with where the record's
/// durability comes.
pub(super) type Attempt<'a> = (
    Pin<Box<dyn Future<Output = child::AttemptOutcome> + Send + 'a>>,
    Option<(Held, oneshot::Receiver<Durable>)>,
);

/// What follows an attempt.
pub(super) enum Next {
    /// The call ends with this record (its decision made), and the output and notes when it
    /// succeeded.
    End(Box<ExitRecord>, Option<(Value, Vec<Value>)>),
    /// Another attempt, after this backoff.
    Retry(Duration),
}

/// One call under way: its task, its attempts so far, and the policy state it carries.
pub(super) struct Call<'s> {
    sup: &'s Supervisor,
    spec: Arc<AgentSpec>,
    run_id: String,
    /// The input, shared with each attempt's task.
    input: Arc<Value>,
    /// The input's quarantine key.
    input_key: String,
    opts: CallOptions,
    /// The owner's stop, or one of our own (kept open by `_stop_tx`) when the caller has none.
    stop: watch::Receiver<Option<ExitReason>>,
    _stop_tx: Option<watch::Sender<Option<ExitReason>>>,
    backoff: Backoff,
    attempts: Vec<ExitRecord>,
    retries: u32,
    /// The record of an input refused before any attempt (see [`Call::new`]).
    refused: Option<Box<ExitRecord>>,
    /// Where the call is journalled, unless it is not.
    journal: Option<CallJournal>,
    /// What the run's calls share (task numbers, children).
    share: Arc<RunShare>,
    /// Agents this task called (`call_agent`), across its attempts.
    children: AtomicU32,
}

impl<'s> Call<'s> {
    /// A call of `input`. When no agent could take the input (nesting past the protocol's
    /// limit, a frame past `max_frame`), it is refused before any process exists, with its
    /// reason: the call's first admission says so.
    pub(super) fn new(
        sup: &'s Supervisor,
        spec: Arc<AgentSpec>,
        run_id: String,
        input: Value,
        mut opts: CallOptions,
    ) -> Call<'s> {
        let max_frame = sup.config.supervisor.max_frame;
        let (input_key, refused) =
            match child::encode_within(&input, max_frame, child::Outgoing::Input) {
                Ok(encoded) => (policy::input_key(&encoded), None),
                Err(e) => {
                    let reason = ExitReason::ContractViolation;
                    let rec = not_started(&spec, &run_id, 1, reason, e.to_string());
                    (String::new(), Some(Box::new(rec)))
                }
            };
        // A child agent gets no tool its caller lacks.
        let spec = match &opts.grants {
            Some(allowed) => {
                let mut s = AgentSpec::clone(&spec);
                s.tools.retain(|t| allowed.contains(t));
                Arc::new(s)
            }
            None => spec,
        };
        let share = opts.share.clone().unwrap_or_else(|| RunShare::after(1));
        let journal = match (&sup.journal, opts.unjournalled, &opts.journal_call) {
            (Some(j), false, Some(jc)) => {
                Some(CallJournal::join(j, jc, &spec.name, &input, &opts.memory))
            }
            (Some(j), false, None) => Some(CallJournal::begin(
                j,
                &run_id,
                &spec.name,
                &sup.config.digest,
                &input,
                &opts.memory,
            )),
            _ => None,
        };
        // A stop channel of our own only when the caller has none (a channel is ~350 bytes, per
        // call, for as long as the call lasts).
        let (stop_tx, stop) = match opts.stop.take() {
            Some(s) => (None, s.into_receiver()),
            None => {
                let (tx, rx) = watch::channel(None);
                (Some(tx), rx)
            }
        };
        Call {
            sup,
            backoff: Backoff::new(spec.backoff.clone()),
            spec,
            run_id,
            input: Arc::new(input),
            input_key,
            refused,
            journal,
            share,
            children: AtomicU32::new(0),
            opts,
            stop,
            _stop_tx: stop_tx,
            attempts: Vec::new(),
            retries: 0,
        }
    }

    /// The number of the next attempt.
    fn attempt_no(&self) -> u32 {
        self.opts.attempts_before + self.attempts.len() as u32 + 1
    }

    /// The call is over: `last` (its decision made) is its last record. Journalled durably
    /// (the record, then the call's end) before the outcome is returned.
    pub(super) async fn end(
        self: Box<Self>,
        mut last: Box<ExitRecord>,
        done: Option<(Value, Vec<Value>)>,
    ) -> Result<CallOutcome, RunError> {
        let mut call = *self;
        last.retry_count = call.retries;
        call.attempts.push(*last);
        let (output, memory) = match done {
            Some((output, memory)) => (Some(output), memory),
            None => (None, Vec::new()),
        };
        if let Some(j) = &call.journal {
            j.ended(output.as_ref(), &memory, call.attempts.last())
                .await?;
        }
        Ok(CallOutcome {
            output,
            memory,
            attempts: call.attempts,
            run_id: call.run_id,
        })
    }

    /// An attempt ended and another follows: its record (the last so far), as the journal's
    /// entry, to be queued with the next attempt's start once its process exists (see
    /// [`Call::attempt`]); `None` when the call is not journalled.
    pub(super) fn retried_entry(&self) -> Option<Entry> {
        let (j, rec) = (self.journal.as_ref()?, self.attempts.last()?);
        Some(j.attempt_entry(rec))
    }

    /// Queue `entry` now and wait until it is durable (a retried record whose next attempt
    /// never started).
    pub(super) async fn journal_now(&self, entry: Entry) -> Result<(), RunError> {
        if let Some(j) = &self.journal {
            j.journal().durable_many(vec![entry]).await?;
        }
        Ok(())
    }

    /// Where the notes of attempt `attempt_no` go, and its start entry when journalled.
    fn notes(&self, attempt_no: u32) -> (Option<Entry>, Option<child::Notes>) {
        let (started, journal) = match self.journal.as_ref().map(|j| j.attempt(attempt_no)) {
            Some((e, n)) => (Some(e), Some(n)),
            None => (None, None),
        };
        let notes = match (journal, self.opts.notes.clone()) {
            (Some(a), Some(b)) => Some(Arc::new(move |n: child::Note| {
                b(n.clone());
                a(n)
            }) as child::Notes),
            (a, b) => a.or(b),
        };
        (started, notes)
    }

    /// May the next attempt start? Not after a stop (during a backoff, or before the first
    /// attempt), nor while the input is quarantined, the agent type fatal or its breaker open:
    /// then the record of the attempt refused.
    pub(super) fn admit(&mut self) -> Result<(), Box<ExitRecord>> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        let refuse = |reason: ExitReason, message: String| {
            let mut rec = not_started(&self.spec, &self.run_id, self.attempt_no(), reason, message);
            if reason == ExitReason::Quarantined {
                rec.decision = Decision::Quarantine;
            }
            Box::new(rec)
        };
        if let Some(reason) = *self.stop.borrow() {
            let message = format!("stopped by its owner before the attempt started: {reason}");
            return Err(refuse(reason, message));
        }
        if self.opts.unpoliced {
            return Ok(());
        }
        let now = self.sup.clock.now();
        let spec = &self.spec;
        let key = &self.input_key;
        self.sup
            .with_type(spec, |t| {
                if t.quarantine.is_quarantined(key) {
                    return Err((
                        ExitReason::Quarantined,
                        format!(
                            "input {key} is quarantined after {} identical failures",
                            t.quarantine.after()
                        ),
                    ));
                }
                if let IntensityState::Fatal { until } = t.intensity.state(now) {
                    return Err((
                        ExitReason::CircuitOpen,
                        format!(
                            "agent type `{}` is fatal (restart intensity exceeded) for another {} ms",
                            spec.name,
                            until.saturating_duration_since(now).as_millis()
                        ),
                    ));
                }
                match t.breaker.admit(now) {
                    Admission::Rejected { retry_after } => Err((
                        ExitReason::CircuitOpen,
                        format!(
                            "circuit breaker of `{}` is open; next probe in {} ms",
                            spec.name,
                            retry_after.as_millis()
                        ),
                    )),
                    _ => Ok(()),
                }
            })
            .map_err(|(reason, message)| refuse(reason, message))
    }

    /// The launch's turn for the next attempt, taken before it is made (see
    /// [`Supervisor::early_turn`]).
    pub(super) async fn early_turn(&self) -> Option<child::Turn> {
        self.sup.early_turn(&self.spec).await
    }

    /// Run the next attempt (its start journalled now). Boxed, and no larger than it needs:
    /// a call keeps this future for as long as its agent runs (a thousand idle agents each keep
    /// one), and an attempt of an agent that calls no agents has no router beside it.
    ///
    /// `ended`: the record of the attempt before, when it was retried: queued with this
    /// attempt's start once its process exists (see [`Deferred`]). `turn`: the launch's turn,
    /// when taken before the attempt is made (see [`Call::early_turn`]).
    pub(super) fn attempt(&self, ended: Option<Entry>, turn: Option<child::Turn>) -> Attempt<'_> {
        let attempt_no = self.attempt_no();
        let sup = self.sup;
        let (started, notes) = self.notes(attempt_no);
        let deferred = match (started, &self.journal) {
            (Some(started), Some(j)) => {
                let (tx, rx) = oneshot::channel();
                let held: Held = Arc::new(Mutex::new(Some(Box::new(Deferred {
                    journal: j.journal().clone(),
                    ended,
                    started,
                    tx,
                }))));
                Some((held, rx))
            }
            _ => None,
        };
        let on_spawn = deferred.as_ref().map(|(held, _)| {
            let held = held.clone();
            Arc::new(move || fire(&held)) as child::OnSpawn
        });
        let aspec = AttemptSpec {
            agent: self.spec.clone(),
            run_id: self.run_id.clone(),
            attempt: attempt_no,
            max_frame: sup.config.supervisor.max_frame,
            cgroups: sup.cgroups.clone(),
            workspaces: sup.workspaces.clone(),
            stems: Some(sup.stems.clone()),
            events: self.opts.events.clone().map(Into::into),
            notes,
            task: self.opts.task.as_deref().map(Arc::from),
            service: None,
            on_spawn,
        };
        let task = TaskInput {
            task_id: attempt_no as u64,
            input: self.input.clone(),
            memory: self.opts.memory.clone(),
        };
        let tools = self
            .opts
            .tools
            .clone()
            .unwrap_or_else(|| self.sup.default_tools());
        if !agents::calls_agents(&self.spec) {
            let attempt = child::run_attempt(aspec, task, Some(tools), self.stop.clone(), turn);
            return (Box::pin(attempt), deferred);
        }
        // Agent calls are answered here; every other call goes on to the broker.
        (Box::pin(self.routed(aspec, task, tools, turn)), deferred)
    }

    /// An attempt of an agent that may call agents: its calls routed, agent calls answered
    /// here and every other call sent on to `tools`.
    async fn routed(
        &self,
        aspec: AttemptSpec,
        task: TaskInput,
        tools: child::ToolSink,
        turn: Option<child::Turn>,
    ) -> child::AttemptOutcome {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<child::ToolRequest>(64);
        let attempt = child::run_attempt(aspec, task, Some(tx.into()), self.stop.clone(), turn);
        tokio::pin!(attempt);
        let task_name = self
            .opts
            .task
            .clone()
            .unwrap_or_else(|| self.spec.name.clone());
        let call_no = self.opts.journal_call.as_ref().map_or(1, |j| j.call);
        let router = async {
            while let Some(req) = rx.recv().await {
                if !req.call.tool.starts_with(agents::AGENT_TOOL) {
                    match &tools {
                        child::ToolSink::Broker(broker) => broker.dispatch(req),
                        // (A full or closed broker drops the reply: the agent is told so.)
                        child::ToolSink::Channel(tx) => {
                            let _ = tx.send(req).await;
                        }
                    }
                    continue;
                }
                let caller = agents::Caller {
                    spec: &self.spec,
                    run_id: &self.run_id,
                    task: &task_name,
                    call: call_no,
                    depth: self.opts.depth,
                    share: &self.share,
                    children: &self.children,
                };
                let answer = agents::answer(self.sup, caller, &req).await;
                let _ = req.reply.send(answer);
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            out = &mut attempt => out,
            () = router => attempt.await,
        }
    }

    /// Learn from a finished attempt and decide what follows: breaker and quarantine learn from
    /// every attempt; the restart policy, then intensity, say whether another follows.
    pub(super) fn after(&mut self, out: child::AttemptOutcome) -> Next {
        let mut rec = out.record;
        rec.retry_count = self.retries;
        let reason = rec.reason;
        let outcome = policy::FinishedAttempt {
            reason,
            retryable: rec.error.as_ref().map(|e| e.retryable),
            exit_code: rec.exit_code,
        };
        let now = self.sup.clock.now();
        let quarantined_now = !self.opts.unpoliced && self.learn(&rec, &outcome, now);
        self.backoff
            .on_healthy_run(Duration::from_millis(rec.duration_ms));
        let spec = &self.spec;
        let rules = RetryRules {
            policy: spec.restart,
            max_retries: if self.opts.single_attempt {
                0
            } else {
                spec.max_retries
            },
            no_retry_exit_codes: &spec.no_retry_exit_codes,
        };
        let abort = if quarantined_now {
            Decision::Quarantine
        } else {
            Decision::Abort
        };
        // Stopped by its owner (a plan's abort or node timeout, a shutdown): no retry follows.
        let stopped = self.stop.borrow().is_some();
        let verdict = match policy::decide(&rules, &outcome, self.retries) {
            policy::RetryVerdict::Retry if stopped => policy::RetryVerdict::GiveUp {
                why: "stopped by its owner".to_string(),
            },
            v => v,
        };
        match verdict {
            policy::RetryVerdict::Done => {
                rec.decision = Decision::None;
                let done = out.output.map(|o| (o, out.memory));
                Next::End(Box::new(rec), done)
            }
            policy::RetryVerdict::GiveUp { why } => {
                rec.decision = abort;
                tracing::info!(agent = %spec.name, run = %self.run_id, attempt = rec.attempt, "giving up: {why}");
                Next::End(Box::new(rec), None)
            }
            policy::RetryVerdict::Retry if quarantined_now => {
                rec.decision = Decision::Quarantine;
                Next::End(Box::new(rec), None)
            }
            policy::RetryVerdict::Retry => {
                let verdict = self
                    .sup
                    .with_type(spec, |t| t.intensity.record_restart(now));
                match verdict {
                    IntensityVerdict::Fatal { restart_count, .. } => {
                        rec.restart_count = restart_count;
                        rec.decision = Decision::Escalate;
                        tracing::warn!(agent = %spec.name, restart_count, "restart intensity exceeded: agent type is fatal");
                        return Next::End(Box::new(rec), None);
                    }
                    IntensityVerdict::Allowed { restart_count } => {
                        rec.restart_count = restart_count;
                    }
                }
                let r = self.sup.rng.lock().map(|mut g| g.next_f64()).unwrap_or(0.5);
                let delay = self.backoff.next_delay(r);
                rec.backoff_ms = Some(delay.as_millis() as u64);
                rec.decision = Decision::Retry;
                self.attempts.push(rec);
                self.retries += 1;
                Next::Retry(delay)
            }
        }
    }

    /// Tell the breaker and the quarantine how the attempt went; whether the input is
    /// quarantined now.
    fn learn(&self, rec: &ExitRecord, outcome: &policy::FinishedAttempt, now: Instant) -> bool {
        let reason = rec.reason;
        let key = &self.input_key;
        self.sup.with_type(&self.spec, |t| {
            if reason.is_success() {
                t.breaker.on_success(now);
                t.quarantine.record_success(key);
                return false;
            }
            if outcome.counts_for_breaker() {
                t.breaker.on_failure(now);
            } else {
                t.breaker.on_uncounted();
            }
            let fp = Fingerprint {
                reason,
                signal: rec.signal,
                exit_code: rec.exit_code,
                last_message: rec.error.as_ref().map(|e| e.kind.clone()),
            };
            counts_for_quarantine(reason) && t.quarantine.record_failure(key, &fp)
        })
    }

    /// Wait out a backoff on the supervisor's clock, or until the owner stops the call. A zero
    /// backoff restarts at once: no timer at all (a zero-length sleep still waits for the timer
    /// wheel's next tick, about a millisecond).
    pub(super) async fn back_off(&self, delay: Duration) {
        if delay.is_zero() {
            return;
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = self.sup.clock.sleep(delay) => {}
            _ = stop.wait_for(|s| s.is_some()) => {}
        }
    }
}
