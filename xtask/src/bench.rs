//! `cargo xtask bench`: provisions, then runs the `xdplb-bench` binary of
//! the bench crate (tests/bench/, on the test harness; release build: the figures are about the dataplane, but
//! a debug generator and provisioning would slow the run down).
use anyhow::Result;

/// Runs the benchmark; `quick` is the one-minute version, `smoke` the
/// structure check the test suite runs.
pub fn run(quick: bool, smoke: bool, out: Option<&str>, only: Option<&str>, pktgen_vm: bool) -> Result<()> {
    crate::provision::all()?;
    if pktgen_vm {
        crate::provision::vm_tools()?;
    }
    let mut args = vec!["run", "--release", "-q", "-p", "xdplb-bench", "--bin", "xdplb-bench", "--"];
    if pktgen_vm {
        args.push("--pktgen-vm");
    } else if smoke {
        args.push("--smoke");
    } else if quick {
        args.push("--quick");
    }
    if let Some(sections) = only {
        args.extend(["--only", sections]);
    }
    if let Some(dir) = out {
        args.extend(["--out", dir]);
    }
    crate::cargo(&args)
}
