//! The real agent drops every capability but CAP_BPF and CAP_NET_ADMIN once
//! it has loaded, pinned and attached, on every thread, bounding set
//! included, with no_new_privs; and still does its run-time work with what
//! it kept: a pod interface created after the drop gets tc attached and its
//! pod is balanced, and an EndpointSlice edit reaches the maps; through TCX
//! links (pinned after the drop) and netlink filters alike. Needs root.
use std::{net::SocketAddr, time::Duration};

use xdplb_tests::{
    agent::{objects_dir, programmed, slice, write, Agent, WEB_CLUSTER_IP},
    netns::Netns,
    servers::{tally, Server},
    topology::{addr_up, backend_addr, veth},
    wait_for,
};

const TO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(WEB_CLUSTER_IP), 80);

/// One thread's tid, [CapEff, CapPrm, CapBnd], CapInh, CapAmb, NoNewPrivs.
type Thread = (String, [Option<u64>; 3], String, String, String);

fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir").flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("?").trim().to_string();
        let sets = lb_agent::privs::status_sets(&status);
        out.push((e.file_name().to_string_lossy().into_owned(), sets, field("CapInh:"), field("CapAmb:"), field("NoNewPrivs:")));
    }
    out
}

#[test]
fn the_agent_keeps_only_bpf_and_net_admin_and_still_attaches_new_pods_and_syncs() {
    after_the_drop(&["--pod-iface", "pod*"], false);
}

/// The same through netlink cls_bpf filters (kernels without TCX).
#[test]
fn with_netlink_tc_the_kept_set_still_attaches_new_pods() {
    after_the_drop(&["--pod-iface", "pod*", "--tc-attach", "netlink"], false);
}

/// Started as the DaemonSet and the systemd unit start it: root with CAP_BPF,
/// CAP_NET_ADMIN and CAP_SYS_ADMIN only (no CAP_SETPCAP): it loads and
/// attaches, then keeps two; the bounding set stays the three it was given.
#[test]
fn started_with_the_daemon_sets_three_capabilities_it_keeps_two() {
    after_the_drop(&["--pod-iface", "pod*"], true);
}

const CAP_SYS_ADMIN: u64 = 1 << 21;

fn after_the_drop(args: &[&str], daemon_set: bool) {
    let t = xdplb_tests::topology::Topology::new(2);
    let _s: Vec<Server> = (0..2).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let kept = lb_agent::privs::kept_mask();
    let bounding = if daemon_set { kept | CAP_SYS_ADMIN } else { kept };
    let dir = objects_dir(&[0, 1]);
    let node = &t.node;
    // The bounding set is per thread and inherited by what it spawns: a
    // thread of its own, shrunk to the DaemonSet's three, starts the agent
    // (root's capabilities after exec are the bounding set).
    let mut agent = std::thread::scope(|s| {
        s.spawn(|| {
            if daemon_set {
                for cap in 0..=40u64 {
                    if bounding & (1 << cap) == 0 {
                        // SAFETY: prctl with integer arguments, on this thread only.
                        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                    }
                }
            }
            Agent::start_with(node, &dir, args)
        })
        .join()
        .unwrap()
    });
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(30), || programmed(&dp).is_some_and(|(n, _)| n == 2)), "{}", agent.log());
    assert!(wait_for(Duration::from_secs(30), || agent.log().contains("dropped every other capability")), "{}", agent.log());
    assert!(agent.log().contains("kept=\"cap_net_admin,cap_bpf\"") || agent.log().contains("kept=cap_net_admin,cap_bpf"), "{}", agent.log());
    assert!(agent.log().contains(&format!("bounding_set_too={}", !daemon_set)), "{}", agent.log());

    // Exactly the kept set, on every thread of the process.
    assert_eq!(kept, (1 << 12) | (1 << 39));
    let all = threads(agent.pid());
    assert!(all.len() > 1, "the agent's runtime has several threads: {all:?}");
    for (tid, sets, inh, amb, nnp) in &all {
        assert_eq!(*sets, [Some(kept), Some(kept), Some(bounding)], "thread {tid}: CapEff, CapPrm, CapBnd");
        assert_eq!(inh, "0000000000000000", "thread {tid}: CapInh");
        assert_eq!(amb, "0000000000000000", "thread {tid}: CapAmb");
        assert_eq!(nnp, "1", "thread {tid}: NoNewPrivs");
    }
    println!("{} threads at CapEff=CapPrm={kept:016x}, CapBnd={bounding:016x}", all.len());

    // A pod that appears after the drop: tc is attached and it is balanced.
    let pod = Netns::new();
    veth(&t.node, "pod1", &pod, "eth0");
    addr_up(&t.node, "pod1", "10.0.4.1/24");
    addr_up(&pod, "eth0", "10.0.4.2/24");
    pod.ip(&["route", "add", "default", "via", "10.0.4.1"]);
    let attached = wait_for(Duration::from_secs(30), || {
        agent.assert_alive();
        agent.log().lines().any(|l| l.contains("attached tc to pod interface") && l.contains("pod1"))
    });
    assert!(attached, "{}", agent.log());
    assert!(!agent.log().contains("attaching to pod interface failed"), "{}", agent.log());
    let got = tally(&pod, TO, 20);
    println!("from the late pod: {got:?}");
    assert_eq!(got.len(), 2, "both backends answer the late pod: {got:?}");
    assert_eq!(got.values().sum::<usize>(), 20);

    // An EndpointSlice edit still reaches the maps and the traffic.
    write(&agent.source_dir, "slice.yaml", &slice(&[0]));
    let ok = wait_for(Duration::from_secs(30), || programmed(&dp).is_some_and(|(n, b)| n == 1 && b == vec![backend_addr(0)]));
    assert!(ok, "the edit never reached the maps:\n{}", agent.log());
    let got = tally(&pod, TO, 10);
    assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![("backend-0".to_string(), 10)]);
    agent.assert_alive();
    for (tid, sets, ..) in threads(agent.pid()) {
        assert_eq!(sets, [Some(kept), Some(kept), Some(bounding)], "thread {tid} after the run-time work");
    }
}
