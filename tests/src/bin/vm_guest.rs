//! `xdplb-vm-guest`: the `--kernels` tier's scenario, run inside a QEMU VM
//! booted with another kernel (tests/tests/kernels.rs boots it; the guest
//! sees the host's files read-only over 9p, so this binary and lb-agent run
//! from the host's target directory). On the guest's kernel it runs the real
//! agent in the test topology and checks, with real TCP connections:
//! - a ClusterIP is balanced from outside (XDP + tc egress) and from a pod
//!   (tc ingress + egress), replies reverse-NATed (the handshake completes);
//! - on a kernel without TCX the tc programs are netlink filters, one per
//!   hook, replaced in place on SIGTERM and SIGKILL restarts (never two, a
//!   long-lived connection keeps its backend), kept while no agent runs;
//! - `lb-agent doctor` names the attach path and the verifier accepts every
//!   program; `lb-agent uninstall` removes the filters and the XDP link.
//!
//! Prints `XDPLB-FIGURE name value` lines and `XDPLB-GUEST-OK` at the end;
//! any failed check panics (exit 101).
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xdplb_tests::{
    agent::{agent_binary, objects_dir, programmed, Agent, WEB_CLUSTER_IP},
    netns::Netns,
    servers::{tally, Conn, Server},
    tc::{filters, one_filter_each, replaced, HOOKS},
    topology::{Topology, POD_IFACE, UPLINK},
    wait_for,
};

const TO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(WEB_CLUSTER_IP), 80);
/// Small maps: the VM has little memory and hash maps are preallocated.
const SIZES: &[&str] = &[
    "--max-services", "1024", "--max-backends", "1024", "--max-slots", "4096", "--max-flows", "16384", "--max-affinity", "1024",
];
const WAIT: Duration = Duration::from_secs(180);

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("XDPLB-FIGURE {name} {value}");
}

fn xdp_attached(ns: &Netns) -> bool {
    ns.ip(&["link", "show", UPLINK]).contains("xdp")
}

/// Balances `n` connections from `ns` and asserts both backends answered.
fn balanced(ns: &Netns, n: usize, what: &str) {
    let start = Instant::now();
    let got = tally(ns, TO, n);
    assert_eq!(got.values().sum::<usize>(), n, "{what}: {got:?}");
    assert!(got.len() == 2 && got.values().all(|c| *c >= 1), "{what}: both backends answer: {got:?}");
    figure(&format!("{what}_connections"), n);
    figure(&format!("{what}_per_backend"), format!("{got:?}").replace(' ', ""));
    figure(&format!("{what}_ms_per_connection"), start.elapsed().as_millis() / n as u128);
}

fn main() {
    let start = Instant::now();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    figure("kernel", release.trim());
    let t = Topology::new(2);
    let _servers: Vec<Server> = (0..2).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let mut args = vec!["--pod-iface", POD_IFACE];
    args.extend_from_slice(SIZES);
    let mut agent = Agent::start_with(&t.node, &objects_dir(&[0, 1]), &args);
    let dp = agent.maps();
    assert!(wait_for(WAIT, || programmed(&dp).is_some_and(|(n, _)| n == 2)), "not programmed:\n{}", agent.log());
    assert!(wait_for(WAIT, || agent.log().contains("attached tc to pod interface")), "pod0 not attached:\n{}", agent.log());
    figure("agent_ready_s", start.elapsed().as_secs());

    // The attach path the agent chose, and the kernel's own view.
    let log = agent.log();
    let netlink = log.contains("netlink cls_bpf filters");
    figure("tc_attach", if netlink { "netlink" } else { "tcx" });
    let doctor = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.node.name()))
        .arg(agent_binary())
        .args(["doctor", "--iface", UPLINK, "--pin-path"])
        .arg(&agent.pin_dir)
        .args(SIZES)
        .output()
        .expect("running lb-agent doctor");
    let report = String::from_utf8_lossy(&doctor.stdout);
    println!("{report}");
    assert!(doctor.status.success(), "doctor failed:\n{report}{}", String::from_utf8_lossy(&doctor.stderr));
    assert!(report.contains("✓ programs") && report.contains("xdp_lb"), "{report}");
    let links: Vec<String> = std::fs::read_dir(agent.pin_dir.join("links"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    figure("link_pins", links.join(","));
    assert!(links.contains(&format!("{UPLINK}@xdp_lb")), "the XDP link is pinned: {links:?}");
    assert!(xdp_attached(&t.node));
    if netlink {
        assert!(report.contains("✓ tc attach") && report.contains("netlink"), "{report}");
        assert!(!links.iter().any(|l| l.contains("@tc_")), "netlink filters have no pins: {links:?}");
    }
    let mut ids = one_filter_each(&t.node, "first start");

    // Real connections: outside → XDP DNAT → backend → tc egress reverse
    // NAT; pod → tc ingress DNAT → backend → tc egress reverse NAT.
    balanced(&t.client, 20, "client");
    balanced(&t.pod, 10, "pod");

    // Restarts: a held connection keeps its backend, every hook keeps one filter.
    let mut held = Conn::new(t.client.run(|| TcpStream::connect(TO)).expect("held connection"));
    let first = held.ask().expect("held connection answers");
    let t0 = Instant::now();
    agent.restart(&t.node);
    ids = replaced(&t.node, &ids, &mut agent);
    figure("sigterm_restart_replaced_s", t0.elapsed().as_secs());
    assert_eq!(held.ask().expect("held connection after SIGTERM restart"), first);
    agent.kill9();
    // No agent: the filters and the XDP link stay, and so does balancing.
    assert_eq!(one_filter_each(&t.node, "no agent running"), ids);
    assert!(xdp_attached(&t.node));
    balanced(&t.client, 6, "no_agent_client");
    assert_eq!(held.ask().expect("held connection with no agent"), first);
    let t0 = Instant::now();
    let mut again = vec!["--pod-iface", POD_IFACE];
    again.extend_from_slice(SIZES);
    agent.start_again(&t.node, &again);
    replaced(&t.node, &ids, &mut agent);
    figure("sigkill_restart_replaced_s", t0.elapsed().as_secs());
    assert_eq!(held.ask().expect("held connection after SIGKILL restart"), first);
    balanced(&t.client, 6, "after_restarts_client");
    figure("restarts", 2);

    // Uninstall (the agent stopped, as systemd would have): nothing left.
    agent.kill9();
    let root = std::env::temp_dir().join(format!("xlbt-{}-root", std::process::id()));
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.node.name()))
        .arg(agent_binary())
        .arg("uninstall")
        .arg("--root")
        .arg(&root)
        .arg("--pin-path")
        .arg(&agent.pin_dir)
        .output()
        .expect("running lb-agent uninstall");
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{said}");
    assert!(out.status.success(), "uninstall failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    for (iface, hook, _) in HOOKS {
        assert_eq!(filters(&t.node, iface, hook), vec![], "uninstall left a filter on {iface} {hook}");
    }
    assert!(!xdp_attached(&t.node), "uninstall left XDP attached");
    assert!(!Path::new(&agent.pin_dir).exists());
    let refused = t.client.run(|| TcpStream::connect_timeout(&TO, Duration::from_secs(2)).is_err());
    assert!(refused, "the VIP still answers after uninstall");
    let _ = std::fs::remove_dir_all(&root);
    figure("guest_s", start.elapsed().as_secs());
    println!("XDPLB-GUEST-OK");
}
