//! Approvers: who says yes or no to a call of a tool with `approve = "ask"`.
//!
//! An [`Approver`] is handed an [`ApprovalRequest`] and answers on a oneshot channel; the
//! broker waits for that answer at most `approve_timeout` (no answer, or a dropped channel,
//! denies). [`ChannelApprover`] hands the questions to whoever holds its receiver (tests, the
//! daemon's control socket); `corral call --approve` asks on the terminal.

use tokio::sync::{mpsc, oneshot};

/// Questions an approver holds at most (more are denied at once).
pub const MAX_PENDING_APPROVALS: usize = 64;

/// A call waiting for approval.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    /// The agent that calls.
    pub agent: String,
    /// Its run.
    pub run_id: String,
    /// Its attempt.
    pub attempt: u32,
    /// The tool.
    pub tool: String,
    /// The agent's call id.
    pub call_id: u64,
    /// The arguments, as JSON, cut to 4 KiB.
    pub args: String,
}

/// Who answers approvals.
pub trait Approver: Send + Sync {
    /// Ask about `req`; the answer (`true`: approved) comes on the channel returned. Must not
    /// block.
    fn ask(&self, req: ApprovalRequest) -> oneshot::Receiver<bool>;
}

/// An approver whose questions arrive on a channel, each with where to send its answer.
pub struct ChannelApprover {
    tx: mpsc::Sender<(ApprovalRequest, oneshot::Sender<bool>)>,
}

impl ChannelApprover {
    /// The approver and the receiving end of its questions.
    #[allow(clippy::type_complexity)]
    pub fn new() -> (
        ChannelApprover,
        mpsc::Receiver<(ApprovalRequest, oneshot::Sender<bool>)>,
    ) {
        let (tx, rx) = mpsc::channel(MAX_PENDING_APPROVALS);
        (ChannelApprover { tx }, rx)
    }
}

impl Approver for ChannelApprover {
    fn ask(&self, req: ApprovalRequest) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        // Full or closed: the answer's sender is dropped with the question, which denies.
        let _ = self.tx.try_send((req, tx));
        rx
    }
}
