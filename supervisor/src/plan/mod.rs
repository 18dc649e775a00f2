//! Plans: DAGs of agent calls a person wrote, validated completely before anything runs.
//!
//! A plan file names nodes; each node names an agent and the input it gets, selected from the
//! run's input and upstream outputs by expressions (`expr`): a node sees exactly what its
//! mapping selects. `for_each` fans a node out over a list. Here: the file's schema and its
//! validation (unknown agents and nodes, bad expressions, cycles, inconsistent failure
//! policies), each error at `file:line:col`; the errors are [`ConfigError`]s, since a plan is
//! configuration and is reported the same way (exit 2). Running a plan is `schedule`.

mod contracts;
pub mod expr;
mod outcome;
mod paths;
mod resume;
mod schedule;

pub use contracts::contracts;
pub use outcome::{NodeReport, PlanOptions, PlanOutcome, PlanStatus};
pub use schedule::run_plan;

use crate::config::units::{Dur, Size};
use crate::config::{Config, ConfigError, Location};
use expr::{Expr, Root, Template};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Default cap on live agents of one run.
pub const DEFAULT_MAX_PARALLEL: usize = 64;
/// Default cap on the memory notes handed to one node instance, in bytes (JSON).
pub const DEFAULT_MEMORY_BUDGET: u64 = 16 * 1024;

/// What happens when a node fails after its agent's own retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails; agents in flight are stopped cleanly.
    Abort,
    /// Only for `optional` nodes: dependants receive `null`, the run ends `degraded`.
    Skip,
    /// The node named by `fallback` runs in its place.
    Fallback,
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file.
    pub path: PathBuf,
    /// `[plan] name`.
    pub name: String,
    /// Cap on live agents of one run.
    pub max_parallel: usize,
    /// Cap on memory notes handed to any one node instance, in bytes.
    pub memory_budget: u64,
    /// The nodes, in file order (the stable order of dispatch).
    pub nodes: Vec<Node>,
    /// SHA-256 of the plan's text.
    pub digest: String,
    /// The plan's text (for the places of later checks).
    pub text: String,
}

/// One node of a plan.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// The agent that runs it.
    pub agent: String,
    /// What each instance is given.
    pub input: Template,
    /// Fan-out: one instance per element of the list this selects.
    pub for_each: Option<Expr>,
    /// Sees its input and no memory notes.
    pub skip_memory: bool,
    /// Cap on live instances of this node.
    pub max_parallel: Option<usize>,
    /// What its failure does.
    pub on_failure: OnFailure,
    /// May be skipped (`on_failure = "skip"`).
    pub optional: bool,
    /// The node run in its place (`on_failure = "fallback"`).
    pub fallback: Option<String>,
    /// Deadline for the whole node (all its instances).
    pub timeout: Option<Duration>,
    /// Nodes it waits for (data or `after`), in file order.
    pub deps: Vec<String>,
    /// Where its `input` is in the plan file (a byte offset), for messages.
    pub input_at: usize,
    /// Where its `for_each` is.
    pub for_each_at: usize,
    /// Runs only as another node's fallback.
    pub fallback_only: bool,
}

/// `[plan]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanTable {
    name: Spanned<String>,
    max_parallel: Option<Spanned<u64>>,
    memory_budget: Option<Spanned<Size>>,
}

/// `[[node]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTable {
    id: Spanned<String>,
    agent: Spanned<String>,
    input: Option<Spanned<toml::Value>>,
    for_each: Option<Spanned<String>>,
    skip_memory: Option<bool>,
    max_parallel: Option<Spanned<u64>>,
    on_failure: Option<Spanned<OnFailure>>,
    optional: Option<bool>,
    fallback: Option<Spanned<String>>,
    after: Option<Vec<Spanned<String>>>,
    timeout: Option<Spanned<Dur>>,
}

/// A plan file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    plan: Spanned<PlanTable>,
    #[serde(default)]
    node: Vec<Spanned<NodeTable>>,
}

/// Errors at places in one plan file.
struct At<'a> {
    text: &'a str,
    path: &'a Path,
}

impl At<'_> {
    fn err(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            location: Some(Location::from_offset(self.text, offset)),
            message: message.into(),
        }
    }
}

/// Names a node may not take: the roots of expressions.
const RESERVED: [&str; 3] = ["input", "item", "index"];

impl Plan {
    /// Read and validate the plan at `path` against `config`'s agents.
    pub fn load(path: &Path, config: &Config) -> Result<Plan, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "plan",
            path: path.to_path_buf(),
            source,
        })?;
        Plan::parse(&text, path, config)
    }

    /// Validate plan `text` (`path` names it in messages) against `config`'s agents.
    pub fn parse(text: &str, path: &Path, config: &Config) -> Result<Plan, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            location: e.span().map(|s| Location::from_offset(text, s.start)),
            message: e.message().lines().collect::<Vec<_>>().join("; "),
        })?;
        let at = At { text, path };
        let plan = file.plan.get_ref();
        let max_parallel = match &plan.max_parallel {
            Some(n) if *n.get_ref() == 0 => {
                return Err(at.err(n.span().start, "max_parallel must be at least 1"))
            }
            Some(n) => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            None => DEFAULT_MAX_PARALLEL,
        };
        let memory_budget = plan
            .memory_budget
            .as_ref()
            .map_or(DEFAULT_MEMORY_BUDGET, |s| s.get_ref().0);
        if file.node.is_empty() {
            return Err(at.err(file.plan.span().start, "the plan has no [[node]]"));
        }
        // Every node's problems at once (the first of each node), in the file's order.
        let mut errors = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for n in &file.node {
            let id = n.get_ref().id.get_ref();
            let off = n.get_ref().id.span().start;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errors.push(at.err(
                    off,
                    format!("node id {id:?}: use letters, digits, '_' and '-'"),
                ));
            } else if RESERVED.contains(&id.as_str()) {
                errors.push(at.err(
                    off,
                    format!("node id `{id}` is reserved (it names an expression root)"),
                ));
            } else if seen.insert(id.clone(), off).is_some() {
                errors.push(at.err(off, format!("node `{id}` is defined twice")));
            }
        }
        let mut nodes = Vec::with_capacity(file.node.len());
        for n in &file.node {
            match node(&at, n.get_ref(), &seen, config) {
                Ok(n) => nodes.push(n),
                Err(e) => errors.push(e),
            }
        }
        if let Some(e) = ConfigError::from_all(errors) {
            return Err(e);
        }
        // Nodes that only run as another's fallback.
        let fallbacks: BTreeSet<String> = nodes.iter().filter_map(|n| n.fallback.clone()).collect();
        for n in &mut nodes {
            n.fallback_only = fallbacks.contains(&n.id);
        }
        check_fallbacks(&at, &nodes, &seen)?;
        check_cycles(&at, &nodes, &seen)?;
        Ok(Plan {
            path: path.to_path_buf(),
            name: plan.name.get_ref().clone(),
            max_parallel,
            memory_budget,
            nodes,
            digest: crate::config::digest(text.as_bytes()),
            text: text.to_string(),
        })
    }

    /// The node named `id`.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The nodes nothing depends on (the run's output), in file order.
    pub fn sinks(&self) -> Vec<&Node> {
        let used: BTreeSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.deps.iter().map(String::as_str))
            .collect();
        self.nodes
            .iter()
            .filter(|n| !n.fallback_only && !used.contains(n.id.as_str()))
            .collect()
    }
}

/// Fallbacks that could never run as written: one that reads the node it replaces (whose
/// output never comes: it failed), a node reading a fallback's output by the fallback's name
/// (it has none unless it ran: its output is its replaced node's), one fallback for two nodes.
/// Each at the place of the node at fault, all of them at once.
fn check_fallbacks(
    at: &At<'_>,
    nodes: &[Node],
    ids: &BTreeMap<String, usize>,
) -> Result<(), ConfigError> {
    // (place, message), reported in the file's order.
    let mut errors: Vec<(usize, String)> = Vec::new();
    let off = |id: &str| ids.get(id).copied().unwrap_or(0);
    let mut replaces: BTreeMap<&str, &str> = BTreeMap::new();
    for n in nodes {
        let Some(f) = n.fallback.as_deref() else {
            continue;
        };
        match replaces.entry(f) {
            std::collections::btree_map::Entry::Occupied(first) => errors.push((
                off(&n.id),
                format!(
                    "node `{}`: fallback `{f}` already stands in for `{}`: a fallback \
                     replaces one node",
                    n.id,
                    first.get()
                ),
            )),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(n.id.as_str());
            }
        }
        if nodes.iter().any(|x| x.id == f && x.deps.contains(&n.id)) {
            errors.push((
                off(f),
                format!(
                    "node `{f}` runs in place of `{}` when it fails, so it cannot read \
                     `${}.output`",
                    n.id, n.id
                ),
            ));
        }
    }
    for n in nodes {
        for d in &n.deps {
            if let Some(replaced) = replaces.get(d.as_str()) {
                errors.push((
                    off(&n.id),
                    format!(
                        "node `{}` depends on `{d}`, which runs only in place of `{replaced}`: \
                         depend on `{replaced}` (`${replaced}.output` is the fallback's output \
                         when it ran)",
                        n.id
                    ),
                ));
            }
        }
    }
    errors.sort_by_key(|(o, _)| *o);
    let mut errors: Vec<ConfigError> = errors.into_iter().map(|(o, m)| at.err(o, m)).collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(ConfigError::Many(errors)),
    }
}

/// One node, checked.
fn node(
    at: &At<'_>,
    n: &NodeTable,
    ids: &BTreeMap<String, usize>,
    config: &Config,
) -> Result<Node, ConfigError> {
    let id = n.id.get_ref().clone();
    let agent = n.agent.get_ref();
    if !config.agents.contains_key(agent) {
        let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
        return Err(at.err(
            n.agent.span().start,
            format!(
                "node `{id}`: no agent `{agent}` in {}; configured: {}",
                config.path.display(),
                known.join(", ")
            ),
        ));
    }
    let mut deps: BTreeSet<String> = BTreeSet::new();
    let for_each = match &n.for_each {
        Some(f) => {
            let e = Expr::parse(f.get_ref())
                .map_err(|e| at.err(f.span().start, format!("node `{id}`: for_each {e}")))?;
            if matches!(e.root, Root::Item | Root::Index) {
                return Err(at.err(
                    f.span().start,
                    format!("node `{id}`: for_each cannot use `$item` or `$index`"),
                ));
            }
            use_expr(at, f.span().start, &id, &e, ids, &mut deps)?;
            Some(e)
        }
        None => None,
    };
    let input = match &n.input {
        Some(v) => {
            let t = Template::from_toml(v.get_ref())
                .map_err(|e| at.err(v.span().start, format!("node `{id}`: input {e}")))?;
            for e in t.exprs() {
                if matches!(e.root, Root::Item | Root::Index) && for_each.is_none() {
                    return Err(at.err(
                        v.span().start,
                        format!("node `{id}`: `{e}` is only defined in a node with for_each"),
                    ));
                }
                use_expr(at, v.span().start, &id, e, ids, &mut deps)?;
            }
            t
        }
        None => Template::Literal(corral_proto::Value::Null),
    };
    for a in n.after.iter().flatten() {
        if !ids.contains_key(a.get_ref()) {
            return Err(at.err(
                a.span().start,
                format!("node `{id}`: after names no node `{}`", a.get_ref()),
            ));
        }
        if a.get_ref() == &id {
            return Err(at.err(
                a.span().start,
                format!("node `{id}` cannot run after itself"),
            ));
        }
        deps.insert(a.get_ref().clone());
    }
    let optional = n.optional.unwrap_or(false);
    let on_failure = n
        .on_failure
        .as_ref()
        .map_or(OnFailure::Abort, |o| *o.get_ref());
    let fallback = n.fallback.as_ref().map(|f| f.get_ref().clone());
    let fail_at = n
        .on_failure
        .as_ref()
        .map_or(n.id.span().start, |o| o.span().start);
    match (on_failure, &n.fallback) {
        (OnFailure::Skip, _) if !optional => {
            return Err(at.err(
                fail_at,
                format!("node `{id}`: on_failure = \"skip\" needs optional = true"),
            ))
        }
        (OnFailure::Fallback, None) => {
            return Err(at.err(
                fail_at,
                format!("node `{id}`: on_failure = \"fallback\" needs fallback = \"NODE\""),
            ))
        }
        (_, Some(f)) => {
            if !ids.contains_key(f.get_ref()) || f.get_ref() == &id {
                return Err(at.err(
                    f.span().start,
                    format!(
                        "node `{id}`: fallback names no other node `{}`",
                        f.get_ref()
                    ),
                ));
            }
            if on_failure != OnFailure::Fallback {
                return Err(at.err(
                    f.span().start,
                    format!("node `{id}`: fallback is set but on_failure is not \"fallback\""),
                ));
            }
        }
        _ => {}
    }
    let max_parallel = match &n.max_parallel {
        Some(m) if *m.get_ref() == 0 => {
            return Err(at.err(
                m.span().start,
                format!("node `{id}`: max_parallel must be at least 1"),
            ))
        }
        Some(m) => Some(usize::try_from(*m.get_ref()).unwrap_or(usize::MAX)),
        None => None,
    };
    let mut deps: Vec<String> = deps.into_iter().collect();
    deps.sort_by_key(|d| ids.get(d).copied().unwrap_or(usize::MAX));
    Ok(Node {
        id,
        agent: agent.clone(),
        input,
        for_each,
        skip_memory: n.skip_memory.unwrap_or(false),
        max_parallel,
        on_failure,
        optional,
        fallback,
        timeout: n.timeout.as_ref().map(|d| d.get_ref().0),
        deps,
        fallback_only: false,
        input_at: n
            .input
            .as_ref()
            .map_or(n.id.span().start, |v| v.span().start),
        for_each_at: n
            .for_each
            .as_ref()
            .map_or(n.id.span().start, |f| f.span().start),
    })
}

/// Check that `e` (in node `id`, at `off`) names existing nodes, and note its dependency.
fn use_expr(
    at: &At<'_>,
    off: usize,
    id: &str,
    e: &Expr,
    ids: &BTreeMap<String, usize>,
    deps: &mut BTreeSet<String>,
) -> Result<(), ConfigError> {
    if let Root::Output(n) = &e.root {
        if n == id {
            return Err(at.err(
                off,
                format!("node `{id}`: `{e}` reads the node's own output"),
            ));
        }
        if !ids.contains_key(n) {
            return Err(at.err(off, format!("node `{id}`: `{e}` names no node `{n}`")));
        }
        deps.insert(n.clone());
    }
    Ok(())
}

/// Refuse a cycle, naming it, at the first of its nodes in file order.
fn check_cycles(
    at: &At<'_>,
    nodes: &[Node],
    ids: &BTreeMap<String, usize>,
) -> Result<(), ConfigError> {
    // Fallbacks run in their node's place: they depend on what that node depends on.
    let deps: BTreeMap<&str, Vec<&str>> = nodes
        .iter()
        .map(|n| (n.id.as_str(), n.deps.iter().map(String::as_str).collect()))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = deps.keys().map(|k| (*k, Mark::New)).collect();
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, Vec<&'a str>>,
        mark: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match mark.get(n).copied() {
            Some(Mark::Done) | None => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(n);
                return Some(cycle);
            }
            Some(Mark::New) => {}
        }
        mark.insert(n, Mark::Open);
        stack.push(n);
        for d in deps.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, deps, mark, stack) {
                return Some(c);
            }
        }
        stack.pop();
        mark.insert(n, Mark::Done);
        None
    }
    for n in nodes {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(&n.id, &deps, &mut mark, &mut stack) {
            let first = cycle
                .iter()
                .min_by_key(|c| ids.get(**c).copied().unwrap_or(usize::MAX))
                .copied()
                .unwrap_or(n.id.as_str());
            return Err(at.err(
                ids.get(first).copied().unwrap_or(0),
                format!("the plan has a cycle: {}", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
