//! `cargo xtask lint`'s unused-dependency check: cargo-machete over every
//! crate (a dependency no source file names), and the workspace's own table
//! (a `[workspace.dependencies]` entry no member inherits, which machete
//! does not look at).
use std::{path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

/// Fails when a crate declares a dependency it does not use.
pub fn check(workspace: &Path) -> Result<()> {
    // The binary itself: run as `cargo machete` under `cargo xtask` (CARGO
    // set), it takes its own name for a directory to scan.
    let status = Command::new("cargo-machete")
        .arg("--with-metadata")
        .current_dir(workspace)
        .status()
        .context("running cargo machete (cargo xtask provision installs it)")?;
    if !status.success() {
        bail!("cargo machete found unused dependencies (above); remove them, or list a false positive under [package.metadata.cargo-machete] ignored");
    }
    let root = std::fs::read_to_string(workspace.join("Cargo.toml")).context("reading Cargo.toml")?;
    let mut members = String::new();
    for m in ["lb-common", "lb-ebpf", "lb-agent", "xtask", "tests", "tests/bench", "tests/bench/traffic"] {
        members += &std::fs::read_to_string(workspace.join(m).join("Cargo.toml")).with_context(|| format!("reading {m}/Cargo.toml"))?;
    }
    let unused: Vec<String> = workspace_deps(&root).into_iter().filter(|d| !inherits(&members, d)).collect();
    if !unused.is_empty() {
        bail!("[workspace.dependencies] that no member uses: {} (remove them from Cargo.toml)", unused.join(", "));
    }
    println!("xtask lint: no unused dependencies");
    Ok(())
}

/// The names in the `[workspace.dependencies]` table.
fn workspace_deps(toml: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[workspace.dependencies]";
        } else if inside && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

/// Whether some member's manifest takes `dep` from the workspace.
fn inherits(manifests: &str, dep: &str) -> bool {
    manifests.lines().map(str::trim).any(|l| {
        l.strip_prefix(dep).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.starts_with(".workspace") || rest.starts_with('=') && rest.contains("workspace = true")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_dependency_no_member_inherits_is_found() {
        let root = "[workspace]\nmembers = []\n[workspace.dependencies]\n# kernel side\naya = { version = \"1\" }\nrand = \"0.8\"\nlibc = \"0.2\"\n[profile.release]\ndebug = 2\n";
        assert_eq!(workspace_deps(root), ["aya", "rand", "libc"]);
        let members = "[dependencies]\naya = { workspace = true }\nlibc.workspace = true\nrand_core = { workspace = true }\n";
        let unused: Vec<_> = workspace_deps(root).into_iter().filter(|d| !inherits(members, d)).collect();
        assert_eq!(unused, ["rand"]);
    }

    /// What `cargo xtask lint` enforces, minus machete (a separate tool).
    #[test]
    fn every_workspace_dependency_is_used() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let root = std::fs::read_to_string(ws.join("Cargo.toml")).unwrap();
        let members: String = ["lb-common", "lb-ebpf", "lb-agent", "xtask", "tests", "tests/bench", "tests/bench/traffic"]
            .iter()
            .map(|m| std::fs::read_to_string(ws.join(m).join("Cargo.toml")).unwrap())
            .collect();
        let unused: Vec<_> = workspace_deps(&root).into_iter().filter(|d| !inherits(&members, d)).collect();
        assert!(unused.is_empty(), "{unused:?}");
    }
}
