//! Tenant policy files (`policies/<name>.toml`, or the same document as
//! JSON): the model of the policy format, parsing that keeps track of
//! where every field is, and validation of a whole set. No BPF here, so the
//! agent, the CLI, the lab and the tests all read policies the same way.
//!
//! A set that is wrong in any way is refused as a whole, with every error
//! found, each naming file, line, column and field ([`PolicyError`]).
//!
//! - [`load_path`]: a file or a directory → validated [`PolicySet`].
//! - [`parse_toml`] / [`parse_json`]: one document, validated on its own.
//! - [`parse_document`] + [`validate_set`]: the two steps separately, for
//!   documents that do not come from a directory (control-plane pushes).
//! - [`IncrementalSet`]: a set kept up to date one document at a time,
//!   with the same answers as a full check.
//! - [`PolicySet::digest`]: what is in force, as a stable hex string.

mod digest;
mod document;
mod error;
mod health;
mod incremental;
mod load;
mod model;
mod parse;
mod positions;
mod validate;

pub use digest::PolicySet;
pub use error::{PolicyError, PolicyErrors};
pub use health::{Health, HttpsCheck, JmsCheck, Millis};
pub use incremental::{IncrementalSet, Prepared};
pub use load::{check_documents, load_path, read_dir_or_file};
pub use model::{Allow, Backend, Class, Egress, Lane, MacAddr, Tenant};
pub use parse::{Document, parse_document, parse_json, parse_json_document, parse_toml, parse_toml_document};
pub use positions::Positions;
pub use validate::{MAX_VNI, valid_name, validate_set};

#[cfg(test)]
mod tests;
