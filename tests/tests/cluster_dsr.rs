//! DSR and hybrid across nodes in the cluster harness (tests/src/cluster.rs):
//! real agents on three nodes run with `--lb-mode dsr` or `hybrid`, real TCP
//! and UDP between the outside client and pods on every node. What is
//! checked: every node's frontends reach every node's pods; pods see the
//! client's own address; the client's sockets (TCP, connected UDP) accept
//! the replies, which come from the service address straight from the
//! backend's node; flows survive a SIGKILL of the agents; path MTU works;
//! a connection survives its ingress moving to another node (Maglev).
//! Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_common::counter;
use xdplb_tests::{
    chatter::{self, chat, connect, Phases},
    cluster::{node_addr, pod_addr, tcp_requests, udp_requests, Cluster, ServiceDef, Source, Tally, CLIENT_ADDR, TCP, UDP},
    pathmtu::FarClient,
    wait_for,
};

const NODES: usize = 3;
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn cluster(mode: &str, svc: &ServiceDef, endpoints: impl Fn(&Cluster) -> Vec<(usize, usize)>) -> Cluster {
    let c = Cluster::with_agent_args(NODES, 2, Source::Kube, &["--lb-mode", mode]);
    let eps = endpoints(&c);
    c.publish(svc, &eps);
    c.wait_frontends(svc, &eps);
    c
}

fn all(c: &Cluster) -> Vec<(usize, usize)> {
    c.all_pods()
}

/// Asserts `n` answers, no failure, a share for every node's pods, and
/// every client address the pods saw one of `sources`.
fn assert_served(t: &Tally, what: &str, n: usize, sources: &[Ipv4Addr], c: &Cluster) {
    assert_eq!((t.ok(), t.failed()), (n, 0), "{what}: {t:?}\n{}", c.logs());
    let per_node = t.per_node();
    assert_eq!(per_node.keys().copied().collect::<Vec<_>>(), (1..=NODES).collect::<Vec<_>>(), "{what}: answers per node {per_node:?}");
    assert!(per_node.values().all(|&k| k > 0), "{what}: {per_node:?}");
    assert_eq!(t.sources.values().sum::<usize>(), n, "{what}: sources {:?}", t.sources);
    assert!(t.sources.keys().all(|s| sources.contains(s)), "{what}: sources {:?}, want {sources:?}", t.sources);
}

fn counters(c: &mut Cluster, i: usize) -> Vec<u64> {
    c.node_mut(i).maps().counters().unwrap()
}

fn named(counts: &[u64]) -> String {
    counts.iter().enumerate().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{}={v}", counter::LABELS[k])).collect::<Vec<_>>().join(" ")
}

/// Every external frontend through every node — the node's NodePort, the
/// ExternalIP and the LoadBalancer IP routed to it — TCP and UDP, 200 each:
/// in `dsr` pods see the client for both; in `hybrid` for TCP, and UDP to
/// a pod on another node is SNATed; in `snat` both are. The ClusterIP from a pod on every node,
/// which no mode changes (the pod's address routes back through its node).
fn every_frontend_through_every_node(mode: &str) {
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT).external_ip(EXTERNAL_IP).load_balancer(LB_IP);
    let mut c = cluster(mode, &svc, all);
    for i in 1..=NODES {
        c.route_service(EXTERNAL_IP, i);
        c.route_service(LB_IP, i);
        // Remote pods see node i (SNAT) or the client (DSR); local pods the client.
        let snated: &[Ipv4Addr] = &[CLIENT_ADDR, node_addr(i)];
        let tcp_sources: &[Ipv4Addr] = if mode == "snat" { snated } else { &[CLIENT_ADDR] };
        let udp_sources: &[Ipv4Addr] = if mode == "dsr" { &[CLIENT_ADDR] } else { snated };
        for (what, addr, port) in [("NodePort", node_addr(i), NODE_PORT), ("ExternalIP", EXTERNAL_IP, 80), ("LoadBalancer IP", LB_IP, 80)] {
            let to = SocketAddr::from((addr, port));
            let t = tcp_requests(&c.client, to, 200);
            let u = udp_requests(&c.client, to, 200);
            eprintln!("{mode} {what} via node-{i}: TCP {:?} {:?}, UDP {:?} {:?}", t.per_node(), t.sources, u.per_node(), u.sources);
            assert_served(&t, &format!("{mode}: TCP to the {what} via node-{i}"), 200, tcp_sources, &c);
            assert_served(&u, &format!("{mode}: UDP to the {what} via node-{i}"), 200, udp_sources, &c);
            if mode != "dsr" {
                assert!(u.sources.get(&node_addr(i)).is_some_and(|&k| k > 0), "{mode}: UDP to other nodes' pods SNATed: {:?}", u.sources);
            }
        }
        let hairpin = Ipv4Addr::from(lb_common::flow::HAIRPIN_ADDR_V4);
        let from = [pod_addr(i, 0), hairpin];
        let to = SocketAddr::from((WEB_IP, 80));
        let t = tcp_requests(c.pod(i, 0), to, 200);
        let u = udp_requests(c.pod(i, 0), to, 200);
        eprintln!("{mode} ClusterIP from node-{i}'s pod: TCP {:?}, UDP {:?}", t.per_node(), u.per_node());
        assert_served(&t, &format!("{mode}: TCP to the ClusterIP from node-{i}'s pod"), 200, &from, &c);
        assert_served(&u, &format!("{mode}: UDP to the ClusterIP from node-{i}'s pod"), 200, &from, &c);
    }
    let mut totals = vec![0u64; counter::COUNT as usize];
    for i in 1..=NODES {
        let counts = counters(&mut c, i);
        eprintln!("{mode} node-{i} counters: {}", named(&counts));
        let dsr = [counter::DSR_FORWARD, counter::DSR_DECAP, counter::DSR_MSS_CLAMPED].map(|k| counts[k as usize]);
        if mode == "snat" {
            assert_eq!(dsr, [0; 3], "snat: no DSR on node-{i}");
        } else {
            assert!(dsr.iter().all(|&k| k > 0), "node-{i} sent and received DSR and lowered its pods' SYN-ACK MSS: {dsr:?}");
        }
        for (t, v) in totals.iter_mut().zip(counts) {
            *t += v;
        }
    }
    let snat = totals[counter::SNAT_NEW as usize];
    if mode == "dsr" {
        assert_eq!(snat, 0, "dsr: nothing SNATed");
    } else {
        assert!(snat > 0, "hybrid: UDP SNATed");
    }
    // XDP forwards every DSR packet itself but a node's first towards a
    // node whose neighbour entry does not exist yet: the kernel resolves it.
    let fallback = totals[counter::FORWARD_FALLBACK as usize];
    assert!(fallback <= (NODES * (NODES - 1)) as u64, "{fallback} DSR packets left through the kernel");
    assert_eq!((1..=NODES).map(|i| c.node(i).xdp_tx().1).sum::<u64>(), 0, "xdp_tx_errors");
}

#[test]
fn snat_every_frontend_reaches_every_node() {
    every_frontend_through_every_node("snat");
}

#[test]
fn dsr_every_frontend_reaches_every_node_and_pods_see_the_client() {
    every_frontend_through_every_node("dsr");
}

#[test]
fn hybrid_tcp_keeps_the_client_and_udp_is_snated() {
    every_frontend_through_every_node("hybrid");
}

#[test]
fn dsr_flows_survive_a_sigkill_of_the_agent_on_the_balancing_and_the_backend_node() {
    // Pods on nodes 2 and 3 only: every flow through node 1 is DSR.
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT);
    let mut c = cluster("dsr", &svc, |c| c.all_pods().into_iter().filter(|&(n, _)| n != 1).collect());
    let mut conns = connect(&c, SocketAddr::from((node_addr(1), NODE_PORT)), 10);
    let mut first = Vec::new();
    let Phases { before, during, all_down, after } = chatter::through_sigkills(&mut c, &mut conns, &mut first, &[2, 3]);
    let fresh = tcp_requests(&c.client, SocketAddr::from((node_addr(1), NODE_PORT)), 50);
    println!(
        "10 DSR connections: before {before:?}, node-1 agent killed {during:?}, backend nodes' agents killed too {all_down:?}, all restarted {after:?} (answers, failures); 50 new connections after: {} ok, {} failed, sources {:?}",
        fresh.ok(),
        fresh.failed(),
        fresh.sources
    );
    let all_counters: Vec<String> = (1..=NODES).map(|i| format!("node-{i}: {}", named(&counters(&mut c, i)))).collect();
    for (what, r) in [("before", before), ("during", during), ("all down", all_down), ("after", after)] {
        assert_eq!(r, (30, 0), "{what}; counters {all_counters:#?}\n{}", c.logs());
    }
    assert_eq!((fresh.ok(), fresh.failed()), (50, 0), "{}", c.logs());
    assert_eq!(fresh.sources.keys().copied().collect::<Vec<_>>(), vec![CLIENT_ADDR]);
}

/// The client's route to the ExternalIP moves from node 1 to node 2 to node
/// 3 mid-connection (an ECMP rehash, a drained node): no node but the first
/// has any state of these flows, yet each picks the same backend (Maglev
/// hashes the flow, not the node), so every chatting connection goes on.
#[test]
fn maglev_across_an_ingress_change_keeps_dsr_connections() {
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT).external_ip(EXTERNAL_IP).algorithm("maglev")
        // A small prime table: every node writes it in a moment.
        .annotation("xdplb.io/maglev-table-size", "251");
    let c = cluster("dsr", &svc, all);
    c.route_service(EXTERNAL_IP, 1);
    let mut conns = connect(&c, SocketAddr::from((EXTERNAL_IP, 80)), 20);
    let mut first = Vec::new();
    let mut rounds = vec![("via node-1", chat(&mut conns, &mut first, 3))];
    for i in [2, 3, 1] {
        c.route_service(EXTERNAL_IP, i);
        // The client's neighbour entry for the new next hop exists (same segment).
        rounds.push((["", "via node-1 again", "via node-2", "via node-3"][i], chat(&mut conns, &mut first, 3)));
    }
    let mut per_node = std::collections::BTreeMap::new();
    for who in &first {
        *per_node.entry(who.split('/').next().unwrap_or("").to_string()).or_insert(0) += 1;
    }
    println!("20 connections to the ExternalIP while its route moved node-1 → 2 → 3 → 1: {rounds:?} (answers, failures); backends per node {per_node:?}");
    for (what, r) in &rounds {
        assert_eq!(*r, (60, 0), "{what}\n{}", c.logs());
    }
    assert!(per_node.len() >= 2, "the connections spread over nodes: {per_node:?}");
}

/// A client behind a router whose link to it carries 1,400 bytes: the
/// pod's full-size segments leave its own node for the client (DSR), from
/// the NodePort address; the router's "fragmentation needed" goes to that
/// address, node 1, which translates it for the pod on the other node.
#[test]
fn a_full_size_download_through_dsr_finds_the_smaller_path_mtu() {
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT);
    let mut c = cluster("dsr", &svc, |c| c.all_pods().into_iter().filter(|&(n, _)| n != 1).collect());
    let far = FarClient::new(&c, NODES);
    const SIZE: usize = 1 << 20;
    let got = far.download(SocketAddr::from((node_addr(1), NODE_PORT)), SIZE);
    let counts = counters(&mut c, 1);
    let icmp = counts[counter::ICMP_NAT as usize];
    let (who, len, intact) = got.unwrap_or_else(|e| panic!("the download failed: {e}; node-1 counters {}\n{}", named(&counts), c.logs()));
    println!("1 MB download through node-1's NodePort (DSR) from behind a 1,400-byte link: {len} bytes from {who}, intact {intact}; node-1 translated {icmp} ICMP errors; node-1 counters {}", named(&counts));
    assert_eq!((len, intact), (SIZE, true));
    assert!(!who.starts_with("node-1/"), "served by a pod on another node: {who}");
    assert!(icmp >= 1, "the router's fragmentation-needed reached the pod through node-1's translation");
    assert!(counts[counter::DSR_FORWARD as usize] > 0);
}

/// New flows at ten times the conntrack table's size (1,024 entries per
/// node) into every node, while 20 long-lived connections keep chatting:
/// 10 through node 1 (SNAT mode: SNATed to the pods on node 3) and 10
/// through node 2 (DSR mode: to the same pods with the option). Not one
/// answer lost or moved: SNAT flows keep both halves (every packet looks at
/// the other), a DSR flow's forward half is looked up on every packet and
/// its reply half rebuilt by every packet on the backend's node, and a
/// Maglev service would pick the same backend anyway.
#[test]
fn a_flood_of_ten_times_the_table_spares_20_live_snat_and_dsr_connections() {
    const TABLE: usize = 1024;
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT).algorithm("maglev").annotation("xdplb.io/maglev-table-size", "251");
    let mut c = Cluster::with_agent_args(NODES, 2, Source::Kube, &["--max-flows", &TABLE.to_string()]);
    c.node_mut(2).restart_agent_with(&["--lb-mode", "dsr"]);
    let web = [(3, 0), (3, 1)];
    c.publish(&svc, &web);
    // The flood's service: local pods only, so each node's flood flows stay on it.
    let flood = ServiceDef::new("flood", Ipv4Addr::new(10, 96, 0, 20)).node_port(30090).local();
    c.publish(&flood, &c.all_pods());
    let want: Vec<Ipv4Addr> = web.iter().map(|&(n, p)| pod_addr(n, p)).collect();
    for i in 1..=NODES {
        let held = || {
            let mut got = c.node(i).programmed(node_addr(i), NODE_PORT, TCP).map(|(_, b)| b).unwrap_or_default();
            got.sort();
            got.dedup();
            got
        };
        assert!(wait_for(Duration::from_secs(30), || held() == want), "node-{i}: {:?}", held());
        assert!(wait_for(Duration::from_secs(30), || c.node(i).programmed(node_addr(i), 30090, UDP).is_some_and(|(n, _)| n == 2)), "node-{i} flood service");
    }
    let mut conns = connect(&c, SocketAddr::from((node_addr(1), NODE_PORT)), 10);
    conns.extend(connect(&c, SocketAddr::from((node_addr(2), NODE_PORT)), 10));
    let mut first = Vec::new();
    let mut live = chat(&mut conns, &mut first, 1);
    // 10 x TABLE new UDP flows into each node, a round of chat every 64.
    let flows = 10 * TABLE;
    let mut sent = 0usize;
    for batch in 0..flows / 64 {
        let base = 20000 + (batch * 64) as u16;
        sent += c.client.run(move || {
            let mut n = 0;
            for port in base..base + 64 {
                let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", port)) else { continue };
                for i in 1..=NODES {
                    if s.send_to(b"x", SocketAddr::from((node_addr(i), 30090))).is_ok() {
                        n += 1;
                    }
                }
            }
            n
        });
        let r = chat(&mut conns, &mut first, 1);
        live = (live.0 + r.0, live.1 + r.1);
    }
    let counts: Vec<Vec<u64>> = (1..=NODES).map(|i| counters(&mut c, i)).collect();
    println!(
        "flood: {sent} new UDP flows ({} per node, table {TABLE}); 20 live connections (10 SNAT via node-1, 10 DSR via node-2): {live:?} (answers, failures); halves restored per node {:?}, snat_new {:?}, dsr_forward {:?}",
        sent / NODES,
        counts.iter().map(|k| k[counter::CT_HALF_RESTORED as usize]).collect::<Vec<_>>(),
        counts.iter().map(|k| k[counter::SNAT_NEW as usize]).collect::<Vec<_>>(),
        counts.iter().map(|k| k[counter::DSR_FORWARD as usize]).collect::<Vec<_>>(),
    );
    assert!(sent >= 3 * flows * 99 / 100, "the flood was sent: {sent}");
    assert_eq!(live, (20 * (1 + flows / 64), 0), "{}", c.logs());
    assert!(first.iter().all(|w| w.starts_with("node-3/")), "{first:?}");
    assert_eq!(counts[0][counter::SNAT_NEW as usize], 10, "node 1 SNATed its 10 connections once each");
    assert!(counts[1][counter::DSR_FORWARD as usize] > 0 && counts[1][counter::SNAT_NEW as usize] == 0, "node 2 used DSR");
}

/// The option's 8 bytes on the way in. TCP: a 1 MB upload of full-size
/// segments through node 1's NodePort to a pod on node 2 completes, because
/// node 2 lowered the SYN-ACK's MSS by 8 (no "fragmentation needed" was
/// needed). UDP has no MSS: a 1,500-byte DF datagram is answered by node 1
/// with "fragmentation needed" (MTU 1,492), the client's kernel caches that
/// path MTU, and a datagram that fits is answered by the pod.
#[test]
fn the_options_bytes_are_made_room_for_by_mss_clamp_and_fragmentation_needed() {
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT);
    let mut c = cluster("dsr", &svc, |_| vec![(2, 0)]);
    let to = SocketAddr::from((node_addr(1), NODE_PORT));
    const SIZE: usize = 1 << 20;
    let up = xdplb_tests::pathmtu::upload(&c.client, to, SIZE);
    let n1 = counters(&mut c, 1);
    let n2 = counters(&mut c, 2);
    let who = up.unwrap_or_else(|e| panic!("the upload failed: {e}; node-1 {}; node-2 {}", named(&n1), named(&n2)));
    println!("1 MB upload through node-1 to node-2's pod: answered by {who}; node-1 dsr_forward={} dsr_frag_needed={}; node-2 dsr_decap={} dsr_mss_clamped={}",
        n1[counter::DSR_FORWARD as usize], n1[counter::DSR_FRAG_NEEDED as usize], n2[counter::DSR_DECAP as usize], n2[counter::DSR_MSS_CLAMPED as usize]);
    assert_eq!(who, "node-2/pod-0");
    assert!(n1[counter::DSR_FORWARD as usize] > SIZE as u64 / 1452 / 2, "the upload went through with the option");
    assert_eq!(n1[counter::DSR_FRAG_NEEDED as usize], 0, "the clamped MSS made every segment fit");
    assert_eq!(n2[counter::DSR_MSS_CLAMPED as usize], 1);

    let (first, second) = c.client.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 2048];
        // 1,472 bytes of payload: a 1,500-byte packet, DF (Linux's default for UDP).
        let first = s.send(&[b'x'; 1472]).and_then(|_| s.recv(&mut buf)).map(|n| n > 0);
        let second = s.send(&[b'y'; 1464]).and_then(|_| s.recv(&mut buf)).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        (first.map_err(|e| e.kind()), second.map_err(|e| e.kind()))
    });
    let route = String::from_utf8_lossy(&xdplb_tests::netns::run(c.client.cmd("ip").args(["route", "get", &node_addr(1).to_string()])).stdout).into_owned();
    let frag = counters(&mut c, 1)[counter::DSR_FRAG_NEEDED as usize];
    println!("UDP: 1,500-byte DF datagram -> {first:?}; node-1 dsr_frag_needed={frag}; client route: {}; 1,492-byte datagram -> {second:?}", route.trim());
    assert!(first.is_err(), "the datagram that cannot fit was not delivered");
    assert_eq!(frag, 1);
    assert!(route.contains("mtu 1492"), "the client learnt the path MTU: {route}");
    assert_eq!(second, Ok("node-2/pod-0".to_string()));
}

/// Nodes in the default `snat` mode; one Service says `xdplb.io/lb-mode:
/// dsr`, one says nothing, and one has hostNetwork backends (node
/// addresses) and says `dsr`. Through node 1, to backends on nodes 2 and 3:
/// the annotated Services' backends see the client, the other one node 1.
#[test]
fn a_service_annotated_dsr_uses_it_on_snat_nodes_also_to_host_network_backends() {
    use xdplb_tests::{
        cluster::{node_name, POD_PORT},
        servers::Server,
    };
    let mut c = Cluster::new(NODES, 1, Source::Kube);
    let remote = [(2, 0), (3, 0)];
    let dsr = ServiceDef::new("direct", WEB_IP).node_port(NODE_PORT).annotation("xdplb.io/lb-mode", "dsr");
    let plain = ServiceDef::new("plain", Ipv4Addr::new(10, 96, 0, 11)).node_port(30081);
    c.publish(&dsr, &remote);
    c.publish(&plain, &remote);
    // hostNetwork backends: servers in the namespaces of nodes 2 and 3.
    let _host: Vec<Server> = (2..=3).map(|i| Server::start(&c.node(i).ns, POD_PORT, &format!("node-{i}/host"))).collect();
    let host = ServiceDef::new("hostnet", Ipv4Addr::new(10, 96, 0, 12)).node_port(30082).annotation("xdplb.io/lb-mode", "dsr");
    c.apply(host.object());
    let mut slice = host.slice(&[]);
    slice["endpoints"] = serde_json::json!((2..=3)
        .map(|i| serde_json::json!({"addresses": [node_addr(i).to_string()], "nodeName": node_name(i),
                                    "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect::<Vec<_>>());
    c.apply(slice);
    for (port, n) in [(NODE_PORT, 2), (30081, 2), (30082, 2)] {
        for proto in [TCP, UDP] {
            assert!(
                wait_for(Duration::from_secs(30), || c.node(1).programmed(node_addr(1), port, proto).is_some_and(|(k, _)| k == n)),
                "node-1 never programmed :{port}/{proto}\n{}",
                c.logs()
            );
        }
    }
    let mut results = Vec::new();
    for (what, port, sources) in [("dsr", NODE_PORT, [CLIENT_ADDR]), ("snat", 30081, [node_addr(1)]), ("dsr, hostNetwork", 30082, [CLIENT_ADDR])] {
        let to = SocketAddr::from((node_addr(1), port));
        let t = tcp_requests(&c.client, to, 200);
        let u = udp_requests(&c.client, to, 200);
        println!("{what} Service through node-1: TCP {:?} from {:?}; UDP {:?} from {:?}", t.answers, t.sources, u.answers, u.sources);
        results.push((what, t, u, sources));
    }
    for (what, t, u, sources) in &results {
        for (proto, r) in [("TCP", t), ("UDP", u)] {
            assert_eq!((r.ok(), r.failed()), (200, 0), "{what} {proto}: {r:?}\n{}", c.logs());
            assert_eq!(r.answers.len(), 2, "{what} {proto}: both backends answered: {:?}", r.answers);
            assert_eq!(r.sources.keys().copied().collect::<Vec<_>>(), sources.to_vec(), "{what} {proto}: what the backends saw");
        }
    }
    let n1 = counters(&mut c, 1);
    // About the plain Service's 400 flows: a client port reused within the
    // UDP timeout continues its flow, a TCP port reused after a close makes
    // a new one; the annotated Services' 400 + 400 (checked exactly above
    // by what their backends saw) are not among them.
    let snat = n1[counter::SNAT_NEW as usize];
    println!("node-1: snat_new={snat} dsr_forward={}", n1[counter::DSR_FORWARD as usize]);
    assert!((380..=420).contains(&snat), "only the plain Service's flows were SNATed: {snat}");
    assert!(n1[counter::DSR_FORWARD as usize] >= 800, "the annotated ones' 800 flows went with DSR");
}

/// The ClusterIP from a node process (socket balancing, in a test cgroup
/// the agent of node 1 attaches to), on nodes in `dsr` mode, which does not
/// change it: 200 TCP and 200 UDP requests reach pods on every node, and the
/// application sees the ClusterIP as its peer.
#[test]
fn cluster_ip_from_a_node_process_reaches_pods_on_every_node() {
    use std::{collections::BTreeMap, path::Path};
    let svc = ServiceDef::new("web", WEB_IP).node_port(NODE_PORT);
    let mut c = cluster("dsr", &svc, all);
    let cgroup = xdplb_tests::cgroup::TestCgroup::new();
    c.node_mut(1).restart_agent_with(&[&format!("--socket-lb={}", cgroup.path.display())]);
    let to = format!("{WEB_IP}:80");
    for proto in ["tcp", "udp"] {
        let (mut per_node, mut peers, mut failed) = (BTreeMap::<String, usize>::new(), BTreeMap::<String, usize>::new(), Vec::new());
        for _ in 0..200 {
            let out = cgroup.run(&c.node(1).ns, Path::new(env!("CARGO_BIN_EXE_xdplb-sock-client")), &[proto, &to]);
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match text.split_once(' ') {
                Some((who, from)) if out.status.success() => {
                    *per_node.entry(who.split('/').next().unwrap_or("").to_string()).or_default() += 1;
                    *peers.entry(from.to_string()).or_default() += 1;
                }
                _ => failed.push(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            }
        }
        println!("{proto} to the ClusterIP from a node-1 process: answers per node {per_node:?}, peer seen {peers:?}, {} failed", failed.len());
        assert!(failed.is_empty(), "{proto}: {failed:?}\n{}", c.node(1).log());
        assert_eq!(per_node.keys().cloned().collect::<Vec<_>>(), ["node-1", "node-2", "node-3"], "{proto}: {per_node:?}");
        assert_eq!(peers.keys().map(String::as_str).collect::<Vec<_>>(), [to.as_str()], "{proto}: the application sees the ClusterIP");
    }
}
