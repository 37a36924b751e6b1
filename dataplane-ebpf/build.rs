//! Link options for the programs, and a rebuild when bpf-linker changes (a
//! new LLVM changes codegen).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found on PATH: run `cargo xtask setup` (it installs bpf-linker built against LLVM 22)");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    // 32-bit ALU ops (rustc fixes the CPU to "generic"). Not
    // allows-misaligned-mem-access: LLVM then misaligns stack slots too,
    // which the verifier refuses.
    println!("cargo:rustc-link-arg=--cpu-features=+alu32");
    // bpf-linker otherwise has LLVM keep memcpy in order by turning off the
    // inline expansion of memset, which then becomes a call to a byte loop
    // on every packet (zeroing a key, say).
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
