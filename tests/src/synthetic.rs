//! Synthetic tenants for scale tests and benchmarks: tenant `i` has its own
//! VIPs, VTEPs inside the fabric's /16, and ten allow prefixes (eight IPv4,
//! two IPv6) that no other tenant shares.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use carwash_policy::{Allow, Backend, Class, Lane, MacAddr, Tenant};

fn vtep(i: u32, k: u32) -> Ipv4Addr {
    let n = 1024 + i * 4 + k;
    Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8)
}

pub fn vip4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

pub fn vip6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// A source inside tenant `i`'s first IPv4 prefix.
pub fn allowed4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, (i >> 8) as u8, i as u8)
}

/// A source inside tenant `i`'s first IPv6 prefix.
pub fn allowed6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xa000, i as u16, 0, 0, 0, 5)
}

fn backend(i: u32, k: u32) -> Backend {
    let v = vtep(i, k);
    let o = v.octets();
    Backend {
        vtep: v,
        mac: MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]]),
    }
}

pub fn tenant(i: u32) -> Tenant {
    let mut allow: Vec<Allow> = (0..8u32)
        .map(|k| Allow {
            cidr: format!("172.{}.{}.{}/32", 16 + k, (i >> 8) as u8, i as u8)
                .parse()
                .unwrap(),
            classes: vec![Class::Https, Class::Jms],
        })
        .collect();
    for net in [0xa000u16, 0xb000] {
        allow.push(Allow {
            cidr: format!("2001:db8:{net:x}:{:x}::/64", i as u16).parse().unwrap(),
            classes: vec![Class::Https, Class::Jms],
        });
    }
    Tenant {
        name: format!("t{i}"),
        vni: 100_000 + i,
        lane: Lane::Double,
        vips: vec![IpAddr::V4(vip4(i)), IpAddr::V6(vip6(i))],
        https_ports: vec![443],
        jms_ports: vec![61616],
        vpc_cidrs: vec!["10.101.0.0/16".parse().unwrap()],
        connectors: vec![backend(i, 0), backend(i, 1)],
        cores: vec![backend(i, 2), backend(i, 3)],
        allow,
        egress: None,
        health: Default::default(),
    }
}
