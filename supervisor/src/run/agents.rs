//! Agents calling agents: a tool call named `agent:NAME` (the SDKs' `call_agent`) runs a task
//! on agent `NAME` as a child of the calling task, in the same run, and answers with its output.
//!
//! The call is permitted like any tool (declared in the caller's contract, granted by its
//! `tools`, not in its `deny_tools`) and bounded by the caller's quotas: `max_depth` (nesting),
//! `max_children` (per calling task) and [`MAX_RUN_AGENTS`] children in one run. A quota
//! exceeded, or a child that fails, is a structured error to the caller (`quota_exceeded`,
//! `agent_failed`), never a crash. The child's tool grants are its own intersected with its
//! caller's; it is journalled as a task of the run with a `child` event naming its parent.
//! A caller's agent calls run one at a time, in the order it made them.

use super::{CallOptions, JournalCall, Supervisor};
use crate::child::ToolRequest;
use crate::config::AgentSpec;
use corral_proto::{AgentError, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The prefix of the tool names that call agents.
pub const AGENT_TOOL: &str = "agent:";

/// Most child agents one run may start, at any depth.
pub const MAX_RUN_AGENTS: u32 = 256;

/// What the calls of one run share: task numbers in the journal and the count of children.
#[derive(Debug, Default)]
pub struct RunShare {
    /// The last task number given in the run's journal.
    pub calls: AtomicU32,
    /// Child agents started in the run.
    pub children: AtomicU32,
}

impl RunShare {
    /// A share whose first task number given out follows `last`.
    pub fn after(last: u32) -> Arc<RunShare> {
        Arc::new(RunShare {
            calls: AtomicU32::new(last),
            children: AtomicU32::new(0),
        })
    }

    /// The next task number of the run.
    pub fn next_call(&self) -> u32 {
        self.calls.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Where a calling task stands: what its children inherit.
pub(super) struct Caller<'a> {
    pub spec: &'a AgentSpec,
    pub run_id: &'a str,
    pub task: &'a str,
    pub call: u32,
    pub depth: u32,
    pub share: &'a Arc<RunShare>,
    pub children: &'a AtomicU32,
}

fn quota(message: String) -> AgentError {
    AgentError::new("quota_exceeded", message, false)
}

/// Whether `spec` may call agents at all (a grant of some `agent:` tool).
pub(super) fn calls_agents(spec: &AgentSpec) -> bool {
    spec.tools.iter().any(|t| t.starts_with(AGENT_TOOL))
}

/// Answer the agent call `req` of `caller` by running the child task.
pub(super) async fn answer(
    sup: &Supervisor,
    caller: Caller<'_>,
    req: &ToolRequest,
) -> Result<Value, AgentError> {
    crate::tools::permitted(req).map_err(|e| e.to_agent())?;
    let name = req.call.tool.strip_prefix(AGENT_TOOL).unwrap_or_default();
    let spec = caller.spec;
    if caller.depth + 1 > spec.max_depth {
        return Err(quota(format!(
            "calling `{name}` would nest agents {} deep; `{}` may nest {} (max_depth)",
            caller.depth + 1,
            spec.name,
            spec.max_depth
        )));
    }
    let n = caller.children.fetch_add(1, Ordering::Relaxed) + 1;
    if n > spec.max_children {
        return Err(quota(format!(
            "`{}` already called {} agent(s) in this task (max_children = {})",
            spec.name,
            n - 1,
            spec.max_children
        )));
    }
    let in_run = caller.share.children.fetch_add(1, Ordering::Relaxed) + 1;
    if in_run > MAX_RUN_AGENTS {
        return Err(quota(format!(
            "the run already started {MAX_RUN_AGENTS} child agents, the most a run may"
        )));
    }
    let call = caller.share.next_call();
    let grants: Vec<String> = spec.tools.clone();
    let opts = CallOptions {
        run_id: Some(caller.run_id.to_string()),
        task: Some(format!("{}/{name}#{n}", caller.task)),
        journal_call: Some(JournalCall {
            run_id: caller.run_id.to_string(),
            call,
            node: serde_json::json!({
                "parent_call": caller.call,
                "parent_task": caller.task,
                "agent": name,
                "depth": caller.depth + 1,
            }),
            event: "child",
        }),
        depth: caller.depth + 1,
        grants: Some(grants),
        share: Some(caller.share.clone()),
        ..Default::default()
    };
    let child = Box::pin(sup.call(name, req.call.args.clone(), opts));
    match child.await {
        Ok(out) => match out.output {
            Some(v) => Ok(v),
            None => {
                let last = out.last();
                let reason = last.map(|r| r.reason.as_str()).unwrap_or("unknown");
                let msg = last
                    .and_then(|r| r.error.as_ref())
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                Err(AgentError::new(
                    "agent_failed",
                    format!("agent `{name}` failed ({reason}): {msg}"),
                    false,
                ))
            }
        },
        Err(e) => Err(AgentError::new("agent_failed", e.to_string(), false)),
    }
}
