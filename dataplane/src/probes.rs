//! The dataplane's part of the health probes: the TC program that
//! encapsulates them (`programs::PROBE`). `PROBE_HOST`, which tells the
//! fabric program which replies are theirs, is a host setting
//! (`crate::maps::host`).

use anyhow::{Context, Result, anyhow};
use aya::programs::{SchedClassifier, TcAttachType, tc};
use dataplane_common::{
    maps, programs,
    types::{BenchTunnel, BenchTunnelKey},
};

use crate::Dataplane;

impl Dataplane {
    /// Loads the probe program and attaches it to `iface`'s egress. The
    /// attachment is this process's (a TCX link): it ends with the agent,
    /// and so do the probes it serves.
    pub fn attach_probe(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(programs::PROBE, iface, TcAttachType::Egress)
    }

    /// Loads the program that sends back out of the fabric the resets the
    /// fabric program writes in place of probes' SYN-ACKs, and attaches it
    /// to the fabric `iface`'s ingress; a process's attachment, like the
    /// probe program's.
    pub fn attach_probe_reset(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(programs::PROBE_RESET, iface, TcAttachType::Ingress)
    }

    /// Loads TC program `name` (once) and attaches it to `iface` on `side`,
    /// for as long as this process lives.
    fn attach_tc(&mut self, name: &str, iface: &str, side: TcAttachType) -> Result<()> {
        // Kernels without TCX take the program through the clsact qdisc;
        // with TCX (6.6 on) the qdisc is unused, and one already there is
        // fine.
        let _ = tc::qdisc_add_clsact(iface);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        prog.attach(iface, side)
            .with_context(|| format!("attaching {name} to {iface} ({side:?})"))?;
        Ok(())
    }
}

impl Dataplane {
    /// Benchmarks only: attaches the responder's programs to its
    /// collect-metadata VXLAN device `iface` (in the calling thread's
    /// namespace): frames to the machines' MACs taken as its own, answers
    /// put back into their tenants' tunnels by `BENCH_TUNNELS`. Attached
    /// for as long as this value lives.
    pub fn attach_bench_tunnel(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(programs::BENCH_TUNNEL_IN, iface, TcAttachType::Ingress)?;
        self.attach_tc(programs::BENCH_TUNNEL_OUT, iface, TcAttachType::Egress)
    }

    /// Tests only: on the fabric `iface`'s ingress, ahead of the agent's
    /// `carwash_probe_reset`, a program that drops the resets the fabric
    /// program wrote (attached for as long as this value lives).
    pub fn attach_bench_lose_resets(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(programs::BENCH_LOSE_RESETS, iface, TcAttachType::Ingress)
    }

    /// Benchmarks only: the tunnel of the answers from `key`.
    pub fn set_bench_tunnel(&mut self, key: BenchTunnelKey, tunnel: BenchTunnel) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::BENCH_TUNNELS)
            .ok_or_else(|| anyhow!("no map {}", maps::BENCH_TUNNELS))?;
        aya::maps::HashMap::<_, BenchTunnelKey, BenchTunnel>::try_from(map)?.insert(key, tunnel, 0)?;
        Ok(())
    }
}
