//! Loading the eBPF object, pinning its maps, attaching its programs, and
//! running them on packets (`BPF_PROG_TEST_RUN`).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, TestRunResult, Xdp, XdpMode, xdp::XdpLinkId},
};
use dataplane_common::{CounterBlock, maps, programs};

use crate::counters::Counters;

/// The eBPF object built from `dataplane-ebpf`, embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));

/// Every map of the object, for pinning.
pub const ALL_MAPS: &[&str] = &[
    maps::COUNTERS,
    maps::CONFIG,
    maps::ADDR_FILTER,
    maps::ADDRS,
    maps::SERVICES,
    maps::NEXT_HOPS,
    maps::VNIS,
    maps::TENANT_NAMES,
    maps::META,
    maps::TENANTS,
    maps::TENANT_STATS,
    maps::ALLOW_V4,
    maps::ALLOW_V6,
];

/// Where a map lives under a pin directory.
pub fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

/// A loaded eBPF object.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the object and verifies every program. With `pin_dir`, each map
    /// is pinned at `pin_dir/maps/NAME`, and a map already pinned there is
    /// reused instead of created, so state survives a reload.
    pub fn load(pin_dir: Option<&Path>) -> Result<Dataplane> {
        let mut loader = EbpfLoader::new();
        if let Some(dir) = pin_dir {
            let maps_dir = dir.join("maps");
            std::fs::create_dir_all(&maps_dir)
                .with_context(|| format!("creating pin directory {}", maps_dir.display()))?;
            for name in ALL_MAPS {
                loader.map_pin_path(name, map_pin(dir, name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
        for name in [programs::UPLINK, programs::FABRIC, programs::BENCH_PASS] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        Ok(Dataplane { ebpf })
    }

    /// The XDP program `name` (see [`programs`]).
    pub fn xdp(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Attaches the uplink program to `iface` (an interface of the calling
    /// thread's network namespace). The link lives as long as `self`.
    pub fn attach_uplink(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.xdp_mut(programs::UPLINK)?
            .attach(iface, mode)
            .with_context(|| format!("attaching {} to {iface}", programs::UPLINK))
    }

    /// Attaches the fabric program to `iface`.
    pub fn attach_fabric(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.xdp_mut(programs::FABRIC)?
            .attach(iface, mode)
            .with_context(|| format!("attaching {} to {iface}", programs::FABRIC))
    }

    /// Runs program `name` once on `packet` through `BPF_PROG_TEST_RUN`;
    /// returns the verdict and the packet as the program left it.
    pub fn run(&self, name: &str, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        // Room for the largest encapsulation the programs add.
        let mut out = vec![0u8; packet.len() + 256];
        let res = self.test_run(name, packet, Some(&mut out), 1)?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// `BPF_PROG_TEST_RUN` with `repeat` runs; for benchmarks.
    pub fn test_run(&self, name: &str, packet: &[u8], out: Option<&mut [u8]>, repeat: u32) -> Result<TestRunResult> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = out;
        opts.repeat = repeat;
        self.xdp(name)?
            .test_run(opts)
            .with_context(|| format!("test run of {name}"))
    }

    /// The counters of program `side` (`SIDE_UPLINK`, `SIDE_FABRIC`),
    /// summed over CPUs.
    pub fn counters(&self, side: u32) -> Result<Counters> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or_else(|| anyhow!("no map {}", maps::COUNTERS))?;
        Counters::read(&PerCpuArray::<_, CounterBlock>::try_from(map)?, side)
    }
}

/// The counters of program `side`, read from the pinned map, with or
/// without an agent.
pub fn pinned_counters(pin_dir: &Path, side: u32) -> Result<Counters> {
    let path = map_pin(pin_dir, maps::COUNTERS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = aya::maps::Map::PerCpuArray(data);
    Counters::read(&PerCpuArray::<_, CounterBlock>::try_from(map)?, side)
}
