//! Conversions between JSON text and `google.protobuf.Value`, so grpcurl
//! users write `"json": {"key": "a"}` instead of base64 `data`.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// `value` as compact JSON text.
pub fn to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers stay whole so `{"n": 3}` arrives as 3, not 3.0.
            if n.fract() == 0.0 && n.abs() < 9.007e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// Parses `bytes` as JSON into a `Value`, or `None` when it is not JSON.
pub fn from_json_bytes(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .map(|v| from_json(&v))
}

fn from_json(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let text = r#"{"a":[1,2.5,"x",null,true],"b":{"c":-3}}"#;
        let v = from_json_bytes(text.as_bytes()).expect("json");
        assert_eq!(to_json(&v).to_string(), text);
        assert!(from_json_bytes(b"\xff not json").is_none());
    }
}
