//! Builds the eBPF object (crate `dataplane-ebpf`) for the bpf target with the
//! nightly toolchain and bpf-linker; `src/loader.rs` embeds it.
//!
//! The steps are aya-build's (`cargo build` of the crate's binary for
//! `bpfel-unknown-none`, `-Z build-std=core`, its own target directory under
//! `OUT_DIR`), with one difference that aya-build cannot express: the
//! compiler's flags. The programs are built for BPF CPU v3
//! (`-C target-cpu=v3`), which has 32-bit compare-and-jump: with the
//! default CPU ("generic"), LLVM turns every condition into a register set
//! to 0 or 1 and a second jump on it, four or five instructions where one
//! does (a sixth of the uplink program). v3 needs Linux 5.1; the ring
//! buffer carwash reports events through already needs 5.8.
use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, anyhow, bail};

/// The BPF CPU the programs are built for.
const BPF_CPU: &str = "v3";

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane-ebpf");
    // The crate and everything it uses (its `common` crate is inside it).
    println!("cargo:rerun-if-changed={root}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    // `aya-ebpf` reads the host's architecture from this cfg (for the
    // kernel's structures in kprobes; carwash's programs do not use them).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64".into()
    } else {
        arch
    };

    // `rustup run nightly cargo`: the programs need the nightly compiler
    // (build-std, the bpf target); without rustup, the cargo on PATH.
    let mut cmd = match which("rustup") {
        Some(rustup) => {
            let mut c = Command::new(rustup);
            c.args(["run", "nightly", "cargo"]);
            c
        }
        None => Command::new("cargo"),
    };
    let target_dir = out_dir.join("ebpf-target");
    cmd.args(["build", "--package", "dataplane-ebpf", "--bins", "--release"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root);
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        format!("-Ctarget-cpu={BPF_CPU}"),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // The outer build's compiler and wrappers are the stable host's.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER", "RUSTFLAGS"] {
        cmd.env_remove(key);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("building the eBPF programs failed ({}):\n{stderr}", output.status);
    }
    // The compiler's warnings, shown as the build's (cargo prints nothing
    // else of a build script's output).
    if stderr.contains("warning") {
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
    }
    let built = target_dir.join(target).join("release").join("dataplane-ebpf");
    let dst = out_dir.join("dataplane-ebpf");
    std::fs::copy(&built, &dst).with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
    Ok(())
}

/// `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
