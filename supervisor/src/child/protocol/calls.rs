//! The agent's tool calls in the conversation: checked against the bounds and the contract,
//! refused here or relayed to the owner, answered and traced (and noted for the journal).

use super::{Outstanding, Protocol, Step};
use crate::child::bounds;
use crate::child::verdict::Verdict;
use crate::record::{Phase, ToolTrace};
use corral_proto::{AgentError, Down, ToolCall, ToolResult, Value};
use std::sync::Arc;
use std::time::Instant;

impl Protocol {
    /// A tool call: checked against the bounds and the contract, then refused here or relayed.
    pub(in crate::child) fn on_call(&mut self, call: ToolCall, now: Instant) -> Step {
        let calls = self.calls.get_or_insert_with(Box::default);
        let checked = bounds::check_call(&call, calls.outstanding.len(), |id| {
            calls.outstanding.contains_key(&id)
        });
        let refusal = match checked {
            Ok(refusal) => refusal,
            Err(e) => return Step::End(Verdict::violation(e.to_string())),
        };
        self.phase = Phase::ToolCall;
        calls.seq += 1;
        let seq = calls.seq;
        // Kept for the note until the answer: within NOTED_ARGS, else only their size and hash
        // (64 calls of 1 MiB outstanding would otherwise double what the broker holds).
        let args = self
            .notes
            .as_ref()
            .map(|_| crate::child::noted_args(&call.args));
        calls.outstanding.insert(
            call.call_id,
            Outstanding {
                tool: call.tool.clone(),
                at: now,
                seq,
                args,
            },
        );
        let declared = self
            .contract
            .as_ref()
            .is_some_and(|c| c.tools.iter().any(|t| t == &call.tool || t == "*"));
        let refusal = refusal.or_else(|| {
            if !declared {
                Some(AgentError::new(
                    "permission_denied",
                    format!(
                        "tool `{}` is not declared in the agent's contract",
                        call.tool
                    ),
                    false,
                ))
            } else if !self.tools {
                Some(AgentError::new(
                    "permission_denied",
                    format!("no tools are configured for agent `{}`", self.agent.name),
                    false,
                ))
            } else {
                None
            }
        });
        match refusal {
            Some(refusal) => Step::Send(self.answer(call.call_id, Err(refusal), now)),
            None => Step::Relay(call),
        }
    }

    /// The sequence number of outstanding call `call_id` within the task, and the tools the
    /// contract declares (what the owner needs to know of a relayed call).
    pub(in crate::child) fn call_context(&mut self, call_id: u64) -> (u64, Arc<[String]>) {
        let declared = self.contract.as_ref().map(|c| c.tools.clone());
        let calls = self.calls.get_or_insert_with(Box::default);
        let seq = calls.outstanding.get(&call_id).map_or(0, |c| c.seq);
        let tools = calls
            .contract_tools
            .get_or_insert_with(|| declared.unwrap_or_default().into())
            .clone();
        (seq, tools)
    }

    /// Calls of the attempt answered from the trace.
    pub(in crate::child) fn deduplicated(&self) -> u64 {
        self.calls.as_ref().map_or(0, |c| c.deduplicated)
    }

    /// The answer to tool call `call_id`, arrived at `now`: accounted for, and the message
    /// that carries it to the agent.
    pub(in crate::child) fn answer(
        &mut self,
        call_id: u64,
        result: Result<Value, AgentError>,
        now: Instant,
    ) -> Down {
        self.answer_noted(call_id, result, now, crate::child::CallNote::default())
    }

    /// [`Protocol::answer`], with what the owner noted of it.
    pub(in crate::child) fn answer_noted(
        &mut self,
        call_id: u64,
        result: Result<Value, AgentError>,
        now: Instant,
        note: crate::child::CallNote,
    ) -> Down {
        let noted = match &self.notes {
            Some(_) => result.clone(),
            None => result.as_ref().map(|_| Value::Null).map_err(Clone::clone),
        };
        self.answered(call_id, noted, now, note);
        Down::ToolResult(ToolResult { call_id, result })
    }

    /// Account for the answer to tool call `call_id`, arrived at `now` and already sent to the
    /// agent (so that tracing and noting it, the journal's note built from `result`, cost the
    /// agent no wait): its trace entry and its note. `result` is what the agent was sent (only
    /// its kind is kept when notes are not taken).
    pub(in crate::child) fn answered(
        &mut self,
        call_id: u64,
        result: Result<Value, AgentError>,
        now: Instant,
        note: crate::child::CallNote,
    ) {
        let calls = self.calls.get_or_insert_with(Box::default);
        if let Some(o) = calls.outstanding.remove(&call_id) {
            calls.deduplicated += u64::from(note.deduplicated);
            let duration_ms = now.saturating_duration_since(o.at).as_millis() as u64;
            calls.trace.push(ToolTrace {
                call_id,
                tool: o.tool.clone(),
                ok: result.is_ok(),
                error_kind: result.as_ref().err().map(|e| e.kind.clone()),
                duration_ms,
                seq: o.seq,
                args_bytes: note.args_bytes,
                args_hash: note.args_hash,
                result_bytes: note.result_bytes,
                deduplicated: note.deduplicated,
                queued_ms: note.queued_ms,
                approval_ms: note.approval_ms,
            });
            if let (Some(notes), Some(args)) = (&self.notes, o.args) {
                notes(crate::child::Note::ToolCall {
                    seq: u32::try_from(o.seq).unwrap_or(u32::MAX),
                    call_id,
                    tool: o.tool,
                    args,
                    result,
                    duration_ms,
                    deduplicated: note.deduplicated,
                });
            }
        }
        if calls.outstanding.is_empty() && self.phase == Phase::ToolCall {
            self.phase = Phase::Busy;
            // The agent could not progress while it waited.
            self.progress.since = now;
        }
    }

    /// The answer to a call the owner can no longer take (its channel closed; a full one is
    /// waited on).
    pub(in crate::child) fn broker_gone() -> AgentError {
        AgentError::new("unavailable", "tool broker is gone", true)
    }

    /// The answer to a call the owner dropped without answering.
    pub(in crate::child) fn broker_dropped() -> AgentError {
        AgentError::new("unavailable", "tool broker dropped the call", true)
    }
}
