//! What a plan run is given and gives back: its options, the report of each node instance,
//! its outcome; and what a resumed run takes from the journal (the instances that finished).

use crate::journal::RunView;
use crate::record::ExitRecord;
use crate::stop::Stop;
use corral_proto::Value;
use serde::Serialize;
use std::collections::HashMap;

/// How a plan run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PlanStatus {
    /// Every node succeeded.
    Succeeded,
    /// A node failed and its policy was `abort`.
    Failed,
    /// Optional nodes failed and were skipped; the rest succeeded.
    Degraded,
    /// Stopped from outside (SIGINT, SIGTERM); resumable.
    Cancelled,
}

impl PlanStatus {
    /// The snake_case name, as in JSON.
    pub fn as_str(&self) -> &'static str {
        self.into()
    }
}

/// Options of one plan run.
#[derive(Default)]
pub struct PlanOptions {
    /// The run's input (`$input`).
    pub input: Value,
    /// Resume this recorded run instead of starting a new one.
    pub resume: Option<RunView>,
    /// Stop the run from outside: agents are stopped cleanly and the run is `cancelled`.
    pub stop: Option<Stop>,
    /// Told each time an instance starts or ends (for progress displays).
    pub progress: Option<tokio::sync::mpsc::UnboundedSender<NodeReport>>,
    /// The id of a new run (made up when `None`; a resumed run keeps its own).
    pub run_id: Option<String>,
}

/// One node instance, as `corral run --json` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// `node` or `node[index]`.
    pub id: String,
    /// The node.
    pub node: String,
    /// The agent that ran it.
    pub agent: String,
    /// `running`, `succeeded`, `failed`, `skipped`, `cancelled` or `resumed` (finished in an
    /// earlier run of the same plan run).
    pub status: &'static str,
    /// The node it runs in place of (a fallback), if any.
    pub parent: Option<String>,
    /// Its index in a fan-out.
    pub index: Option<usize>,
    /// Bytes of its input (JSON).
    pub input_bytes: usize,
    /// Bytes of the memory notes it got (JSON).
    pub memory_bytes: usize,
    /// Notes dropped to fit `memory_budget`.
    pub memory_trimmed: usize,
    /// Time spent ready but waiting for a slot.
    pub queue_ms: u64,
    /// Its attempts' exit records.
    pub attempts: Vec<ExitRecord>,
    /// Why it failed before any agent ran (its input or `for_each` could not be selected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a plan run produced.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOutcome {
    /// The run.
    pub run_id: String,
    /// How it ended.
    pub status: PlanStatus,
    /// The sink node's output, or a map of the sinks' outputs by id.
    pub output: Option<serde_json::Value>,
    /// Every instance, in dispatch order.
    pub nodes: Vec<NodeReport>,
}

/// Instances of an earlier run of this plan run that finished: (node, index) → output, notes.
pub(super) type Finished = HashMap<(String, Option<usize>), Recorded>;

/// An instance that finished in an earlier run of the plan run, as the journal has it.
pub(super) struct Recorded {
    pub(super) output: Value,
    pub(super) notes: Vec<Value>,
    /// Bytes of the input and of the memory notes it was given (JSON), as reported then.
    pub(super) input_bytes: usize,
    pub(super) memory_bytes: usize,
}

pub(super) fn finished_of(view: &RunView) -> Finished {
    let mut out = Finished::new();
    for c in &view.calls {
        let Some(output) = &c.output else { continue };
        let Some(ev) = c.events.iter().find(|e| e.kind == "node") else {
            continue;
        };
        let node = ev.payload.get("node").and_then(|n| n.as_str());
        let index = ev
            .payload
            .get("index")
            .and_then(|i| i.as_u64())
            .map(|i| i as usize);
        let memory = match &c.memory_after {
            Some(serde_json::Value::Array(a)) => a.iter().map(Value::from_json).collect(),
            _ => Vec::new(),
        };
        if let Some(node) = node {
            out.insert(
                (node.to_string(), index),
                Recorded {
                    output: Value::from_json(output),
                    notes: memory,
                    input_bytes: c.input.to_string().len(),
                    memory_bytes: c.memory.to_string().len(),
                },
            );
        }
    }
    out
}
