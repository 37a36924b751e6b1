//! What the loop keeps of the tenants in etcd, between the watcher's news.
use std::collections::BTreeMap;

use carwash_policy::IncrementalSet;

use crate::api::EtcdStatus;
use crate::clock::wall_secs;
use crate::etcd::EtcdConfig;

/// The agent's copy of the tenants in etcd, valid or not: each document
/// parsed and checked once, when it changes, so that a one-tenant change
/// costs that tenant (as a file change does), not the whole set.
#[derive(Default)]
pub struct EtcdSet {
    pub(super) docs: BTreeMap<String, String>,
    pub(super) set: IncrementalSet,
    /// The generation the last apply from etcd left in force: another
    /// source applying since means every tenant is compared next time.
    pub(super) generation: Option<u64>,
}

/// The etcd part of the status before etcd answered.
pub fn initial_status(cfg: &EtcdConfig) -> EtcdStatus {
    EtcdStatus {
        endpoints: cfg.endpoints.clone(),
        prefix: cfg.prefix.clone(),
        host: cfg.host_name(),
        since: wall_secs(),
        ..Default::default()
    }
}
