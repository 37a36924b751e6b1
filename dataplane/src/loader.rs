//! Loading the eBPF object, pinning its maps, attaching its programs, and
//! running them on packets (`BPF_PROG_TEST_RUN`).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use anyhow::{bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        RawTracePoint, TestRun, TestRunOptions, TestRunResult, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        raw_trace_point::RawTracePointLinkId,
        xdp::{XdpLink, XdpLinkId},
    },
};
use dataplane_common::{
    CounterBlock, LAYOUT_VERSION, maps, programs,
    types::{CT_DEFAULT_ENTRIES, Meta},
};

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
    maps::BACKEND_HOPS,
    maps::VNIS,
    maps::TENANT_NAMES,
    maps::HEALTH,
    maps::META,
    maps::TENANTS,
    maps::TENANT_STATS,
    maps::ALLOW_V4,
    maps::ALLOW_V6,
    maps::CONNTRACK,
    maps::CT_EVICT,
    maps::CT_EVICT_CURSOR,
    maps::JUMPS,
    maps::HANDOFF,
    maps::FLEET,
    maps::FLEET_STATS,
    maps::GENERATION,
    maps::REDIRECT_ERRORS,
    maps::EVENT_BUCKETS,
    maps::EVENT_STATS,
    maps::EVENT_CONFIG,
    maps::DENY_CACHE,
];

/// How much the programs log through aya-log (`ebpf_log` in the host
/// configuration). Off by default: then no log statement runs at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum EbpfLog {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// The default capacity of the connection-tracking table
/// (`[conntrack] max_entries`); see [`CT_DEFAULT_ENTRIES`].
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = CT_DEFAULT_ENTRIES;

/// Every program of the object: the attached ones, the tail-called ones,
/// the benchmark yardstick.
fn all_programs() -> Vec<&'static str> {
    let mut all = vec![
        programs::UPLINK,
        programs::FABRIC,
        programs::BENCH_PASS,
        programs::BENCH_DROP,
        programs::BENCH_RESTORE_FABRIC,
        programs::BENCH_RESTORE_PASS,
        programs::CLOCK,
        programs::EVENT,
    ];
    for (name, _) in programs::JUMPED {
        if !all.contains(name) {
            all.push(name);
        }
    }
    all
}

/// Loads a program; the verifier gives up with EAGAIN when a signal
/// arrives while it works (a child exiting, say), which says nothing about
/// the program: that is tried again.
pub fn load_retrying(prog: &mut Xdp) -> Result<()> {
    let mut tries = 0;
    loop {
        match prog.load() {
            Ok(()) => return Ok(()),
            Err(e) if tries < 5 && is_eagain(&e) => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_eagain(e: &aya::programs::ProgramError) -> bool {
    match e {
        aya::programs::ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EAGAIN),
        _ => false,
    }
}

/// Where a map lives under a pin directory.
pub fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("maps").join(name)
}

/// A loaded eBPF object.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) gens: crate::maps::policy::generations::Generations,
}

impl Dataplane {
    /// Loads the object and verifies every program. With `pin_dir`, each map
    /// is pinned at `pin_dir/maps/NAME`, and a map already pinned there is
    /// reused instead of created, so state survives a reload.
    pub fn load(pin_dir: Option<&Path>) -> Result<Dataplane> {
        Self::load_with(pin_dir, DEFAULT_CONNTRACK_ENTRIES)
    }

    /// [`Dataplane::load`] with a connection-tracking table of
    /// `conntrack_entries` (a table pinned already keeps its size).
    pub fn load_with(pin_dir: Option<&Path>, conntrack_entries: u32) -> Result<Dataplane> {
        Self::load_opts(pin_dir, conntrack_entries, EbpfLog::Off)
    }

    /// [`Dataplane::load_with`], with the programs' own debug log at
    /// `log` (compiled out by the verifier when off: the level is a
    /// constant of the loaded object).
    pub fn load_opts(pin_dir: Option<&Path>, conntrack_entries: u32, log: EbpfLog) -> Result<Dataplane> {
        if conntrack_entries < 2 {
            bail!("conntrack.max_entries must be at least 2 (a flow takes two entries)");
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::CONNTRACK, conntrack_entries);
        let level = log as u8;
        loader.override_global(aya_log::LEVEL, &level, true);
        if let Some(dir) = pin_dir {
            let maps_dir = dir.join("maps");
            std::fs::create_dir_all(&maps_dir)
                .with_context(|| format!("creating pin directory {}", maps_dir.display()))?;
            for name in ALL_MAPS {
                loader.map_pin_path(name, map_pin(dir, name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object")?;
        for name in all_programs() {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
                .try_into()?;
            load_retrying(prog).with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let watch: &mut RawTracePoint = ebpf
            .program_mut(programs::REDIRECT_ERR)
            .ok_or_else(|| anyhow!("program {} missing from the eBPF object", programs::REDIRECT_ERR))?
            .try_into()?;
        watch
            .load()
            .with_context(|| format!("loading program {} (verifier)", programs::REDIRECT_ERR))?;
        let mut dp = Dataplane {
            ebpf,
            gens: Default::default(),
        };
        dp.fill_jumps()?;
        dp.read_active_generation()?;
        // Pins an agent left mid-way through a transaction (or before the
        // old generation caught up): both generations made equal again.
        if dp.meta()?.generation != 0 {
            dp.resync_generations()?;
        }
        Ok(dp)
    }

    /// Points every slot of the program array at this object's programs
    /// (a pinned array: the programs of an earlier load are replaced).
    fn fill_jumps(&mut self) -> Result<()> {
        let mut fds = Vec::new();
        for (name, slot) in programs::JUMPED {
            let fd = self.xdp(name)?.fd()?.try_clone()?;
            fds.push((*slot, fd));
        }
        let map = self
            .ebpf
            .map_mut(maps::JUMPS)
            .ok_or_else(|| anyhow!("no map {}", maps::JUMPS))?;
        let mut jumps = aya::maps::ProgramArray::try_from(map)?;
        for (slot, fd) in &fds {
            jumps
                .set(*slot, fd, 0)
                .with_context(|| format!("setting slot {slot} of {}", maps::JUMPS))?;
        }
        let fd = self.xdp(programs::EVENT)?.fd()?.try_clone()?;
        let map = self
            .ebpf
            .map_mut(maps::EVENT_JUMP)
            .ok_or_else(|| anyhow!("no map {}", maps::EVENT_JUMP))?;
        aya::maps::ProgramArray::try_from(map)?
            .set(0, &fd, 0)
            .with_context(|| format!("setting {}", maps::EVENT_JUMP))?;
        Ok(())
    }

    /// Map `name` of the object, to write: what the map families
    /// (`crate::maps`) build their typed access on.
    pub(crate) fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("no map {name} in the eBPF object"))
    }

    /// Map `name` of the object, to read.
    pub(crate) fn map_ref(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("no map {name} in the eBPF object"))
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

    /// Starts counting the redirects the kernel refuses, per target
    /// interface (`REDIRECT_ERRORS`). The link lives as long as `self`.
    pub fn watch_redirects(&mut self) -> Result<RawTracePointLinkId> {
        self.redirect_watch()?.attach(REDIRECT_TRACEPOINT).with_context(|| {
            format!(
                "attaching {} to tracepoint {REDIRECT_TRACEPOINT}",
                programs::REDIRECT_ERR
            )
        })
    }

    /// Stops what [`Dataplane::watch_redirects`] started.
    pub fn unwatch_redirects(&mut self, id: RawTracePointLinkId) -> Result<()> {
        Ok(self.redirect_watch()?.detach(id)?)
    }

    fn redirect_watch(&mut self) -> Result<&mut RawTracePoint> {
        Ok(self
            .ebpf
            .program_mut(programs::REDIRECT_ERR)
            .ok_or_else(|| anyhow!("no program {}", programs::REDIRECT_ERR))?
            .try_into()?)
    }

    /// [`Dataplane::watch_redirects`] through a bpf link pinned at
    /// [`link_pin`]`(pin_dir, "redirect_err")`, so that counting goes on
    /// while no agent runs. A link an earlier agent pinned there is
    /// replaced (the new one attaches first: no refusal goes uncounted).
    pub fn watch_redirects_pinned(&mut self, pin_dir: &Path) -> Result<u32> {
        let lpath = link_pin(pin_dir, REDIRECT_LINK);
        if let Some(dir) = lpath.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let id = self.watch_redirects()?;
        let link: FdLink = self.redirect_watch()?.take_link(id)?.into();
        match std::fs::remove_file(&lpath) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {}", lpath.display())),
        }
        link.pin(&lpath)
            .with_context(|| format!("pinning link {}", lpath.display()))?;
        Ok(crate::agent::sys::pinned_link_info(&lpath)?.id)
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

    /// The kernel's tick length in nanoseconds (see
    /// `HostConfig::ns_per_tick`), from the tick counter as the programs
    /// read it.
    pub fn kernel_tick_ns(&self) -> Result<u32> {
        let before = crate::clock::clock_ticks();
        let ticks = self.kernel_ticks()?;
        let after = crate::clock::clock_ticks();
        crate::clock::tick_ns(ticks, before, after)
    }

    /// The kernel's tick counter as the programs read it.
    pub fn kernel_ticks(&self) -> Result<u64> {
        let frame = [0u8; 64];
        let mut out = [0u8; 64];
        let r = self.test_run(programs::CLOCK, &frame, Some(&mut out), 1)?;
        ensure!(r.return_value == 2, "{}: verdict {}", programs::CLOCK, r.return_value);
        let mut ticks = [0u8; 8];
        ticks.copy_from_slice(&out[..8]);
        Ok(u64::from_ne_bytes(ticks))
    }

    /// Benchmarks only: the frame the `carwash_bench_restore_*` programs
    /// write back over every packet they see (at most
    /// `BENCH_FRAME_MAX` bytes).
    pub fn set_bench_frame(&mut self, frame: &[u8]) -> Result<()> {
        use dataplane_common::types::BENCH_FRAME_MAX;
        if frame.len() > BENCH_FRAME_MAX {
            bail!(
                "a bench frame holds at most {BENCH_FRAME_MAX} bytes, not {}",
                frame.len()
            );
        }
        let mut bytes = [0u8; BENCH_FRAME_MAX];
        bytes[..frame.len()].copy_from_slice(frame);
        let map = self
            .ebpf
            .map_mut(maps::BENCH_FRAME)
            .ok_or_else(|| anyhow!("no map {}", maps::BENCH_FRAME))?;
        aya::maps::Array::<_, [u8; BENCH_FRAME_MAX]>::try_from(map)?.set(0, bytes, 0)?;
        Ok(())
    }
}

/// The tracepoint the kernel reports refused redirects on.
pub const REDIRECT_TRACEPOINT: &str = "xdp_redirect_err";
/// The name of the link that counts them under `links/`.
pub const REDIRECT_LINK: &str = "redirect_err";

// ---- Pinned programs and links, adoption of pins (the agent's hitless restart) ----

/// Where program `name` is pinned under a pin directory.
pub fn prog_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("progs").join(name)
}

/// Where link `name` (`uplink`, `fabric`) is pinned under a pin directory.
pub fn link_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("links").join(name)
}

/// How [`Dataplane::attach_pinned`] got the program onto the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum Attach {
    /// No pinned link was there: a new bpf link, now pinned.
    New,
    /// The pinned link on that interface now runs this program
    /// (`bpf_link_update`: the interface never ran without a program).
    Replaced { old_prog_id: u32 },
    /// The pinned link was on another interface (or its interface is gone):
    /// it was unpinned, detaching it, and a new link made.
    Moved { old_ifindex: u32 },
}

/// A program attached through a pinned bpf link.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PinnedAttachment {
    pub program: String,
    pub link_pin: PathBuf,
    pub link_id: u32,
    pub prog_id: u32,
    pub ifindex: u32,
    pub attach: Attach,
}

/// What a pin directory holds, checked before anything is loaded from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinState {
    /// No maps pinned: a fresh start.
    Empty,
    /// Maps of this binary's layout: they will be adopted.
    Adoptable { meta: Meta },
}

/// Key size, value size and capacity the maps of this binary's layout have
/// (those the userspace reads and writes; a map missing here is not
/// checked; capacity 0: any).
pub fn expected_shapes() -> Vec<(&'static str, usize, usize, u32)> {
    use dataplane_common::types::*;
    use std::mem::size_of;
    vec![
        (maps::COUNTERS, 4, size_of::<CounterBlock>(), SIDES),
        (maps::CONFIG, 4, size_of::<HostConfig>(), 1),
        (
            maps::ADDRS,
            size_of::<AddrKey>(),
            size_of::<AddrValue>(),
            GENERATIONS * MAX_ADDRS,
        ),
        (
            maps::SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            GENERATIONS * MAX_SERVICES,
        ),
        (maps::VNIS, 4, 4, GENERATIONS * MAX_TENANTS),
        (maps::TENANT_NAMES, 4, size_of::<TenantName>(), MAX_TENANTS),
        (maps::HEALTH, 4, size_of::<TenantHealth>(), MAX_TENANTS),
        (maps::META, 4, size_of::<Meta>(), 1),
        (maps::TENANTS, 4, size_of::<TenantInfo>(), GENERATIONS * MAX_TENANTS),
        (maps::TENANT_STATS, 4, size_of::<TenantStats>(), MAX_TENANTS),
        (maps::ALLOW_V4, 4, 4, MAX_ALLOW_SLOTS),
        (maps::ALLOW_V6, 4, 4, MAX_ALLOW_SLOTS),
        // Any capacity: `[conntrack] max_entries` sets it.
        (maps::CONNTRACK, size_of::<CtKey>(), size_of::<CtValue>(), 0),
        (maps::CT_EVICT, 4, size_of::<EvictCandidate>(), 2 * CT_EVICT_MAX),
        (maps::CT_EVICT_CURSOR, 4, size_of::<EvictCursor>(), 1),
        (
            maps::DENY_CACHE,
            4,
            size_of::<dataplane_common::deny::DenySlot>(),
            dataplane_common::deny::DENY_CACHE_SLOTS,
        ),
    ]
}

/// Reads `META` from the pins (if any) and checks that they have this
/// binary's layout: the same `LAYOUT_VERSION`, and the key sizes, value
/// sizes and capacities this binary uses. A pin directory of another layout is refused with an
/// error that says what to do, rather than misread.
pub fn check_pins(pin_dir: &Path) -> Result<PinState> {
    let maps_dir = pin_dir.join("maps");
    let pinned: Vec<String> = match std::fs::read_dir(&maps_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", maps_dir.display())),
    };
    if pinned.is_empty() {
        return Ok(PinState::Empty);
    }
    let fix = format!(
        "remove them with `carwash agent --uninstall --pin-path {}` (this detaches the programs and drops all state)",
        pin_dir.display()
    );
    let meta_path = map_pin(pin_dir, maps::META);
    if !meta_path.exists() {
        bail!(
            "{} holds pinned maps but no {} map: they were made by an older carwash of another layout; {fix}",
            maps_dir.display(),
            maps::META
        );
    }
    let data = MapData::from_pin(&meta_path).with_context(|| format!("opening {}", meta_path.display()))?;
    let meta: Meta = aya::maps::Array::<_, Meta>::try_from(aya::maps::Map::Array(data))?
        .get(&0, 0)
        .context("reading META")?;
    if meta.layout_version != 0 && meta.layout_version != LAYOUT_VERSION {
        bail!(
            "the maps pinned under {} have layout version {}, this carwash uses {LAYOUT_VERSION}: it cannot adopt them; {fix}",
            pin_dir.display(),
            meta.layout_version
        );
    }
    for (name, key, value, max) in expected_shapes() {
        let path = map_pin(pin_dir, name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).with_context(|| format!("inspecting {}", path.display()))?;
        if info.key_size() as usize != key
            || info.value_size() as usize != value
            || (max != 0 && info.max_entries() != max)
        {
            bail!(
                "pinned map {} has key size {}, value size {}, {} entries where this carwash expects {key}, {value}, {max} (same layout version {LAYOUT_VERSION}: was it bumped?); {fix}",
                path.display(),
                info.key_size(),
                info.value_size(),
                info.max_entries()
            );
        }
    }
    Ok(PinState::Adoptable { meta })
}

impl Dataplane {
    /// Attaches program `prog` to interface `ifindex` through a bpf link
    /// pinned at [`link_pin`]`(pin_dir, link_name)`, and pins the program at
    /// [`prog_pin`]. If a link is pinned there already and attached to the
    /// same interface, the program in it is replaced atomically
    /// (`bpf_link_update`) instead: the interface is never without a program.
    /// The link stays attached when this process exits or is killed; only
    /// removing its pin ([`uninstall`]) detaches it.
    pub fn attach_pinned(
        &mut self,
        prog: &str,
        link_name: &str,
        ifindex: u32,
        mode: XdpMode,
        pin_dir: &Path,
    ) -> Result<PinnedAttachment> {
        let lpath = link_pin(pin_dir, link_name);
        let ppath = prog_pin(pin_dir, prog);
        for dir in [lpath.parent(), ppath.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let xdp = self.xdp_mut(prog)?;
        let mut attach = Attach::New;
        let mut id = None;
        if lpath.exists() {
            let old = crate::agent::sys::pinned_link_info(&lpath)
                .with_context(|| format!("inspecting pinned link {}", lpath.display()))?;
            if old.link_type == crate::agent::sys::LINK_TYPE_XDP && old.ifindex == ifindex {
                let fd: FdLink = PinnedLink::from_pin(&lpath)
                    .with_context(|| format!("opening pinned link {}", lpath.display()))?
                    .into();
                let link = XdpLink::try_from(fd).context("the pinned link is not an XDP link")?;
                id = Some(
                    xdp.attach_to_link(link)
                        .with_context(|| format!("replacing the program of pinned link {}", lpath.display()))?,
                );
                attach = Attach::Replaced {
                    old_prog_id: old.prog_id,
                };
            } else {
                // Unpinning drops the last reference: the old link detaches.
                std::fs::remove_file(&lpath).with_context(|| format!("unpinning {}", lpath.display()))?;
                attach = Attach::Moved {
                    old_ifindex: old.ifindex,
                };
            }
        }
        let id = match id {
            Some(id) => id,
            None => xdp.attach_to_if_index(ifindex, mode).with_context(|| {
                format!("attaching {prog} to interface {ifindex} (is another XDP program attached to it?)")
            })?,
        };
        let link = xdp.take_link(id)?;
        let fd = FdLink::try_from(link)
            .map_err(|_| anyhow!("the kernel attached {prog} through netlink, not a bpf link: cannot pin it"))?;
        if matches!(attach, Attach::Replaced { .. }) {
            drop(fd); // its pin is there already
        } else {
            fd.pin(&lpath)
                .with_context(|| format!("pinning link {}", lpath.display()))?;
        }
        match std::fs::remove_file(&ppath) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {}", ppath.display())),
        }
        self.xdp_mut(prog)?
            .pin(&ppath)
            .with_context(|| format!("pinning program {}", ppath.display()))?;
        let now = crate::agent::sys::pinned_link_info(&lpath)?;
        Ok(PinnedAttachment {
            program: prog.to_string(),
            link_pin: lpath,
            link_id: now.id,
            prog_id: now.prog_id,
            ifindex: now.ifindex,
            attach,
        })
    }
}

/// Removes everything pinned under `pin_dir` and the directory itself:
/// links first (detaching the programs, unless a running process still
/// holds them), then programs, then maps (dropping all state). Returns what
/// was removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for sub in ["links", "progs", "maps"] {
        let dir = pin_dir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in entries {
            let p = e?.path();
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(p);
        }
        std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", pin_dir.display())),
    }
    Ok(removed)
}
