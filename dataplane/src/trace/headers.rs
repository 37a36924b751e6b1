//! The headers of a frame, outermost first, in an operator's words: what
//! `carwash trace` prints for the packet the program left behind. VXLAN
//! (UDP to port 4789) is followed into the inner frame.
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, anyhow};
use carwash_policy::MacAddr;
use dataplane_common::types::VXLAN_PORT;
use etherparse::{
    Icmpv4Type, Icmpv6Type, LinkHeader, NetHeaders, PacketHeaders, TcpOptionElement, TransportHeader, VlanHeader,
    icmpv4::DestUnreachableHeader,
};
use serde::Serialize;

/// One header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum Header {
    Ethernet {
        src: String,
        dst: String,
    },
    Vlan {
        id: u16,
    },
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        dont_fragment: bool,
        total_len: u16,
    },
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        payload_len: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
        len: u16,
    },
    Vxlan {
        vni: u32,
    },
    Tcp {
        sport: u16,
        dport: u16,
        /// `syn`, `ack`, `psh`, `fin`, `rst`.
        flags: Vec<&'static str>,
        /// The MSS option, if the segment has one.
        mss: Option<u16>,
        payload_len: usize,
    },
    Icmp {
        /// What the message is (`echo request`, `fragmentation needed`, ...).
        message: String,
        /// The MTU a fragmentation-needed or packet-too-big message carries.
        mtu: Option<u32>,
    },
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Header::Ethernet { src, dst } => write!(f, "Ethernet {src} → {dst}"),
            Header::Vlan { id } => write!(f, "VLAN {id}"),
            Header::Ipv4 {
                src,
                dst,
                ttl,
                dont_fragment,
                total_len,
            } => write!(
                f,
                "IPv4 {src} → {dst}, ttl {ttl}{}, length {total_len}",
                if *dont_fragment { ", DF" } else { "" }
            ),
            Header::Ipv6 {
                src,
                dst,
                hop_limit,
                payload_len,
            } => write!(f, "IPv6 {src} → {dst}, hop limit {hop_limit}, payload {payload_len}"),
            Header::Udp { sport, dport, len } => write!(f, "UDP {sport} → {dport}, length {len}"),
            Header::Vxlan { vni } => write!(f, "VXLAN vni {vni}"),
            Header::Tcp {
                sport,
                dport,
                flags,
                mss,
                payload_len,
            } => {
                write!(f, "TCP {sport} → {dport} [{}]", flags.join(","))?;
                if let Some(m) = mss {
                    write!(f, ", mss {m}")?;
                }
                write!(f, ", {payload_len} bytes of data")
            }
            Header::Icmp { message, mtu } => {
                write!(f, "ICMP {message}")?;
                if let Some(m) = mtu {
                    write!(f, ", mtu {m}")?;
                }
                Ok(())
            }
        }
    }
}

/// The headers of an Ethernet frame, into VXLAN's inner frame.
pub fn describe(frame: &[u8]) -> Result<Vec<Header>> {
    let mut out = Vec::new();
    describe_into(frame, &mut out, 0)?;
    Ok(out)
}

fn describe_into(frame: &[u8], out: &mut Vec<Header>, depth: u8) -> Result<()> {
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| anyhow!("cannot parse the frame: {e}"))?;
    if let Some(LinkHeader::Ethernet2(e)) = &h.link {
        out.push(Header::Ethernet {
            src: MacAddr(e.source).to_string(),
            dst: MacAddr(e.destination).to_string(),
        });
    }
    match &h.vlan {
        Some(VlanHeader::Single(v)) => out.push(Header::Vlan { id: v.vlan_id.value() }),
        Some(VlanHeader::Double(v)) => {
            out.push(Header::Vlan {
                id: v.outer.vlan_id.value(),
            });
            out.push(Header::Vlan {
                id: v.inner.vlan_id.value(),
            });
        }
        None => {}
    }
    match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => out.push(Header::Ipv4 {
            src: Ipv4Addr::from(ip.source),
            dst: Ipv4Addr::from(ip.destination),
            ttl: ip.time_to_live,
            dont_fragment: ip.dont_fragment,
            total_len: ip.total_len,
        }),
        Some(NetHeaders::Ipv6(ip, _)) => out.push(Header::Ipv6 {
            src: Ipv6Addr::from(ip.source),
            dst: Ipv6Addr::from(ip.destination),
            hop_limit: ip.hop_limit,
            payload_len: ip.payload_length,
        }),
        None => {}
    }
    let payload = h.payload.slice();
    match &h.transport {
        Some(TransportHeader::Udp(u)) => {
            out.push(Header::Udp {
                sport: u.source_port,
                dport: u.destination_port,
                len: u.length,
            });
            // One level of tunnel: carwash never nests VXLAN.
            if u.destination_port == VXLAN_PORT && payload.len() >= 8 && payload[0] & 0x08 != 0 && depth == 0 {
                out.push(Header::Vxlan {
                    vni: u32::from_be_bytes([0, payload[4], payload[5], payload[6]]),
                });
                describe_into(&payload[8..], out, depth + 1)?;
            }
        }
        Some(TransportHeader::Tcp(t)) => {
            let flags = [
                ("syn", t.syn),
                ("ack", t.ack),
                ("psh", t.psh),
                ("fin", t.fin),
                ("rst", t.rst),
            ]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n)
            .collect();
            let mss = t.options_iterator().find_map(|o| match o {
                Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
                _ => None,
            });
            out.push(Header::Tcp {
                sport: t.source_port,
                dport: t.destination_port,
                flags,
                mss,
                payload_len: payload.len(),
            });
        }
        Some(TransportHeader::Icmpv4(i)) => out.push(match &i.icmp_type {
            Icmpv4Type::EchoRequest(_) => icmp("echo request", None),
            Icmpv4Type::EchoReply(_) => icmp("echo reply", None),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }) => icmp(
                "destination unreachable: fragmentation needed",
                Some((*next_hop_mtu).into()),
            ),
            other => icmp(&format!("{other:?}"), None),
        }),
        Some(TransportHeader::Icmpv6(i)) => out.push(match &i.icmp_type {
            Icmpv6Type::EchoRequest(_) => icmp("echo request", None),
            Icmpv6Type::EchoReply(_) => icmp("echo reply", None),
            Icmpv6Type::PacketTooBig { mtu } => icmp("packet too big", Some(*mtu)),
            other => icmp(&format!("{other:?}"), None),
        }),
        None => {}
    }
    Ok(())
}

fn icmp(message: &str, mtu: Option<u32>) -> Header {
    Header::Icmp {
        message: message.to_string(),
        mtu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::packet::{Flow, Proto, Tunnel, frame, vxlan};

    #[test]
    fn a_vxlan_frame_reads_outer_then_inner() {
        let f = Flow {
            src: "203.0.113.10".parse().unwrap(),
            dst: "198.51.100.10".parse().unwrap(),
            sport: 443,
            dport: 40000,
            proto: Proto::Tcp,
            syn: true,
            mss: Some(1410),
            len: None,
            df: true,
        };
        let t = Tunnel {
            vtep: "10.200.1.10".parse().unwrap(),
            mac: [2, 0, 10, 200, 1, 10],
            host_vtep: "10.200.0.1".parse().unwrap(),
            router_mac: [2, 0, 10, 200, 0, 1],
            vni: 1001,
            sport: 50000,
        };
        let h = describe(&vxlan(&f, &t).unwrap()).unwrap();
        let text: Vec<String> = h.iter().map(|h| h.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "Ethernet 02:00:0a:c8:01:0a → 02:00:0a:c8:00:01",
                "IPv4 10.200.1.10 → 10.200.0.1, ttl 64, DF, length 94",
                "UDP 50000 → 4789, length 74",
                "VXLAN vni 1001",
                "Ethernet 02:00:0a:c8:01:0a → 02:00:0a:c8:00:01",
                "IPv4 203.0.113.10 → 198.51.100.10, ttl 64, DF, length 44",
                "TCP 443 → 40000 [syn], mss 1410, 0 bytes of data",
            ]
        );
        let json = serde_json::to_value(&h[3]).unwrap();
        assert_eq!(json, serde_json::json!({"layer": "vxlan", "vni": 1001}));
    }

    #[test]
    fn icmp_messages_carry_their_mtu() {
        let b = frame(
            &Flow {
                src: "198.51.100.10".parse().unwrap(),
                dst: "203.0.113.10".parse().unwrap(),
                sport: 7,
                dport: 0,
                proto: Proto::Icmp,
                syn: false,
                mss: None,
                len: None,
                df: true,
            },
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
        )
        .unwrap();
        let h = describe(&b).unwrap();
        assert_eq!(h.last().unwrap().to_string(), "ICMP echo request");
    }
}
