//! The cancellation of one service agent's task, shared by its owner and the instance that
//! runs it.
//!
//! A task is `queued`, then `running` once an instance takes it. A cancel of a queued task is
//! final at once: the owner answers it, and the instance that later takes it from the queue
//! drops it unsent. A cancel of a running task asks the instance to send the agent
//! `Cancel { task_id }`; the agent has its `kill_grace` to answer (the task then ends with the
//! agent's `Failed`), else its process is stopped (`cancelled`) and restarted by its policy.
//! The transitions are made under one lock, so a cancel and a take cannot both win.

use super::verdict::Verdict;
use super::watch::{Service, Watch};
use super::ServiceTask;
use crate::record::ExitReason;
use corral_proto::{AgentError, Cancel, Down};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::watch;

/// Where a service task is, as far as cancelling it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting in its agent's queue.
    Queued,
    /// Taken by an instance (sent to its agent).
    Running,
    /// Cancelled while it waited: it never reaches an agent.
    CancelledQueued,
    /// Cancelled while it ran: the agent is sent `Cancel`.
    CancelledRunning,
}

impl TaskState {
    /// Whether the task was cancelled.
    pub fn cancelled(self) -> bool {
        matches!(
            self,
            TaskState::CancelledQueued | TaskState::CancelledRunning
        )
    }
}

/// The shared state of one task (cheap to clone: one allocation per task).
#[derive(Debug, Clone)]
pub struct TaskCancel(watch::Sender<TaskState>);

impl Default for TaskCancel {
    fn default() -> Self {
        TaskCancel(watch::Sender::new(TaskState::Queued))
    }
}

impl TaskCancel {
    /// Where the task is.
    pub fn state(&self) -> TaskState {
        *self.0.borrow()
    }

    /// Cancel the task; the state it was in before.
    pub fn cancel(&self) -> TaskState {
        let mut before = TaskState::Queued;
        self.0.send_if_modified(|s| {
            before = *s;
            let next = match *s {
                TaskState::Queued => TaskState::CancelledQueued,
                TaskState::Running => TaskState::CancelledRunning,
                other => other,
            };
            let changed = next != *s;
            *s = next;
            changed
        });
        before
    }

    /// An instance takes the task: `false` when it was cancelled (it must not be sent).
    pub(crate) fn start(&self) -> bool {
        self.0.send_if_modified(|s| {
            if *s == TaskState::Queued {
                *s = TaskState::Running;
                return true;
            }
            false
        });
        self.state() == TaskState::Running
    }

    /// The task goes back to its queue (its instance died with it): a cancel from now on
    /// is a queued one.
    pub(crate) fn requeued(&self) {
        self.0.send_if_modified(|s| {
            if *s == TaskState::Running {
                *s = TaskState::Queued;
                return true;
            }
            false
        });
    }

    /// Resolves when the task is cancelled while it waits in the queue.
    pub fn cancelled_queued(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.wait(TaskState::CancelledQueued)
    }

    /// Resolves when the task is cancelled while it runs.
    pub(crate) fn cancelled_running(
        &self,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.wait(TaskState::CancelledRunning)
    }

    fn wait(&self, what: TaskState) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            // (The sender lives as long as the task: an error means nobody can cancel any more.)
            if rx.wait_for(|s| *s == what).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Service {
    /// `task` is sent to the agent: its cancel is awaited from now on.
    fn begin(&mut self, task: ServiceTask) {
        self.cancel_wait = Some(Box::pin(task.cancel.cancelled_running()));
        self.cancel_by = None;
        self.current = Some(task);
    }

    /// The running task ended (answered, or taken back): no cancel is awaited any more.
    pub(super) fn end(&mut self) -> Option<ServiceTask> {
        self.cancel_wait = None;
        self.cancel_by = None;
        self.current.take()
    }

    /// Whether the running task was cancelled (ready once).
    pub(super) fn poll_cancel(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(wait) = self.cancel_wait.as_mut() else {
            return Poll::Pending;
        };
        let ready = std::future::Future::poll(wait.as_mut(), cx);
        if ready.is_ready() {
            self.cancel_wait = None;
        }
        ready
    }
}

impl Watch {
    /// An idle service agent's next task: sent, unless it was cancelled while it waited or
    /// the contract refuses it (it is then answered here, and the agent stays idle).
    pub(super) fn start_service_task(&mut self, task: ServiceTask, now: Instant) {
        if !task.cancel.start() {
            let e = AgentError::new("cancelled", "cancelled before it started", false);
            let _ = task.reply.send(Err(e));
            return;
        }
        match self.proto.start_task(task.task.clone(), now) {
            Ok(frame) => {
                self.wire.send_encoded(&frame, &self.poller);
                let task_id = task.task.task_id;
                if let Some(s) = self.service.as_mut() {
                    s.begin(task);
                }
                self.spec
                    .emit(|| super::AttemptEvent::TaskStarted { task_id });
            }
            Err(e) => {
                let _ = task.reply.send(Err(e));
            }
        }
    }

    /// The owner cancelled the running task: the agent is told, and has its `kill_grace` to
    /// answer.
    pub(super) fn cancel_task(&mut self, now: Instant) {
        let grace = self.spec.agent.kill_grace;
        let Some(s) = self.service.as_mut() else {
            return;
        };
        let Some(task) = &s.current else {
            return;
        };
        let msg = Down::Cancel(Cancel {
            task_id: task.task.task_id,
        });
        s.cancel_by = Some(now + grace);
        self.wire.send(&msg, &self.poller);
    }

    /// When the agent's grace to answer a `Cancel` ends, if one was sent.
    pub(super) fn cancel_deadline(&self) -> Option<Instant> {
        self.service.as_ref().and_then(|s| s.cancel_by)
    }

    /// The agent did not answer a `Cancel` within its grace: the attempt ends `cancelled`
    /// (its process is stopped; the task goes back to the owner as the one in flight).
    pub(super) fn cancel_overdue(&self, now: Instant) -> Option<Verdict> {
        let by = self.cancel_deadline()?;
        (now >= by).then(|| {
            let grace = self.spec.agent.kill_grace;
            let message = format!("the agent did not answer Cancel within kill_grace ({grace:?})");
            Verdict::ended(ExitReason::Cancelled, message, false, false)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_and_a_take_cannot_both_win() {
        let c = TaskCancel::default();
        assert_eq!(c.cancel(), TaskState::Queued);
        assert!(!c.start(), "a task cancelled while queued is never sent");
        assert_eq!(c.state(), TaskState::CancelledQueued);

        let c = TaskCancel::default();
        assert!(c.start());
        assert_eq!(c.cancel(), TaskState::Running);
        assert_eq!(c.state(), TaskState::CancelledRunning);
        // A second cancel changes nothing.
        assert_eq!(c.cancel(), TaskState::CancelledRunning);
        assert!(!c.start());
    }

    #[test]
    fn a_requeued_task_is_cancelled_as_a_queued_one() {
        let c = TaskCancel::default();
        assert!(c.start());
        c.requeued();
        assert_eq!(c.state(), TaskState::Queued);
        assert_eq!(c.cancel(), TaskState::Queued);
        assert_eq!(c.state(), TaskState::CancelledQueued);
        // A cancelled task stays cancelled when put back.
        c.requeued();
        assert!(c.state().cancelled());
    }

    #[tokio::test]
    async fn the_waits_resolve_on_their_own_state() {
        let c = TaskCancel::default();
        let queued = tokio::spawn(c.cancelled_queued());
        assert!(c.start());
        c.cancel();
        c.cancelled_running().await;
        tokio::task::yield_now().await;
        assert!(
            !queued.is_finished(),
            "a running cancel is not a queued one"
        );
        queued.abort();
        let c = TaskCancel::default();
        let queued = tokio::spawn(c.cancelled_queued());
        c.cancel();
        queued.await.expect("resolves");
    }
}
