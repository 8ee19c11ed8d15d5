//! Event payloads are msgpack (Effect's `Event.payloadMsgPack`); people read and write JSON.
//! msgpack has two things JSON lacks, shown as tagged objects: bin as `{"$bytes": base64}` and
//! ext as `{"$ext": type, "data": base64}` (msgpackr writes a `Date` as ext −1).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rmpv::Value;
use serde_json::{Map, Number, Value as Json};

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the payload is not msgpack: {0}")]
    Malformed(String),
    #[error("the payload cannot be written as msgpack: {0}")]
    Encode(String),
}

/// Renders a msgpack payload as JSON.
pub fn to_json(payload: &[u8]) -> Result<Json, PayloadError> {
    let mut rest = payload;
    let value = rmpv::decode::read_value_ref_with_max_depth(&mut rest, 64)
        .map_err(|e| PayloadError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PayloadError::Malformed(format!(
            "{} bytes after the value",
            rest.len()
        )));
    }
    Ok(convert(&value.to_owned()))
}

fn convert(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::Number(u.into()),
            (None, Some(s)) => Json::Number(s.into()),
            _ => Json::Null,
        },
        Value::F32(f) => Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Value::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => match s.as_str() {
            Some(s) => Json::String(s.to_owned()),
            None => Json::Object(Map::from_iter([(
                "$bytes".to_owned(),
                Json::String(STANDARD.encode(s.as_bytes())),
            )])),
        },
        Value::Binary(b) => Json::Object(Map::from_iter([(
            "$bytes".to_owned(),
            Json::String(STANDARD.encode(b)),
        )])),
        Value::Array(a) => Json::Array(a.iter().map(convert).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.as_str().map(str::to_owned).unwrap_or_default(),
                        other => convert(other).to_string(),
                    };
                    (key, convert(v))
                })
                .collect(),
        ),
        Value::Ext(t, data) => Json::Object(Map::from_iter([
            ("$ext".to_owned(), Json::Number((*t).into())),
            ("data".to_owned(), Json::String(STANDARD.encode(data))),
        ])),
    }
}

/// Writes a JSON value as a msgpack payload (objects become maps with string keys, as Effect's
/// schemas expect).
pub fn from_json(json: &Json) -> Result<Vec<u8>, PayloadError> {
    rmp_serde::to_vec_named(json).map_err(|e| PayloadError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_msgpack_only_types_are_tagged() {
        let json = serde_json::json!({"id": "todo-1", "n": -3, "big": 5_000_000_000u64, "f": 1.5, "tags": ["a", null, true]});
        assert_eq!(
            to_json(&from_json(&json).expect("encode")).expect("decode"),
            json
        );
        // Effect's golden payload: map16 {id: "todo-1", title: "Buy milk"}.
        let golden = [
            0xde, 0x00, 0x02, 0xa2, b'i', b'd', 0xa6, b't', b'o', b'd', b'o', b'-', b'1', 0xa5,
            b't', b'i', b't', b'l', b'e', 0xa8, b'B', b'u', b'y', b' ', b'm', b'i', b'l', b'k',
        ];
        assert_eq!(
            to_json(&golden).expect("decode"),
            serde_json::json!({"id": "todo-1", "title": "Buy milk"})
        );
        assert_eq!(
            to_json(&[0xc4, 2, 1, 2]).expect("bin"),
            serde_json::json!({"$bytes": "AQI="})
        );
        assert!(to_json(&[0xc4, 9]).is_err());
        assert!(to_json(&[0x01, 0x02]).is_err());
    }
}
