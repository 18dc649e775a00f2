//! Service agents: `instances` long-lived processes per `[agents.X] service = true`, taking
//! tasks one after another from one queue, restarted with the agent's backoff when they die
//! or hang. A task in flight when its process died is retried on a live instance while the
//! restart policy allows (`restart`, `max_retries`, the reason retryable), else failed with
//! the attempt's record.

use super::state::{Daemon, InstanceInfo, InstanceState};
use crate::child::{AttemptEvent, EventSink, ServiceResult, ServiceTask, TaskCancel, TaskInput};
use crate::config::AgentSpec;
use crate::policy::{Backoff, RestartPolicy};
use crate::record::ExitReason;
use corral_proto::AgentError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// One generation of a service agent: its spec, its queue, its instances. A reload that
/// changes the agent makes a new generation; the old one's queue is closed, so its instances
/// finish the task they hold (on the old spec) and leave.
pub(crate) struct ServiceAgent {
    pub queue: async_channel::Sender<ServiceTask>,
    rx: async_channel::Receiver<ServiceTask>,
    pub instances: Vec<Arc<Mutex<InstanceInfo>>>,
    /// Stops every instance (`Some(reason)`).
    stop: watch::Sender<Option<ExitReason>>,
    /// Instance loops still running.
    pub running: Arc<tokio::sync::Semaphore>,
}

/// Most tasks waiting for one service agent; more are refused `busy`. (The queue itself is
/// unbounded and grows by blocks as tasks come: a bounded one would hold a slot for each of
/// these from the start, 640 KiB per service agent, most of it never used. A task put back
/// after its instance died is always taken.)
pub(crate) const QUEUE_BOUND: usize = 10_000;

impl ServiceAgent {
    /// Start the instances of `spec`.
    pub fn start(daemon: &Arc<Daemon>, spec: Arc<AgentSpec>) -> ServiceAgent {
        let (queue, rx) = async_channel::unbounded();
        let (stop, _) = watch::channel(None);
        let running = Arc::new(tokio::sync::Semaphore::new(0));
        let mut instances = Vec::new();
        // One sink of `Log` lines for all the instances (each attempt keeps a handle).
        let notes = daemon.log_notes(&spec.name);
        for i in 0..spec.instances {
            let info = Arc::new(Mutex::new(InstanceInfo::new(i)));
            instances.push(info.clone());
            let me = Instance {
                daemon: daemon.clone(),
                spec: spec.clone(),
                index: i,
                rx: rx.clone(),
                info,
                notes: notes.clone(),
            };
            tokio::spawn(instance_loop(me, stop.subscribe(), running.clone()));
        }
        ServiceAgent {
            queue,
            rx,
            instances,
            stop,
            running,
        }
    }

    /// Stop the instances now (their task in flight is failed `shutdown`/`cancelled`) and
    /// close the queue; tasks still queued are failed.
    pub fn stop(&self, reason: ExitReason) {
        let _ = self.stop.send(Some(reason));
        self.queue.close();
        while let Ok(t) = self.rx.try_recv() {
            let _ = t.reply.send(Err(AgentError::new(
                reason.as_str(),
                "the service agent was stopped before the task ran",
                true,
            )));
        }
    }

    /// Close the queue only: the instances finish what they hold and leave.
    pub fn retire(&self) {
        self.queue.close();
    }

    /// Wait until every instance loop has ended.
    pub async fn ended(&self) {
        let n = self.instances.len() as u32;
        if let Ok(p) = self.running.acquire_many(n).await {
            p.forget();
            self.running.add_permits(n as usize);
        }
    }

    /// Queue a task; its result comes on the returned channel, and it is cancelled through
    /// the returned [`TaskCancel`].
    pub fn submit(
        &self,
        task_id: u64,
        input: corral_proto::Value,
    ) -> Result<(oneshot::Receiver<ServiceResult>, TaskCancel), AgentError> {
        let (reply, rx) = oneshot::channel();
        let cancel = TaskCancel::default();
        let task = ServiceTask {
            task: TaskInput {
                task_id,
                input: Arc::new(input),
                memory: Vec::new(),
            },
            reply,
            cancel: cancel.clone(),
            tries: 0,
        };
        offer(&self.queue, task).map(|()| (rx, cancel))
    }
}

/// Queue `task` unless [`QUEUE_BOUND`] tasks wait already (`busy`) or the queue is closed
/// (`shutdown`). Submissions are made one at a time under the daemon's lock on its services,
/// so the count read is the count the task joins.
fn offer(queue: &async_channel::Sender<ServiceTask>, task: ServiceTask) -> Result<(), AgentError> {
    if queue.len() >= QUEUE_BOUND && !queue.is_closed() {
        return Err(AgentError::new(
            "busy",
            format!("{QUEUE_BOUND} tasks already wait for this agent"),
            true,
        ));
    }
    queue
        .try_send(task)
        .map_err(|_| AgentError::new("shutdown", "the service agent is stopped", true))
}

/// What one instance's loop keeps for its whole life.
struct Instance {
    daemon: Arc<Daemon>,
    spec: Arc<AgentSpec>,
    index: u32,
    rx: async_channel::Receiver<ServiceTask>,
    info: Arc<Mutex<InstanceInfo>>,
    notes: crate::child::Notes,
}

/// One instance: attempts one after another, with the agent's backoff between failures;
/// `running` gets a permit back when it ends.
///
/// (A function returning an `async` block, not an `async fn`: a thousand idle instances each
/// keep this future in their task, and an `async fn` would keep its arguments twice, as
/// arguments and as the locals they are moved to. The task is allocated in steps of 128
/// bytes; this one fits 512.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its future"
)]
fn instance_loop(
    me: Instance,
    mut stop: watch::Receiver<Option<ExitReason>>,
    running: Arc<tokio::sync::Semaphore>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // (Its fields used where they are, not moved to locals: a local would be a copy.)
        let mut backoff = Backoff::new(&me.spec.backoff);
        let mut attempt = 0u32;
        loop {
            if stop.borrow().is_some() || me.rx.is_closed() && me.rx.is_empty() {
                break;
            }
            let Some(_slot) = me.daemon.agent_slot().await else {
                break;
            };
            // The launch's turn, taken before the attempt is made (`Supervisor::early_turn`).
            let turn = me.daemon.sup.early_turn(&me.spec).await;
            // (A drain asked for meanwhile launches nothing more.)
            if stop.borrow().is_some() {
                break;
            }
            attempt += 1;
            let started = Instant::now();
            // Each event is observed where it happens (no channel kept per instance).
            let sink = {
                let (daemon, info) = (me.daemon.clone(), me.info.clone());
                EventSink::Call(Arc::new(move |ev| observe(&daemon, &info, &ev, started)))
            };
            let run_id = format!("svc-{}-{}-{}", me.spec.name, me.index, std::process::id());
            let out = me
                .daemon
                .sup
                .service_attempt(
                    me.spec.clone(),
                    run_id,
                    attempt,
                    me.rx.clone(),
                    Some(sink),
                    Some(me.notes.clone()),
                    stop.clone(),
                    turn,
                )
                .await;
            let ran_for = started.elapsed();
            let stopping = stop.borrow().is_some();
            // The restart that follows unless the instance leaves, said in the record too.
            backoff.on_healthy_run(ran_for);
            let delay = backoff.next_delay(0.5);
            let restarts = me.info.lock().unwrap_or_else(|p| p.into_inner()).restarts + 1;
            // Settled apart: nothing of the attempt's end (its record is large) is kept in this
            // loop's state across the backoff's wait, for the instance's whole life.
            let next = (restarts, delay);
            let Some(reason) = settle(&me.daemon, &me.spec, &me.info, &me.rx, out, stopping, next)
            else {
                break;
            };
            drop(_slot);
            {
                let mut i = me.info.lock().unwrap_or_else(|p| p.into_inner());
                i.restarts = restarts;
                i.backoff_until = Some(Instant::now() + delay);
            }
            me.daemon.metrics.restarted(&me.spec.name);
            tracing::info!(agent = %me.spec.name, instance = me.index, %reason, backoff_ms = delay.as_millis() as u64, "service agent restarting");
            // A zero backoff restarts at once: even a timer of zero waits for the next tick.
            // (The wait boxed: the instance's future would otherwise keep its room, twice
            // that of the rest, for its whole life.)
            if !delay.is_zero() {
                let stopped = Box::pin(async {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop.wait_for(|s| s.is_some()) => true,
                    }
                });
                if stopped.await {
                    break;
                }
            }
        }
        {
            let mut i = me.info.lock().unwrap_or_else(|p| p.into_inner());
            i.state = InstanceState::Stopped;
            i.pid = None;
        }
        running.add_permits(1);
    }
}

/// An attempt's end, `out`: its record published, its task in flight requeued or answered, its
/// instance shown in backoff. `None`: the instance leaves (stopping, or shut down with its
/// queue closed); else the reason it ended.
fn settle(
    daemon: &Daemon,
    spec: &AgentSpec,
    info: &Mutex<InstanceInfo>,
    rx: &async_channel::Receiver<ServiceTask>,
    out: crate::child::AttemptOutcome,
    stopping: bool,
    (restarts, delay): (u64, std::time::Duration),
) -> Option<ExitReason> {
    let mut rec = out.record;
    let leaving = stopping || rec.reason == ExitReason::Shutdown && rx.is_closed();
    if !leaving {
        // The instance is restarted (a service agent's policy is its instance loop's).
        rec.restart_count = u32::try_from(restarts).unwrap_or(u32::MAX);
        rec.backoff_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        rec.decision = crate::record::Decision::Retry;
    }
    daemon.metrics.exited(&rec);
    daemon.event_record(&rec);
    let in_flight = match out.in_flight {
        Some(task) if task.cancel.state().cancelled() => {
            answer_cancelled(task, &rec);
            None
        }
        other => other,
    };
    if let Some(mut task) = in_flight {
        let id = task.task.task_id;
        // Counted with the task, so that its retries are the same whichever instances it
        // meets (and nothing is kept per instance for tasks long gone).
        task.tries += 1;
        let retry = !stopping
            && spec.restart != RestartPolicy::Never
            && task.tries <= spec.max_retries
            && crate::policy::restart::counts_for_breaker(rec.reason);
        if retry && !rx.is_closed() {
            // Back in the queue: the next idle instance (this one restarted) takes it.
            task.cancel.requeued();
            if let Err(e) = daemon_requeue(daemon, spec, task) {
                tracing::warn!(agent = %spec.name, "task {id} lost on requeue: {e}");
            }
        } else {
            let err = rec
                .error
                .clone()
                .map(|e| AgentError::new(e.kind, e.message, e.retryable));
            let err = err.unwrap_or_else(|| {
                AgentError::new(rec.reason.as_str(), rec.reason.to_string(), false)
            });
            let _ = task.reply.send(Err(err));
        }
    }
    {
        let mut i = info.lock().unwrap_or_else(|p| p.into_inner());
        i.pid = None;
        i.last_exit = Some(rec.reason);
        i.state = InstanceState::Backoff;
    }
    if leaving {
        return None;
    }
    Some(rec.reason)
}

/// `task`, in flight when its instance ended with `rec`, was cancelled: it is answered
/// `cancelled` (never retried), whatever ended the instance.
fn answer_cancelled(task: ServiceTask, rec: &crate::ExitRecord) {
    let message = match rec.reason {
        ExitReason::Cancelled => rec
            .error
            .as_ref()
            .map_or_else(|| "cancelled".to_string(), |e| e.message.clone()),
        other => format!("cancelled; its agent's process ended meanwhile ({other})"),
    };
    let _ = task
        .reply
        .send(Err(AgentError::new("cancelled", message, false)));
}

fn daemon_requeue(daemon: &Daemon, spec: &AgentSpec, task: ServiceTask) -> Result<(), String> {
    daemon.requeue(&spec.name, task)
}

/// What an attempt's life event says about its instance.
fn observe(daemon: &Daemon, info: &Mutex<InstanceInfo>, ev: &AttemptEvent, started: Instant) {
    let mut i = info.lock().unwrap_or_else(|p| p.into_inner());
    match ev {
        AttemptEvent::Spawned { pid, .. } => {
            i.pid = Some(*pid);
            i.state = InstanceState::Starting;
            i.since = Instant::now();
            i.backoff_until = None;
        }
        AttemptEvent::Ready { .. } => {
            i.state = InstanceState::Ready;
            daemon.metrics.spawn_ready(started.elapsed());
        }
        AttemptEvent::Sample { rss_kb, cpu_ms, .. } => {
            i.rss_kb = Some(u32::try_from(*rss_kb).unwrap_or(u32::MAX));
            i.cpu_ms = *cpu_ms;
        }
        AttemptEvent::Watchdog { reason, .. } => {
            i.last_exit = Some(*reason);
        }
        AttemptEvent::TaskStarted { .. } => i.state = InstanceState::Busy,
        AttemptEvent::TaskEnded { .. } if i.state == InstanceState::Busy => {
            i.state = InstanceState::Ready;
        }
        AttemptEvent::TaskEnded { .. } | AttemptEvent::Exited(_) => {}
    }
    drop(i);
    daemon.event_attempt(ev);
}

/// How long the drain may take for `spec`: its kill grace and a margin.
pub(crate) fn drain_time(spec: &AgentSpec) -> Duration {
    spec.kill_grace * 2 + Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64) -> ServiceTask {
        ServiceTask {
            task: TaskInput {
                task_id: id,
                input: Arc::new(corral_proto::Value::Null),
                memory: Vec::new(),
            },
            reply: oneshot::channel().0,
            cancel: TaskCancel::default(),
            tries: 0,
        }
    }

    #[test]
    fn a_full_queue_refuses_busy_and_a_closed_one_shutdown() {
        let (tx, rx) = async_channel::unbounded();
        for id in 0..QUEUE_BOUND as u64 {
            offer(&tx, task(id)).unwrap();
        }
        let err = offer(&tx, task(u64::MAX)).unwrap_err();
        assert_eq!(err.kind, "busy");
        assert_eq!(tx.len(), QUEUE_BOUND);
        // A task put back after its instance died is taken beyond the bound.
        tx.try_send(task(u64::MAX)).unwrap();
        // One taken makes room for one.
        assert_eq!(rx.try_recv().unwrap().task.task_id, 0);
        rx.try_recv().unwrap();
        offer(&tx, task(1 << 40)).unwrap();
        tx.close();
        assert_eq!(offer(&tx, task(7)).unwrap_err().kind, "shutdown");
    }
}
