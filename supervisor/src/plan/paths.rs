//! Field paths checked against the contracts: `$list.output.files` names a field the `list`
//! node's agent declares in its output schema (or a place its schema leaves open), before
//! anything runs. The contracts come from the agents themselves (each started once up to its
//! handshake: see `Supervisor::probe`) and are cached by the caller.

use super::expr::{Expr, Root};
use super::Plan;
use crate::config::{ConfigError, Location};
use corral_proto::{Contract, Schema};
use std::collections::BTreeMap;

/// Where a path leaves `schema`, if it does: the segment and what is there.
fn walk(schema: &Schema, path: &[String]) -> Option<(String, String)> {
    let (seg, rest) = path.split_first()?;
    match schema {
        Schema::Any => None,
        Schema::Optional(inner) => walk(inner, path),
        Schema::OneOf(alts) => {
            // Fine when any alternative has it.
            let misses: Vec<_> = alts.iter().map(|s| walk(s, path)).collect();
            if misses.iter().any(Option::is_none) {
                None
            } else {
                misses.into_iter().next().flatten()
            }
        }
        Schema::Object(o) => match o.fields.iter().find(|f| &f.name == seg) {
            Some(f) => walk(&f.schema, rest),
            None if o.allow_extra => None,
            None => Some((
                seg.clone(),
                format!(
                    "an object with fields {}",
                    o.fields
                        .iter()
                        .map(|f| format!("`{}`", f.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        },
        Schema::Map(inner) => walk(inner, rest),
        Schema::List(item) if seg.parse::<usize>().is_ok() => walk(item, rest),
        other => Some((seg.clone(), other.describe())),
    }
}

impl Plan {
    /// Every `$node.output…` path that the node's agent's declared output cannot have, at its
    /// place in the plan file. Agents without a known contract are not checked.
    pub fn check_paths(&self, contracts: &BTreeMap<String, Contract>) -> Result<(), ConfigError> {
        let text = self.text.as_str();
        let mut errs = Vec::new();
        for n in &self.nodes {
            let mut exprs: Vec<(&Expr, usize)> = n
                .input
                .exprs()
                .into_iter()
                .map(|e| (e, n.input_at))
                .collect();
            if let Some(f) = &n.for_each {
                exprs.push((f, n.for_each_at));
            }
            for (e, at) in exprs {
                let Root::Output(up) = &e.root else { continue };
                let Some(upstream) = self.node(up) else {
                    continue;
                };
                let Some(c) = contracts.get(&upstream.agent) else {
                    continue;
                };
                // A fan-out's output is the list of its instances' outputs.
                let schema = match upstream.for_each {
                    Some(_) => Schema::List(Box::new(c.output.clone())),
                    None => c.output.clone(),
                };
                if let Some((seg, found)) = walk(&schema, &e.path) {
                    errs.push(ConfigError::Invalid {
                        path: self.path.clone(),
                        location: Some(Location::from_offset(text, at)),
                        message: format!(
                            "node `{}`: `{e}`: agent `{}` (contract `{}` {}) declares no `{seg}` there: its output is {found}",
                            n.id, upstream.agent, c.name, c.version
                        ),
                    });
                }
            }
        }
        match ConfigError::from_all(errs) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
