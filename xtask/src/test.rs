//! Running cargo test and adding up what every test binary reported.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

#[derive(Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Totals {
    /// Adds a libtest summary line ("test result: ok. 3 passed; 0 failed; 1 ignored; ...").
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo <args>` from the workspace root, passing its output through
/// and counting the summary lines into `totals`.
pub fn run(args: &[&str], totals: &mut Totals) -> Result<()> {
    run_with(args, &[], totals)
}

/// [`run`] with environment variables set for cargo and the tests.
pub fn run_with(args: &[&str], env: &[(&str, &str)], totals: &mut Totals) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let out = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(out).lines() {
        let line = line.context("reading cargo's output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `stress-ng` keeping every CPU busy at a low priority while it lives
/// (stopped on drop).
pub struct CpuLoad(std::process::Child);

impl CpuLoad {
    pub fn start() -> Result<Self> {
        // nice 10 (workers inherit it): the tests still make progress.
        let child = Command::new("nice")
            .args(["-n", "10", "stress-ng", "--cpu", "0", "--cpu-load", "100", "--timeout", "3h", "--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting stress-ng")?;
        eprintln!("xtask: stress-ng (pid {}) keeps every CPU busy during the run", child.id());
        Ok(Self(child))
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        // SIGTERM: stress-ng stops its workers itself (SIGKILL would orphan them).
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// The long variants of the reliability tests, one after the other, each
/// stretched by the variable its test reads.
pub fn soak(totals: &mut Totals) -> Result<()> {
    let runs: [(&str, &str, &str, &str); 2] = [
        ("backend_churn", "backends_churning_every_100ms", "XDPLB_CHURN_SECS", "60"),
        ("api_faults", "an_api_server_outage", "XDPLB_OUTAGE_SECS", "300"),
    ];
    let mut result = Ok(());
    for (file, filter, var, value) in runs {
        let r = run_with(&["test", "-p", "xdplb-tests", "--test", file, "--", filter, "--nocapture"], &[(var, value)], totals);
        result = result.and(r);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_add_up() {
        let mut t = Totals::default();
        t.add("test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 4.95s");
        t.add("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s");
        t.add("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (15, 2, 1));
    }
}
