//! Answers to the half-open health probes through BPF_PROG_TEST_RUN: the
//! fabric program's part of `[probes] resets`. A machine's SYN-ACK to a
//! probe port becomes, where it lies, the reset that answers it (every byte
//! checked against a frame etherparse builds, so every checksum against a
//! full computation), marked for `carwash_probe_reset` by the metadata word
//! in front of it, and passed; its record reaches the ring either way.
//! Without the TC program (resets by the agent), or for an answer that is
//! not a SYN-ACK, the frame is dropped untouched. `PROBE_RESETS` counts
//! what the fabric program wrote (the TC program's count is shown by the
//! `health_scale` tests).
use std::net::{IpAddr, Ipv4Addr};

use carwash_policy::Tenant;
use carwash_tests::fabric::{FABRIC_MAC, FabricNs, HOST_VTEP, ROUTER_MAC, loaded, vtep_mac};
use carwash_tests::fixture::{XDP_DROP, XDP_PASS, action_name};
use carwash_tests::inbound_cases::tenants;
use carwash_tests::outbound::from_machine;
use carwash_tests::packets::{ip_of, syn_linux, vxlan_frame};
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane_common::programs;
use dataplane_common::types::{PROBE_RESET_META, ProbeHost, SynProbeReply};
use etherparse::PacketBuilder;

const PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 8);
/// A probe's source port (slot 0, round 88).
const PORT: u16 = 600;

fn vip(t: &Tenant) -> Ipv4Addr {
    t.vips
        .iter()
        .find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .expect("an IPv4 VIP")
}

fn probe_host(dp: &mut Dataplane, in_path: bool) {
    dp.set_probe_host(&ProbeHost {
        addr: PROBE_SOURCE.octets(),
        fabric_mac: FABRIC_MAC,
        resets_in_path: u8::from(in_path),
        _pad: 0,
    })
    .unwrap();
}

/// A TCP segment without payload, as a frame.
fn bytes(b: etherparse::PacketBuilderStep<etherparse::TcpHeader>) -> Vec<u8> {
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// Every record in the ring, oldest first.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<SynProbeReply> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<SynProbeReply>());
        // SAFETY: a record of that size, plain data.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SynProbeReply>()) });
    }
    out
}

#[test]
fn a_probe_syn_ack_becomes_its_reset_in_place_and_is_passed_to_the_tc_program() {
    require_root();
    let ts = tenants();
    let acme = &ts[0];
    let fab = FabricNs::new(&ts).unwrap();
    let mut dp = loaded(&fab, &ts).unwrap();
    let mut ring = dp.take_probe_replies().unwrap();
    let counts = dp.take_probe_resets().unwrap();
    // The resets the fabric program wrote, and those the TC program sent.
    let written = || counts.get(&0, 0).unwrap().iter().sum::<u64>();
    let sent = || counts.get(&1, 0).unwrap().iter().sum::<u64>();
    let (vip, m, port) = (vip(acme), &acme.connectors[0], acme.https_ports[0]);
    // Linux's SYN-ACK, options and all: sequence 0x12345678, acknowledging
    // 0x0badcafe (the probe's ISN + 1).
    let synack = syn_linux(vip.into(), PROBE_SOURCE.into(), port, PORT, 1410, true);
    let frame = from_machine(acme, m, &synack);

    // With the TC program attached: the reset, back through the tunnel.
    probe_host(&mut dp, true);
    let (action, out) = dp.run(programs::FABRIC, &frame).unwrap();
    assert_eq!(action_name(action), action_name(XDP_PASS));
    let rst = bytes(
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4(PROBE_SOURCE.octets(), vip.octets(), 64)
            .tcp(PORT, port, 0x0bad_cafe, 0)
            .rst(),
    );
    let want = vxlan_frame(
        FABRIC_MAC,
        vtep_mac(m.vtep),
        HOST_VTEP,
        m.vtep,
        54321,
        acme.vni,
        ROUTER_MAC,
        m.mac.0,
        ip_of(&rst),
    );
    // The test run hands back the metadata in front of the frame.
    let (meta, rest) = out.split_at(out.len() - want.len());
    assert_eq!(meta, PROBE_RESET_META.to_ne_bytes(), "the metadata word");
    assert_eq!(rest, &want[..], "\n got  {rest:02x?}\n want {want:02x?}");
    let r = drain(&mut ring);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (
            r[0].tenant,
            r[0].seq,
            r[0].ack,
            r[0].vip,
            r[0].vip_port,
            r[0].port,
            r[0].flags,
            r[0].reset
        ),
        (1, 0x1234_5678, 0x0bad_cafe, vip.octets(), port, PORT, 0x12, 1)
    );
    assert_eq!((written(), sent()), (1, 0));

    // A VLAN tag (whose first byte looks like an IPv4 header's): not a
    // frame the rewrite knows the offsets of; the agent sends the reset.
    let mut tagged = frame.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x45, 0x00]);
    let (action, out) = dp.run(programs::FABRIC, &tagged).unwrap();
    assert_eq!(action_name(action), action_name(XDP_DROP));
    assert_eq!(&out[out.len() - tagged.len()..], &tagged[..]);
    let r = drain(&mut ring);
    assert_eq!((r.len(), r[0].reset, r[0].flags), (1, 0, 0x12));
    assert_eq!((written(), sent()), (1, 0));

    // Resets by the agent: the same SYN-ACK is dropped as it came, and
    // its record says no reset was sent.
    probe_host(&mut dp, false);
    let (action, out) = dp.run(programs::FABRIC, &frame).unwrap();
    assert_eq!(action_name(action), action_name(XDP_DROP));
    assert_eq!(out, frame);
    let r = drain(&mut ring);
    assert_eq!((r.len(), r[0].reset, r[0].flags), (1, 0, 0x12));

    // A reset from the machine (the port is closed) is not answered.
    probe_host(&mut dp, true);
    let refused = bytes(
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4(vip.octets(), PROBE_SOURCE.octets(), 64)
            .tcp(port, PORT, 0, 0)
            .rst()
            .ack(0x0bad_cafe),
    );
    let frame = from_machine(acme, m, &refused);
    let (action, out) = dp.run(programs::FABRIC, &frame).unwrap();
    assert_eq!(action_name(action), action_name(XDP_DROP));
    assert_eq!(out, frame);
    let r = drain(&mut ring);
    assert_eq!((r.len(), r[0].reset, r[0].flags), (1, 0, 0x14));
    // Neither of the last two was written.
    assert_eq!((written(), sent()), (1, 0));
}
