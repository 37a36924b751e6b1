//! `carwash policy push PATH --etcd ENDPOINTS` (the set into etcd, in one
//! transaction) and `carwash fleet status` (every host's state, from etcd).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use dataplane::api::{ApiError, EtcdStatus};
use dataplane::config::{DEFAULT_CONFIG, HostConfig};
use dataplane::etcd::{self, EtcdConfig, HostRecord, PushReport};
use serde::Serialize;

use super::{Format, output};

/// Where etcd is: `--etcd`, else `[etcd]` of the host configuration.
#[derive(clap::Args, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (`http://IP:2379,...`); default: `[etcd] endpoints` of the host configuration.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix (default: `[etcd] prefix` of the host configuration, else /carwash).
    #[arg(long)]
    prefix: Option<String>,
    /// Host configuration to take `[etcd]` from.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

impl EtcdArgs {
    fn resolve(&self) -> Result<EtcdConfig> {
        let from_file = if self.config.exists() {
            HostConfig::load(&self.config)?.etcd
        } else {
            None
        };
        let mut cfg = match (self.etcd.is_empty(), from_file) {
            (false, Some(mut c)) => {
                c.endpoints = self.etcd.clone();
                c
            }
            (false, None) => EtcdConfig::new(self.etcd.clone(), "/carwash"),
            (true, Some(c)) => c,
            (true, None) => anyhow::bail!("no etcd: give --etcd ENDPOINTS, or [etcd] in {}", self.config.display()),
        };
        if let Some(p) = &self.prefix {
            cfg.prefix = p.clone();
        }
        cfg.check()?;
        Ok(cfg)
    }
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// A policy file, or a directory of `*.toml` / `*.json` policies: the whole set.
    path: PathBuf,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct PushResult {
    ok: bool,
    tenants: usize,
    digest: Option<String>,
    errors: Vec<ApiError>,
    #[serde(flatten)]
    pushed: Option<PushReport>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Validates the set as every agent will (the same documents, named as the
/// agents name them), then writes it in one transaction.
pub fn push(a: PushArgs) -> Result<ExitCode> {
    let cfg = a.etcd.resolve()?;
    let docs = etcd::documents_of_path(&a.path)?;
    let documents: Vec<_> = docs.iter().map(|(n, v)| etcd::document(n, v.as_bytes())).collect();
    let checked = dataplane::agent::validate_documents(&documents)
        .map_err(|e| e.0)
        .and_then(|set| {
            dataplane::agent::apply::check_capacity(&set)
                .map(|()| set.clone())
                .map_err(|errors| {
                    dataplane::agent::capacity_errors(&errors, &a.path, |name| {
                        let d = documents.iter().find(|d| d.name == format!("{name}.json"))?;
                        Some((PathBuf::from(&d.name), d.content.clone()))
                    })
                    .0
                })
        });
    let result = match checked {
        Err(errors) => PushResult {
            ok: false,
            tenants: docs.len(),
            digest: None,
            errors: errors.iter().map(ApiError::from).collect(),
            pushed: None,
        },
        Ok(set) => {
            let report = runtime()?.block_on(etcd::push(&cfg, &docs))?;
            PushResult {
                ok: true,
                tenants: set.tenants.len(),
                digest: Some(set.digest()),
                errors: Vec::new(),
                pushed: Some(report),
            }
        }
    };
    match a.output {
        Format::Json => output::print_json(&result)?,
        Format::Table => match &result.pushed {
            Some(r) => println!(
                "pushed {} tenants at revision {}: {} added, {} changed, {} removed, {} unchanged; digest {}",
                result.tenants,
                r.revision,
                r.added.len(),
                r.changed.len(),
                r.removed.len(),
                r.unchanged,
                result.digest.as_deref().unwrap_or("")
            ),
            None => super::output::print_refused(&a.path, &result.errors, "nothing was written to etcd"),
        },
    }
    Ok(if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(clap::Subcommand)]
pub enum FleetCmd {
    /// Every host's generation, digest, etcd revision and last error, from
    /// etcd; flags hosts that disagree with the others or lag behind
    /// (exit 1 when any is flagged).
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct HostView {
    #[serde(flatten)]
    record: HostRecord,
    /// `ok`, or what is wrong: `refused`, `disagrees`, `lags`.
    flags: Vec<&'static str>,
}

#[derive(Serialize)]
struct FleetView {
    /// The cluster's revision at the read.
    revision: i64,
    /// The newest revision of a tenant document: what every host should
    /// have applied at least.
    tenants_revision: i64,
    /// The digest most hosts have.
    digest: Option<String>,
    agree: bool,
    hosts: Vec<HostView>,
    unreadable: Vec<String>,
}

pub fn run(cmd: FleetCmd) -> Result<ExitCode> {
    match cmd {
        FleetCmd::Status(a) => status(a),
    }
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    let cfg = a.etcd.resolve()?;
    let fleet = runtime()?
        .block_on(etcd::read_fleet(&cfg))
        .context("reading the fleet")?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in &fleet.hosts {
        *counts.entry(h.digest.as_str()).or_default() += 1;
    }
    let majority = counts.iter().max_by_key(|(_, n)| **n).map(|(d, _)| d.to_string());
    let hosts: Vec<HostView> = fleet
        .hosts
        .iter()
        .map(|h| {
            let mut flags = Vec::new();
            if h.error.is_some() {
                flags.push("refused");
            }
            if majority.as_deref() != Some(h.digest.as_str()) {
                flags.push("disagrees");
            }
            if h.revision < fleet.tenants_revision {
                flags.push("lags");
            }
            if flags.is_empty() {
                flags.push("ok");
            }
            HostView {
                record: h.clone(),
                flags,
            }
        })
        .collect();
    let agree = hosts.iter().all(|h| h.flags == ["ok"]) && fleet.unreadable.is_empty();
    let view = FleetView {
        revision: fleet.revision,
        tenants_revision: fleet.tenants_revision,
        digest: majority,
        agree,
        hosts,
        unreadable: fleet.unreadable,
    };
    match a.output {
        Format::Json => output::print_json(&view)?,
        Format::Table => {
            let mut t = output::table(["host", "generation", "digest", "revision", "tenants", "state", "error"]);
            for h in &view.hosts {
                let r = &h.record;
                let error = r
                    .error
                    .as_ref()
                    .map(|e| match e.errors.first() {
                        Some(f) => format!("{}: {}:{}: {} {}", e.error, f.file, f.line, f.field, f.message),
                        None => e.error.clone(),
                    })
                    .unwrap_or_default();
                t.add_row(vec![
                    r.host.clone(),
                    r.generation.to_string(),
                    r.digest.get(..12).unwrap_or(&r.digest).to_string(),
                    r.revision.to_string(),
                    r.tenants.to_string(),
                    h.flags.join(","),
                    error,
                ]);
            }
            println!("{t}");
            for k in &view.unreadable {
                println!("unreadable record: {k}");
            }
            println!(
                "{} hosts, tenants at revision {}: {}",
                view.hosts.len(),
                view.tenants_revision,
                if view.agree { "all agree" } else { "NOT all agree" }
            );
        }
    }
    Ok(if view.agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line of `carwash status` for the agent's link to etcd.
pub fn etcd_line(e: &EtcdStatus) -> String {
    let state = if e.connected {
        "connected".to_string()
    } else {
        format!("OUT OF REACH ({})", e.error.as_deref().unwrap_or("not reached yet"))
    };
    format!(
        "{state} since {}, {} {}, host {}, revision applied {}, reconnects {}, re-reads {}",
        e.since,
        e.endpoints.join(","),
        e.prefix,
        e.host,
        e.revision,
        e.reconnects,
        e.rereads
    )
}
