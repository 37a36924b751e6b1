//! The pins under `pin_path/maps`, opened for reading: every map is opened
//! read-only from its pin, so the operator's commands answer while the
//! agent is down and can never change what the programs see. Opening
//! checks, before anything is read, that there is something pinned, that
//! the caller may read it, and that it has this binary's layout; each
//! failure says which path and what to do.
//!
//! Each map family extends [`Pins`] with the typed reads of its maps
//! (`policy::read`, `counters`, `conntrack`, `host`, `events`), and turns
//! numbers into what an operator reads. `META`, which says what wrote the
//! pins (layout, apply count, digest), is read and written here.
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, Map, MapData};
use dataplane_common::{
    LAYOUT_VERSION, maps,
    types::{HostConfig, Meta},
};

use crate::Dataplane;
use crate::loader::{expected_shapes, map_pin};

const BPF_OBJ_GET: libc::c_long = 7;
/// `file_flags` of `BPF_OBJ_GET`: a descriptor that can look up but never
/// update or delete.
const BPF_F_RDONLY: u32 = 1 << 3;

/// Opens a pinned map read-only. aya's `MapData::from_pin` asks for a
/// read-write descriptor; the read commands must not hold one.
fn obj_get_rdonly(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[12..16].copy_from_slice(&BPF_F_RDONLY.to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix of the length passed; the path
    // outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn permission_denied(path: &Path) -> anyhow::Error {
    anyhow!(
        "permission denied reading {}: carwash reads BPF maps, which needs root (CAP_BPF and CAP_SYS_ADMIN){}; run it with sudo",
        path.display(),
        if euid() == 0 { "" } else { ", and this is not root" }
    )
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn nothing_pinned(dir: &Path) -> anyhow::Error {
    let meta = map_pin(dir, maps::META);
    let bpffs = if crate::pin::on_bpffs(dir) {
        String::new()
    } else {
        format!(
            " ({} is not on a mounted bpffs: no agent has pinned anything there since boot)",
            dir.display()
        )
    };
    anyhow!(
        "nothing is pinned under {}: no map {}{bpffs}. Is the agent running on this host? Start it with `carwash agent` \
         (it pins its maps at its pin_path), or point this command at that pin path with --pin-path DIR or --config FILE",
        dir.display(),
        meta.display()
    )
}

/// The pinned maps of a running (or stopped) dataplane, checked to be of
/// this binary's layout.
pub struct Pins {
    dir: PathBuf,
    meta: Meta,
    /// The policy generation in force (`GENERATION`): what the readers
    /// show of the two copies the policy maps hold.
    generation: u32,
}

impl Pins {
    /// Opens the pins under `dir` (the agent's `pin_path`) and checks them:
    /// something is pinned, this process may read it, the layout version
    /// in `META` (or, before an agent wrote `META`, in `CONFIG`) is this
    /// binary's, and every map has the key size, value size and capacity this binary
    /// reads.
    pub fn open(dir: &Path) -> Result<Pins> {
        let meta_path = map_pin(dir, maps::META);
        match std::fs::symlink_metadata(&meta_path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(permission_denied(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let others = std::fs::read_dir(dir.join("maps")).map(|rd| rd.count()).unwrap_or(0);
                if others > 0 {
                    bail!(
                        "{} holds pinned maps but no {}: they were made by a carwash of another layout, which this \
                         one cannot read; use the carwash binary the agent runs",
                        dir.join("maps").display(),
                        maps::META
                    );
                }
                return Err(nothing_pinned(dir));
            }
            Err(e) => return Err(e).with_context(|| format!("looking for {}", meta_path.display())),
        }
        let mut pins = Pins {
            dir: dir.to_path_buf(),
            meta: Meta::default(),
            generation: 0,
        };
        pins.meta = Array::<_, Meta>::try_from(Map::Array(pins.map(maps::META)?))?
            .get(&0, 0)
            .context("reading META")?;
        let layout = match pins.meta.layout_version {
            // Loaded, but no agent has written META yet (a library user, or
            // an agent that stopped right after loading): CONFIG carries
            // the version of whoever wrote the host settings.
            0 => {
                Array::<_, HostConfig>::try_from(Map::Array(pins.map(maps::CONFIG)?))?
                    .get(&0, 0)
                    .context("reading CONFIG")?
                    .layout_version
            }
            v => v,
        };
        if layout != 0 && layout != LAYOUT_VERSION {
            bail!(
                "pinned maps under {} have layout version {layout}, this carwash has {LAYOUT_VERSION}: it cannot read \
                 them. Use the carwash binary the agent runs (`ls -l /proc/$(pidof -s carwash)/exe`), or upgrade the \
                 agent (`carwash agent --uninstall` first: the agent refuses to adopt another layout)",
                dir.display()
            );
        }
        pins.generation = Array::<_, u32>::try_from(Map::Array(pins.map(maps::GENERATION)?))?
            .get(&0, 0)
            .context("reading GENERATION")?
            & 1;
        for (name, key, value, max) in expected_shapes() {
            let info = pins
                .map(name)?
                .info()
                .with_context(|| format!("inspecting pinned map {name}"))?;
            if info.key_size() as usize != key
                || info.value_size() as usize != value
                || (max != 0 && info.max_entries() != max)
            {
                bail!(
                    "pinned map {} has key size {}, value size {}, {} entries where this carwash expects {key}, \
                     {value}, {max}: it was made by a carwash of another layout (same version {layout}: was it not \
                     bumped?); use the carwash binary the agent runs",
                    map_pin(dir, name).display(),
                    info.key_size(),
                    info.value_size(),
                    info.max_entries()
                );
            }
        }
        Ok(pins)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Whether map `name` is pinned.
    pub fn has(&self, name: &str) -> bool {
        map_pin(&self.dir, name).exists()
    }

    /// Map `name`, opened read-only from its pin.
    pub fn map(&self, name: &str) -> Result<MapData> {
        let path = map_pin(&self.dir, name);
        let fd = match obj_get_rdonly(&path) {
            Ok(fd) => fd,
            Err(e) if is_permission(&e) => return Err(permission_denied(&path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "pinned map {} is missing: the pins under {} are incomplete (an agent stopped half-way through \
                 loading, or someone removed it); restart the agent",
                path.display(),
                self.dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("opening pinned map {}", path.display())),
        };
        MapData::from_fd(fd).with_context(|| format!("opening pinned map {}", path.display()))
    }

    /// The policy generation in force when the pins were opened: the copy
    /// of the two the readers of the policy maps show.
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

pub(crate) fn not_found_is_none<V>(r: Result<V, aya::maps::MapError>) -> Result<Option<V>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Dataplane {
    /// `META`: the layout version and the policy generation in force.
    pub fn meta(&self) -> Result<Meta> {
        let m: Array<&MapData, Meta> = Array::try_from(self.map_ref(maps::META)?)?;
        Ok(m.get(&0, 0)?)
    }

    pub fn set_meta(&mut self, meta: &Meta) -> Result<()> {
        let mut m: Array<&mut MapData, Meta> = Array::try_from(self.map_mut(maps::META)?)?;
        m.set(0, meta, 0)?;
        Ok(())
    }
}
