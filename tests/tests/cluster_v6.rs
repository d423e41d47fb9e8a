//! Multi-node over IPv6 in the cluster harness (tests/src/cluster.rs built
//! dual-stack): an IPv6-only Service with pods on three nodes, reached from
//! the outside client over IPv6 through every node's IPv6 NodePort, an
//! ExternalIP and a LoadBalancer IP, TCP and UDP, in each `--lb-mode`.
//! What is checked: 0 failures over 200 connections per case, every node's
//! pods get a share, and what the pods see as the client: with SNAT the
//! balancing node's IPv6 address for pods on other nodes, the client for
//! its own; with DSR (`dsr`: TCP and UDP; `hybrid`: TCP) the client for
//! every pod. Then SNAT connections through SIGKILLs of the agents, and a
//! 1 MB upload and download through DSR over a narrower link between the
//! nodes. Needs root.
use std::net::{Ipv6Addr, SocketAddr};

use lb_common::counter;
use xdplb_tests::{
    chatter::{self, connect, Phases},
    cluster::{node_addr6, pod_addr6, pod_cidr6, tcp_requests, udp_requests, Cluster, ServiceDef, Source, Tally, CLIENT_ADDR6},
};

const NODES: usize = 3;
const WEB_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const NODE_PORT: u16 = 30080;
const EXTERNAL_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);
const LB_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x20);

fn web() -> ServiceDef {
    ServiceDef::new("web", WEB_IP).node_port(NODE_PORT).external_ip(EXTERNAL_IP).load_balancer(LB_IP)
}

fn cluster(mode: &str, svc: &ServiceDef, endpoints: impl Fn(&Cluster) -> Vec<(usize, usize)>) -> Cluster {
    let c = Cluster::dual_stack(NODES, 2, Source::Kube, &["--lb-mode", mode]);
    let eps = endpoints(&c);
    c.publish(svc, &eps);
    c.wait_frontends(svc, &eps);
    c
}

/// Asserts `n` answers, no failure, a share for every node's pods, and
/// every IPv6 client address the pods saw one of `sources`.
fn assert_served(t: &Tally, what: &str, n: usize, sources: &[Ipv6Addr], c: &Cluster) {
    assert_eq!((t.ok(), t.failed()), (n, 0), "{what}: {t:?}\n{}", c.logs());
    let per_node = t.per_node();
    assert_eq!(per_node.keys().copied().collect::<Vec<_>>(), (1..=NODES).collect::<Vec<_>>(), "{what}: answers per node {per_node:?}");
    assert!(per_node.values().all(|&k| k > 0), "{what}: {per_node:?}");
    assert_eq!(t.sources6.values().sum::<usize>(), n, "{what}: sources {:?} {:?}", t.sources6, t.sources);
    assert!(t.sources6.keys().all(|s| sources.contains(s)), "{what}: sources {:?}, want {sources:?}", t.sources6);
}

fn named(counts: &[u64]) -> String {
    counts.iter().enumerate().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{}={v}", counter::LABELS[k])).collect::<Vec<_>>().join(" ")
}

/// Every external IPv6 frontend through every node, TCP and UDP, 200
/// each; and the ClusterIP from a pod on every node. Returns every node's
/// counters.
fn every_frontend_through_every_node(mode: &str, dsr: (bool, bool)) -> Vec<Vec<u64>> {
    let svc = web();
    let mut c = cluster(mode, &svc, |c| c.all_pods());
    for i in 1..=NODES {
        c.route_service(EXTERNAL_IP, i);
        c.route_service(LB_IP, i);
        for (what, addr, port) in [("NodePort", node_addr6(i), NODE_PORT), ("ExternalIP", EXTERNAL_IP, 80), ("LoadBalancer IP", LB_IP, 80)] {
            let to = SocketAddr::from((addr, port));
            for (proto, t, dsr) in [("TCP", tcp_requests(&c.client, to, 200), dsr.0), ("UDP", udp_requests(&c.client, to, 200), dsr.1)] {
                println!("{mode} IPv6 {what} via node-{i}, {proto}: answers per node {:?}, the pods saw {:?}", t.per_node(), t.sources6);
                if dsr {
                    // Every pod sees the client, whichever node it is on.
                    assert_served(&t, &format!("{mode}: {proto} to the IPv6 {what} via node-{i} (DSR)"), 200, &[CLIENT_ADDR6], &c);
                    continue;
                }
                // Other nodes' pods see node i (SNAT), node i's own the client.
                assert_served(&t, &format!("{mode}: {proto} to the IPv6 {what} via node-{i}"), 200, &[CLIENT_ADDR6, node_addr6(i)], &c);
                assert_eq!(t.sources6.keys().copied().collect::<Vec<_>>(), sorted([CLIENT_ADDR6, node_addr6(i)]), "{mode}: both seen");
                let own = t.per_node()[&i];
                assert_eq!(t.sources6[&CLIENT_ADDR6], own, "{mode}: exactly node-{i}'s own pods see the client");
            }
        }
        // The ClusterIP from node i's pod: no SNAT (the pod's address routes
        // back through its node); the pod itself chosen comes back as hairpin.
        let to = SocketAddr::from((WEB_IP, 80));
        for (proto, t) in [("TCP", tcp_requests(c.pod(i, 0), to, 200)), ("UDP", udp_requests(c.pod(i, 0), to, 200))] {
            println!("{mode} IPv6 ClusterIP from node-{i}'s pod, {proto}: answers per node {:?}, the pods saw {:?}", t.per_node(), t.sources6);
            let sources = [pod_addr6(i, 0), Ipv6Addr::from(lb_common::flow::HAIRPIN_ADDR_V6)];
            assert_served(&t, &format!("{mode}: {proto} to the IPv6 ClusterIP from node-{i}'s pod"), 200, &sources, &c);
        }
    }
    let counts: Vec<Vec<u64>> = (1..=NODES).map(|i| c.node_mut(i).maps().counters().unwrap()).collect();
    for (i, k) in counts.iter().enumerate() {
        println!("{mode} node-{} counters: {}", i + 1, named(k));
    }
    // XDP forwards every SNAT/DSR packet itself but a node's first towards
    // a next hop whose neighbour entry does not exist yet.
    let fallback: u64 = counts.iter().map(|k| k[counter::FORWARD_FALLBACK as usize]).sum();
    assert!(fallback <= (NODES * (NODES + 1)) as u64, "{fallback} packets left through the kernel");
    assert_eq!((1..=NODES).map(|i| c.node(i).xdp_tx().1).sum::<u64>(), 0, "xdp_tx_errors");
    counts
}

fn sorted<const N: usize>(mut a: [Ipv6Addr; N]) -> [Ipv6Addr; N] {
    a.sort();
    a
}

fn total(counts: &[Vec<u64>], k: u32) -> u64 {
    counts.iter().map(|c| c[k as usize]).sum()
}

#[test]
fn snat_every_ipv6_frontend_reaches_every_node() {
    let counts = every_frontend_through_every_node("snat", (false, false));
    assert!(total(&counts, counter::SNAT_NEW) >= 2 * 3 * 200 / 3, "SNATed flows: {}", total(&counts, counter::SNAT_NEW));
    assert_eq!(total(&counts, counter::DSR_FORWARD), 0, "snat: no DSR");
}

/// `--lb-mode dsr`: IPv6 flows to other nodes' pods, TCP and UDP, carry
/// the service in a destination options header; the pods see the client.
#[test]
fn dsr_mode_sends_ipv6_flows_to_other_nodes_with_dsr() {
    let counts = every_frontend_through_every_node("dsr", (true, true));
    println!("dsr: dsr_forward={} dsr_decap={} snat_new={}", total(&counts, counter::DSR_FORWARD), total(&counts, counter::DSR_DECAP), total(&counts, counter::SNAT_NEW));
    assert_eq!(total(&counts, counter::SNAT_NEW), 0, "no SNAT");
    assert!(total(&counts, counter::DSR_DECAP) >= 2 * 3 * 200 / 3, "DSR flows received: {}", total(&counts, counter::DSR_DECAP));
    assert_eq!(total(&counts, counter::DROP_DSR_PROGRAM), 0);
}

/// `--lb-mode hybrid`: TCP over IPv6 takes DSR, UDP is SNATed.
#[test]
fn hybrid_mode_sends_ipv6_tcp_with_dsr_and_snats_udp() {
    let counts = every_frontend_through_every_node("hybrid", (true, false));
    println!("hybrid: dsr_forward={} dsr_decap={} snat_new={}", total(&counts, counter::DSR_FORWARD), total(&counts, counter::DSR_DECAP), total(&counts, counter::SNAT_NEW));
    assert!(total(&counts, counter::SNAT_NEW) >= 3 * 200 / 3, "SNATed UDP flows: {}", total(&counts, counter::SNAT_NEW));
    assert!(total(&counts, counter::DSR_DECAP) >= 3 * 200 / 3, "DSR TCP flows received: {}", total(&counts, counter::DSR_DECAP));
}

/// DSR over a link between the nodes narrower than the client's (route MTU
/// 1,400 from node 1 to the other nodes' pods): the client's full-size
/// segments plus the 24-byte header do not fit, node 1 answers ICMPv6
/// packet too big and the client's path MTU shrinks; a 1 MB upload to a
/// pod on another node and a 1 MB download from it complete, intact.
#[test]
fn a_full_size_upload_and_download_through_ipv6_dsr_over_a_narrower_link() {
    let svc = web();
    let mut c = cluster("dsr", &svc, |c| c.all_pods().into_iter().filter(|&(n, _)| n != 1).collect());
    // Locked: an IPv6 FIB lookup takes a route's MTU only then (else the device's).
    for k in 2..=NODES {
        c.node(1).ns.ip(&["-6", "route", "replace", &pod_cidr6(k), "via", &node_addr6(k).to_string(), "mtu", "lock", "1400"]);
    }
    let to = SocketAddr::from((node_addr6(1), NODE_PORT));
    const SIZE: usize = 1 << 20;
    let up = xdplb_tests::pathmtu::upload(&c.client, to, SIZE);
    let down = xdplb_tests::pathmtu::download(&c.client, to, SIZE);
    let n1 = c.node_mut(1).maps().counters().unwrap();
    let who = up.unwrap_or_else(|e| panic!("the upload failed: {e}; node-1 {}\n{}", named(&n1), c.logs()));
    let (from, len, intact) = down.unwrap_or_else(|e| panic!("the download failed: {e}; node-1 {}\n{}", named(&n1), c.logs()));
    let route = String::from_utf8_lossy(&xdplb_tests::netns::run(c.client.cmd("ip").args(["-6", "route", "get", &node_addr6(1).to_string()])).stdout).into_owned();
    println!("1 MB upload through node-1's IPv6 NodePort (DSR, 1,400-byte route to the pods): answered by {who}; 1 MB download: {len} bytes from {from}, intact {intact}; client route: {}; node-1 {}", route.trim(), named(&n1));
    assert!(!who.starts_with("node-1/") && !who.is_empty(), "served by a pod on another node: {who}");
    assert_eq!((len, intact), (SIZE, true));
    assert!(n1[counter::DSR_FORWARD as usize] > SIZE as u64 / 1400, "the upload went through with the header");
    assert!(n1[counter::DSR_FRAG_NEEDED as usize] >= 1, "packet too big sent");
    assert!(route.contains("mtu 1376"), "the client learnt the path MTU: {route}");
}

#[test]
fn snat_ipv6_flows_survive_a_sigkill_of_the_agent_on_the_balancing_and_the_backend_node() {
    let svc = web();
    // Pods on nodes 2 and 3 only: every flow through node 1 is SNATed.
    let mut c = cluster("snat", &svc, |c| c.all_pods().into_iter().filter(|&(n, _)| n != 1).collect());
    let to = SocketAddr::from((node_addr6(1), NODE_PORT));
    let mut conns = connect(&c, to, 10);
    let mut first = Vec::new();
    let Phases { before, during, all_down, after } = chatter::through_sigkills(&mut c, &mut conns, &mut first, &[2, 3]);
    let fresh = tcp_requests(&c.client, to, 50);
    println!(
        "10 IPv6 SNAT connections: before {before:?}, node-1 agent killed {during:?}, backend nodes' agents killed too {all_down:?}, all restarted {after:?} (answers, failures); 50 new connections after: {} ok, {} failed, sources {:?}",
        fresh.ok(),
        fresh.failed(),
        fresh.sources6
    );
    for (what, r) in [("before", before), ("during", during), ("all down", all_down), ("after", after)] {
        assert_eq!(r, (30, 0), "{what}\n{}", c.logs());
    }
    assert_eq!((fresh.ok(), fresh.failed()), (50, 0), "{}", c.logs());
    assert_eq!(fresh.sources6.keys().copied().collect::<Vec<_>>(), vec![node_addr6(1)]);
}
