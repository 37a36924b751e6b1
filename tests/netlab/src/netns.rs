//! RAII network-namespace harness for end-to-end tests.
//!
//! A [`NetNs`] is a named namespace (`/run/netns/NAME`) that is deleted, with
//! every process inside it, when the value is dropped, so a failing test
//! leaves nothing behind. Commands run inside a namespace by `setns(2)` in
//! the child before `exec`, not through `ip netns exec`: that keeps the
//! caller's mount namespace, so bpffs pins under `/sys/fs/bpf` stay visible
//! to an agent started this way (`ip netns exec` remounts `/sys`).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use carwash_policy::MacAddr;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Where bpffs is expected; [`ensure_bpffs`] mounts it there.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The IANA VXLAN port, which carwash and the lab machines use.
pub const VXLAN_PORT: u16 = 4789;

/// Whether we run with the privileges namespaces need; tests that get
/// `false` print why and return early instead of failing.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A short lowercase hex tag, unique within this process and very likely
/// across processes (pid and clock are mixed in), so concurrent test runs can
/// share one machine.
pub fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static ISSUED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = (u64::from(std::process::id()) << 40) ^ n.rotate_left(24) ^ nanos;
        let tag = format!("{:06x}", splitmix64(seed) & 0xff_ffff);
        let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
        if issued.get_or_insert_with(HashSet::new).insert(tag.clone()) {
            return tag;
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Renders a command for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion and returns its stdout; a non-zero exit is
/// an error naming the command and carrying its stderr.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{desc}`"))?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The handle path of a namespace name.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Names of all namespaces `ip netns` knows, sorted.
pub fn list_netns() -> Result<Vec<String>> {
    let mut names = Vec::new();
    match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => {
            for e in rd {
                names.push(e?.file_name().to_string_lossy().into_owned());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("reading {NETNS_DIR}")),
    }
    names.sort();
    Ok(names)
}

/// Pids of the processes whose network namespace is `name` (thread-group
/// leaders only, never this process itself).
pub fn netns_pids(name: &str) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(netns_path(name)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes exit while we walk: a failed stat just means "not ours".
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            && m.dev() == target.dev()
            && m.ino() == target.ino()
        {
            pids.push(pid);
        }
    }
    pids
}

/// SIGKILLs every process in the namespaces until none is left or `timeout`
/// passes; returns whether they are all gone. Forking servers can spawn
/// children between scans, hence the loop.
pub fn kill_netns_processes(names: &[&str], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let pids: Vec<i32> = names.iter().flat_map(|n| netns_pids(n)).collect();
        if pids.is_empty() {
            return true;
        }
        for p in pids {
            // SAFETY: kill with a concrete pid and signal has no memory effects.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills everything inside a namespace and deletes it; a namespace that does
/// not exist is not an error.
pub fn delete_netns(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    kill_netns_processes(&[name], Duration::from_secs(5));
    let res = run_checked(Command::new("ip").args(["netns", "del", name]));
    if netns_path(name).exists() {
        res?;
        bail!("namespace {name} still exists after `ip netns del`");
    }
    Ok(())
}

/// A network namespace. Created ones are owned: dropping them kills their
/// processes and deletes them. [`NetNs::open`] gives a non-owning handle to
/// an existing namespace (e.g. one of a running lab).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    owned: bool,
}

impl NetNs {
    /// Creates `{prefix}-{unique_tag()}` with `lo` up.
    pub fn new(prefix: &str) -> Result<NetNs> {
        for _ in 0..16 {
            let name = format!("{prefix}-{}", unique_tag());
            if !netns_path(&name).exists() {
                return NetNs::named(&name);
            }
        }
        bail!("could not find a free namespace name with prefix {prefix:?}")
    }

    /// Creates the namespace `name` exactly (an existing one is an error),
    /// with `lo` up.
    pub fn named(name: &str) -> Result<NetNs> {
        if name.is_empty() || name.contains('/') || name.len() > 200 {
            bail!("invalid namespace name {name:?}");
        }
        run_checked(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_string(),
            owned: true,
        };
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// A handle to an existing namespace that does not delete it on drop.
    pub fn open(name: &str) -> Result<NetNs> {
        if !netns_path(name).exists() {
            bail!("namespace {name} does not exist");
        }
        Ok(NetNs {
            name: name.to_string(),
            owned: false,
        })
    }

    /// Gives up ownership: the namespace outlives this value (the lab keeps
    /// its namespaces after `lab up` exits).
    pub fn disown(mut self) -> NetNs {
        self.owned = false;
        self
    }

    pub fn is_owned(&self) -> bool {
        self.owned
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the file to `setns(2)` into.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that will run inside this namespace; callers may still set
    /// stdio, environment and working directory on it.
    pub fn command(&self, program: &str) -> Result<Command> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes the setns syscall, which is
        // async-signal-safe, and owns the fd it uses.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn command_for(&self, args: &[&str]) -> Result<Command> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("empty command for namespace {}", self.name))?;
        let mut cmd = self.command(prog)?;
        cmd.args(rest);
        Ok(cmd)
    }

    /// Runs a command inside and returns its output whatever its exit status
    /// (tests often expect failures, e.g. a connection that must be refused).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command_for(args)?;
        let desc = format!("{} (in {})", describe(&cmd), self.name);
        cmd.stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{desc}`"))
    }

    /// Runs a command inside; a non-zero exit is an error. Returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command_for(args)?;
        run_checked(&mut cmd).with_context(|| format!("in namespace {}", self.name))
    }

    /// Starts a background process inside; it is killed when the returned
    /// [`Daemon`] is dropped. Stdout is discarded, stderr inherited.
    pub fn spawn(&self, args: &[&str]) -> Result<Daemon> {
        let mut cmd = self.command_for(args)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        Daemon::start(cmd).with_context(|| format!("in namespace {}", self.name))
    }

    /// Runs `f` on a fresh thread that has entered this namespace, so the
    /// sockets it opens live here. A panic in `f` is resumed in the caller.
    pub fn enter<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        let name = &self.name;
        let joined = std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                // SAFETY: setns on our own thread with a valid fd; only this
                // thread's network namespace changes.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
                }
                drop(file);
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Sets sysctls of this namespace (`net.ipv4.ip_forward` style keys).
    /// `/proc/sys/net` resolves against the writing thread's namespace, so
    /// this needs no child process.
    pub fn sysctls(&self, pairs: &[(&str, &str)]) -> Result<()> {
        self.enter(|| -> Result<()> {
            for (key, value) in pairs {
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                std::fs::write(&path, value).with_context(|| format!("sysctl {key}={value} ({})", path.display()))?;
            }
            Ok(())
        })?
        .with_context(|| format!("in namespace {}", self.name))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.sysctls(&[(key, value)])
    }

    /// Reads one sysctl of this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let v = self
            .enter(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {} in {}", path.display(), self.name))?;
        Ok(v.trim().to_string())
    }

    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "up"]).map(drop)
    }

    pub fn set_mac(&self, dev: &str, mac: MacAddr) -> Result<()> {
        self.ip(&["link", "set", "dev", dev, "address", &mac.to_string()])
            .map(drop)
    }

    /// Adds `cidr` (e.g. `10.0.0.1/24`, `fd00::1/64`) to `dev`; IPv6
    /// addresses skip DAD so they are usable at once.
    pub fn addr(&self, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Adds a route to `dest` (a prefix or `default`) via a gateway,
    /// optionally pinned to a device.
    pub fn route(&self, dest: &str, via: &str, dev: Option<&str>) -> Result<()> {
        let mut args = Vec::new();
        if via.contains(':') || dest.contains(':') {
            args.push("-6");
        }
        args.extend(["route", "add", dest, "via", via]);
        if let Some(d) = dev {
            args.extend(["dev", d]);
        }
        self.ip(&args).map(drop)
    }

    /// Adds a route to `dest` straight out of `dev` (no gateway).
    pub fn route_dev(&self, dest: &str, dev: &str) -> Result<()> {
        let mut args = Vec::new();
        if dest.contains(':') {
            args.push("-6");
        }
        args.extend(["route", "add", dest, "dev", dev]);
        self.ip(&args).map(drop)
    }

    /// A permanent neighbour entry, so nothing waits on ARP/ND.
    pub fn neigh(&self, dev: &str, ip: &str, mac: MacAddr) -> Result<()> {
        let mac = mac.to_string();
        self.ip(&["neigh", "replace", ip, "lladdr", &mac, "dev", dev, "nud", "permanent"])
            .map(drop)
    }

    /// Pids of the processes inside.
    pub fn pids(&self) -> Vec<i32> {
        netns_pids(&self.name)
    }

    /// Kills every process inside; returns whether they are all gone.
    pub fn kill_all(&self) -> bool {
        kill_netns_processes(&[&self.name], Duration::from_secs(5))
    }

    /// Waits until a TCP (or UDP) socket listens on `port` inside.
    pub fn wait_listening(&self, udp: bool, port: u16, timeout: Duration) -> Result<()> {
        self.wait_listening_all(udp, &[port], timeout)
    }

    /// Waits until sockets listen on all `ports` (TCP, or bound UDP).
    pub fn wait_listening_all(&self, udp: bool, ports: &[u16], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.listening_ports(udp)?;
            let missing: Vec<u16> = ports.iter().copied().filter(|p| !open.contains(p)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let proto = if udp { "udp" } else { "tcp" };
                bail!(
                    "namespace {}: nothing listens on {proto} port(s) {missing:?} after {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Local ports of listening TCP (or bound UDP) sockets inside.
    pub fn listening_ports(&self, udp: bool) -> Result<HashSet<u16>> {
        let out = self.run(&["ss", "-H", "-n", "-l", if udp { "-u" } else { "-t" }])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|local| local.rsplit(':').next()?.parse().ok())
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            let _ = delete_netns(&self.name);
        }
    }
}

/// A background process; dropping it kills and reaps it.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    what: String,
}

impl Daemon {
    /// Spawns a prepared command (e.g. from [`NetNs::command`]).
    pub fn start(mut cmd: Command) -> Result<Daemon> {
        let what = describe(&cmd);
        let child = cmd.spawn().with_context(|| format!("starting `{what}`"))?;
        Ok(Daemon { child, what })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills and reaps the process now.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a veth pair with one end in each namespace (no root-namespace
/// names are ever involved) and brings both ends up.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    veth_pair(a, a_if, None, b, b_if, None)
}

/// [`veth`] with fixed MAC addresses, set at creation so neighbour entries
/// written by the caller are right from the start; both ends NIC-like.
pub fn veth_pair(
    a: &NetNs,
    a_if: &str,
    a_mac: Option<MacAddr>,
    b: &NetNs,
    b_if: &str,
    b_mac: Option<MacAddr>,
) -> Result<()> {
    veth_pair_with(a, a_if, a_mac, b, b_if, b_mac, VethSetup::NIC_LIKE)
}

/// [`veth_pair`], both ends set up as `setup` says.
pub fn veth_pair_with(
    a: &NetNs,
    a_if: &str,
    a_mac: Option<MacAddr>,
    b: &NetNs,
    b_if: &str,
    b_mac: Option<MacAddr>,
    setup: VethSetup,
) -> Result<()> {
    let (a_mac, b_mac) = (a_mac.map(|m| m.to_string()), b_mac.map(|m| m.to_string()));
    let mut args = vec!["link", "add", "name", a_if];
    if let Some(m) = &a_mac {
        args.extend(["address", m]);
    }
    args.extend(["type", "veth", "peer", "name", b_if]);
    if let Some(m) = &b_mac {
        args.extend(["address", m]);
    }
    args.extend(["netns", b.name()]);
    a.ip(&args)?;
    setup.apply(a, a_if)?;
    setup.apply(b, b_if)?;
    a.link_up(a_if)?;
    b.link_up(b_if)
}

/// How the ends of a veth pair are set up towards XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethSetup {
    /// TX checksum offload off: frames carry complete checksums (a veth
    /// otherwise hands on the sender's partial, offloaded checksum, which
    /// an XDP program forwarding the frame cannot complete).
    pub complete_checksums: bool,
    /// GRO on, so NAPI runs and XDP_REDIRECT and XDP_TX into the other end
    /// deliver; off, the kernel drops such frames (`xdp:xdp_redirect_err`).
    pub gro: bool,
}

impl VethSetup {
    /// Like a physical NIC: what the lab uses unless told otherwise.
    pub const NIC_LIKE: VethSetup = VethSetup {
        complete_checksums: true,
        gro: true,
    };
    /// As the kernel makes a veth: GRO off, checksum offload on.
    pub const PLAIN: VethSetup = VethSetup {
        complete_checksums: false,
        gro: false,
    };

    /// Sets up `dev` (one end) in `ns`.
    pub fn apply(self, ns: &NetNs, dev: &str) -> Result<()> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        ns.run(&[
            "ethtool",
            "-K",
            dev,
            "tx",
            on_off(!self.complete_checksums),
            "gro",
            on_off(self.gro),
        ])
        .map(drop)
    }
}

impl Default for VethSetup {
    fn default() -> VethSetup {
        VethSetup::NIC_LIKE
    }
}

/// Makes a veth end behave like a physical NIC towards XDP
/// ([`VethSetup::NIC_LIKE`]).
pub fn like_a_nic(ns: &NetNs, dev: &str) -> Result<()> {
    VethSetup::NIC_LIKE.apply(ns, dev)
}

/// Creates a Linux VXLAN device on `underlay_dev` (UDP 4789, no learning,
/// fixed peer), answering to `mac`, and brings it up.
pub fn vxlan(
    ns: &NetNs,
    ifname: &str,
    vni: u32,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    mac: MacAddr,
    underlay_dev: &str,
) -> Result<()> {
    let (vni, local, remote, mac, port) = (
        vni.to_string(),
        local.to_string(),
        remote.to_string(),
        mac.to_string(),
        VXLAN_PORT.to_string(),
    );
    ns.ip(&[
        "link",
        "add",
        "name",
        ifname,
        "address",
        &mac,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "remote",
        &remote,
        "dstport",
        &port,
        "dev",
        underlay_dev,
        "nolearning",
    ])?;
    // Tunnelled frames leave with complete inner checksums, as a NIC
    // without encapsulation offload would send them.
    ns.run(&["ethtool", "-K", ifname, "tx", "off"])?;
    ns.link_up(ifname)
}

/// Mounts bpffs at `/sys/fs/bpf` unless one is mounted there already.
pub fn ensure_bpffs() -> Result<()> {
    let bpffs_mounted = || -> Result<bool> {
        let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        Ok(mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
        }))
    };
    if bpffs_mounted()? {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Another process may have mounted it between our check and now.
        if bpffs_mounted()? {
            return Ok(());
        }
        return Err(err).context(format!("mounting bpffs at {BPFFS}"));
    }
    Ok(())
}

/// A unique directory on bpffs for a test's pins; removed with everything
/// pinned below it on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Creates `/sys/fs/bpf/carwash-test-{tag}` (mounting bpffs if needed).
    pub fn new() -> Result<PinDir> {
        ensure_bpffs()?;
        for _ in 0..16 {
            let path = Path::new(BPFFS).join(format!("carwash-test-{}", unique_tag()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(PinDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context(format!("creating {}", path.display())),
            }
        }
        bail!("could not find a free pin directory name under {BPFFS}")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
    }
}

/// Removes a directory tree entry by entry: bpffs supports unlink and rmdir
/// but nothing fancier.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(path)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    std::fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_hex_and_distinct() {
        let tags: Vec<String> = (0..500).map(|_| unique_tag()).collect();
        for t in &tags {
            assert_eq!(t.len(), 6);
            assert!(t.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        let set: HashSet<&String> = tags.iter().collect();
        assert_eq!(set.len(), tags.len());
    }

    #[test]
    fn describe_joins_args() {
        let mut c = Command::new("ip");
        c.args(["-n", "x", "link"]);
        assert_eq!(describe(&c), "ip -n x link");
    }
}
