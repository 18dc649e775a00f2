//! The seam between the control socket's approval verbs and whatever holds tool calls that
//! wait for an operator (`approve = "ask"`): the daemon is given an [`Approvals`] and asks it.

use serde::Serialize;

/// A tool call waiting for an operator's decision.
#[derive(Debug, Clone, Serialize)]
pub struct PendingApproval {
    /// Its id, as `corral approve ID` takes it.
    pub id: String,
    /// The agent that made the call.
    pub agent: String,
    /// The run it belongs to.
    pub run_id: String,
    /// The tool.
    pub tool: String,
    /// Its arguments, as JSON.
    pub args: serde_json::Value,
    /// When it was asked, RFC 3339.
    pub asked_at: String,
}

/// Tool calls waiting for an operator: listed by `corral approvals`, decided by
/// `corral approve ID` / `corral deny ID`.
pub trait Approvals: Send + Sync {
    /// The calls waiting now, oldest first.
    fn pending(&self) -> Vec<PendingApproval>;
    /// Decide call `id`: `Err` with a one-line reason when there is no such call waiting.
    fn decide(&self, id: &str, allow: bool) -> Result<(), String>;
}

/// No tool asks for approval: nothing is ever pending.
#[derive(Debug, Default)]
pub struct NoApprovals;

impl Approvals for NoApprovals {
    fn pending(&self) -> Vec<PendingApproval> {
        Vec::new()
    }

    fn decide(&self, id: &str, _allow: bool) -> Result<(), String> {
        Err(format!("no tool call `{id}` is waiting for approval"))
    }
}
