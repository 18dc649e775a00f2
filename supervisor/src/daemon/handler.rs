//! The daemon's answers to control requests (see [`crate::control::Request`]).

use super::service::ServiceAgent;
use super::state::{Daemon, RunEntry, MAX_RUNS};
use crate::child::{TaskCancel, TaskState};
use crate::control::{Handler, Peer, Replies, Request, Response};
use crate::plan::{run_plan, Plan, PlanOptions, PlanStatus};
use crate::{CallOptions, ExitReason, Stop, Value};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The control handler: a weak hold on the daemon (the socket must not keep it alive).
pub(crate) struct Control(pub std::sync::Weak<Daemon>);

impl Handler for Control {
    fn handle(&self, _peer: &Peer, req: Request, replies: Replies) {
        let Some(d) = self.0.upgrade() else {
            let _ = replies.try_send(Response::error("draining", "the daemon is stopping"));
            return;
        };
        handle(&d, req, replies);
    }
}

fn json(v: impl serde::Serialize) -> Response {
    Response::Json(serde_json::to_string(&v).unwrap_or_else(|_| "null".into()))
}

fn reply(replies: &Replies, r: Response) {
    let _ = replies.try_send(r);
}

fn handle(d: &Arc<Daemon>, req: Request, replies: Replies) {
    match req {
        Request::Ps => reply(&replies, json(d.ps())),
        Request::Status => reply(&replies, json(d.status().0)),
        Request::Stop { agent } => reply(&replies, stop_agent(d, &agent)),
        Request::Start { agent } => reply(&replies, start_agent(d, &agent)),
        Request::Restart { agent } => {
            let r = match stop_agent(d, &agent) {
                Response::Error { .. } if d.sup.agent_spec(&agent).is_none() => {
                    stop_agent(d, &agent)
                }
                _ => start_agent(d, &agent),
            };
            reply(&replies, r)
        }
        Request::Reset { agent } => {
            if d.sup.agent_spec(&agent).is_none() {
                return reply(&replies, unknown(d, &agent));
            }
            d.sup.reset_agent(&agent);
            tracing::info!(agent = %agent, "breaker closed and quarantine lifted by an operator");
            reply(
                &replies,
                json(serde_json::json!({"agent": agent, "reset": true})),
            )
        }
        Request::Cancel { run_id } => {
            let runs = d.runs.lock().unwrap_or_else(|p| p.into_inner());
            let r = match runs.get(&run_id) {
                Some(RunEntry { stop: Some(h), .. }) => {
                    h.stop(ExitReason::Cancelled);
                    json(serde_json::json!({"run_id": run_id, "cancelled": true}))
                }
                Some(RunEntry { task: Some(t), .. }) => {
                    let was = match t.cancel() {
                        TaskState::Queued | TaskState::CancelledQueued => "queued",
                        TaskState::Running | TaskState::CancelledRunning => "running",
                    };
                    tracing::info!(run = %run_id, was, "task cancelled by an operator");
                    json(serde_json::json!({"run_id": run_id, "cancelled": true, "was": was}))
                }
                Some(_) => Response::error(
                    "unsupported",
                    format!("run `{run_id}` cannot be cancelled yet: try again"),
                ),
                None => Response::error("unknown_run", format!("no run `{run_id}` under way")),
            };
            reply(&replies, r)
        }
        Request::SubmitTask { agent, input, wait } => submit_task(d, agent, &input, wait, replies),
        Request::SubmitPlan {
            path,
            text,
            input,
            wait,
        } => submit_plan(d, &path, &text, &input, wait, replies),
        Request::Logs { agent, follow } => {
            if d.sup.agent_spec(&agent).is_none() {
                return reply(&replies, unknown(d, &agent));
            }
            let mut events = d.events.subscribe();
            for line in d.recent_logs(&agent) {
                if replies.try_send(Response::Line(line)).is_err() {
                    return;
                }
            }
            if !follow {
                return reply(&replies, json(serde_json::Value::Null));
            }
            tokio::spawn(async move {
                while let Some(line) = next_event(&mut events, &replies).await {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v["event"] == "log" && v["agent"] == agent.as_str() {
                        let text = v["line"].as_str().unwrap_or_default().to_string();
                        let _ = replies.try_send(Response::Line(text));
                    }
                }
            });
        }
        Request::Events => {
            let mut events = d.events.subscribe();
            tokio::spawn(async move {
                while let Some(line) = next_event(&mut events, &replies).await {
                    // A follower that does not read loses lines, never grows the daemon.
                    let _ = replies.try_send(Response::Line(line));
                }
            });
        }
        Request::Approvals => reply(&replies, json(d.approvals.pending())),
        Request::Decide { id, allow } => {
            let r = match d.approvals.decide(&id, allow) {
                Ok(()) => json(serde_json::json!({"id": id, "approved": allow})),
                Err(e) => Response::error("unknown_approval", e),
            };
            reply(&replies, r)
        }
    }
}

/// The next event for a follower, until the follower is gone or the daemon stops.
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<String>,
    replies: &Replies,
) -> Option<String> {
    loop {
        tokio::select! {
            r = events.recv() => match r {
                Ok(line) => return Some(line),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            },
            _ = replies.closed() => return None,
        }
    }
}

fn unknown(d: &Daemon, agent: &str) -> Response {
    let known = d.sup.agent_names();
    Response::error(
        "unknown_agent",
        format!("no agent named `{agent}`; configured: {}", known.join(", ")),
    )
}

fn stop_agent(d: &Arc<Daemon>, agent: &str) -> Response {
    let Some(spec) = d.sup.agent_spec(agent) else {
        return unknown(d, agent);
    };
    if !spec.service {
        return Response::error(
            "not_service",
            format!("agent `{agent}` is not a service agent"),
        );
    }
    let old = d
        .services
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(agent);
    d.stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(agent.to_string());
    if let Some(s) = &old {
        s.stop(ExitReason::Shutdown);
    }
    tracing::info!(agent = %agent, "service agent stopped by an operator");
    json(serde_json::json!({"agent": agent, "stopped": true}))
}

fn start_agent(d: &Arc<Daemon>, agent: &str) -> Response {
    let Some(spec) = d.sup.agent_spec(agent) else {
        return unknown(d, agent);
    };
    if !spec.service {
        return Response::error(
            "not_service",
            format!("agent `{agent}` is not a service agent"),
        );
    }
    if d.draining.load(Ordering::SeqCst) {
        return Response::error("draining", "the daemon is stopping");
    }
    d.stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(agent);
    let mut services = d.services.lock().unwrap_or_else(|p| p.into_inner());
    if !services.contains_key(agent) {
        services.insert(agent.to_string(), ServiceAgent::start(d, spec));
    }
    json(serde_json::json!({"agent": agent, "started": true}))
}

/// Register a run; `Err` when too many are under way or the daemon drains.
fn admit(d: &Daemon, what: &str, stop: Option<crate::StopHandle>) -> Result<String, Response> {
    if d.draining.load(Ordering::SeqCst) {
        return Err(Response::error(
            "draining",
            "the daemon is stopping: no new work",
        ));
    }
    let mut runs = d.runs.lock().unwrap_or_else(|p| p.into_inner());
    if runs.len() >= MAX_RUNS {
        return Err(Response::error(
            "busy",
            format!("{MAX_RUNS} runs already under way"),
        ));
    }
    let seq = d.seq.fetch_add(1, Ordering::Relaxed);
    let run_id = crate::run::new_run_id(seq);
    runs.insert(
        run_id.clone(),
        RunEntry {
            what: what.to_string(),
            stop,
            task: None,
        },
    );
    Ok(run_id)
}

pub(super) fn finished(d: &Daemon, run_id: &str, status: &str) {
    d.runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(run_id);
    d.metrics.run_ended(status);
    let line = serde_json::json!({"event": "run_ended", "run_id": run_id, "status": status});
    let _ = d.events.send(line.to_string());
}

fn parse_input(input: &str) -> Result<Value, Response> {
    serde_json::from_str::<serde_json::Value>(input)
        .map(|v| Value::from_json(&v))
        .map_err(|e| Response::error("bad_request", format!("--input is not valid JSON: {e}")))
}

fn submit_task(d: &Arc<Daemon>, agent: String, input: &str, wait: bool, replies: Replies) {
    let input = match parse_input(input) {
        Ok(v) => v,
        Err(r) => return reply(&replies, r),
    };
    let Some(spec) = d.sup.agent_spec(&agent) else {
        return reply(&replies, unknown(d, &agent));
    };
    if spec.service {
        let run_id = match admit(d, &agent, None) {
            Ok(id) => id,
            Err(r) => return reply(&replies, r),
        };
        let seq = d.seq.fetch_add(1, Ordering::Relaxed);
        let input_value = input.clone();
        let rx = {
            let services = d.services.lock().unwrap_or_else(|p| p.into_inner());
            match services.get(&agent) {
                Some(s) => s.submit(seq, input),
                None => Err(corral_proto::AgentError::new(
                    "stopped",
                    format!("service agent `{agent}` is stopped (corral start {agent})"),
                    true,
                )),
            }
        };
        let (rx, cancel) = match rx {
            Ok(rx) => rx,
            Err(e) => {
                finished(d, &run_id, "failed");
                return reply(&replies, Response::error(&e.kind, e.message));
            }
        };
        if let Some(r) = d
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&run_id)
        {
            r.task = Some(cancel.clone());
        }
        reply(
            &replies,
            Response::Accepted {
                run_id: run_id.clone(),
            },
        );
        // Journalled like a call: its input now, its output or error when it is served.
        let journal = d.sup.journal().map(|j| {
            crate::run::journal::CallJournal::begin(
                j,
                &run_id,
                &agent,
                &d.sup.config().digest,
                &input_value,
                &[],
            )
        });
        let waiter = wait.then_some(replies);
        let d = d.clone();
        tokio::spawn(async move {
            let result = served(rx, &cancel).await;
            // Cancelled: an agent that answered anyway (its answer crossed the `Cancel`)
            // has its answer kept.
            let cancelled = cancel.state().cancelled() && result.is_err();
            if let Some(j) = &journal {
                if let Err(e) = j.served(&result, cancelled).await {
                    tracing::warn!(run = %run_id, "journal: {e}");
                }
            }
            let (doc, output, exit, summary) = match result {
                Ok((out, _)) => {
                    let out = out.to_json();
                    let doc = serde_json::json!({"run_id": run_id, "output": out, "attempts": []});
                    (doc, out, 0, String::new())
                }
                Err(e) => {
                    // Said as `corral call` says it.
                    let summary = format!("corral: task failed: {}: {}", e.kind, e.message);
                    let error = serde_json::json!({"kind": e.kind, "message": e.message, "retryable": e.retryable});
                    let doc = serde_json::json!({"run_id": run_id, "output": null, "error": error, "attempts": []});
                    (doc, serde_json::Value::Null, 1, summary)
                }
            };
            let status = match (exit, cancelled) {
                (0, _) => "succeeded",
                (_, true) => "cancelled",
                _ => "failed",
            };
            finished(&d, &run_id, status);
            if let Some(replies) = waiter {
                let _ = replies
                    .send(Response::Finished {
                        json: serde_json::to_string_pretty(&doc).unwrap_or_default(),
                        output: output.to_string(),
                        exit,
                        summary,
                    })
                    .await;
            }
        });
        return;
    }
    let (handle, stop) = Stop::new();
    let run_id = match admit(d, &agent, Some(handle)) {
        Ok(id) => id,
        Err(r) => return reply(&replies, r),
    };
    reply(
        &replies,
        Response::Accepted {
            run_id: run_id.clone(),
        },
    );
    let waiter = wait.then_some(replies);
    let d = d.clone();
    tokio::spawn(async move {
        let Some(slot) = d.agent_slot().await else {
            finished(&d, &run_id, "cancelled");
            let Some(replies) = waiter else { return };
            let _ = replies
                .send(Response::error("draining", "the daemon is stopping"))
                .await;
            return;
        };
        let opts = CallOptions {
            run_id: Some(run_id.clone()),
            stop: Some(stop),
            notes: Some(d.log_notes(&agent)),
            ..Default::default()
        };
        let r = d.sup.call(&agent, input, opts).await;
        drop(slot);
        let resp = match r {
            Ok(o) => {
                for rec in &o.attempts {
                    d.metrics.exited(rec);
                    d.event_record(rec);
                }
                let output = o.output.as_ref().map(|v| v.to_json());
                let doc = serde_json::json!({"run_id": o.run_id, "output": output, "attempts": o.attempts});
                finished(&d, &run_id, if o.ok() { "succeeded" } else { "failed" });
                // Said as `corral call` says it.
                let summary = match o.last().filter(|_| !o.ok()) {
                    Some(last) => format!(
                        "corral: task failed: {} after {} attempt(s): {}",
                        last.reason,
                        o.attempts.len(),
                        last.error
                            .as_ref()
                            .map(|e| e.message.as_str())
                            .unwrap_or("")
                    ),
                    None => String::new(),
                };
                Response::Finished {
                    json: serde_json::to_string_pretty(&doc).unwrap_or_default(),
                    output: output.unwrap_or(serde_json::Value::Null).to_string(),
                    exit: if o.ok() { 0 } else { 1 },
                    summary,
                }
            }
            Err(e) => {
                finished(&d, &run_id, "failed");
                Response::error("run_failed", e.to_string())
            }
        };
        if let Some(replies) = waiter {
            let _ = replies.send(resp).await;
        }
    });
}

/// A service task's answer: the agent's, or `cancelled` at once when it is cancelled while
/// it waits in the queue.
async fn served(
    rx: tokio::sync::oneshot::Receiver<crate::child::ServiceResult>,
    cancel: &TaskCancel,
) -> crate::child::ServiceResult {
    let lost = || {
        Err(corral_proto::AgentError::new(
            "lost",
            "the task's answer was lost",
            true,
        ))
    };
    tokio::select! {
        r = rx => r.unwrap_or_else(|_| lost()),
        () = cancel.cancelled_queued() => Err(corral_proto::AgentError::new(
            "cancelled",
            "cancelled before it started",
            false,
        )),
    }
}

fn submit_plan(d: &Arc<Daemon>, path: &str, text: &str, input: &str, wait: bool, replies: Replies) {
    let input = match parse_input(input) {
        Ok(v) => v,
        Err(r) => return reply(&replies, r),
    };
    let plan = match Plan::parse(text, Path::new(path), d.sup.config()) {
        Ok(p) => p,
        Err(e) => return reply(&replies, Response::error("invalid_plan", e.to_string())),
    };
    let (handle, stop) = Stop::new();
    let run_id = match admit(d, &plan.name, Some(handle)) {
        Ok(id) => id,
        Err(r) => return reply(&replies, r),
    };
    // The daemon's id is the plan run's id in the journal too.
    reply(
        &replies,
        Response::Accepted {
            run_id: run_id.clone(),
        },
    );
    let waiter = wait.then_some(replies);
    let d = d.clone();
    // Resumed by the next daemon if this one stops before the run ends.
    super::resume::remember(&d, &run_id, path, text, &input);
    tokio::spawn(async move {
        let why = stop.clone();
        let opts = PlanOptions {
            input,
            resume: None,
            stop: Some(stop),
            progress: Some(d.plan_progress()),
            run_id: Some(run_id.clone()),
        };
        let r = run_plan(d.sup.clone(), &plan, opts).await;
        // Left for the next daemon only when this one's drain stopped it: a run an operator
        // cancelled stays cancelled (it can still be resumed by hand, `corral run --resume`).
        let drained = matches!(&r, Ok(o) if o.status == PlanStatus::Cancelled)
            && why.reason() == Some(ExitReason::Shutdown);
        if !drained {
            super::resume::forget(&d, &run_id);
        }
        let resp = match r {
            Ok(o) => {
                let exit = match o.status {
                    PlanStatus::Succeeded => 0,
                    PlanStatus::Degraded => 3,
                    PlanStatus::Failed | PlanStatus::Cancelled => 1,
                };
                let summary = format!(
                    "run {}: {} ({} instance(s)); see `corral show {}`",
                    o.run_id,
                    o.status.as_str(),
                    o.nodes.len(),
                    o.run_id
                );
                finished(&d, &run_id, o.status.as_str());
                Response::Finished {
                    json: serde_json::to_string_pretty(&o).unwrap_or_default(),
                    output: o.output.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    exit,
                    summary,
                }
            }
            Err(e) => {
                finished(&d, &run_id, "failed");
                Response::error("run_failed", e.to_string())
            }
        };
        if let Some(replies) = waiter {
            let _ = replies.send(resp).await;
        }
    });
}
