//! `carwash monitor`: the event stream, live from the agent's API socket
//! (`{"op":"monitor"}` turns the connection into a stream), or from the
//! flow log (`--since`, `--from`), with the same filters. One line per
//! event for people; `-o json`, the log's own JSON lines.
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use dataplane::config::{DEFAULT_CONFIG, HostConfig};
use dataplane::event::{Event, Filter, parse_age};

use super::Format;

#[derive(clap::Args)]
pub struct Args {
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// drop (drops, exhaustion, a full table, fail-closed, summaries), flow
    /// (translations, sampled flows), health or policy; or one event type.
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// Only drops for this reason (as `carwash stats` names them).
    #[arg(long)]
    reason: Option<String>,
    /// Only events with this address (source, destination, machine, egress IP).
    #[arg(long)]
    addr: Option<IpAddr>,
    /// History instead of the live stream: events of the flow log no older
    /// than this (90s, 30m, 2h, 7d).
    #[arg(long, value_name = "AGE")]
    since: Option<String>,
    /// History from this flow log file (a rotated one too).
    #[arg(long, value_name = "FILE", conflicts_with = "since")]
    from: Option<PathBuf>,
    /// The agent's API socket (default: `api_socket` of the host configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Host configuration to take `api_socket` and `event_log` from.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// `table`: one line per event; `json`: one JSON object per line.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

fn host_config(path: &Path) -> Result<HostConfig> {
    if path.exists() {
        return HostConfig::load(path);
    }
    HostConfig::parse("uplink = \"-\"\nvtep = \"0.0.0.0\"\n")
}

pub fn run(a: Args) -> Result<ExitCode> {
    let filter = Filter {
        tenant: a.tenant.clone(),
        kind: a.kind.clone(),
        reason: a.reason.clone(),
        addr: a.addr,
    };
    if let Err(e) = filter.check() {
        bail!(e);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if let Some(file) = &a.from {
        history(std::slice::from_ref(file), None, &filter, a.output, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = host_config(&a.config)?;
    if let Some(age) = &a.since {
        let age = parse_age(age).map_err(anyhow::Error::msg)?;
        let since = SystemTime::now() - age;
        let mut files: Vec<PathBuf> = dataplane::agent::flowlog::rotated(&cfg.event_log)
            .unwrap_or_default()
            .into_iter()
            // A rotated file holds one day: older days are skipped unread.
            .filter(|(day, _)| *day + std::time::Duration::from_secs(86_400) >= since)
            .map(|(_, p)| p)
            .collect();
        files.push(cfg.event_log.clone());
        history(&files, Some(since), &filter, a.output, &mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let socket = a.socket.clone().unwrap_or(cfg.api_socket);
    live(&socket, &filter, a.output, &mut out)
}

fn print(e: &Event, raw: &str, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(out, "{raw}"),
        Format::Table => writeln!(out, "{}", e.line()),
    }
}

fn history(
    files: &[PathBuf],
    since: Option<SystemTime>,
    filter: &Filter,
    format: Format,
    out: &mut impl Write,
) -> Result<()> {
    for f in files {
        let file = match std::fs::File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && since.is_some() => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
        };
        for line in BufReader::new(file).lines() {
            let line = line.with_context(|| format!("reading {}", f.display()))?;
            let Ok(e) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if since.is_some_and(|s| e.time().is_none_or(|t| t < s)) || !filter.matches(&e) {
                continue;
            }
            print(&e, &line, format, out)?;
        }
    }
    Ok(())
}

fn live(socket: &Path, filter: &Filter, format: Format, out: &mut impl Write) -> Result<ExitCode> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    let req = serde_json::json!({"op": "monitor", "filter": filter});
    stream.write_all(format!("{req}\n").as_bytes())?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines.next().context("the agent closed the connection")??;
    let resp: serde_json::Value = serde_json::from_str(&first).context("the agent's answer")?;
    if resp.get("ok") != Some(&serde_json::Value::Bool(true)) {
        bail!(
            "the agent refused: {}",
            resp.get("error").and_then(|e| e.as_str()).unwrap_or(&first)
        );
    }
    if format == Format::Table {
        eprintln!("following the agent's events (Ctrl-C to stop)");
    }
    for line in lines {
        let line = line.context("reading the stream")?;
        let Ok(e) = serde_json::from_str::<Event>(&line) else {
            continue;
        };
        print(&e, &line, format, out)?;
        out.flush()?;
    }
    eprintln!("the agent closed the stream");
    Ok(ExitCode::SUCCESS)
}
