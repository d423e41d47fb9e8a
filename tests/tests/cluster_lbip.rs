//! LoadBalancer addresses end to end (issue #13) in the three-node cluster
//! (tests/src/cluster.rs): the agents (`--lb-pool`, `--source kube`) elect
//! an allocator that writes the Service's status from the pool, the owner
//! node answers ARP for the address, and a client on the L2 segment that
//! knows nothing but the address reaches the Service over TCP and UDP.
//! Then the owner's uplink goes down and its agent is killed: another node
//! answers within 2 s (measured, printed); the node comes back, its agent
//! restarts, and the address returns to it with no request failing. Needs
//! root.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb_agent::lbip::{announce, read_status};
use serde_json::{json, Value};
use xdplb_tests::{
    lbaddr::{fail_owner, neighbour, owner_seen_by, uplink_mac},
    apiserver::Resource,
    cluster::{
        node_name, tcp_requests, udp_requests, Cluster, ServiceDef, Source, NAMESPACE, UPLINK,
    },
    servers::PEER_PATH,
    wait_for,
};

const NODES: usize = 3;
const PODS: usize = 1;
const POOL: &str = "lan=192.168.50.200/29";

/// `def` as a LoadBalancer Service (its NodePort kept), `local`: Local policy.
fn lb_object(def: &ServiceDef) -> Value {
    let mut o = def.object();
    o["spec"]["type"] = json!("LoadBalancer");
    o
}

/// The Service's first status address.
fn lb_ip(c: &Cluster, name: &str) -> Option<Ipv4Addr> {
    let s = c.api()?.get(Resource::Services, NAMESPACE, name)?;
    s["status"]["loadBalancer"]["ingress"][0]["ip"]
        .as_str()?
        .parse()
        .ok()
}

fn arp_replies(c: &Cluster, i: usize) -> u64 {
    read_status(&c.node(i).pin_dir).map_or(0, |v| v.arp_replies)
}

/// One UDP request from the client with a short timeout: answered or not.
fn udp_once(c: &Cluster, to: SocketAddr) -> bool {
    c.client.run(move || {
        let ask = || -> std::io::Result<()> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            s.send(PEER_PATH.as_bytes())?;
            let mut buf = [0u8; 512];
            s.recv(&mut buf).map(|_| ())
        };
        ask().is_ok()
    })
}

#[test]
fn a_client_on_the_segment_reaches_the_pool_address_and_another_node_takes_over_within_2s() {
    let mut c = Cluster::with_agent_args(NODES, PODS, Source::Kube, &["--lb-pool", POOL]);
    let web = ServiceDef::new("web", Ipv4Addr::new(10, 96, 0, 10)).node_port(30080);
    let all: Vec<(usize, usize)> = c.all_pods();
    c.apply(lb_object(&web));
    c.apply(web.slice(&all));
    // Local: only node-2 has an endpoint, so only node-2 may answer.
    let local = ServiceDef::new("local", Ipv4Addr::new(10, 96, 0, 11))
        .node_port(30081)
        .local();
    c.apply(lb_object(&local));
    c.apply(local.slice(&[(2, 0)]));

    assert!(
        wait_for(Duration::from_secs(30), || lb_ip(&c, "web").is_some()
            && lb_ip(&c, "local").is_some()),
        "no address allocated:\n{}",
        c.logs()
    );
    let (addr, local_addr) = (lb_ip(&c, "web").unwrap(), lb_ip(&c, "local").unwrap());
    assert_eq!(
        addr,
        Ipv4Addr::new(192, 168, 50, 201),
        "the lowest usable address of the pool"
    );
    assert_eq!(local_addr, Ipv4Addr::new(192, 168, 50, 202));
    let leaders = (1..=NODES)
        .filter(|&i| read_status(&c.node(i).pin_dir).is_ok_and(|v| v.leader))
        .count();
    assert_eq!(leaders, 1, "exactly one allocator");

    // Every node programs the address and agrees on its owner: the first in rank.
    let names: Vec<String> = (1..=NODES).map(node_name).collect();
    let want = announce::owner(addr.into(), &names).unwrap().clone();
    for i in 1..=NODES {
        for proto in [xdplb_tests::cluster::TCP, xdplb_tests::cluster::UDP] {
            c.wait_backends(i, addr, 80, proto, &all);
        }
        let agreed = wait_for(Duration::from_secs(10), || {
            owner_seen_by(&c, i, addr).as_ref() == Some(&want)
                && owner_seen_by(&c, i, local_addr).as_deref() == Some("node-2")
        });
        assert!(
            agreed,
            "node-{i} sees owner {:?} of {addr} (want {want}) and {:?} of {local_addr}:\n{}",
            owner_seen_by(&c, i, addr),
            owner_seen_by(&c, i, local_addr),
            c.logs()
        );
    }
    let owner: usize = want.trim_start_matches("node-").parse().unwrap();

    // The client knows only the address: ARP, then TCP and UDP. (It may
    // have learned the owner from the takeover's gratuitous ARP: forget it,
    // so that it asks.)
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args([
        "neigh",
        "flush",
        "to",
        &addr.to_string(),
        "dev",
        UPLINK,
    ]));
    assert_eq!(neighbour(&c, addr), None);
    let before: Vec<u64> = (1..=NODES).map(|i| arp_replies(&c, i)).collect();
    let to = SocketAddr::from((addr, 80));
    let t = tcp_requests(&c.client, to, 30);
    assert_eq!(
        (t.ok(), t.failed()),
        (30, 0),
        "TCP to {to}: {t:?}\n{}",
        c.logs()
    );
    let u = udp_requests(&c.client, to, 30);
    assert_eq!(
        (u.ok(), u.failed()),
        (30, 0),
        "UDP to {to}: {u:?}\n{}",
        c.logs()
    );
    assert_eq!(
        neighbour(&c, addr),
        Some(uplink_mac(&c.node(owner).ns)),
        "the client resolved {addr} to the owner's MAC"
    );
    // The counters reach the status files within a tick.
    wait_for(Duration::from_secs(2), || {
        arp_replies(&c, owner) > before[owner - 1]
    });
    let after: Vec<u64> = (1..=NODES).map(|i| arp_replies(&c, i)).collect();
    for i in 1..=NODES {
        let answered = after[i - 1] > before[i - 1];
        let views: Vec<_> = (1..=NODES)
            .map(|i| read_status(&c.node(i).pin_dir))
            .collect();
        assert_eq!(answered, i == owner, "ARP replies per node before {before:?} after {after:?}: only node-{owner} answers\n{views:#?}\n{}\n{}", c.client.ip(&["neigh"]), c.logs());
    }

    // Local: the endpoint moves from node-2 to node-3, and so does the address.
    let local_to = SocketAddr::from((local_addr, 80));
    assert!(wait_for(Duration::from_secs(10), || udp_once(&c, local_to)), "the Local address is not served:\n{}", c.logs());
    assert_eq!(neighbour(&c, local_addr), Some(uplink_mac(&c.node(2).ns)));
    c.apply(local.slice(&[(3, 0)]));
    let node3 = uplink_mac(&c.node(3).ns);
    let moved = wait_for(Duration::from_secs(15), || neighbour(&c, local_addr).as_ref() == Some(&node3));
    assert!(moved, "{local_addr} did not move to node-3 with its endpoint: {:?}\n{}", owner_seen_by(&c, 1, local_addr), c.logs());
    assert!(wait_for(Duration::from_secs(10), || udp_once(&c, local_to)), "the Local address is not served from node-3:\n{}", c.logs());

    // The operator's view on a non-owner node: pools and owners.
    let other = if owner == 1 { 2 } else { 1 };
    let out = xdplb_tests::netns::run(
        std::process::Command::new(xdplb_tests::agent::agent_binary())
            .args(["lb-addresses", "--pin-path"])
            .arg(&c.node(other).pin_dir),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("{addr:<18} lan              {want}")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("lan ")
            && l.contains("IPv4")
            && l.split_whitespace().nth(2) == Some("2")
            && l.split_whitespace().nth(3) == Some("4")),
        "2 allocated, 4 free: {table}"
    );

    // The owner's uplink goes down and its agent dies. Failover is when the
    // client's neighbour entry for the address names the next owner (its
    // gratuitous ARP arrived). (A request may succeed earlier: with the
    // port down the bridge floods frames for the dead MAC, and the other
    // nodes' XDP balances them though they are not addressed to them.)
    let rest: Vec<String> = names.iter().filter(|n| **n != want).cloned().collect();
    let next = announce::owner(addr.into(), &rest).unwrap().clone();
    let next_i: usize = next.trim_start_matches("node-").parse().unwrap();
    let next_mac = uplink_mac(&c.node(next_i).ns);
    let api_before = c.api().map_or(0, |a| a.requests().len());
    let (moved, failover) = fail_owner(&mut c, owner, addr, &next_mac);
    // When the failure was complete (the wait began).
    let down = Instant::now() - failover;
    assert!(
        moved,
        "the client never moved {addr} to node-{next_i} ({next_mac}): {:?}\n{}",
        neighbour(&c, addr),
        c.logs()
    );
    let mut probes = 0;
    while !udp_once(&c, to) {
        probes += 1;
        assert!(probes < 100, "no UDP answer after the move:\n{}", c.logs());
    }
    let answered = down.elapsed();
    // The failover itself costs the API nothing: only the allocator's Lease
    // renewals and the followers' reads of it (every 2 s) go on meanwhile.
    let api_calls = c.api().map_or(0, |a| a.requests().len()) - api_before;
    println!("API requests from all agents during the failover ({answered:?}): {api_calls} (per-node Leases renewed every 0.5 s for the same bound: ~{} writes)", (NODES as f64 * 2.0 * answered.as_secs_f64()).round());
    println!("failover: node-{owner} down -> node-{next_i} owns {addr} (client's neighbour entry moved) after {failover:?}; first UDP answer through it at {answered:?} (heartbeats every 200 ms, dead after 1 s, 100 ms announce tick)");
    assert!(
        c.node(next_i)
            .log()
            .contains("took over LoadBalancer address"),
        "{}",
        c.node(next_i).log()
    );
    let t = tcp_requests(&c.client, to, 10);
    let u = udp_requests(&c.client, to, 10);
    // The dead node's pod no longer answers: requests balanced to it fail, the others succeed.
    assert!(
        t.ok() > 0 && u.ok() > 0,
        "after failover: TCP {t:?} UDP {u:?}"
    );
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?} (design bound 2 s)\n{}",
        c.logs()
    );
    let failovers = read_status(&c.node(next_i).pin_dir)
        .map(|v| v.failovers)
        .unwrap_or(0);
    assert!(failovers >= 1, "node-{next_i} counts its takeover");

    // The node comes back and its agent restarts: the address returns to
    // it (first in rank) once it has settled, and no request fails meanwhile
    // (both nodes' XDP balance the address while clients move).
    c.uplink_up(owner);
    let healed = wait_for(Duration::from_secs(15), || udp_requests(&c.client, to, 6).ok() == 6);
    assert!(healed, "node-{owner}'s pod unreachable after its uplink came back:\n{}", c.logs());
    let owner_mac = uplink_mac(&c.node(owner).ns);
    c.node_mut(owner).start_agent();
    let back = Instant::now();
    let mut sent = 0;
    let mut failed = 0;
    while back.elapsed() < Duration::from_secs(30) && neighbour(&c, addr).as_ref() != Some(&owner_mac) {
        let t = udp_requests(&c.client, to, 1);
        sent += 1;
        failed += t.failed();
    }
    assert_eq!(neighbour(&c, addr), Some(owner_mac), "{addr} never returned to node-{owner}:\n{}", c.logs());
    for _ in 0..10 {
        let t = udp_requests(&c.client, to, 1);
        sent += 1;
        failed += t.failed();
    }
    println!("return: node-{owner} answers for {addr} again {:?} after its agent started; {sent} UDP requests meanwhile, {failed} failed", back.elapsed());
    assert_eq!(failed, 0, "requests failed while {addr} moved back to node-{owner}\n{}", c.logs());
}
