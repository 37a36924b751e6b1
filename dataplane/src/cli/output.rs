//! Output of read commands: aligned tables by default, one complete JSON
//! document with `-o json`.
use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// An aligned table without borders, header in capitals.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: ToString,
{
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.into_iter().map(|h| h.to_string().to_uppercase()));
    t
}

pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A two-column table of labels and values, for one object.
pub fn pairs() -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `-` for an empty cell, so that columns stay readable.
pub fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// `text` broken into lines of at most `width` characters at spaces (a
/// longer word stays whole), so that one long cell does not widen a whole
/// table.
pub fn wrap(text: &str, width: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines.join("\n")
}

/// A refused set's errors, one a line, then how many and what `outcome`
/// that has, on stderr.
pub fn print_refused(path: &std::path::Path, errors: &[impl std::fmt::Display], outcome: &str) {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!("{}: {} errors; {outcome}", path.display(), errors.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_spaces() {
        assert_eq!(wrap("aa bb cc dd", 5), "aa bb\ncc dd");
        assert_eq!(wrap("a verylongword b", 4), "a\nverylongword\nb");
        assert_eq!(wrap("", 10), "");
    }
}
