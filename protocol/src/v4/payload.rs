//! An Effect v4 event payload (SchemaBinary of the app's payload schema) to and from JSON,
//! without the schema, for tools and the viewer.
//!
//! Writing covers what a shell sends: an object whose fields are strings, numbers, booleans,
//! objects, arrays of strings or arrays of objects, encoded as Effect encodes a `Schema.Struct`
//! of those (fields by fnv1a32 id, integers as varints, short decimals as decimals). Reading is a
//! best effort: the bytes do not carry field names (only their hashes), so a field is named
//! when its name is in [`COMMON_FIELDS`] or in the names given, and `#` + its id otherwise;
//! a sized value is a string when it is printable UTF-8, a struct when it parses as one, and
//! hex otherwise; inside an array of objects a single byte 0 or 1 reads as a boolean.

use serde_json::{Map, Number, Value};

use super::binary::{
    default_frame, field_id, struct_fields, FieldValue, Reader, RowRun, Writer, WIRE_FALSE,
    WIRE_FIXED64, WIRE_TRUE,
};
use super::error::V4Error;

/// Field names tried when reading a payload without its schema.
pub const COMMON_FIELDS: &[&str] = &[
    "id",
    "text",
    "title",
    "name",
    "body",
    "content",
    "value",
    "key",
    "type",
    "kind",
    "status",
    "state",
    "done",
    "completed",
    "createdAt",
    "updatedAt",
    "timestamp",
    "at",
    "by",
    "user",
    "userId",
    "author",
    "message",
    "role",
    "tool",
    "input",
    "output",
    "result",
    "error",
    "data",
    "payload",
    "count",
    "index",
    "tags",
    "url",
    "description",
    "priority",
    "note",
    "amount",
    "email",
    "label",
    "step",
    "agent",
    "task",
    "summary",
    "score",
];

const MAX_SAFE: i64 = (1 << 53) - 1;

/// A JSON value as an Effect v4 payload frame.
pub fn encode(value: &Value) -> Result<Vec<u8>, V4Error> {
    let mut body = Writer::new();
    match value {
        Value::Object(map) => write_struct(&mut body, map)?,
        Value::String(s) => body.bytes(s.as_bytes()),
        Value::Bool(b) => body.buf.push(u8::from(*b)),
        Value::Number(n) => match n.as_i64().filter(|v| v.abs() <= MAX_SAFE) {
            Some(v) => body.svarint(v),
            None => return Err(unsupported("a top-level non-integer number")),
        },
        _ => return Err(unsupported("a payload that is null or an array")),
    }
    Ok(Writer::frame(|w| w.bytes(&body.buf)))
}

fn unsupported(what: &str) -> V4Error {
    V4Error::Invalid(format!(
        "{what}: the schema-less encoding covers objects of strings, numbers, booleans, objects, \
         and arrays of strings or of objects"
    ))
}

fn write_struct(w: &mut Writer, map: &Map<String, Value>) -> Result<(), V4Error> {
    let mut fields: Vec<(u32, Vec<u8>)> = Vec::with_capacity(map.len());
    for (name, value) in map {
        let id = field_id(name);
        let mut f = Writer::new();
        match value {
            Value::Null => continue,
            Value::Bool(b) => f.tag(id, if *b { WIRE_TRUE } else { WIRE_FALSE }),
            Value::String(s) => f.field_sized(id, s.as_bytes()),
            Value::Number(n) => write_number(&mut f, id, n)?,
            Value::Object(inner) => {
                let mut body = Writer::new();
                write_struct(&mut body, inner)?;
                f.field_sized(id, &body.buf);
            }
            Value::Array(items) => {
                let mut body = Writer::new();
                write_array(&mut body, name, items)?;
                f.field_sized(id, &body.buf);
            }
        }
        fields.push((id, f.buf));
    }
    fields.sort_by_key(|(id, _)| *id);
    for (_, b) in fields {
        w.bytes(&b);
    }
    Ok(())
}

fn write_number(w: &mut Writer, id: u32, n: &Number) -> Result<(), V4Error> {
    if let Some(v) = n.as_i64().filter(|v| v.abs() <= MAX_SAFE) {
        w.field_int(id, v);
        return Ok(());
    }
    let v = n
        .as_f64()
        .ok_or_else(|| unsupported("a number past 2^53"))?;
    // The smallest scale that holds it exactly in a 41-bit mantissa, as Effect writes it.
    for scale in 1..=8u32 {
        let m = (v * 10f64.powi(scale as i32)).round();
        if m.abs() <= ((1u64 << 41) - 1) as f64 && m / 10f64.powi(scale as i32) == v {
            w.tag(id, super::binary::WIRE_DECIMAL);
            w.svarint(m as i64);
            w.uvarint(u64::from(scale));
            return Ok(());
        }
    }
    w.tag(id, WIRE_FIXED64);
    w.bytes(&v.to_le_bytes());
    Ok(())
}

fn write_array(w: &mut Writer, name: &str, items: &[Value]) -> Result<(), V4Error> {
    if items.iter().all(Value::is_string) {
        w.uvarint(items.len() as u64);
        for s in items.iter().filter_map(Value::as_str) {
            w.sized(s.as_bytes());
        }
        return Ok(());
    }
    if items.iter().all(Value::is_object) {
        let mut rows = Vec::with_capacity(items.len());
        for item in items.iter().filter_map(Value::as_object) {
            let mut row = Vec::new();
            for (field, value) in item {
                let bytes = match value {
                    Value::Null => continue,
                    Value::String(s) => s.as_bytes().to_vec(),
                    Value::Bool(b) => vec![u8::from(*b)],
                    Value::Number(n) => match n.as_i64().filter(|v| v.abs() <= MAX_SAFE) {
                        Some(v) => super::binary::svarint_bytes(v),
                        None => return Err(unsupported("a non-integer number in an array")),
                    },
                    Value::Object(inner) => {
                        let mut body = Writer::new();
                        write_struct(&mut body, inner)?;
                        body.buf
                    }
                    Value::Array(_) => return Err(unsupported("an array in an array")),
                };
                row.push((field_id(field), bytes));
            }
            row.sort_by_key(|(id, _)| *id);
            rows.push(row);
        }
        RowRun::write(w, &rows);
        return Ok(());
    }
    Err(unsupported(&format!(
        "field {name:?}: an array of numbers or of mixed values"
    )))
}

/// An Effect v4 payload frame as JSON, naming fields from [`COMMON_FIELDS`] and `names`.
pub fn decode(frame: &[u8], names: &[&str]) -> Result<Value, V4Error> {
    let region = default_frame(frame)?;
    let known: Vec<(u32, &str)> = COMMON_FIELDS
        .iter()
        .chain(names.iter())
        .map(|n| (field_id(n), *n))
        .collect();
    Ok(match as_struct(region, &known, 0) {
        Some(v) => v,
        None => scalar(region),
    })
}

const MAX_DEPTH: usize = 32;

fn as_struct(region: &[u8], known: &[(u32, &str)], depth: usize) -> Option<Value> {
    if region.is_empty() || depth > MAX_DEPTH {
        return None;
    }
    let fields = struct_fields(region).ok()?;
    let mut map = Map::new();
    for (id, value) in fields {
        let key = known
            .iter()
            .find(|(k, _)| *k == id)
            .map_or_else(|| format!("#{id:08x}"), |(_, n)| (*n).to_owned());
        let v = match value {
            FieldValue::Varint(n) => Value::from(n),
            FieldValue::Sized(b) => sized(b, known, depth + 1),
            FieldValue::Bool(b) => Value::Bool(b),
            FieldValue::Float(f) => number(f),
            FieldValue::Decimal { mantissa, scale } => {
                number(mantissa as f64 / 10f64.powi(i32::try_from(scale).ok()?))
            }
            FieldValue::Fixed32 => return None,
            FieldValue::Empty => Value::Null,
        };
        map.insert(key, v);
    }
    Some(Value::Object(map))
}

fn number(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn printable(b: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(b).ok()?;
    (!s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r'))
    .then_some(s)
}

fn sized(b: &[u8], known: &[(u32, &str)], depth: usize) -> Value {
    if let Some(s) = printable(b) {
        return Value::String(s.to_owned());
    }
    if depth > MAX_DEPTH {
        return Value::String(format!("0x{}", hex::encode(b)));
    }
    strings(b)
        .or_else(|| as_struct(b, known, depth))
        .or_else(|| rows(b, known, depth))
        .unwrap_or_else(|| Value::String(format!("0x{}", hex::encode(b))))
}

/// An array of strings: a count, then each one sized.
fn strings(b: &[u8]) -> Option<Value> {
    let mut r = Reader::new(b);
    let n = r.len().ok()?;
    if n == 0 || n > b.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Value::String(printable(r.sized().ok()?)?.to_owned()));
    }
    r.is_empty().then_some(Value::Array(out))
}

/// An array of structs (a row run).
fn rows(b: &[u8], known: &[(u32, &str)], depth: usize) -> Option<Value> {
    let mut r = Reader::new(b);
    let run = RowRun::read(&mut r, &[]).ok()?;
    if !r.is_empty() || run.rows.is_empty() {
        return None;
    }
    let out = run
        .rows
        .iter()
        .map(|row| {
            let mut map = Map::new();
            for (id, value) in row {
                let key = known
                    .iter()
                    .find(|(k, _)| k == id)
                    .map_or_else(|| format!("#{id:08x}"), |(_, n)| (*n).to_owned());
                // One byte 0 or 1 is read as a boolean (an integer 0 reads as false).
                let v = match Reader::new(value).svarint() {
                    _ if matches!(value, [0] | [1]) => Value::Bool(value[0] == 1),
                    // A short value that is exactly one varint and not text: a number.
                    Ok(n)
                        if value.len() <= 8 && printable(value).is_none() && {
                            let mut check = Reader::new(value);
                            check.svarint().is_ok() && check.is_empty()
                        } =>
                    {
                        Value::from(n)
                    }
                    _ => sized(value, known, depth + 1),
                };
                map.insert(key, v);
            }
            Value::Object(map)
        })
        .collect();
    Some(Value::Array(out))
}

fn scalar(region: &[u8]) -> Value {
    match std::str::from_utf8(region) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::String(format!("0x{}", hex::encode(region))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_round_trip_through_the_schemaless_encoding() {
        let v = json!({"id": "n1", "text": "hello", "done": true, "count": 3, "score": 1.5,
                       "tags": ["a", "b"], "author": {"name": "ada"}, "steps": [{"title": "x"}]});
        let frame = encode(&v).expect("encodes");
        let back = decode(&frame, &["steps"]).expect("decodes");
        assert_eq!(back, v);
        // A field whose name is not known keeps its id.
        let back = decode(&encode(&json!({"zebra": 7})).expect("encodes"), &[]).expect("decodes");
        assert_eq!(back, json!({ format!("#{:08x}", field_id("zebra")): 7 }));
        assert!(encode(&json!({"n": [1, 2]})).is_err());
    }
}
