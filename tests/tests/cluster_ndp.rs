//! IPv6 LoadBalancer addresses are announced by Neighbour Discovery (issue
//! #13) in the three-node cluster (tests/src/cluster.rs, with IPv6 on the
//! segment): a dual-stack Service gets an IPv6 address from a pool, every
//! node agrees on its owner, the owner alone joins the address's
//! solicited-node group and answers the client's solicitation with its MAC.
//! An IPv6-only Service's address is allocated and answered the same way.
//! Then the owner's uplink goes down and its agent is killed: the next node
//! in rank sends an unsolicited advertisement and the client's neighbour
//! entry moves to it within 2 s (measured, printed). Last, a host that
//! tries to configure the address itself (DAD) finds it taken, and the
//! address returns to the first node when it comes back. The IPv6-only
//! Service is also reached through its address, TCP and UDP, by the IPv6
//! dataplane (its endpoint on the owner). Needs root.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use lb_agent::lbip::{announce, ndp, read_status};
use serde_json::json;
use xdplb_tests::{
    lbaddr::{fail_owner, neighbour, owner_seen_by, uplink_mac},
    apiserver::Resource,
    cluster::{node_addr6, node_name, Cluster, ServiceDef, Source, NAMESPACE, POD_PORT, REQUEST_TIMEOUT, UPLINK},
    servers::{http_request_within, udp_ask, Server},
    netns::Netns,
    wait_for,
};

const NODES: usize = 3;
const POOL: &str = "lan=192.168.50.200/29,fd00:50::200/125";

/// The Service's status addresses.
fn ingress(c: &Cluster, name: &str) -> Vec<IpAddr> {
    let Some(s) = c.api().and_then(|a| a.get(Resource::Services, NAMESPACE, name)) else {
        return Vec::new();
    };
    s["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect()
}

fn ndp_replies(c: &Cluster, i: usize) -> u64 {
    read_status(&c.node(i).pin_dir).map_or(0, |v| v.ndp_replies)
}

/// A datagram from the client to `addr`: the kernel resolves it first (the
/// dataplane does not balance IPv6 yet, so nothing answers the datagram).
fn poke(c: &Cluster, addr: Ipv6Addr) {
    c.client.run(move || {
        let s = UdpSocket::bind("[::]:0").expect("an IPv6 socket on the client");
        let _ = s.send_to(b"who", (addr, 80));
    });
}

/// The IPv6 multicast groups `ns` listens to on its uplink.
fn groups(ns: &Netns) -> String {
    ns.ip(&["-6", "maddr", "show", "dev", UPLINK])
}

#[test]
fn the_owner_answers_neighbour_solicitations_and_the_next_node_takes_over_within_2s() {
    let mut c = Cluster::with_agent_args(NODES, 1, Source::Kube, &["--lb-pool", POOL]);
    c.enable_ipv6();
    let web = ServiceDef::new("web", Ipv4Addr::new(10, 96, 0, 10)).node_port(30080);
    let mut obj = web.object();
    obj["spec"]["type"] = json!("LoadBalancer");
    obj["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    obj["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    c.apply(obj);
    c.apply(web.slice(&c.all_pods()));
    assert!(
        wait_for(Duration::from_secs(30), || ingress(&c, "web").len() == 2),
        "no dual-stack allocation: {:?}\n{}",
        ingress(&c, "web"),
        c.logs()
    );
    let IpAddr::V6(addr) = ingress(&c, "web")[1] else {
        panic!("the second address is IPv6 (ipFamilies order): {:?}", ingress(&c, "web"))
    };
    assert!(addr.segments()[..4] == [0xfd00, 0x50, 0, 0], "{addr} from the pool");

    // Every node agrees on the owner: the first in rank.
    let names: Vec<String> = (1..=NODES).map(node_name).collect();
    let want = announce::owner(addr.into(), &names).unwrap().clone();
    for i in 1..=NODES {
        let agreed = wait_for(Duration::from_secs(10), || owner_seen_by(&c, i, addr).as_ref() == Some(&want));
        assert!(agreed, "node-{i} sees owner {:?} of {addr}, want {want}:\n{}", owner_seen_by(&c, i, addr), c.logs());
    }
    let owner: usize = want.trim_start_matches("node-").parse().unwrap();

    // Only the owner listens to the address's solicited-node group (MLD
    // join: shown by the kernel; its MAC is in the uplink's filter).
    let group = ndp::solicited_node(addr).to_string();
    assert!(
        wait_for(Duration::from_secs(5), || groups(&c.node(owner).ns).contains(&group)),
        "node-{owner} did not join {group}:\n{}",
        groups(&c.node(owner).ns)
    );
    for i in (1..=NODES).filter(|&i| i != owner) {
        assert!(!groups(&c.node(i).ns).contains(&group), "node-{i} joined {group} though it does not own {addr}");
    }

    // The client knows only the address: it solicits, the owner alone answers.
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args(["-6", "neigh", "flush", "to", &addr.to_string(), "dev", UPLINK]));
    let before: Vec<u64> = (1..=NODES).map(|i| ndp_replies(&c, i)).collect();
    let owner_mac = uplink_mac(&c.node(owner).ns);
    let asked = Instant::now();
    let resolved = wait_for(Duration::from_secs(10), || {
        poke(&c, addr);
        neighbour(&c, addr).is_some()
    });
    assert!(resolved, "the client never resolved {addr}: {}\n{}", c.client.ip(&["-6", "neigh"]), c.logs());
    println!("the client resolved {addr} in {:?}", asked.elapsed());
    assert_eq!(neighbour(&c, addr), Some(owner_mac.clone()), "{addr} resolves to node-{owner}'s MAC");
    wait_for(Duration::from_secs(2), || ndp_replies(&c, owner) > before[owner - 1]);
    let after: Vec<u64> = (1..=NODES).map(|i| ndp_replies(&c, i)).collect();
    for i in 1..=NODES {
        assert_eq!(
            after[i - 1] > before[i - 1],
            i == owner,
            "advertisements per node before {before:?} after {after:?}: only node-{owner} answers"
        );
    }

    // A single-stack IPv6 Service: its address from the same pool, its own
    // owner (first in rank for that address), resolved the same way.
    let only = ServiceDef::new("v6only", Ipv4Addr::new(10, 96, 0, 11)).node_port(30081);
    let mut obj = only.object();
    obj["spec"]["type"] = json!("LoadBalancer");
    obj["spec"]["clusterIP"] = json!("fd00:96::11");
    obj["spec"]["clusterIPs"] = json!(["fd00:96::11"]);
    obj["spec"]["ipFamilies"] = json!(["IPv6"]);
    obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    c.apply(obj);
    assert!(wait_for(Duration::from_secs(30), || !ingress(&c, "v6only").is_empty()), "no IPv6 allocation:\n{}", c.logs());
    let IpAddr::V6(only_addr) = ingress(&c, "v6only")[0] else {
        panic!("an IPv6-only Service got {:?}", ingress(&c, "v6only"))
    };
    let only_owner = announce::owner(only_addr.into(), &names).unwrap().clone();
    let only_i: usize = only_owner.trim_start_matches("node-").parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || (1..=NODES).all(|i| owner_seen_by(&c, i, only_addr).as_ref() == Some(&only_owner))),
        "the nodes do not agree that {only_owner} owns {only_addr}"
    );
    let resolved = wait_for(Duration::from_secs(10), || {
        poke(&c, only_addr);
        neighbour(&c, only_addr).is_some()
    });
    assert!(resolved, "the client never resolved {only_addr}");
    assert_eq!(neighbour(&c, only_addr), Some(uplink_mac(&c.node(only_i).ns)), "{only_addr} resolves to {only_owner}'s MAC");
    println!("IPv6-only Service: {only_addr}, owned by {only_owner}; dual-stack: {addr}, owned by {want}");

    // And the IPv6 dataplane serves it through that address, TCP and UDP:
    // one endpoint, a host-network server on the owner (IPv6 has no SNAT
    // to other nodes yet, so a remote endpoint would answer past it).
    let _host = Server::start_dual(&c.node(only_i).ns, POD_PORT, "host6");
    c.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": NAMESPACE, "name": "v6only-1", "labels": {"kubernetes.io/service-name": "v6only"}},
        "addressType": "IPv6",
        "ports": [{"name": "tcp", "port": POD_PORT, "protocol": "TCP"}, {"name": "udp", "port": POD_PORT, "protocol": "UDP"}],
        "endpoints": [{"addresses": [node_addr6(only_i).to_string()], "nodeName": node_name(only_i),
                       "conditions": {"ready": true, "serving": true, "terminating": false}}],
    }));
    let to = SocketAddr::from((only_addr, 80));
    let tcp = wait_for(Duration::from_secs(30), || {
        c.client.run(move || http_request_within(to, &to.to_string(), "/", REQUEST_TIMEOUT, REQUEST_TIMEOUT)).is_ok_and(|(code, body)| code == 200 && body.contains("host6"))
    });
    assert!(tcp, "no TCP answer from {to}:\n{}", c.logs());
    let (mut tcp_ok, mut udp_ok) = (0, 0);
    for i in 0..20 {
        tcp_ok += c.client.run(move || http_request_within(to, &to.to_string(), "/", REQUEST_TIMEOUT, REQUEST_TIMEOUT)).is_ok_and(|(code, body)| code == 200 && body.contains("host6")) as usize;
        let msg = format!("ask-{i}");
        udp_ok += c.client.run(move || {
            let sock = UdpSocket::bind("[::]:0").expect("an IPv6 socket");
            udp_ask(&sock, to, msg.as_bytes(), REQUEST_TIMEOUT)
        })
        .is_ok_and(|(answer, from)| answer.contains("host6") && from == to) as usize;
    }
    println!("IPv6-only Service through {to}: TCP {tcp_ok}/20, UDP {udp_ok}/20 answered by the owner's endpoint, UDP answers from the service address");
    assert_eq!((tcp_ok, udp_ok), (20, 20));

    // The owner's uplink goes down and its agent dies: the next in rank
    // advertises (unsolicited, override) and the client's entry moves.
    let rest: Vec<String> = names.iter().filter(|n| **n != want).cloned().collect();
    let next = announce::owner(addr.into(), &rest).unwrap().clone();
    let next_i: usize = next.trim_start_matches("node-").parse().unwrap();
    let next_mac = uplink_mac(&c.node(next_i).ns);
    let (moved, failover) = fail_owner(&mut c, owner, addr, &next_mac);
    assert!(moved, "the client's entry for {addr} never moved to node-{next_i} ({next_mac}): {:?}\n{}", neighbour(&c, addr), c.logs());
    println!("IPv6 failover: node-{owner} down -> the client's neighbour entry for {addr} names node-{next_i} after {failover:?} (unsolicited NA; heartbeats every 200 ms, dead after 1 s)");
    assert!(failover < Duration::from_secs(2), "failover took {failover:?} (design bound 2 s)\n{}", c.logs());
    assert!(groups(&c.node(next_i).ns).contains(&group), "node-{next_i} joined {group}");

    // A fresh resolution goes to the new owner.
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args(["-6", "neigh", "flush", "to", &addr.to_string(), "dev", UPLINK]));
    let resolved = wait_for(Duration::from_secs(10), || {
        poke(&c, addr);
        neighbour(&c, addr).is_some()
    });
    assert!(resolved && neighbour(&c, addr).as_ref() == Some(&next_mac), "fresh resolution after failover: {:?}", neighbour(&c, addr));

    // A host that tries to take the address (DAD probe, RFC 4862) is told
    // it is in use; the address stays with its owner.
    // No neighbour entry first, and the owner's second announcement (500 ms
    // after it took over) past: a reachability probe's answer or that
    // unsolicited NA alone would fail the client's DAD, sometimes before
    // its DAD probe is even sent.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args(["-6", "neigh", "flush", "to", &addr.to_string(), "dev", UPLINK]));
    let probes_before = ndp_replies(&c, next_i);
    c.client.ip(&["-6", "addr", "add", &format!("{addr}/128"), "dev", UPLINK]);
    let refused = wait_for(Duration::from_secs(10), || {
        c.client.ip(&["-6", "addr", "show", "dev", UPLINK]).lines().any(|l| l.contains(&addr.to_string()) && l.contains("dadfailed"))
    });
    assert!(refused, "the client's DAD for {addr} succeeded:\n{}", c.client.ip(&["-6", "addr", "show", "dev", UPLINK]));
    c.client.ip(&["-6", "addr", "del", &format!("{addr}/128"), "dev", UPLINK]);
    assert!(wait_for(Duration::from_secs(2), || ndp_replies(&c, next_i) > probes_before), "the probe was answered");
    assert!(wait_for(Duration::from_secs(10), || c.node(next_i).log().contains("probes (DAD)")), "{}", c.node(next_i).log());
    assert_eq!(owner_seen_by(&c, next_i, addr), Some(next.clone()), "the address stays where it was");

    // The first node comes back: the address returns to it (first in
    // rank), announced; the interim owner leaves the group and stops answering.
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args(["-6", "neigh", "flush", "to", &addr.to_string(), "dev", UPLINK]));
    assert!(wait_for(Duration::from_secs(10), || {
        poke(&c, addr);
        neighbour(&c, addr).as_ref() == Some(&next_mac)
    }));
    c.uplink_up(owner);
    c.node_mut(owner).start_agent();
    let back = Instant::now();
    let returned = wait_for(Duration::from_secs(30), || neighbour(&c, addr).as_ref() == Some(&owner_mac));
    assert!(returned, "{addr} never returned to node-{owner}: {:?}\n{}", neighbour(&c, addr), c.logs());
    println!("return: the client's entry for {addr} names node-{owner} again {:?} after its agent started (unsolicited NA)", back.elapsed());
    assert!(
        wait_for(Duration::from_secs(5), || !groups(&c.node(next_i).ns).contains(&group)),
        "node-{next_i} still listens to {group} after handing {addr} back:\n{}",
        groups(&c.node(next_i).ns)
    );
    assert!(groups(&c.node(owner).ns).contains(&group));
    let before = ndp_replies(&c, next_i);
    let _ = xdplb_tests::netns::run(c.client.cmd("ip").args(["-6", "neigh", "flush", "to", &addr.to_string(), "dev", UPLINK]));
    assert!(wait_for(Duration::from_secs(10), || {
        poke(&c, addr);
        neighbour(&c, addr).is_some()
    }));
    assert_eq!(neighbour(&c, addr), Some(owner_mac), "resolved to node-{owner} again");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ndp_replies(&c, next_i), before, "node-{next_i} no longer answers for {addr}");
}
