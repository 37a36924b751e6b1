//! Reading one policy document (TOML from a file, or the JSON the control
//! plane pushes) into a [`Tenant`] plus the [`Positions`] of its fields, and
//! turning the parsers' errors into [`PolicyError`]s that name the field.

use std::path::Path;

pub use crate::document::Document;
use crate::error::{PolicyError, PolicyErrors};
use crate::model::Tenant;
use crate::positions::{Hit, LineIndex, join_key, json_positions, toml_positions};
use crate::validate::validate_set;

/// Parses and validates one TOML policy document, as `policy check` would a
/// single file: the name must match `file`'s stem.
pub fn parse_toml(file: &Path, text: &str) -> Result<Tenant, PolicyErrors> {
    validated(parse_toml_document(file, text)?)
}

/// Parses and validates one JSON policy document; `file` is where it came
/// from, or the name it was pushed under (`acme.json`).
pub fn parse_json(file: &Path, text: &str) -> Result<Tenant, PolicyErrors> {
    validated(parse_json_document(file, text)?)
}

fn validated(doc: Document) -> Result<Tenant, PolicyErrors> {
    validate_set(std::slice::from_ref(&doc))?;
    Ok(doc.tenant)
}

/// Parses a document as JSON if `file` ends in `.json`, else as TOML.
pub fn parse_document(file: &Path, text: &str) -> Result<Document, PolicyErrors> {
    if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        parse_json_document(file, text)
    } else {
        parse_toml_document(file, text)
    }
}

/// Syntax and types only; [`crate::validate_set`] does the rest.
pub fn parse_toml_document(file: &Path, text: &str) -> Result<Document, PolicyErrors> {
    let e = match toml::from_str::<Tenant>(text) {
        Ok(tenant) => {
            return Ok(Document {
                file: file.to_path_buf(),
                tenant,
                positions: toml_positions(text).unwrap_or_default(),
            });
        }
        Err(e) => e,
    };
    let idx = LineIndex::new(text);
    let mut message = one_line(e.message());
    let Some(span) = e.span() else {
        return Err(PolicyError::file(file, message).into());
    };
    let loc = idx.loc(span.start, span.end);
    if message.is_empty() {
        // The TOML parser says nothing for some characters it refuses
        // (control characters in comments): name what it points at.
        let at = text.get(span.clone()).filter(|s| !s.is_empty()).unwrap_or("?");
        message = format!("a character TOML does not allow here: {at:?}");
    }
    let missing = missing_field(&message).map(str::to_string);
    let field = match toml_positions(text) {
        Some(positions) => {
            let (base, hit) = positions.field_at_span(&span).unwrap_or((String::new(), Hit::Inside));
            if hit == Hit::Value && missing.is_none() {
                append_found(&mut message, &text[span.clone()]);
            }
            base
        }
        // A syntax error: no shadow to ask, so read the field off the text.
        None => toml_field_at_line(text, loc.line),
    };
    let field = match missing {
        Some(m) => join_key(&field, &m),
        None => field,
    };
    Err(PolicyError {
        file: file.to_path_buf(),
        line: loc.line,
        column: loc.column,
        field,
        message,
    }
    .into())
}

/// Syntax and types only; [`crate::validate_set`] does the rest.
pub fn parse_json_document(file: &Path, text: &str) -> Result<Document, PolicyErrors> {
    let e = match serde_json::from_str::<Tenant>(text) {
        Ok(tenant) => {
            return Ok(Document {
                file: file.to_path_buf(),
                tenant,
                positions: json_positions(text).0,
            });
        }
        Err(e) => e,
    };
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let mut message = one_line(full.strip_suffix(&suffix).unwrap_or(&full));
    let (positions, failed_in) = json_positions(text);
    let field = if e.is_data() {
        let missing = missing_field(&message).map(str::to_string);
        let idx = LineIndex::new(text);
        let (base, hit) = idx
            .offset(e.line(), e.column())
            .and_then(|o| positions.field_ending_at(o))
            .unwrap_or((String::new(), Hit::Inside));
        match missing {
            Some(m) => join_key(&base, &m),
            None => {
                if hit == Hit::Value
                    && let Some(value) = positions.value_text(text, &base)
                {
                    append_found(&mut message, value);
                }
                base
            }
        }
    } else {
        failed_in.unwrap_or_default()
    };
    Err(PolicyError {
        file: file.to_path_buf(),
        line: e.line(),
        column: e.column(),
        field,
        message,
    }
    .into())
}

/// Parser messages can span lines; an error must stay on one.
fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

/// serde's "missing field `vni`" points at the table that lacks it; the
/// field the operator has to add is the one named in the message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Some parsers' messages ("invalid IP address syntax") do not quote the
/// value; at 3 a.m. seeing it saves a trip to the file.
fn append_found(message: &mut String, value: &str) {
    let value = value.trim();
    let bare = value.trim_matches(['"', '\'']);
    let quoted = message
        .split(|c: char| c.is_whitespace() || "`\"',:()".contains(c))
        .any(|word| word == bare);
    if !value.is_empty() && value.len() <= 64 && !value.contains('\n') && !quoted {
        message.push_str(&format!(" (found {value})"));
    }
}

/// The field a TOML syntax error on `line` is about, read off the raw text:
/// the key of that line, or of the multi-line array it is inside, under the
/// `[table]` / `[[array]]` header above it. Empty when nothing fits.
fn toml_field_at_line(text: &str, line: usize) -> String {
    let mut section = String::new();
    let mut array_counts: std::collections::HashMap<String, usize> = Default::default();
    let mut open_key: Option<String> = None;
    let mut depth: i64 = 0;
    for (n, raw) in text.lines().enumerate().take(line) {
        let is_error_line = n + 1 == line;
        let code = strip_strings_and_comment(raw);
        let trimmed = code.trim();
        if depth == 0 && trimmed.starts_with('[') {
            let name = trimmed.trim_matches(['[', ']', ' ', '\t']).to_string();
            section = if trimmed.starts_with("[[") {
                let count = array_counts.entry(name.clone()).or_insert(0);
                *count += 1;
                format!("{name}[{}]", *count - 1)
            } else {
                name
            };
            open_key = None;
            continue;
        }
        let key = if depth == 0 { line_key(raw) } else { None };
        if is_error_line {
            return match key.or_else(|| open_key.clone()) {
                Some(k) => join_key(&section, &k),
                None => section,
            };
        }
        depth += bracket_delta(&code);
        if depth <= 0 {
            depth = 0;
            open_key = None;
        } else if key.is_some() {
            open_key = key;
        }
    }
    section
}

/// The key a `key = value` line assigns, if the line is one.
fn line_key(raw: &str) -> Option<String> {
    let (k, _) = raw.split_once('=')?;
    let k = k.trim().trim_matches(['"', '\'']);
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    bare.then(|| k.to_string())
}

fn bracket_delta(code: &str) -> i64 {
    code.chars()
        .map(|c| match c {
            '[' | '{' => 1,
            ']' | '}' => -1,
            _ => 0,
        })
        .sum()
}

/// The line without string contents and comment, so that brackets and `#`
/// inside strings do not count.
fn strip_strings_and_comment(raw: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in raw.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                }
            }
            None => match c {
                '#' => break,
                '"' | '\'' => {
                    quote = Some(c);
                    out.push(c);
                }
                _ => out.push(c),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_field_from_text() {
        let text = "name = \"a\"\nconnectors = [\n  { vtep = 1 },\n  { vtep = x },\n]\n[[allow]]\ncidr = \"1.0.0.0/8\"\n[[allow]]\ncidr = nope # [\n[egress]\nsnat_ipv4 = 1\n";
        assert_eq!(toml_field_at_line(text, 1), "name");
        assert_eq!(toml_field_at_line(text, 4), "connectors");
        assert_eq!(toml_field_at_line(text, 6), "allow[0]");
        assert_eq!(toml_field_at_line(text, 9), "allow[1].cidr");
        assert_eq!(toml_field_at_line(text, 11), "egress.snat_ipv4");
    }

    #[test]
    fn found_is_appended_once() {
        let mut m = "invalid IP address syntax".to_string();
        append_found(&mut m, "'x'");
        assert_eq!(m, "invalid IP address syntax (found 'x')");
        let mut m = "invalid address: 1.2.3.0/33".to_string();
        append_found(&mut m, "\"1.2.3.0/33\"");
        assert_eq!(m, "invalid address: 1.2.3.0/33");
    }
}
