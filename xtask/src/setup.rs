//! Installs, idempotently, what building and testing carwash needs on a
//! fresh Debian machine: the nightly `rust-src` (the eBPF target builds
//! `core`), LLVM 22 (bpf-linker links against the nightly's LLVM), bpf-linker
//! itself, a mounted bpffs, and the tools the lab and tests drive. A second
//! run finds everything and installs nothing.
use std::process::Command;

use anyhow::{Context, Result, bail};

const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libclang-22-dev"];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// Commands the lab and the tests run, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("openssl", "openssl"),
    ("socat", "socat"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("nft", "nftables"),
    ("ss", "iproute2"),
    ("ethtool", "ethtool"),
    ("tcpdump", "tcpdump"),
    // The etcd client's protocol code is generated at build time.
    ("protoc", "protobuf-compiler"),
    // The fleet tests run a real etcd (and compact it with etcdctl).
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("bird", "bird2"),
];

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn stdout(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn have_command(name: &str) -> bool {
    ok(Command::new("sh").args(["-c", &format!("command -v {name}")]))
}

fn deb_installed(pkg: &str) -> bool {
    stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg])).contains("install ok installed")
}

fn is_root() -> bool {
    stdout(Command::new("id").arg("-u")).trim() == "0"
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!("missing Debian packages {pkgs:?}; installing them needs root (run as root, or apt-get install them)");
    }
    println!("setup: apt-get install {}", pkgs.join(" "));
    crate::workspace::run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (are the Debian package mirrors reachable?)")?;
    crate::workspace::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs),
    )
    .with_context(|| format!("apt-get install {pkgs:?}"))
}

pub fn run() -> Result<()> {
    let mut did = Vec::new();

    // The nightly toolchain builds the eBPF object; rustup cannot fetch
    // another one here, so only its rust-src component is added.
    if !ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        bail!(
            "the nightly Rust toolchain is missing: `rustup toolchain install nightly` (the eBPF target needs nightly's -Z build-std)"
        );
    }
    let installed = stdout(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]));
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rustup component add rust-src --toolchain nightly");
        crate::workspace::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        did.push("rust-src");
    }

    let mut missing: Vec<&str> = LLVM_PACKAGES.iter().copied().filter(|p| !deb_installed(p)).collect();
    for (cmd, pkg) in TOOLS {
        if !have_command(cmd) && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
        did.push("debian packages");
    }

    let linker = crate::workspace::cargo_bin().join("bpf-linker");
    if !ok(Command::new(&linker).arg("--version")) {
        println!("setup: cargo install bpf-linker (against LLVM 22; about a minute)");
        let path = format!("{LLVM_BIN}:{}", crate::workspace::path_with_tools());
        crate::workspace::run(Command::new("cargo").env("PATH", path).args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]))
        .context("installing bpf-linker")?;
        did.push("bpf-linker");
    }

    if !bpffs_mounted() {
        if !is_root() {
            bail!("bpffs is not mounted at /sys/fs/bpf and mounting it needs root");
        }
        println!("setup: mount -t bpf bpf /sys/fs/bpf");
        crate::workspace::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        did.push("bpffs");
    }

    if did.is_empty() {
        println!("setup: toolchain complete, nothing to install");
    } else {
        println!("setup: installed {}", did.join(", "));
    }
    Ok(())
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// Commands the packaging tests run (the package, its unit, its alert
/// rules), and the Debian package of each.
const PACKAGING_TOOLS: &[(&str, &str)] = &[
    ("lintian", "lintian"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("fakeroot", "fakeroot"),
];
const CARGO_DEB_VERSION: &str = "3.8.0";

/// What `cargo xtask deb` and the packaging tests need besides the
/// toolchain: cargo-deb, lintian, promtool, systemd-analyze.
pub fn packaging() -> Result<()> {
    let missing: Vec<&str> = PACKAGING_TOOLS
        .iter()
        .filter(|(cmd, _)| !have_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let version = stdout(Command::new(crate::workspace::cargo_bin().join("cargo-deb")).arg("--version"));
    if !version.contains(CARGO_DEB_VERSION) {
        println!("setup: cargo install cargo-deb {CARGO_DEB_VERSION} (about two minutes)");
        crate::workspace::run(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]))
        .context("installing cargo-deb")?;
    }
    Ok(())
}

/// The broker the JMS lab test runs on the cores: Debian's ActiveMQ 5.x
/// (its jars and `activemq.jar` launcher) and a Java runtime for it and
/// for the test's JMS clients (`javac` compiles them).
const BROKER_JAR: &str = "/usr/share/activemq/bin/activemq.jar";
const JMS_PACKAGES: &[(&str, &str)] = &[("java", "default-jre-headless"), ("javac", "default-jdk-headless")];

/// What the real broker pair test needs: ActiveMQ and a JDK.
pub fn jms() -> Result<()> {
    let mut missing: Vec<&str> = JMS_PACKAGES
        .iter()
        .filter(|(cmd, _)| !have_command(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !std::path::Path::new(BROKER_JAR).exists() {
        missing.push("activemq");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    if !std::path::Path::new(BROKER_JAR).exists() {
        bail!("{BROKER_JAR} is missing after installing activemq");
    }
    Ok(())
}
