//! The writer's queue, bounded in bytes: what callers hand over waits here until the writer
//! takes it all as one batch. No I/O.
//!
//! When the queued entries reach the limit, events and tool calls (the entries an agent can
//! make many of) are not queued but counted per run; the writer then writes one `dropped`
//! event per run with the counts (`{"events": n, "tool_calls": m}`). Starts and ends of runs,
//! calls and attempts, and whatever a caller waits on ([`Item::Durable`]), are always queued:
//! they are a handful per attempt, and dropping one would lose a record or leave a run
//! looking unfinished.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Entry, JournalError};

/// Past this many runs with drops, further drops are only counted in total.
const MAX_DROP_RUNS: usize = 4096;

/// An answer to a caller waiting on a batch.
pub(super) type Ack = oneshot::Sender<Result<(), JournalError>>;

/// One thing handed to the writer.
pub(super) enum Item {
    /// Write it; nobody waits.
    Entry(Entry),
    /// Write it and answer once its transaction committed (or failed).
    Durable(Entry, Ack),
    /// Answer once everything queued before it is committed.
    Flush(Ack),
}

/// What was dropped of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dropped {
    pub events: u64,
    pub tool_calls: u64,
    /// Where the last dropped entry belonged.
    pub call: u32,
    pub attempt: u32,
}

/// The queue.
pub(super) struct Queue {
    items: Vec<Item>,
    bytes: usize,
    limit: usize,
    dropped: BTreeMap<String, Dropped>,
    /// Drops not attributed to a run (past [`MAX_DROP_RUNS`]).
    pub dropped_untracked: u64,
    /// No more items will come: the writer finishes what is queued and stops.
    pub closed: bool,
    /// Items someone waits on ([`Item::Durable`], [`Item::Flush`]) now queued.
    waiters: usize,
    /// When the oldest queued item was pushed.
    since: Option<Instant>,
}

impl Queue {
    pub(super) fn new(limit: usize) -> Queue {
        Queue {
            items: Vec::new(),
            bytes: 0,
            limit,
            dropped: BTreeMap::new(),
            dropped_untracked: 0,
            closed: false,
            waiters: 0,
            since: None,
        }
    }

    /// Queues an item; an event or tool call past the byte limit is counted instead. Returns
    /// whether it was queued.
    pub(super) fn push(&mut self, item: Item) -> bool {
        let size = match &item {
            Item::Entry(e) => {
                let size = entry_size(e);
                if self.bytes.saturating_add(size) > self.limit && self.count_drop(e) {
                    return false;
                }
                size
            }
            Item::Durable(e, _) => {
                self.waiters += 1;
                entry_size(e)
            }
            Item::Flush(_) => {
                self.waiters += 1;
                0
            }
        };
        self.bytes = self.bytes.saturating_add(size);
        self.items.push(item);
        self.since.get_or_insert_with(Instant::now);
        true
    }

    /// Whether someone waits on what is queued (the writer commits at once then).
    pub(super) fn awaited(&self) -> bool {
        self.waiters > 0
    }

    /// When the oldest item still queued was pushed.
    pub(super) fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Counts a droppable entry as dropped (`false`: it may not be dropped).
    fn count_drop(&mut self, e: &Entry) -> bool {
        let (run_id, call, attempt, tool) = match e {
            Entry::Event {
                run_id,
                call,
                attempt,
                ..
            } => (run_id, *call, *attempt, false),
            Entry::ToolCall {
                run_id,
                call,
                attempt,
                ..
            } => (run_id, *call, *attempt, true),
            _ => return false,
        };
        if !self.dropped.contains_key(run_id) && self.dropped.len() >= MAX_DROP_RUNS {
            self.dropped_untracked += 1;
            return true;
        }
        let d = self.dropped.entry(run_id.clone()).or_default();
        if tool {
            d.tool_calls += 1;
        } else {
            d.events += 1;
        }
        d.call = call;
        d.attempt = attempt;
        true
    }

    /// Whether nothing waits to be written.
    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped.is_empty()
    }

    /// Bytes queued (estimated).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes everything queued, and the drop counts, leaving the queue empty.
    pub(super) fn take(&mut self) -> (Vec<Item>, BTreeMap<String, Dropped>) {
        self.bytes = 0;
        self.waiters = 0;
        self.since = None;
        (
            std::mem::take(&mut self.items),
            std::mem::take(&mut self.dropped),
        )
    }
}

/// The `dropped` event that records what was left out of one run.
pub(super) fn dropped_event(run_id: String, d: Dropped, at_ms: i64) -> Entry {
    Entry::Event {
        run_id,
        call: d.call,
        attempt: d.attempt,
        at_ms,
        kind: "dropped".into(),
        payload: serde_json::json!({ "events": d.events, "tool_calls": d.tool_calls }),
    }
}

/// What an entry costs in the queue: its payloads' sizes plus a fixed overhead.
pub(super) fn entry_size(e: &Entry) -> usize {
    const BASE: usize = 128;
    let payloads = match e {
        Entry::RunStarted {
            agent,
            kind,
            config_hash,
            input,
            ..
        } => agent.len() + kind.len() + config_hash.len() + input.as_ref().map_or(0, json_size),
        Entry::CallStarted {
            agent,
            input,
            memory,
            ..
        } => agent.len() + json_size(input) + json_size(memory),
        Entry::AttemptStarted { .. } | Entry::RunEnded { .. } => 0,
        Entry::Event { kind, payload, .. } => kind.len() + json_size(payload),
        Entry::ToolCall {
            tool,
            args,
            status,
            result,
            ..
        } => tool.len() + json_size(args) + status.len() + json_size(result),
        Entry::AttemptEnded {
            record,
            reason,
            decision,
            started_at,
            ended_at,
            ..
        } => json_size(record) + reason.len() + decision.len() + started_at.len() + ended_at.len(),
        Entry::CallEnded {
            output,
            memory,
            error,
            ..
        } => {
            output.as_ref().map_or(0, json_size)
                + json_size(memory)
                + error.as_ref().map_or(0, json_size)
        }
    };
    BASE + e.run_id().len() + payloads
}

/// The memory a JSON value holds, roughly (walked without recursion: any depth is fine).
pub(super) fn json_size(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    const NODE: usize = 32;
    let mut total = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total = total.saturating_add(NODE);
        match v {
            Value::String(s) => total = total.saturating_add(s.len()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, v) in map {
                    total = total.saturating_add(k.len());
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}
