//! A program's own time per packet during a live blast: the kernel's
//! per-program run time and run count (`BPF_ENABLE_STATS`, held only for
//! the blast, as `kernel.bpf_stats_enabled` would), read before and after.
//! It splits a live figure's CPU-ns per packet into the program's part and
//! the rest (sender, veth, the redirect itself), which `prog_cost` cannot:
//! there the program's maps stay in cache between runs.
//!
//! The stats add two clock reads around every run; the blast that measures
//! them is not one of the timed rounds, so no rate figure carries them.
//! With `XDPLB_BENCH_PERF=DIR` the same blast is also sampled by
//! `perf record -a -g -e cpu-clock` into `DIR/<label>.data`, to see where
//! the rest goes (see docs/benchmarks.md, "The redirect path's cost").
use std::{os::fd::OwnedFd, path::PathBuf, process::Child};

use anyhow::{Context as _, Result};
use aya::programs::Xdp;

/// Run time (ns) and run count of `p` so far.
pub fn read(p: &Xdp) -> Result<(u64, u64)> {
    let info = p.info().context("reading program info")?;
    Ok((info.run_time().as_nanos() as u64, info.run_count()))
}

/// Nanoseconds per run between two [`read`]s, with the runs counted.
pub fn per_run(before: (u64, u64), after: (u64, u64)) -> Option<(f64, u64)> {
    let runs = after.1.checked_sub(before.1).filter(|n| *n > 0)?;
    Some((after.0.saturating_sub(before.0) as f64 / runs as f64, runs))
}

/// Run-time statistics on (and, with `XDPLB_BENCH_PERF`, a system-wide
/// profile being recorded) until dropped.
pub struct Instrumented {
    _stats: OwnedFd,
    perf: Option<Child>,
}

impl Instrumented {
    pub fn start(label: &str) -> Result<Self> {
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
        let perf = match std::env::var_os("XDPLB_BENCH_PERF").map(PathBuf::from) {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                let out = dir.join(format!("{label}.data"));
                let child = std::process::Command::new("perf")
                    .args(["record", "-q", "-a", "-g", "-e", "cpu-clock", "-o"])
                    .arg(&out)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .context("starting perf record (XDPLB_BENCH_PERF)")?;
                // perf needs a moment to open its events on every CPU.
                std::thread::sleep(std::time::Duration::from_millis(700));
                Some(child)
            }
            None => None,
        };
        Ok(Self { _stats: stats, perf })
    }

    /// Whether a profile is being recorded (its blast is made longer, for samples).
    pub fn profiling(&self) -> bool {
        self.perf.is_some()
    }
}

impl Drop for Instrumented {
    fn drop(&mut self) {
        if let Some(mut child) = self.perf.take() {
            // SIGINT: perf writes its file and exits.
            // SAFETY: plain kill(2) of our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}
