//! The rules a policy set must follow before any of it reaches the maps:
//! per tenant (ranges, machine counts, well-formed addresses) and across the
//! set (nothing that steers traffic may be claimed twice). Every rule is
//! checked on every document, so one run lists everything there is to fix.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use crate::digest::PolicySet;
use crate::document::Document;
use crate::error::{PolicyError, PolicyErrors};

/// The largest VNI: VXLAN carries 24 bits.
pub const MAX_VNI: u32 = 0xFF_FFFF;

/// Validates parsed documents as one set: each on its own, then against each
/// other. Overlapping `vpc_cidrs` are fine (tenants are told apart by VNI).
pub fn validate_set(docs: &[Document]) -> Result<PolicySet, PolicyErrors> {
    let mut errors = Vec::new();
    for doc in docs {
        check_tenant(doc, &mut errors);
    }
    check_claims(docs, &mut errors);
    if errors.is_empty() {
        Ok(PolicySet::new(docs.iter().map(|d| d.tenant.clone()).collect()))
    } else {
        Err(PolicyErrors::sorted(errors))
    }
}

fn err(doc: &Document, field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    let field = field.into();
    let (line, column) = doc.positions.locate(&field);
    PolicyError {
        file: doc.file.clone(),
        line,
        column,
        field,
        message: message.into(),
    }
}

/// Where a field is, for messages pointing at another claim.
fn place(doc: &Document, field: &str) -> String {
    match doc.positions.locate(field) {
        (0, _) => format!("{}, {field}", doc.file.display()),
        (line, column) => format!("{}:{line}:{column}, {field}", doc.file.display()),
    }
}

/// `[a-z0-9][a-z0-9-]{0,31}`: it becomes part of map keys, interface and
/// namespace names, so it stays short and shell-safe.
pub fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut chars = name.chars();
    name.len() <= 32 && chars.next().is_some_and(ok) && chars.all(|c| ok(c) || c == '-')
}

/// Why an address cannot stand for one host, if it cannot.
fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

/// A network written with host bits set is almost always a typo for a
/// different prefix length or address, so it is refused, not truncated.
fn check_network(doc: &Document, field: &str, net: &IpNetwork, errors: &mut Vec<PolicyError>) {
    if net.ip() != net.network() {
        errors.push(err(
            doc,
            field,
            format!(
                "{net} has host bits set; the network is {}/{}",
                net.network(),
                net.prefix()
            ),
        ));
    }
}

pub(crate) fn check_tenant(doc: &Document, errors: &mut Vec<PolicyError>) {
    let t = &doc.tenant;

    if !valid_name(&t.name) {
        errors.push(err(
            doc,
            "name",
            format!(
                "{:?} is not a valid tenant name: 1 to 32 lowercase letters, digits \
                 and '-', starting with a letter or digit",
                t.name
            ),
        ));
    }
    // Without a stem (a document pushed under no name) there is nothing to
    // compare against.
    let stem = doc.file.file_stem().map(|s| s.to_string_lossy());
    if let Some(stem) = stem.filter(|s| !s.is_empty())
        && t.name != *stem
    {
        errors.push(err(
            doc,
            "name",
            format!(
                "name {:?} does not match the file name: {} must hold name = {:?}",
                t.name,
                doc.file
                    .file_name()
                    .map_or_else(|| doc.file.display().to_string(), |f| f.to_string_lossy().into()),
                stem
            ),
        ));
    }

    if t.vni == 0 || t.vni > MAX_VNI {
        errors.push(err(
            doc,
            "vni",
            format!("{} is out of range: a VXLAN VNI is 1..={MAX_VNI}", t.vni),
        ));
    }

    let n = t.lane.machines();
    for (role, one, list) in [("connectors", "connector", &t.connectors), ("cores", "core", &t.cores)] {
        if list.len() != n {
            errors.push(err(
                doc,
                role,
                format!(
                    "a {} lane needs exactly {n} {}, found {}",
                    t.lane,
                    if n == 1 { one } else { role },
                    list.len()
                ),
            ));
        }
    }

    if t.vips.is_empty() {
        errors.push(err(doc, "vips", "at least one VIP is needed"));
    }
    for (i, vip) in t.vips.iter().enumerate() {
        let field = format!("vips[{i}]");
        if let Some(why) = not_unicast(*vip) {
            errors.push(err(doc, &field, format!("VIP {vip} is {why}")));
        }
        // Replies are told from outbound traffic by their inner source: a
        // VIP inside the VPC's own space would be both.
        if let Some(c) = t.vpc_cidrs.iter().find(|c| c.contains(*vip)) {
            errors.push(err(
                doc,
                &field,
                format!("VIP {vip} lies inside the tenant's own vpc_cidrs entry {c}"),
            ));
        }
    }

    check_ports(doc, errors);

    if t.vpc_cidrs.is_empty() {
        errors.push(err(
            doc,
            "vpc_cidrs",
            "at least one CIDR is needed: the VPC's private address space",
        ));
    }
    for (i, c) in t.vpc_cidrs.iter().enumerate() {
        check_network(doc, &format!("vpc_cidrs[{i}]"), c, errors);
    }

    for (i, a) in t.allow.iter().enumerate() {
        check_network(doc, &format!("allow[{i}].cidr"), &a.cidr, errors);
        if a.classes.is_empty() {
            errors.push(err(
                doc,
                format!("allow[{i}].classes"),
                "empty: the entry would allow nothing; list \"https\" and/or \"jms\", \
                 or leave classes out for both",
            ));
        }
        let mut seen = HashSet::new();
        for (j, c) in a.classes.iter().enumerate() {
            if !seen.insert(c) {
                errors.push(err(
                    doc,
                    format!("allow[{i}].classes[{j}]"),
                    format!("class \"{c}\" is listed twice"),
                ));
            }
        }
    }

    check_backends(doc, errors);
    check_health(doc, errors);

    if let Some(e) = &t.egress {
        if let Some(why) = not_unicast(IpAddr::V4(e.snat_ipv4)) {
            errors.push(err(
                doc,
                "egress.snat_ipv4",
                format!("egress IP {} is {why}", e.snat_ipv4),
            ));
        }
        if let Some(v6) = e.snat_ipv6
            && let Some(why) = not_unicast(IpAddr::V6(v6))
        {
            errors.push(err(doc, "egress.snat_ipv6", format!("egress IP {v6} is {why}")));
        }
        if e.allow.is_empty() {
            errors.push(err(
                doc,
                "egress.allow",
                "empty: the tenant could reach nothing; list destinations, or remove \
                 [egress] to deny outbound access",
            ));
        }
        for (i, c) in e.allow.iter().enumerate() {
            check_network(doc, &format!("egress.allow[{i}]"), c, errors);
        }
    }
}

fn check_health(doc: &Document, errors: &mut Vec<PolicyError>) {
    let h = &doc.tenant.health;
    if h.interval.0 == 0 {
        errors.push(err(doc, "health.interval", "must be longer than 0s"));
    }
    if h.timeout.0 == 0 {
        errors.push(err(doc, "health.timeout", "must be longer than 0s"));
    } else if h.timeout > h.interval {
        // A probe still waiting when the next one is due would make two
        // probes of one machine overlap and their results race.
        errors.push(err(
            doc,
            "health.timeout",
            format!("{} is longer than the interval ({})", h.timeout, h.interval),
        ));
    }
    for (name, n) in [("health.rise", h.rise), ("health.fall", h.fall)] {
        if n == 0 || n > 100 {
            errors.push(err(doc, name, format!("{n} is not a count of probes from 1 to 100")));
        }
    }
}

fn check_ports(doc: &Document, errors: &mut Vec<PolicyError>) {
    let t = &doc.tenant;
    for (name, list) in [("https_ports", &t.https_ports), ("jms_ports", &t.jms_ports)] {
        let mut seen: HashMap<u16, usize> = HashMap::new();
        for (i, &p) in list.iter().enumerate() {
            let field = format!("{name}[{i}]");
            if p == 0 {
                errors.push(err(doc, field, "port 0 is not a port"));
            } else if let Some(j) = seen.get(&p) {
                errors.push(err(doc, field, format!("port {p} is listed twice (also {name}[{j}])")));
            } else {
                seen.insert(p, i);
            }
        }
    }
    // A port leads to one class of machine; the error goes to whichever
    // list the file spells out (the other may be the default).
    let mut reported = HashSet::new();
    for (j, &p) in t.jms_ports.iter().enumerate() {
        let Some(h) = t.https_ports.iter().position(|&x| x == p) else {
            continue;
        };
        if p == 0 || !reported.insert(p) {
            continue;
        }
        let jms = format!("jms_ports[{j}]");
        let https = format!("https_ports[{h}]");
        let field = if doc.positions.get(&jms).is_none() && doc.positions.get(&https).is_some() {
            https
        } else {
            jms
        };
        errors.push(err(
            doc,
            field,
            format!("port {p} is both an https and a jms port; a port leads to one class of machine"),
        ));
    }
}

fn check_backends(doc: &Document, errors: &mut Vec<PolicyError>) {
    let t = &doc.tenant;
    let mut vteps: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut macs: HashMap<[u8; 6], String> = HashMap::new();
    for (role, list) in [("connectors", &t.connectors), ("cores", &t.cores)] {
        for (i, b) in list.iter().enumerate() {
            let at = format!("{role}[{i}]");
            if let Some(why) = not_unicast(IpAddr::V4(b.vtep)) {
                errors.push(err(
                    doc,
                    format!("{at}.vtep"),
                    format!("VTEP {} is {why}; a VTEP is one machine's underlay address", b.vtep),
                ));
            }
            // Each machine terminates its own tunnel: two on one VTEP
            // would make the per-machine choice (hashing, standby) a lie.
            if let Some(first) = vteps.get(&b.vtep) {
                errors.push(err(
                    doc,
                    format!("{at}.vtep"),
                    format!(
                        "VTEP {} is used twice in this tenant (also {})",
                        b.vtep,
                        place(doc, &format!("{first}.vtep"))
                    ),
                ));
            } else {
                vteps.insert(b.vtep, at.clone());
            }

            let m = b.mac.0;
            if m == [0; 6] {
                errors.push(err(doc, format!("{at}.mac"), "the all-zero MAC is not a machine"));
            } else if m[0] & 1 == 1 {
                errors.push(err(
                    doc,
                    format!("{at}.mac"),
                    format!(
                        "{} is a multicast MAC (low bit of the first octet set); a machine \
                         answers to a unicast MAC",
                        b.mac
                    ),
                ));
            }
            // All of a tenant's machines share one VNI, i.e. one L2 segment.
            if let Some(first) = macs.get(&m) {
                errors.push(err(
                    doc,
                    format!("{at}.mac"),
                    format!(
                        "MAC {} is used twice in this tenant (also {})",
                        b.mac,
                        place(doc, &format!("{first}.mac"))
                    ),
                ));
            } else {
                macs.insert(m, at);
            }
        }
    }
}

/// Who first claimed a name, number or address.
struct Claim<'a> {
    doc: &'a Document,
    field: String,
}

impl Claim<'_> {
    fn describe(&self) -> String {
        format!("tenant {:?} ({})", self.doc.tenant.name, place(self.doc, &self.field))
    }
}

fn check_claims(docs: &[Document], errors: &mut Vec<PolicyError>) {
    let mut names: HashMap<&str, Claim> = HashMap::new();
    let mut vnis: HashMap<u32, Claim> = HashMap::new();
    for doc in docs {
        let t = &doc.tenant;
        if let Some(first) = names.get(t.name.as_str()) {
            errors.push(err(
                doc,
                "name",
                format!("tenant name {:?} is already used by {}", t.name, first.describe()),
            ));
        } else {
            names.insert(
                &t.name,
                Claim {
                    doc,
                    field: "name".into(),
                },
            );
        }
        if let Some(first) = vnis.get(&t.vni) {
            errors.push(err(
                doc,
                "vni",
                format!("VNI {} is already used by {}", t.vni, first.describe()),
            ));
        } else {
            vnis.insert(
                t.vni,
                Claim {
                    doc,
                    field: "vni".into(),
                },
            );
        }
    }

    let mut vips: HashMap<IpAddr, Claim> = HashMap::new();
    for doc in docs {
        for (i, vip) in doc.tenant.vips.iter().enumerate() {
            let field = format!("vips[{i}]");
            match vips.get(vip) {
                Some(first) if std::ptr::eq(first.doc, doc) => errors.push(err(
                    doc,
                    &field,
                    format!("VIP {vip} is listed twice (also {})", place(doc, &first.field)),
                )),
                Some(first) => errors.push(err(
                    doc,
                    &field,
                    format!("VIP {vip} is already claimed by {}", first.describe()),
                )),
                None => {
                    vips.insert(*vip, Claim { doc, field });
                }
            }
        }
    }

    let mut vteps: HashMap<Ipv4Addr, Claim> = HashMap::new();
    for doc in docs {
        let t = &doc.tenant;
        let machines = t
            .connectors
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("connectors[{i}]"), b));
        let machines = machines.chain(t.cores.iter().enumerate().map(|(i, b)| (format!("cores[{i}]"), b)));
        for (at, b) in machines {
            let field = format!("{at}.vtep");
            match vteps.get(&b.vtep) {
                // Within one tenant check_backends has said it already.
                Some(first) if std::ptr::eq(first.doc, doc) => {}
                // The VNI a packet claims is checked against its outer
                // source: a VTEP shared by two tenants could speak for both.
                Some(first) => errors.push(err(
                    doc,
                    &field,
                    format!("VTEP {} is already a machine of {}", b.vtep, first.describe()),
                )),
                None => {
                    vteps.insert(b.vtep, Claim { doc, field });
                }
            }
        }
    }

    // Replies to outbound flows are recognised by their destination being
    // an egress IP; if that were also a VIP, or another tenant's egress IP,
    // a reply could be handed to the wrong tenant.
    let mut egress: HashMap<IpAddr, Claim> = HashMap::new();
    for doc in docs {
        let Some(e) = &doc.tenant.egress else {
            continue;
        };
        let ips = [
            ("egress.snat_ipv4", Some(IpAddr::V4(e.snat_ipv4))),
            ("egress.snat_ipv6", e.snat_ipv6.map(IpAddr::V6)),
        ];
        for (field, ip) in ips {
            let Some(ip) = ip else { continue };
            if let Some(vip) = vips.get(&ip) {
                let whose = if std::ptr::eq(vip.doc, doc) {
                    format!("this tenant's VIPs ({})", place(doc, &vip.field))
                } else {
                    format!("the VIPs of {}", vip.describe())
                };
                errors.push(err(
                    doc,
                    field,
                    format!("egress IP {ip} is one of {whose}; the egress IP must be an address of its own"),
                ));
            } else if let Some(first) = egress.get(&ip) {
                errors.push(err(
                    doc,
                    field,
                    format!("egress IP {ip} is already the egress IP of {}", first.describe()),
                ));
            } else {
                egress.insert(
                    ip,
                    Claim {
                        doc,
                        field: field.into(),
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "acme", "0day", "a-b-c", &"a".repeat(32)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "-a", "Acme", "a_b", "a.b", "ä", &"a".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
