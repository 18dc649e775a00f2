//! What makes a repeated tool call cheap or safe: the run's trace of read-only and idempotent
//! results (answered again without executing), and the [`ToolLedger`] of destructive calls
//! (executed at most once per key).
//!
//! The ledger is a small, object-safe trait so that a persistent store (the journal) can keep
//! it across supervisor restarts; [`MemoryLedger`] keeps it in memory, bounded. Both stores
//! forget whole runs, oldest first, past their bounds: a run that old is not retried.

use crate::config::{ToolKind, ToolSpec};
use corral_proto::{AgentError, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Runs kept at most (de-duplication trace and in-memory ledger, each).
pub const MAX_RUNS: usize = 256;
/// Result bytes kept at most (de-duplication trace and in-memory ledger, each).
pub const MAX_BYTES: usize = 64 << 20;
/// Entries kept at most per run.
pub const MAX_PER_RUN: usize = 4096;

/// The idempotency key of a destructive call: the same in every attempt that repeats it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerKey {
    /// The run.
    pub run_id: String,
    /// The task within the run.
    pub task: String,
    /// The call's sequence number within the task.
    pub seq: u64,
}

/// What the ledger knows of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEntry {
    /// Execution began (of `tool` with args of hash `args_hash`) and has not finished.
    Started {
        /// The tool.
        tool: String,
        /// The arguments' hash.
        args_hash: String,
    },
    /// Execution finished with this result.
    Finished {
        /// The tool.
        tool: String,
        /// The arguments' hash.
        args_hash: String,
        /// What it returned.
        result: Result<Value, AgentError>,
    },
}

/// Where destructive calls are recorded before and after they run. Implementations are
/// shared by every run of a broker; a failing store refuses the call (it is not executed).
pub trait ToolLedger: Send + Sync {
    /// What is recorded under `key`.
    fn lookup(&self, key: &LedgerKey) -> std::io::Result<Option<LedgerEntry>>;
    /// Execution of `tool` (args of hash `args_hash`) under `key` begins.
    fn begin(&self, key: &LedgerKey, tool: &str, args_hash: &str) -> std::io::Result<()>;
    /// Execution under `key` finished with `result`.
    fn finish(&self, key: &LedgerKey, result: &Result<Value, AgentError>) -> std::io::Result<()>;
}

/// Entries by run, oldest run first, within [`MAX_RUNS`] and [`MAX_BYTES`].
struct Runs<K, V> {
    order: VecDeque<String>,
    runs: HashMap<String, HashMap<K, (V, usize)>>,
    bytes: usize,
}

impl<K: std::hash::Hash + Eq, V> Default for Runs<K, V> {
    fn default() -> Self {
        Runs {
            order: VecDeque::new(),
            runs: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Runs<K, V> {
    fn get(&self, run: &str, key: &K) -> Option<&V> {
        self.runs.get(run)?.get(key).map(|(v, _)| v)
    }

    /// Keep `v` (of `size` bytes); `false` when the run is full.
    fn put(&mut self, run: &str, key: K, v: V, size: usize) -> bool {
        if size > MAX_BYTES / 4 {
            return false;
        }
        if !self.runs.contains_key(run) {
            self.order.push_back(run.to_string());
            self.runs.insert(run.to_string(), HashMap::new());
        }
        let Some(entries) = self.runs.get_mut(run) else {
            return false;
        };
        if entries.len() >= MAX_PER_RUN && !entries.contains_key(&key) {
            return false;
        }
        if let Some((_, old)) = entries.insert(key, (v, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.order.len() > MAX_RUNS || self.bytes > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.runs.remove(&oldest) {
                self.bytes -= gone.values().map(|(_, s)| *s).sum::<usize>();
            }
            if oldest == run {
                return false;
            }
        }
        true
    }
}

/// The size a result takes in memory, roughly (its JSON length is not known here).
pub(super) fn result_size(r: &Result<Value, AgentError>) -> usize {
    fn size(v: &Value) -> usize {
        match v {
            Value::String(s) => 32 + s.len(),
            Value::Bytes(b) => 32 + b.len(),
            Value::List(l) => 32 + l.iter().map(size).sum::<usize>(),
            Value::Map(m) => 32 + m.iter().map(|(k, v)| 32 + k.len() + size(v)).sum::<usize>(),
            _ => 32,
        }
    }
    match r {
        Ok(v) => size(v),
        Err(e) => 64 + e.kind.len() + e.message.len(),
    }
}

/// A [`ToolLedger`] in memory: lost with the supervisor, bounded.
#[derive(Default)]
pub struct MemoryLedger {
    runs: Mutex<Runs<(String, u64), LedgerEntry>>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> MemoryLedger {
        MemoryLedger::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Runs<(String, u64), LedgerEntry>) -> R) -> R {
        f(&mut self.runs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ToolLedger for MemoryLedger {
    fn lookup(&self, key: &LedgerKey) -> std::io::Result<Option<LedgerEntry>> {
        Ok(self.with(|r| r.get(&key.run_id, &(key.task.clone(), key.seq)).cloned()))
    }

    fn begin(&self, key: &LedgerKey, tool: &str, args_hash: &str) -> std::io::Result<()> {
        let entry = LedgerEntry::Started {
            tool: tool.to_string(),
            args_hash: args_hash.to_string(),
        };
        let size = 64 + tool.len() + args_hash.len() + key.task.len();
        let kept = self.with(|r| r.put(&key.run_id, (key.task.clone(), key.seq), entry, size));
        if kept {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "the tool ledger is full for run {} (at most {MAX_PER_RUN} destructive calls \
                 per run are kept in memory)",
                key.run_id
            )))
        }
    }

    fn finish(&self, key: &LedgerKey, result: &Result<Value, AgentError>) -> std::io::Result<()> {
        self.with(|r| {
            let k = (key.task.clone(), key.seq);
            let (tool, args_hash) = match r.get(&key.run_id, &k) {
                Some(LedgerEntry::Started { tool, args_hash })
                | Some(LedgerEntry::Finished {
                    tool, args_hash, ..
                }) => (tool.clone(), args_hash.clone()),
                None => return,
            };
            let size = 64 + tool.len() + key.task.len() + result_size(result);
            let entry = LedgerEntry::Finished {
                tool,
                args_hash,
                result: result.clone(),
            };
            r.put(&key.run_id, k, entry, size);
        });
        Ok(())
    }
}

/// What makes two calls of a run the same call for de-duplication: the tool, the hash of its
/// arguments, and for the file tools who asked. A file tool's answer depends on the caller: a
/// relative path is its attempt's workspace, and what it may reach is its agent's grants. So
/// one agent is never answered from another's read, nor a retry from its predecessor's
/// workspace. A command or http tool runs the same whoever calls it (each caller's grant is
/// checked before the trace is asked), so its identical calls are one across the run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DedupKey {
    tool: String,
    args_hash: String,
    /// Agent, task and attempt, for a file tool; empty otherwise.
    caller: String,
}

impl DedupKey {
    /// The key of `req`'s call of the tool `spec`.
    pub(super) fn of(req: &crate::ToolRequest, spec: &ToolSpec, args_hash: &str) -> DedupKey {
        let caller = match spec.kind {
            ToolKind::Builtin(_) => format!("{}\0{}\0{}", req.agent, req.task, req.attempt),
            ToolKind::Command(_) | ToolKind::Http(_) => String::new(),
        };
        DedupKey {
            tool: req.call.tool.clone(),
            args_hash: args_hash.to_string(),
            caller,
        }
    }

    fn size(&self) -> usize {
        self.tool.len() + self.args_hash.len() + self.caller.len()
    }
}

/// The results of read-only and idempotent calls per run, by [`DedupKey`].
#[derive(Default)]
pub(super) struct DedupTrace {
    runs: Mutex<Runs<DedupKey, Value>>,
}

impl DedupTrace {
    /// The result of an earlier identical call in `run`.
    pub(super) fn get(&self, run: &str, key: &DedupKey) -> Option<Value> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(run, key).cloned()
    }

    /// Keep a successful result (within the bounds; past them it is simply not kept).
    pub(super) fn put(&self, run: &str, key: DedupKey, v: &Value) {
        let size = result_size(&Ok(v.clone())) + key.size();
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.put(run, key, v.clone(), size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(run: &str, seq: u64) -> LedgerKey {
        LedgerKey {
            run_id: run.into(),
            task: "t".into(),
            seq,
        }
    }

    #[test]
    fn a_ledger_records_begin_then_finish() {
        let l = MemoryLedger::new();
        assert_eq!(l.lookup(&key("r", 1)).unwrap(), None);
        l.begin(&key("r", 1), "rm", "h").unwrap();
        assert!(matches!(
            l.lookup(&key("r", 1)).unwrap(),
            Some(LedgerEntry::Started { .. })
        ));
        l.finish(&key("r", 1), &Ok(Value::Int(3))).unwrap();
        match l.lookup(&key("r", 1)).unwrap() {
            Some(LedgerEntry::Finished { tool, result, .. }) => {
                assert_eq!(tool, "rm");
                assert_eq!(result, Ok(Value::Int(3)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.lookup(&key("other", 1)).unwrap(), None);
    }

    #[test]
    fn old_runs_are_forgotten_past_the_bound_and_a_full_run_refuses() {
        let l = MemoryLedger::new();
        for i in 0..(MAX_RUNS + 10) {
            l.begin(&key(&format!("r{i}"), 1), "t", "h").unwrap();
        }
        assert_eq!(l.lookup(&key("r0", 1)).unwrap(), None, "oldest run gone");
        assert!(l
            .lookup(&key(&format!("r{}", MAX_RUNS + 9), 1))
            .unwrap()
            .is_some());
        for seq in 0..MAX_PER_RUN as u64 {
            l.begin(&key("full", seq), "t", "h").unwrap();
        }
        let e = l.begin(&key("full", u64::MAX), "t", "h").unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
    }

    #[test]
    fn the_dedup_trace_stays_within_its_bytes() {
        let d = DedupTrace::default();
        let big = Value::String("x".repeat(MAX_BYTES / 8));
        let k = || DedupKey {
            tool: "t".into(),
            args_hash: "h".into(),
            caller: String::new(),
        };
        for i in 0..32 {
            d.put(&format!("r{i}"), k(), &big);
        }
        let bytes = d.runs.lock().unwrap().bytes;
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(d.get("r31", &k()).is_some(), "the newest run is kept");
        assert!(d.get("r0", &k()).is_none(), "the oldest is gone");
    }
}
