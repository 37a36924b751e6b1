//! Shared by the `agent_*` tests: the real `carwash` binary, an agent
//! process running in a namespace with its pins in the root bpffs, a small
//! host namespace (uplink and fabric veths), and a raw dump of every pinned
//! map (inner maps of the allowlist arrays included) for byte-for-byte
//! comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dataplane::api::{self, AgentStatus, Request, Response};
use netlab::netns::{NetNs, PinDir, unique_tag, veth_pair};

/// The `carwash` binary of this build (same profile and target directory
/// as the test), built once per test process if needed: `cargo test -p
/// carwash-tests` alone does not build another package's binaries.
pub fn carwash_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>/carwash
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "dataplane", "--bin", "carwash", "--manifest-path"])
            .arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("running cargo build for the carwash binary");
        assert!(status.success(), "building the carwash binary failed");
        let bin = profile_dir.join("carwash");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// Runs `carwash ARGS` (in the caller's namespace).
pub fn carwash(args: &[&str]) -> Output {
    Command::new(carwash_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running carwash")
}

/// A scratch directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("carwash-{what}-{}", unique_tag()));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything an agent needs: a host namespace, pins, a policy dir, a socket.
pub struct AgentSetup {
    pub ns: NetNs,
    pub pins: PinDir,
    pub dir: TempDir,
    pub config: PathBuf,
    pub policy_dir: PathBuf,
    pub socket: PathBuf,
}

impl AgentSetup {
    /// A namespace with `uplink` and `fabric` veths (peers inside, so no
    /// traffic leaves), the repository's policies copied into `policy_dir`.
    pub fn new(policies: &[&str]) -> Result<AgentSetup> {
        let ns = NetNs::new("cwag")?;
        veth_pair(&ns, "uplink", None, &ns, "upeer", None)?;
        veth_pair(&ns, "fabric", None, &ns, "fpeer", None)?;
        ns.addr("fabric", "10.200.0.1/16")?;
        let dir = TempDir::new("agent");
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir)?;
        for p in policies {
            let src = repo_policies_dir().join(p);
            std::fs::copy(&src, policy_dir.join(p)).with_context(|| format!("copying {}", src.display()))?;
        }
        let pins = PinDir::new()?;
        let socket = dir.path().join("run/api.sock");
        let config = dir.path().join("carwash.toml");
        std::fs::write(
            &config,
            format!(
                "uplink = \"uplink\"\nfabric = \"fabric\"\nvtep = \"10.200.0.1\"\npolicy_dir = \"{}\"\npin_path = \"{}\"\napi_socket = \"{}\"\nevent_log = \"{}\"\n# No machines answer here: probes would declare them all down. An inline\n# table, so that tests can still append top-level keys.\nprobes = {{ enabled = false }}\n",
                policy_dir.display(),
                pins.path().display(),
                socket.display(),
                dir.path().join("log/events.jsonl").display()
            ),
        )?;
        Ok(AgentSetup {
            ns,
            pins,
            dir,
            config,
            policy_dir,
            socket,
        })
    }

    pub fn start(&self) -> Result<AgentProc> {
        AgentProc::start(&self.ns, &self.config, &self.socket, &self.dir.path().join("agent.log"))
    }

    pub fn pin_path(&self) -> &Path {
        self.pins.path()
    }
}

/// An agent for a lab: the lab's policy files in a policy dir of its own,
/// pins, and the lab's host configuration plus `extra` (TOML), started in
/// the lab's host namespace as often as a test needs.
pub struct LabAgent {
    pub pins: PinDir,
    pub dir: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl LabAgent {
    pub fn new(lab: &netlab::lab::Lab, what: &str, extra: &str) -> Result<LabAgent> {
        let dir = TempDir::new(what);
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policy_dir)?;
        for t in &lab.tenants {
            let name = t.policy_file.file_name().context("a policy file without a name")?;
            std::fs::copy(&t.policy_file, policy_dir.join(name))?;
        }
        let pins = PinDir::new()?;
        let socket = dir.path().join("api.sock");
        let config = dir.path().join("carwash.toml");
        // The flow log in the test's directory, unless `extra` says where.
        let event_log = if extra.contains("event_log") {
            String::new()
        } else {
            format!("event_log = \"{}\"\n", dir.path().join("log/events.jsonl").display())
        };
        let text = lab.host_config_toml(pins.path(), &socket, &policy_dir);
        // Health probes only where a test asks for them (`[probes]` in
        // `extra`): they would add their own packets to every count.
        let probes = if extra.contains("[probes]") {
            ""
        } else {
            "\n[probes]\nenabled = false\n"
        };
        std::fs::write(&config, event_log + &text + extra + probes)?;
        let log = dir.path().join("agent.log");
        Ok(LabAgent {
            pins,
            dir,
            config,
            socket,
            log,
        })
    }

    pub fn start(&self, ns: &NetNs) -> Result<AgentProc> {
        AgentProc::start(ns, &self.config, &self.socket, &self.log)
    }

    pub fn pin_path(&self) -> &Path {
        self.pins.path()
    }
}

pub fn repo_policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A running `carwash agent`; killed (SIGKILL) on drop.
pub struct AgentProc {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl AgentProc {
    /// Starts the agent inside `ns` (only the network namespace changes:
    /// pins stay in the root bpffs) and waits until its API answers.
    pub fn start(ns: &NetNs, config: &Path, socket: &Path, log: &Path) -> Result<AgentProc> {
        let log_file = File::options().create(true).append(true).open(log)?;
        let mut cmd = ns.command(carwash_bin().to_str().expect("utf-8 path"))?;
        cmd.args(["agent", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("CARWASH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = cmd.spawn().context("starting carwash agent")?;
        let mut agent = AgentProc {
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(r) = api::call(socket, &Request::Status, Duration::from_secs(5))
                && r.ok
            {
                return Ok(agent);
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!("the agent exited ({status}) before answering:\n{}", agent.log_text());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the agent did not answer within 60 s:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(&self, req: &Request) -> Response {
        api::call(&self.socket, req, Duration::from_secs(60)).expect("API call")
    }

    pub fn status(&self) -> AgentStatus {
        *self.call(&Request::Status).status.expect("status in the answer")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGKILL, and reaps it.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("waiting for the agent")
    }

    /// Waits until the agent has taken in `n` policy sets (applied, unchanged
    /// or refused).
    pub fn wait_attempts(&self, n: u64, timeout: Duration) -> AgentStatus {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if s.attempts >= n {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "the agent did not take in policy set #{n}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

// ---- raw map dumps ----

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
const BPF_MAP_TYPE_HASH_OF_MAPS: u32 = 13;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid buffer of the given length.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("BPF_OBJ_GET {}", path.display()))?;
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn map_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; 12];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).with_context(|| format!("BPF_MAP_GET_FD_BY_ID {id}"))?;
    // SAFETY: a new descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

struct RawInfo {
    map_type: u32,
    key_size: u32,
    value_size: u32,
}

fn info(fd: &OwnedFd) -> Result<RawInfo> {
    // struct bpf_map_info { type, id, key_size, value_size, max_entries, map_flags, ... }
    let mut buf = [0u64; 16];
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(std::mem::size_of_val(&buf) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
    bpf(15, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    let b: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let w = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    Ok(RawInfo {
        map_type: w(0),
        key_size: w(8),
        value_size: w(12),
    })
}

/// Every entry of a map, as raw bytes, sorted by key; for maps of maps, the
/// value is the inner map id followed by the dump of the inner map.
fn dump_fd(fd: &OwnedFd) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let i = info(fd)?;
    let per_cpu = matches!(
        i.map_type,
        BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH
    );
    let value_len = if per_cpu {
        (i.value_size as usize).div_ceil(8) * 8 * possible_cpus()
    } else {
        i.value_size as usize
    };
    let of_maps = matches!(i.map_type, BPF_MAP_TYPE_ARRAY_OF_MAPS | BPF_MAP_TYPE_HASH_OF_MAPS);
    let mut out = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; i.key_size as usize];
        let mut attr = [0u8; 32];
        attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        let key_ptr = key.as_ref().map(|k| k.as_ptr() as u64).unwrap_or(0);
        attr[8..16].copy_from_slice(&key_ptr.to_ne_bytes());
        attr[16..24].copy_from_slice(&(next.as_mut_ptr() as u64).to_ne_bytes());
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
        }
        let mut value = vec![0u8; value_len];
        let mut attr = [0u8; 32];
        attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(next.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => {
                if of_maps {
                    let id = u32::from_ne_bytes(value[..4].try_into().unwrap());
                    let inner = map_fd_by_id(id)?;
                    for (k, v) in dump_fd(&inner)? {
                        value.extend_from_slice(&(k.len() as u32).to_ne_bytes());
                        value.extend(k);
                        value.extend(v);
                    }
                }
                out.push((next.clone(), value));
            }
            // Empty slot of an array of maps.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_ELEM"),
        }
        key = Some(next);
    }
    out.sort();
    Ok(out)
}

/// Map name → its entries (raw key, raw value), sorted by key.
pub type MapDump = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// A dump of every map pinned under `pin_dir/maps` but `COUNTERS` (which
/// the programs bump for any packet the kernel sends through them).
pub fn dump_maps(pin_dir: &Path) -> Result<MapDump> {
    use dataplane_common::maps;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(pin_dir.join("maps"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        // What the data path writes (counters, the next-hop cache) moves
        // with traffic; policy state is everything else.
        if [maps::COUNTERS, maps::TENANT_STATS, maps::NEXT_HOPS, maps::BACKEND_HOPS].contains(&name.as_str()) {
            continue;
        }
        let fd = obj_get(&e.path())?;
        out.insert(name, dump_fd(&fd)?);
    }
    Ok(out)
}

/// Names the maps whose dumps differ.
pub fn diff_maps(a: &MapDump, b: &MapDump) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| {
            let (x, y) = (a.get(n).map_or(0, Vec::len), b.get(n).map_or(0, Vec::len));
            format!("{n} ({x} entries before, {y} after)")
        })
        .collect()
}

/// `p`-th percentile (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[i]
}
