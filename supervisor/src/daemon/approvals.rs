//! Tool calls waiting for an operator (`approve = "ask"`) in the daemon: the broker asks
//! ([`Approver`]), `corral approvals` lists and `corral approve|deny ID` decides
//! ([`Approvals`]). At most [`MAX_PENDING`] wait at once; past it a call is denied at once. A
//! call whose `approve_timeout` passed (the broker stopped waiting) leaves the list.

use crate::control::{Approvals, PendingApproval};
use crate::tools::{ApprovalRequest, Approver};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Most calls waiting for an operator at once.
pub const MAX_PENDING: usize = 1024;

/// The calls waiting, by id, with where their answer goes; and the last id given.
type Waiting = (u64, BTreeMap<u64, (PendingApproval, oneshot::Sender<bool>)>);

/// The daemon's approvals: asked by the broker, answered over the control socket.
#[derive(Default)]
pub struct OperatorApprovals {
    waiting: Mutex<Waiting>,
}

impl OperatorApprovals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Approver for OperatorApprovals {
    fn ask(&self, req: ApprovalRequest) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.lock();
        w.1.retain(|_, (_, tx)| !tx.is_closed());
        if w.1.len() >= MAX_PENDING {
            tracing::warn!(tool = %req.tool, agent = %req.agent, "{MAX_PENDING} tool calls already wait for approval: denied");
            return rx; // the sender dropped: denied
        }
        w.0 += 1;
        let id = w.0;
        tracing::info!(id, tool = %req.tool, agent = %req.agent, run = %req.run_id, "tool call waits for approval: corral approve {id} | corral deny {id}");
        let pending = PendingApproval {
            id: id.to_string(),
            agent: req.agent,
            run_id: req.run_id,
            tool: req.tool,
            args: serde_json::from_str(&req.args).unwrap_or(serde_json::Value::String(req.args)),
            asked_at: crate::record::rfc3339(std::time::SystemTime::now()),
        };
        w.1.insert(id, (pending, tx));
        rx
    }
}

impl Approvals for OperatorApprovals {
    fn pending(&self) -> Vec<PendingApproval> {
        let mut w = self.lock();
        w.1.retain(|_, (_, tx)| !tx.is_closed());
        w.1.values().map(|(p, _)| p.clone()).collect()
    }

    fn decide(&self, id: &str, allow: bool) -> Result<(), String> {
        let key = id.parse::<u64>().ok();
        let entry = key.and_then(|k| self.lock().1.remove(&k));
        match entry.map(|(_, tx)| tx.send(allow)) {
            Some(Ok(())) => Ok(()),
            _ => Err(format!("no tool call `{id}` is waiting for approval")),
        }
    }
}
