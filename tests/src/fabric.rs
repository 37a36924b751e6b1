//! A namespace that stands in for the carwash host's fabric side during
//! BPF_PROG_TEST_RUN: the programs ask the kernel's FIB for the next hop to
//! a VTEP, and the FIB consulted is the one of the thread running the test.
//! So fixtures run inside this namespace, where `fabric` has the host VTEP
//! and a permanent neighbour entry (a known MAC) for every backend VTEP.
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use carwash_policy::{MacAddr, PolicySet, Tenant};
use dataplane::Dataplane;
use dataplane::tables::HostParams;
use netlab::netns::{NetNs, veth_pair};

pub const HOST_VTEP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const FABRIC_MAC: [u8; 6] = [0x02, 0xfa, 0xb0, 0, 0, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xc8, 0x00, 0x01];
pub const FABRIC_MTU: u16 = 1500;
pub const UPLINK_MAC: [u8; 6] = [0x02, 0x0b, 0x11, 0, 0, 0x01];
/// The internet-side router the uplink's default routes point to.
pub const INTERNET_ROUTER_MAC: [u8; 6] = [0x02, 0x0b, 0x11, 0, 0, 0x02];

/// The next-hop MAC the fixture namespace resolves a VTEP to.
pub fn vtep_mac(vtep: Ipv4Addr) -> [u8; 6] {
    let o = vtep.octets();
    [0x02, 0x01, o[0], o[1], o[2], o[3]]
}

pub struct FabricNs {
    pub ns: NetNs,
    pub fabric_ifindex: u32,
    pub uplink_ifindex: u32,
}

impl FabricNs {
    /// A namespace whose `fabric` reaches every VTEP of `tenants`.
    pub fn new(tenants: &[Tenant]) -> Result<FabricNs> {
        let ns = NetNs::new("cwt-fab")?;
        veth_pair(&ns, "fabric", Some(MacAddr(FABRIC_MAC)), &ns, "fpeer", None)?;
        ns.addr("fabric", "10.200.0.1/16")?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        for t in tenants {
            for b in t.connectors.iter().chain(&t.cores) {
                ns.neigh("fabric", &b.vtep.to_string(), MacAddr(vtep_mac(b.vtep)))?;
            }
        }
        // The uplink: the internet behind a router with a known MAC.
        veth_pair(&ns, "uplink", Some(MacAddr(UPLINK_MAC)), &ns, "upeer", None)?;
        ns.addr("uplink", "100.64.0.1/30")?;
        ns.addr("uplink", "fd00:64::1/64")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        ns.neigh("uplink", "100.64.0.2", MacAddr(INTERNET_ROUTER_MAC))?;
        ns.neigh("uplink", "fd00:64::2", MacAddr(INTERNET_ROUTER_MAC))?;
        ns.route("default", "100.64.0.2", Some("uplink"))?;
        ns.route("default", "fd00:64::2", Some("uplink"))?;
        let fabric_ifindex = ns.enter(|| ifindex("fabric"))??;
        let uplink_ifindex = ns.enter(|| ifindex("uplink"))??;
        Ok(FabricNs {
            ns,
            fabric_ifindex,
            uplink_ifindex,
        })
    }

    pub fn host_params(&self) -> HostParams {
        HostParams {
            vtep: HOST_VTEP,
            router_mac: ROUTER_MAC,
            fabric_ifindex: self.fabric_ifindex,
            fabric_mtu: FABRIC_MTU,
            uplink_ifindex: self.uplink_ifindex,
            snat_ports: dataplane::tables::DEFAULT_SNAT_PORTS,
        }
    }
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("if_nametoindex({name})"));
    }
    Ok(i)
}

/// The repository's example policies.
pub fn repo_policies() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    carwash_policy::load_path(&dir).expect("the repository's policies are valid")
}

/// A loaded dataplane with the host settings of `fab` and `tenants`
/// installed with ids 1, 2, ... in order.
pub fn loaded(fab: &FabricNs, tenants: &[Tenant]) -> Result<Dataplane> {
    loaded_at(fab, tenants, None)
}

/// [`loaded`], with the maps pinned under `pin_dir` when one is given
/// (where the `carwash` read commands find them).
pub fn loaded_at(fab: &FabricNs, tenants: &[Tenant], pin_dir: Option<&Path>) -> Result<Dataplane> {
    let mut dp = Dataplane::load(pin_dir)?;
    dp.set_host(&fab.host_params())?;
    for (i, t) in tenants.iter().enumerate() {
        dp.install_tenant(i as u32 + 1, t)?;
    }
    Ok(dp)
}
