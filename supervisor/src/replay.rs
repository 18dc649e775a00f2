//! Replay: run a journalled task again on a fresh agent process and say whether it did the
//! same thing.
//!
//! Each task of the run (one for `corral call`, one per node instance for a plan) is run again,
//! in order, until one diverges. The agent gets the recorded run id, attempt number, input and
//! memory; each tool call it makes is answered from the recording of the same attempt (the one whose outcome the run reported), matched by its order
//! among the attempt's calls and checked for the same tool and arguments, never executed. A
//! call the recording lacks, or one that differs, is answered with a structured
//! `replay_divergence` error. At the end the calls made and the outcome are compared with the
//! recording, and the first difference is reported: like a workflow engine's non-determinism
//! error, for any agent process. Replay reads only the journal and the config, so it works
//! across restarts of corral; it is not journalled itself.

use crate::child::{Note, ToolRequest};
use crate::journal::{CallView, RunView, ToolCallView};
use crate::run::{CallOptions, RunError, Supervisor};
use corral_proto::{AgentError, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Replay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The run has no task to replay.
    #[error("run `{0}` recorded no task to replay")]
    NoTask(String),
    /// Running the agent failed before any attempt (unknown agent, set-up).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The agent could not be started now (its recording shows it was): nothing to compare.
    #[error("agent `{agent}` could not be started to replay: {message}")]
    NotStarted {
        /// The agent.
        agent: String,
        /// Why, from its attempt's record.
        message: String,
    },
}

/// Where a replay first differed from its recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// The task of the run (from 1; a plan run has one per node instance).
    pub call: u32,
    /// The plan node instance, for a plan run (`node` or `node[index]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The tool call's order in the attempt (from 1); for `output` and `error`, one past the
    /// last call.
    pub seq: u32,
    /// `tool_call`, `output` or `error`.
    pub kind: &'static str,
    /// What the recording has (`null` when it has nothing there).
    pub recorded: serde_json::Value,
    /// What the replay did (`null` when it did nothing there).
    pub replayed: serde_json::Value,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The run replayed.
    pub run_id: String,
    /// Whether the replay made the same tool calls and ended the same way.
    pub identical: bool,
    /// Tasks replayed (a plan run's node instances, in the order they ran).
    pub calls: u32,
    /// The first difference, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
}

/// A tool call as compared: its tool and arguments.
fn call_json(tool: &str, args: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "tool": tool, "args": args })
}

/// The recorded answer of `c`, as the agent got it.
fn recorded_answer(c: &ToolCallView) -> Result<Value, AgentError> {
    if c.status == "ok" {
        return Ok(Value::from_json(&c.result));
    }
    let field = |k: &str| c.result.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Err(AgentError::new(
        field("kind").unwrap_or_else(|| c.status.clone()),
        field("message").unwrap_or_default(),
        c.result
            .get("retryable")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    ))
}

/// The attempt whose tool calls the replay follows: the last recorded one.
fn last_attempt(call: &CallView) -> u32 {
    call.attempts
        .iter()
        .filter_map(|r| r.get("attempt").and_then(|a| a.as_u64()))
        .max()
        .unwrap_or(1) as u32
}

/// How an attempt ended, as compared, from its exit record: the reason, the exit code or
/// signal, the error's kind, and the error's message when it is the agent's own words (an
/// `agent_error`; the supervisor's messages for other ends may carry counts and timings).
fn ending(record: Option<&serde_json::Value>) -> serde_json::Value {
    let field = |k: &str| record.and_then(|r| r.get(k)).cloned();
    let reason = field("reason").unwrap_or(serde_json::Value::Null);
    let error = field("error");
    let error_field = |k: &str| error.as_ref().and_then(|e| e.get(k)).cloned();
    let message = (reason == "agent_error")
        .then(|| error_field("message"))
        .flatten();
    serde_json::json!({
        "reason": reason,
        "exit_code": field("exit_code"),
        "signal_name": field("signal_name"),
        "kind": error_field("kind"),
        "message": message,
    })
}

/// Replay every task of `run` on `sup`, in order, up to the first that diverges (see the
/// module docs).
pub async fn replay(sup: &Supervisor, run: &RunView) -> Result<ReplayReport, ReplayError> {
    let tasks: Vec<&CallView> = run
        .calls
        .iter()
        .filter(|c| !c.attempts.is_empty())
        .collect();
    if tasks.is_empty() {
        return Err(ReplayError::NoTask(run.run_id.clone()));
    }
    let mut calls = 0;
    for call in tasks {
        calls += 1;
        if let Some(d) = replay_call(sup, &run.run_id, call).await? {
            return Ok(ReplayReport {
                run_id: run.run_id.clone(),
                identical: false,
                calls,
                divergence: Some(d),
            });
        }
    }
    Ok(ReplayReport {
        run_id: run.run_id.clone(),
        identical: true,
        calls,
        divergence: None,
    })
}

/// The instance a task of a plan run was: `node` or `node[index]`.
fn node_of(call: &CallView) -> Option<String> {
    let ev = call.events.iter().find(|e| e.kind == "node")?;
    let node = ev.payload.get("node")?.as_str()?;
    Some(match ev.payload.get("index").and_then(|i| i.as_u64()) {
        Some(i) => format!("{node}[{i}]"),
        None => node.to_string(),
    })
}

/// Replay one task; its first divergence, if any.
async fn replay_call(
    sup: &Supervisor,
    run_id: &str,
    call: &CallView,
) -> Result<Option<Divergence>, ReplayError> {
    let attempt = last_attempt(call);
    let recorded: BTreeMap<u32, ToolCallView> = call
        .tool_calls
        .iter()
        .filter(|c| c.attempt == attempt)
        .map(|c| (c.seq, c.clone()))
        .collect();
    let recorded = Arc::new(recorded);

    // Answers from the recording, never executed.
    let (tx, mut rx) = mpsc::channel::<ToolRequest>(64);
    let answers = recorded.clone();
    let server = tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let seq = u32::try_from(req.seq).unwrap_or(u32::MAX);
            let answer = match answers.get(&seq) {
                Some(r)
                    if r.tool == req.call.tool
                        && r.args == crate::child::noted_args(&req.call.args).to_json() =>
                {
                    recorded_answer(r)
                }
                Some(r) => Err(AgentError::new(
                    "replay_divergence",
                    format!(
                        "call {} differs from the recording (recorded `{}`)",
                        req.seq, r.tool
                    ),
                    false,
                )),
                None => Err(AgentError::new(
                    "replay_divergence",
                    format!("the recording has no tool call {}", req.seq),
                    false,
                )),
            };
            let _ = req.reply.send(answer);
        }
    });
    // What the replayed agent did, by order.
    let made: Arc<Mutex<BTreeMap<u32, (String, serde_json::Value)>>> = Arc::default();
    let sink = made.clone();
    let notes: crate::child::Notes = Arc::new(move |n: Note| {
        if let Note::ToolCall {
            seq, tool, args, ..
        } = n
        {
            if let Ok(mut m) = sink.lock() {
                m.insert(seq, (tool, args.to_json()));
            }
        }
    });
    let memory = match &call.memory {
        serde_json::Value::Array(a) => a.iter().map(Value::from_json).collect(),
        _ => Vec::new(),
    };
    let opts = CallOptions {
        run_id: Some(run_id.to_string()),
        attempts_before: attempt.saturating_sub(1),
        memory,
        tools: Some(tx.into()),
        notes: Some(notes),
        unjournalled: true,
        single_attempt: true,
        unpoliced: true,
        ..Default::default()
    };
    let outcome = sup
        .call(&call.agent, Value::from_json(&call.input), opts)
        .await;
    server.abort();
    let outcome = outcome?;
    let rec_last = call
        .attempts
        .iter()
        .rev()
        .find(|a| a.get("reason").is_some_and(|r| !r.is_null()));
    if let Some(last) = outcome.last() {
        let recorded_spawn_failed = rec_last
            .and_then(|a| a.get("reason"))
            .is_some_and(|r| r == "spawn_failed");
        if last.reason == crate::record::ExitReason::SpawnFailed && !recorded_spawn_failed {
            return Err(ReplayError::NotStarted {
                agent: call.agent.clone(),
                message: last
                    .error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "spawn failed".into()),
            });
        }
    }
    let made = made.lock().map(|m| m.clone()).unwrap_or_default();

    let divergence = first_tool_divergence(&recorded, &made).or_else(|| {
        let at = |seq, kind, recorded, replayed| Divergence {
            call: call.call,
            node: node_of(call),
            seq,
            kind,
            recorded,
            replayed,
        };
        let seq = recorded.len().max(made.len()) as u32 + 1;
        let replayed_out = outcome.output.as_ref().map(Value::to_json);
        match (&call.output, replayed_out) {
            (Some(r), Some(p)) if *r == p => None,
            (Some(r), Some(p)) => Some(at(seq, "output", r.clone(), p)),
            (r, p) => {
                let rec_end = ending(rec_last);
                let rep_end = ending(
                    outcome
                        .last()
                        .and_then(|l| serde_json::to_value(l).ok())
                        .as_ref(),
                );
                if r.is_none() && p.is_none() && rec_end == rep_end {
                    None
                } else {
                    Some(at(
                        seq,
                        "error",
                        r.clone().unwrap_or(rec_end),
                        p.unwrap_or(rep_end),
                    ))
                }
            }
        }
    });
    Ok(divergence.map(|mut d| {
        d.call = call.call;
        d.node = node_of(call);
        d
    }))
}

/// The first call, by order, whose tool or arguments differ, or that only one side made.
fn first_tool_divergence(
    recorded: &BTreeMap<u32, ToolCallView>,
    made: &BTreeMap<u32, (String, serde_json::Value)>,
) -> Option<Divergence> {
    let last = recorded
        .keys()
        .chain(made.keys())
        .copied()
        .max()
        .unwrap_or(0);
    (1..=last).find_map(|seq| {
        let r = recorded.get(&seq).map(|c| call_json(&c.tool, &c.args));
        let p = made.get(&seq).map(|(t, a)| call_json(t, a));
        (r != p).then(|| Divergence {
            call: 0,
            node: None,
            seq,
            kind: "tool_call",
            recorded: r.unwrap_or(serde_json::Value::Null),
            replayed: p.unwrap_or(serde_json::Value::Null),
        })
    })
}
