//! `carwash policy check PATH` (offline, the agent's own validation) and
//! `carwash policy apply PATH` (hands the set to the running agent).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use dataplane::api::{self, ApiError, Request};
use dataplane::config::{DEFAULT_CONFIG, HostConfig};
use serde::Serialize;

use super::{Format, output};

#[derive(clap::Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file or directory as one set, as the agent would;
    /// exit 1 with file:line errors.
    Check(CheckArgs),
    /// Hand a policy file or directory to the running agent as the whole
    /// set in force; refused as a whole (file:line errors, exit 1) if
    /// anything is wrong with it.
    Apply(ApplyArgs),
    /// Validate a policy file or directory as the agents will, then make it
    /// the tenant set in etcd in one transaction (added, changed and
    /// removed tenants at one revision).
    Push(super::fleet::PushArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A policy file, or a directory of `*.toml` / `*.json` policies.
    path: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// A policy file, or a directory of `*.toml` / `*.json` policies.
    path: PathBuf,
    /// The agent's API socket (default: `api_socket` of the host configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Host configuration to take `api_socket` from.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Only validate, on the agent (which also checks the maps' capacity).
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct CheckResult {
    ok: bool,
    tenants: usize,
    digest: Option<String>,
    errors: Vec<ApiError>,
}

pub fn run(cmd: PolicyCmd) -> Result<ExitCode> {
    match cmd {
        PolicyCmd::Check(a) => check(a),
        PolicyCmd::Apply(a) => apply(a),
        PolicyCmd::Push(a) => super::fleet::push(a),
    }
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    let result = match carwash_policy::load_path(&a.path) {
        Ok(set) => match dataplane::agent::apply::check_capacity(&set) {
            Ok(()) => CheckResult {
                ok: true,
                tenants: set.tenants.len(),
                digest: Some(set.digest()),
                errors: Vec::new(),
            },
            Err(errors) => CheckResult {
                ok: false,
                tenants: set.tenants.len(),
                digest: None,
                errors: dataplane::agent::capacity_errors(&errors, &a.path, |name| {
                    let file = if a.path.is_dir() {
                        dataplane::agent::tenant_file(&a.path, name)?
                    } else {
                        a.path.clone()
                    };
                    let text = std::fs::read_to_string(&file).ok()?;
                    Some((file, text))
                })
                .0
                .iter()
                .map(ApiError::from)
                .collect(),
            },
        },
        Err(errors) => CheckResult {
            ok: false,
            tenants: 0,
            digest: None,
            errors: errors.0.iter().map(ApiError::from).collect(),
        },
    };
    match a.output {
        Format::Json => output::print_json(&result)?,
        Format::Table if result.ok => println!(
            "ok: {} tenants, digest {}",
            result.tenants,
            result.digest.as_deref().unwrap_or("")
        ),
        Format::Table => output::print_refused(&a.path, &result.errors, "nothing would be applied"),
    }
    Ok(if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn socket(a: &ApplyArgs) -> Result<PathBuf> {
    if let Some(s) = &a.socket {
        return Ok(s.clone());
    }
    if a.config.exists() {
        let text = std::fs::read_to_string(&a.config)?;
        let table: toml::Table = toml::from_str(&text)?;
        if let Some(s) = table.get("api_socket").and_then(|v| v.as_str()) {
            return Ok(PathBuf::from(s));
        }
    }
    // The default of the host configuration.
    let dflt = HostConfig::parse("uplink = \"-\"\nvtep = \"0.0.0.0\"\n")?;
    Ok(dflt.api_socket)
}

fn apply(a: ApplyArgs) -> Result<ExitCode> {
    let documents = match api::read_documents(&a.path) {
        Ok(d) => d,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let sock = socket(&a)?;
    let resp = api::call(
        &sock,
        &Request::Apply {
            documents,
            tenants: Vec::new(),
            dry_run: a.dry_run,
        },
        Duration::from_secs(a.timeout),
    )?;
    if a.output == Format::Json {
        output::print_json(&resp)?;
        return Ok(if resp.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if !resp.ok {
        for e in &resp.errors {
            eprintln!("{e}");
        }
        eprintln!("refused: {}", resp.error.as_deref().unwrap_or("(no reason given)"));
        return Ok(ExitCode::FAILURE);
    }
    let Some(r) = resp.applied else {
        bail!("the agent answered ok without a report");
    };
    if a.dry_run {
        println!(
            "ok: {} tenants, digest {} (dry run, nothing applied)",
            r.tenants, r.digest
        );
    } else if r.is_noop() {
        println!(
            "unchanged: generation {}, {} tenants, digest {}",
            r.generation, r.tenants, r.digest
        );
    } else {
        println!(
            "applied: generation {}, {} tenants, digest {} (added {}, changed {}, removed {}, unchanged {}; {} µs)",
            r.generation,
            r.tenants,
            r.digest,
            list(&r.added),
            list(&r.changed),
            list(&r.removed),
            r.unchanged,
            r.micros
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(v: &[String]) -> String {
    if v.is_empty() { "none".into() } else { v.join(",") }
}
