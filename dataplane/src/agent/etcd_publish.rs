//! Publishing this host's state under `PREFIX/hosts/HOST`, under a lease
//! kept alive while the agent runs: the key disappears a lease time to live
//! after the agent is gone. The loop hands each new [`HostRecord`] over a
//! watch channel; only the latest is written.
use std::time::Duration;

use anyhow::{Result, bail};
use etcd_client::PutOptions;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::etcd::{self, EtcdConfig, HostRecord};

/// The running publisher.
pub struct Publisher {
    pub tx: watch::Sender<Option<HostRecord>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Stops publishing: the lease is revoked, so the record goes at once
    /// rather than when the lease would expire (given a second to do so).
    pub async fn stop(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

/// Starts the publisher.
pub fn spawn(cfg: EtcdConfig) -> Publisher {
    let (tx, mut rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        let max = Duration::from_millis(cfg.max_backoff_ms);
        loop {
            let mut published = false;
            match session(&cfg, &mut rx, &mut published).await {
                Ok(()) => return,
                Err(e) => {
                    if published {
                        backoff = Duration::from_millis(200);
                    }
                    warn!(error = %format!("{e:#}"), key = %cfg.host_key(), "etcd: publishing this host's state")
                }
            }
            // The agent stopping ends the wait too; new records do not.
            let until = tokio::time::Instant::now() + backoff;
            while let Ok(changed) = tokio::time::timeout_at(until, rx.changed()).await {
                if changed.is_err() {
                    return;
                }
            }
            backoff = (backoff * 2).min(max);
        }
    });
    Publisher { tx, task }
}

async fn put(
    client: &mut etcd_client::Client,
    cfg: &EtcdConfig,
    lease: i64,
    record: &Option<HostRecord>,
) -> Result<()> {
    if let Some(r) = record {
        let value = serde_json::to_string(r)?;
        etcd::timed(
            cfg,
            "writing this host's state",
            client.put(cfg.host_key(), value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
    }
    Ok(())
}

/// One connection and lease; returns `Ok` only when the agent is gone.
async fn session(cfg: &EtcdConfig, rx: &mut watch::Receiver<Option<HostRecord>>, published: &mut bool) -> Result<()> {
    let mut client = etcd::connect(cfg).await?;
    let ttl = cfg.lease_ttl_secs as i64;
    let lease = etcd::timed(cfg, "granting the lease", client.lease_grant(ttl, None))
        .await?
        .id();
    let (mut keeper, mut acks) = etcd::timed(cfg, "keeping the lease", client.lease_keep_alive(lease)).await?;
    let record = rx.borrow_and_update().clone();
    put(&mut client, cfg, lease, &record).await?;
    *published = true;
    info!(key = %cfg.host_key(), lease, ttl, "etcd: publishing this host's state");
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.lease_ttl_secs * 1000 / 3));
    let mut last_ack = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The agent stops: the record goes with it at once.
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
                    return Ok(());
                }
                let record = rx.borrow_and_update().clone();
                put(&mut client, cfg, lease, &record).await?;
            }
            _ = tick.tick() => {
                if last_ack.elapsed() > Duration::from_secs(cfg.lease_ttl_secs) {
                    bail!("the lease was not renewed for {} s", cfg.lease_ttl_secs);
                }
                etcd::timed(cfg, "renewing the lease", keeper.keep_alive()).await?;
            }
            ack = acks.message() => match ack? {
                Some(a) if a.ttl() > 0 => last_ack = tokio::time::Instant::now(),
                Some(_) => bail!("the lease expired"),
                None => bail!("etcd closed the lease stream"),
            },
        }
    }
}
