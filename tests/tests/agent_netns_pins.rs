//! The real agent run the wrong way inside a network namespace: `ip netns
//! exec` gives it a private /sys, where a bpffs it mounts dies with it (and
//! every flow on the next restart). It must refuse, naming the fix; with
//! `--allow-ephemeral-pins` it starts, warning loudly. Needs root.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use xdplb_tests::{
    agent::{agent_binary, objects_dir},
    netns::Netns,
    topology::{veth, UPLINK},
    wait_for,
};

/// `ip netns exec NS lb-agent run ...` with `extra` arguments; its stderr
/// goes to the returned log path.
fn run_via_ip_netns_exec(ns: &Netns, tag: &str, extra: &[&str]) -> (std::process::Child, PathBuf, PathBuf, PathBuf) {
    let objects = objects_dir(&[0]);
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xlbt-{}-{tag}", std::process::id()));
    let log = objects.with_extension("log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(agent_binary())
        .args(["run", "--iface", UPLINK, "--socket-lb=off", "--node-name", "node-0"])
        .arg("--pin-path")
        .arg(&pin_dir)
        .arg(format!("--source=file:{}", objects.display()))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting lb-agent");
    (child, pin_dir, objects, log)
}

#[test]
fn ip_netns_exec_is_refused_naming_the_fix_unless_ephemeral_pins_are_allowed() {
    xdplb_tests::require_root();
    let (node, peer) = (Netns::new(), Netns::new());
    veth(&node, UPLINK, &peer, "eth0");
    node.ip(&["link", "set", UPLINK, "up"]);
    peer.ip(&["link", "set", "eth0", "up"]);

    // Refused: a clear error, a failed exit, nothing attached.
    let (mut child, pin_dir, objects, log) = run_via_ip_netns_exec(&node, "refused", &[]);
    let exited = wait_for(Duration::from_secs(60), || matches!(child.try_wait(), Ok(Some(_))));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let _ = (std::fs::remove_dir_all(&objects), std::fs::remove_file(&log));
    assert!(exited && !status.success(), "the agent should refuse to start ({status}):\n{text}");
    for needle in ["would not outlive this process", "nsenter --net=/run/netns/NAME", "--allow-ephemeral-pins", "not the host's"] {
        assert!(text.contains(needle), "error lacks {needle:?}:\n{text}");
    }
    assert!(!node.ip(&["link", "show", UPLINK]).contains("xdp"), "nothing attached");
    assert!(!pin_dir.exists(), "nothing pinned on the host's bpffs");

    // Allowed: it starts, warns, attaches and programs its maps.
    let (mut child, pin_dir, objects, log) = run_via_ip_netns_exec(&node, "allowed", &["--allow-ephemeral-pins"]);
    let started = wait_for(Duration::from_secs(90), || {
        matches!(child.try_wait(), Ok(None)) && std::fs::read_to_string(&log).unwrap_or_default().contains("synced")
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let attached = node.ip(&["link", "show", UPLINK]);
    let _ = child.kill();
    let _ = child.wait();
    let _ = (std::fs::remove_dir_all(&objects), std::fs::remove_file(&log));
    assert!(started, "the agent with --allow-ephemeral-pins did not start and sync:\n{text}");
    assert!(text.contains("WARN") && text.contains("EPHEMERAL PINS"), "no loud warning:\n{text}");
    assert!(attached.contains("xdp"), "XDP attached while it ran: {attached}");
    // Its pins lived in its private bpffs: none on the host's.
    assert!(!pin_dir.exists(), "{} on the host's bpffs", pin_dir.display());
    // And they died with it: the programs are detached.
    let detached = wait_for(Duration::from_secs(30), || !node.ip(&["link", "show", UPLINK]).contains("xdp"));
    assert!(detached, "XDP still attached after the agent with ephemeral pins died");
}
