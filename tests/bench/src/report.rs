//! Results: every figure with its unit and conditions, printed as a table and
//! written as JSON with the machine, kernel and commit it was measured on.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

pub use super::figure::Figure;

#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// Sections this machine could not run, with the reason (in the JSON as `skipped`).
    pub skipped: Vec<(String, String)>,
}

impl Report {
    pub fn add(&mut self, section: &str, name: &str, value: f64, min: Option<f64>, unit: &str, conditions: Value) {
        let f = Figure { section: section.into(), name: name.into(), value, min, unit: unit.into(), conditions };
        println!("{}", row(&f));
        self.figures.push(f);
    }

    /// Records that `section` could not run here, and why (printed too).
    pub fn skip(&mut self, section: &str, why: &str) {
        println!("{section}: SKIPPED: {why}");
        self.skipped.push((section.into(), why.into()));
    }

    /// The whole table, for the end of the run.
    pub fn table(&self) -> String {
        let mut s = format!("{:<10} {:<44} {:>12} {:>10} {:<10} {}\n", "section", "figure", "value", "min", "unit", "conditions");
        for f in &self.figures {
            s += &row(f);
            s.push('\n');
        }
        s
    }

    /// Writes `<dir>/bench-<unix time>.json` and `<dir>/latest.json` (and the
    /// same `.svg` chart when there are live figures); returns the JSON path.
    pub fn write(&self, dir: &Path, mode: &str, elapsed_s: f64) -> Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let doc = json!({
            "schema": "xdplb-bench/1",
            "mode": mode,
            "unix_time": now,
            "elapsed_s": elapsed_s,
            "machine": machine(),
            "kernel": sh("uname", &["-r"]),
            "commit": sh("git", &["rev-parse", "HEAD"]),
            "dirty": !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty(),
            "figures": self.figures,
            "skipped": self.skipped.iter().map(|(s, why)| json!({"section": s, "reason": why})).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        let path = dir.join(format!("bench-{now}.json"));
        std::fs::write(&path, &text)?;
        std::fs::write(dir.join("latest.json"), &text)?;
        if let Some(svg) = super::chart::svg(&self.figures, 1) {
            std::fs::write(dir.join(format!("bench-{now}.svg")), &svg)?;
            std::fs::write(dir.join("latest.svg"), &svg)?;
        }
        Ok(path)
    }
}

fn row(f: &Figure) -> String {
    let cond = match &f.conditions {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"'))).collect::<Vec<_>>().join(" "),
        v => v.to_string(),
    };
    let min = f.min.map_or(String::new(), sig3);
    format!("{:<10} {:<44} {:>12} {:>10} {:<10} {}", f.section, f.name, sig3(f.value), min, f.unit, cond)
}

/// Three significant digits (integers stay whole): 0.185, 1.32, 863.
pub fn sig3(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 || a == 0.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        a if a >= 1.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

/// Conditions shown in the Markdown table: the ones that tell figures of a
/// section apart (the long descriptions stay in the JSON).
const MARKDOWN_CONDITIONS: &[&str] = &[
    "services", "backends_per_service", "threads", "proto", "rounds", "ns_over_drop", "delivered_ratio", "backends", "table_size", "flows",
    "endpoints", "changes", "connections", "errors",
];

/// The figures as a Markdown table, for docs/benchmarks.md.
pub fn markdown(figures: &[Figure]) -> String {
    let mut s = String::from("| section | figure | value | min | unit | conditions |\n|---|---|---:|---:|---|---|\n");
    for f in figures {
        let cond: Vec<String> = MARKDOWN_CONDITIONS
            .iter()
            .filter_map(|k| f.conditions.get(*k).map(|v| format!("{k}={}", v.to_string().trim_matches('"'))))
            .collect();
        s += &format!("| {} | `{}` | {} | {} | {} | {} |\n", f.section, f.name, sig3(f.value), f.min.map_or(String::new(), sig3), f.unit, cond.join(", "));
    }
    s
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0)));
    json!({
        "hostname": sh("hostname", &[]),
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_kb": mem_kb,
        "arch": std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn figures_keep_three_significant_digits() {
        assert_eq!([sig3(0.1849), sig3(1.324), sig3(13.24), sig3(863.4), sig3(0.0)], ["0.185", "1.32", "13.2", "863", "0"]);
    }

    #[test]
    fn markdown_rows_show_the_distinguishing_conditions_only() {
        let f = Figure { section: "skb".into(), name: "skb/xdplb_10_services".into(), value: 0.1849, min: None, unit: "Mpps".into(),
            conditions: json!({"services": 10, "threads": 2, "sender": "a long description"}) };
        let md = markdown(&[f]);
        assert!(md.ends_with("| skb | `skb/xdplb_10_services` | 0.185 |  | Mpps | services=10, threads=2 |\n"), "{md}");
    }
}
