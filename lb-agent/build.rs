//! Builds lb-ebpf for `bpfel-unknown-none` and hands the object to the agent,
//! which embeds it (`include_bytes!`), so `lb-agent` is one self-contained file.
//!
//! Why it is odd: the eBPF crate needs nightly (`-Z build-std=core`, the
//! target has no prebuilt core) and bpf-linker; the host crates build on
//! stable. `cargo xtask build` provisions both; without them this script stops
//! with one line saying so.
use std::{env, path::PathBuf, process::Command};

const TARGET: &str = "bpfel-unknown-none";
const HINT: &str = "the eBPF toolchain is missing: run `cargo xtask build` once (it installs the pinned nightly of lb-ebpf/rust-toolchain.toml and bpf-linker)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for p in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-ebpf/rust-toolchain.toml", "lb-common/src", "tests/bench/traffic/src"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=XDPLB_EBPF_OBJECT");

    // A prebuilt object (e.g. from a container build stage) skips the build.
    if let Ok(obj) = env::var("XDPLB_EBPF_OBJECT") {
        std::fs::copy(&obj, out.join("lb.o")).unwrap_or_else(|e| fail(&format!("{obj}: {e}")));
        return;
    }
    if Command::new("bpf-linker").arg("--version").output().is_err() {
        fail(HINT);
    }
    let target_dir = root.join("target").join("ebpf");
    let toolchain = ebpf_toolchain(&root);
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--package", "lb-ebpf", "--bins", "--release"])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        // BTF (`--btf`, debuginfo) lets bpftool print map fields by name; cpu v3
        // has the atomic fetch-add round-robin needs (kernel >= 5.1).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                &format!("--cfg=bpf_target_arch=\"{}\"", env::var("CARGO_CFG_TARGET_ARCH").unwrap()),
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
                "-Ctarget-cpu=v3",
            ]
            .join("\x1f"),
        );
    // Variables of this (stable, host) build that must not leak into the nested one.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| fail(&format!("rustup: {e}; {HINT}")));
    if !status.success() {
        fail(&format!("building lb-ebpf failed ({status}); if the toolchain is the cause, {HINT}"));
    }
    // `lb` is the product; `bench` (test-only programs: floors, the
    // packet-restoring wrapper, the live-frames generator) is embedded only
    // with the agent's `bench` feature.
    for bin in ["lb", "bench"] {
        let obj = target_dir.join(TARGET).join("release").join(bin);
        if bin == "bench" && !obj.exists() {
            continue;
        }
        std::fs::copy(&obj, out.join(format!("{bin}.o")))
            .unwrap_or_else(|e| fail(&format!("{}: {e}", obj.display())));
    }
}

/// The pinned nightly: `channel` in lb-ebpf/rust-toolchain.toml.
fn ebpf_toolchain(root: &std::path::Path) -> String {
    let path = root.join("lb-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|r| r.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .unwrap_or_else(|| fail(&format!("no channel in {}", path.display())))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
