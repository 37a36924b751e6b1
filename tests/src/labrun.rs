//! A lab with carwash loaded on its host through the library (the same
//! calls the agent makes): programs attached to `uplink` and `fabric`, the
//! lab's tenants installed. Dropping it detaches everything and takes the
//! lab down.
use std::process::Output;

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode;
use dataplane::Dataplane;
use dataplane::tables::HostParams;
use netlab::lab::{LabConfig, LabGuard};
use netlab::netns::NetNs;

use crate::fabric::ifindex;

pub struct LabRun {
    // Field order: the dataplane (and its links) goes before the lab.
    pub dp: Dataplane,
    pub lab: LabGuard,
    pub host: NetNs,
    pub inet: NetNs,
}

/// MTU of `dev` in the calling thread's namespace.
fn mtu(dev: &str) -> Result<u16> {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{dev}/mtu"))
        .with_context(|| format!("reading the MTU of {dev}"))?;
    Ok(text.trim().parse()?)
}

impl LabRun {
    /// The repository's policies.
    pub fn up() -> Result<LabRun> {
        LabRun::up_with(&LabConfig::unique())
    }

    /// A lab of the caller's choosing; tenant ids count from 1 in the
    /// lab's tenant order.
    pub fn up_with(cfg: &LabConfig) -> Result<LabRun> {
        let lab = LabGuard::up(cfg)?;
        let host = NetNs::open(&lab.host)?;
        let inet = NetNs::open(&lab.inet)?;
        let mut dp = Dataplane::load(None)?;
        let (uplink, fabric, fabric_mtu) =
            host.enter(|| -> Result<_> { Ok((ifindex("uplink")?, ifindex("fabric")?, mtu("fabric")?)) })??;
        dp.set_host(&HostParams {
            vtep: lab.host_vtep,
            router_mac: lab.router_mac.0,
            fabric_ifindex: fabric,
            fabric_mtu,
            uplink_ifindex: uplink,
            snat_ports: dataplane::tables::DEFAULT_SNAT_PORTS,
        })?;
        for (i, t) in lab.tenants.iter().enumerate() {
            dp.install_tenant(i as u32 + 1, &t.policy)?;
        }
        host.enter(|| -> Result<()> {
            dp.attach_uplink("uplink", XdpMode::Default)?;
            dp.attach_fabric("fabric", XdpMode::Default)?;
            Ok(())
        })??;
        Ok(LabRun { dp, lab, host, inet })
    }

    /// The id tenant `name` was installed with.
    pub fn tenant_id(&self, name: &str) -> Option<u32> {
        self.lab
            .tenants
            .iter()
            .position(|t| t.name == name)
            .map(|i| i as u32 + 1)
    }

    /// Runs a command in the internet namespace; its output, whatever the
    /// exit status.
    pub fn from_internet(&self, args: &[&str]) -> Result<Output> {
        self.inet.exec(args)
    }

    /// `curl` from the internet namespace with source `src`; body on success.
    pub fn curl(&self, src: &str, url: &str, timeout_s: u32) -> Result<Vec<u8>> {
        let t = timeout_s.to_string();
        let out = self.from_internet(&["curl", "-sk", "--max-time", &t, "--interface", src, url])?;
        if !out.status.success() {
            bail!(
                "curl {url} from {src}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }
}
