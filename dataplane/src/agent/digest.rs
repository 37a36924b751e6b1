//! The policy set digest of `carwash_policy::PolicySet::digest` (SHA-256 of
//! the canonical JSON: the tenants sorted by name, compact serde_json),
//! computed from each tenant's canonical JSON kept between applies and with
//! a hardware-accelerated SHA-256, so that a one-tenant change at 10,000
//! tenants costs hashing, not re-serializing everything. The tests check
//! that it equals the policy crate's digest.
use carwash_policy::Tenant;
use sha2::{Digest, Sha256};

/// One tenant as it appears in the canonical JSON.
pub fn tenant_json(t: &Tenant) -> String {
    serde_json::to_string(t).expect("the policy model always serializes")
}

/// The digest of a set whose tenants' canonical JSON, sorted by tenant
/// name, is `jsons`.
pub fn set_digest<'a>(jsons: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    h.update(b"[");
    for (i, j) in jsons.into_iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(j.as_bytes());
    }
    h.update(b"]");
    hex(&h.finalize())
}

/// The digest of the set of one tenant.
pub fn tenant_digest_of_json(json: &str) -> String {
    set_digest([json])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use carwash_policy::PolicySet;

    fn tenant(name: &str, vni: u32) -> Tenant {
        Tenant::from_toml(&format!(
            "name = \"{name}\"\nvni = {vni}\nlane = \"single\"\nvips = [\"203.0.113.{vni}\"]\nvpc_cidrs = [\"10.0.0.0/16\"]\nconnectors = [{{ vtep = \"10.200.{vni}.1\", mac = \"02:00:00:00:00:01\" }}]\ncores = [{{ vtep = \"10.200.{vni}.2\", mac = \"02:00:00:00:00:02\" }}]\n[[allow]]\ncidr = \"198.51.100.0/24\"\n[egress]\nsnat_ipv4 = \"203.0.113.{}\"\n",
            vni + 100
        ))
        .unwrap()
    }

    #[test]
    fn equals_the_policy_crate_digest() {
        let empty = PolicySet::default();
        assert_eq!(set_digest([]), empty.digest());
        let set = PolicySet::new(vec![tenant("b", 2), tenant("a", 1), tenant("c", 3)]);
        let jsons: Vec<String> = set.tenants.iter().map(tenant_json).collect();
        assert_eq!(set_digest(jsons.iter().map(String::as_str)), set.digest());
        let one = PolicySet::new(vec![tenant("a", 1)]);
        assert_eq!(tenant_digest_of_json(&tenant_json(&one.tenants[0])), one.digest());
    }
}
