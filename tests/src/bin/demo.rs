//! `cargo xtask demo`: a node namespace with xdplb attached, three backends,
//! and a client that sends real HTTP to a ClusterIP and to a NodePort,
//! printing which backend answered each request. Needs root.
use std::{collections::BTreeMap, net::{Ipv4Addr, SocketAddr}};

use lb_common::{algorithm, counter, IPPROTO_TCP};
use xdplb_tests::{
    lb::Lb,
    servers::{http_get, Server},
    services::{contents, Svc},
    topology::{backend_addr, Topology, NODE_ADDR, UPLINK},
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;

fn main() {
    println!("xdplb demo: client ns -> node ns (XDP on {UPLINK}) -> 3 backend namespaces");
    let t = Topology::new(3);
    let _servers: Vec<_> = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i} ({})", backend_addr(i)))).collect();
    let mut lb = Lb::attach(&t.node, UPLINK, &[]);
    let mut svc = Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).frontend(NODE_ADDR, NODE_PORT);
    for i in 0..3 {
        svc = svc.backend(i as u32 + 1, backend_addr(i), 8080);
    }
    lb.program(&contents(&[svc]));
    println!("service default/web: ClusterIP {CLUSTER_IP}:80, NodePort {NODE_ADDR}:{NODE_PORT}, 3 backends on :8080, random\n");

    for (label, to) in [("ClusterIP", SocketAddr::from((CLUSTER_IP, 80))), ("NodePort", SocketAddr::from((NODE_ADDR, NODE_PORT)))] {
        let mut tally = BTreeMap::<String, u32>::new();
        for n in 1..=6 {
            let body = t.client.run(move || http_get(to)).unwrap_or_else(|e| format!("ERROR {e}"));
            println!("  {label:9} request {n}: GET http://{to}/ answered by {body}");
            *tally.entry(body).or_default() += 1;
        }
        println!("  {label}: {tally:?}\n");
    }
    let c = lb.maps.counters().expect("counters");
    let s = lb.maps.service_stats(1).expect("stats");
    println!("dataplane counters: {}", counter::LABELS.iter().zip(&c).filter(|(_, v)| **v > 0).map(|(l, v)| format!("{l}={v}")).collect::<Vec<_>>().join(" "));
    println!("service 1: packets={} bytes={} new_flows={} drops_no_backend={}", s.packets, s.bytes, s.new_flows, s.drops_no_backend);
    println!("conntrack entries: {}", lb.maps.flows().map(|f| f.len()).unwrap_or(0));
}
