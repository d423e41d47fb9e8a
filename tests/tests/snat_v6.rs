//! SNAT of external IPv6 flows to backends on other nodes, through
//! BPF_PROG_TEST_RUN on the XDP program as if the frames arrived on a real
//! uplink (`uplink.rs`: routes and permanent neighbours over IPv6, so the
//! FIB lookups, output MACs and verdicts are deterministic). The same
//! generic path as IPv4's (`snat.rs`): the node's IPv6 address and a port
//! of the range as source, the reply found by its reverse entry and sent
//! back to the client. The byte-exact cases live in
//! `tests/fixtures/snat_v6.json` (`XDPLB_BLESS=1` rewrites it from
//! `cases()`). Needs root.
use lb_common::{algorithm, counter, NatConfig, IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::{
    fixture::{self, Case},
    lb::Lb,
    packet::{CLIENT_MAC, TCP_ACK, TCP_SYN},
    packet6::{verify_checksums, Frame6},
    services::{program_v6, remote_v6, Svc6},
    uplink::{forwarded, from_node_b, Uplink, CLIENT6, LB_IP6, NODE6, NODE_B_MAC, POD_B6, POD_LOCAL6, SNAT_PORT},
};

const FILE: &str = "snat_v6.json";

fn services() -> Vec<Svc6> {
    let svc = |id, proto, frontends, backends| Svc6 { id, proto, algorithm: algorithm::RANDOM, frontends, backends };
    vec![
        svc(1, IPPROTO_TCP, vec![(NODE6, 30080), (LB_IP6, 80)], vec![(11, POD_B6, 8080)]),
        svc(2, IPPROTO_UDP, vec![(NODE6, 30053)], vec![(12, POD_B6, 5353)]),
        svc(3, IPPROTO_TCP, vec![(NODE6, 30081)], vec![(13, POD_LOCAL6, 8080)]),
    ]
}

/// The IPv6 dataplane with `services()` (backends 11 and 12 on node B) and
/// SNAT to the node's IPv6 address over `ports`.
fn lb_with(ports: (u16, u16)) -> Lb {
    let mut lb = Lb::load();
    program_v6(&mut lb.ebpf, &services());
    remote_v6(&mut lb.ebpf, &[11, 12]);
    lb.maps.set_nat_config(&NatConfig { addr: NODE6.octets(), port_min: ports.0, port_max: ports.1 }).expect("writing nat_config_v6");
    lb
}

fn cases() -> Vec<Case> {
    let b = |f: &Frame6| f.bytes();
    let syn = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_SYN);
    let synack = from_node_b(Frame6::tcp(POD_B6, 8080, NODE6, SNAT_PORT, TCP_SYN | TCP_ACK));
    let ack = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
    let udp = Frame6::udp(CLIENT6, 5000, NODE6, 30053).payload(b"query");
    let udp_reply = from_node_b(Frame6::udp(POD_B6, 5353, NODE6, SNAT_PORT).payload(b"answer"));
    let lb_syn = Frame6::tcp(CLIENT6, 40001, LB_IP6, 80, TCP_SYN);
    let local = Frame6::tcp(CLIENT6, 40002, NODE6, 30081, TCP_SYN);
    let stray = from_node_b(Frame6::tcp(POD_B6, 8080, NODE6, SNAT_PORT + 1, TCP_ACK));
    vec![
        Case::new(
            "xdp_v6_snat_nodeport_syn_to_remote_backend",
            "SYN to an IPv6 NodePort whose backend is on node B: source becomes [node]:SNAT port, destination the pod; XDP sends it out of the uplink to node B (hop limit - 1, MACs from the FIB), TCP checksum over the new pseudo header",
            "xdp_lb",
            &b(&syn),
            "XDP_TX",
            Some(&b(&forwarded(syn.clone().with_src(NODE6, SNAT_PORT).with_dst(POD_B6, 8080), NODE_B_MAC))),
        ),
        Case::new(
            "xdp_v6_snat_reply_in_to_client",
            "the pod's SYN-ACK to [node]:SNAT port comes back through node B: rewritten to NodePort -> client and sent to the client",
            "xdp_lb",
            &b(&synack),
            "XDP_TX",
            Some(&b(&forwarded(synack.clone().with_src(NODE6, 30080).with_dst(CLIENT6, 40000), CLIENT_MAC))),
        ),
        Case::new(
            "xdp_v6_snat_established_keeps_port",
            "the client's next packet keeps the flow's SNAT port and backend; the payload is untouched",
            "xdp_lb",
            &b(&ack),
            "XDP_TX",
            Some(&b(&forwarded(ack.clone().with_src(NODE6, SNAT_PORT).with_dst(POD_B6, 8080), NODE_B_MAC))),
        ),
        Case::new(
            "xdp_v6_snat_udp_out",
            "UDP to an IPv6 NodePort with a remote backend: SNATed, UDP checksum valid (one port per backend: the same port)",
            "xdp_lb",
            &b(&udp),
            "XDP_TX",
            Some(&b(&forwarded(udp.clone().with_src(NODE6, SNAT_PORT).with_dst(POD_B6, 5353), NODE_B_MAC))),
        ),
        Case::new(
            "xdp_v6_snat_udp_reply_in",
            "the UDP answer is rewritten back to NodePort -> client",
            "xdp_lb",
            &b(&udp_reply),
            "XDP_TX",
            Some(&b(&forwarded(udp_reply.clone().with_src(NODE6, 30053).with_dst(CLIENT6, 5000), CLIENT_MAC))),
        ),
        Case::new(
            "xdp_v6_snat_loadbalancer_ip_exhausted",
            "a second flow to the same backend finds the one-port range taken: refused (dropped), never sent with a source its reply could not find",
            "xdp_lb",
            &b(&lb_syn),
            "XDP_DROP",
            None,
        ),
        Case::new(
            "xdp_v6_local_backend_keeps_client",
            "an IPv6 NodePort whose backend is on this node keeps the client address (no SNAT) and goes to the kernel",
            "xdp_lb",
            &b(&local),
            "XDP_PASS",
            Some(&b(&local.clone().with_dst(POD_LOCAL6, 8080))),
        ),
        Case::new(
            "xdp_v6_snat_port_without_flow_passes",
            "a packet to a SNAT port with no flow behind it is not ours: passed unchanged",
            "xdp_lb",
            &b(&stray),
            "XDP_PASS",
            None,
        ),
    ]
}

#[test]
fn fixture_file_is_current() {
    fixture::check_current(FILE, &cases());
}

#[test]
fn snat_v6_fixtures() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with((SNAT_PORT, SNAT_PORT));
    up.run_fixtures(&lb, FILE, "IPv6 SNAT");
    let counts = lb.maps.counters().unwrap();
    println!("counters: snat_new={} drop_snat_exhausted={} xdp_redirected={} forward_fallback={}", counts[counter::SNAT_NEW as usize], counts[counter::DROP_SNAT_EXHAUSTED as usize], counts[counter::XDP_REDIRECTED as usize], counts[counter::FORWARD_FALLBACK as usize]);
    assert_eq!(lb.counter(counter::SNAT_NEW), 2, "the TCP and the UDP flow");
    assert_eq!(lb.counter(counter::DROP_SNAT_EXHAUSTED), 1);
    assert_eq!(lb.maps.snat_exhausted().unwrap(), vec![(11, 1)], "counted against the backend that had no port left");
    assert_eq!(lb.counter(counter::XDP_REDIRECTED), 5, "every SNAT packet left through XDP");
    assert_eq!(lb.counter(counter::FORWARD_FALLBACK), 0);
}

/// A wide range: each new flow takes a port of it, the reply of each finds
/// its own client, and every rewritten frame's checksums are valid.
#[test]
fn many_ipv6_snat_flows_take_distinct_ports_and_their_replies_find_their_clients() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with((SNAT_PORT, SNAT_PORT + 999));
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..200u16 {
        let (rc, out) = up.xdp(&lb, &Frame6::tcp(CLIENT6, 20000 + i, NODE6, 30080, TCP_SYN).bytes());
        assert_eq!(rc, 3, "XDP_TX");
        verify_checksums(&out).unwrap();
        let port = u16::from_be_bytes([out[54], out[55]]);
        assert!((SNAT_PORT..=SNAT_PORT + 999).contains(&port), "{port}");
        ports.insert(port);
        let reply = from_node_b(Frame6::tcp(POD_B6, 8080, NODE6, port, TCP_SYN | TCP_ACK)).bytes();
        let (rc, out) = up.xdp(&lb, &reply);
        assert_eq!(rc, 3, "XDP_TX");
        verify_checksums(&out).unwrap();
        assert_eq!(u16::from_be_bytes([out[56], out[57]]), 20000 + i, "the reply goes to its own client port");
        assert_eq!(&out[38..54], &CLIENT6.octets());
    }
    println!("200 IPv6 SNAT flows: {} distinct ports", ports.len());
    assert_eq!(ports.len(), 200);
    assert_eq!(lb.counter(counter::SNAT_NEW), 200);
}
