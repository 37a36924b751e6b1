//! `cargo xtask bench -- packets`, the fleet's part: what a reply costs
//! when it reaches the host that translated its flow, when it reaches
//! another host (which passes it on), and when the owner takes a reply
//! passed to it; each against the minimal XDP_PASS program in the same run.
use anyhow::Result;
use dataplane_common::programs;

use crate::bench::{Row, ns_per_packet, print_table};
use crate::fabric::FabricNs;
use crate::fixture::{XDP_PASS, XDP_REDIRECT};
use crate::fleet::{host, open_flow, reach_hosts, relayed, reply, reply_hash};
use crate::inbound_cases::tenants;

const RUNS: u32 = 100_000;
const ROUNDS: usize = 5;

pub fn run() -> Result<()> {
    let ts = tenants();
    let fab = FabricNs::new(&ts)?;
    reach_hosts(&fab)?;
    let (a, b) = (host(&fab, 0)?, host(&fab, 1)?);
    let (baseline, rows) = fab.ns.enter(|| -> Result<_> {
        let port = open_flow(&b)?;
        let reply = reply(port);
        let passed = relayed(&reply, reply_hash(port));
        let base = ns_per_packet(&b, programs::BENCH_PASS, &reply, XDP_PASS, RUNS, ROUNDS)?;
        let figures = [
            (
                "tracked reply on the host that owns its port",
                ns_per_packet(&b, programs::UPLINK, &reply, XDP_REDIRECT, RUNS, ROUNDS)?,
            ),
            (
                "reply of another host's port, passed on (hand-off sent)",
                ns_per_packet(&a, programs::UPLINK, &reply, XDP_REDIRECT, RUNS, ROUNDS)?,
            ),
            (
                "reply passed on, taken and delivered by its owner (hand-off received)",
                ns_per_packet(&b, programs::FABRIC, &passed, XDP_REDIRECT, RUNS, ROUNDS)?,
            ),
        ];
        let rows: Vec<Row> = figures
            .into_iter()
            .map(|(name, ns)| Row {
                scenario: name.to_string(),
                ns,
                ratio: ns / base,
                target: None,
            })
            .collect();
        Ok((base, rows))
    })??;
    print_table("replies across the hosts of a fleet (source NAT)", baseline, &rows);
    Ok(())
}
