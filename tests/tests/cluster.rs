//! Three nodes in network namespaces on one L2 segment, the real `lb-agent`
//! on each, pods on every node, an outside client without pod routes
//! (tests/src/cluster.rs): real TCP and UDP across nodes. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use xdplb_tests::wait_for;

use xdplb_tests::cluster::{
    node_addr, pod_addr, pod_identity, tcp_requests, udp_requests, Cluster, ServiceDef, Source, Tally, CLIENT_ADDR,
    POD_PORT, TCP, UDP,
};

const NODES: usize = 3;
const PODS: usize = 2;
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Waits until every node's maps hold `endpoints` (all of them, or only the
/// node's own with `local`) for `addr:port`, TCP and UDP; `addr` None: each
/// node's own address.
fn wait_everywhere(c: &mut Cluster, addr: Option<Ipv4Addr>, port: u16, endpoints: &[(usize, usize)], local: bool) {
    for i in 1..=NODES {
        let mine: Vec<(usize, usize)> = endpoints.iter().copied().filter(|&(n, _)| !local || n == i).collect();
        for proto in [TCP, UDP] {
            c.wait_backends(i, addr.unwrap_or(node_addr(i)), port, proto, &mine);
        }
    }
}

/// Pods of node `i` only.
fn on(i: usize) -> Vec<(usize, usize)> {
    (0..PODS).map(|j| (i, j)).collect()
}

/// Asserts `n` answers, no failure, all from pods of `nodes` (each with a
/// share), and every client address the pods saw one of `sources`.
fn assert_served(t: &Tally, what: &str, n: usize, nodes: &[usize], sources: &[Ipv4Addr], c: &Cluster) {
    assert_eq!((t.ok(), t.failed()), (n, 0), "{what}: {t:?}\n{}", c.logs());
    let per_node = t.per_node();
    assert_eq!(per_node.keys().copied().collect::<Vec<_>>(), nodes, "{what}: answers per node {per_node:?}");
    assert!(per_node.values().all(|&k| k > 0), "{what}: {per_node:?}");
    assert_eq!(t.sources.values().sum::<usize>(), n, "{what}: sources {:?}", t.sources);
    assert!(t.sources.keys().all(|s| sources.contains(s)), "{what}: sources {:?}, want {sources:?}", t.sources);
}

#[test]
fn harness_pods_reach_each_other_the_client_every_node_and_every_agent_programs() {
    let mut c = Cluster::new(NODES, PODS, Source::Kube);
    // Pod to pod across nodes, no service: each answered by the pod dialed,
    // which saw the caller's own address (routed, not NATed).
    for (i, j) in c.all_pods() {
        for (k, l) in c.all_pods() {
            let t = tcp_requests(c.pod(i, j), SocketAddr::from((pod_addr(k, l), POD_PORT)), 2);
            assert_eq!(t.answers, [(pod_identity(k, l), 2)].into(), "{i}/{j} -> {k}/{l}: {t:?}");
            assert_eq!(t.sources, [(pod_addr(i, j), 2)].into(), "{i}/{j} -> {k}/{l}");
        }
    }
    // The client reaches every node address (a server in each node ns).
    let _node_servers: Vec<_> = (1..=NODES)
        .map(|i| xdplb_tests::servers::Server::start(&c.node(i).ns, 9000, &format!("node-{i}/host")))
        .collect();
    for i in 1..=NODES {
        let t = tcp_requests(&c.client, SocketAddr::from((node_addr(i), 9000)), 5);
        assert_eq!(t.answers, [(format!("node-{i}/host"), 5)].into(), "client -> node-{i}: {t:?}");
        assert_eq!(t.sources, [(CLIENT_ADDR, 5)].into());
    }
    // One service with pods on every node: every agent programs the
    // ClusterIP with all six pods and the NodePort on its own address.
    let all = c.all_pods();
    assert_eq!(all.len(), NODES * PODS);
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT), &all);
    wait_everywhere(&mut c, Some(WEB_IP), 80, &all, false);
    wait_everywhere(&mut c, None, NODE_PORT, &all, false);
    for i in 1..=NODES {
        let (count, _) = c.node(i).programmed(WEB_IP, 80, TCP).expect("programmed");
        assert_eq!(count as usize, NODES * PODS, "node-{i}");
        // A node serves NodePorts on its own address only.
        for k in (1..=NODES).filter(|&k| k != i) {
            assert_eq!(c.node(i).programmed(node_addr(k), NODE_PORT, TCP), None, "node-{i} has node-{k}'s NodePort");
        }
    }
    // The API server double saw each node's agent list Services once at least.
    let api = c.api().expect("kube source");
    assert!(api.count("list", "services") >= NODES, "{:?}", api.count("list", "services"));
}

#[test]
fn cluster_ip_from_a_pod_reaches_pods_on_every_node() {
    let mut c = Cluster::new(NODES, PODS, Source::Kube);
    let all = c.all_pods();
    c.publish(&ServiceDef::new("web", WEB_IP), &all);
    wait_everywhere(&mut c, Some(WEB_IP), 80, &all, false);
    let to = SocketAddr::from((WEB_IP, 80));
    let from = pod_addr(1, 0);
    // The calling pod reaches itself too, hairpinned: it sees the hairpin
    // address instead of its own.
    let hairpin = Ipv4Addr::from(lb_common::flow::HAIRPIN_ADDR_V4);
    let t = tcp_requests(c.pod(1, 0), to, 200);
    assert_served(&t, "TCP", 200, &[1, 2, 3], &[from, hairpin], &c);
    assert_eq!(t.answers.len(), NODES * PODS, "every pod answered: {:?}", t.answers);
    assert_eq!(t.sources.get(&hairpin), t.answers.get(&pod_identity(1, 0)), "{t:?}");
    let u = udp_requests(c.pod(1, 0), to, 200);
    assert_served(&u, "UDP", 200, &[1, 2, 3], &[from, hairpin], &c);
    assert_eq!(u.answers.len(), NODES * PODS, "every pod answered: {:?}", u.answers);
    assert_eq!(u.sources.get(&hairpin), u.answers.get(&pod_identity(1, 0)), "{u:?}");
    eprintln!("ClusterIP from node-1's pod: TCP {:?}, UDP {:?}", t.per_node(), u.per_node());
}

#[test]
fn node_port_with_local_policy_serves_local_pods_and_keeps_the_client_address() {
    // The file source here (one YAML directory for every node).
    let mut c = Cluster::new(NODES, PODS, Source::File);
    // Endpoints on nodes 1 and 2 only: node 3 has none of its own.
    let eps: Vec<(usize, usize)> = on(1).into_iter().chain(on(2)).collect();
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT).external_ip(EXTERNAL_IP).local();
    c.publish(&svc, &eps);
    wait_everywhere(&mut c, None, NODE_PORT, &eps, true);
    wait_everywhere(&mut c, Some(EXTERNAL_IP), 80, &eps, true);

    for i in [1, 2] {
        let to = SocketAddr::from((node_addr(i), NODE_PORT));
        let t = tcp_requests(&c.client, to, 200);
        assert_served(&t, &format!("TCP to node-{i}"), 200, &[i], &[CLIENT_ADDR], &c);
        let u = udp_requests(&c.client, to, 200);
        assert_served(&u, &format!("UDP to node-{i}"), 200, &[i], &[CLIENT_ADDR], &c);
    }

    // Node 3 has no local endpoint but the service has some elsewhere: as
    // kube-proxy, the SYN is dropped (the client times out), not answered
    // with a reset (no XDP_TX out of the uplink).
    // Node 3 may have synced the Service before its EndpointSlice (no
    // endpoint anywhere: reject); wait for the sync that knows of both.
    let dp3 = c.node_mut(3).maps();
    let key = lb_common::ServiceKeyV4 { addr: node_addr(3).octets(), port: NODE_PORT.to_be_bytes(), proto: TCP, scope: 0 };
    let elsewhere = wait_for(Duration::from_secs(30), || {
        dp3.v4.services.get(&key, 0).is_ok_and(|s| s.flags & lb_common::service_flags::LOCAL_ELSEWHERE != 0)
    });
    assert!(elsewhere, "node-3 never marked its NodePort local-elsewhere:\n{}", c.logs());
    let (tx0, err0) = c.node(3).xdp_tx();
    let t = tcp_requests(&c.client, SocketAddr::from((node_addr(3), NODE_PORT)), 20);
    assert_eq!((t.ok(), t.failures.get("TimedOut").copied()), (0, Some(20)), "{t:?}");
    let (tx1, err1) = c.node(3).xdp_tx();
    assert_eq!(tx1, tx0, "no reset sent (XDP_TX frames)");
    assert_eq!((err0, err1), (0, 0), "xdp_tx_errors");
    eprintln!("node-3: {} resets by XDP_TX, {err1} xdp_tx_errors", tx1 - tx0);

    // From inside the cluster the Local policy does not apply (kube-proxy's
    // short-circuit): node 3's pod reaches the NodePort and the ExternalIP
    // through node 3, served by every pod of nodes 1 and 2. (Node processes:
    // tests/tests/socket_lb.rs.)
    let pod = pod_addr(3, 0);
    for to in [SocketAddr::from((node_addr(3), NODE_PORT)), SocketAddr::from((EXTERNAL_IP, 80))] {
        let t = tcp_requests(c.pod(3, 0), to, 100);
        assert_served(&t, &format!("TCP from node-3's pod to {to}"), 100, &[1, 2], &[pod], &c);
        let u = udp_requests(c.pod(3, 0), to, 100);
        assert_served(&u, &format!("UDP from node-3's pod to {to}"), 100, &[1, 2], &[pod], &c);
    }

    // The ExternalIP follows the client's route: to node 1, then node 2.
    let to = SocketAddr::from((EXTERNAL_IP, 80));
    for i in [1, 2] {
        c.route_service(EXTERNAL_IP, i);
        let t = tcp_requests(&c.client, to, 50);
        assert_served(&t, &format!("ExternalIP via node-{i}"), 50, &[i], &[CLIENT_ADDR], &c);
        let u = udp_requests(&c.client, to, 50);
        assert_served(&u, &format!("ExternalIP/UDP via node-{i}"), 50, &[i], &[CLIENT_ADDR], &c);
    }
}

#[test]
fn node_port_with_cluster_policy_reaches_pods_on_every_node_from_every_node() {
    let mut c = Cluster::new(NODES, PODS, Source::Kube);
    let all = c.all_pods();
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT), &all);
    wait_everywhere(&mut c, None, NODE_PORT, &all, false);
    let mut results = Vec::new();
    for i in 1..=NODES {
        let to = SocketAddr::from((node_addr(i), NODE_PORT));
        let t = tcp_requests(&c.client, to, 200);
        let u = udp_requests(&c.client, to, 200);
        eprintln!(
            "node-{i}: TCP ok {} failed {} {:?} per node {:?}; UDP ok {} failed {} {:?} per node {:?}",
            t.ok(),
            t.failed(),
            t.failures,
            t.per_node(),
            u.ok(),
            u.failed(),
            u.failures,
            u.per_node()
        );
        results.push((i, t, u));
    }
    let tx_errors: u64 = (1..=NODES).map(|i| c.node(i).xdp_tx().1).sum();
    for i in 1..=NODES {
        let m = c.node_mut(i).maps();
        let counts = m.counters().unwrap();
        let named: Vec<String> = counts.iter().enumerate().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{}={v}", lb_common::counter::LABELS[k])).collect();
        eprintln!("node-{i} counters: {}", named.join(" "));
        assert_eq!(counts[lb_common::counter::DROP_SNAT_EXHAUSTED as usize], 0);
    }
    for (i, t, u) in &results {
        // Local backends see the client, remote ones the balancing node (SNAT).
        let sources = [CLIENT_ADDR, node_addr(*i)];
        assert_served(t, &format!("TCP to node-{i}"), 200, &[1, 2, 3], &sources, &c);
        assert_served(u, &format!("UDP to node-{i}"), 200, &[1, 2, 3], &sources, &c);
    }
    assert_eq!(tx_errors, 0, "xdp_tx_errors");
}

#[test]
fn a_node_fails_and_comes_back() {
    let mut c = Cluster::new(NODES, PODS, Source::Kube);
    let all = c.all_pods();
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT).local(), &all);
    wait_everywhere(&mut c, None, NODE_PORT, &all, true);

    // Node 2 crashes: its agent is killed and its uplink goes down.
    c.node_mut(2).kill_agent();
    c.uplink_down(2);
    let node1 = SocketAddr::from((node_addr(1), NODE_PORT));
    let t = tcp_requests(&c.client, node1, 100);
    assert_served(&t, "TCP to node-1 while node-2 is down", 100, &[1], &[CLIENT_ADDR], &c);
    let u = udp_requests(&c.client, node1, 100);
    assert_served(&u, "UDP to node-1 while node-2 is down", 100, &[1], &[CLIENT_ADDR], &c);
    let node2 = SocketAddr::from((node_addr(2), NODE_PORT));
    let down = tcp_requests(&c.client, node2, 10);
    assert_eq!((down.ok(), down.failed()), (0, 10), "node-2 is down: {down:?}");
    // Node 1's pods no longer reach node 2's.
    let cut = tcp_requests(c.pod(1, 0), SocketAddr::from((pod_addr(2, 0), POD_PORT)), 3);
    assert_eq!(cut.failed(), 3, "{cut:?}");

    for i in [1, 3] {
        c.node_mut(i).assert_alive();
    }

    // Back: uplink up, routes restored, a new agent adopts the pinned maps
    // (its first sync writes nothing: nothing changed meanwhile).
    c.uplink_up(2);
    let syncs = c.node(2).sync_writes().len();
    c.node_mut(2).start_agent();
    c.node_mut(2).wait_synced();
    let writes = c.node(2).sync_writes();
    assert_eq!((writes.len() > syncs, writes.last()), (true, Some(&0)), "{}", c.node(2).log());
    c.wait_backends(2, node_addr(2), NODE_PORT, TCP, &on(2));
    let t = tcp_requests(&c.client, node2, 100);
    assert_served(&t, "TCP to node-2 back", 100, &[2], &[CLIENT_ADDR], &c);
    let u = udp_requests(&c.client, node2, 100);
    assert_served(&u, "UDP to node-2 back", 100, &[2], &[CLIENT_ADDR], &c);
    let back = tcp_requests(c.pod(1, 0), SocketAddr::from((pod_addr(2, 0), POD_PORT)), 3);
    assert_eq!(back.answers, [(pod_identity(2, 0), 3)].into(), "{back:?}");
}
