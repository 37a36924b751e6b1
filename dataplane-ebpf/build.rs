//! Link options for the programs, and a rebuild when bpf-linker changes (a
//! new LLVM changes codegen).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found on PATH: run `cargo xtask setup` (it installs bpf-linker built against LLVM 22)");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap_or_default());
}
