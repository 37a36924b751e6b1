//! Storing a policy set handed over the API in `policy_dir`, so that the
//! directory stays the set in force (a restart or a reload keeps it).
use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

use super::apply::write_atomic;
use super::is_policy_file;
use crate::api::Document;

fn file_name(doc: &Document) -> &str {
    Path::new(&doc.name).file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Each document needs a file name of its own that `policy_dir` would
/// read: `[A-Za-z0-9_.-]`, ending in `.toml` or `.json`, not a dot-file.
pub fn check_names(docs: &[Document]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for d in docs {
        let name = file_name(d);
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if name.is_empty() || !ok_chars || !is_policy_file(Path::new(name)) {
            return Err(format!(
                "document {:?}: its file name must end in .toml or .json, not start with '.', and use only [A-Za-z0-9_.-]",
                d.name
            ));
        }
        if !seen.insert(name.to_string()) {
            return Err(format!("two documents are named {name}"));
        }
    }
    Ok(())
}

/// Makes `dir`'s policy files exactly `docs`: each written through a
/// temporary dot-file and a rename (never half a file), then the policy
/// files not in the set removed.
pub fn write_set(dir: &Path, docs: &[Document]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut keep = BTreeSet::new();
    for d in docs {
        let name = file_name(d);
        let path = dir.join(name);
        let same = std::fs::read_to_string(&path).is_ok_and(|c| c == d.content);
        if !same {
            write_atomic(&path, d.content.as_bytes()).with_context(|| format!("storing {name} in policy_dir"))?;
        }
        keep.insert(name.to_string());
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        if is_policy_file(&p) && !p.is_dir() && !keep.contains(&name) {
            std::fs::remove_file(&p).with_context(|| format!("removing {} from policy_dir", p.display()))?;
        }
    }
    Ok(())
}
