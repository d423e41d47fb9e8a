//! The IPv4 service dataplane with real clients and servers in network
//! namespaces: DNAT to backends, reverse NAT of replies, conntrack pinning,
//! backend changes. Needs root.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_common::{algorithm, counter, IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::{
    lb::Lb,
    servers::{http_get, tally, udp_ask, Conn, Server},
    services::{contents, Svc},
    topology::{backend_addr, Topology, NODE_ADDR, POD_ADDR, POD_IFACE, UPLINK},
    wait_for,
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLUSTER_IP_2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const NODE_PORT: u16 = 30080;
/// A LoadBalancer ingress IP and an ExternalIP: both routed to the node.
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 10);

/// Topology with `n` backends serving TCP+UDP on 8080, the LB attached on the
/// uplink and the pod interface.
fn setup(n: usize) -> (Topology, Vec<Server>, Lb) {
    let t = Topology::new(n);
    let servers = (0..n)
        .map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}")))
        .collect();
    let lb = Lb::attach(&t.node, UPLINK, &[POD_IFACE]);
    (t, servers, lb)
}

/// A service with ClusterIP:80 and NodePort on the node address, backends
/// `ids` (1-based backend i+1 = backend_addr(i)), port 8080.
fn web(proto: u8, algo: u8, ids: &[usize]) -> Svc {
    let mut s = Svc::new(1, proto, algo)
        .frontend(CLUSTER_IP, 80)
        .frontend(NODE_ADDR, NODE_PORT)
        .frontend(LB_IP, 80)
        .frontend(EXTERNAL_IP, 80);
    for &i in ids {
        s = s.backend(i as u32 + 1, backend_addr(i), 8080);
    }
    s
}

#[test]
fn random_spreads_fresh_connections_over_every_backend_via_every_frontend() {
    let (t, _s, mut lb) = setup(3);
    lb.program(&contents(&[web(
        IPPROTO_TCP,
        algorithm::RANDOM,
        &[0, 1, 2],
    )]));
    // ClusterIP reached from outside via the node, NodePort, LoadBalancer IP, ExternalIP.
    let frontends = [
        (CLUSTER_IP, 80),
        (NODE_ADDR, NODE_PORT),
        (LB_IP, 80),
        (EXTERNAL_IP, 80),
    ];
    for to in frontends.map(SocketAddr::from) {
        let got = tally(&t.client, to, 60);
        assert_eq!(
            got.values().sum::<usize>(),
            60,
            "{to}: every response arrived"
        );
        assert_eq!(got.len(), 3, "{to}: all 3 backends answered: {got:?}");
        // Uniform over 3: each gets 20 on average; 5 is > 3.5 sigma below.
        assert!(got.values().all(|&c| c >= 5), "{to}: skewed spread {got:?}");
    }
    let new_flows = lb.maps.service_stats(1).unwrap().new_flows;
    // At least one new flow per connection (a SYN that reuses the ports of a
    // closed connection is a new flow too).
    assert!(new_flows >= 240, "{new_flows} new flows for 240 connections");
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 0);
}

#[test]
fn round_robin_spreads_within_one_per_backend() {
    let (t, _s, mut lb) = setup(3);
    lb.program(&contents(&[web(
        IPPROTO_TCP,
        algorithm::ROUND_ROBIN,
        &[0, 1, 2],
    )]));
    let got = tally(&t.client, SocketAddr::from((CLUSTER_IP, 80)), 100);
    assert_eq!(got.values().sum::<usize>(), 100);
    let (min, max) = (got.values().min().unwrap(), got.values().max().unwrap());
    assert_eq!(got.len(), 3, "every backend answered: {got:?}");
    assert!(max - min <= 1, "round-robin spread {got:?}");
}

#[test]
fn client_sees_replies_from_the_address_it_dialed() {
    let (t, _s, mut lb) = setup(1);
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &[0])]));
    for to in [
        SocketAddr::from((CLUSTER_IP, 80)),
        SocketAddr::from((NODE_ADDR, NODE_PORT)),
    ] {
        // The handshake completes only if the SYN-ACK came from `to`; the
        // connected socket's peer is then `to`.
        let conn = Conn::new(
            t.client
                .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))
                .expect("connect"),
        );
        assert_eq!(conn.peer(), to);
    }
    assert!(
        lb.counter(counter::NAT_REPLY) >= 2,
        "SYN-ACKs were reverse-NATed"
    );
}

#[test]
fn udp_request_response_through_a_vip() {
    let (t, _s, mut lb) = setup(2);
    lb.program(&contents(&[web(IPPROTO_UDP, algorithm::RANDOM, &[0, 1])]));
    let to = SocketAddr::from((CLUSTER_IP, 80));
    let answers = t.client.run(move || {
        (0..20)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                udp_ask(&s, to, b"hello", Duration::from_secs(2)).expect("UDP answer")
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(answers.len(), 20);
    assert!(
        answers.iter().all(|(_, from)| *from == to),
        "UDP replies come from the VIP: {answers:?}"
    );
    let distinct: std::collections::BTreeSet<_> =
        answers.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        distinct.len(),
        2,
        "20 sockets reached both backends: {distinct:?}"
    );
}

#[test]
fn long_lived_connection_keeps_its_backend_while_the_set_changes() {
    let (t, _s, mut lb) = setup(3);
    lb.program(&contents(&[web(
        IPPROTO_TCP,
        algorithm::RANDOM,
        &[0, 1, 2],
    )]));
    let to = SocketAddr::from((CLUSTER_IP, 80));
    let mut conn = Conn::new(
        t.client
            .run(move || TcpStream::connect(to))
            .expect("connect"),
    );
    let first = conn.ask().unwrap();
    let pinned: usize = first.trim_start_matches("backend-").parse().unwrap();
    // Remove every other backend, then add them back in another order: the
    // slots change under the flow, which must not move.
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &[pinned])]));
    for _ in 0..10 {
        assert_eq!(conn.ask().unwrap(), first);
    }
    let mut others: Vec<usize> = (0..3).filter(|&i| i != pinned).collect();
    others.push(pinned);
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &others)]));
    for _ in 0..10 {
        assert_eq!(conn.ask().unwrap(), first, "the flow stayed on its backend");
    }
}

#[test]
fn removed_backend_gets_no_new_connections() {
    let (t, _s, mut lb) = setup(3);
    lb.program(&contents(&[web(
        IPPROTO_TCP,
        algorithm::ROUND_ROBIN,
        &[0, 1, 2],
    )]));
    let before = tally(&t.client, SocketAddr::from((CLUSTER_IP, 80)), 30);
    assert_eq!(before.len(), 3, "{before:?}");
    lb.program(&contents(&[web(
        IPPROTO_TCP,
        algorithm::ROUND_ROBIN,
        &[1, 2],
    )]));
    let got = tally(&t.client, SocketAddr::from((CLUSTER_IP, 80)), 60);
    assert_eq!(got.values().sum::<usize>(), 60);
    assert!(
        !got.contains_key("backend-0"),
        "removed backend got traffic: {got:?}"
    );
    assert_eq!(got.len(), 2);
}

#[test]
fn udp_flow_moves_within_a_second_when_its_backend_is_removed() {
    let (t, _s, mut lb) = setup(2);
    lb.program(&contents(&[web(IPPROTO_UDP, algorithm::RANDOM, &[0, 1])]));
    let to = SocketAddr::from((CLUSTER_IP, 80));
    let sock = t.client.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    let (first, _) = udp_ask(&sock, to, b"a", Duration::from_secs(2)).unwrap();
    for _ in 0..5 {
        assert_eq!(
            udp_ask(&sock, to, b"a", Duration::from_secs(2)).unwrap().0,
            first,
            "pinned by conntrack"
        );
    }
    let gone: usize = first.trim_start_matches("backend-").parse().unwrap();
    lb.program(&contents(&[web(
        IPPROTO_UDP,
        algorithm::RANDOM,
        &[1 - gone],
    )]));
    let start = Instant::now();
    // The same socket (same 5-tuple) keeps sending every 50 ms.
    let moved = wait_for(
        Duration::from_secs(1),
        || matches!(udp_ask(&sock, to, b"a", Duration::from_millis(50)), Ok((id, _)) if id != first),
    );
    assert!(moved, "no answer from another backend within 1 s");
    println!("UDP flow re-balanced after {:?}", start.elapsed());
    assert!(lb.counter(counter::REBALANCED) >= 1);
}

#[test]
fn two_services_sharing_a_backend_work_from_one_client_port() {
    let t = Topology::new(1);
    let _a = Server::start(&t.backends[0], 8080, "svc-a");
    let _b = Server::start(&t.backends[0], 9090, "svc-b");
    let mut lb = Lb::attach(&t.node, UPLINK, &[]);
    let b = backend_addr(0);
    lb.program(&contents(&[
        Svc::new(1, IPPROTO_UDP, algorithm::RANDOM)
            .frontend(CLUSTER_IP, 53)
            .frontend(NODE_ADDR, 30053)
            .backend(1, b, 8080),
        Svc::new(2, IPPROTO_UDP, algorithm::RANDOM)
            .frontend(CLUSTER_IP_2, 53)
            .backend(2, b, 9090),
    ]));
    // One client socket, one source port, three frontends in turn, twice.
    let sock = t.client.run(|| UdpSocket::bind("0.0.0.0:41000").unwrap());
    for _ in 0..2 {
        for (to, want) in [
            ((CLUSTER_IP, 53), "svc-a"),
            ((CLUSTER_IP_2, 53), "svc-b"),
            ((NODE_ADDR, 30053), "svc-a"),
        ] {
            let to = SocketAddr::from(to);
            let (id, from) = udp_ask(&sock, to, b"q", Duration::from_secs(2)).unwrap();
            assert_eq!((id.as_str(), from), (want, to), "answer to {to}");
        }
    }
}

#[test]
fn east_west_pod_reaches_clusterip_with_offloaded_checksums() {
    let (t, _s, mut lb) = setup(3);
    lb.program(&contents(&[web(
        IPPROTO_TCP,
        algorithm::RANDOM,
        &[0, 1, 2],
    )]));
    // The pod's veth keeps tx checksum offload on (the default): its packets
    // carry partial checksums, which the tc path must update correctly.
    let offload = t.pod.cmd("ethtool").args(["-k", "eth0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&offload.stdout).contains("tx-checksumming: on"));
    let got = tally(&t.pod, SocketAddr::from((CLUSTER_IP, 80)), 60);
    assert_eq!(got.values().sum::<usize>(), 60);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn service_without_backends_refuses_connections_with_a_reset() {
    let (t, _s, mut lb) = setup(1);
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &[])]));
    // XDP_TX on a veth reaches the peer only if the peer runs XDP too (a NIC
    // needs nothing): a second, empty instance on the client's end passes all.
    let _peer = Lb::attach(&t.client, "eth0", &[]);
    let to = SocketAddr::from((CLUSTER_IP, 80));
    for ns in [&t.client, &t.pod] {
        let start = Instant::now();
        let r = ns.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)));
        let err = r.expect_err("no backend: the connection must fail");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "from {}: {err}",
            ns.name()
        );
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "refused at once, not timed out: {:?}",
            start.elapsed()
        );
    }
    assert_eq!(
        lb.counter(counter::RST_SENT),
        2,
        "one reset from XDP, one from tc"
    );
    assert_eq!(lb.maps.service_stats(1).unwrap().drops_no_backend, 2);
}

#[test]
fn hairpin_pod_reaches_its_own_service_when_chosen_itself() {
    let t = Topology::new(1);
    let _b = Server::start(&t.backends[0], 8080, "backend-0");
    let _p = Server::start(&t.pod, 8080, "pod");
    let mut lb = Lb::attach(&t.node, UPLINK, &[POD_IFACE]);
    let svc = |with_other: bool| {
        let s = Svc::new(1, IPPROTO_TCP, algorithm::ROUND_ROBIN)
            .frontend(CLUSTER_IP, 80)
            .backend(1, POD_ADDR, 8080);
        if with_other {
            s.backend(2, backend_addr(0), 8080)
        } else {
            s
        }
    };
    let to = SocketAddr::from((CLUSTER_IP, 80));
    // The pod is the only backend: every connection is a hairpin.
    lb.program(&contents(&[svc(false)]));
    assert_eq!(
        tally(&t.pod, to, 10),
        BTreeMap::from([("pod".to_string(), 10)])
    );
    assert!(
        lb.counter(counter::HAIRPIN) > 0,
        "hairpin packets were bounced"
    );
    // The pod and another backend, in turn: both answer the pod.
    lb.program(&contents(&[svc(true)]));
    let got = tally(&t.pod, to, 20);
    assert_eq!(got.values().sum::<usize>(), 20);
    assert_eq!((got["pod"], got["backend-0"]), (10, 10), "{got:?}");
}

#[test]
fn a_full_services_map_is_reported_and_loses_nothing() {
    let sizes = lb_agent::loader::MapSizes {
        services: 4,
        ..xdplb_tests::lb::TEST_SIZES
    };
    let mut lb = Lb::load_sized(sizes);
    let svc = |id: u32| {
        Svc::new(id, IPPROTO_TCP, algorithm::RANDOM)
            .frontend(Ipv4Addr::new(10, 96, 1, id as u8), 80)
            .backend(id, backend_addr(0), 8080)
    };
    let four: Vec<Svc> = (1..=4).map(svc).collect();
    lb.program(&contents(&four));
    let before = lb.maps.contents().unwrap();
    let five: Vec<Svc> = (1..=5).map(svc).collect();
    let d = lb_agent::diff::diff(&before, &contents(&five));
    let err = lb
        .maps
        .apply(&d)
        .expect_err("a fifth service does not fit in a map of 4");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("service") && msg.contains("10.96.1.5"),
        "the error names what did not fit: {msg}"
    );
    let after = lb.maps.contents().unwrap();
    assert_eq!(
        after.services, before.services,
        "the four services are intact"
    );
}

#[test]
fn tcp_connection_to_a_removed_backend_is_reset_not_blackholed() {
    let (t, _s, mut lb) = setup(2);
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &[0, 1])]));
    let to = SocketAddr::from((CLUSTER_IP, 80));
    let mut conn = Conn::new(t.client.run(move || TcpStream::connect(to)).expect("connect"));
    let first = conn.ask().unwrap();
    let gone: usize = first.trim_start_matches("backend-").parse().unwrap();
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &[1 - gone])]));
    // The next segment goes to the live backend, which has no such connection
    // and answers with a reset: the client learns at once.
    let start = Instant::now();
    let err = conn.ask().expect_err("the connection cannot continue on another backend");
    assert!(
        matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::UnexpectedEof),
        "reset, not a timeout: {err}"
    );
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    assert!(lb.counter(counter::REBALANCED) >= 1);
    // And a new connection simply works.
    assert_eq!(tally(&t.client, to, 5).len(), 1);
}

#[test]
fn xdp_forwards_to_a_redirect_interface_itself_and_falls_back_to_the_kernel_elsewhere() {
    let (t, _s, mut lb) = setup(1);
    // A backend on its own routed veth; its end runs XDP (a second, empty
    // instance), so the node's end can take redirected frames.
    let direct = xdplb_tests::netns::Netns::new();
    xdplb_tests::topology::veth(&t.node, "d0", &direct, "eth0");
    xdplb_tests::topology::addr_up(&t.node, "d0", "10.0.4.1/24");
    xdplb_tests::topology::addr_up(&direct, "eth0", "10.0.4.2/24");
    direct.ip(&["route", "add", "default", "via", "10.0.4.1"]);
    let _peer = Lb::attach(&direct, "eth0", &[]);
    let _srv = Server::start(&direct, 8080, "direct");
    let direct_addr = Ipv4Addr::new(10, 0, 4, 2);
    let svc = Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).backend(9, direct_addr, 8080);
    let bridged = Svc::new(2, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP_2, 80).backend(1, backend_addr(0), 8080);
    lb.program(&contents(&[svc, bridged]));
    let d0 = t.node.ifindex("d0");
    // The kernel resolves a devmap's ifindex in the writer's namespace (the
    // agent runs in the node's).
    let dir = lb.pin_dir().to_path_buf();
    t.node.run(move || lb_agent::dataplane::Dataplane::open(&dir).unwrap().set_redirect_ifaces(&[d0]).unwrap());
    lb.maps.set_config(&lb_common::Config { flags: lb_common::config_flags::XDP_REDIRECT, ..Default::default() }).unwrap();

    let got = tally(&t.client, SocketAddr::from((CLUSTER_IP, 80)), 20);
    assert_eq!(got, BTreeMap::from([("direct".to_string(), 20)]));
    let redirected = lb.counter(counter::XDP_REDIRECTED);
    assert!(redirected >= 20 * 3, "SYN, ACK, request... forwarded by XDP itself: {redirected}");
    // A backend behind the bridge (not a redirect interface): the kernel forwards.
    let got = tally(&t.client, SocketAddr::from((CLUSTER_IP_2, 80)), 10);
    assert_eq!(got.values().sum::<usize>(), 10);
    assert_eq!(lb.counter(counter::XDP_REDIRECTED), redirected, "no redirect towards br0");
}

#[test]
fn a_direct_connection_reusing_a_closed_cluster_ip_connections_port_works() {
    let (t, _s, mut lb) = setup(1);
    lb.program(&contents(&[web(IPPROTO_TCP, algorithm::RANDOM, &[0])]));
    // One ephemeral port: every connection of the client reuses it.
    t.client.sysctl("net.ipv4.ip_local_port_range", "40000 40000");
    let (via, direct) = (SocketAddr::from((CLUSTER_IP, 80)), SocketAddr::from((backend_addr(0), 8080)));
    for round in 0..2 {
        // The ClusterIP connection leaves closed conntrack entries behind; the
        // direct one from the same port must not be reverse-NATed by them.
        assert_eq!(t.client.run(move || http_get(via)).unwrap(), "backend-0", "round {round}, via the ClusterIP");
        let got = t.client.run(move || http_get(direct));
        assert_eq!(got.as_deref().ok(), Some("backend-0"), "round {round}, direct: {got:?}");
    }
}

