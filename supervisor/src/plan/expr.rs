//! Hand-off expressions: what a node instance is given, selected from `$input`,
//! `$<node>.output`, `$item` and `$index` by field paths, and nothing else.
//!
//! A node's `input` is a TOML value whose strings that start with `$` are expressions
//! (`"$list.output.files"`, `"$item"`, `"$input.hint"`, `"$read.output.0.path"`); `$$` starts a
//! literal `$`. Everything else is a literal. A path segment names a map key, or an index into
//! a list when it is a number.

use corral_proto::Value;
use std::collections::BTreeMap;

/// Where an expression starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// The run's input.
    Input,
    /// The output of a node: a single instance's output, or the list of a fan-out's outputs in
    /// index order.
    Output(String),
    /// The element of `for_each` this instance was made for.
    Item,
    /// Its index in the fan-out.
    Index,
}

/// One `$…` selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    /// Where it starts.
    pub root: Root,
    /// The field path after it.
    pub path: Vec<String>,
}

/// A mapping: a tree of literals and expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A value given as is.
    Literal(Value),
    /// A selection.
    Select(Expr),
    /// A list of mappings.
    List(Vec<Template>),
    /// A map of mappings.
    Map(BTreeMap<String, Template>),
}

/// An expression that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {why}")]
pub struct ExprError {
    /// The expression.
    pub text: String,
    /// What is wrong.
    pub why: String,
}

/// A selection found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{expr}` selects nothing: {why}")]
pub struct SelectError {
    /// The expression, as written.
    pub expr: String,
    /// Why.
    pub why: String,
}

impl Expr {
    /// Parse `$…` (the `$` included).
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let err = |why: &str| ExprError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let body = text
            .strip_prefix('$')
            .ok_or_else(|| err("an expression starts with `$`"))?;
        let mut parts = body.split('.');
        let head = parts.next().unwrap_or_default();
        let rest: Vec<String> = parts.map(str::to_string).collect();
        if rest.iter().any(String::is_empty) {
            return Err(err("a field path has an empty segment"));
        }
        let (root, path) = match head {
            "input" => (Root::Input, rest),
            "item" => (Root::Item, rest),
            "index" if rest.is_empty() => (Root::Index, rest),
            "index" => return Err(err("`$index` is a number: it has no fields")),
            "" => {
                return Err(err(
                    "expected `$input`, `$item`, `$index` or `$<node>.output`",
                ))
            }
            node => {
                if rest.first().map(String::as_str) != Some("output") {
                    return Err(err(&format!(
                        "a node is read through its output: `${node}.output…`"
                    )));
                }
                (Root::Output(node.to_string()), rest[1..].to_vec())
            }
        };
        Ok(Expr { root, path })
    }

    /// Select from `base` (the root's value) by the path.
    pub fn walk<'v>(&self, base: &'v Value) -> Result<&'v Value, SelectError> {
        let mut at = base;
        for (i, seg) in self.path.iter().enumerate() {
            let next = match at {
                Value::Map(m) => m.get(seg),
                Value::List(l) => seg.parse::<usize>().ok().and_then(|n| l.get(n)),
                _ => None,
            };
            at = next.ok_or_else(|| SelectError {
                expr: self.to_string(),
                why: format!(
                    "no `{seg}` in {} at `{}`",
                    at.kind(),
                    self.path[..i].join(".")
                ),
            })?;
        }
        Ok(at)
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.root {
            Root::Input => write!(f, "$input")?,
            Root::Item => write!(f, "$item")?,
            Root::Index => write!(f, "$index")?,
            Root::Output(n) => write!(f, "${n}.output")?,
        }
        for p in &self.path {
            write!(f, ".{p}")?;
        }
        Ok(())
    }
}

/// What a selection can see: the run's input, finished nodes' outputs, the instance's item.
pub trait Scope {
    /// The run's input.
    fn input(&self) -> &Value;
    /// The output of node `id` (a list for a fan-out), when it is known.
    fn output(&self, id: &str) -> Option<&Value>;
    /// The item and index of the instance, for a fan-out.
    fn item(&self) -> Option<(&Value, usize)>;
    /// Whether node `id` was skipped (`on_failure = "skip"`): whatever is selected from its
    /// output is `null`.
    fn skipped(&self, _id: &str) -> bool {
        false
    }
}

impl Template {
    /// The mapping of a TOML value (strings starting with `$` are expressions).
    pub fn from_toml(v: &toml::Value) -> Result<Template, ExprError> {
        Ok(match v {
            toml::Value::String(s) if s.starts_with("$$") => {
                Template::Literal(Value::String(s[1..].to_string()))
            }
            toml::Value::String(s) if s.starts_with('$') => Template::Select(Expr::parse(s)?),
            toml::Value::String(s) => Template::Literal(Value::String(s.clone())),
            toml::Value::Integer(i) => Template::Literal(Value::Int(*i)),
            toml::Value::Float(f) => Template::Literal(Value::Float(*f)),
            toml::Value::Boolean(b) => Template::Literal(Value::Bool(*b)),
            toml::Value::Datetime(d) => Template::Literal(Value::String(d.to_string())),
            toml::Value::Array(a) => Template::List(
                a.iter()
                    .map(Template::from_toml)
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Table(t) => Template::Map(
                t.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::from_toml(v)?)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Every expression in it.
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Template::Literal(_) => {}
            Template::Select(e) => out.push(e),
            Template::List(l) => l.iter().for_each(|t| t.collect(out)),
            Template::Map(m) => m.values().for_each(|t| t.collect(out)),
        }
    }

    /// The value it gives in `scope`.
    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, SelectError> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Select(e) => select(e, scope)?,
            Template::List(l) => {
                Value::List(l.iter().map(|t| t.eval(scope)).collect::<Result<_, _>>()?)
            }
            Template::Map(m) => Value::Map(
                m.iter()
                    .map(|(k, t)| Ok((k.clone(), t.eval(scope)?)))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// The value `e` selects in `scope`.
pub fn select(e: &Expr, scope: &dyn Scope) -> Result<Value, SelectError> {
    let missing = |why: String| SelectError {
        expr: e.to_string(),
        why,
    };
    let index;
    let base = match &e.root {
        Root::Input => scope.input(),
        // A skipped node's dependants receive null, whatever field they select of it.
        Root::Output(id) if scope.skipped(id) => return Ok(Value::Null),
        Root::Output(id) => scope
            .output(id)
            .ok_or_else(|| missing(format!("node `{id}` has no output")))?,
        Root::Item => {
            scope
                .item()
                .ok_or_else(|| missing("not in a fan-out".into()))?
                .0
        }
        Root::Index => {
            let (_, i) = scope
                .item()
                .ok_or_else(|| missing("not in a fan-out".into()))?;
            index = Value::Int(i as i64);
            &index
        }
    };
    e.walk(base).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S {
        input: Value,
        outputs: BTreeMap<String, Value>,
        item: Option<(Value, usize)>,
    }
    impl Scope for S {
        fn input(&self) -> &Value {
            &self.input
        }
        fn output(&self, id: &str) -> Option<&Value> {
            self.outputs.get(id)
        }
        fn item(&self) -> Option<(&Value, usize)> {
            self.item.as_ref().map(|(v, i)| (v, *i))
        }
    }

    fn v(j: serde_json::Value) -> Value {
        Value::from_json(&j)
    }

    #[test]
    fn expressions_parse_or_say_why() {
        assert_eq!(
            Expr::parse("$list.output.files").map(|e| e.to_string()),
            Ok("$list.output.files".to_string())
        );
        assert_eq!(Expr::parse("$input").map(|e| e.root), Ok(Root::Input));
        for bad in [
            "$",
            "$list",
            "$list.files",
            "$index.x",
            "$input..a",
            "input",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_select_exactly_what_they_name() {
        let t: toml::Value =
            toml::from_str(r#"x = { path = "$item.p", i = "$index", hint = "$input.hint", lit = "$$5", n = 3, all = "$read.output" }"#)
                .unwrap();
        let t = Template::from_toml(&t["x"]).unwrap();
        let s = S {
            input: v(serde_json::json!({"hint": "h", "secret": "s"})),
            outputs: [("read".to_string(), v(serde_json::json!([1, 2])))].into(),
            item: Some((v(serde_json::json!({"p": "a.rs"})), 4)),
        };
        assert_eq!(
            t.eval(&s).unwrap().to_json(),
            serde_json::json!({"path": "a.rs", "i": 4, "hint": "h", "lit": "$5", "n": 3, "all": [1, 2]})
        );
        let missing = Template::Select(Expr::parse("$input.nope").unwrap());
        let e = missing.eval(&s).unwrap_err();
        assert!(e.to_string().contains("no `nope`"), "{e}");
        let idx = Template::Select(Expr::parse("$read.output.1").unwrap());
        assert_eq!(idx.eval(&s).unwrap(), Value::Int(2));
    }
}
