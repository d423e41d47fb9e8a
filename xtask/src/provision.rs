//! Installing what building and testing need, once. Each step checks first
//! and does nothing when its tool is already there, so a second run is quick.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

/// System tools and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("curl", "curl"),
    ("iptables", "iptables"),
    ("tcpdump", "tcpdump"),
    ("sysctl", "procps"),
    ("nsenter", "util-linux"),
    ("nginx", "nginx-light"),
    // The observability tests: promtool over the rules, a real Prometheus
    // scraping an agent, and `lb-agent top` driven in a terminal.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("tmux", "tmux"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Finds dependencies no source file uses (`cargo xtask lint`).
const CARGO_MACHETE_VERSION: &str = "0.9.2";

pub fn all() -> Result<()> {
    system_tools()?;
    nightly()?;
    bpf_linker()?;
    Ok(())
}

/// What only `cargo xtask lint` needs: cargo-machete.
pub fn lint_tools() -> Result<()> {
    let have = stdout(Command::new("cargo-machete").arg("--version")).unwrap_or_default();
    if have.contains(CARGO_MACHETE_VERSION) {
        return Ok(());
    }
    step(
        &format!("installing cargo-machete {CARGO_MACHETE_VERSION}"),
        Command::new("cargo").args(["install", "cargo-machete", "--locked", "--version", CARGO_MACHETE_VERSION]),
    )
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{what}: {cmd:?} failed ({status})");
    }
    Ok(())
}

/// What `bench --pktgen-vm` and `test --kernels` need besides the default
/// tools: QEMU, a static busybox for the initramfs, cpio to pack it, and
/// apt-get's download (the kernel package itself is unpacked, not installed).
const VM_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("modinfo", "kmod"),
    ("xz", "xz-utils"),
];

/// Installs [`VM_TOOLS`] when missing (only for the VM bench and test tier).
pub fn vm_tools() -> Result<()> {
    install_missing(VM_TOOLS)
}

fn system_tools() -> Result<()> {
    install_missing(TOOLS)
}

fn install_missing(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !ok(Command::new("sh").args(["-c", &format!("command -v {tool}")])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !root || !ok(Command::new("sh").args(["-c", "command -v apt-get"])) {
        bail!("missing system tools; install them with: apt-get install -y {}", missing.join(" "));
    }
    step("apt-get update", Command::new("apt-get").args(["update", "-qq"]))?;
    step(
        &format!("installing {}", missing.join(" ")),
        Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The pinned nightly that builds lb-ebpf: `channel` in
/// lb-ebpf/rust-toolchain.toml (lb-agent's build.rs reads the same line).
pub fn ebpf_toolchain() -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("lb-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|r| r.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .with_context(|| format!("no channel in {}", path.display()))
}

/// Installs the pinned nightly with rust-src (build-std) and clippy (lint).
fn nightly() -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    let installed = stdout(Command::new("rustup").args(["component", "list", "--toolchain", &toolchain, "--installed"])).unwrap_or_default();
    if ["rust-src", "clippy"].iter().all(|c| installed.lines().any(|l| l.starts_with(c))) {
        return Ok(());
    }
    step(
        &format!("installing {toolchain} with rust-src and clippy (the eBPF crate's nightly)"),
        Command::new("rustup").args(["toolchain", "install", &toolchain, "--profile", "minimal", "--component", "rust-src", "--component", "clippy"]),
    )
}

/// The libLLVM shared object of the nightly toolchain (bpf-linker must use the same LLVM).
fn nightly_llvm() -> Result<PathBuf> {
    let sysroot = stdout(Command::new("rustc").arg(format!("+{}", ebpf_toolchain()?)).args(["--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so")))
        .with_context(|| format!("no libLLVM.so in {}", lib.display()))
}

/// bpf-linker built against the nightly's own libLLVM (no matching LLVM
/// package exists for Debian 12). A stamp records which libLLVM it was built
/// for; a different one (nightly updated) triggers a rebuild.
fn bpf_linker() -> Result<()> {
    let so = nightly_llvm()?;
    let soname = so.file_name().unwrap().to_string_lossy().into_owned();
    let home = std::env::var("HOME").context("HOME")?;
    // Must persist: bpf-linker keeps an rpath to this directory.
    let prefix = PathBuf::from(home).join(".local/share/xdplb/rust-llvm");
    let stamp = prefix.join("bpf-linker.stamp");
    let works = ok(Command::new("bpf-linker").arg("--version"));
    if works && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == soname) {
        return Ok(());
    }
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link)?;
    }
    let major = soname.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or("").to_string();
    step(
        &format!("building bpf-linker {BPF_LINKER_VERSION} against rustc's LLVM {major} (about a minute)"),
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp, &soname)?;
    Ok(())
}
