//! Loading the policy files in force: one file, or every `*.toml` and
//! `*.json` of a directory, validated together.

use std::path::{Path, PathBuf};

use crate::digest::PolicySet;
use crate::error::{PolicyError, PolicyErrors};
use crate::model::Tenant;
use crate::parse::{Document, parse_document};
use crate::validate::validate_set;

/// Parses and validates a policy file or directory as one set. Every error
/// of every file is reported, sorted by file and line; an empty directory is
/// a valid empty set.
///
/// In a directory, the files taken are the regular files ending in `.toml`
/// or `.json` whose names do not start with `.` (editor and atomic-write
/// temporaries), in name order; subdirectories are not entered. A file given
/// by name is read whatever its extension: as JSON if it ends in `.json`,
/// else as TOML.
pub fn load_path(path: &Path) -> Result<PolicySet, PolicyErrors> {
    load_documents(path).map(|(set, _)| set)
}

/// Reads every policy file of a directory (or one file), sorted by file
/// name, and validates them as a set ([`load_path`]); the error lists
/// everything wrong, one `file:line:column: field: message` per line.
pub fn read_dir_or_file(path: &Path) -> anyhow::Result<Vec<(PathBuf, Tenant)>> {
    let (_, docs) = load_documents(path)?;
    Ok(docs.into_iter().map(|d| (d.file, d.tenant)).collect())
}

fn load_documents(path: &Path) -> Result<(PolicySet, Vec<Document>), PolicyErrors> {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for file in policy_files(path, &mut errors) {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(PolicyError::file(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse_document(&file, &text) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.extend(e.0),
        }
    }
    validate_parsed(errors, docs)
}

/// Parses and validates documents given with the names they are cited
/// under, as one set, as [`load_path`] does the files of a directory (in
/// the order given; a directory's files come in name order).
pub fn check_documents(documents: &[(PathBuf, String)]) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for (file, text) in documents {
        match parse_document(file, text) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.extend(e.0),
        }
    }
    validate_parsed(errors, docs).map(|(set, _)| set)
}

fn validate_parsed(
    mut errors: Vec<PolicyError>,
    docs: Vec<Document>,
) -> Result<(PolicySet, Vec<Document>), PolicyErrors> {
    // The documents that parsed are still checked, so that one broken file
    // does not hide what is wrong with the others.
    match validate_set(&docs) {
        Ok(set) if errors.is_empty() => Ok((set, docs)),
        Ok(_) => Err(PolicyErrors::sorted(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(PolicyErrors::sorted(errors))
        }
    }
}

fn policy_files(path: &Path, errors: &mut Vec<PolicyError>) -> Vec<PathBuf> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(PolicyError::file(path, format!("cannot read: {e}")));
            return Vec::new();
        }
    };
    if !meta.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(PolicyError::file(path, format!("cannot list directory: {e}")));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(PolicyError::file(path, format!("cannot list directory: {e}")));
                continue;
            }
        };
        let p = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let ext = p.extension().and_then(|e| e.to_str());
        let policy_ext = ext.is_some_and(|e| e.eq_ignore_ascii_case("toml") || e.eq_ignore_ascii_case("json"));
        // A dangling symlink is kept, so that reading it reports it.
        if !hidden && policy_ext && !p.is_dir() {
            files.push(p);
        }
    }
    files.sort();
    files
}
