//! `cargo xtask bench`: ns/packet of carwash's programs against the minimal
//! XDP_PASS program, measured in the same run (BPF_PROG_TEST_RUN, JIT).
use std::net::{Ipv4Addr, Ipv6Addr};

use carwash_tests::bench::{Row, ns_per_packet, print_table};
use carwash_tests::packets::*;
use dataplane::Dataplane;
use dataplane_common::programs;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    carwash_tests::require_root();
    let dp = Dataplane::load(None)?;
    let c4 = Ipv4Addr::new(198, 51, 100, 10);
    let d4 = Ipv4Addr::new(192, 0, 2, 80);
    let c6: Ipv6Addr = "2001:db8:beef::10".parse()?;
    let d6: Ipv6Addr = "2001:db8:99::80".parse()?;
    let scenarios: Vec<(&str, Vec<u8>)> = vec![
        ("parse + pass: IPv4 TCP, 64 B", tcp4(c4, d4, 40000, 443, &[0u8; 10])),
        (
            "parse + pass: IPv6 TCP behind hop-by-hop",
            tcp6_hop_by_hop(c6, d6, 40000, 443, &[0u8; 10]),
        ),
        (
            "parse + pass: IPv4 TCP, two VLAN tags",
            tcp4_vlan(&[10, 20], c4, d4, 40000, 443),
        ),
    ];
    let base_pkt = &scenarios[0].1;
    let baseline = ns_per_packet(&dp, programs::BENCH_PASS, base_pkt, REPEAT, ROUNDS)?;
    let mut rows = Vec::new();
    for (name, pkt) in &scenarios {
        let ns = ns_per_packet(&dp, programs::UPLINK, pkt, REPEAT, ROUNDS)?;
        rows.push(Row {
            scenario: name.to_string(),
            ns,
            ratio: ns / baseline,
            target: Some(1.5),
        });
    }
    print_table("uplink program, non-VIP traffic (pass-through)", baseline, &rows);
    Ok(())
}
