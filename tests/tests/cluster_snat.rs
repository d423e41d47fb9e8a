//! SNAT across nodes in the cluster harness (tests/src/cluster.rs): what a
//! flow survives and what the node does when it runs out of SNAT ports.
//! Real agents on every node, real TCP between the outside client and pods
//! on other nodes. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_common::counter;
use xdplb_tests::{
    chatter::{self, chat, Phases},
    cluster::{node_addr, tcp_requests, Cluster, ServiceDef, Source},
    pathmtu::FarClient,
    servers::Conn,
};

const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;

/// Three nodes; `web` has pods on nodes 2 and 3 only, so every flow through
/// node 1's NodePort is SNATed.
fn cluster() -> Cluster {
    let mut c = Cluster::new(3, 2, Source::Kube);
    let remote: Vec<(usize, usize)> = c.all_pods().into_iter().filter(|&(n, _)| n != 1).collect();
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT), &remote);
    c.wait_backends(1, node_addr(1), NODE_PORT, 6, &remote);
    c
}

fn connect(c: &Cluster, n: usize) -> Vec<Conn> {
    chatter::connect(c, SocketAddr::from((node_addr(1), NODE_PORT)), n)
}

#[test]
fn snat_flows_survive_a_sigkill_of_the_agent_on_the_balancing_and_the_backend_node() {
    let mut c = cluster();
    let mut conns = connect(&c, 10);
    let mut first = Vec::new();
    let Phases { before, during, all_down: both_down, after } = chatter::through_sigkills(&mut c, &mut conns, &mut first, &[2]);
    let fresh = tcp_requests(&c.client, SocketAddr::from((node_addr(1), NODE_PORT)), 50);
    println!(
        "10 SNAT connections: before {before:?}, node-1 agent killed {during:?}, node-2 agent killed too {both_down:?}, both restarted {after:?} (answers, failures); 50 new connections after: {} ok, {} failed",
        fresh.ok(),
        fresh.failed()
    );
    for (what, (ok, failed)) in [("before", before), ("during", during), ("both down", both_down), ("after", after)] {
        assert_eq!((ok, failed), (30, 0), "{what}\n{}", c.logs());
    }
    assert_eq!((fresh.ok(), fresh.failed()), (50, 0), "{}", c.logs());
}

#[test]
fn an_exhausted_snat_range_refuses_new_flows_counts_them_and_spares_the_live_ones() {
    let mut c = cluster();
    // One pod only (node 2, pod 0), and two SNAT ports on node 1: two flows fit.
    c.publish(&ServiceDef::new("web", WEB_IP).node_port(NODE_PORT), &[(2, 0)]);
    c.wait_backends(1, node_addr(1), NODE_PORT, 6, &[(2, 0)]);
    c.node_mut(1).restart_agent_with(&["--snat-ports", "62000-62001"]);
    let mut conns = connect(&c, 2);
    let mut first = Vec::new();
    assert_eq!(chat(&mut conns, &mut first, 2), (4, 0));
    // A third connection finds no port: its SYNs are dropped (it times out).
    let to = SocketAddr::from((node_addr(1), NODE_PORT));
    let third = c.client.run(move || TcpStream::connect_timeout(&to, Duration::from_millis(1500)).map(|_| ()));
    assert!(third.is_err(), "a third flow got through a two-port range");
    let dp = c.node_mut(1).maps();
    let refused = dp.counters().unwrap()[counter::DROP_SNAT_EXHAUSTED as usize];
    let per_backend = dp.snat_exhausted().unwrap();
    println!("two-port SNAT range: 2 live connections, third refused; drop_snat_exhausted={refused}, per backend {per_backend:?}");
    assert!(refused >= 1, "the refusal was counted");
    assert_eq!(per_backend.len(), 1, "against the one backend");
    assert_eq!(per_backend[0].1, refused);
    // The live connections never noticed.
    assert_eq!(chat(&mut conns, &mut first, 2), (4, 0));
    assert!(
        xdplb_tests::wait_for(Duration::from_secs(15), || c.node(1).log().contains("no free SNAT port")),
        "the agent logs the exhaustion:\n{}",
        c.node(1).log()
    );
}

/// A path MTU smaller than the nodes' on the way back to the client: a
/// client behind a router whose link to it carries 1,400 bytes, the nodes'
/// network 1,500. The pod's full-size segments (SNATed back through node 1)
/// make the router answer "fragmentation needed" to the NodePort address;
/// node 1 translates it for the pod on node 2 (quoting what the pod sent),
/// the pod lowers its segment size, and a 1 MB download completes.
#[test]
fn a_full_size_download_through_a_nodeport_finds_the_smaller_path_mtu() {
    let mut c = cluster();
    let far = FarClient::new(&c, 3);
    const SIZE: usize = 1 << 20;
    let got = far.download(SocketAddr::from((node_addr(1), NODE_PORT)), SIZE);
    let dp = c.node_mut(1).maps();
    let counts = dp.counters().unwrap();
    let icmp = counts[counter::ICMP_NAT as usize];
    let (who, len, intact) = got.unwrap_or_else(|e| panic!("the download failed: {e}; icmp_nat={icmp}\n{}", c.logs()));
    println!("1 MB download through node-1's NodePort from behind a 1,400-byte link: {len} bytes from {who}, intact {intact}; node-1 translated {icmp} ICMP errors");
    assert_eq!((len, intact), (SIZE, true));
    assert!(!who.starts_with("node-1/"), "served by a pod on another node: {who}");
    assert!(icmp >= 1, "the router's fragmentation-needed reached the pod through node-1's translation");
}

/// hostNetwork backends: endpoints that are node addresses, one on this node
/// and one on another. The remote one is SNATed like a pod; the local one
/// keeps the client address. Real servers in the node namespaces, on
/// POD_PORT, TCP through the NodePort of node 1.
#[test]
fn host_network_backends_on_this_and_another_node_are_reached() {
    use xdplb_tests::{cluster::{node_name, tcp_requests, POD_PORT, CLIENT_ADDR}, servers::Server};
    let c = Cluster::new(2, 0, Source::Kube);
    let _servers: Vec<Server> = (1..=2).map(|i| Server::start(&c.node(i).ns, POD_PORT, &format!("node-{i}/host"))).collect();
    let svc = ServiceDef::new("hostnet", WEB_IP).node_port(NODE_PORT);
    c.apply(svc.object());
    let mut slice = svc.slice(&[]);
    slice["endpoints"] = serde_json::json!((1..=2)
        .map(|i| serde_json::json!({"addresses": [node_addr(i).to_string()], "nodeName": node_name(i),
                                    "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect::<Vec<_>>());
    c.apply(slice);
    let want = [node_addr(1), node_addr(2)];
    assert!(
        xdplb_tests::wait_for(Duration::from_secs(30), || c.node(1).programmed(node_addr(1), NODE_PORT, 6).is_some_and(|(_, b)| b.len() == 2)),
        "node-1 never programmed both host backends: {:?}\n{}",
        c.node(1).programmed(node_addr(1), NODE_PORT, 6),
        c.logs()
    );
    let t = tcp_requests(&c.client, SocketAddr::from((node_addr(1), NODE_PORT)), 100);
    println!("hostNetwork backends through node-1's NodePort: {t:?}");
    assert_eq!((t.ok(), t.failed()), (100, 0), "{t:?}\n{}", c.logs());
    assert!(t.answers.get("node-1/host").is_some_and(|&n| n > 0) && t.answers.get("node-2/host").is_some_and(|&n| n > 0), "{t:?}");
    // The local host backend saw the client; the remote one node 1 (SNAT).
    assert_eq!(t.sources.keys().copied().collect::<Vec<_>>(), {
        let mut v = vec![CLIENT_ADDR, want[0]];
        v.sort();
        v
    }, "{t:?}");
}

/// XDP's cached next hops (`forward.rs`) follow the network: mid-run, the
/// uplink of backend node 2 gets a new MAC (announced by gratuitous ARP),
/// then node 1's route to node 2's pods moves to go via node 3. Node 1's
/// agent hears both from netlink and bumps the cache's generation, so the
/// live SNAT connections (pods on nodes 2 and 3) keep every answer and
/// node 1 asks the FIB again only after each change.
#[test]
fn snat_flows_follow_a_backend_nodes_new_mac_and_a_moved_route() {
    use xdplb_tests::cluster::pod_cidr;
    let mut c = cluster();
    let mut conns = connect(&c, 10);
    let mut first = Vec::new();
    let lookups = |c: &mut Cluster| {
        let n = c.node_mut(1).maps().counters().unwrap();
        (n[counter::FIB_LOOKUP as usize], n[counter::XDP_REDIRECTED as usize])
    };
    let steady = chat(&mut conns, &mut first, 3);
    let (fib0, sent0) = lookups(&mut c);
    // Node 2's uplink gets a new MAC and says so.
    let new_mac = "02:00:00:00:02:99";
    c.node(2).ns.sysctl(&format!("net.ipv4.conf.{}.arp_notify", xdplb_tests::cluster::UPLINK), "1");
    c.node(2).ns.ip(&["link", "set", xdplb_tests::cluster::UPLINK, "address", new_mac]);
    let node2 = node_addr(2).to_string();
    assert!(
        xdplb_tests::wait_for(Duration::from_secs(5), || c.node(1).ns.ip(&["neigh", "show", &node2]).contains(new_mac)),
        "node 1 never learned node 2's new MAC: {}",
        c.node(1).ns.ip(&["neigh", "show", &node2])
    );
    let after_mac = chat(&mut conns, &mut first, 3);
    let (fib1, _) = lookups(&mut c);
    // Node 2's pods are now reached through node 3 (which forwards).
    c.node(1).ns.ip(&["route", "replace", &pod_cidr(2), "via", &node_addr(3).to_string()]);
    let after_route = chat(&mut conns, &mut first, 3);
    let (fib2, sent2) = lookups(&mut c);
    let fresh = tcp_requests(&c.client, SocketAddr::from((node_addr(1), NODE_PORT)), 50);
    println!(
        "10 SNAT connections through node 1: steady {steady:?}, after node 2's MAC changed {after_mac:?}, after the route moved {after_route:?} (answers, failures); 50 new connections: {} ok, {} failed; node 1: {} packets forwarded by XDP with {} FIB lookups ({fib0} before the changes, {fib1} after the MAC change, {fib2} after the route move; {} forwarded before)",
        fresh.ok(),
        fresh.failed(),
        sent2,
        fib2,
        sent0
    );
    for (what, got) in [("steady", steady), ("after the MAC change", after_mac), ("after the route move", after_route)] {
        assert_eq!(got, (30, 0), "{what}\n{}", c.logs());
    }
    assert_eq!((fresh.ok(), fresh.failed()), (50, 0), "{}", c.logs());
    assert!(fib1 > fib0 && fib2 > fib1, "each change made node 1 ask the FIB again: {fib0} -> {fib1} -> {fib2}");
    assert!(fib2 * 4 < sent2, "most forwarded packets used a cached next hop: {fib2} lookups for {sent2} packets");
}
