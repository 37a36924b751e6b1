//! Packet-in / packet-out fixtures: each case names the input packet, the
//! expected action, the expected output bytes and the expected counters, and
//! is run through the loaded program with `BPF_PROG_TEST_RUN`.
use std::fmt::Write as _;

use anyhow::{Result, bail};
use dataplane::Dataplane;
use dataplane_common::types::{SIDE_FABRIC, SIDE_UPLINK};
use dataplane_common::{Counter, DropReason};

pub use aya::programs::xdp::XdpMode;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// What the program must leave in the packet buffer.
#[derive(Debug, Clone)]
pub enum Output {
    /// The input, byte for byte.
    Unchanged,
    /// Exactly these bytes.
    Exact(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub packet: Vec<u8>,
    pub action: u32,
    pub output: Output,
    /// Counters that must move, and by how much, besides `packets`, `bytes`
    /// and the action's counter, which every case checks. Every other
    /// counter must stay put.
    pub counters: Vec<(Counter, u64)>,
    /// Drops by reason: exactly these must move.
    pub drops: Vec<(DropReason, u64)>,
}

impl Case {
    /// The IP version counter of an Ethernet frame without VLAN tags.
    fn ip_counter(packet: &[u8]) -> Counter {
        if packet[12..14] == [0x86, 0xdd] {
            Counter::Ipv6
        } else {
            Counter::Ipv4
        }
    }

    /// A frame redirected as exactly `output`, counted as its IP version,
    /// `l4` and `what` (`steered`, `snat_in`, ...).
    pub fn redirected(name: &'static str, packet: Vec<u8>, l4: Counter, output: Vec<u8>, what: Counter) -> Case {
        Case {
            name,
            counters: vec![(Self::ip_counter(&packet), 1), (l4, 1), (what, 1)],
            packet,
            action: XDP_REDIRECT,
            output: Output::Exact(output),
            drops: vec![],
        }
    }

    /// A frame dropped for `why`, counted as its IP version and `l4`.
    pub fn dropped(name: &'static str, packet: Vec<u8>, l4: Counter, why: DropReason) -> Case {
        Case {
            name,
            counters: vec![(Self::ip_counter(&packet), 1), (l4, 1)],
            packet,
            action: XDP_DROP,
            output: Output::Unchanged,
            drops: vec![(why, 1)],
        }
    }
}

fn action_counter(a: u32) -> Counter {
    match a {
        XDP_DROP => Counter::ActionDrop,
        XDP_TX => Counter::ActionTx,
        XDP_REDIRECT => Counter::ActionRedirect,
        _ => Counter::ActionPass,
    }
}

/// Runs one case on program `prog`; the error lists every mismatch.
pub fn check(dp: &Dataplane, prog: &str, case: &Case) -> Result<()> {
    let side = if prog == dataplane_common::programs::FABRIC {
        SIDE_FABRIC
    } else {
        SIDE_UPLINK
    };
    let before = dp.counters(side)?;
    let (action, out) = dp.run(prog, &case.packet)?;
    let delta = dp.counters(side)?.since(&before);
    let mut errors = String::new();
    if action != case.action {
        let _ = writeln!(
            errors,
            "  action: got {}, want {}",
            action_name(action),
            action_name(case.action)
        );
    }
    match &case.output {
        Output::Unchanged if out != case.packet => {
            let _ = writeln!(
                errors,
                "  output changed:\n    in  {:02x?}\n    out {:02x?}",
                case.packet, out
            );
        }
        Output::Exact(want) if &out != want => {
            let _ = writeln!(errors, "  output:\n    got  {:02x?}\n    want {:02x?}", out, want);
        }
        _ => {}
    }
    let mut want: Vec<(Counter, u64)> = vec![
        (Counter::Packets, 1),
        (Counter::Bytes, case.packet.len() as u64),
        (action_counter(case.action), 1),
    ];
    want.extend(case.counters.iter().copied());
    for &c in Counter::ALL {
        let expect: u64 = want.iter().filter(|(w, _)| *w == c).map(|(_, n)| n).sum();
        if delta.get(c) != expect {
            let _ = writeln!(
                errors,
                "  counter {}: moved by {}, want {}",
                c.name(),
                delta.get(c),
                expect
            );
        }
    }
    for &r in DropReason::ALL {
        let expect: u64 = case.drops.iter().filter(|(w, _)| *w == r).map(|(_, n)| n).sum();
        if delta.dropped(r) != expect {
            let _ = writeln!(
                errors,
                "  dropped {}: moved by {}, want {}",
                r.name(),
                delta.dropped(r),
                expect
            );
        }
    }
    if !errors.is_empty() {
        bail!("case {:?}:\n{errors}", case.name);
    }
    Ok(())
}

/// Runs every case and reports all failing ones together.
pub fn check_all(dp: &Dataplane, prog: &str, cases: &[Case]) -> Result<()> {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check(dp, prog, c).err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
