//! tc attached through netlink (the path of kernels without TCX, < 6.6),
//! forced here with `--tc-attach netlink` on the host's kernel; the
//! `--kernels` tier runs the same path on Debian 12's 6.1 in a VM. The real
//! agent, real connections: balanced from outside and from a pod, one filter
//! per hook at every moment sampled across SIGTERM and SIGKILL restarts
//! (replaced in place: never none, never two), also when a map is resized,
//! a switch to TCX and back
//! leaves one path only, and uninstall removes the filters. Needs root.
use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use xdplb_tests::{
    agent::{objects_dir, programmed, Agent, WEB_CLUSTER_IP},
    netns::Netns,
    servers::{tally, Conn, Server},
    tc::{filters, one_filter_each, replaced, HOOKS},
    topology::{Topology, POD_IFACE, UPLINK},
    wait_for,
};

const TO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(WEB_CLUSTER_IP), 80);

fn balanced(ns: &Netns, n: usize) -> usize {
    let got = tally(ns, TO, n);
    assert!(got.len() == 2 && got.values().sum::<usize>() == n, "both backends answer: {got:?}");
    got.len()
}

fn tc_pins(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.pin_dir.join("links"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains("@tc_")).collect())
        .unwrap_or_default()
}

/// Samples the filter count of every hook until stopped: (samples, the
/// counts seen other than one).
fn sample_filters(ns: &Netns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let name = ns.name().to_string();
    std::thread::spawn(move || {
        let (mut samples, mut bad) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for (iface, hook, _) in HOOKS {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &name, "tc", "filter", "show", "dev", iface, hook])
                    .output()
                    .expect("tc");
                let n = xdplb_tests::tc::parse(&String::from_utf8_lossy(&out.stdout)).len();
                samples += 1;
                if n != 1 {
                    bad.push(format!("{iface} {hook}: {n}"));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (samples, bad)
    })
}

#[test]
fn netlink_filters_balance_survive_restarts_in_place_and_are_uninstalled() {
    let t = Topology::new(2);
    let _s: Vec<Server> = (0..2).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let args = ["--tc-attach", "netlink", "--pod-iface", POD_IFACE];
    let mut agent = Agent::start_with(&t.node, &objects_dir(&[0, 1]), &args);
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(30), || programmed(&dp).is_some_and(|(n, _)| n == 2)), "{}", agent.log());
    assert!(wait_for(Duration::from_secs(30), || agent.log().contains("attached tc to pod interface")), "{}", agent.log());
    assert!(agent.log().contains("netlink cls_bpf filters"), "{}", agent.log());
    let ids = one_filter_each(&t.node, "first start");
    assert_eq!(tc_pins(&agent), Vec::<String>::new(), "netlink filters have no pins");
    balanced(&t.client, 10);
    balanced(&t.pod, 10);

    // Restarts while a sampler watches every hook and a connection is held.
    let mut held = Conn::new(t.client.run(|| TcpStream::connect(TO)).unwrap());
    let first = held.ask().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_filters(&t.node, stop.clone());
    agent.restart(&t.node);
    let ids = replaced(&t.node, &ids, &mut agent);
    assert_eq!(held.ask().unwrap(), first);
    // A SIGKILL, and an upgrade that resizes conntrack: the filters are
    // switched to the new programs while the maps are copied (relink).
    agent.kill9();
    agent.start_again(&t.node, &[&args[..], &["--max-flows", "131072"]].concat());
    replaced(&t.node, &ids, &mut agent);
    assert!(agent.log().contains("resizing pinned map"), "{}", agent.log());
    stop.store(true, Ordering::Relaxed);
    let (samples, bad) = sampler.join().unwrap();
    println!("filter samples across 2 restarts: {samples}, not exactly one: {}", bad.len());
    assert!(samples >= 6, "the sampler ran ({samples})");
    assert_eq!(bad, Vec::<String>::new(), "every hook had exactly one filter at every sample");
    assert_eq!(held.ask().unwrap(), first);
    balanced(&t.client, 6);

    // Switching to TCX removes the netlink filters (never both paths)...
    agent.kill9();
    agent.start_again(&t.node, &["--tc-attach", "tcx", "--pod-iface", POD_IFACE]);
    agent.maps(); // running again: the deadline below is the sync's, not the verifier's
    let switched = wait_for(Duration::from_secs(30), || {
        agent.assert_alive();
        tc_pins(&agent).len() == 3 && HOOKS.iter().all(|(i, h, _)| filters(&t.node, i, h).is_empty())
    });
    assert!(switched, "pins {:?}:\n{}", tc_pins(&agent), agent.log());
    balanced(&t.client, 6);
    assert_eq!(held.ask().unwrap(), first);
    // ...and back: the TCX pins go.
    agent.kill9();
    agent.start_again(&t.node, &args);
    agent.maps(); // running again: the deadline below is the sync's, not the verifier's
    assert!(wait_for(Duration::from_secs(30), || tc_pins(&agent).is_empty()), "{}", agent.log());
    assert!(wait_for(Duration::from_secs(30), || HOOKS.iter().all(|(i, h, _)| filters(&t.node, i, h).len() == 1)));
    one_filter_each(&t.node, "back on netlink");
    balanced(&t.pod, 6);

    // Uninstall (agent stopped first, as systemd would) removes every filter.
    agent.kill9();
    let out = agent.uninstall(&t.node);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("3 tc filter(s) of xdplb"), "{said}{}", String::from_utf8_lossy(&out.stderr));
    for (iface, hook, _) in HOOKS {
        assert_eq!(filters(&t.node, iface, hook), vec![], "{iface} {hook}");
    }
    assert!(!t.node.ip(&["link", "show", UPLINK]).contains("xdp"));
}
