//! Established connections survive a LoadBalancer address failover with DSR
//! and Maglev (issue #13) in the three-node cluster (tests/src/cluster.rs):
//! every agent runs `--lb-mode dsr`; a Maglev Service of `type:
//! LoadBalancer` gets its address from a pool and has pods on every node.
//! 30 TCP connections from the outside client chat through the address
//! (ARP-resolved to its owner, which forwards with DSR to the other nodes'
//! pods) every 20 ms. The switch floods no unknown unicast, so frames
//! for a dead node's MAC go nowhere. Then the owner's uplink goes down and its agent is
//! killed: the next node in rank takes the address, knows none of the
//! flows, and picks for each the backend the owner picked (the Maglev table
//! is the same on every node), so every connection whose pod is not on the
//! dead node goes on — no failed exchange, no backend change. The dead
//! node's pods then leave the EndpointSlice (as Kubernetes does when it
//! marks the node down) and new connections all succeed. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_agent::lbip::announce;
use lb_common::counter;
use serde_json::json;
use xdplb_tests::{
    lbaddr::{fail_owner, neighbour, owner_seen_by, uplink_mac},
    apiserver::Resource,
    cluster::{node_name, pod_addr, tcp_requests, Cluster, ServiceDef, Source, CLIENT_ADDR, NAMESPACE, TCP, UPLINK},
    servers::Conn,
    wait_for,
};

const NODES: usize = 3;
const CONNECTIONS: usize = 30;
const POOL: &str = "lan=192.168.50.200/29";

fn lb_ip(c: &Cluster) -> Option<Ipv4Addr> {
    let s = c.api()?.get(Resource::Services, NAMESPACE, "web")?;
    s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str()?.parse().ok()
}

/// Waits until node `i` balances `addr:80`/TCP over exactly the pods `eps`.
fn wait_programmed(c: &Cluster, i: usize, addr: Ipv4Addr, eps: &[(usize, usize)]) {
    let mut want: Vec<Ipv4Addr> = eps.iter().map(|&(n, p)| pod_addr(n, p)).collect();
    want.sort();
    // The distinct backends, not the slots: a Maglev table has 251.
    let held = || {
        let mut got = c.node(i).programmed(addr, 80, TCP).map(|(_, b)| b).unwrap_or_default();
        got.sort();
        got.dedup();
        got
    };
    assert!(wait_for(Duration::from_secs(30), || held() == want), "node-{i} never held {want:?} for {addr}:80: {:?}\n{}", held(), c.logs());
}

/// What one connection saw while it chatted.
#[derive(Debug)]
struct Chat {
    /// The pod that answered first (`node-i/pod-j`).
    backend: String,
    answers: Vec<Instant>,
    /// The first error, after which the connection is not asked again.
    failed: Option<String>,
    /// Answers from another pod than the first.
    moved: usize,
}

/// Asks on `conn` every 20 ms until `stop`.
fn chat(mut conn: Conn, stop: Arc<AtomicBool>) -> JoinHandle<Chat> {
    std::thread::spawn(move || {
        let mut chat = Chat { backend: String::new(), answers: Vec::new(), failed: None, moved: 0 };
        while !stop.load(Ordering::Relaxed) {
            match conn.ask() {
                Ok(who) => {
                    if chat.backend.is_empty() {
                        chat.backend = who;
                    } else if who != chat.backend {
                        chat.moved += 1;
                    }
                    chat.answers.push(Instant::now());
                }
                Err(e) => {
                    chat.failed = Some(format!("{:?}: {e}", e.kind()));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        chat
    })
}

#[test]
fn established_dsr_connections_survive_the_owner_nodes_failure_with_maglev() {
    let mut c = Cluster::with_agent_args(NODES, 2, Source::Kube, &["--lb-mode", "dsr", "--lb-pool", POOL]);
    let web = ServiceDef::new("web", Ipv4Addr::new(10, 96, 0, 10))
        .node_port(30080)
        .algorithm("maglev")
        // A small prime table: every node writes it in a moment.
        .annotation("xdplb.io/maglev-table-size", "251");
    let mut obj = web.object();
    obj["spec"]["type"] = json!("LoadBalancer");
    c.apply(obj);
    let all = c.all_pods();
    c.apply(web.slice(&all));
    assert!(wait_for(Duration::from_secs(30), || lb_ip(&c).is_some()), "no address allocated:\n{}", c.logs());
    let addr = lb_ip(&c).unwrap();
    let names: Vec<String> = (1..=NODES).map(node_name).collect();
    let want = announce::owner(addr.into(), &names).unwrap().clone();
    for i in 1..=NODES {
        wait_programmed(&c, i, addr, &all);
        let agreed = wait_for(Duration::from_secs(10), || owner_seen_by(&c, i, addr).as_ref() == Some(&want));
        assert!(agreed, "node-{i} sees owner {:?} of {addr}, want {want}", owner_seen_by(&c, i, addr));
    }
    let owner: usize = want.trim_start_matches("node-").parse().unwrap();
    // The switch floods no unknown unicast: once the dead node's port is
    // gone from its table, frames for that MAC are dropped instead of
    // reaching (and being balanced by) every node, so the connections
    // depend on the address moving, not on the flood.
    for port in std::iter::once("c0".to_string()).chain((1..=NODES).map(|i| format!("n{i}"))) {
        c.switch.ip(&["link", "set", "dev", &port, "type", "bridge_slave", "flood", "off"]);
    }
    let rest: Vec<String> = names.iter().filter(|n| **n != want).cloned().collect();
    let next = announce::owner(addr.into(), &rest).unwrap().clone();
    let next_i: usize = next.trim_start_matches("node-").parse().unwrap();

    // The connections, through the owner (the client resolves the address by ARP).
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args(["neigh", "flush", "to", &addr.to_string(), "dev", UPLINK]));
    let to = SocketAddr::from((addr, 80));
    let conns: Vec<Conn> = c.client.run(move || {
        (0..CONNECTIONS)
            .map(|_| {
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connecting");
                let timeout = s.try_clone().expect("a second handle");
                let conn = Conn::new(s);
                // Generous (one socket, one SO_RCVTIMEO): TCP retransmits
                // what the failover lost, 1.4 s after it at the latest when
                // it takes 1 s; a failed exchange is one that never ends.
                timeout.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
                conn
            })
            .collect()
    });
    assert_eq!(neighbour(&c, addr), Some(uplink_mac(&c.node(owner).ns)), "the connections go to node-{owner}");
    let stop = Arc::new(AtomicBool::new(false));
    let chats: Vec<JoinHandle<Chat>> = conns.into_iter().map(|conn| chat(conn, stop.clone())).collect();
    std::thread::sleep(Duration::from_secs(1));

    // The owner fails.
    let dsr_before = c.node_mut(next_i).maps().counters().unwrap()[counter::DSR_FORWARD as usize];
    let next_mac = uplink_mac(&c.node(next_i).ns);
    let (moved, failover) = fail_owner(&mut c, owner, addr, &next_mac);
    // When the failure was complete (the wait began).
    let down = Instant::now() - failover;
    assert!(moved, "{addr} never moved to node-{next_i}: {:?}\n{}", neighbour(&c, addr), c.logs());
    std::thread::sleep(Duration::from_secs(4));

    // Kubernetes takes the dead node's pods out; the survivors' flows stay put.
    let alive: Vec<(usize, usize)> = all.iter().copied().filter(|&(n, _)| n != owner).collect();
    c.apply(web.slice(&alive));
    for i in (1..=NODES).filter(|&i| i != owner) {
        wait_programmed(&c, i, addr, &alive);
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let chats: Vec<Chat> = chats.into_iter().map(|h| h.join().expect("a chat thread")).collect();

    let dead_prefix = format!("node-{owner}/");
    let (on_dead, survivors): (Vec<&Chat>, Vec<&Chat>) = chats.iter().partition(|ch| ch.backend.starts_with(&dead_prefix));
    let kept = survivors.iter().filter(|ch| ch.failed.is_none() && ch.moved == 0).count();
    // The longest a surviving connection waited for an answer across the failover.
    let stall = survivors
        .iter()
        .flat_map(|ch| ch.answers.windows(2).map(|w| w[1] - w[0]))
        .max()
        .unwrap_or_default();
    let answered_after = survivors.iter().filter(|ch| ch.answers.last().is_some_and(|t| *t > down + failover)).count();
    let dsr_after = c.node_mut(next_i).maps().counters().unwrap()[counter::DSR_FORWARD as usize];
    let fresh = tcp_requests(&c.client, to, 50);
    let mut per_node = std::collections::BTreeMap::new();
    for ch in &chats {
        *per_node.entry(ch.backend.split('/').next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    println!(
        "DSR + Maglev failover: {addr} node-{owner} -> node-{next_i} in {failover:?} (client's ARP entry moved); \
         {kept} of {} connections to pods on live nodes kept (0 failed exchanges, 0 backend changes), longest pause {stall:?}; \
         {} of {} connections to node-{owner}'s pods failed with it; backends per node {per_node:?}; \
         node-{next_i} DSR-forwarded {} packets after taking over; 50 new connections: {} ok, {} failed, per node {:?}, sources {:?}",
        survivors.len(),
        on_dead.iter().filter(|ch| ch.failed.is_some()).count(),
        on_dead.len(),
        dsr_after - dsr_before,
        fresh.ok(),
        fresh.failed(),
        fresh.per_node(),
        fresh.sources
    );
    assert!(survivors.len() >= 10 && per_node.len() == NODES, "the connections spread over every node: {per_node:?}");
    for ch in &survivors {
        assert!(ch.failed.is_none() && ch.moved == 0, "a connection to {} broke: {ch:?}\n{}", ch.backend, c.logs());
    }
    assert_eq!(answered_after, survivors.len(), "every survivor was answered after the failover");
    assert!(failover < Duration::from_secs(2), "failover took {failover:?}");
    assert!(dsr_after > dsr_before, "node-{next_i} forwards the survivors to other nodes with DSR");
    assert_eq!((fresh.ok(), fresh.failed()), (50, 0), "new connections after the failover: {fresh:?}\n{}", c.logs());
    assert!(!fresh.per_node().contains_key(&owner), "no new connection to the dead node");
    assert_eq!(fresh.sources.keys().copied().collect::<Vec<_>>(), [CLIENT_ADDR], "DSR: the pods see the client");
}
