//! `cargo xtask`: provisions the toolchain, builds, tests, demos and
//! benchmarks xdplb. It depends on nothing that needs the eBPF toolchain, so
//! it can run on a fresh machine and install that toolchain first.
mod bench;
mod cycles;
mod provision;
mod test;
mod unused;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo xdplb (provisions what it needs on first use)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain and system tools if missing (idempotent).
    Provision,
    /// Build `target/release/lb-agent` with the eBPF bytecode embedded.
    Build,
    /// Run the whole test suite: unit, packet fixtures, network namespaces (needs root).
    Test {
        /// Instead: the kernels tier. Boots Debian 12's kernel (6.1, no TCX)
        /// in QEMU and runs the agent and real traffic inside it
        /// (tests/tests/kernels.rs; provisions qemu, busybox, cpio; a few minutes).
        #[arg(long)]
        kernels: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Real traffic through a Service VIP in network namespaces (needs root).
    Demo,
    /// Module cycles (xtask/src/cycles.rs), unused dependencies
    /// (cargo-machete, xtask/src/unused.rs), then clippy in two passes: the
    /// workspace on stable, lb-ebpf alone on nightly for bpfel-unknown-none
    /// (it cannot build for the host).
    Lint,
    /// Per-packet cost, live forwarding rate and kube-proxy comparison, in
    /// one run; a table on stdout, JSON under target/bench/ (needs root).
    Bench {
        /// About a minute instead of up to ten.
        #[arg(long)]
        quick: bool,
        /// Seconds: tiny counts, for checking the output's structure.
        #[arg(long)]
        smoke: bool,
        /// Directory for the JSON (default target/bench).
        #[arg(long)]
        out: Option<String>,
        /// Only these sections, comma-separated: prog_cost, live, skb,
        /// maglev, conn, agent (default: all).
        #[arg(long)]
        only: Option<String>,
        /// Only the "pktgen in a VM" workflow check: QEMU (TCG) boots a
        /// Debian kernel whose pktgen sends UDP to a VIP through a tap
        /// device running our XDP program (provisions qemu, busybox, cpio).
        #[arg(long)]
        pktgen_vm: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Provision => provision::all(),
        Cmd::Build => {
            provision::all()?;
            cargo(&["build", "--release", "-p", "lb-agent"])?;
            println!("built target/release/lb-agent");
            Ok(())
        }
        Cmd::Test { kernels: true, args } => {
            provision::all()?;
            provision::vm_tools()?;
            let mut total = test::Totals::default();
            let mut a = vec!["test", "-p", "xdplb-tests", "--test", "kernels", "--", "--ignored", "--nocapture"];
            a.extend(args.iter().map(String::as_str));
            let r = test::run(&a, &mut total);
            println!("xtask test --kernels: {} passed, {} failed", total.passed, total.failed);
            r
        }
        Cmd::Test { kernels: false, args } => {
            provision::all()?;
            let mut total = test::Totals::default();
            // lb-ebpf's pure helpers (checksums, hashes) are unit-tested on
            // the host; the crate is not a default member (see Cargo.toml).
            let r1 = test::run(&["test", "-p", "lb-ebpf", "--lib"], &mut total);
            let mut a = vec!["test", "--workspace", "--exclude", "lb-ebpf", "--no-fail-fast"];
            if !args.is_empty() {
                a.push("--");
                a.extend(args.iter().map(String::as_str));
            }
            let r2 = test::run(&a, &mut total);
            // One closing line for the whole suite (cargo's last line is
            // often a crate with no doc tests: "0 passed").
            println!("xtask test: {} passed, {} failed, {} ignored", total.passed, total.failed, total.ignored);
            r1.and(r2)
        }
        Cmd::Bench { quick, smoke, out, only, pktgen_vm } => bench::run(quick, smoke, out.as_deref(), only.as_deref(), pktgen_vm),
        Cmd::Lint => {
            let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            cycles::check(workspace)?;
            provision::all()?;
            provision::lint_tools()?;
            unused::check(workspace)?;
            cargo(&["clippy", "--workspace", "--exclude", "lb-ebpf", "--all-targets", "--", "-D", "warnings"])?;
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("lb-ebpf");
            let status = Command::new("rustup")
                .args(["run", &provision::ebpf_toolchain()?, "cargo", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--release", "--", "-D", "warnings"])
                .current_dir(root)
                .status()
                .context("running nightly clippy for lb-ebpf")?;
            if !status.success() {
                bail!("clippy on lb-ebpf failed ({status})");
            }
            Ok(())
        }
        Cmd::Demo => {
            provision::all()?;
            cargo(&["run", "--release", "-q", "-p", "xdplb-tests", "--bin", "xdplb-demo"])
        }
    }
}

/// Runs cargo from the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
