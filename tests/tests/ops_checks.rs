//! Every start-up check triggered for real, through `lb-agent doctor` (the
//! report) and `lb-agent run` (which stops at the failed check with the
//! fix): a missing interface, a pin path off bpffs, bpffs unmounted in a
//! private mount namespace (run mounts it), dropped capabilities, and an
//! interface without native XDP. (Kernel version, BTF and the verifier log
//! tail are unit tests in lb-agent's ops::checks: this kernel passes them.)
//! Needs root.
use std::process::{Command, Output, Stdio};

use xdplb_tests::{
    agent::{agent_binary, objects_dir},
    ops::text,
    wait_for,
};

fn bin() -> String {
    xdplb_tests::require_root();
    agent_binary().to_string_lossy().into_owned()
}

/// A pin path of this test process under /sys/fs/bpf.
fn pin(tag: &str) -> String {
    format!("/sys/fs/bpf/xlbt-{}-{tag}", std::process::id())
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("sh")
}

/// `lb-agent run` with `args` after a source and a private metrics port;
/// expected to fail at start-up.
fn run_fails(prefix: &str, args: &str) -> String {
    let src = objects_dir(&[0]);
    let out = sh(&format!(
        "{prefix} {} run --source file:{} --node-name node-0 --metrics-addr 127.0.0.1:0 {args}",
        bin(),
        src.display()
    ));
    let _ = std::fs::remove_dir_all(&src);
    assert!(
        !out.status.success(),
        "run should have failed:\n{}",
        text(&out)
    );
    text(&out)
}

fn doctor(prefix: &str, args: &str) -> Output {
    sh(&format!("{prefix} {} doctor {args}", bin()))
}

fn assert_has(out: &str, want: &[&str]) {
    for w in want {
        assert!(out.contains(w), "missing {w:?} in\n{out}");
    }
}

#[test]
fn a_missing_interface_is_named() {
    let out = doctor("", "--iface xlbt-nope0");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_has(
        &text(&out),
        &[
            "✓ kernel version",
            "✓ kernel BTF",
            "✓ privileges",
            "✗ interface xlbt-nope0",
            "does not exist in this network namespace",
            "1 check(s) failed",
        ],
    );
    let err = run_fails(
        "",
        &format!("--iface xlbt-nope0 --pin-path {}", pin("noiface")),
    );
    assert_has(
        &err,
        &[
            "start-up check \"interface xlbt-nope0\" failed",
            "does not exist",
            "lb-agent doctor",
        ],
    );
    assert!(
        !std::path::Path::new(&pin("noiface")).exists(),
        "nothing pinned before the checks pass"
    );
}

#[test]
fn a_pin_path_off_bpffs_is_refused_with_the_fix() {
    let out = doctor("", "--pin-path /tmp/xlbt-notbpf/maps");
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &[
            "✗ bpffs",
            "/tmp/xlbt-notbpf is not a bpffs",
            "choose a --pin-path under /sys/fs/bpf",
        ],
    );
    let err = run_fails(
        "",
        "--iface lo --xdp-mode generic --pin-path /tmp/xlbt-notbpf/maps",
    );
    assert_has(&err, &["start-up check \"bpffs\" failed", "not a bpffs"]);
}

#[test]
fn an_unmounted_bpffs_is_mounted_by_run_or_reported() {
    // A private mount namespace (unshare -m makes mounts private) where
    // /sys/fs/bpf is unmounted: the host's bpffs is untouched.
    let out = doctor(
        "unshare -m sh -c 'umount /sys/fs/bpf && exec \"$0\" \"$@\"'",
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_has(
        &text(&out),
        &[
            "✓ bpffs",
            "/sys/fs/bpf is not mounted; `lb-agent run` will mount it",
        ],
    );
    // Without CAP_SYS_ADMIN it cannot be mounted: say how.
    let out = doctor("unshare -m sh -c 'umount /sys/fs/bpf && exec setpriv --bounding-set=-sys_admin --inh-caps=-all -- \"$0\" \"$@\"'", "");
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &[
            "✗ bpffs",
            "may not mount it",
            "mount -t bpf bpf /sys/fs/bpf",
        ],
    );

    // `run` mounts it and starts (in a private network namespace too, on lo
    // in generic mode). Its bpffs and pins vanish with the namespaces: it
    // must be allowed to (agent_netns_pins checks it refuses otherwise).
    let src = objects_dir(&[0]);
    let log = src.with_extension("log");
    let mut child = Command::new("unshare")
        .args([
            "-m",
            "-n",
            "sh",
            "-c",
            "umount /sys/fs/bpf && ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(agent_binary())
        .args([
            "run",
            "--iface",
            "lo",
            "--xdp-mode",
            "generic",
            "--pin-path",
            "/sys/fs/bpf/xdplb",
            "--node-name",
            "node-0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--allow-ephemeral-pins",
        ])
        .arg(format!("--source=file:{}", src.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // Loading (the verifier) comes before the first sync.
    let synced = wait_for(xdplb_tests::agent::LOAD_WAIT, || {
        read().contains("synced") || matches!(child.try_wait(), Ok(Some(_)))
    });
    let _ = child.kill();
    let _ = child.wait();
    let out = read();
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_file(&log);
    lb_agent::ops::names::remove(std::path::Path::new("/sys/fs/bpf/xdplb"));
    assert!(synced, "{out}");
    assert_has(&out, &["mounted bpffs at /sys/fs/bpf", "synced"]);
}

#[test]
fn missing_capabilities_are_named_with_the_fix() {
    let drop = "setpriv --bounding-set=-bpf,-net_admin,-sys_admin --inh-caps=-all --";
    let out = doctor(drop, "--iface lo");
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &[
            "✗ privileges",
            "missing CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN",
            "run as root, or grant them",
        ],
    );
    let out = doctor("setpriv --bounding-set=-net_admin --inh-caps=-all --", "");
    assert_has(&text(&out), &["✗ privileges", "missing CAP_NET_ADMIN:"]);
    let err = run_fails(drop, &format!("--iface lo --pin-path {}", pin("nocaps")));
    assert_has(
        &err,
        &[
            "start-up check \"privileges\" failed",
            "missing CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN",
        ],
    );
}

#[test]
fn no_native_xdp_says_pass_generic_and_generic_is_only_used_when_asked() {
    // lo has no native XDP (no ndo_bpf); a private network namespace keeps
    // the host's lo out of it.
    let out = doctor("unshare -n", "--iface lo");
    assert_eq!(out.status.code(), Some(1));
    assert_has(
        &text(&out),
        &[
            "✗ native XDP on lo",
            "native XDP is not supported on lo",
            "pass --xdp-mode generic",
        ],
    );
    let out = doctor("unshare -n", "--iface lo --xdp-mode generic");
    assert!(
        out.status.success(),
        "generic mode skips the probe: {}",
        text(&out)
    );
    assert!(!text(&out).contains("native XDP"), "{}", text(&out));
    let err = run_fails(
        "unshare -m -n",
        &format!("--iface lo --pin-path {}", pin("nonative")),
    );
    assert_has(
        &err,
        &[
            "start-up check \"native XDP on lo\" failed",
            "pass --xdp-mode generic",
        ],
    );

    // A veth has native XDP: the probe attaches and detaches.
    let out = doctor(
        "unshare -n sh -c 'ip link add a0 type veth peer name a1 && exec \"$0\" \"$@\"'",
        "--iface a0",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_has(
        &text(&out),
        &[
            "✓ native XDP on a0",
            "supported by the driver",
            "all checks passed",
        ],
    );
}

#[test]
fn doctor_tells_the_tc_path_and_socket_balancing_run_would_use() {
    // This kernel has TCX; netlink when forced.
    let out = doctor("unshare -n", "");
    assert_has(&text(&out), &["✓ tc attach", "TCX links", "the kernel has TCX", "✓ socket LB", "balanced at connect()/sendmsg(): programs on cgroup /"]);
    let out = doctor("unshare -n", "--tc-attach netlink --socket-lb off");
    assert!(out.status.success(), "{}", text(&out));
    assert_has(&text(&out), &["✓ tc attach", "netlink: cls_bpf filters", "forced by --tc-attach", "✓ socket LB", "off (--socket-lb off)"]);
    // A cgroup that is not one: doctor fails as `run` would, with the fix.
    let out = doctor("unshare -n", "--socket-lb /tmp");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_has(&text(&out), &["✗ socket LB", "/tmp is not a cgroup2 directory", "pass --socket-lb auto, off"]);
    let err = run_fails("unshare -n", &format!("--iface lo --xdp-mode generic --pin-path {} --socket-lb /tmp", pin("socklb")));
    assert_has(&err, &["start-up check \"socket LB\" failed", "/tmp is not a cgroup2 directory"]);
}

#[test]
fn doctor_json_lists_every_check() {
    let out = doctor("unshare -n", "--iface lo --json");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kernel version",
            "kernel BTF",
            "privileges",
            "bpffs",
            "pinned maps",
            "tc attach",
            "socket LB",
            "interface lo",
            "native XDP on lo",
            "programs"
        ]
    );
    assert_eq!(v[8]["ok"], false);
    assert_eq!(v[9]["ok"], true, "every program loads on this kernel: {}", v[9]["detail"]);
}

#[test]
fn pinned_maps_of_another_layout_are_reported_and_other_sizes_will_be_resized() {
    // A conntrack map as an incompatible older agent might have made it.
    let dir = pin("layout");
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("bpftool")
        .args(["map", "create", &format!("{dir}/conntrack_v4")])
        .args([
            "type",
            "lru_hash",
            "key",
            "16",
            "value",
            "8",
            "entries",
            "64",
            "name",
            "conntrack_v4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {}", text(&out));
    let out = doctor("", &format!("--pin-path {dir}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_has(
        &text(&out),
        &["✗ pinned maps", "another layout", "value 8 B", "uninstall"],
    );

    // Maps of the test sizes, checked against the default sizes: resized.
    let lb = xdplb_tests::lb::Lb::load();
    let out = doctor("", &format!("--pin-path {}", lb.pin_dir().display()));
    assert!(out.status.success(), "{}", text(&out));
    assert_has(
        &text(&out),
        &[
            "✓ pinned maps",
            &format!("{} maps under", lb_common::maps::ALL.len()),
            "resizes services_v4 1024 → 65536",
            "conntrack_v4 65536 → 1048576",
        ],
    );
    let out = doctor("", &format!("--pin-path {} --max-services 1024 --max-backends 4096 --max-slots 16384 --max-flows 65536 --max-affinity 4096 --max-flows-v6 16384 --max-affinity-v6 1024 --max-sockets 1024 --max-sockets-v6 1024", lb.pin_dir().display()));
    assert_has(
        &text(&out),
        &[
            "✓ pinned maps",
            &format!("{} maps under", lb_common::maps::ALL.len()),
            "match this build; `run` adopts them",
        ],
    );
}

#[test]
fn doctor_names_the_tc_attach_path_and_loads_every_program() {
    let out = doctor("", "");
    assert!(out.status.success(), "{}", text(&out));
    // This host's kernel has TCX (6.6+); the --kernels tier sees "netlink" on 6.1.
    assert_has(
        &text(&out),
        &["✓ tc attach", "TCX links", "✓ programs", "this kernel's verifier accepts", "sock_connect4", "sock_connect6", "sock_getpeername6", "tc_egress", "tc_ingress", "xdp_lb"],
    );
}
