//! The whole chain, end to end: our XDP program attached in native mode to a
//! node's uplink sees and counts real TCP between two namespaces.
//! Needs root.
use std::net::SocketAddr;

use lb_common::counter;
use xdplb_tests::{
    lb::Lb,
    servers::{http_get, Server},
    topology::{backend_addr, Topology, UPLINK},
};

#[test]
fn xdp_native_counts_real_http_through_the_node() {
    let t = Topology::new(1);
    let _srv = Server::start(&t.backends[0], 8080, "backend-0");
    let lb = Lb::attach(&t.node, UPLINK, &[]);

    let rx_before = t.node.iface_stat(UPLINK, "rx_packets");
    let tx_before = t.node.iface_stat(UPLINK, "tx_packets");
    let seen_before = lb.counter(counter::PACKETS);
    let to = SocketAddr::from((backend_addr(0), 8080));
    for _ in 0..5 {
        let body = t.client.run(move || http_get(to)).expect("HTTP through the node");
        assert_eq!(body, "backend-0");
    }
    let rx = t.node.iface_stat(UPLINK, "rx_packets") - rx_before;
    let tx = t.node.iface_stat(UPLINK, "tx_packets") - tx_before;
    let seen = lb.counter(counter::PACKETS) - seen_before;
    // Every frame the uplink received went through XDP, every frame it sent
    // through tc egress: no more, no less.
    assert!(rx >= 5 * 4, "at least SYN, ACK, request, FIN per request; got {rx}");
    assert_eq!(seen, rx + tx, "the programs counted {seen} packets, the interface received {rx} and sent {tx}");
    // Every packet has exactly one outcome, and none was dropped or rewritten.
    let all = lb.maps.counters().unwrap();
    let outcomes: u64 = (0..counter::COUNT).filter(|&i| lb_common::is_outcome(i)).map(|i| all[i as usize]).sum();
    assert_eq!(outcomes, all[counter::PACKETS as usize], "one outcome per packet: {all:?}");
    for c in [counter::DROP_MALFORMED, counter::DROP_NO_BACKEND, counter::NAT_FORWARD, counter::NAT_REPLY] {
        assert_eq!(all[c as usize], 0, "{}", counter::LABELS[c as usize]);
    }
    assert!(all[counter::PASS_NOT_SERVICE as usize] >= rx, "the TCP packets passed as non-service");
}
