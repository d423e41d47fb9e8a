//! SNAT of external flows to backends on other nodes, through
//! BPF_PROG_TEST_RUN on the XDP program as if the frames arrived on a real
//! uplink: the test thread sits in a network namespace with that uplink, a
//! route to the other node's pod CIDR and permanent neighbour entries, so
//! the program's FIB lookup (and so the output MACs and verdict) is
//! deterministic. The byte-exact cases live in `tests/fixtures/snat.json`
//! (`XDPLB_BLESS=1` rewrites it from `cases()`). Needs root.
use std::net::Ipv4Addr;

use lb_common::{counter, direction, flow_flags, FlowKeyV4, NatConfig, IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::{
    fixture::{self, Case},
    lb::{Lb, TEST_SIZES},
    packet::{icmp_error, verify_checksums, Frame, CLIENT_MAC, TCP_ACK, TCP_FIN, TCP_SYN},
    services::{contents, Svc},
    uplink::{ends, forwarded, from_node_b, Uplink, CLIENT, LB_IP, NODE, NODE_B_MAC, POD_B, POD_LOCAL, ROUTER, SNAT_PORT},
};

const FILE: &str = "snat.json";
/// An address nothing routes to: the FIB lookup fails.
const UNROUTED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

fn services() -> Vec<Svc> {
    vec![
        Svc::new(1, IPPROTO_TCP, lb_common::algorithm::RANDOM).frontend(NODE, 30080).frontend(LB_IP, 80).remote_backend(1, POD_B, 8080),
        Svc::new(2, IPPROTO_UDP, lb_common::algorithm::RANDOM).frontend(NODE, 30053).remote_backend(2, POD_B, 5353),
        Svc::new(3, IPPROTO_TCP, lb_common::algorithm::RANDOM).frontend(NODE, 30081).backend(3, POD_LOCAL, 8080),
        Svc::new(4, IPPROTO_TCP, lb_common::algorithm::RANDOM).frontend(NODE, 30082).remote_backend(4, UNROUTED, 8080),
        Svc::new(5, IPPROTO_UDP, lb_common::algorithm::RANDOM).frontend(NODE, 30054).backend(5, POD_LOCAL, 5353),
    ]
}

fn lb_with(nat_ports: (u16, u16), sizes: lb_agent::loader::MapSizes) -> Lb {
    let mut lb = Lb::load_sized(sizes);
    lb.program(&contents(&services()));
    lb.maps
        .set_nat_config(&NatConfig { addr: NODE.octets(), port_min: nat_ports.0, port_max: nat_ports.1 })
        .expect("writing nat_config");
    lb
}

fn cases() -> Vec<Case> {
    let b = |f: &Frame| f.bytes();
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN);
    let synack = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_SYN | TCP_ACK));
    let ack = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
    let udp = Frame::udp(CLIENT, 5000, NODE, 30053).payload(b"query");
    let udp_reply = from_node_b(Frame::udp(POD_B, 5353, NODE, SNAT_PORT).payload(b"answer"));
    let lb_syn = Frame::tcp(CLIENT, 40001, LB_IP, 80, TCP_SYN);
    let local = Frame::tcp(CLIENT, 40002, NODE, 30081, TCP_SYN);
    let stray = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT + 1, TCP_ACK));
    // ICMP errors: "fragmentation needed, MTU 1400" (type 3 code 4).
    let mtu = [0, 0, 0x05, 0x78];
    // A router between the nodes could not forward the SNATed data packet:
    // the client learns the MTU, about the packet it sent.
    let snat_ack_out = ends(ack.clone(), (NODE, SNAT_PORT), (POD_B, 8080));
    let from_router = from_node_b(Frame::tcp(ROUTER, 0, NODE, 0, 0));
    let to_client = forwarded(Frame::tcp(ROUTER, 0, CLIENT, 0, 0), CLIENT_MAC);
    // The client's path could not carry a big reply: node B's pod learns it,
    // about the packet it sent (to node:SNAT port).
    let reply_out = ends(Frame::tcp(POD_B, 8080, CLIENT, 40000, TCP_ACK).payload(&[7; 64]), (NODE, 30080), (CLIENT, 40000));
    let reply_sent = Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_ACK).payload(&[7; 64]);
    let from_client = Frame::tcp(CLIENT, 0, NODE, 0, 0);
    let to_pod = forwarded(Frame::tcp(CLIENT, 0, POD_B, 0, 0), NODE_B_MAC);
    // A backend on this node answers a UDP datagram with port unreachable.
    let local_udp = Frame::udp(CLIENT, 5001, NODE, 30054).payload(b"ping");
    let local_udp_in = ends(local_udp.clone(), (CLIENT, 5001), (POD_LOCAL, 5353));
    let unreach = Frame::tcp(POD_LOCAL, 0, CLIENT, 0, 0);
    vec![
        Case::new(
            "xdp_v4_snat_nodeport_syn_to_remote_backend",
            "SYN to a NodePort whose backend is on node B: source becomes node:SNAT port, destination the pod; XDP sends it out of the uplink to node B (TTL-1, MACs from the FIB)",
            "xdp_lb",
            &b(&syn),
            "XDP_TX",
            Some(&b(&forwarded(ends(syn.clone(), (NODE, SNAT_PORT), (POD_B, 8080)), NODE_B_MAC))),
        ),
        Case::new(
            "xdp_v4_snat_reply_in_to_client",
            "the pod's SYN-ACK to node:SNAT port comes back through node B: rewritten to NodePort -> client and sent to the client",
            "xdp_lb",
            &b(&synack),
            "XDP_TX",
            Some(&b(&forwarded(ends(synack.clone(), (NODE, 30080), (CLIENT, 40000)), CLIENT_MAC))),
        ),
        Case::new(
            "xdp_v4_snat_established_keeps_port",
            "the client's next packet keeps the flow's SNAT port and backend; the payload is untouched",
            "xdp_lb",
            &b(&ack),
            "XDP_TX",
            Some(&b(&forwarded(ends(ack.clone(), (NODE, SNAT_PORT), (POD_B, 8080)), NODE_B_MAC))),
        ),
        Case::new(
            "xdp_v4_snat_udp_out",
            "UDP to a NodePort with a remote backend: SNATed, UDP checksum valid (the port range has one port per backend, so it is the same port)",
            "xdp_lb",
            &b(&udp),
            "XDP_TX",
            Some(&b(&forwarded(ends(udp.clone(), (NODE, SNAT_PORT), (POD_B, 5353)), NODE_B_MAC))),
        ),
        Case::new(
            "xdp_v4_snat_udp_reply_in",
            "the UDP answer is rewritten back to NodePort -> client",
            "xdp_lb",
            &b(&udp_reply),
            "XDP_TX",
            Some(&b(&forwarded(ends(udp_reply.clone(), (NODE, 30053), (CLIENT, 5000)), CLIENT_MAC))),
        ),
        Case::new(
            "xdp_v4_snat_loadbalancer_ip_exhausted",
            "a second flow to the same backend:port finds the one-port range taken: refused (dropped), never sent with a source its reply could not find",
            "xdp_lb",
            &b(&lb_syn),
            "XDP_DROP",
            None,
        ),
        Case::new(
            "xdp_v4_local_backend_keeps_client",
            "a NodePort whose backend is on this node keeps the client address (no SNAT) and goes to the kernel",
            "xdp_lb",
            &b(&local),
            "XDP_PASS",
            Some(&b(&ends(local.clone(), (CLIENT, 40002), (POD_LOCAL, 8080)))),
        ),
        Case::new(
            "xdp_v4_icmp_frag_needed_about_snat_packet_to_client",
            "fragmentation needed from a router between the nodes, quoting node:SNAT port -> pod: sent to the client quoting client -> NodePort; outer, ICMP and quoted checksums valid",
            "xdp_lb",
            &icmp_error(&from_router, ROUTER, NODE, 3, 4, mtu, &snat_ack_out),
            "XDP_TX",
            Some(&icmp_error(&to_client, ROUTER, CLIENT, 3, 4, mtu, &ack)),
        ),
        Case::new(
            "xdp_v4_icmp_frag_needed_about_reply_to_backend",
            "fragmentation needed from the client's side, quoting NodePort -> client: sent to the pod on node B quoting pod -> node:SNAT port",
            "xdp_lb",
            &icmp_error(&from_client, CLIENT, NODE, 3, 4, mtu, &reply_out),
            "XDP_TX",
            Some(&icmp_error(&to_pod, CLIENT, POD_B, 3, 4, mtu, &reply_sent)),
        ),
        Case::new(
            "xdp_v4_local_udp_dnat",
            "UDP to a NodePort whose backend is on this node (DNAT only)",
            "xdp_lb",
            &b(&local_udp),
            "XDP_PASS",
            Some(&b(&local_udp_in)),
        ),
        Case::new(
            "tc_egress_v4_icmp_port_unreachable_from_local_backend",
            "the local backend's port unreachable leaves at tc egress reading as from the NodePort, quoting client -> NodePort",
            "tc_egress",
            &icmp_error(&unreach, POD_LOCAL, CLIENT, 3, 3, [0; 4], &local_udp_in),
            "TC_ACT_OK",
            Some(&icmp_error(&unreach, NODE, CLIENT, 3, 3, [0; 4], &local_udp)),
        ),
        Case::new(
            "xdp_v4_icmp_about_unknown_flow_passes",
            "an ICMP error about a flow that is not ours passes unchanged",
            "xdp_lb",
            &icmp_error(&from_router, ROUTER, NODE, 3, 4, mtu, &Frame::tcp(NODE, 1234, POD_B, 8080, TCP_ACK)),
            "XDP_PASS",
            None,
        ),
        Case::new(
            "xdp_v4_snat_port_without_flow_passes",
            "a packet to a SNAT port with no flow behind it is not ours: passed unchanged",
            "xdp_lb",
            &b(&stray),
            "XDP_PASS",
            None,
        ),
    ]
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

#[test]
fn fixture_file_is_current() {
    xdplb_tests::fixture::check_current(FILE, &cases());
}

#[test]
fn snat_fixtures() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with((SNAT_PORT, SNAT_PORT), TEST_SIZES);
    up.run_fixtures(&lb, FILE, "SNAT");
    assert_eq!(lb.counter(counter::SNAT_NEW), 2, "the TCP and the UDP flow");
    assert_eq!(lb.counter(counter::DROP_SNAT_EXHAUSTED), 1);
    assert_eq!(lb.maps.snat_exhausted().unwrap(), vec![(1, 1)], "counted against the backend that had no port left");
    assert_eq!(lb.counter(counter::XDP_REDIRECTED), 7, "every SNAT packet (and ICMP error of a SNAT flow) left through XDP");
    assert_eq!(lb.counter(counter::ICMP_NAT), 3);
    assert_eq!(lb.counter(counter::FORWARD_FALLBACK), 0);
}

#[test]
fn a_closed_flows_snat_port_is_reused_and_live_ones_are_not() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with((SNAT_PORT, SNAT_PORT), TEST_SIZES);
    let first = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes();
    assert_eq!(up.xdp(&lb, &first).0, XDP_TX);
    let second = Frame::tcp(CLIENT, 40001, NODE, 30080, TCP_SYN).bytes();
    assert_eq!(up.xdp(&lb, &second).0, XDP_DROP, "the only port is live");
    // The first flow closes; its port is free for the next flow.
    let fin = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_FIN | TCP_ACK).bytes();
    assert_eq!(up.xdp(&lb, &fin).0, XDP_TX);
    let (rc, out) = up.xdp(&lb, &second);
    assert_eq!(rc, XDP_TX, "a closing flow's port is taken over");
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), SNAT_PORT);
    verify_checksums(&out).unwrap();
    let reply = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_SYN | TCP_ACK)).bytes();
    let (rc, out) = up.xdp(&lb, &reply);
    assert_eq!(rc, XDP_TX);
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 40001, "the reply goes to the new flow's client");
}

#[test]
fn without_a_route_the_snat_packet_goes_to_the_kernel_and_is_counted() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with((SNAT_PORT, SNAT_PORT), TEST_SIZES);
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30082, TCP_SYN);
    let (rc, out) = up.xdp(&lb, &syn.bytes());
    assert_eq!(rc, XDP_PASS);
    assert_eq!(out, ends(syn, (NODE, SNAT_PORT), (UNROUTED, 8080)).bytes(), "rewritten all the same");
    assert_eq!(lb.counter(counter::FORWARD_FALLBACK), 1);
}

#[test]
fn pods_reaching_a_remote_backend_keep_their_address() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with((SNAT_PORT, SNAT_PORT), TEST_SIZES);
    // tc ingress on a pod's interface: the pod's address routes back here.
    let syn = Frame::tcp(Ipv4Addr::new(10, 244, 1, 20), 50000, NODE, 30080, TCP_SYN);
    let (rc, out) = fixture::run_frame(&lb.ebpf, "tc_ingress", &syn.bytes()).unwrap();
    assert_eq!(rc, 0, "TC_ACT_OK");
    assert_eq!(out, ends(syn.clone(), (syn.src, 50000), (POD_B, 8080)).bytes());
    assert_eq!(lb.counter(counter::SNAT_NEW), 0);
}

fn flow_key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> FlowKeyV4 {
    FlowKeyV4 { src_addr: src.octets(), dst_addr: dst.octets(), src_port: sport.to_be_bytes(), dst_port: dport.to_be_bytes(), proto: IPPROTO_TCP, _pad: [0; 3] }
}

#[test]
fn an_evicted_half_of_a_live_flow_is_restored_from_the_other() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_with((SNAT_PORT, SNAT_PORT), TEST_SIZES);
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes();
    let ack = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).bytes();
    let synack = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_SYN | TCP_ACK)).bytes();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    let forward_key = flow_key(CLIENT, NODE, 40000, 30080);
    let reply_key = flow_key(POD_B, NODE, 8080, SNAT_PORT);
    let forward = lb.maps.v4.conntrack.get(&forward_key, 0).expect("forward half");
    let reply = lb.maps.v4.conntrack.get(&reply_key, 0).expect("reply half");
    assert_eq!((forward.direction, reply.direction), (direction::FORWARD, direction::REPLY));
    assert_ne!(forward.flags & flow_flags::SNAT, 0);

    // The reply half goes (as the LRU might take it): the next forward
    // packet puts it back, so the reply still finds the client.
    lb.maps.v4.conntrack.remove(&reply_key).unwrap();
    assert_eq!(up.xdp(&lb, &ack).0, XDP_TX);
    assert_eq!(lb.counter(counter::CT_HALF_RESTORED), 1);
    let restored = lb.maps.v4.conntrack.get(&reply_key, 0).expect("reply half restored");
    assert_eq!(
        (restored.nat_addr, restored.nat_port, restored.peer_addr, restored.peer_port, restored.backend_id, restored.service_id),
        (reply.nat_addr, reply.nat_port, reply.peer_addr, reply.peer_port, reply.backend_id, reply.service_id)
    );
    let (rc, out) = up.xdp(&lb, &synack);
    assert_eq!(rc, XDP_TX);
    assert_eq!(&out[26..30], &NODE.octets(), "from the NodePort");
    assert_eq!(&out[30..34], &CLIENT.octets(), "to the client");

    // The forward half goes: the next reply puts it back, and the client's
    // next packet is the same flow (same backend and port), not a new one.
    lb.maps.v4.conntrack.remove(&forward_key).unwrap();
    assert_eq!(up.xdp(&lb, &synack).0, XDP_TX);
    assert_eq!(lb.counter(counter::CT_HALF_RESTORED), 2);
    let (rc, out) = up.xdp(&lb, &ack);
    assert_eq!(rc, XDP_TX);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), SNAT_PORT);
    assert_eq!(lb.counter(counter::SNAT_NEW), 1, "no second flow was made");
}

/// A confirmed SNAT flow (its backend answered twice: both halves saved in
/// the confirmed table and flagged) no longer looks its other half up on
/// every packet. A reply half the LRU took is put back by the reply itself,
/// from the confirmed table, before the reply could be passed to the
/// stack (which would answer it with a reset); a forward half by the
/// client's next packet, which stays in the same flow.
#[test]
fn a_confirmed_snat_flows_evicted_half_is_restored_by_its_own_next_packet() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_with((SNAT_PORT, SNAT_PORT), TEST_SIZES);
    let started = std::time::Instant::now();
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes();
    let ack = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).bytes();
    let synack = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_SYN | TCP_ACK)).bytes();
    let reply = from_node_b(Frame::tcp(POD_B, 8080, NODE, SNAT_PORT, TCP_ACK)).bytes();
    assert_eq!(up.xdp(&lb, &syn).0, XDP_TX);
    assert_eq!(up.xdp(&lb, &synack).0, XDP_TX);
    assert_eq!(up.xdp(&lb, &reply).0, XDP_TX);
    assert_eq!(lb.counter(counter::CT_CONFIRMED), 1, "two answers confirm the flow");
    let forward_key = flow_key(CLIENT, NODE, 40000, 30080);
    let reply_key = flow_key(POD_B, NODE, 8080, SNAT_PORT);
    let forward = lb.maps.v4.conntrack.get(&forward_key, 0).expect("forward half");
    let back = lb.maps.v4.conntrack.get(&reply_key, 0).expect("reply half");
    assert_eq!((forward.flags & flow_flags::CONFIRMED, back.flags & flow_flags::CONFIRMED), (flow_flags::CONFIRMED, flow_flags::CONFIRMED), "both halves flagged");

    // The reply half goes: the client's packets no longer put it back
    // (within the second before their time is refreshed)...
    lb.maps.v4.conntrack.remove(&reply_key).unwrap();
    for _ in 0..5 {
        assert_eq!(up.xdp(&lb, &ack).0, XDP_TX);
    }
    if started.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(lb.counter(counter::CT_HALF_RESTORED), 0, "no per-packet look at the other half");
        assert!(lb.maps.v4.conntrack.get(&reply_key, 0).is_err(), "the reply half is still gone");
    }
    // ... the reply itself does, and reaches the client from the NodePort.
    let (rc, out) = up.xdp(&lb, &reply);
    assert_eq!(rc, XDP_TX);
    assert_eq!((&out[26..30], &out[30..34]), (&NODE.octets()[..], &CLIENT.octets()[..]), "from the NodePort to the client");
    assert_eq!(lb.counter(counter::CT_CONFIRMED_RESTORED) + lb.counter(counter::CT_HALF_RESTORED), 1, "put back once");

    // The forward half goes: the client's next packet puts it back, in the
    // same flow (same SNAT port), not a new one.
    lb.maps.v4.conntrack.remove(&forward_key).unwrap();
    let (rc, out) = up.xdp(&lb, &ack);
    assert_eq!(rc, XDP_TX);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), SNAT_PORT);
    assert_eq!(lb.counter(counter::SNAT_NEW), 1, "no second flow was made");
    assert_eq!(lb.counter(counter::CT_CONFIRMED_RESTORED) + lb.counter(counter::CT_HALF_RESTORED), 2);
}

/// A flood of new flows at ten times the conntrack table's size, with a
/// live SNAT flow exchanging a packet each way between every 32 new flows:
/// the live flow never loses a packet (every one is rewritten and sent),
/// because each of its packets marks both halves used and restores one
/// the LRU took anyway.
#[test]
fn a_flood_of_ten_times_the_table_never_splits_a_live_flow() {
    let up = Uplink::new();
    up.enter();
    let sizes = lb_agent::loader::MapSizes { conntrack: 1024, ..TEST_SIZES };
    let lb = lb_with((SNAT_PORT, SNAT_PORT + 1000), sizes);
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes();
    let (rc, out) = up.xdp(&lb, &syn);
    assert_eq!(rc, XDP_TX);
    let port = u16::from_be_bytes([out[34], out[35]]);
    let ack = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).bytes();
    let reply = from_node_b(Frame::tcp(POD_B, 8080, NODE, port, TCP_ACK)).bytes();
    let (mut lost, mut exchanges) = (0, 0);
    let flood = 10 * 1024;
    for i in 0..flood {
        // New flows to the local-backend NodePort from ever new clients.
        let client = Ipv4Addr::from(0x0a_40_00_00u32 + i as u32);
        let f = Frame::tcp(client, 1024 + (i % 60000) as u16, NODE, 30081, TCP_SYN).bytes();
        assert_eq!(up.xdp(&lb, &f).0, XDP_PASS);
        if i % 32 == 0 {
            exchanges += 1;
            let (rc, out) = up.xdp(&lb, &ack);
            if rc != XDP_TX || u16::from_be_bytes([out[34], out[35]]) != port {
                lost += 1;
            }
            let (rc, out) = up.xdp(&lb, &reply);
            if rc != XDP_TX || out[30..34] != CLIENT.octets() {
                lost += 1;
            }
        }
    }
    println!(
        "flood: {flood} new flows into a 1,024-entry table; live flow {exchanges} exchanges, {lost} packets lost, {} halves restored",
        lb.counter(counter::CT_HALF_RESTORED)
    );
    assert_eq!(lost, 0, "the live SNAT flow lost packets under the flood");
    assert_eq!(lb.counter(counter::SNAT_NEW), 1, "the live flow was never re-made");
}
