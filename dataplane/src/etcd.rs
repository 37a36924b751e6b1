//! The policy set and the fleet's state in etcd ("Policy: etcd"): the
//! `[etcd]` section of the host configuration, the key layout, the record
//! each host publishes, and the client operations the agent and the CLI
//! share (connecting, pushing a set in one transaction, reading the
//! fleet).
//!
//! Key layout under `prefix` (default `/carwash`):
//! - `PREFIX/tenants/NAME`: tenant NAME's policy document, as JSON;
//! - `PREFIX/hosts/HOST`: what HOST has in force ([`HostRecord`], JSON),
//!   under a lease of the host's agent.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, Document};

/// The largest gRPC message the client takes: a full read of 10,000 tenant
/// documents is about 10 MB, well above gRPC's default of 4 MiB.
pub const MAX_MESSAGE: usize = 512 << 20;

/// `[etcd]` of the host configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `http://IP:PORT` (or `https://` with the TLS files), one per member.
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This host's name in `PREFIX/hosts/` (default: the system's host name).
    #[serde(default)]
    pub host: Option<String>,
    /// PEM file of the CA that signed the members' certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM files of this client's certificate and key (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Connecting to a member, and each request.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Time to live of the host's lease: how long `PREFIX/hosts/HOST`
    /// outlives an agent that is gone.
    #[serde(default = "default_lease")]
    pub lease_ttl_secs: u64,
    /// Longest wait between two attempts to reach etcd.
    #[serde(default = "default_backoff")]
    pub max_backoff_ms: u64,
}

fn default_prefix() -> String {
    "/carwash".into()
}
fn default_timeout() -> u64 {
    5000
}
fn default_lease() -> u64 {
    10
}
fn default_backoff() -> u64 {
    10_000
}

impl EtcdConfig {
    /// Just the endpoints and the prefix; defaults for the rest.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.to_string(),
            host: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout_ms: default_timeout(),
            lease_ttl_secs: default_lease(),
            max_backoff_ms: default_backoff(),
        }
    }

    pub fn check(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            bail!("etcd: endpoints is empty");
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            bail!(
                "etcd: prefix {:?} must start with '/' and not end with one",
                self.prefix
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("etcd: cert_file and key_file go together");
        }
        if self.timeout_ms == 0 || self.lease_ttl_secs < 2 || self.max_backoff_ms == 0 {
            bail!("etcd: timeout_ms and max_backoff_ms must be at least 1, lease_ttl_secs at least 2");
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// This host's name: `host`, else the system's.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(system_host_name)
    }

    pub fn tenants_prefix(&self) -> String {
        tenants_prefix(&self.prefix)
    }

    pub fn host_key(&self) -> String {
        format!("{}{}", hosts_prefix(&self.prefix), self.host_name())
    }
}

pub fn tenants_prefix(prefix: &str) -> String {
    format!("{prefix}/tenants/")
}

pub fn hosts_prefix(prefix: &str) -> String {
    format!("{prefix}/hosts/")
}

fn system_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A client of the cluster `cfg` names (TLS when it names a CA or a
/// certificate). Connecting fails when no member answers within the
/// timeout.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout())
        // A member that stops answering (killed, partitioned) is noticed
        // within seconds, not at the next TCP timeout.
        .with_keep_alive(Duration::from_secs(2), cfg.timeout())
        .with_keep_alive_while_idle(true);
    if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("etcd: reading ca_file {}", ca.display()))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
            let cert = std::fs::read(c).with_context(|| format!("etcd: reading cert_file {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("etcd: reading key_file {}", k.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    let client = tokio::time::timeout(cfg.timeout(), Client::connect(&cfg.endpoints, Some(opts)))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "etcd: no member of {:?} answered within {:?}",
                cfg.endpoints,
                cfg.timeout()
            )
        })?
        .with_context(|| format!("etcd: connecting to {:?}", cfg.endpoints))?;
    Ok(client)
}

/// Runs an etcd request with the configured timeout.
pub async fn timed<T, E: Into<anyhow::Error>>(
    cfg: &EtcdConfig,
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(cfg.timeout(), fut).await {
        Ok(r) => r.map_err(Into::into).with_context(|| format!("etcd: {what}")),
        Err(_) => bail!("etcd: {what}: no answer within {:?}", cfg.timeout()),
    }
}

/// What the etcd watcher tells the agent's loop.
#[derive(Debug)]
pub enum Update {
    /// etcd answers again (or for the first time).
    Connected,
    /// etcd is out of reach; the set in force stays.
    Down(String),
    /// The tenants as of `revision`: each changed one's new document, or
    /// `None` when it was deleted. `whole`: these are all the tenants (a
    /// first read, or a re-read because the revision the agent had was
    /// compacted away, then `reread`): any tenant not named is gone.
    Tenants {
        changes: BTreeMap<String, Option<String>>,
        whole: bool,
        revision: i64,
        reread: bool,
    },
}

/// The tenant name a key under `PREFIX/tenants/` stands for.
pub fn tenant_of_key<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    let key = std::str::from_utf8(key).ok()?;
    key.strip_prefix(&tenants_prefix(prefix)).filter(|n| !n.is_empty())
}

/// The document the agent validates for tenant `name`: as a policy file
/// `NAME.json` would be, so errors name `NAME.json` and the tenant's name
/// must match it.
pub fn document(name: &str, value: &[u8]) -> Document {
    Document {
        name: format!("{name}.json"),
        content: String::from_utf8_lossy(value).into_owned(),
    }
}

/// All tenant documents under `prefix` and the revision they were read at.
pub async fn read_tenants(client: &mut Client, cfg: &EtcdConfig) -> Result<(BTreeMap<String, String>, i64)> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let resp = timed(
        cfg,
        "reading the tenants",
        kv.get(cfg.tenants_prefix(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut docs = BTreeMap::new();
    for kv in resp.kvs() {
        if let Some(name) = tenant_of_key(&cfg.prefix, kv.key()) {
            docs.insert(name.to_string(), String::from_utf8_lossy(kv.value()).into_owned());
        }
    }
    Ok((docs, revision))
}

/// What a push changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushReport {
    pub revision: i64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

/// Makes `PREFIX/tenants/*` exactly `docs` (tenant name → JSON) in one
/// transaction, so that every host sees the whole change at one revision.
/// The transaction holds only if nothing under the prefix changed since it
/// was read (another push in between is retried against the new state).
///
/// A cluster that is electing a leader (a member lost) answers
/// "unavailable" for a moment: the push tries again for a while.
pub async fn push(cfg: &EtcdConfig, docs: &BTreeMap<String, String>) -> Result<PushReport> {
    let mut client = connect(cfg).await?;
    let mut last = None;
    for _ in 0..20 {
        match push_once(&mut client, cfg, docs).await {
            Ok(Some(report)) => return Ok(report),
            // Another push got in between: again, against the new state.
            Ok(None) => continue,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("etcd: the tenants kept changing under the push; nothing more was written")))
}

/// One attempt: `None` when the tenants changed since they were read.
async fn push_once(
    client: &mut Client,
    cfg: &EtcdConfig,
    docs: &BTreeMap<String, String>,
) -> Result<Option<PushReport>> {
    let (current, revision) = read_tenants(client, cfg).await?;
    let mut report = PushReport::default();
    let mut ops = Vec::new();
    for (name, value) in docs {
        match current.get(name) {
            Some(v) if v == value => report.unchanged += 1,
            Some(_) => report.changed.push(name.clone()),
            None => report.added.push(name.clone()),
        }
        if current.get(name) != Some(value) {
            ops.push(TxnOp::put(
                format!("{}{name}", cfg.tenants_prefix()),
                value.as_str(),
                None,
            ));
        }
    }
    for name in current.keys().filter(|n| !docs.contains_key(*n)) {
        report.removed.push(name.clone());
        ops.push(TxnOp::delete(
            format!("{}{name}", cfg.tenants_prefix()),
            None::<DeleteOptions>,
        ));
    }
    if ops.is_empty() {
        report.revision = revision;
        return Ok(Some(report));
    }
    // Nothing under the prefix may have a newer revision than the read.
    let guard = etcd_client::Compare::mod_revision(cfg.tenants_prefix(), etcd_client::CompareOp::Less, revision + 1)
        .with_prefix();
    let txn = Txn::new().when([guard]).and_then(ops);
    let resp = timed(cfg, "the push transaction", client.txn(txn)).await?;
    if !resp.succeeded() {
        return Ok(None);
    }
    report.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    Ok(Some(report))
}

/// The last error a host met applying a set, as published.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostError {
    pub at: u64,
    pub source: String,
    pub error: String,
    #[serde(default)]
    pub errors: Vec<ApiError>,
    /// The etcd revision of the set that was refused, if it came from etcd.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// What a host publishes under `PREFIX/hosts/HOST`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub host: String,
    pub version: String,
    pub generation: u64,
    pub digest: String,
    pub tenants: usize,
    /// The etcd revision of the set in force (0: none from etcd yet).
    pub revision: i64,
    /// The last refusal or failure, while the last attempt failed.
    pub error: Option<HostError>,
    /// The host's health summary (null until health checks report one).
    #[serde(default)]
    pub health: serde_json::Value,
    pub updated_at: u64,
}

/// Every host's record under `prefix`, and the cluster's revision and the
/// tenants' latest modification revision (what hosts should have applied).
pub struct Fleet {
    pub hosts: Vec<HostRecord>,
    /// Keys under `hosts/` that do not hold a record.
    pub unreadable: Vec<String>,
    pub revision: i64,
    pub tenants_revision: i64,
}

/// Reads the fleet; tries again for a few seconds while the cluster
/// answers "unavailable" (electing a leader).
pub async fn read_fleet(cfg: &EtcdConfig) -> Result<Fleet> {
    let client = connect(cfg).await?;
    let mut attempt = 0;
    loop {
        match read_fleet_once(&client, cfg).await {
            Err(_) if attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

async fn read_fleet_once(client: &Client, cfg: &EtcdConfig) -> Result<Fleet> {
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let hosts = timed(
        cfg,
        "reading the hosts",
        kv.get(hosts_prefix(&cfg.prefix), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = hosts.header().map(|h| h.revision()).unwrap_or(0);
    // The newest modification under tenants/ (a deletion moves the
    // revision too, so the newest of both is taken from the revision the
    // hosts report; without keys, the read revision itself).
    let tenants = timed(
        cfg,
        "reading the tenants",
        kv.get(
            cfg.tenants_prefix(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_sort(etcd_client::SortTarget::Mod, etcd_client::SortOrder::Descend)
                    .with_limit(1),
            ),
        ),
    )
    .await?;
    let tenants_revision = tenants.kvs().first().map(|k| k.mod_revision()).unwrap_or(0);
    let mut out = Fleet {
        hosts: Vec::new(),
        unreadable: Vec::new(),
        revision,
        tenants_revision,
    };
    for kv in hosts.kvs() {
        match serde_json::from_slice::<HostRecord>(kv.value()) {
            Ok(r) => out.hosts.push(r),
            Err(_) => out.unreadable.push(String::from_utf8_lossy(kv.key()).into_owned()),
        }
    }
    out.hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}

/// The tenant documents of a policy file or directory, as pushed: tenant
/// name (the file's stem) → the document as JSON (TOML converted).
pub fn documents_of_path(path: &Path) -> Result<BTreeMap<String, String>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && crate::api::is_policy_file(p))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut docs = BTreeMap::new();
    for f in files {
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: a file name that is not UTF-8", f.display()))?
            .to_string();
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let json = if f.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            text
        } else {
            // A TOML file that does not parse is pushed as it is: the local
            // validation then refuses it with the parser's line and column.
            match toml::from_str::<toml::Value>(&text) {
                Ok(v) => serde_json::to_string_pretty(&v)?,
                Err(_) => text,
            }
        };
        docs.insert(name, json);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_tenants() {
        assert_eq!(tenant_of_key("/cw", b"/cw/tenants/acme"), Some("acme"));
        assert_eq!(tenant_of_key("/cw", b"/cw/tenants/"), None);
        assert_eq!(tenant_of_key("/cw", b"/cw/hosts/h1"), None);
        assert_eq!(document("acme", b"{}").name, "acme.json");
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: EtcdConfig = toml::from_str("endpoints = [\"http://10.0.0.1:2379\"]").unwrap();
        assert_eq!(c.prefix, "/carwash");
        assert_eq!(c.lease_ttl_secs, 10);
        c.check().unwrap();
        let mut bad = c.clone();
        bad.prefix = "/carwash/".into();
        assert!(bad.check().is_err());
        let mut bad = c.clone();
        bad.cert_file = Some("/x".into());
        assert!(bad.check().is_err());
        let mut bad = c;
        bad.endpoints.clear();
        assert!(bad.check().is_err());
        assert!(toml::from_str::<EtcdConfig>("endpoints = []\nnope = 1").is_err());
    }
}
