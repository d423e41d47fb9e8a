//! IPv6 and dual-stack with the real agent, real programs and real IPv6
//! clients and servers (TCP and UDP) in network namespaces: a dual-stack
//! Service reached over both families from one client, a NodePort on the
//! node's IPv6 address, an IPv6 LoadBalancer IP guarded by IPv6 source
//! ranges, ClientIP affinity and Maglev over IPv6, both ClusterIPs from a pod,
//! path MTU through a service address and a backend's port unreachable
//! (ICMPv6 translation).
//! Needs root.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use xdplb_tests::{
    agent::{write, Agent},
    netns::Netns,
    pathmtu::download,
    servers::{http_get, tally, udp_ask, Conn, Server},
    topology::{backend_addr, backend_addr6, veth, Topology, CLIENT_ADDR6, NODE_ADDR6},
    wait_for,
};

const CLUSTER_IP4: &str = "10.96.0.10";
const CLUSTER_IP6: &str = "fd00:96::10";
const LB_IP6: &str = "2001:db8:f::50";

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// `shop/web`, dual-stack (IPv6 primary), TCP or UDP, with `extra` spec lines.
fn service(proto: &str, annotations: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  \
         ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  clusterIP: {CLUSTER_IP6}\n  clusterIPs: ['{CLUSTER_IP6}', {CLUSTER_IP4}]\n  \
         ports:\n  - name: http\n    port: 80\n    nodePort: 30080\n    protocol: {proto}\n    targetPort: 8080\n{extra}\
         status:\n  loadBalancer:\n    ingress:\n    - ip: '{LB_IP6}'\n"
    )
}

/// One EndpointSlice per family over backends `ids`.
fn slices(ids: &[usize], proto: &str) -> String {
    let slice = |family: &str, name: &str, addr: &dyn Fn(usize) -> IpAddr| {
        let eps: String = ids.iter().map(|&i| format!("- addresses: ['{}']\n  conditions: {{ready: true}}\n  nodeName: node-0\n", addr(i))).collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\n\
             addressType: {family}\nports:\n- name: http\n  port: 8080\n  protocol: {proto}\nendpoints:\n{eps}"
        )
    };
    format!(
        "{}---\n{}",
        slice("IPv4", "web-v4", &|i| backend_addr(i).into()),
        slice("IPv6", "web-v6", &|i| backend_addr6(i).into())
    )
}

struct Node {
    t: Topology,
    _servers: Vec<Server>,
    agent: Agent,
}

/// A dual-stack topology with three backends serving both families, and the
/// agent running on `service` and `slices`, NodePorts on both node addresses.
fn node(service: &str, slices: &str) -> Node {
    let t = Topology::new(3);
    t.add_ipv6();
    let servers = (0..3).map(|i| Server::start_dual(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let dir = xdplb_tests::agent::objects_dir_with(service, slices);
    let mut agent = Agent::start_with(&t.node, &dir, &["--node-address", &NODE_ADDR6.to_string(), "--pod-iface", "pod0"]);
    let dp = agent.maps();
    // Generous: loading and verifying both families' programs takes a while on a busy machine.
    let ready = wait_for(Duration::from_secs(90), || {
        dp.family_contents::<lb_common::Addr6>().is_ok_and(|c| c.services.values().any(|v| v.count > 0))
            && dp.contents().is_ok_and(|c| c.services.values().any(|v| v.count > 0))
    });
    assert!(ready, "both families programmed:\n{}", agent.log());
    assert!(dp.v6.is_some(), "the programs have the IPv6 maps");
    Node { t, _servers: servers, agent }
}

/// `n` HTTP GETs to `to` from `ns`, each answered, by all three backends.
fn all_three(ns: &Netns, to: SocketAddr, n: usize, what: &str) {
    let answers: Vec<std::io::Result<String>> = ns.run(move || (0..n).map(|_| http_get(to)).collect());
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for a in answers {
        let who = a.unwrap_or_else(|e| panic!("{what} ({to}): {e}"));
        *got.entry(who).or_default() += 1;
    }
    assert_eq!(got.len(), 3, "{what}: every backend answers: {got:?}");
}

#[test]
fn a_dual_stack_service_is_reached_over_both_families_from_one_client() {
    let n = node(&service("TCP", "xdplb.io/algorithm: round-robin", ""), &slices(&[0, 1, 2], "TCP"));
    all_three(&n.t.client, sock(CLUSTER_IP6, 80), 9, "IPv6 ClusterIP from the client");
    all_three(&n.t.client, sock(CLUSTER_IP4, 80), 9, "IPv4 ClusterIP from the same client");
    all_three(&n.t.client, SocketAddr::new(NODE_ADDR6.into(), 30080), 6, "NodePort on the node's IPv6 address");
    all_three(&n.t.client, sock(LB_IP6, 80), 6, "the IPv6 LoadBalancer IP");
    // The backends saw the client's own IPv6 address (DNAT only, on this node).
    let peer = n.t.client.run(|| {
        let mut c = Conn::new(TcpStream::connect(sock(CLUSTER_IP6, 80)).expect("connect"));
        let who = c.ask().expect("an answer");
        (who, c.peer())
    });
    assert!(peer.0.starts_with("backend-"), "{peer:?}");
    assert_eq!(peer.1, sock(CLUSTER_IP6, 80), "the client sees the service address");
    // `lb-agent services` shows both service ids, IPv6 bracketed.
    let names = lb_agent::ops::names::read(&n.agent.pin_dir);
    let rows = lb_agent::ops::inspect::services(&Agent::maps_of(&n.agent), &names).expect("services");
    let frontends: Vec<String> = rows.iter().flat_map(|r| r.frontends.clone()).collect();
    assert!(frontends.contains(&format!("[{CLUSTER_IP6}]:80/TCP")), "{frontends:?}");
    assert!(frontends.contains(&format!("{CLUSTER_IP4}:80/TCP")), "{frontends:?}");
}

/// Pods' service traffic of both families through tc ingress on their interface.
#[test]
fn both_cluster_ips_from_a_pod() {
    let n = node(&service("TCP", "xdplb.io/algorithm: round-robin", ""), &slices(&[0, 1, 2], "TCP"));
    all_three(&n.t.pod, sock(CLUSTER_IP6, 80), 6, "IPv6 ClusterIP from a pod");
    all_three(&n.t.pod, sock(CLUSTER_IP4, 80), 6, "IPv4 ClusterIP from the same pod");
}

#[test]
fn udp_over_ipv6_reaches_every_backend_and_answers_from_the_service() {
    let n = node(&service("UDP", "xdplb.io/algorithm: round-robin", ""), &slices(&[0, 1, 2], "UDP"));
    let to = sock(CLUSTER_IP6, 80);
    let answers: Vec<(String, SocketAddr)> = n.t.client.run(move || {
        (0..6)
            .map(|i| {
                let s = UdpSocket::bind(("::", 42000 + i)).unwrap();
                udp_ask(&s, to, b"who", Duration::from_secs(3)).expect("a UDP answer over IPv6")
            })
            .collect()
    });
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for (who, from) in &answers {
        assert_eq!(*from, to, "the answer comes from the service address");
        *by.entry(who).or_default() += 1;
    }
    assert_eq!(by.len(), 3, "{by:?}");
}

#[test]
fn ipv6_source_ranges_admit_only_their_clients_and_follow_edits() {
    let admit = |range: &str| format!("  loadBalancerSourceRanges: ['{range}', 10.9.0.0/16]\n");
    let n = node(&service("TCP", "", &admit("fd00:1::/64")), &slices(&[0, 1, 2], "TCP"));
    let to = sock(LB_IP6, 80);
    assert_eq!(tally(&n.t.client, to, 3).values().sum::<usize>(), 3, "the client's /64 is admitted");
    write(&n.agent.source_dir, "service.yaml", &service("TCP", "", &admit("fd00:77::/64")));
    let denied = wait_for(Duration::from_secs(10), || {
        n.t.client.run(move || TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_err())
    });
    assert!(denied, "a client outside the ranges gets nothing:\n{}", n.agent.log());
    let dp = Agent::maps_of(&n.agent);
    assert!(dp.counter(lb_common::counter::DROP_SOURCE_RANGE).unwrap() > 0, "counted as drop_source_range");
    // The ClusterIP is not guarded.
    assert_eq!(tally(&n.t.client, sock(CLUSTER_IP6, 80), 3).values().sum::<usize>(), 3);
}

#[test]
fn client_ip_affinity_and_maglev_over_ipv6() {
    let affinity = "  sessionAffinity: ClientIP\n";
    let n = node(&service("TCP", "xdplb.io/algorithm: round-robin", affinity), &slices(&[0, 1, 2], "TCP"));
    let got = tally(&n.t.client, sock(CLUSTER_IP6, 80), 9);
    assert_eq!(got.len(), 1, "one IPv6 client, one backend: {got:?}");
    let key = lb_common::AffinityKeyV6 { service_id: 0, client: CLIENT_ADDR6.octets() };
    let dp = Agent::maps_of(&n.agent);
    let v6 = dp.v6.as_ref().expect("IPv6 maps");
    let entries: Vec<_> = v6.affinity.keys().filter_map(Result::ok).filter(|k| k.client == key.client).collect();
    assert_eq!(entries.len(), 1, "one affinity entry for the IPv6 client");
    drop(n);

    // Maglev: two independent nodes pick alike for every IPv6 flow.
    let maglev = "xdplb.io/algorithm: maglev, xdplb.io/maglev-table-size: '1021'";
    let (a, b) = (node(&service("UDP", maglev, ""), &slices(&[0, 1, 2], "UDP")), node(&service("UDP", maglev, ""), &slices(&[0, 1, 2], "UDP")));
    let answers = |n: &Node| {
        n.t.client.run(|| {
            (43000..43045u16)
                .map(|p| {
                    let s = UdpSocket::bind(("::", p)).unwrap();
                    udp_ask(&s, sock(CLUSTER_IP6, 80), b"who", Duration::from_secs(3)).expect("UDP answer").0
                })
                .collect::<Vec<_>>()
        })
    };
    let on_a = answers(&a);
    assert_eq!(on_a, answers(&b), "node A and node B pick alike");
    let spread: BTreeMap<&String, usize> = on_a.iter().fold(BTreeMap::new(), |mut m, id| {
        *m.entry(id).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "all backends used: {spread:?}");
}

/// Path MTU over IPv6 through a service address: a far client behind a
/// router (the client namespace) whose link to it carries only 1,280
/// bytes downloads 1 MB through the IPv6 ClusterIP. The backends send
/// 1,500-byte segments (the far client's MSS is 1,440); the router's
/// "packet too big", addressed to the ClusterIP, must reach the backend
/// translated (quoting backend -> far client) for the download to go on.
#[test]
fn path_mtu_over_ipv6_through_a_service_address() {
    let n = node(&service("TCP", "", ""), &slices(&[0, 1, 2], "TCP"));
    let (router, far) = (&n.t.client, Netns::new());
    router.sysctl("net.ipv6.conf.all.forwarding", "1");
    veth(router, "eth1", &far, "eth0");
    router.ip(&["link", "set", "eth1", "mtu", "1280"]);
    for (ns, dev, cidr) in [(router, "eth1", "fd00:60::1/64"), (&far, "eth0", "fd00:60::2/64")] {
        ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
        // Frames from a wire carry complete checksums, as XDP expects.
        ns.cmd("ethtool").args(["-K", dev, "tx", "off"]).output().ok();
    }
    far.ip(&["-6", "route", "add", "default", "via", "fd00:60::1"]);
    n.t.node.ip(&["-6", "route", "add", "fd00:60::/64", "via", &CLIENT_ADDR6.to_string()]);
    let dp = Agent::maps_of(&n.agent);
    let before = dp.counter(lb_common::counter::ICMP_NAT).unwrap();
    for i in 0..3 {
        let (who, len, intact) = download(&far, sock(CLUSTER_IP6, 80), 1 << 20).unwrap_or_else(|e| panic!("download {i}: {e}\n{}", n.agent.log()));
        assert!(who.starts_with("backend-"), "answered by {who}");
        assert_eq!((len, intact), (1 << 20, true), "download {i} from {who}: whole and intact");
    }
    let translated = dp.counter(lb_common::counter::ICMP_NAT).unwrap() - before;
    assert!(translated >= 1, "the router's packet too big reached a backend translated ({translated})");
    println!("path MTU over IPv6: 3 downloads of 1 MiB through [{CLUSTER_IP6}]:80 behind a 1,280-byte link, {translated} packet-too-big translated");
}

/// A UDP service whose endpoints listen on no UDP port: each backend's
/// ICMPv6 port unreachable reaches the client translated (as from the
/// service address, quoting what the client sent), so its connected
/// socket fails with "connection refused" at once.
#[test]
fn a_udp_client_over_ipv6_gets_connection_refused_from_the_backends_port_unreachable() {
    let svc = service("UDP", "", "").replace("targetPort: 8080", "targetPort: 9");
    let n = node(&svc, &slices(&[0, 1, 2], "UDP").replace("port: 8080", "port: 9"));
    let dp = Agent::maps_of(&n.agent);
    let before = dp.counter(lb_common::counter::ICMP_NAT).unwrap();
    let to = sock(CLUSTER_IP6, 80);
    let refused: Vec<bool> = n.t.client.run(move || {
        (0..6)
            .map(|_| {
                let s = UdpSocket::bind(("::", 0)).unwrap();
                s.connect(to).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.send(b"anyone?").unwrap();
                let mut buf = [0u8; 64];
                matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .collect()
    });
    let translated = dp.counter(lb_common::counter::ICMP_NAT).unwrap() - before;
    assert_eq!(refused.iter().filter(|r| **r).count(), 6, "every client got connection refused: {refused:?}\n{}", n.agent.log());
    assert_eq!(translated, 6, "one port unreachable translated per datagram");
}
