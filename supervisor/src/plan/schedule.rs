//! Running a plan: node instances dispatched in a stable order under the plan's, the node's and
//! the agent type's caps; each a [`Supervisor::call`] (with the agent's restart policy)
//! journalled as a task of the plan's run; a finished instance's output durable before any
//! dependant starts; the node's failure policy applied once its agent gave up.
//!
//! Determinism: instance ids are `node` or `node[index]`, fixed by the plan and its input;
//! ready instances are queued in file order, then index order, and each node sees its inputs
//! and its upstream notes in that order whatever the timing. Resume reads the run from the
//! journal and re-runs only the instances without a recorded output.
//!
//! Past ~600 lines on purpose: dispatch, completion, the failure policies and resume share the
//! scheduler's state and are one loop; expressions, outcomes, paths and which run a resume may
//! take (`resume`) are rooms of their own.

use super::expr::{self, Scope};
use super::outcome::{finished_of, Finished, NodeReport, PlanOptions, PlanOutcome, PlanStatus};
use super::{Node, OnFailure, Plan};
use crate::record::{ExitReason, ExitRecord};
use crate::run::journal::{now_ms, JournalCall};
use crate::run::{CallOptions, CallOutcome, RunError, RunShare, Supervisor};
use crate::stop::{Stop, StopHandle};
use corral_proto::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// Where a node got.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Not started (its inputs not ready).
    Waiting,
    /// Instances running or queued.
    Running,
    /// Finished with this output (a list for a fan-out; `null` when skipped).
    Done,
    /// Failed; its fallback, if any, runs in its place.
    FallingBack,
    /// Failed for good.
    Failed,
}

/// A node's progress in this run.
struct NodeRun {
    state: State,
    /// Outputs by index (one slot without fan-out).
    outputs: Vec<Option<Value>>,
    /// Notes by index.
    notes: Vec<Vec<Value>>,
    fan_out: bool,
    pending: usize,
    live: usize,
    /// Runs in place of this node.
    in_place_of: Option<usize>,
    /// Activated as a fallback.
    activated: bool,
    output: Value,
    /// With a `timeout`: what stops its instances, and when.
    deadline: Option<(StopHandle, Stop, Instant)>,
    /// Its `timeout` passed.
    timed_out: bool,
}

/// An instance waiting for a slot.
struct Queued {
    node: usize,
    index: Option<usize>,
    input: Value,
    memory: Vec<Value>,
    trimmed: usize,
    since: Instant,
    /// How long it waited for a slot (set at its launch).
    queue_ms: u64,
}

struct Ctx<'a> {
    input: &'a Value,
    outputs: &'a HashMap<String, Value>,
    skipped: &'a HashSet<String>,
    item: Option<(&'a Value, usize)>,
}

impl Scope for Ctx<'_> {
    fn input(&self) -> &Value {
        self.input
    }
    fn output(&self, id: &str) -> Option<&Value> {
        self.outputs.get(id)
    }
    fn item(&self) -> Option<(&Value, usize)> {
        self.item
    }
    fn skipped(&self, id: &str) -> bool {
        self.skipped.contains(id)
    }
}

/// Run `plan` on `sup` (see the module docs).
pub async fn run_plan(
    sup: Arc<Supervisor>,
    plan: &Plan,
    opts: PlanOptions,
) -> Result<PlanOutcome, RunError> {
    let mut s = Sched::new(sup, plan, opts)?;
    s.run().await
}

struct Sched<'p> {
    sup: Arc<Supervisor>,
    plan: &'p Plan,
    input: Value,
    run_id: String,
    nodes: Vec<NodeRun>,
    outputs: HashMap<String, Value>,
    /// Nodes skipped by their policy: what their dependants select of them is `null`.
    skipped: HashSet<String>,
    queue: VecDeque<Queued>,
    live: usize,
    per_agent: HashMap<String, u32>,
    /// Task numbers and child agents of the run.
    share: Arc<RunShare>,
    finished: Finished,
    reports: Vec<NodeReport>,
    stop: StopHandle,
    stopped: Stop,
    outer: Option<Stop>,
    progress: Option<tokio::sync::mpsc::UnboundedSender<NodeReport>>,
    failed: bool,
    degraded: bool,
    cancelled: bool,
}

type Done = (
    usize,
    Option<usize>,
    Box<Queued>,
    Result<CallOutcome, RunError>,
);

impl<'p> Sched<'p> {
    fn new(sup: Arc<Supervisor>, plan: &'p Plan, opts: PlanOptions) -> Result<Self, RunError> {
        if let Some(view) = &opts.resume {
            super::resume::resumable(&sup, plan, view, &opts.input)?;
        }
        let (run_id, finished, next_call) = match &opts.resume {
            Some(view) => (
                view.run_id.clone(),
                finished_of(view),
                view.calls.iter().map(|c| c.call).max().unwrap_or(0) + 1,
            ),
            None => (
                opts.run_id
                    .clone()
                    .unwrap_or_else(|| crate::run::new_run_id(0)),
                Finished::new(),
                1,
            ),
        };
        if opts.resume.is_none() {
            if let Some(j) = sup.journal() {
                j.append(crate::journal::Entry::RunStarted {
                    run_id: run_id.clone(),
                    agent: plan.name.clone(),
                    kind: "plan".to_string(),
                    config_hash: format!("{}+{}", sup.config().digest, plan.digest),
                    started_at_ms: now_ms(),
                    input: Some(opts.input.to_json()),
                });
            }
        }
        let nodes = plan
            .nodes
            .iter()
            .map(|n| NodeRun {
                state: State::Waiting,
                outputs: Vec::new(),
                notes: Vec::new(),
                fan_out: n.for_each.is_some(),
                pending: 0,
                live: 0,
                in_place_of: None,
                activated: false,
                output: Value::Null,
                deadline: None,
                timed_out: false,
            })
            .collect();
        let (stop, stopped) = Stop::new();
        Ok(Sched {
            sup,
            plan,
            input: opts.input,
            run_id,
            nodes,
            outputs: HashMap::new(),
            skipped: HashSet::new(),
            queue: VecDeque::new(),
            live: 0,
            per_agent: HashMap::new(),
            share: RunShare::after(next_call - 1),
            finished,
            reports: Vec::new(),
            stop,
            stopped,
            outer: opts.stop,
            progress: opts.progress,
            failed: false,
            degraded: false,
            cancelled: false,
        })
    }

    fn node(&self, i: usize) -> &'p Node {
        &self.plan.nodes[i]
    }

    /// Whether node `i` may start: not a fallback left unused, and its inputs ready.
    fn ready(&self, i: usize) -> bool {
        let n = self.node(i);
        self.nodes[i].state == State::Waiting
            && (!n.fallback_only || self.nodes[i].activated)
            && n.deps.iter().all(|d| self.outputs.contains_key(d))
    }

    /// Start every node whose inputs are ready, in file order.
    fn start_ready(&mut self) {
        loop {
            let Some(i) = (0..self.plan.nodes.len()).find(|&i| self.ready(i)) else {
                return;
            };
            self.start_node(i);
        }
    }

    /// Make node `i`'s instances (one, or one per element of its `for_each`).
    fn start_node(&mut self, i: usize) {
        let n = self.node(i);
        self.nodes[i].state = State::Running;
        if let Some(t) = n.timeout {
            let (handle, stop) = Stop::new();
            self.nodes[i].deadline = Some((handle, stop, Instant::now() + t));
        }
        let items: Vec<Option<(Value, usize)>> = match &n.for_each {
            None => vec![None],
            Some(e) => {
                let ctx = Ctx {
                    input: &self.input,
                    outputs: &self.outputs,
                    skipped: &self.skipped,
                    item: None,
                };
                match expr::select(e, &ctx) {
                    // Over a skipped node's output: no instances (an empty list).
                    Ok(Value::Null) if matches!(&e.root, expr::Root::Output(id) if self.skipped.contains(id)) => {
                        Vec::new()
                    }
                    Ok(Value::List(l)) => l
                        .into_iter()
                        .enumerate()
                        .map(|(k, v)| Some((v, k)))
                        .collect(),
                    Ok(other) => {
                        let why = format!("for_each `{e}` is {}, not a list", other.kind());
                        return self.fail_unstarted(i, None, why);
                    }
                    Err(err) => return self.fail_unstarted(i, None, err.to_string()),
                }
            }
        };
        let (memory, trimmed) = self.memory_for(n);
        let count = items.len();
        self.nodes[i].outputs = vec![None; count];
        self.nodes[i].notes = vec![Vec::new(); count];
        self.nodes[i].pending = count;
        for item in items {
            let index = item.as_ref().map(|(_, k)| *k);
            if let Some(done) = self.finished.remove(&(n.id.clone(), index)) {
                let mut rep = self.report(i, index, "resumed", done.input_bytes, 0, Vec::new());
                rep.memory_bytes = done.memory_bytes;
                self.reports.push(rep);
                self.instance_done(i, index, done.output, done.notes);
                continue;
            }
            let ctx = Ctx {
                input: &self.input,
                outputs: &self.outputs,
                skipped: &self.skipped,
                item: item.as_ref().map(|(v, k)| (v, *k)),
            };
            match n.input.eval(&ctx) {
                Ok(input) => self.queue.push_back(Queued {
                    node: i,
                    index,
                    input,
                    memory: memory.clone(),
                    trimmed,
                    since: Instant::now(),
                    queue_ms: 0,
                }),
                Err(e) => return self.fail_unstarted(i, index, e.to_string()),
            }
        }
        if count == 0 {
            self.finish_node(i);
        }
    }

    /// Upstream notes for `n`, in file then index order, trimmed to the budget.
    fn memory_for(&self, n: &Node) -> (Vec<Value>, usize) {
        if n.skip_memory {
            return (Vec::new(), 0);
        }
        let mut out: Vec<Value> = Vec::new();
        // Counted as sent: the notes as one JSON list, brackets and commas included.
        let mut used = 2u64;
        let mut trimmed = 0;
        for d in &n.deps {
            let Some(k) = self.plan.nodes.iter().position(|x| &x.id == d) else {
                continue;
            };
            for note in self.nodes[k].notes.iter().flatten() {
                // A note that reached this node by two paths (a diamond: an upstream node
                // hands its own notes on) is given once.
                if out.contains(note) {
                    continue;
                }
                let size = note.to_json().to_string().len() as u64 + u64::from(!out.is_empty());
                if used + size > self.plan.memory_budget {
                    trimmed += 1;
                    continue;
                }
                used += size;
                out.push(note.clone());
            }
        }
        (out, trimmed)
    }

    fn report(
        &self,
        i: usize,
        index: Option<usize>,
        status: &'static str,
        input_bytes: usize,
        queue_ms: u64,
        attempts: Vec<ExitRecord>,
    ) -> NodeReport {
        let n = self.node(i);
        NodeReport {
            id: match index {
                Some(k) => format!("{}[{k}]", n.id),
                None => n.id.clone(),
            },
            node: n.id.clone(),
            agent: n.agent.clone(),
            status,
            parent: self.nodes[i].in_place_of.map(|p| self.node(p).id.clone()),
            index,
            input_bytes,
            memory_bytes: 0,
            memory_trimmed: 0,
            queue_ms,
            attempts,
            error: None,
        }
    }

    /// Node `i` (instance `index`) failed before any agent ran: reported with `why`, then its
    /// policy applies.
    fn fail_unstarted(&mut self, i: usize, index: Option<usize>, why: String) {
        let status = match self.node(i).on_failure {
            OnFailure::Skip => "skipped",
            _ => "failed",
        };
        let mut rep = self.report(i, index, status, 0, 0, Vec::new());
        rep.error = Some(why.clone());
        if let Some(p) = &self.progress {
            let _ = p.send(rep.clone());
        }
        self.reports.push(rep);
        self.node_failed(i, why);
    }

    /// Whether an instance of node `i` may start now.
    fn has_slot(&self, i: usize) -> bool {
        let n = self.node(i);
        let agent_cap = self
            .sup
            .config()
            .agents
            .get(&n.agent)
            .and_then(|a| a.max_instances);
        self.live < self.plan.max_parallel
            && n.max_parallel.is_none_or(|m| self.nodes[i].live < m)
            && agent_cap.is_none_or(|m| self.per_agent.get(&n.agent).copied().unwrap_or(0) < m)
    }

    /// Start queued instances while there are slots, first come first served within the
    /// stable order (an instance blocked by its node's cap lets later ones of other nodes by).
    fn dispatch(&mut self, set: &mut JoinSet<Done>) {
        let mut k = 0;
        while k < self.queue.len() && self.live < self.plan.max_parallel && !self.failed {
            let i = self.queue[k].node;
            if !self.has_slot(i) {
                k += 1;
                continue;
            }
            let Some(q) = self.queue.remove(k) else { break };
            self.launch(set, q);
        }
    }

    fn launch(&mut self, set: &mut JoinSet<Done>, mut q: Queued) {
        q.queue_ms = u64::try_from(q.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let i = q.node;
        let n = self.node(i);
        self.live += 1;
        self.nodes[i].live += 1;
        *self.per_agent.entry(n.agent.clone()).or_default() += 1;
        let call = self.share.next_call();
        let opts = CallOptions {
            run_id: Some(self.run_id.clone()),
            task: Some(match q.index {
                Some(k) => format!("{}[{k}]", n.id),
                None => n.id.clone(),
            }),
            memory: q.memory.clone(),
            stop: Some(match &self.nodes[i].deadline {
                Some((_, stop, _)) => stop.clone(),
                None => self.stopped.clone(),
            }),
            journal_call: Some(JournalCall {
                run_id: self.run_id.clone(),
                call,
                node: serde_json::json!({
                    "node": n.id,
                    "index": q.index,
                    "parent": self.nodes[i].in_place_of.map(|p| self.node(p).id.clone()),
                    "queue_ms": q.queue_ms,
                }),
                event: "node",
            }),
            share: Some(self.share.clone()),
            ..Default::default()
        };
        if let Some(p) = &self.progress {
            let _ = p.send(self.report(i, q.index, "running", 0, 0, Vec::new()));
        }
        let sup = self.sup.clone();
        let agent = n.agent.clone();
        let index = q.index;
        let input = q.input.clone();
        set.spawn(async move {
            let out = sup.call(&agent, input, opts).await;
            (i, index, Box::new(q), out)
        });
    }

    /// An instance finished with `out`.
    fn instance_done(&mut self, i: usize, index: Option<usize>, out: Value, notes: Vec<Value>) {
        let slot = index.unwrap_or(0);
        let nr = &mut self.nodes[i];
        if let Some(s) = nr.outputs.get_mut(slot) {
            *s = Some(out);
        }
        if let Some(s) = nr.notes.get_mut(slot) {
            *s = notes;
        }
        nr.pending = nr.pending.saturating_sub(1);
        if nr.pending == 0 && nr.state == State::Running {
            self.finish_node(i);
        }
    }

    /// Every instance of node `i` succeeded: its output is known downstream.
    fn finish_node(&mut self, i: usize) {
        let nr = &mut self.nodes[i];
        let outs: Vec<Value> = nr
            .outputs
            .iter()
            .map(|o| o.clone().unwrap_or(Value::Null))
            .collect();
        nr.output = if nr.fan_out {
            Value::List(outs)
        } else {
            outs.into_iter().next().unwrap_or(Value::Null)
        };
        nr.state = State::Done;
        let out = nr.output.clone();
        self.outputs.insert(self.node(i).id.clone(), out.clone());
        if let Some(p) = self.nodes[i].in_place_of {
            // A fallback's output stands for the node it replaced.
            self.nodes[p].output = out.clone();
            self.nodes[p].notes = self.nodes[i].notes.clone();
            self.nodes[p].state = State::Done;
            self.outputs.insert(self.node(p).id.clone(), out);
        }
    }

    /// Node `i` failed (after its agent's own retries): its policy applies.
    fn node_failed(&mut self, i: usize, why: String) {
        let n = self.node(i);
        tracing::warn!(run = %self.run_id, node = %n.id, "node failed: {why}");
        if self.nodes[i].state == State::Failed || self.nodes[i].state == State::FallingBack {
            return;
        }
        // Queued instances of the node will not run.
        self.queue.retain(|q| q.node != i);
        match (n.on_failure, &n.fallback) {
            (OnFailure::Skip, _) => {
                self.degraded = true;
                self.nodes[i].state = State::Done;
                self.nodes[i].output = Value::Null;
                self.outputs.insert(n.id.clone(), Value::Null);
                self.skipped.insert(n.id.clone());
            }
            (OnFailure::Fallback, Some(f)) => {
                let Some(k) = self.plan.nodes.iter().position(|x| &x.id == f) else {
                    return self.abort();
                };
                self.nodes[i].state = State::FallingBack;
                if self.nodes[k].state == State::Waiting {
                    self.nodes[k].activated = true;
                    self.nodes[k].in_place_of = Some(i);
                } else {
                    self.abort();
                }
            }
            _ => {
                if let Some(p) = self.nodes[i].in_place_of {
                    self.nodes[p].state = State::Failed;
                }
                self.nodes[i].state = State::Failed;
                self.abort();
            }
        }
    }

    fn abort(&mut self) {
        self.failed = true;
        self.stop_all(ExitReason::Cancelled);
    }

    /// Stop every instance in flight, and start no more.
    fn stop_all(&mut self, reason: ExitReason) {
        self.queue.clear();
        self.stop.stop(reason);
        for n in &self.nodes {
            if let Some((handle, _, _)) = &n.deadline {
                handle.stop(reason);
            }
        }
    }

    /// The earliest `timeout` of a running node, if any.
    fn next_deadline(&self) -> Option<(usize, Instant)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.state == State::Running && !n.timed_out)
            .filter_map(|(i, n)| n.deadline.as_ref().map(|(_, _, at)| (i, *at)))
            .min_by_key(|(_, at)| *at)
    }

    /// Node `i` ran past its `timeout`: its instances are stopped, and it fails.
    fn time_out(&mut self, i: usize) {
        self.nodes[i].timed_out = true;
        if let Some((handle, _, _)) = &self.nodes[i].deadline {
            handle.stop(ExitReason::Deadline);
        }
        let t = self.node(i).timeout.unwrap_or_default();
        self.node_failed(i, format!("the node ran past its timeout ({t:?})"));
    }

    async fn run(&mut self) -> Result<PlanOutcome, RunError> {
        let mut set: JoinSet<Done> = JoinSet::new();
        let mut outer = self.outer.clone();
        loop {
            if !self.failed && !self.cancelled {
                self.start_ready();
                self.dispatch(&mut set);
            }
            if set.is_empty() {
                break;
            }
            let deadline = self.next_deadline();
            let joined = tokio::select! {
                j = set.join_next() => j,
                reason = async {
                    match &mut outer {
                        Some(o) => o.stopped().await,
                        None => std::future::pending().await,
                    }
                }, if !self.cancelled => {
                    self.cancelled = true;
                    self.stop_all(reason);
                    continue;
                }
                due = async {
                    match deadline {
                        Some((i, at)) => {
                            tokio::time::sleep_until(at.into()).await;
                            i
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    self.time_out(due);
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let Ok((i, index, q, out)) = joined else {
                continue;
            };
            self.live -= 1;
            self.nodes[i].live -= 1;
            if let Some(c) = self.per_agent.get_mut(&self.node(i).agent) {
                *c = c.saturating_sub(1);
            }
            let out = out?;
            let queue_ms = q.queue_ms;
            let ok = out.ok();
            let status = match (ok, self.cancelled || self.failed) {
                (true, _) => "succeeded",
                (false, true) => "cancelled",
                (false, false) if self.node(i).on_failure == OnFailure::Skip => "skipped",
                (false, false) => "failed",
            };
            let mut rep = self.report(
                i,
                index,
                status,
                q.input.to_json().to_string().len(),
                queue_ms,
                out.attempts.clone(),
            );
            rep.memory_bytes = Value::List(q.memory.clone()).to_json().to_string().len();
            rep.memory_trimmed = q.trimmed;
            if let Some(p) = &self.progress {
                let _ = p.send(rep.clone());
            }
            self.reports.push(rep);
            match out.output {
                Some(_) if self.nodes[i].timed_out => {}
                Some(o) => self.instance_done(i, index, o, out.memory),
                None if self.cancelled || self.failed => {}
                None => {
                    let why = out
                        .last()
                        .map(|r| {
                            format!(
                                "{}: {}",
                                r.reason,
                                r.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
                            )
                        })
                        .unwrap_or_default();
                    self.node_failed(i, why);
                }
            }
        }
        let waiting = self
            .nodes
            .iter()
            .zip(&self.plan.nodes)
            .any(|(r, n)| !n.fallback_only && r.state != State::Done);
        let status = if self.cancelled {
            PlanStatus::Cancelled
        } else if self.failed || waiting {
            PlanStatus::Failed
        } else if self.degraded {
            PlanStatus::Degraded
        } else {
            PlanStatus::Succeeded
        };
        let output = self.output(status);
        if let Some(j) = self.sup.journal() {
            j.durable(crate::journal::Entry::RunEnded {
                run_id: self.run_id.clone(),
                status: match status {
                    PlanStatus::Succeeded => crate::journal::RunStatus::Succeeded,
                    PlanStatus::Degraded => crate::journal::RunStatus::Degraded,
                    PlanStatus::Failed => crate::journal::RunStatus::Failed,
                    PlanStatus::Cancelled => crate::journal::RunStatus::Interrupted,
                },
                at_ms: now_ms(),
            })
            .await?;
        }
        // In plan order, then index order, whatever order they ended in.
        let mut nodes = std::mem::take(&mut self.reports);
        let at = |id: &str| self.plan.nodes.iter().position(|n| n.id == id);
        nodes.sort_by_key(|r| (at(&r.node), r.index));
        Ok(PlanOutcome {
            run_id: self.run_id.clone(),
            status,
            output,
            nodes,
        })
    }

    /// The sink's output, or a map of the sinks' outputs by id.
    fn output(&self, status: PlanStatus) -> Option<serde_json::Value> {
        if matches!(status, PlanStatus::Failed | PlanStatus::Cancelled) {
            return None;
        }
        let sinks = self.plan.sinks();
        let out: BTreeMap<String, serde_json::Value> = sinks
            .iter()
            .map(|n| {
                let v = self
                    .outputs
                    .get(&n.id)
                    .map(Value::to_json)
                    .unwrap_or(serde_json::Value::Null);
                (n.id.clone(), v)
            })
            .collect();
        if out.len() == 1 {
            out.into_values().next()
        } else {
            Some(serde_json::Value::Object(out.into_iter().collect()))
        }
    }
}
