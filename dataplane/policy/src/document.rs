//! A policy document as the parsers hand it to validation: the tenant, the
//! file it came from and where each field was written. Both sides name it,
//! so it lives apart from either.
use std::path::PathBuf;

use crate::model::Tenant;
use crate::positions::Positions;

/// A parsed (not yet validated) policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub file: PathBuf,
    pub tenant: Tenant,
    pub positions: Positions,
}
