//! JSON parsing that refuses duplicate object keys.
//!
//! `serde_json` keeps the last of two equal keys in an object. For a key
//! policy that is a trap: `GetKeyPolicy` shows the text as written, so a
//! reader sees the first `"Effect": "Deny"` while the service would enforce
//! the second `"Effect": "Allow"`. A policy is therefore parsed through
//! [`parse`], which builds the same `serde_json::Value` but fails on the
//! first key that repeats in any object, at any depth. Everything else
//! (syntax errors, nesting limit, trailing characters) is `serde_json`'s.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::super::excerpt::excerpt;

/// Parses `text` as one JSON value; an object with a repeated key anywhere
/// is an error naming the key (and, from `serde_json`, where it is).
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<NoDuplicateKeys>(text).map(|v| v.0)
}

/// A JSON value in which no object repeats a key.
struct NoDuplicateKeys(Value);

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Number::from_f64(v)
            .map(|n| NoDuplicateKeys(Value::Number(n)))
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(NoDuplicateKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(NoDuplicateKeys(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key '{}'",
                    excerpt(&key)
                )));
            }
            let NoDuplicateKeys(value) = map.next_value()?;
            members.insert(key, value);
        }
        Ok(NoDuplicateKeys(Value::Object(members)))
    }
}
