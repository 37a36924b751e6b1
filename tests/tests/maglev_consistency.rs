//! The connector the program picks for a flow is the one the userspace
//! table builder predicts, for 100,000 random flows; taking a connector out
//! of a double lane moves only the flows that were on it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::Tenant;
use carwash_tests::fabric::{FabricNs, loaded, repo_policies};
use carwash_tests::fixture::XDP_REDIRECT;
use carwash_tests::packets::{tcp4, tcp6};
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::maglev;
use dataplane::tables::Health;
use dataplane_common::hash::flow_hash;
use dataplane_common::programs;
use dataplane_common::types::MAGLEV_SIZE;

const FLOWS: usize = 100_000;

/// xorshift64*: deterministic, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
}

fn flows(acme: &Tenant) -> Vec<Flow> {
    let mut rng = Rng(0x00c0_ffee_1234_5678);
    let (vip4, vip6) = (acme.vips[0], acme.vips[1]);
    (0..FLOWS)
        .map(|_| {
            let r = rng.next();
            let sport = (r >> 16) as u16 | 1024;
            if r & 1 == 0 {
                Flow {
                    src: IpAddr::V4(Ipv4Addr::new(198, 51, 100, (r >> 8) as u8)),
                    dst: vip4,
                    sport,
                }
            } else {
                let s = Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0xbeef,
                    (r >> 32) as u16,
                    0,
                    0,
                    (r >> 48) as u16,
                    (r >> 8) as u16,
                );
                Flow {
                    src: IpAddr::V6(s),
                    dst: vip6,
                    sport,
                }
            }
        })
        .collect()
}

fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&a.octets());
            o
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The connector (by index) whose VTEP the program encapsulated to.
fn program_choice(dp: &Dataplane, acme: &Tenant, f: &Flow) -> usize {
    let pkt = match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp4(s, d, f.sport, 443, b"x"),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp6(s, d, f.sport, 443, b"x"),
        _ => unreachable!(),
    };
    let (action, out) = dp.run(programs::UPLINK, &pkt).unwrap();
    assert_eq!(action, XDP_REDIRECT);
    let vtep = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    acme.connectors
        .iter()
        .position(|c| c.vtep == vtep)
        .expect("encapsulated to a connector")
}

fn predicted(table: &[u8; 256], f: &Flow) -> usize {
    let h = flow_hash(&addr16(f.src), &addr16(f.dst), f.sport, 443, 6);
    table[(h % MAGLEV_SIZE as u32) as usize] as usize
}

#[test]
fn program_and_table_builder_agree_and_removal_moves_only_its_flows() {
    require_root();
    let acme = repo_policies().tenants.into_iter().find(|t| t.name == "acme").unwrap();
    let fab = FabricNs::new(std::slice::from_ref(&acme)).unwrap();
    let mut dp = loaded(&fab, std::slice::from_ref(&acme)).unwrap();
    let ids: Vec<maglev::Identity> = acme.connectors.iter().map(|c| (c.vtep.octets(), c.mac.0)).collect();
    let flows = flows(&acme);

    let table = maglev::build(&ids, &[true, true]);
    let before: Vec<usize> = fab
        .ns
        .enter(|| flows.iter().map(|f| program_choice(&dp, &acme, f)).collect())
        .unwrap();
    let mismatches = flows
        .iter()
        .zip(&before)
        .filter(|(f, c)| predicted(&table, f) != **c)
        .count();
    assert_eq!(
        mismatches, 0,
        "program and userspace table disagree on {mismatches} of {FLOWS} flows"
    );
    let on_first = before.iter().filter(|&&c| c == 0).count();
    assert!(
        (FLOWS * 45 / 100..FLOWS * 55 / 100).contains(&on_first),
        "share of connector 0: {on_first}/{FLOWS}"
    );

    // Connector 0 leaves: its flows move, connector 1's stay where they were.
    dp.install_tenant_with(
        1,
        &acme,
        &Health {
            connectors_up: [false, true],
            active_core: 0,
        },
    )
    .unwrap();
    let after: Vec<usize> = fab
        .ns
        .enter(|| flows.iter().map(|f| program_choice(&dp, &acme, f)).collect())
        .unwrap();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if *b == 1 {
            assert_eq!(*a, 1, "flow {i} was on connector 1, which stayed, but moved");
        }
        assert_eq!(*a, 1, "flow {i}: connector 0 is down");
    }
}
