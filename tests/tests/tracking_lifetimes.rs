//! How long the data path keeps a translated flow, through
//! BPF_PROG_TEST_RUN with carwash's clock moved forward rather than waited
//! for (`Dataplane::set_ns_per_tick`): a TCP flow that only saw a SYN lives
//! 30 s, one that saw a FIN 60 s, one that saw a RST 10 s, an established
//! one far longer, UDP 60 s; a new connection on the port of one that
//! finished (a bare SYN after the FIN) starts afresh with the SYN's
//! lifetime, and once a finished flow is gone its tuple opens a new one.
//!
//! Each flow is probed once, by a packet of the machine's: still tracked
//! (`snat_out`), or gone (`snat_new_flow`). Two flows of each kind, one
//! probed a second inside its lifetime, one a second past it.
use carwash_tests::fabric::{FabricNs, loaded};
use carwash_tests::inbound_cases::tenants;
use carwash_tests::outbound::*;
use carwash_tests::packets::*;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::types::{CT_FIN, CT_SYN, CT_TCP_FIN_NS, CT_TCP_RST_NS, CT_TCP_SYN_NS, CT_UDP_NS, SIDE_FABRIC};
use dataplane_common::{Counter, programs};

const SECOND: u64 = 1_000_000_000;

/// What became of a machine's packet: tracked, a new flow, or neither.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Tracked,
    New,
    Other(u32),
}

fn send(dp: &Dataplane, packet: &[u8]) -> Seen {
    let before = dp.counters(SIDE_FABRIC).unwrap();
    let (action, _) = dp.run(programs::FABRIC, packet).unwrap();
    let d = dp.counters(SIDE_FABRIC).unwrap().since(&before);
    match (action, d.get(Counter::SnatNewFlow), d.get(Counter::SnatOut)) {
        (4, 0, 1) => Seen::Tracked,
        (4, 1, 1) => Seen::New,
        _ => Seen::Other(action),
    }
}

#[test]
fn flows_live_as_long_as_their_state_says() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let m = &acme.connectors[0];
    let out = |p: Vec<u8>| from_machine(acme, m, &p);
    let (vm, partner) = (ACME_VM4, PARTNER4);
    let syn = |port| out(syn4(vm, partner, port, 443));
    let data = |port| out(tcp4(vm, partner, port, 443, b"data"));
    let fin = |port| out(fin4(vm, partner, port, 443));
    let rst = |port| out(rst4(vm, partner, port, 443));
    let udp = |port| out(udp4(vm, partner, port, 53, b"q"));

    let base = dp.host_settings().unwrap().ns_per_tick;
    let ticks = dp.kernel_ticks().unwrap();
    // Each step of the clock: `ticks` ns (about 4.3 s: the tick counter
    // starts 300 s short of 2^32).
    let step = ticks;
    let inside = |life: u64| (life - SECOND) / step;
    let past = |life: u64| (life + SECOND).div_ceil(step);
    for life in [CT_TCP_RST_NS, CT_TCP_SYN_NS, CT_TCP_FIN_NS] {
        assert!(inside(life) < past(life));
    }

    // The flows, all opened now. Ports: 41xxx SYN only, 42xxx FIN, 43xxx
    // RST, 44xxx established, 45xxx UDP; xxx1 probed inside, xxx2 past.
    fab.ns
        .enter(|| {
            for p in [41001, 41002] {
                assert_eq!(send(&dp, &syn(p)), Seen::New);
            }
            for p in [42001, 42002, 46001] {
                assert_eq!(send(&dp, &syn(p)), Seen::New);
                assert_eq!(send(&dp, &data(p)), Seen::Tracked);
                assert_eq!(send(&dp, &fin(p)), Seen::Tracked);
            }
            for p in [43001, 43002] {
                assert_eq!(send(&dp, &syn(p)), Seen::New);
                assert_eq!(send(&dp, &rst(p)), Seen::Tracked);
            }
            assert_eq!(send(&dp, &syn(44001)), Seen::New);
            assert_eq!(send(&dp, &data(44001)), Seen::Tracked);
            for p in [45001, 45002] {
                assert_eq!(send(&dp, &udp(p)), Seen::New);
            }
            // A new connection on 46001's port after its FIN: a bare SYN
            // starts the tracked state afresh.
            assert_eq!(send(&dp, &syn(46001)), Seen::Tracked);
        })
        .unwrap();
    let state = |port: u16| {
        dp.conntrack_flows()
            .unwrap()
            .into_iter()
            .filter_map(|f| f.out)
            .find(|(k, _)| k.sport_be == port.to_be_bytes())
            .map(|(_, v)| v.state)
            .expect("a tracked flow")
    };
    assert_eq!(state(46001), CT_SYN, "a SYN after a FIN starts afresh");
    assert_ne!(state(42001) & CT_FIN, 0);

    // Let time pass, in order, and probe each flow once.
    let probes: Vec<(u64, Vec<u8>, Seen, &str)> = vec![
        (
            inside(CT_TCP_RST_NS),
            data(43001),
            Seen::Tracked,
            "RST flow inside 10 s",
        ),
        (past(CT_TCP_RST_NS), syn(43002), Seen::New, "RST flow past 10 s"),
        (
            inside(CT_TCP_SYN_NS),
            data(41001),
            Seen::Tracked,
            "SYN flow inside 30 s",
        ),
        (past(CT_TCP_SYN_NS), syn(41002), Seen::New, "SYN flow past 30 s"),
        (
            past(CT_TCP_SYN_NS),
            syn(46001),
            Seen::New,
            "a new connection after a FIN, past 30 s",
        ),
        (
            inside(CT_TCP_FIN_NS),
            data(42001),
            Seen::Tracked,
            "FIN flow inside 60 s",
        ),
        (inside(CT_UDP_NS), udp(45001), Seen::Tracked, "UDP flow inside 60 s"),
        (
            past(CT_TCP_FIN_NS),
            syn(42002),
            Seen::New,
            "FIN flow past 60 s: its tuple opens a new flow",
        ),
        (past(CT_UDP_NS), udp(45002), Seen::New, "UDP flow past 60 s"),
        (
            past(CT_TCP_FIN_NS),
            data(44001),
            Seen::Tracked,
            "established flow past 60 s",
        ),
    ];
    let mut bad = Vec::new();
    for (k, packet, want, what) in probes {
        dp.set_ns_per_tick(base + k as u32).unwrap();
        let got = fab.ns.enter(|| send(&dp, &packet)).unwrap();
        if got != want {
            bad.push(format!(
                "{what} (clock {:.1} s ahead): {got:?}, want {want:?}",
                (k * step) as f64 / 1e9
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
