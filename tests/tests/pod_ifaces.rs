//! Pod interfaces: attached the moment a netlink link event announces them
//! (not at the next scan), a failed attach retried until it succeeds, and
//! the link pins of interfaces that vanished removed. Needs root.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use xdplb_tests::{
    agent::{objects_dir, programmed, Agent, WEB_CLUSTER_IP},
    netns::Netns,
    servers::{tally, Server},
    topology::{addr_up, veth, Topology},
    wait_for,
};

/// A new pod: namespace `pod` with eth0 10.0.<net>.2, its host side `iface`
/// (10.0.<net>.1) in the node namespace.
fn pod(t: &Topology, iface: &str, net: u8) -> Netns {
    let pod = Netns::new();
    veth(&t.node, iface, &pod, "eth0");
    addr_up(&t.node, iface, &format!("10.0.{net}.1/24"));
    addr_up(&pod, "eth0", &format!("10.0.{net}.2/24"));
    pod.ip(&["route", "add", "default", "via", &format!("10.0.{net}.1")]);
    pod
}

fn attached_line<'a>(log: &'a str, iface: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains("attached tc to pod interface") && l.contains(&format!("iface={iface} ")))
}

#[test]
fn pod_interfaces_are_attached_on_link_events_retried_and_their_pins_removed_when_gone() {
    let t = Topology::new(3);
    let _servers: Vec<_> = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let mut agent = Agent::start_with(&t.node, &objects_dir(&[0, 1, 2]), &["--pod-iface", "vp*"]);
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(20), || programmed(&dp).is_some_and(|(n, _)| n == 3)), "{}", agent.log());
    let links = agent.pin_dir.join("links");

    // Past the agent's start (whose first scan races any early event).
    std::thread::sleep(Duration::from_millis(1500));
    // A new pod: attached on the link event, balanced from its first request.
    let created = Instant::now();
    let p1 = pod(&t, "vp1", 4);
    let pinned = wait_for(Duration::from_secs(10), || links.join("vp1@tc_ingress").exists());
    let attach_ms = created.elapsed().as_millis();
    assert!(pinned, "vp1 never attached\n{}", agent.log());
    // The log line follows the pin.
    assert!(wait_for(Duration::from_secs(5), || attached_line(&agent.log(), "vp1").is_some()));
    let log = agent.log();
    let line = attached_line(&log, "vp1").unwrap_or_else(|| panic!("no attach line for vp1\n{log}"));
    assert!(line.contains("trigger=\"link event\""), "attached by a link event: {line}\n{log}");
    let vip = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let served = tally(&p1, vip, 6);
    assert_eq!(served.len(), 3, "the new pod's first requests are balanced: {served:?}");

    // An attach that fails (its pin path is taken) is retried until it works.
    std::fs::create_dir_all(links.join("vp2@tc_ingress")).unwrap();
    let _p2 = pod(&t, "vp2", 5);
    let failed = wait_for(Duration::from_secs(10), || agent.log().contains("attaching to pod interface failed"));
    assert!(failed, "the blocked attach failed\n{}", agent.log());
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_dir(links.join("vp2@tc_ingress")).unwrap();
    let retried = wait_for(Duration::from_secs(10), || attached_line(&agent.log(), "vp2").is_some());
    let log = agent.log();
    let attempts: u32 = attached_line(&log, "vp2")
        .and_then(|l| l.split("attempts=").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(retried && attempts >= 2, "vp2 attached after {attempts} attempts\n{log}");

    // The pod goes: its interface vanishes, and so do its link pins.
    drop(p1);
    let _ = t.node.cmd("ip").args(["link", "del", "vp1"]).output();
    let gone = wait_for(Duration::from_secs(10), || !links.join("vp1@tc_ingress").exists() && !links.join("vp1@tc_egress").exists());
    println!(
        "pod_ifaces: vp1 attached {attach_ms} ms after it was created (on the link event); its first 6 requests reached {} backends; \
         vp2 attached after {attempts} attempts; vp1's pins removed after it vanished: {gone}",
        served.len()
    );
    assert!(gone, "pins left: {:?}\n{}", std::fs::read_dir(&links).unwrap().flatten().map(|e| e.file_name()).collect::<Vec<_>>(), agent.log());
}
