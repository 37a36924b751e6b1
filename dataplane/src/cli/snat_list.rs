//! `carwash snat list [--tenant NAME]`: the SNAT / connection-tracking
//! entries, from the pinned table, one row per flow (both directions of a
//! flow are one entry). Pins without the table are reported as such, in
//! the table and in the JSON document, rather than as an empty list.
use std::process::ExitCode;

use anyhow::Result;
use dataplane::maps::conntrack::{SnatEntry, SnatTable};
use serde::Serialize;

use super::{Format, PinArgs, output};

#[derive(clap::Args)]
pub struct Args {
    /// Only this tenant's entries.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    #[command(flatten)]
    pin: PinArgs,
    /// `table`: aligned columns; `json`: one complete JSON document.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Format,
}

#[derive(Serialize)]
struct List {
    pin_path: String,
    tenant: Option<String>,
    /// Whether the dataplane has a SNAT table at all.
    available: bool,
    /// Why not, when it has none.
    reason: Option<String>,
    entries: Vec<SnatEntry>,
}

fn table(entries: &[SnatEntry]) -> comfy_table::Table {
    let mut t = output::table([
        "tenant", "proto", "inside", "egress", "remote", "machine", "state", "expires", "dirs",
    ]);
    for e in entries {
        t.add_row(vec![
            e.tenant.clone(),
            e.proto.clone(),
            e.inside.clone(),
            e.egress.clone(),
            e.remote.clone(),
            e.machine.clone(),
            e.state.clone(),
            format!("{}s", e.expires_in_s),
            e.directions.clone(),
        ]);
    }
    t
}

pub fn run(args: Args) -> Result<ExitCode> {
    let pins = args.pin.open()?;
    // A misspelt tenant is an error even when there is nothing to list.
    let tenant = args.tenant.as_deref().map(|n| pins.tenant(n)).transpose()?;
    let mut list = List {
        pin_path: pins.dir().display().to_string(),
        tenant: tenant.as_ref().map(|t| t.display_name()),
        available: false,
        reason: None,
        entries: Vec::new(),
    };
    match pins.snat()? {
        SnatTable::Absent { reason } => list.reason = Some(reason),
        SnatTable::Entries(entries) => {
            list.available = true;
            list.entries = entries
                .into_iter()
                .filter(|e| list.tenant.as_ref().is_none_or(|t| *t == e.tenant))
                .collect();
        }
    }
    match args.output {
        Format::Json => output::print_json(&list)?,
        Format::Table => match &list.reason {
            Some(reason) => println!("no SNAT table: {reason}"),
            None if list.entries.is_empty() => println!("no SNAT entries"),
            None => println!("{}", table(&list.entries)),
        },
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_render_one_row_each() {
        let e = SnatEntry {
            tenant: "acme".into(),
            proto: "tcp".into(),
            inside: "10.101.0.5:41000".into(),
            egress: "203.0.113.200:20001".into(),
            remote: "198.18.0.10:443".into(),
            machine: "connector[1]".into(),
            state: "established".into(),
            expires_in_s: 7100,
            directions: "both".into(),
        };
        let text = table(&[e]).to_string();
        assert!(text.contains("10.101.0.5:41000"), "{text}");
        assert!(text.contains("7100s"), "{text}");
        assert!(text.lines().count() >= 2, "{text}");
    }
}
