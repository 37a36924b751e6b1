//! The agent's side of "Policy: etcd": what the loop does with the etcd
//! watcher's news ([`etcd_watch`](super::etcd_watch)), and the record it
//! hands the publisher ([`etcd_publish`](super::etcd_publish)).
use tracing::info;

use super::{Agent, now_secs};
use crate::api::EtcdStatus;
use crate::etcd::{EtcdConfig, HostError, HostRecord, Update};

/// The etcd part of the status before etcd answered.
pub fn initial_status(cfg: &EtcdConfig) -> EtcdStatus {
    EtcdStatus {
        endpoints: cfg.endpoints.clone(),
        prefix: cfg.prefix.clone(),
        host: cfg.host_name(),
        since: now_secs(),
        ..Default::default()
    }
}

impl Agent {
    /// Applies a set from etcd exactly as a set handed over the API: the
    /// same validation as a whole, stored in `policy_dir` (the set a
    /// restart starts from while etcd is out of reach), the same
    /// generations, and refused whole with the set in force kept.
    pub(super) fn on_etcd(&mut self, update: Update) {
        let Some(st) = self.etcd.as_mut() else { return };
        match update {
            Update::Connected => {
                if !st.connected {
                    if st.error.is_some() {
                        st.reconnects += 1;
                        info!(reconnects = st.reconnects, "etcd reachable again");
                    }
                    st.connected = true;
                    st.since = now_secs();
                    st.error = None;
                }
            }
            Update::Down(error) => {
                if st.connected {
                    st.since = now_secs();
                }
                st.connected = false;
                st.error = Some(error);
            }
            Update::Set {
                documents,
                revision,
                reread,
            } => {
                st.received_revision = revision;
                if reread {
                    st.rereads += 1;
                }
                let resp = self.apply_documents_from("etcd", documents, Vec::new(), false);
                if let Some(st) = self.etcd.as_mut()
                    && resp.ok
                {
                    st.revision = revision;
                }
            }
        }
    }

    /// What this host publishes under `PREFIX/hosts/HOST`.
    pub(super) fn host_record(&self) -> Option<HostRecord> {
        let st = self.etcd.as_ref()?;
        let error = self
            .last_error
            .as_ref()
            .filter(|_| self.last_refused)
            .map(|e| HostError {
                at: e.at,
                source: e.source.clone(),
                error: e.error.clone(),
                errors: e.errors.clone(),
                revision: (e.source == "etcd").then_some(st.received_revision),
            });
        Some(HostRecord {
            host: st.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: self.engine.generation,
            digest: self.engine.digest.clone(),
            tenants: self.engine.installed.len(),
            revision: st.revision,
            error,
            health: serde_json::Value::Null,
            updated_at: 0,
        })
    }

    /// Hands the record to the publisher when it changed.
    pub(super) fn publish(&self, publisher: &Option<super::etcd_publish::Publisher>) {
        let (Some(p), Some(mut record)) = (publisher, self.host_record()) else {
            return;
        };
        p.tx.send_if_modified(|cur| {
            let same = cur.as_ref().is_some_and(|c| {
                HostRecord {
                    updated_at: 0,
                    ..c.clone()
                } == record
            });
            if !same {
                record.updated_at = now_secs();
                *cur = Some(record);
            }
            !same
        });
    }
}
