//! Field paths checked against the contracts: `$list.output.files` names a field the `list`
//! node's agent declares in its output schema (or a place its schema leaves open), a
//! `for_each` over an upstream output selects a list, and `$item.…` a field its items have,
//! before anything runs. The contracts come from the agents themselves (each started once up to its
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

/// The schema `path` selects in `schema`, when the schema says it (not past an open place:
/// `Any`, alternatives, an object's extra fields).
fn at<'s>(schema: &'s Schema, path: &[String]) -> Option<&'s Schema> {
    let Some((seg, rest)) = path.split_first() else {
        return Some(schema);
    };
    match schema {
        Schema::Optional(inner) => at(inner, path),
        Schema::Object(o) => at(&o.fields.iter().find(|f| &f.name == seg)?.schema, rest),
        Schema::Map(inner) => at(inner, rest),
        Schema::List(item) if seg.parse::<usize>().is_ok() => at(item, rest),
        _ => None,
    }
}

/// The items of a list `schema` (through `Optional`); `Err` with what it is instead, when the
/// schema says it is no list; `Ok(None)` when it cannot tell.
fn items(schema: &Schema) -> Result<Option<&Schema>, String> {
    match schema {
        Schema::List(item) => Ok(Some(item)),
        Schema::Optional(inner) => items(inner),
        Schema::Any | Schema::OneOf(_) => Ok(None),
        other => Err(other.describe()),
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
                // What the fan-out goes over: a list, whose items `$item` selects from.
                if let Some((up, c, schema)) = self.upstream(f, contracts) {
                    let bad = |message: String| ConfigError::Invalid {
                        path: self.path.clone(),
                        location: Some(Location::from_offset(text, n.for_each_at)),
                        message,
                    };
                    match at(&schema, &f.path).map(items) {
                        Some(Err(found)) => errs.push(bad(format!(
                            "node `{}`: for_each `{f}` is of type {found} in agent `{}`'s \
                             output (contract `{}` {}), not a list",
                            n.id, up.agent, c.name, c.version
                        ))),
                        Some(Ok(Some(item))) => {
                            for e in n.input.exprs() {
                                if e.root != Root::Item {
                                    continue;
                                }
                                if let Some((seg, found)) = walk(item, &e.path) {
                                    errs.push(ConfigError::Invalid {
                                        path: self.path.clone(),
                                        location: Some(Location::from_offset(text, n.input_at)),
                                        message: format!(
                                            "node `{}`: `{e}`: the items of `{f}` have no \
                                             `{seg}`: each is {found}",
                                            n.id
                                        ),
                                    });
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            for (e, place) in exprs {
                let Some((upstream, c, schema)) = self.upstream(e, contracts) else {
                    continue;
                };
                if let Some((seg, found)) = walk(&schema, &e.path) {
                    errs.push(ConfigError::Invalid {
                        path: self.path.clone(),
                        location: Some(Location::from_offset(text, place)),
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

    /// For `$node.output…`: the node, its agent's contract (when known) and the schema of its
    /// output (a fan-out's is the list of its instances' outputs).
    fn upstream<'a>(
        &'a self,
        e: &Expr,
        contracts: &'a BTreeMap<String, Contract>,
    ) -> Option<(&'a super::Node, &'a Contract, Schema)> {
        let Root::Output(up) = &e.root else {
            return None;
        };
        let node = self.node(up)?;
        let c = contracts.get(&node.agent)?;
        let schema = match node.for_each {
            Some(_) => Schema::List(Box::new(c.output.clone())),
            None => c.output.clone(),
        };
        Some((node, c, schema))
    }
}
