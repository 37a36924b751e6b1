//! The dataplane's part of the health probes: the TC program that
//! encapsulates them (`programs::PROBE`). `PROBE_HOST`, which tells the
//! fabric program which replies are theirs, is a host setting
//! (`crate::maps::host`).

use anyhow::{Context, Result, anyhow};
use aya::programs::{SchedClassifier, TcAttachType, tc};
use dataplane_common::programs;

use crate::Dataplane;

impl Dataplane {
    /// Loads the probe program and attaches it to `iface`'s egress. The
    /// attachment is this process's (a TCX link): it ends with the agent,
    /// and so do the probes it serves.
    pub fn attach_probe(&mut self, iface: &str) -> Result<()> {
        // Kernels without TCX take the program through the clsact qdisc;
        // with TCX (6.6 on) the qdisc is unused, and one already there is
        // fine.
        let _ = tc::qdisc_add_clsact(iface);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(programs::PROBE)
            .ok_or_else(|| anyhow!("program {} missing from the eBPF object", programs::PROBE))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {} (verifier)", programs::PROBE))?;
        }
        prog.attach(iface, TcAttachType::Egress)
            .with_context(|| format!("attaching {} to {iface} (egress)", programs::PROBE))?;
        Ok(())
    }
}
