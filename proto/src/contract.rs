//! [`Contract`]: what an agent declares about itself, and [`Schema`], the small schema language
//! the supervisor validates payloads with.
//!
//! The supervisor checks `Task.input` against `contract.input` before sending it and
//! `Done.output` against `contract.output` on receipt. A mismatch is a
//! [`SchemaError`] naming the field path (`input.items[2].name`), which the supervisor records
//! as a `contract_violation`.
//!
//! ```
//! use corral_proto::{Schema, Value};
//! let s = Schema::object().field("name", Schema::String).optional("n", Schema::Int);
//! assert!(s.validate(&Value::map([("name", Value::from("x"))]), "input").is_ok());
//! let err = s.validate(&Value::map([("name", Value::Int(1))]), "input").unwrap_err();
//! assert_eq!(err.path, "input.name");
//! ```

use crate::value::{nested, Value};
use serde::{Deserialize, Serialize};

/// What a payload must look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Schema {
    /// Anything, including null.
    Any,
    /// Only null.
    Null,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
    /// A number (an integer is accepted too).
    Float,
    /// A string.
    String,
    /// Raw bytes.
    Bytes,
    /// A list whose items all match.
    List(#[serde(deserialize_with = "nested")] Box<Schema>),
    /// A map from string keys to values that all match.
    Map(#[serde(deserialize_with = "nested")] Box<Schema>),
    /// A map with named fields.
    Object(#[serde(deserialize_with = "nested")] ObjectSchema),
    /// Null or the inner schema.
    Optional(#[serde(deserialize_with = "nested")] Box<Schema>),
    /// Any one of the alternatives.
    OneOf(#[serde(deserialize_with = "nested")] Vec<Schema>),
}

/// The fields of an object schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ObjectSchema {
    /// Declared fields, in order.
    pub fields: Vec<Field>,
    /// Whether keys that are not declared are allowed.
    pub allow_extra: bool,
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// Key in the map.
    pub name: String,
    /// Shape of the value.
    pub schema: Schema,
    /// A required field must be present and not null.
    pub required: bool,
}

/// A payload does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: expected {expected}, found {found}")]
pub struct SchemaError {
    /// Where: `input.items[2].name`.
    pub path: String,
    /// What the schema wanted.
    pub expected: String,
    /// What was there.
    pub found: String,
}

impl Schema {
    /// An object with no fields yet that allows no extra keys.
    pub fn object() -> Schema {
        Schema::Object(ObjectSchema::default())
    }

    /// A list of `item`.
    pub fn list(item: Schema) -> Schema {
        Schema::List(Box::new(item))
    }

    /// Add a required field (only on objects; other schemas are returned unchanged).
    pub fn field(self, name: &str, schema: Schema) -> Schema {
        self.push_field(name, schema, true)
    }

    /// Add an optional field.
    pub fn optional(self, name: &str, schema: Schema) -> Schema {
        self.push_field(name, schema, false)
    }

    /// Allow keys that are not declared.
    pub fn allow_extra(mut self) -> Schema {
        if let Schema::Object(o) = &mut self {
            o.allow_extra = true;
        }
        self
    }

    fn push_field(mut self, name: &str, schema: Schema, required: bool) -> Schema {
        if let Schema::Object(o) = &mut self {
            o.fields.push(Field {
                name: name.to_string(),
                schema,
                required,
            });
        }
        self
    }

    /// A short description, for messages.
    pub fn describe(&self) -> String {
        match self {
            Schema::Any => "any".into(),
            Schema::Null => "null".into(),
            Schema::Bool => "bool".into(),
            Schema::Int => "int".into(),
            Schema::Float => "float".into(),
            Schema::String => "string".into(),
            Schema::Bytes => "bytes".into(),
            Schema::List(i) => format!("list of {}", i.describe()),
            Schema::Map(i) => format!("map of {}", i.describe()),
            Schema::Object(_) => "object".into(),
            Schema::Optional(i) => format!("optional {}", i.describe()),
            Schema::OneOf(alts) => alts
                .iter()
                .map(Schema::describe)
                .collect::<Vec<_>>()
                .join(" or "),
        }
    }

    /// Check `value` against this schema; `path` names the root (`input`, `output`).
    pub fn validate(&self, value: &Value, path: &str) -> Result<(), SchemaError> {
        let mismatch = || SchemaError {
            path: path.to_string(),
            expected: self.describe(),
            found: value.kind().to_string(),
        };
        match (self, value) {
            (Schema::Any, _) => Ok(()),
            (Schema::Null, Value::Null) => Ok(()),
            (Schema::Bool, Value::Bool(_)) => Ok(()),
            (Schema::Int, Value::Int(_)) => Ok(()),
            (Schema::Float, Value::Float(_) | Value::Int(_)) => Ok(()),
            (Schema::String, Value::String(_)) => Ok(()),
            (Schema::Bytes, Value::Bytes(_)) => Ok(()),
            (Schema::Optional(_), Value::Null) => Ok(()),
            (Schema::Optional(inner), v) => inner.validate(v, path),
            (Schema::List(item), Value::List(items)) => {
                for (i, v) in items.iter().enumerate() {
                    item.validate(v, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            (Schema::Map(item), Value::Map(m)) => {
                for (k, v) in m {
                    item.validate(v, &format!("{path}.{k}"))?;
                }
                Ok(())
            }
            (Schema::Object(o), Value::Map(m)) => {
                for f in &o.fields {
                    let p = format!("{path}.{}", f.name);
                    match m.get(&f.name) {
                        None | Some(Value::Null) if f.required => {
                            if matches!(f.schema, Schema::Any | Schema::Null)
                                && m.contains_key(&f.name)
                            {
                                continue;
                            }
                            return Err(SchemaError {
                                path: p,
                                expected: f.schema.describe(),
                                found: "nothing (required field missing)".into(),
                            });
                        }
                        None | Some(Value::Null) => {}
                        Some(v) => f.schema.validate(v, &p)?,
                    }
                }
                if !o.allow_extra {
                    if let Some(k) = m.keys().find(|k| !o.fields.iter().any(|f| &f.name == *k)) {
                        return Err(SchemaError {
                            path: format!("{path}.{k}"),
                            expected: "no such field (not declared by the contract)".into(),
                            found: m[k].kind().to_string(),
                        });
                    }
                }
                Ok(())
            }
            (Schema::OneOf(alts), v) => {
                if alts.iter().any(|s| s.validate(v, path).is_ok()) {
                    Ok(())
                } else {
                    Err(mismatch())
                }
            }
            _ => Err(mismatch()),
        }
    }
}

/// What an agent does to the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SideEffects {
    /// Reads only; safe to repeat and to replay.
    ReadOnly,
    /// Writes, but repeating with the same input has the same effect.
    Idempotent,
    /// Writes that must not be repeated blindly.
    Destructive,
}

/// An agent's declaration of itself, sent in `Ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    /// The agent's name.
    pub name: String,
    /// The agent's own version (free text, e.g. semver).
    pub version: String,
    /// Shape of `Task.input`.
    pub input: Schema,
    /// Shape of `Done.output`.
    pub output: Schema,
    /// Tools the agent may call.
    pub tools: Vec<String>,
    /// What running it does to the world.
    pub side_effects: SideEffects,
}

impl Contract {
    /// A contract accepting and returning anything, read-only, with no tools.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Contract {
        Contract {
            name: name.into(),
            version: version.into(),
            input: Schema::Any,
            output: Schema::Any,
            tools: Vec::new(),
            side_effects: SideEffects::ReadOnly,
        }
    }

    /// Set the input schema.
    pub fn input(mut self, s: Schema) -> Self {
        self.input = s;
        self
    }

    /// Set the output schema.
    pub fn output(mut self, s: Schema) -> Self {
        self.output = s;
        self
    }

    /// Declare a tool.
    pub fn tool(mut self, name: impl Into<String>) -> Self {
        self.tools.push(name.into());
        self
    }

    /// Set the side-effect class.
    pub fn side_effects(mut self, s: SideEffects) -> Self {
        self.side_effects = s;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_field() {
        let s = Schema::object().field(
            "items",
            Schema::list(Schema::object().field("name", Schema::String)),
        );
        let v = Value::from_json(&serde_json::json!({"items":[{"name":"a"},{"name":3}]}));
        let e = s.validate(&v, "input").unwrap_err();
        assert_eq!(e.path, "input.items[1].name");
        assert_eq!(e.expected, "string");
        assert_eq!(e.found, "int");
        let v = Value::from_json(&serde_json::json!({"items":[{}]}));
        assert_eq!(
            s.validate(&v, "input").unwrap_err().path,
            "input.items[0].name"
        );
        let v = Value::from_json(&serde_json::json!({"items":[], "x": 1}));
        assert_eq!(s.validate(&v, "input").unwrap_err().path, "input.x");
        let v = Value::from_json(&serde_json::json!({"items":[]}));
        assert!(s.validate(&v, "input").is_ok());
    }
}
