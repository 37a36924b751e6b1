//! The agent's side of "Policy: etcd": what the loop does with the etcd
//! watcher's news ([`etcd_watch`](super::etcd_watch)), and the record it
//! hands the publisher ([`etcd_publish`](super::etcd_publish)).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use carwash_policy::Prepared;
use tracing::info;

use super::apply::{Target, check_capacity_of, write_atomic};
use super::{Agent, capacity_errors};
use crate::api::Response;
use crate::clock::wall_secs;
use crate::etcd::{HostError, HostRecord, Update};

/// The name a tenant's document has in error messages and in `policy_dir`.
fn file_of(name: &str) -> PathBuf {
    PathBuf::from(format!("{name}.json"))
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
                    st.since = wall_secs();
                    st.error = None;
                }
            }
            Update::Down(error) => {
                if st.connected {
                    st.since = wall_secs();
                }
                st.connected = false;
                st.error = Some(error);
            }
            Update::Tenants {
                changes,
                whole,
                revision,
                reread,
            } => {
                st.received_revision = revision;
                if reread {
                    st.rereads += 1;
                }
                let resp = self.apply_etcd(changes, whole);
                if let Some(st) = self.etcd.as_mut()
                    && resp.ok
                {
                    st.revision = revision;
                }
            }
        }
    }

    /// Applies tenant changes from etcd to the copy of the set, then the
    /// set as a whole exactly as a set of files: the same validation, the
    /// same generations, refused whole with the set in force kept. Once
    /// applied, the changed documents are stored in `policy_dir`.
    fn apply_etcd(&mut self, mut changes: BTreeMap<String, Option<String>>, whole: bool) -> Response {
        self.attempts += 1;
        let es = &mut self.etcd_set;
        if whole {
            for name in es.docs.keys() {
                changes.entry(name.clone()).or_insert(None);
            }
        }
        for (name, doc) in changes {
            match doc {
                Some(text) if es.docs.get(&name) != Some(&text) => {
                    es.set.insert(Prepared::parse(&file_of(&name), &text));
                    es.docs.insert(name, text);
                }
                Some(_) => {}
                None => {
                    if es.docs.remove(&name).is_some() {
                        es.set.remove(&file_of(&name));
                    }
                }
            }
        }
        if let Some(bad) = es.docs.keys().find(|n| !carwash_policy::valid_name(n)) {
            let msg = format!(
                "etcd key {}{bad}: not a tenant name ([A-Za-z0-9_-], at most 63 characters); nothing applied",
                crate::etcd::tenants_prefix(&self.cfg.etcd.as_ref().map(|e| e.prefix.clone()).unwrap_or_default())
            );
            return self.failed("etcd", msg);
        }
        if let Err(errors) = es.set.check() {
            return self.refused("etcd", &errors);
        }
        if let Err(errors) = check_capacity_of(Target::count(&es.set), Target::each(&es.set)) {
            let docs = &self.etcd_set.docs;
            let errors = capacity_errors(&errors, Path::new("etcd"), |name| {
                docs.get(name).map(|d| (file_of(name), d.clone()))
            });
            return self.refused("etcd", &errors);
        }
        let es = &mut self.etcd_set;
        let hint = (es.generation == Some(self.engine.generation)).then(|| es.set.touched().clone());
        let result = self.engine.apply_with(&mut self.dp, &self.etcd_set.set, hint.as_ref());
        let resp = self.applied(result, "etcd");
        if resp.ok {
            let touched = self.etcd_set.set.take_touched();
            self.etcd_set.generation = Some(self.engine.generation);
            if let Err(e) = self.store_etcd_set(&touched, whole) {
                tracing::warn!(error = %format!("{e:#}"), "storing the set from etcd in policy_dir");
            }
        }
        if whole {
            super::release_memory();
        }
        resp
    }

    /// Writes the documents of the `touched` tenants into `policy_dir` (all
    /// of them, and nothing else, after a whole set), so that a restart
    /// while etcd is out of reach starts from the set applied.
    fn store_etcd_set(&self, touched: &BTreeSet<String>, whole: bool) -> anyhow::Result<()> {
        let dir = &self.cfg.policy_dir;
        let docs = &self.etcd_set.docs;
        if whole {
            let all: Vec<crate::api::Document> = docs
                .iter()
                .map(|(n, d)| crate::etcd::document(n, d.as_bytes()))
                .collect();
            return super::persist::write_set(dir, &all);
        }
        for name in touched {
            let path = dir.join(file_of(name));
            match docs.get(name) {
                Some(d) => {
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(d.as_str()) {
                        write_atomic(&path, d.as_bytes())?;
                    }
                }
                None => {
                    for ext in ["json", "toml"] {
                        let p = dir.join(format!("{name}.{ext}"));
                        if p.exists() {
                            std::fs::remove_file(&p)?;
                        }
                    }
                }
            }
        }
        Ok(())
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
                record.updated_at = wall_secs();
                *cur = Some(record);
            }
            !same
        });
    }
}
