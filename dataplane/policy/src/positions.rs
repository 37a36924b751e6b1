//! Where each field of a policy document sits in its text.
//!
//! Serde gives us the typed [`crate::Tenant`] but forgets positions, and most
//! policy mistakes (a VNI out of range, a VIP claimed twice) are only found
//! after deserializing. So each document is read a second time into a shadow
//! that records, for every field path (`connectors[1].mac`), the span of its
//! key and of its value: for TOML through `toml::Spanned`, for JSON with a
//! small scanner (serde_json has no spans).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A byte span of the text and the line/column where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// None for array elements, which have no key of their own.
    key: Option<Loc>,
    value: Loc,
}

/// Field path → position, for one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    entries: BTreeMap<String, Entry>,
}

/// Which part of the document an error span matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    Key,
    Value,
    Inside,
}

impl Positions {
    /// Line and column (1-based) of a field: of its key where it has one
    /// (`vni = 0` points at `vni`), else of the value (array elements).
    pub fn get(&self, field: &str) -> Option<(usize, usize)> {
        self.entries.get(field).map(|e| {
            let l = e.key.unwrap_or(e.value);
            (l.line, l.column)
        })
    }

    /// Like [`Positions::get`], but a field the document does not spell out
    /// (a default) is placed at its nearest written ancestor; `(0, 0)` when
    /// there is none.
    pub fn locate(&self, field: &str) -> (usize, usize) {
        let mut f = field;
        loop {
            if let Some(p) = self.get(f) {
                return p;
            }
            match parent(f) {
                Some(p) => f = p,
                None => return (0, 0),
            }
        }
    }

    /// Every field path the document spells out, sorted.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The text of a field's value.
    pub(crate) fn value_text<'t>(&self, text: &'t str, field: &str) -> Option<&'t str> {
        let e = self.entries.get(field)?;
        text.get(e.value.start..e.value.end)
    }

    /// The field a parser error spanning `span` is about: a key or value that
    /// is exactly the span, else the innermost value that contains it.
    pub(crate) fn field_at_span(&self, span: &Range<usize>) -> Option<(String, Hit)> {
        self.find(
            |l| l.start == span.start && l.end == span.end,
            |l| l.start <= span.start && span.end <= l.end,
        )
    }

    /// Same for serde_json, which reports only where it stopped: on the last
    /// byte of the offending token.
    pub(crate) fn field_ending_at(&self, offset: usize) -> Option<(String, Hit)> {
        self.find(|l| l.end == offset + 1, |l| l.start <= offset && offset < l.end)
    }

    fn find(&self, exact: impl Fn(&Loc) -> bool, inside: impl Fn(&Loc) -> bool) -> Option<(String, Hit)> {
        for (path, e) in &self.entries {
            if e.key.as_ref().is_some_and(&exact) {
                return Some((path.clone(), Hit::Key));
            }
        }
        for (path, e) in &self.entries {
            if exact(&e.value) {
                return Some((path.clone(), Hit::Value));
            }
        }
        self.entries
            .iter()
            .filter(|(_, e)| inside(&e.value))
            .min_by_key(|(_, e)| e.value.end - e.value.start)
            .map(|(path, _)| (path.clone(), Hit::Inside))
    }
}

/// `connectors[1].mac` → `connectors[1]` → `connectors` → None.
fn parent(field: &str) -> Option<&str> {
    field.rfind(['.', '[']).map(|i| &field[..i])
}

pub(crate) fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Byte offsets → 1-based line and character column.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    pub fn loc(&self, start: usize, end: usize) -> Loc {
        let start = start.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= start);
        let line_start = self.starts[line - 1];
        let column = self
            .text
            .get(line_start..start)
            .map_or(start - line_start, |s| s.chars().count())
            + 1;
        Loc {
            start,
            end,
            line,
            column,
        }
    }

    /// The byte a (line, byte column) pair as serde_json reports it names.
    pub fn offset(&self, line: usize, column: usize) -> Option<usize> {
        let start = *self.starts.get(line.checked_sub(1)?)?;
        Some(start + column.saturating_sub(1))
    }
}

/// A TOML document reduced to its shape, with the span of every key and
/// value.
enum Shape {
    Table(Vec<(Spanned<String>, Spanned<Shape>)>),
    Array(Vec<Spanned<Shape>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut members = Vec::new();
        while let Some(k) = map.next_key::<Spanned<String>>()? {
            members.push((k, map.next_value::<Spanned<Shape>>()?));
        }
        Ok(Shape::Table(members))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Spanned<Shape>>()? {
            items.push(v);
        }
        Ok(Shape::Array(items))
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
}

/// Positions of a TOML document; None when it does not parse, or holds a
/// datetime (which toml hands out as a map whose key cannot be spanned; no
/// policy field is a datetime, so such a document fails typing anyway).
pub(crate) fn toml_positions(text: &str) -> Option<Positions> {
    let shape: Shape = toml::from_str(text).ok()?;
    let idx = LineIndex::new(text);
    let mut out = Positions::default();
    collect_toml(&idx, "", &shape, &mut out.entries);
    Some(out)
}

fn collect_toml(idx: &LineIndex, path: &str, shape: &Shape, out: &mut BTreeMap<String, Entry>) {
    match shape {
        Shape::Table(members) => {
            for (k, v) in members {
                let child = join_key(path, k.get_ref());
                let (ks, vs) = (k.span(), v.span());
                out.insert(
                    child.clone(),
                    Entry {
                        key: Some(idx.loc(ks.start, ks.end)),
                        value: idx.loc(vs.start, vs.end),
                    },
                );
                collect_toml(idx, &child, v.get_ref(), out);
            }
        }
        Shape::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let child = format!("{path}[{i}]");
                let vs = v.span();
                out.insert(
                    child.clone(),
                    Entry {
                        key: None,
                        value: idx.loc(vs.start, vs.end),
                    },
                );
                collect_toml(idx, &child, v.get_ref(), out);
            }
        }
        Shape::Scalar => {}
    }
}

/// Positions of a JSON document, and, when it is not valid JSON, the field
/// the scanner was in when it stopped (what a syntax error is about).
pub(crate) fn json_positions(text: &str) -> (Positions, Option<String>) {
    let mut s = JsonScan {
        text,
        b: text.as_bytes(),
        i: 0,
        idx: LineIndex::new(text),
        out: BTreeMap::new(),
        failed_in: None,
    };
    let ok = s.value("", None).is_ok() && {
        s.ws();
        s.i == s.b.len() || s.fail("").is_ok()
    };
    let failed_in = if ok { None } else { s.failed_in.take() };
    (Positions { entries: s.out }, failed_in)
}

/// A strict-enough JSON walker. It only has to agree with serde_json on
/// where things are, and on roughly where a broken document breaks.
struct JsonScan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    idx: LineIndex<'a>,
    out: BTreeMap<String, Entry>,
    failed_in: Option<String>,
}

impl JsonScan<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Records the innermost field at the failure; the outer frames, which
    /// also fail on the way out, keep it.
    fn fail(&mut self, path: &str) -> Result<(), ()> {
        if self.failed_in.is_none() {
            self.failed_in = Some(path.to_string());
        }
        Err(())
    }

    fn value(&mut self, path: &str, key: Option<Loc>) -> Result<(), ()> {
        self.ws();
        let start = self.i;
        let ok = match self.b.get(self.i) {
            Some(b'{') => return self.object(path, start, key),
            Some(b'[') => return self.array(path, start, key),
            Some(b'"') => self.string(),
            Some(_) => self.scalar(),
            None => false,
        };
        if !ok {
            return self.fail(path);
        }
        self.record(path, key, start);
        Ok(())
    }

    fn record(&mut self, path: &str, key: Option<Loc>, start: usize) {
        if !path.is_empty() {
            let value = self.idx.loc(start, self.i);
            self.out.insert(path.to_string(), Entry { key, value });
        }
    }

    fn object(&mut self, path: &str, start: usize, key: Option<Loc>) -> Result<(), ()> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            self.record(path, key, start);
            return Ok(());
        }
        let mut last = path.to_string();
        loop {
            self.ws();
            let kstart = self.i;
            if self.b.get(self.i) != Some(&b'"') || !self.string() {
                return self.fail(&last);
            }
            let Ok(name) = serde_json::from_str::<String>(&self.text[kstart..self.i]) else {
                return self.fail(&last);
            };
            let kloc = self.idx.loc(kstart, self.i);
            let child = join_key(path, &name);
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return self.fail(&child);
            }
            self.i += 1;
            self.value(&child, Some(kloc))?;
            last = child;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    self.record(path, key, start);
                    return Ok(());
                }
                _ => return self.fail(&last),
            }
        }
    }

    fn array(&mut self, path: &str, start: usize, key: Option<Loc>) -> Result<(), ()> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            self.record(path, key, start);
            return Ok(());
        }
        let mut n = 0;
        loop {
            let child = format!("{path}[{n}]");
            self.value(&child, None)?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    self.record(path, key, start);
                    return Ok(());
                }
                _ => return self.fail(&child),
            }
            n += 1;
        }
    }

    fn string(&mut self) -> bool {
        self.i += 1;
        loop {
            match self.b.get(self.i) {
                None => return false,
                Some(b'"') => {
                    self.i += 1;
                    return true;
                }
                Some(b'\\') => self.i += 2,
                Some(_) => self.i += 1,
            }
        }
    }

    fn scalar(&mut self) -> bool {
        for lit in ["true", "false", "null"] {
            if self.b[self.i..].starts_with(lit.as_bytes()) {
                self.i += lit.len();
                return true;
            }
        }
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        if !self.digits() {
            return false;
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !self.digits() {
                return false;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.digits() {
                return false;
            }
        }
        true
    }

    fn digits(&mut self) -> bool {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_positions_of_nested_fields() {
        let text = "name = \"a\"\nconnectors = [\n  { vtep = \"1.2.3.4\", mac = \"m\" },\n]\n\n[[allow]]\ncidr = \"1.0.0.0/8\"\n[egress]\nsnat_ipv4 = \"1.2.3.4\"\n";
        let p = toml_positions(text).unwrap();
        assert_eq!(p.get("name"), Some((1, 1)));
        assert_eq!(p.get("connectors"), Some((2, 1)));
        assert_eq!(p.get("connectors[0]"), Some((3, 3)));
        assert_eq!(p.get("connectors[0].mac"), Some((3, 23)));
        assert_eq!(p.get("allow[0]"), Some((6, 1)));
        assert_eq!(p.get("allow[0].cidr"), Some((7, 1)));
        assert_eq!(p.get("egress.snat_ipv4"), Some((9, 1)));
        assert_eq!(p.locate("egress.allow"), p.get("egress").unwrap());
        assert_eq!(p.locate("vni"), (0, 0));
    }

    #[test]
    fn json_positions_of_nested_fields() {
        let text = "{\n  \"name\": \"a\",\n  \"vips\": [\"1.2.3.4\",\n    \"5.6.7.8\"],\n  \"egress\": {\"snat_ipv4\": \"1.2.3.4\", \"allow\": []}\n}";
        let (p, failed) = json_positions(text);
        assert_eq!(failed, None);
        assert_eq!(p.get("name"), Some((2, 3)));
        assert_eq!(p.get("vips[1]"), Some((4, 5)));
        assert_eq!(p.get("egress.allow"), Some((5, 38)));
        assert_eq!(p.get("egress.snat_ipv4"), Some((5, 14)));
    }

    #[test]
    fn json_scanner_names_the_field_it_broke_in() {
        assert_eq!(
            json_positions("{\"name\": \"a\", \"lane\": double}").1,
            Some("lane".into())
        );
        assert_eq!(
            json_positions("{\"vips\": [\"1.2.3.4\" \"x\"]}").1,
            Some("vips[0]".into())
        );
        assert_eq!(
            json_positions("{\"egress\": {\"snat_ipv4\": \"1.2.3.4\",}}").1,
            Some("egress.snat_ipv4".into())
        );
        assert_eq!(json_positions("{\"a\": 1} x").1, Some(String::new()));
        assert_eq!(json_positions("{\"a\": -1.5e+3}").1, None);
    }

    #[test]
    fn columns_count_characters() {
        let idx = LineIndex::new("é = 1\nab");
        assert_eq!(idx.loc(5, 6).column, 5);
        assert_eq!(idx.loc(7, 8).line, 2);
        assert_eq!(idx.offset(2, 1), Some(7));
    }
}
