//! Effect's SchemaBinary (v2), the subset the EventLog RPCs use: varints, frames, structs with
//! fnv1a32 field ids, row runs for arrays of structs, tagged variants. Bounded: every length is
//! checked against what is left, nesting is fixed by the schemas, and nothing is allocated
//! before the bytes it describes have been seen.

use super::error::V4Error;

/// The mode byte of a default-mode frame (payloads, exits, chunk values, batch blobs).
pub const DEFAULT_MODE: u8 = 0x20;
/// The mode byte of the RPC envelope, followed by [`ENVELOPE_FINGERPRINT`].
pub const FINGERPRINT_MODE: u8 = 0x21;
/// The layout fingerprint of effect 4.x's `RpcMessage.EncodedSchema`.
pub const ENVELOPE_FINGERPRINT: [u8; 8] = [0xa7, 0x1f, 0xbf, 0x48, 0x86, 0x12, 0xff, 0x6b];

/// Wire types of a default-mode struct field.
pub(crate) const WIRE_SIZED: u8 = 0;
pub(crate) const WIRE_VARINT: u8 = 1;
pub(crate) const WIRE_FIXED64: u8 = 2;
pub(crate) const WIRE_FALSE: u8 = 3;
pub(crate) const WIRE_TRUE: u8 = 4;
pub(crate) const WIRE_DECIMAL: u8 = 5;
pub(crate) const WIRE_FIXED32: u8 = 6;

/// Union member kinds (default mode), for members that are not tagged variants.
pub(crate) const KIND_BOOL: u8 = 1;
pub(crate) const KIND_UNDEFINED: u8 = 3;
pub(crate) const KIND_NUMBER: u8 = 4;
pub(crate) const KIND_STRING: u8 = 5;

/// The most fields a struct may have (the EventLog schemas have at most six; unknown ones are
/// skipped, but not without end).
pub(crate) const MAX_FIELDS: usize = 256;
/// The most rows an array of structs may have (a `WriteEntries` of that many batches is far
/// past any client's).
pub(crate) const MAX_ROWS: usize = 1 << 16;

/// The largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A field's id: fnv1a32 of its UTF-8 name.
pub const fn field_id(name: &str) -> u32 {
    fnv1a32(name.as_bytes(), 0x811c_9dc5)
}

const fn fnv1a32(bytes: &[u8], mut hash: u32) -> u32 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// The selector of a tagged variant (`_tag: "Single"` and so on): fnv1a32 over the sentinel's
/// key and string literal, each as kind 1, u32le length, bytes.
pub const fn variant_tag(tag: &str) -> u32 {
    const KEY: &[u8] = b"_tag";
    let mut hash = 0x811c_9dc5;
    hash = fnv1a32(&[1], hash);
    hash = fnv1a32(&(KEY.len() as u32).to_le_bytes(), hash);
    hash = fnv1a32(KEY, hash);
    hash = fnv1a32(&[1], hash);
    hash = fnv1a32(&(tag.len() as u32).to_le_bytes(), hash);
    fnv1a32(tag.as_bytes(), hash)
}

/// The byte that starts a tagged variant, before its u32le selector.
pub(crate) const VARIANT: u8 = 0x0a;

/// Appends SchemaBinary to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// Sign-magnitude: `|n| * 2 + (n < 0)`.
    pub(crate) fn svarint(&mut self, v: i64) {
        let code = (v.unsigned_abs() << 1) | u64::from(v < 0);
        self.uvarint(code);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// `uvarint(len) ‖ bytes`.
    pub(crate) fn sized(&mut self, b: &[u8]) {
        self.uvarint(b.len() as u64);
        self.bytes(b);
    }

    /// A region whose length is only known once written: `f` writes it, then its length goes in
    /// front.
    pub(crate) fn sized_with(&mut self, f: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::new();
        f(&mut inner);
        self.sized(&inner.buf);
    }

    /// A default-mode struct field's tag.
    pub(crate) fn tag(&mut self, id: u32, wire: u8) {
        self.uvarint(u64::from(id) * 8 + u64::from(wire));
    }

    /// A sized field (strings, bytes, nested values).
    pub(crate) fn field_sized(&mut self, id: u32, b: &[u8]) {
        self.tag(id, WIRE_SIZED);
        self.sized(b);
    }

    pub(crate) fn field_int(&mut self, id: u32, v: i64) {
        self.tag(id, WIRE_VARINT);
        self.svarint(v);
    }

    /// A tagged variant's selector.
    pub(crate) fn variant(&mut self, tag: u32) {
        self.buf.push(VARIANT);
        self.bytes(&tag.to_le_bytes());
    }

    /// `uvarint(len) ‖ mode ‖ body`: a default-mode frame around what `f` writes.
    pub(crate) fn frame(f: impl FnOnce(&mut Writer)) -> Vec<u8> {
        let mut body = Writer::new();
        body.buf.push(DEFAULT_MODE);
        f(&mut body);
        let mut out = Writer::new();
        out.sized(&body.buf);
        out.buf
    }
}

/// Reads SchemaBinary from a region, never past its end.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn byte(&mut self) -> Result<u8, V4Error> {
        let b = *self.buf.get(self.pos).ok_or(V4Error::Truncated("a byte"))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], V4Error> {
        if n > self.remaining() {
            return Err(V4Error::Truncated("a length-prefixed value"));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// An unsigned LEB128 varint of at most 10 bytes (non-minimal forms accepted, as Effect
    /// does).
    pub(crate) fn uvarint(&mut self) -> Result<u64, V4Error> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(V4Error::Invalid("a varint past 64 bits".into()));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(V4Error::Invalid("a varint longer than 10 bytes".into()))
    }

    /// A length or count: a varint no larger than a JavaScript number holds.
    pub(crate) fn len(&mut self) -> Result<usize, V4Error> {
        let v = self.uvarint()?;
        if v > MAX_SAFE_INTEGER {
            return Err(V4Error::Invalid(format!("length {v} is past 2^53-1")));
        }
        usize::try_from(v).map_err(|_| V4Error::Invalid(format!("length {v} is too large")))
    }

    pub(crate) fn svarint(&mut self) -> Result<i64, V4Error> {
        let code = self.uvarint()?;
        let magnitude = code >> 1;
        if magnitude > MAX_SAFE_INTEGER {
            return Err(V4Error::Invalid(format!(
                "integer {magnitude} is past 2^53-1"
            )));
        }
        let m = magnitude as i64;
        Ok(if code & 1 == 1 { -m } else { m })
    }

    /// A non-negative integer (`Schema.Natural`).
    pub(crate) fn natural(&mut self) -> Result<u64, V4Error> {
        let v = self.svarint()?;
        u64::try_from(v).map_err(|_| V4Error::Invalid(format!("{v} is not a natural number")))
    }

    /// `uvarint(len) ‖ bytes`.
    pub(crate) fn sized(&mut self) -> Result<&'a [u8], V4Error> {
        let n = self.len()?;
        self.take(n)
    }

    pub(crate) fn end(&self, what: &'static str) -> Result<(), V4Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(V4Error::Invalid(format!(
                "{} bytes left over after {what}",
                self.remaining()
            )))
        }
    }
}

/// The body of a default-mode frame that fills `bytes` exactly: `uvarint(len) ‖ 0x20 ‖ value`.
pub(crate) fn default_frame(bytes: &[u8]) -> Result<&[u8], V4Error> {
    let mut r = Reader::new(bytes);
    let body = r.sized()?;
    r.end("a frame")?;
    match body.split_first() {
        Some((&DEFAULT_MODE, value)) => Ok(value),
        Some((mode, _)) => Err(V4Error::Invalid(format!(
            "a value frame has mode byte {mode:#04x}, not 0x20"
        ))),
        None => Err(V4Error::Invalid("an empty frame".into())),
    }
}

/// One field of a default-mode struct, as read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FieldValue<'a> {
    Sized(&'a [u8]),
    Varint(i64),
    Bool(bool),
    Float(f64),
    /// `mantissa / 10^scale`.
    Decimal {
        mantissa: i64,
        scale: u64,
    },
    /// Wire types no schema writes (skipped, like Effect).
    Fixed32,
    Empty,
}

/// The fields of a default-mode struct: in any order, unknown ids skipped, a duplicate id
/// refused, as Effect's decoder does.
pub(crate) fn struct_fields(region: &[u8]) -> Result<Vec<(u32, FieldValue<'_>)>, V4Error> {
    let mut r = Reader::new(region);
    let mut fields: Vec<(u32, FieldValue<'_>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while !r.is_empty() {
        if fields.len() >= MAX_FIELDS {
            return Err(V4Error::Invalid(format!(
                "a struct of more than {MAX_FIELDS} fields"
            )));
        }
        let key = r.uvarint()?;
        let id = u32::try_from(key >> 3)
            .map_err(|_| V4Error::Invalid(format!("field key {key} is past 32 bits")))?;
        let value = match (key & 7) as u8 {
            WIRE_SIZED => FieldValue::Sized(r.sized()?),
            WIRE_VARINT => FieldValue::Varint(r.svarint()?),
            WIRE_FIXED64 => {
                let mut f = [0u8; 8];
                f.copy_from_slice(r.take(8)?);
                FieldValue::Float(f64::from_le_bytes(f))
            }
            WIRE_FALSE => FieldValue::Bool(false),
            WIRE_TRUE => FieldValue::Bool(true),
            WIRE_DECIMAL => FieldValue::Decimal {
                mantissa: r.svarint()?,
                scale: r.uvarint()?,
            },
            WIRE_FIXED32 => {
                r.take(4)?;
                FieldValue::Fixed32
            }
            _ => FieldValue::Empty,
        };
        if !seen.insert(id) {
            return Err(V4Error::Invalid(format!("field {id:#010x} appears twice")));
        }
        fields.push((id, value));
    }
    Ok(fields)
}

/// Looks up fields of a decoded struct by id.
pub(crate) struct Fields<'a> {
    fields: Vec<(u32, FieldValue<'a>)>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn read(region: &'a [u8], what: &'static str) -> Result<Self, V4Error> {
        Ok(Self {
            fields: struct_fields(region)?,
            what,
        })
    }

    fn get(&self, id: u32) -> Option<FieldValue<'a>> {
        self.fields.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
    }

    fn missing(&self, name: &'static str) -> V4Error {
        V4Error::Invalid(format!("{} has no {name}", self.what))
    }

    pub(crate) fn sized(&self, name: &'static str) -> Result<&'a [u8], V4Error> {
        match self.get(field_id(name)) {
            Some(FieldValue::Sized(b)) => Ok(b),
            _ => Err(self.missing(name)),
        }
    }

    pub(crate) fn string(&self, name: &'static str) -> Result<String, V4Error> {
        utf8(self.sized(name)?, name)
    }

    pub(crate) fn int(&self, name: &'static str) -> Result<i64, V4Error> {
        match self.get(field_id(name)) {
            Some(FieldValue::Varint(v)) => Ok(v),
            _ => Err(self.missing(name)),
        }
    }

    pub(crate) fn natural(&self, name: &'static str) -> Result<u64, V4Error> {
        let v = self.int(name)?;
        u64::try_from(v).map_err(|_| V4Error::Invalid(format!("{name} {v} is negative")))
    }

    /// An optional field: `None` when absent, present-undefined, or a member Effect would skip.
    pub(crate) fn optional(&self, name: &'static str) -> Result<Option<(u8, &'a [u8])>, V4Error> {
        match self.get(field_id(name)) {
            Some(FieldValue::Sized(b)) => match b.split_first() {
                Some((&KIND_UNDEFINED, _)) | None => Ok(None),
                Some((kind, body)) => Ok(Some((*kind, body))),
            },
            _ => Ok(None),
        }
    }

    pub(crate) fn optional_string(&self, name: &'static str) -> Result<Option<String>, V4Error> {
        match self.optional(name)? {
            Some((KIND_STRING, body)) => Ok(Some(utf8(body, name)?)),
            _ => Ok(None),
        }
    }
}

pub(crate) fn utf8(b: &[u8], what: &'static str) -> Result<String, V4Error> {
    String::from_utf8(b.to_vec()).map_err(|_| V4Error::Invalid(format!("{what} is not UTF-8")))
}

/// An optional field's value (`uvarint(len) ‖ kind ‖ body`).
pub(crate) fn optional_member(w: &mut Writer, id: u32, kind: u8, body: &[u8]) {
    w.tag(id, WIRE_SIZED);
    w.uvarint(body.len() as u64 + 1);
    w.buf.push(kind);
    w.bytes(body);
}

/// One slot of a row run: a value's bytes, or a back-reference into its field's intern table.
/// The array-of-structs layout: `count`, then rows that declare a shape (its field ids) or
/// reuse one, each value framed by `len * 2` (odd: a back-reference).
pub(crate) struct RowRun<'a> {
    pub(crate) rows: Vec<Vec<(u32, &'a [u8])>>,
}

impl<'a> RowRun<'a> {
    /// Reads `count` rows. Back-references resolve into the field's earlier values, for the
    /// fields in `interned` only (the string fields, as Effect allows); anywhere else they are
    /// refused.
    pub(crate) fn read(r: &mut Reader<'a>, interned: &[u32]) -> Result<Self, V4Error> {
        let count = r.len()?;
        // Every row takes at least two bytes: a count past that is a lie.
        if count > r.remaining() / 2 || count > MAX_ROWS {
            return Err(V4Error::Invalid(format!(
                "an array of {count} rows in {} bytes (at most {MAX_ROWS})",
                r.remaining()
            )));
        }
        let mut shapes: Vec<Vec<u32>> = Vec::new();
        let mut tables: Vec<(u32, Vec<&'a [u8]>)> = Vec::new();
        // Grown as rows arrive, not from the declared count.
        let mut rows = Vec::new();
        for _ in 0..count {
            let mut row = Reader::new(r.sized()?);
            let code = row.len()?;
            let mut values: Vec<(u32, &'a [u8])> = Vec::new();
            let mut slot = |row: &mut Reader<'a>, id: u32| -> Result<&'a [u8], V4Error> {
                let code = row.len()?;
                if code % 2 == 0 {
                    let value = row.take(code / 2)?;
                    if interned.contains(&id) {
                        match tables.iter_mut().find(|(f, _)| *f == id) {
                            Some((_, t)) => t.push(value),
                            None => tables.push((id, vec![value])),
                        }
                    }
                    Ok(value)
                } else {
                    let index = (code - 1) / 2;
                    tables
                        .iter()
                        .find(|(f, _)| *f == id)
                        .and_then(|(_, t)| t.get(index).copied())
                        .ok_or_else(|| {
                            V4Error::Invalid(format!(
                                "a back-reference #{index} that field {id:#010x} does not have"
                            ))
                        })
                }
            };
            if code == 0 {
                let mut shape = Vec::new();
                while !row.is_empty() {
                    let id = u32::try_from(row.uvarint()?)
                        .map_err(|_| V4Error::Invalid("a field id past 32 bits".into()))?;
                    if shape.len() >= MAX_FIELDS {
                        return Err(V4Error::Invalid(format!(
                            "a row of more than {MAX_FIELDS} fields"
                        )));
                    }
                    if shape.contains(&id) {
                        return Err(V4Error::Invalid(format!(
                            "field {id:#010x} appears twice in a row"
                        )));
                    }
                    shape.push(id);
                    values.push((id, slot(&mut row, id)?));
                }
                if shape.is_empty() {
                    return Err(V4Error::Invalid("a row without fields".into()));
                }
                shapes.push(shape);
            } else {
                let shape = shapes.get(code - 1).ok_or_else(|| {
                    V4Error::Invalid(format!("a row refers to shape #{} it never saw", code - 1))
                })?;
                for &id in shape {
                    values.push((id, slot(&mut row, id)?));
                }
                row.end("a row")?;
            }
            rows.push(values);
        }
        Ok(Self { rows })
    }

    /// Writes rows whose every row has the same fields in the same (ascending id) order: the
    /// first declares the shape, the rest refer to it. No back-references are written.
    pub(crate) fn write(w: &mut Writer, rows: &[Vec<(u32, Vec<u8>)>]) {
        w.uvarint(rows.len() as u64);
        let mut shapes: Vec<Vec<u32>> = Vec::new();
        for row in rows {
            let ids: Vec<u32> = row.iter().map(|(id, _)| *id).collect();
            w.sized_with(|w| match shapes.iter().position(|s| *s == ids) {
                Some(k) => {
                    w.uvarint(k as u64 + 1);
                    for (_, value) in row {
                        w.uvarint(value.len() as u64 * 2);
                        w.bytes(value);
                    }
                }
                None => {
                    w.uvarint(0);
                    for (id, value) in row {
                        w.uvarint(u64::from(*id));
                        w.uvarint(value.len() as u64 * 2);
                        w.bytes(value);
                    }
                    shapes.push(ids.clone());
                }
            });
        }
    }
}

/// Finds a field's value in a row.
pub(crate) fn row_value<'a>(
    row: &[(u32, &'a [u8])],
    name: &'static str,
    what: &'static str,
) -> Result<&'a [u8], V4Error> {
    let id = field_id(name);
    row.iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| *v)
        .ok_or_else(|| V4Error::Invalid(format!("{what} has no {name}")))
}

/// An integer that fills its region.
pub(crate) fn int_region(b: &[u8], what: &'static str) -> Result<i64, V4Error> {
    let mut r = Reader::new(b);
    let v = r.svarint()?;
    r.end(what)?;
    Ok(v)
}

pub(crate) fn natural_region(b: &[u8], what: &'static str) -> Result<u64, V4Error> {
    let v = int_region(b, what)?;
    u64::try_from(v).map_err(|_| V4Error::Invalid(format!("{what} {v} is negative")))
}

pub(crate) fn svarint_bytes(v: i64) -> Vec<u8> {
    let mut w = Writer::new();
    w.svarint(v);
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ids_and_variant_tags_are_effects() {
        assert_eq!(field_id("iv"), 0x4938_8736);
        assert_eq!(field_id("publicKey"), 0xf40a_06ff);
        assert_eq!(variant_tag("Single"), 0xc640_300c);
        assert_eq!(variant_tag("Chunked"), 0x85c3_bb47);
        assert_eq!(variant_tag("EventLogProtocolError"), 0x46bb_7369);
    }

    #[test]
    fn svarints_are_sign_magnitude() {
        for (v, bytes) in [
            (0i64, &[0x00][..]),
            (1, &[0x02]),
            (-1, &[0x03]),
            (300, &[0xd8, 0x04]),
            (1 << 40, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x40]),
        ] {
            let mut w = Writer::new();
            w.svarint(v);
            assert_eq!(w.buf, bytes);
            assert_eq!(Reader::new(bytes).svarint().expect("decodes"), v);
        }
        // Non-minimal forms are accepted, as Effect accepts them.
        assert_eq!(Reader::new(&[0x82, 0x00]).uvarint().expect("decodes"), 2);
        assert!(Reader::new(&[0xff; 11]).uvarint().is_err());
        assert!(Reader::new(&[0x80]).uvarint().is_err());
    }
}
