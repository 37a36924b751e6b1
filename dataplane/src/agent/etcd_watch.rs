//! Following `PREFIX/tenants/` in etcd: a full read, then a watch from the
//! revision read; each watch response that changes tenants is handed to
//! the agent's loop as those changes ([`Update::Tenants`]), which applies
//! them to its copy of the set, validates the whole set and applies it as
//! it does files. When etcd is out of reach the loop hears
//! [`Update::Down`] and keeps the set in force; the watcher retries with
//! backoff and resumes from the revision it had, or reads everything anew
//! when etcd compacted that revision away.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::messages::Event;
use crate::etcd::{self, EtcdConfig, Update};

const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// How far the watcher got: the revision of the tenants handed over (0:
/// nothing read yet).
#[derive(Default)]
struct Mirror {
    revision: i64,
}

impl Mirror {
    fn send(
        &self,
        tx: &mpsc::UnboundedSender<Event>,
        changes: BTreeMap<String, Option<String>>,
        whole: bool,
        reread: bool,
    ) -> bool {
        tx.send(Event::Etcd(Update::Tenants {
            changes,
            whole,
            revision: self.revision,
            reread,
        }))
        .is_ok()
    }
}

/// Starts the watcher; it runs until the loop is gone.
pub fn spawn(cfg: EtcdConfig, tx: mpsc::UnboundedSender<Event>) {
    tokio::spawn(async move {
        let mut mirror = Mirror::default();
        let mut backoff = MIN_BACKOFF;
        let max = Duration::from_millis(cfg.max_backoff_ms);
        loop {
            let mut connected = false;
            let e = session(&cfg, &tx, &mut mirror, &mut connected).await;
            if tx.is_closed() {
                return;
            }
            let msg = format!("{e:#}");
            if connected {
                backoff = MIN_BACKOFF;
            }
            warn!(
                error = %msg,
                retry_in_ms = backoff.as_millis() as u64,
                revision = mirror.revision,
                "etcd out of reach; the set in force stays in force"
            );
            if tx.send(Event::Etcd(Update::Down(msg))).is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
        }
    });
}

/// One connection: reads (if needed), watches, and returns why it ended.
async fn session(
    cfg: &EtcdConfig,
    tx: &mpsc::UnboundedSender<Event>,
    mirror: &mut Mirror,
    connected: &mut bool,
) -> anyhow::Error {
    match watch(cfg, tx, mirror, connected).await {
        Ok(()) => anyhow::anyhow!("the agent's loop is gone"),
        Err(e) => e,
    }
}

async fn full_read(
    client: &mut etcd_client::Client,
    cfg: &EtcdConfig,
    tx: &mpsc::UnboundedSender<Event>,
    mirror: &mut Mirror,
    reread: bool,
) -> Result<bool> {
    let (docs, revision) = etcd::read_tenants(client, cfg).await?;
    info!(tenants = docs.len(), revision, reread, "etcd: tenants read");
    mirror.revision = revision;
    Ok(mirror.send(tx, docs.into_iter().map(|(k, v)| (k, Some(v))).collect(), true, reread))
}

async fn watch(
    cfg: &EtcdConfig,
    tx: &mpsc::UnboundedSender<Event>,
    mirror: &mut Mirror,
    connected: &mut bool,
) -> Result<()> {
    let mut client = etcd::connect(cfg).await?;
    if mirror.revision == 0 && !full_read(&mut client, cfg, tx, mirror, false).await? {
        return Ok(());
    }
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(mirror.revision + 1)
            .with_progress_notify();
        let mut stream = etcd::timed(
            cfg,
            "starting the watch",
            client
                .watch_client()
                .max_decoding_message_size(etcd::MAX_MESSAGE)
                .watch(cfg.tenants_prefix(), Some(opts)),
        )
        .await?;
        let mut compacted = false;
        while let Some(resp) = stream.message().await? {
            if resp.compact_revision() > 0 {
                warn!(
                    revision = mirror.revision,
                    compacted_to = resp.compact_revision(),
                    "etcd compacted the revision this agent had: reading all tenants anew"
                );
                compacted = true;
                break;
            }
            if resp.canceled() {
                bail!("etcd cancelled the watch: {}", resp.cancel_reason());
            }
            if resp.created() {
                if !*connected {
                    info!(endpoints = ?cfg.endpoints, revision = mirror.revision, "etcd: watching the tenants");
                }
                *connected = true;
                if tx.send(Event::Etcd(Update::Connected)).is_err() {
                    return Ok(());
                }
            }
            if resp.events().is_empty() {
                // A progress notice: the watch has delivered everything up
                // to the header's revision.
                if !resp.created()
                    && let Some(h) = resp.header()
                {
                    mirror.revision = mirror.revision.max(h.revision());
                }
                continue;
            }
            let mut changes = BTreeMap::new();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(name) = etcd::tenant_of_key(&cfg.prefix, kv.key()) else {
                    continue;
                };
                let doc = match ev.event_type() {
                    EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
                    EventType::Delete => None,
                };
                changes.insert(name.to_string(), doc);
                // Only the events' own revisions: the header's may run
                // ahead of events still to come in a catch-up.
                mirror.revision = mirror.revision.max(kv.mod_revision());
            }
            if !mirror.send(tx, changes, false, false) {
                return Ok(());
            }
        }
        if !compacted {
            bail!("etcd closed the watch");
        }
        if !full_read(&mut client, cfg, tx, mirror, true).await? {
            return Ok(());
        }
    }
}
