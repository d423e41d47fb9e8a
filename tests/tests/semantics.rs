//! kube-proxy's Service semantics through the real `lb-agent run` binary
//! (file source) and real TCP clients in a node topology: what a client sees
//! for labels, publishNotReadyAddresses, affinity changes, topology and the
//! Local policies. Needs root.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_agent::dataplane::Dataplane;
use xdplb_tests::{
    agent::{objects_dir_with, programmed, web_service, write, Agent, WEB_CLUSTER_IP},
    servers::{tally, Server},
    topology::{backend_addr, Topology},
    wait_for,
};

/// The EndpointSlice of `web` with (backend id, ready, node, zone) endpoints.
fn slice_of(eps: &[(usize, bool, &str, &str)]) -> String {
    let mut s = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc12\n  namespace: shop\n  \
                 labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  \
                 protocol: TCP\nendpoints:\n"
        .to_string();
    for (i, ready, node, zone) in eps {
        s += &format!(
            "- addresses: [{}]\n  conditions: {{ready: {ready}}}\n  nodeName: {node}\n  zone: {zone}\n",
            backend_addr(*i)
        );
    }
    s
}

/// `n` backends serving their identity on 8080, the agent on `service` and
/// `slice`, waited for until the ClusterIP has `slots` slots.
fn setup(n: usize, service: &str, slice: &str, slots: u32) -> (Topology, Vec<Server>, Agent, Dataplane) {
    let t = Topology::new(n);
    let servers = (0..n).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let mut agent = Agent::start(&t.node, &objects_dir_with(service, slice));
    let dp = agent.maps();
    let ok = wait_for(Duration::from_secs(20), || programmed(&dp).is_some_and(|(c, _)| c == slots));
    assert!(ok, "the service never reached {slots} slots: {:?}\n{}", programmed(&dp), agent.log());
    (t, servers, agent, dp)
}

const RR: &[(&str, &str)] = &[("xdplb.io/algorithm", "round-robin")];

#[test]
fn other_proxies_services_are_left_alone_and_not_ready_endpoints_serve_when_published() {
    let web = web_service(RR, "TCP", "  publishNotReadyAddresses: true\n");
    let (t, _servers, mut agent, dp) =
        setup(2, &web, &slice_of(&[(0, false, "node-0", "z1"), (1, true, "node-0", "z1")]), 2);
    // The not-ready endpoint takes its share, as the EndpointSlice controller
    // would have published it ready.
    let got = tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), 10);
    assert_eq!(got.get("backend-0"), Some(&5), "{got:?}");
    assert_eq!(got.get("backend-1"), Some(&5), "{got:?}");

    // A Service owned by another proxy, and a headless-labelled slice of
    // `web`: neither reaches the maps.
    let other = "apiVersion: v1\nkind: Service\nmetadata:\n  name: other\n  namespace: shop\n  labels:\n    \
                 service.kubernetes.io/service-proxy-name: someone-else\nspec:\n  clusterIP: 10.96.0.20\n  ports:\n  \
                 - name: http\n    port: 80\n    targetPort: 8080\n";
    // The EndpointSlice controller copies the Service's labels to its slices.
    let other_slice = slice_of(&[(0, true, "node-0", "z1")])
        .replace("web-abc12", "other-1")
        .replace("service-name: web\n", "service-name: other\n    service.kubernetes.io/service-proxy-name: someone-else\n");
    let headless = slice_of(&[(0, true, "node-0", "z1")])
        .replace("web-abc12", "web-hl")
        .replace("service-name: web\n", "service-name: web\n    service.kubernetes.io/headless: \"\"\n");
    let syncs = agent.sync_writes().len();
    write(&agent.source_dir, "other.yaml", &format!("{other}---\n{other_slice}---\n{headless}"));
    assert!(wait_for(Duration::from_secs(10), || agent.sync_writes().len() > syncs), "{}", agent.log());
    // Touch a file again: a second model build logs nothing new.
    let syncs = agent.sync_writes().len();
    write(&agent.source_dir, "service.yaml", &web.replace("publishNotReadyAddresses: true", "publishNotReadyAddresses: true\n  sessionAffinity: None"));
    assert!(wait_for(Duration::from_secs(10), || agent.sync_writes().len() > syncs), "{}", agent.log());
    agent.assert_alive();
    let contents = dp.contents().expect("maps");
    let frontends = contents.services.keys().filter(|k| !k.is_address()).count();
    assert_eq!(frontends, 2, "only web's ClusterIP and NodePort: {:?}", contents.services.keys());
    assert_eq!(programmed(&dp).map(|(c, _)| c), Some(2), "the headless slice added no endpoint");
    let log = agent.log();
    let lines = log.lines().filter(|l| l.contains("shop/other") && l.contains("another service proxy")).count();
    assert_eq!(lines, 2, "the Service and its slice, each logged once:\n{log}");
    assert_eq!(log.lines().filter(|l| l.contains("shop/web-hl") && l.contains("headless")).count(), 1, "{log}");
    // Its ClusterIP is not balanced here: the node has no route for it.
    let to = SocketAddr::from(([10, 96, 0, 20], 80));
    let r = t.client.run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()));
    assert!(r.is_err(), "nothing answers another proxy's ClusterIP here");
}

/// The ClusterIP's affinity timeout as programmed.
fn affinity_of(dp: &Dataplane) -> Option<u32> {
    let key = lb_common::ServiceKeyV4 { addr: WEB_CLUSTER_IP.octets(), port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
    dp.contents().ok()?.services.get(&key).map(|s| s.affinity_timeout_s)
}

/// Rewrites `web` with `spec_extra` and waits until the maps carry `timeout`.
fn set_affinity(agent: &mut Agent, dp: &Dataplane, spec_extra: &str, timeout: u32) {
    write(&agent.source_dir, "service.yaml", &web_service(RR, "TCP", spec_extra));
    let ok = wait_for(Duration::from_secs(10), || affinity_of(dp) == Some(timeout));
    assert!(ok, "affinity {timeout} never programmed: {:?}\n{}", affinity_of(dp), agent.log());
    agent.assert_alive();
}

#[test]
fn switching_session_affinity_applies_to_new_connections_only() {
    let eps = [(0, true, "node-0", "z1"), (1, true, "node-0", "z1"), (2, true, "node-0", "z1")];
    let (t, _servers, mut agent, dp) = setup(3, &web_service(RR, "TCP", ""), &slice_of(&eps), 3);
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let id_before = dp.contents().unwrap().services.iter().filter(|(k, _)| !k.is_address()).map(|(_, s)| s.id).collect::<Vec<_>>();
    // A long-lived connection, established before any switch.
    let mut conn = t.client.run(move || {
        xdplb_tests::servers::Conn::new(std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect"))
    });
    let first = conn.ask().expect("ask");

    set_affinity(&mut agent, &dp, "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n", 60);
    let pinned = tally(&t.client, to, 9);
    assert_eq!(pinned.len(), 1, "ClientIP: one backend for every new connection: {pinned:?}");
    assert_eq!(conn.ask().expect("established survives"), first);

    // A shorter timeout applies to the entry just made: after it lapses,
    // round-robin moves on to the next backend.
    set_affinity(&mut agent, &dp, "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1\n", 1);
    std::thread::sleep(Duration::from_millis(2500));
    let after = tally(&t.client, to, 1);
    assert_ne!(after.keys().next(), pinned.keys().next(), "the lapsed entry no longer pins: {after:?} vs {pinned:?}");
    assert_eq!(conn.ask().expect("established survives"), first);

    let affinity_key = lb_common::AffinityKeyV4 { service_id: id_before[0], client: xdplb_tests::topology::CLIENT_ADDR.octets() };
    assert!(dp.affinity(&affinity_key).unwrap().is_some(), "the client has an affinity entry");
    set_affinity(&mut agent, &dp, "  sessionAffinity: None\n", 0);
    // Switched off: the entry is gone, so switching on again starts afresh
    // (kube-proxy deletes its affinity sets).
    assert!(wait_for(Duration::from_secs(5), || dp.affinity(&affinity_key).unwrap().is_none()), "{}", agent.log());
    let spread = tally(&t.client, to, 9);
    assert_eq!(spread.values().copied().collect::<Vec<_>>(), [3, 3, 3], "None: round-robin again: {spread:?}");
    assert_eq!(conn.ask().expect("established survives"), first);
    let id_after = dp.contents().unwrap().services.iter().filter(|(k, _)| !k.is_address()).map(|(_, s)| s.id).collect::<Vec<_>>();
    assert_eq!(id_before, id_after, "the service kept its id");
}

/// Dataplane verdicts of a Local-policy frontend with its endpoints only on
/// other nodes (flag `LOCAL_ELSEWHERE`, count 0) against a frontend with no
/// usable endpoint anywhere (count 0): drop vs reset, at XDP and at tc.
#[test]
fn fixture_local_policy_elsewhere_drops_and_nowhere_resets() {
    use lb_common::{algorithm, counter, service_flags, ServiceKeyV4, IPPROTO_TCP};
    use std::net::Ipv4Addr;
    use xdplb_tests::{
        fixture::run_frame,
        lb::Lb,
        packet::{Frame, TCP_SYN},
        services::{contents, Svc},
    };
    let (elsewhere, nowhere) = (Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 99));
    let client = Ipv4Addr::new(192, 168, 1, 2);
    let mut lb = Lb::load();
    let mut want = contents(&[
        Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(elsewhere, 80),
        Svc::new(2, IPPROTO_TCP, algorithm::RANDOM).frontend(nowhere, 80),
    ]);
    let k = ServiceKeyV4 { addr: elsewhere.octets(), port: 80u16.to_be_bytes(), proto: IPPROTO_TCP, scope: 0 };
    want.services.get_mut(&k).unwrap().flags |= service_flags::LOCAL_ELSEWHERE;
    lb.program(&want);

    let syn = |dst| Frame::tcp(client, 41000, dst, 80, TCP_SYN).bytes();
    let (rc, out) = run_frame(&lb.ebpf, "xdp_lb", &syn(elsewhere)).unwrap();
    assert_eq!((rc, &out), (1, &syn(elsewhere)), "XDP_DROP, frame untouched");
    let (rc, out) = run_frame(&lb.ebpf, "xdp_lb", &syn(nowhere)).unwrap();
    assert_eq!(rc, 3, "XDP_TX: the reset goes back");
    assert_eq!(out[47] & 0x04, 0x04, "RST flag set in the answer");
    let (rc, _) = run_frame(&lb.ebpf, "tc_ingress", &syn(elsewhere)).unwrap();
    assert_eq!(rc, 2, "TC_ACT_SHOT from a pod as well");
    let (rc, out) = run_frame(&lb.ebpf, "tc_ingress", &syn(nowhere)).unwrap();
    assert_ne!(rc, 2, "the reset leaves from tc");
    assert_eq!(out[47] & 0x04, 0x04);
    assert_eq!(lb.counter(counter::RST_SENT), 2, "one reset per hook, none for the Local-elsewhere service");
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 4, "all four new flows found no backend");
}

/// A Service with both traffic policies `Local` and its endpoint on
/// another node: a client's connection times out (dropped); once no
/// endpoint is usable anywhere, it is refused (reset).
#[test]
fn local_policy_times_out_when_endpoints_are_elsewhere_and_refuses_when_none() {
    let local = "  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n";
    let t = Topology::new(1);
    let _server = Server::start(&t.backends[0], 8080, "backend-0");
    let mut agent = Agent::start(&t.node, &objects_dir_with(&web_service(RR, "TCP", local), &slice_of(&[(0, true, "node-1", "z1")])));
    let dp = agent.maps();
    let flagged = |dp: &Dataplane| {
        let key = lb_common::ServiceKeyV4 { addr: WEB_CLUSTER_IP.octets(), port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
        dp.contents().ok()?.services.get(&key).map(|s| (s.count, s.flags & lb_common::service_flags::LOCAL_ELSEWHERE != 0))
    };
    assert!(wait_for(Duration::from_secs(20), || flagged(&dp) == Some((0, true))), "{:?}\n{}", flagged(&dp), agent.log());
    // XDP_TX reaches the client's veth only if it runs XDP too.
    let _peer = xdplb_tests::lb::Lb::attach(&t.client, "eth0", &[]);
    let connect = |to: SocketAddr| {
        t.client.run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()).map_err(|e| e.kind()))
    };
    for to in [SocketAddr::from((WEB_CLUSTER_IP, 80)), SocketAddr::from((xdplb_tests::topology::NODE_ADDR, 30080))] {
        assert_eq!(connect(to), Err(std::io::ErrorKind::TimedOut), "{to}: dropped, the client times out");
    }

    write(&agent.source_dir, "slice.yaml", &slice_of(&[(0, false, "node-1", "z1")]));
    assert!(wait_for(Duration::from_secs(10), || flagged(&dp) == Some((0, false))), "{:?}\n{}", flagged(&dp), agent.log());
    agent.assert_alive();
    for to in [SocketAddr::from((WEB_CLUSTER_IP, 80)), SocketAddr::from((xdplb_tests::topology::NODE_ADDR, 30080))] {
        assert_eq!(connect(to), Err(std::io::ErrorKind::ConnectionRefused), "{to}: no endpoint anywhere: refused");
    }
    // Back on this node: served.
    write(&agent.source_dir, "slice.yaml", &slice_of(&[(0, true, "node-0", "z1")]));
    assert!(wait_for(Duration::from_secs(10), || flagged(&dp) == Some((1, false))), "{}", agent.log());
    assert_eq!(tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), 2).get("backend-0"), Some(&2));
}

/// The Node `node-0` at the node address, in `zone`.
fn node_in_zone(zone: &str) -> String {
    xdplb_tests::agent::NODE.replace("  name: node-0\n", &format!("  name: node-0\n  labels:\n    topology.kubernetes.io/zone: {zone}\n"))
}

/// Topology-aware routing through the real agent: `trafficDistribution:
/// PreferClose` keeps this node's zone; a zone hint on every endpoint wins
/// over it; `PreferSameNode` keeps the node's own endpoint; `lb-agent plan`
/// shows the choice.
#[test]
fn topology_aware_routing_keeps_traffic_in_the_nodes_zone() {
    let eps = [(0, true, "node-0", "z1"), (1, true, "node-1", "z1"), (2, true, "node-2", "z2")];
    let td = |d: &str| web_service(RR, "TCP", &format!("  trafficDistribution: {d}\n"));
    let t = Topology::new(3);
    let _servers: Vec<Server> = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let dir = objects_dir_with(&td("PreferClose"), &slice_of(&eps));
    write(&dir, "node.yaml", &node_in_zone("z1"));
    // The "other nodes" of the endpoints are names only: every backend sits
    // on this node's bridge, so no flow is SNATed (the reply would not pass
    // an interface the agent watches).
    let mut agent = Agent::start_with(&t.node, &dir, &["--no-snat"]);
    let dp = agent.maps();
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let wait_slots = |agent: &mut Agent, want: &[usize]| {
        let want: Vec<_> = want.iter().map(|i| backend_addr(*i)).collect();
        let ok = wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(_, mut b)| { b.sort(); b == want }));
        assert!(ok, "wanted {want:?}, programmed {:?}\n{}", programmed(&dp), agent.log());
        agent.assert_alive();
    };
    wait_slots(&mut agent, &[0, 1]);
    let got = tally(&t.client, to, 10);
    assert_eq!(got.values().copied().collect::<Vec<_>>(), [5, 5], "zone z1 only: {got:?}");
    assert!(!got.contains_key("backend-2"));

    // The plan names the choice.
    let out = std::process::Command::new(xdplb_tests::agent::agent_binary())
        .args(["plan", "--node-name", "node-0", "--source"])
        .arg(format!("file:{}", dir.display()))
        .output()
        .expect("lb-agent plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("topology PreferSameZone z1 (hints from trafficDistribution)"), "{text}");

    // Slice hints win: every endpoint hinted for z2.
    let hinted = slice_of(&eps).replace("  zone: z1\n", "  zone: z1\n  hints: {forZones: [{name: z2}]}\n").replace(
        "  zone: z2\n",
        "  zone: z2\n  hints: {forZones: [{name: z2}]}\n",
    );
    write(&dir, "slice.yaml", &hinted);
    wait_slots(&mut agent, &[0, 1, 2]);
    write(&dir, "node.yaml", &node_in_zone("z2"));
    wait_slots(&mut agent, &[0, 1, 2]);
    // Hints for z2 on all three: the node in z2 keeps all three; move one
    // endpoint's hint to z1 and z2 keeps two.
    write(&dir, "slice.yaml", &hinted.replacen("forZones: [{name: z2}]", "forZones: [{name: z1}]", 1));
    wait_slots(&mut agent, &[1, 2]);
    assert_eq!(tally(&t.client, to, 4).values().copied().collect::<Vec<_>>(), [2, 2]);

    // PreferSameNode: only node-0's endpoint; without one here, the zone.
    write(&dir, "slice.yaml", &slice_of(&eps));
    write(&dir, "service.yaml", &td("PreferSameNode"));
    wait_slots(&mut agent, &[0]);
    assert_eq!(tally(&t.client, to, 3).get("backend-0"), Some(&3));
    write(&dir, "slice.yaml", &slice_of(&eps[1..]));
    wait_slots(&mut agent, &[2]);
    // No endpoint in the node's zone either: all of them.
    write(&dir, "node.yaml", &node_in_zone("z9"));
    wait_slots(&mut agent, &[1, 2]);
}

/// `loadBalancerSourceRanges` containing the node's address admit the
/// LoadBalancer IPs themselves as sources: objects → plan() → the maps →
/// a SYN from the LB IP through `xdp_lb`, and explain says the same.
#[test]
fn fixture_source_ranges_containing_the_node_admit_the_lb_ip_as_source() {
    use lb_agent::{
        control::{ids::Ids, model::Model, plan::{plan, PlanConfig}},
        explain::{explain_pinned, Action, Origin, Query},
    };
    use std::net::Ipv4Addr;
    use xdplb_tests::{fixture::run_frame, lb::Lb, packet::{Frame, TCP_SYN}};
    let lb_ip = Ipv4Addr::new(203, 0, 113, 10);
    let verdict = |ranges: &str| {
        let mut m = Model::default();
        m.add_yaml(
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.10, \
                 loadBalancerSourceRanges: [{ranges}], ports: [{{name: http, port: 80, nodePort: 30080}}]}}\n\
                 status: {{loadBalancer: {{ingress: [{{ip: {lb_ip}}}]}}}}\n---\n{}",
                slice_of(&[(0, true, "node-0", "z1")])
            ),
            "test",
        );
        let cfg = PlanConfig { node_name: "node-0".into(), node_addresses: vec![Ipv4Addr::new(192, 168, 1, 1).into()], default_algorithm: 0, service_cidrs: Vec::new() };
        let p = plan(&m, &cfg, &mut Ids::new(1024, 4096));
        let mut lb = Lb::load();
        lb.program(&p.contents);
        let q = Query { origin: Origin::External, src: lb_ip.into(), sport: Some(41000), dst: lb_ip.into(), dport: 80, proto: 6 };
        let e = explain_pinned(&lb.maps, &q, &Default::default()).unwrap();
        let frame = Frame::tcp(lb_ip, 41000, lb_ip, 80, TCP_SYN).bytes();
        let (rc, out) = run_frame(&lb.ebpf, "xdp_lb", &frame).unwrap();
        (rc, Ipv4Addr::new(out[30], out[31], out[32], out[33]), e.verdict.action, e.source_range)
    };
    assert_eq!(
        verdict("192.168.0.0/16"),
        (2, backend_addr(0), Action::Dnat, Some("203.0.113.10/32".to_string())),
        "the range holds the node: the LB IP as source is balanced (XDP_PASS after DNAT)"
    );
    assert_eq!(verdict("10.8.0.0/16"), (1, lb_ip, Action::Drop, Some("denied".to_string())), "otherwise dropped (XDP_DROP)");
}

/// kube-proxy's nftables mode refuses what a ClusterIP does not serve and
/// drops unallocated addresses of the service CIDR. From a real pod: a TCP
/// connect to an unserved port is refused (reset), a connected UDP socket
/// gets ECONNREFUSED (ICMP port unreachable), UDP to the TCP-only port too,
/// and a connect to an unallocated service address times out.
#[test]
fn unserved_cluster_ip_ports_are_refused_and_unallocated_service_addresses_dropped() {
    let t = Topology::new(1);
    let _server = Server::start(&t.backends[0], 8080, "backend-0");
    let mut agent = Agent::start_with(
        &t.node,
        &objects_dir_with(&web_service(RR, "TCP", ""), &slice_of(&[(0, true, "node-0", "z1")])),
        &["--pod-iface=pod*", "--service-cidr=10.96.0.0/12", "--service-cidr=fd00:10:96::/108"],
    );
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(20), || programmed(&dp).is_some_and(|(c, _)| c == 1)), "{}", agent.log());
    let tcp = |to: SocketAddr| {
        t.pod.run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()).map_err(|e| e.kind()))
    };
    let udp = |to: SocketAddr| {
        t.pod.run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.connect(to).unwrap();
            s.send(b"hello").unwrap();
            s.recv(&mut [0u8; 64]).map(|_| ()).map_err(|e| e.kind())
        })
    };
    let counter = |c| dp.counters().unwrap()[c as usize];
    use lb_common::counter;
    use std::io::ErrorKind::{ConnectionRefused, TimedOut, WouldBlock};

    // The pod interface is attached when the agent sees it (within a second).
    let served = wait_for(Duration::from_secs(10), || tcp(SocketAddr::from((WEB_CLUSTER_IP, 80))).is_ok());
    assert!(served, "the served port works from the pod\n{}", agent.log());
    assert_eq!(tcp(SocketAddr::from((WEB_CLUSTER_IP, 81))), Err(ConnectionRefused), "unserved TCP port: reset");
    assert_eq!(udp(SocketAddr::from((WEB_CLUSTER_IP, 53))), Err(ConnectionRefused), "unserved UDP port: port unreachable");
    assert_eq!(udp(SocketAddr::from((WEB_CLUSTER_IP, 80))), Err(ConnectionRefused), "UDP to a TCP-only port");
    assert_eq!(counter(counter::DROP_UNSERVED), 3, "{}", agent.log());
    assert_eq!((counter(counter::RST_SENT), counter(counter::UNREACH_SENT)), (1, 2));

    let unallocated = Ipv4Addr::new(10, 96, 0, 99);
    assert_eq!(tcp(SocketAddr::from((unallocated, 80))), Err(TimedOut), "unallocated service address: dropped");
    assert!(matches!(udp(SocketAddr::from((unallocated, 53))), Err(WouldBlock | TimedOut)), "no answer");
    assert!(counter(counter::DROP_SERVICE_CIDR) >= 2, "SYN (and retries) and the datagram");
    agent.assert_alive();
}
