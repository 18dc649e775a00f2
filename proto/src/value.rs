//! [`Value`]: the self-describing payload tree carried by every task, output, memory note and
//! tool call.
//!
//! bincode is not self-describing, so it cannot decode `serde_json::Value` (which relies on
//! `deserialize_any`). `Value` is a plain enum that bincode round-trips, and it converts
//! losslessly to and from JSON:
//!
//! | Value | JSON |
//! |---|---|
//! | `Null`, `Bool`, `String`, `List`, `Map` | the same |
//! | `Int(i64)` | an integer number |
//! | `Float(f64)` finite | a number with a fraction or exponent (`1.0`, not `1`) |
//! | `Float` NaN / ±inf | `{"$float": "nan" \| "inf" \| "-inf"}` |
//! | `Bytes` | `{"$bytes": "<standard base64>"}` |
//!
//! A JSON integer beyond `i64` becomes a `Float`. An object with the single key `$bytes` (or
//! `$float`) holding a string is read back as bytes (or a float): those two key names are
//! reserved.
//!
//! Any serde type converts with [`to_value`] and [`from_value`]; the SDK's typed API rides on them.

use base64::Engine as _;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;

/// A self-describing value. Variant order is part of the wire format (see `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Value {
    /// Absent or null. Wire tag 0.
    #[default]
    Null,
    /// Wire tag 1.
    Bool(bool),
    /// Signed 64-bit integer. Wire tag 2.
    Int(i64),
    /// IEEE-754 double. Wire tag 3.
    Float(f64),
    /// UTF-8 text. Wire tag 4.
    String(#[serde(deserialize_with = "charged_string")] String),
    /// Raw bytes. Wire tag 5.
    Bytes(#[serde(deserialize_with = "charged_bytes")] Vec<u8>),
    /// Ordered list. Wire tag 6.
    List(#[serde(deserialize_with = "nested_list", serialize_with = "nested_ser")] Vec<Value>),
    /// Map with string keys, sorted by key. Wire tag 7.
    Map(
        #[serde(deserialize_with = "nested_map", serialize_with = "nested_ser")]
        BTreeMap<String, Value>,
    ),
}

thread_local! {
    /// Bytes of memory decoded values may still take on this thread: (budget, left).
    static BUDGET: std::cell::Cell<(usize, usize)> =
        const { std::cell::Cell::new((usize::MAX, usize::MAX)) };
}

/// Run `f` (a decode) with at most `bytes` of memory for the [`Value`]s it makes: a list
/// element costs `size_of::<Value>()` (a list is charged for its announced length before its
/// elements are read), a map entry that plus its key, a `String` and a share of a tree node, a
/// string or bytes their length. Past it the decode fails with a clear error instead of letting a
/// small frame of many tiny values (a null is one byte on the wire and 32 in memory) grow the
/// decoder's memory thirty-fold.
pub(crate) fn with_budget<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    struct Restore((usize, usize));
    impl Drop for Restore {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BUDGET.with(|b| b.replace((bytes, bytes))));
    f()
}

fn charge<E: serde::de::Error>(n: usize) -> Result<(), E> {
    BUDGET.with(|b| {
        let (budget, left) = b.get();
        match left.checked_sub(n) {
            Some(rest) => {
                b.set((budget, rest));
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "the decoded value would take more than {budget} bytes of memory (many small \
                 values: send large data as fewer strings or bytes)"
            ))),
        }
    })
}

fn charged_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    charge::<D::Error>(s.len())?;
    Ok(s)
}

fn charged_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let b = Vec::<u8>::deserialize(d)?;
    charge::<D::Error>(b.len())?;
    Ok(b)
}

/// A list level: nesting checked, each element charged to the budget before it is decoded.
fn nested_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of values")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Value>, A::Error> {
            // bincode gives the exact length: charged at once, and the list made that size (a
            // list too long for the budget is refused before any element is read).
            let slot = std::mem::size_of::<Value>();
            let hint = seq.size_hint();
            if let Some(n) = hint {
                charge::<A::Error>(n.saturating_mul(slot))?;
            }
            let mut out = Vec::with_capacity(hint.unwrap_or(0));
            loop {
                if hint.is_none() {
                    charge::<A::Error>(slot)?;
                }
                match seq.next_element::<Value>()? {
                    Some(v) => out.push(v),
                    None => return Ok(out),
                }
            }
        }
    }
    let _level = enter::<D::Error>()?;
    d.deserialize_seq(V)
}

/// A map level: nesting checked, each entry charged to the budget before it is decoded.
fn nested_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Value>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<BTreeMap<String, Value>, A::Error> {
            let mut out = BTreeMap::new();
            // A map entry: its value, its key's `String`, and the tree's share of a node.
            let slot = std::mem::size_of::<Value>() + std::mem::size_of::<String>() + 16;
            let hint = map.size_hint();
            if let Some(n) = hint {
                charge::<A::Error>(n.saturating_mul(slot))?;
            }
            loop {
                if hint.is_none() {
                    charge::<A::Error>(slot)?;
                }
                match map.next_key::<String>()? {
                    Some(k) => {
                        charge::<A::Error>(k.len())?;
                        let v = map.next_value::<Value>()?;
                        out.insert(k, v);
                    }
                    None => return Ok(out),
                }
            }
        }
    }
    let _level = enter::<D::Error>()?;
    d.deserialize_map(V)
}

/// Deepest nesting a decoder accepts: `List`/`Map` levels of a [`Value`], composite levels of a
/// [`crate::Schema`] (the same as serde_json's recursion limit). Deeper input is a decode error,
/// not a stack overflow: every level costs stack while decoding.
pub(crate) const MAX_NESTING: usize = 128;

thread_local! {
    static NESTING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level deeper on this thread, until the guard drops; an error past [`MAX_NESTING`].
fn enter<E: serde::de::Error>() -> Result<Leave, E> {
    let depth = NESTING.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let leave = Leave;
    if depth > MAX_NESTING {
        return Err(E::custom(format_args!(
            "nesting deeper than {MAX_NESTING} levels"
        )));
    }
    Ok(leave)
}

/// Leaves a level when dropped.
struct Leave;

impl Drop for Leave {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(n.get() - 1));
    }
}

/// Deserialize one nested level, failing past [`MAX_NESTING`] levels on this thread.
pub(crate) fn nested<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let _level = enter::<D::Error>()?;
    T::deserialize(d)
}

thread_local! {
    static NESTING_SER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Serialize one nested level, failing past [`MAX_NESTING`] levels: what no decoder would
/// accept is refused when it is encoded, with a clear error, instead of reaching the peer.
fn nested_ser<S, T>(v: &T, s: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    T: Serialize,
{
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            NESTING_SER.with(|n| n.set(n.get() - 1));
        }
    }
    let depth = NESTING_SER.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let _leave = Leave;
    if depth > MAX_NESTING {
        return Err(serde::ser::Error::custom(format_args!(
            "nesting deeper than {MAX_NESTING} levels"
        )));
    }
    v.serialize(s)
}

/// Conversion between [`Value`] and serde types failed.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// The typed value could not be turned into a `Value`.
    #[error("cannot convert to a value: {0}")]
    Serialize(String),
    /// The `Value` does not have the shape the type expects.
    #[error("value does not fit the expected type: {0}")]
    Deserialize(String),
}

impl Value {
    /// A short name of the variant, used in validation messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }

    /// Look a key up when this is a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, when this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean, when this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Build a map from pairs.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Convert to JSON, losslessly (see the module docs for the two reserved forms).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::Number((*i).into()),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => {
                    let s = if f.is_nan() {
                        "nan"
                    } else if *f > 0.0 {
                        "inf"
                    } else {
                        "-inf"
                    };
                    serde_json::json!({ "$float": s })
                }
            },
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => {
                serde_json::json!({ "$bytes": base64::engine::general_purpose::STANDARD.encode(b) })
            }
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Convert from JSON (the inverse of [`Value::to_json`]).
    pub fn from_json(json: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => {
                if let Some(i) = n.as_i64() {
                    if n.is_f64() {
                        Value::Float(i as f64)
                    } else {
                        Value::Int(i)
                    }
                } else {
                    Value::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            J::Object(o) => {
                if o.len() == 1 {
                    if let Some(J::String(s)) = o.get("$bytes") {
                        if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(s) {
                            return Value::Bytes(b);
                        }
                    }
                    if let Some(J::String(s)) = o.get("$float") {
                        match s.as_str() {
                            "nan" => return Value::Float(f64::NAN),
                            "inf" => return Value::Float(f64::INFINITY),
                            "-inf" => return Value::Float(f64::NEG_INFINITY),
                            _ => {}
                        }
                    }
                }
                Value::Map(
                    o.iter()
                        .map(|(k, v)| (k.clone(), Value::from_json(v)))
                        .collect(),
                )
            }
        }
    }
}

impl From<serde_json::Value> for Value {
    fn from(j: serde_json::Value) -> Self {
        Value::from_json(&j)
    }
}

impl From<Value> for serde_json::Value {
    fn from(v: Value) -> Self {
        v.to_json()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

/// Turn any serde type into a [`Value`] (through its JSON form).
pub fn to_value<T: Serialize + ?Sized>(t: &T) -> Result<Value, ValueError> {
    serde_json::to_value(t)
        .map(|j| Value::from_json(&j))
        .map_err(|e| ValueError::Serialize(e.to_string()))
}

/// Turn a [`Value`] into any serde type (through its JSON form).
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, ValueError> {
    serde_json::from_value(v.to_json()).map_err(|e| ValueError::Deserialize(e.to_string()))
}

/// Like [`to_value`], but a `Value` passes through unchanged (instead of being serialised as
/// the tagged enum it is on the wire). Used by the SDK's typed API.
pub fn to_value_owned<T: Serialize + 'static>(t: T) -> Result<Value, ValueError> {
    let any: Box<dyn std::any::Any> = Box::new(t);
    match any.downcast::<Value>() {
        Ok(v) => Ok(*v),
        Err(any) => match any.downcast::<T>() {
            Ok(t) => to_value(&*t),
            Err(_) => Err(ValueError::Serialize("type confusion".into())),
        },
    }
}

/// Like [`from_value`], but asking for a `Value` returns it unchanged.
pub fn from_value_owned<T: DeserializeOwned + 'static>(v: Value) -> Result<T, ValueError> {
    let any: Box<dyn std::any::Any> = Box::new(v);
    match any.downcast::<T>() {
        Ok(t) => Ok(*t),
        Err(any) => match any.downcast::<Value>() {
            Ok(v) => from_value(&v),
            Err(_) => Err(ValueError::Deserialize("type confusion".into())),
        },
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_kinds() {
        let v = Value::map([
            ("i", Value::Int(-3)),
            ("f", Value::Float(1.0)),
            ("nan", Value::Float(f64::INFINITY)),
            ("b", Value::Bytes(vec![0, 255, 7])),
            ("l", Value::List(vec![Value::Null, Value::Bool(true)])),
        ]);
        let j = v.to_json();
        assert_eq!(j["f"].to_string(), "1.0");
        assert_eq!(Value::from_json(&j), v);
    }

    #[test]
    fn owned_conversions_pass_values_through() {
        let v = Value::map([("text", Value::from("hi"))]);
        assert_eq!(to_value_owned(v.clone()).unwrap(), v);
        assert_eq!(from_value_owned::<Value>(v.clone()).unwrap(), v);
        assert_eq!(to_value_owned(7u8).unwrap(), Value::Int(7));
        assert_eq!(from_value_owned::<u8>(Value::Int(7)).unwrap(), 7);
    }

    #[test]
    fn typed_round_trip() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            a: u32,
            b: Option<String>,
        }
        let t = T { a: 7, b: None };
        let v = to_value(&t).unwrap();
        assert_eq!(v.get("a"), Some(&Value::Int(7)));
        assert_eq!(from_value::<T>(&v).unwrap(), t);
        assert!(from_value::<T>(&Value::Int(1)).is_err());
    }
}
