//! What a call writes to the journal: its run, its task as sent, each attempt with what the
//! agent saw and did (contract, log lines, tool calls and answers, a heartbeat summary) and its
//! exit record, and the call's end. Also where run ids are made and the journal is opened.
//!
//! Entries are queued ([`Journal::append`]) as they happen, so that the runtime never waits on
//! the disk per event; an attempt's record and the call's end are written durably
//! ([`Journal::durable`]) before the caller is told.

use crate::child::{Note, Notes};
use crate::journal::{Entry, Journal, JournalError, RunStatus};
use crate::record::ExitReason;
use crate::record::ExitRecord;
use corral_proto::{AgentError, Value};
use std::sync::Arc;
use std::time::SystemTime;

/// The tool calls of one attempt the journal keeps (the first ones, in the order answered).
pub const MAX_TOOL_CALLS_PER_ATTEMPT: u64 = 4096;

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An agent's error as data: `{kind, message, retryable}`.
pub(crate) fn error_json(e: &AgentError) -> serde_json::Value {
    serde_json::json!({ "kind": e.kind, "message": e.message, "retryable": e.retryable })
}

/// A list of notes as one JSON list.
fn list_json(values: &[Value]) -> serde_json::Value {
    serde_json::Value::Array(values.iter().map(Value::to_json).collect())
}

/// A call that is one task of a larger run (a plan's node instance), not a run of its own.
#[derive(Debug, Clone)]
pub struct JournalCall {
    /// The run it belongs to (already begun).
    pub run_id: String,
    /// Its number in the run, from 1.
    pub call: u32,
    /// What it is in the run (for a plan: `{node, index, parent}`), journalled as its `event`.
    pub node: serde_json::Value,
    /// The kind of that event: `node` (a plan's node instance) or `child` (an agent called by
    /// another).
    pub event: &'static str,
}

/// The journal of one call: one task given to one agent type, in its run.
pub(crate) struct CallJournal {
    journal: Journal,
    run_id: Arc<str>,
    call: u32,
    /// The call is its own run (begun and ended with it).
    own_run: bool,
}

impl CallJournal {
    /// Begin the run `run_id` (a call is a run of its own) and its task.
    pub(crate) fn begin(
        journal: &Journal,
        run_id: &str,
        agent: &str,
        config_digest: &str,
        input: &Value,
        memory: &[Value],
    ) -> CallJournal {
        let at_ms = now_ms();
        journal.append(Entry::RunStarted {
            run_id: run_id.to_string(),
            agent: agent.to_string(),
            kind: "call".to_string(),
            config_hash: config_digest.to_string(),
            started_at_ms: at_ms,
            input: None,
        });
        journal.append(Entry::CallStarted {
            run_id: run_id.to_string(),
            call: 1,
            agent: agent.to_string(),
            input: input.to_json(),
            memory: list_json(memory),
            at_ms,
        });
        CallJournal {
            journal: journal.clone(),
            run_id: run_id.into(),
            call: 1,
            own_run: true,
        }
    }

    /// Begin task `jc.call` of the run `jc.run_id`, begun by its owner.
    pub(crate) fn join(
        journal: &Journal,
        jc: &JournalCall,
        agent: &str,
        input: &Value,
        memory: &[Value],
    ) -> CallJournal {
        let at_ms = now_ms();
        journal.append(Entry::CallStarted {
            run_id: jc.run_id.clone(),
            call: jc.call,
            agent: agent.to_string(),
            input: input.to_json(),
            memory: list_json(memory),
            at_ms,
        });
        journal.append(Entry::Event {
            run_id: jc.run_id.clone(),
            call: jc.call,
            attempt: 0,
            at_ms,
            kind: jc.event.to_string(),
            payload: jc.node.clone(),
        });
        CallJournal {
            journal: journal.clone(),
            run_id: jc.run_id.as_str().into(),
            call: jc.call,
            own_run: false,
        }
    }

    /// Attempt `attempt` starts: its start, for the caller to queue (see [`Journal::append`])
    /// before any of its notes, and where its notes go.
    pub(crate) fn attempt(&self, attempt: u32) -> (Entry, Notes) {
        let started = Entry::AttemptStarted {
            run_id: self.run_id.to_string(),
            call: self.call,
            attempt,
            at_ms: now_ms(),
        };
        (started, self.notes(attempt))
    }

    /// The journal written to.
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Where the notes of attempt `attempt` go.
    fn notes(&self, attempt: u32) -> Notes {
        let journal = self.journal.clone();
        let run_id = self.run_id.clone();
        let call = self.call;
        let tool_calls = std::sync::atomic::AtomicU64::new(0);
        Arc::new(move |note: Note| {
            let at_ms = now_ms();
            let event = |kind: &str, payload: serde_json::Value| Entry::Event {
                run_id: run_id.to_string(),
                call,
                attempt,
                at_ms,
                kind: kind.to_string(),
                payload,
            };
            let entry = match note {
                Note::Contract(c) => event(
                    "contract",
                    serde_json::to_value(&c).unwrap_or(serde_json::Value::Null),
                ),
                Note::Logs(lines) => {
                    // One event per run of lines of one level: `{level, lines: [text, …]}`.
                    let mut runs: Vec<(corral_proto::LogLevel, Vec<serde_json::Value>)> =
                        Vec::new();
                    for l in lines {
                        match runs.last_mut() {
                            Some((level, texts)) if *level == l.level => {
                                texts.push(serde_json::Value::String(l.text))
                            }
                            _ => runs.push((l.level, vec![serde_json::Value::String(l.text)])),
                        }
                    }
                    for (level, texts) in runs {
                        let mut payload = serde_json::Map::new();
                        payload.insert("level".into(), log_level(level).into());
                        payload.insert("lines".into(), serde_json::Value::Array(texts));
                        journal.append(event("log", serde_json::Value::Object(payload)));
                    }
                    return;
                }
                Note::Summary {
                    heartbeats,
                    progress,
                } => event(
                    "heartbeats",
                    serde_json::json!({ "heartbeats": heartbeats, "progress": progress }),
                ),
                Note::ToolCall {
                    seq,
                    call_id,
                    tool,
                    args,
                    result,
                    duration_ms,
                    deduplicated,
                } => {
                    // A bounded number per attempt: an agent looping on calls cannot grow
                    // the journal without end. Past it, one event says so.
                    let n = tool_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n == MAX_TOOL_CALLS_PER_ATTEMPT {
                        journal.append(event(
                            "tool_calls_dropped",
                            serde_json::json!({ "kept": MAX_TOOL_CALLS_PER_ATTEMPT, "from_seq": seq }),
                        ));
                    }
                    if n >= MAX_TOOL_CALLS_PER_ATTEMPT {
                        return;
                    }
                    let (status, result) = match &result {
                        Ok(v) => ("ok".to_string(), v.to_json()),
                        Err(e) => (e.kind.clone(), error_json(e)),
                    };
                    Entry::ToolCall {
                        run_id: run_id.to_string(),
                        call,
                        attempt,
                        seq,
                        call_id,
                        tool,
                        args: args.to_json(),
                        status,
                        result,
                        duration_ms,
                        deduplicated,
                        at_ms,
                    }
                }
            };
            journal.append(entry);
        })
    }

    /// An attempt's record, its decision made, as an entry (for the caller to queue).
    pub(crate) fn attempt_entry(&self, rec: &ExitRecord) -> Entry {
        Entry::AttemptEnded {
            run_id: self.run_id.to_string(),
            call: self.call,
            attempt: rec.attempt,
            record: serde_json::to_value(rec).unwrap_or(serde_json::Value::Null),
            reason: rec.reason.as_str().to_string(),
            decision: rec.decision.as_str().to_string(),
            pid: rec.pid,
            started_at: rec.started_at.clone(),
            ended_at: rec.ended_at.clone(),
            duration_ms: rec.duration_ms,
        }
    }

    /// A task served by a service agent ended (its records belong to the agent's instance,
    /// not to the task): its output or error, durably, and the run ends with it.
    pub(crate) async fn served(
        &self,
        result: &Result<(Value, Vec<Value>), AgentError>,
        cancelled: bool,
    ) -> Result<(), JournalError> {
        let at_ms = now_ms();
        let (output, memory, error) = match result {
            Ok((o, m)) => (Some(o.to_json()), list_json(m), None),
            Err(e) => (None, list_json(&[]), Some(error_json(e))),
        };
        let status = match (&output, cancelled, result) {
            (Some(_), _, _) => RunStatus::Succeeded,
            (None, true, _) => RunStatus::Cancelled,
            // Stopped by the daemon's drain.
            (None, false, Err(e)) if e.kind == ExitReason::Shutdown.as_str() => {
                RunStatus::Interrupted
            }
            (None, false, _) => RunStatus::Failed,
        };
        self.journal.append(Entry::CallEnded {
            run_id: self.run_id.to_string(),
            call: self.call,
            output,
            memory,
            error,
            at_ms,
        });
        self.journal
            .durable(Entry::RunEnded {
                run_id: self.run_id.to_string(),
                status,
                at_ms,
            })
            .await
    }

    /// The call ended with `output` (and `memory`) or the last record's error, `last` being its
    /// last attempt's record; the run ends with it (when the call is a run of its own). All of
    /// it durable, written together.
    pub(crate) async fn ended(
        &self,
        output: Option<&Value>,
        memory: &[Value],
        last: Option<&ExitRecord>,
    ) -> Result<(), JournalError> {
        let at_ms = now_ms();
        let error = match output {
            Some(_) => None,
            None => last.and_then(|r| r.error.as_ref()).map(|e| {
                serde_json::json!({ "kind": e.kind, "message": e.message, "retryable": e.retryable })
            }),
        };
        let mut entries = Vec::with_capacity(3);
        if let Some(rec) = last {
            entries.push(self.attempt_entry(rec));
        }
        // A checkpoint of its run when it is a task of a larger one: durable before any
        // dependant starts.
        entries.push(Entry::CallEnded {
            run_id: self.run_id.to_string(),
            call: self.call,
            output: output.map(Value::to_json),
            memory: list_json(memory),
            error,
            at_ms,
        });
        if self.own_run {
            // Cancelled by its owner (`corral cancel`), stopped by a shutdown, or failed.
            let status = match (output, last.map(|r| r.reason)) {
                (Some(_), _) => RunStatus::Succeeded,
                (None, Some(ExitReason::Cancelled)) => RunStatus::Cancelled,
                (None, Some(ExitReason::Shutdown)) => RunStatus::Interrupted,
                (None, _) => RunStatus::Failed,
            };
            entries.push(Entry::RunEnded {
                run_id: self.run_id.to_string(),
                status,
                at_ms,
            });
        }
        self.journal.durable_many(entries).await
    }
}

/// A fresh, sortable, unique-enough run id: `r<ms since epoch, base 36>-<pid>-<seq>`.
pub fn new_run_id(seq: u64) -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("r{}-{}-{}", base36(ms), std::process::id(), seq)
}

fn base36(mut n: u64) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(D[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The journal at `<state_dir>/corral.db`, opened (and recovered) unless `journal = false`.
pub(super) fn open_journal(
    config: &crate::config::Config,
) -> Result<Option<Journal>, super::RunError> {
    if !config.supervisor.journal {
        return Ok(None);
    }
    let dir = &config.supervisor.state_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| super::RunError::Setup(format!("create state_dir {}: {e}", dir.display())))?;
    let journal =
        Journal::open_synced(&dir.join("corral.db"), config.supervisor.journal_sync_full)?;
    let r = journal.recovered();
    if r.attempts_lost > 0 || r.runs_interrupted > 0 {
        tracing::warn!(
            "journal: {} attempt(s) left unfinished by a previous supervisor marked lost, {} run(s) interrupted",
            r.attempts_lost,
            r.runs_interrupted
        );
    }
    if let Some(keep) = config.supervisor.journal_keep {
        journal.start_pruning(keep);
    }
    Ok(Some(journal))
}

/// A log level as the journal names it.
fn log_level(level: corral_proto::LogLevel) -> &'static str {
    use corral_proto::LogLevel;
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}
