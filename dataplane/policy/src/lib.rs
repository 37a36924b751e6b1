//! Tenant policy files (`policies/<name>.toml`): the model of DESIGN.md's
//! policy format and its parsing. No BPF here, so the lab and the tests can
//! read the same files the agent does.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

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

/// A port class: which machines of the tenant receive a port's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Https,
    Jms,
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
                return Err(format!(
                    "MAC address {s:?}: octet {p:?} is not two hex digits"
                ));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC address {s:?}: octet {p:?} is not hex"))?;
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
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
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
    vec!["0.0.0.0/0".parse().expect("literal")]
}

/// One `[[allow]]` entry: who may reach the tenant's VIPs, for which classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
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
    #[serde(default = "default_egress_allow")]
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
    pub vpc_cidrs: Vec<IpNetwork>,
    pub connectors: Vec<Backend>,
    pub cores: Vec<Backend>,
    #[serde(default)]
    pub allow: Vec<Allow>,
    #[serde(default)]
    pub egress: Option<Egress>,
}

impl Tenant {
    /// Parses one policy document in TOML.
    pub fn from_toml(text: &str) -> Result<Tenant> {
        Ok(toml::from_str(text)?)
    }
}

/// Reads every `*.toml` of a directory (or one file), sorted by file name.
pub fn read_dir_or_file(path: &Path) -> Result<Vec<(PathBuf, Tenant)>> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
        {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let t = Tenant::from_toml(&text).with_context(|| format!("{}", p.display()))?;
            Ok((p, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_policies_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let set = read_dir_or_file(&dir).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].1.name, "acme");
        assert_eq!(set[0].1.lane, Lane::Double);
        assert_eq!(set[1].1.connectors.len(), 1);
    }

    #[test]
    fn mac_roundtrip_and_errors() {
        let m: MacAddr = "02:00:0a:c8:01:0a".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:c8:01:0a");
        assert!("02:00:0a:c8:01".parse::<MacAddr>().is_err());
        assert!("02:00:0a:c8:01:0a:00".parse::<MacAddr>().is_err());
        assert!("zz:00:0a:c8:01:0a".parse::<MacAddr>().is_err());
    }
}
