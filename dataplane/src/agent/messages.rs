//! What the services (the API server, the watcher, the metrics endpoint,
//! the etcd watcher) send the agent's loop: the one type they share, so
//! that none of them imports another or the loop.
use tokio::sync::oneshot;

use crate::api::{Request, Response};

/// What the agent's loop is asked to do.
#[derive(Debug)]
pub enum Event {
    /// Re-read `policy_dir`; the string says why (for logs and status),
    /// the paths which files changed (`None`: any may have).
    Reload(&'static str, Option<Vec<std::path::PathBuf>>),
    Api(Request, oneshot::Sender<Response>),
    /// News from the etcd watcher ([`crate::etcd::Update`]).
    Etcd(crate::etcd::Update),
}

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manual {
    Drain,
    Undrain,
    Activate { force: bool },
}
