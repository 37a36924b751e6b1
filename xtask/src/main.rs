//! `cargo xtask`: set-up, build, tests, the netns lab, the demo and the
//! benchmarks. Every command first makes sure the toolchain is in place
//! (see `setup`), so a fresh machine needs nothing but this.
mod deb;
mod setup;
mod workspace;
use anyhow::Result;
use clap::{Parser, Subcommand};
use workspace::{build_release, cargo, root, run};

#[derive(Parser)]
#[command(about = "carwash's build, test, lab and benchmark tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, LLVM 22, bpf-linker, bpffs, lab tools, ActiveMQ.
    Setup,
    /// Build the eBPF object and the `carwash` binary (release).
    Build,
    /// Run every test: unit, BPF_PROG_TEST_RUN fixtures, end-to-end in namespaces.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The netns lab: the default topology with the repo's tenants.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
        /// Lab name: prefix of its namespaces.
        #[arg(long, default_value = "cwlab", global = true)]
        name: String,
        /// Veths as the kernel makes them (GRO off, checksum offload on)
        /// instead of NIC-like: shows what carwash reports when the
        /// interfaces cannot take redirected frames.
        #[arg(long, global = true)]
        plain_veths: bool,
        /// `up`: a fleet of this many carwash hosts behind a BIRD router
        /// with ECMP, each running the agent with the repo's policies and
        /// its own BIRD (1: the single-host lab, no agent).
        #[arg(long, default_value_t = 1, global = true)]
        hosts: usize,
    },
    /// Bring the lab up, run the agent on it, drive traffic inbound and
    /// outbound, allowed and denied, print what happened; fails if anything
    /// did not happen as the policies say.
    Demo {
        /// Leave the lab up afterwards.
        #[arg(long)]
        keep: bool,
        /// Lab name: prefix of its namespaces.
        #[arg(long, default_value = "cwlab")]
        name: String,
    },
    /// The main job: the agent on the lab topology with the repo's policies, until Ctrl-C.
    Run,
    /// The Debian package: target/debian/carwash_<version>_<arch>.deb (cargo-deb).
    Deb,
    /// The differential test (programs against the reference model) and the fuzzers at full
    /// size, in release: 1,000,000 compared frames, 10,000,000 fuzzed frames, 100,000 policy
    /// sets and 5,000 API requests (`cargo xtask test` runs them CI-sized).
    Fuzz {
        /// Frames compared with the model.
        #[arg(long, default_value_t = 1_000_000)]
        differential: u64,
        /// Fuzzed frames.
        #[arg(long, default_value_t = 10_000_000)]
        frames: u64,
        /// Policy sets (the API gets a twentieth as many requests).
        #[arg(long, default_value_t = 100_000)]
        policies: u64,
        /// Seed of the frame runs (default: the clock; each run prints its seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Benchmarks: the programs (BPF_PROG_TEST_RUN, against a minimal XDP_PASS program in the same
    /// run), a denied flood against XDP_DROP and nftables (live frames), source NAT, the agent at
    /// 10,000 tenants, three agents following one etcd at 10,000 tenants, and the health checker
    /// probing 10,000 tenants × 4 machines every second; `bench -- packets`, `-- events`,
    /// `-- handoff`, `-- snat`, `-- agent`, `-- fleet` (etcd) or `-- health` runs one part.
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    Up,
    Down,
    Status,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => {
            setup::run()?;
            setup::jms()
        }
        Cmd::Build => {
            setup::run()?;
            build_release()?;
            Ok(())
        }
        Cmd::Test { args } => {
            setup::run()?;
            setup::packaging()?;
            setup::jms()?;
            let mut cmd = cargo();
            // The default members: everything but the eBPF crate, which only builds
            // for the bpf target (through dataplane's build script).
            cmd.args(["test", "--no-fail-fast"]);
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            run(&mut cmd)
        }
        Cmd::Lab {
            cmd,
            name,
            plain_veths,
            hosts,
        } => {
            setup::run()?;
            lab(cmd, &name, plain_veths, hosts)
        }
        Cmd::Demo { keep, name } => {
            setup::run()?;
            demo(keep, &name)
        }
        Cmd::Run => {
            setup::run()?;
            main_job()
        }
        Cmd::Deb => {
            setup::run()?;
            setup::packaging()?;
            let deb = deb::build()?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Fuzz {
            differential,
            frames,
            policies,
            seed,
        } => {
            setup::run()?;
            let mut cmd = cargo();
            cmd.args(["test", "--release", "-p", "carwash-tests"]);
            for t in ["differential", "fuzz_frames", "fuzz_policy"] {
                cmd.args(["--test", t]);
            }
            cmd.args(["--", "--nocapture", "--test-threads", "1"])
                .env("CARWASH_DIFF_CASES", differential.to_string())
                .env("CARWASH_FUZZ_FRAMES", frames.to_string())
                .env("CARWASH_PROPTEST_CASES", policies.to_string());
            if let Some(seed) = seed {
                cmd.env("CARWASH_SEED", seed.to_string());
            }
            run(&mut cmd)
        }
        Cmd::Bench { args } => {
            setup::run()?;
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "carwash-tests", "--bench", "dataplane"]);
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            run(&mut cmd)
        }
    }
}

fn lab(cmd: LabCmd, name: &str, plain_veths: bool, hosts: usize) -> Result<()> {
    let cfg = netlab::lab::LabConfig {
        name: name.to_string(),
        policies: root().join("policies"),
        veth: if plain_veths {
            netlab::netns::VethSetup::PLAIN
        } else {
            netlab::netns::VethSetup::NIC_LIKE
        },
    };
    match cmd {
        LabCmd::Up if hosts > 1 => {
            let carwash = build_release()?;
            let fleet = netlab::fleet::Fleet::up(&cfg, hosts, &carwash)?;
            println!(
                "lab {name} is up: {hosts} carwash hosts ({}), every one a next hop of every VIP and egress IP",
                fleet
                    .hosts
                    .iter()
                    .map(|h| h.netns.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            print!("{}", netlab::fleet::Fleet::status(name)?);
            for h in &fleet.hosts {
                println!(
                    "{}: carwash status --config {}   (agent log {})",
                    h.netns,
                    h.config.display(),
                    h.agent_log.display()
                );
            }
        }
        LabCmd::Up => {
            let lab = netlab::lab::Lab::up(&cfg)?;
            println!("lab {name} is up");
            print!("{}", netlab::lab::Lab::status(&lab.name)?);
        }
        LabCmd::Down => {
            netlab::lab::Lab::down(name)?;
            println!("lab {name} is down");
        }
        LabCmd::Status => print!("{}", netlab::fleet::Fleet::status(name)?),
    }
    Ok(())
}

mod lab_run;
use lab_run::{demo, main_job};
