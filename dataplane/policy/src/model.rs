//! The serde model of the policy format: one [`Tenant`] per
//! document. Parsing with positions and validation live in the sibling
//! modules, so this stays the plain shape the agent and the lab consume.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::health::Health;

/// How many machines of each role a tenant has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Single,
    Double,
}

impl Lane {
    /// Machines per role: one in a single lane, two in a double lane.
    pub fn machines(self) -> usize {
        match self {
            Lane::Single => 1,
            Lane::Double => 2,
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lane::Single => "single",
            Lane::Double => "double",
        })
    }
}

/// A port class: which machines of the tenant receive a port's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Https,
    Jms,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Class::Https => "https",
            Class::Jms => "jms",
        })
    }
}

/// A machine of the VPC, reached through its VXLAN tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub vtep: Ipv4Addr,
    pub mac: MacAddr,
}

/// An Ethernet address in its usual `02:00:0a:c8:01:0a` notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?} has fewer than 6 octets"))?;
            if p.len() != 2 {
                return Err(format!("MAC address {s:?}: octet {p:?} is not two hex digits"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("MAC address {s:?}: octet {p:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?} has more than 6 octets"));
        }
        Ok(MacAddr(out))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(ParseVisitor::<MacAddr>::new("a MAC address like 02:00:0a:c8:01:0a"))
    }
}

/// Parses a string inside the visitor rather than after reading it: only
/// then do toml and serde_json attach the string's own position to the
/// error (else they blame the enclosing array or object).
struct ParseVisitor<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> ParseVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        ParseVisitor {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: std::str::FromStr<Err: std::fmt::Display>> serde::de::Visitor<'_> for ParseVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

const CIDR: &str = "a network in CIDR notation, like 10.0.0.0/16";

/// `IpNetwork`'s own `Deserialize` parses after reading the string and so
/// loses its position; see [`ParseVisitor`].
fn de_net<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
    d.deserialize_str(ParseVisitor::new(CIDR))
}

struct Net(IpNetwork);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_net(d).map(Net)
    }
}

fn de_nets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNetwork>, D::Error> {
    Ok(Vec::<Net>::deserialize(d)?.into_iter().map(|n| n.0).collect())
}

fn default_classes() -> Vec<Class> {
    vec![Class::Https, Class::Jms]
}
fn default_https() -> Vec<u16> {
    vec![443]
}
fn default_jms() -> Vec<u16> {
    vec![61616]
}
fn default_egress_allow() -> Vec<IpNetwork> {
    vec!["0.0.0.0/0".parse().expect("literal"), "::/0".parse().expect("literal")]
}

/// One `[[allow]]` entry: who may reach the tenant's VIPs, for which classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    #[serde(deserialize_with = "de_net")]
    pub cidr: IpNetwork,
    #[serde(default = "default_classes")]
    pub classes: Vec<Class>,
}

/// The optional `[egress]` table: outbound access through a fixed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    pub snat_ipv4: Ipv4Addr,
    #[serde(default)]
    pub snat_ipv6: Option<std::net::Ipv6Addr>,
    #[serde(default = "default_egress_allow", deserialize_with = "de_nets")]
    pub allow: Vec<IpNetwork>,
}

/// One tenant's policy, as written in `policies/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub name: String,
    pub vni: u32,
    pub lane: Lane,
    pub vips: Vec<IpAddr>,
    #[serde(default = "default_https")]
    pub https_ports: Vec<u16>,
    #[serde(default = "default_jms")]
    pub jms_ports: Vec<u16>,
    #[serde(deserialize_with = "de_nets")]
    pub vpc_cidrs: Vec<IpNetwork>,
    pub connectors: Vec<Backend>,
    pub cores: Vec<Backend>,
    #[serde(default)]
    pub allow: Vec<Allow>,
    #[serde(default)]
    pub egress: Option<Egress>,
    #[serde(default, skip_serializing_if = "Health::is_default")]
    pub health: Health,
}

impl Tenant {
    /// Parses one policy document in TOML: syntax and types only. Use
    /// [`crate::parse_toml`] or [`crate::load_path`] for a validated policy
    /// with file:line errors.
    pub fn from_toml(text: &str) -> Result<Tenant> {
        Ok(toml::from_str(text)?)
    }
}
