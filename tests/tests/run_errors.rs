//! `lb-agent run`'s failures past the start-up checks (those are in
//! ops_checks.rs), each run for real: the agent exits non-zero, its error
//! names the failed step and what to do next, and nothing is pinned. Needs
//! root.
use std::{
    path::Path,
    process::{Command, Output},
};

use xdplb_tests::{
    agent::{agent_binary, objects_dir},
    netns::Netns,
    ops::text,
};

/// A pin path of this test process under /sys/fs/bpf.
fn pin(tag: &str) -> String {
    format!("/sys/fs/bpf/xlbt-{}-{tag}", std::process::id())
}

/// `lb-agent run` in `ns` (nsenter keeps the host's mounts), on its lo in
/// generic mode so every start-up check passes.
fn run(ns: &Netns, source: &str, pin_path: &str, args: &[&str]) -> Output {
    xdplb_tests::require_root();
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(agent_binary())
        .args(["run", "--iface", "lo", "--xdp-mode", "generic", "--node-name", "node-0", "--pin-path", pin_path])
        .arg(format!("--source={source}"))
        .args(args)
        .output()
        .expect("running lb-agent")
}

/// Exit code 1, every `want` in the output, and nothing under `pin_path`.
fn assert_failed(out: &Output, pin_path: &str, want: &[&str]) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    for w in want {
        assert!(t.contains(w), "missing {w:?} in\n{t}");
    }
    assert!(!t.contains("panicked"), "{t}");
    let left = Path::new(pin_path).exists();
    let _ = std::fs::remove_dir_all(pin_path);
    assert!(!left, "nothing is pinned before the failed step:\n{t}");
}

#[test]
fn a_taken_metrics_address_names_the_flag() {
    let ns = Netns::new();
    // Held by this test, in the agent's namespace.
    let _taken = ns.run(|| std::net::TcpListener::bind("127.0.0.1:9464").expect("binding in the namespace"));
    let src = objects_dir(&[0]);
    let out = run(&ns, &format!("file:{}", src.display()), &pin("metrics"), &["--metrics-addr", "127.0.0.1:9464"]);
    let _ = std::fs::remove_dir_all(&src);
    assert_failed(
        &out,
        &pin("metrics"),
        &["serving /metrics, /healthz and /readyz on 127.0.0.1:9464", "is the port in use? choose another with --metrics-addr", "Address already in use"],
    );
}

#[test]
fn a_missing_redirect_interface_is_named_before_anything_is_loaded() {
    let ns = Netns::new();
    let src = objects_dir(&[0]);
    let out = run(&ns, &format!("file:{}", src.display()), &pin("redirect"), &["--metrics-addr", "127.0.0.1:0", "--redirect-iface", "xlbt-nope2"]);
    let _ = std::fs::remove_dir_all(&src);
    assert_failed(
        &out,
        &pin("redirect"),
        &["--redirect-iface xlbt-nope2: no such interface in this network namespace", "ip -br link"],
    );
}

#[test]
fn a_missing_source_file_is_named_with_the_fix() {
    let ns = Netns::new();
    let out = run(&ns, "file:/nonexistent/xlbt-objects.yaml", &pin("source"), &["--metrics-addr", "127.0.0.1:0"]);
    assert_failed(
        &out,
        &pin("source"),
        &["reading --source file:/nonexistent/xlbt-objects.yaml: fix the path or pass another --source", "No such file or directory"],
    );
}
