//! Policy errors: each one names file, line, column and field, because the
//! person reading them is an operator who has to fix a file, not a developer
//! reading a backtrace.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole (unreadable).
    pub line: usize,
    /// 1-based, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Dotted path of the field, e.g. `connectors[1].mac`, `allow[0].cidr`,
    /// `vni`; empty when the error is about no field in particular.
    pub field: String,
    pub message: String,
}

impl PolicyError {
    /// An error about a file as a whole (it cannot be read, or listed).
    pub fn file(file: &Path, message: impl Into<String>) -> PolicyError {
        PolicyError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: message.into(),
        }
    }
}

/// `file:line:column: field: message`. Parts that are unknown are left out
/// rather than printed as `0` or an empty field, so that the line still
/// reads naturally (`policies/acme.toml: cannot read: ...`).
impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for PolicyError {}

/// Everything wrong with a policy set; the set is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// Orders by file, then position, so the output reads top to bottom;
    /// stable, so errors at the same spot keep the order they were found in.
    pub(crate) fn sorted(mut errors: Vec<PolicyError>) -> PolicyErrors {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        PolicyErrors(errors)
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> Self {
        PolicyErrors(vec![e])
    }
}

/// One error per line.
impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}
