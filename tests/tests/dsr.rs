//! DSR across nodes (issue #12), through BPF_PROG_TEST_RUN on the real
//! programs: the balancing node's XDP rewrites the destination and adds the
//! service option, or answers "fragmentation needed" when the option no
//! longer fits; the backend node's XDP records the reply state and takes
//! the option off; its tc egress rewrites the pod's replies to the service
//! address (and lowers a SYN-ACK's MSS by the option). As in `snat.rs`, the
//! test thread sits in a namespace with an uplink, a route to node B's pod
//! CIDR and permanent neighbours, so FIB lookups are deterministic. The
//! byte-exact cases live in `tests/fixtures/dsr.json` (`XDPLB_BLESS=1`
//! rewrites it from `cases()`). Needs root.
use std::net::Ipv4Addr;

use lb_common::{
    config_flags, counter, direction, dsr, flow_flags, service_flags, Config, FlowKeyV4, NatConfig, IPPROTO_TCP,
    IPPROTO_UDP,
};
use lb_ebpf::csum::{checksum, l4_checksum_v4};
use xdplb_tests::{
    fixture::Case,
    lb::{Lb, TEST_SIZES},
    packet::{icmp_error, verify_checksums, Frame, NODE_MAC, TCP_ACK, TCP_SYN},
    services::{contents, Svc},
    uplink::{ends, forwarded, Uplink, CLIENT, LB_IP, NODE, NODE_B_MAC, POD_B, POD_LOCAL, ROUTER, SNAT_PORT},
};

const FILE: &str = "dsr.json";

fn services() -> Vec<Svc> {
    vec![
        Svc::new(1, IPPROTO_TCP, lb_common::algorithm::RANDOM).frontend(NODE, 30080).frontend(LB_IP, 80).remote_backend(1, POD_B, 8080),
        Svc::new(2, IPPROTO_UDP, lb_common::algorithm::RANDOM).frontend(NODE, 30053).remote_backend(2, POD_B, 5353),
    ]
}

/// The programs with the services above, SNAT configured and `mode`'s flags.
fn lb_with(flags: u32) -> Lb {
    let mut lb = Lb::load_sized(TEST_SIZES);
    lb.program(&contents(&services()));
    lb.maps.set_nat_config(&NatConfig { addr: NODE.octets(), port_min: SNAT_PORT, port_max: SNAT_PORT }).unwrap();
    lb.maps.set_config(&Config { flags, ..Default::default() }).unwrap();
    lb
}

const DSR: u32 = config_flags::DSR_TCP | config_flags::DSR_UDP;
const HYBRID: u32 = config_flags::DSR_TCP;

/// `f` carrying the DSR option naming `svc`.
fn with_option(mut f: Frame, svc: (Ipv4Addr, u16)) -> Frame {
    let mut opt = vec![dsr::OPT_TYPE, dsr::OPT_LEN as u8];
    opt.extend_from_slice(&svc.1.to_be_bytes());
    opt.extend_from_slice(&svc.0.octets());
    f.ip_options = opt;
    f
}

/// As node A sends it to this node (node B's MACs swapped in).
fn from_node_a(mut f: Frame) -> Frame {
    (f.src_mac, f.dst_mac) = (NODE_B_MAC, NODE_MAC);
    f
}

/// `f`'s bytes with a TCP MSS option (the first and only option).
fn with_mss(f: &Frame, mss: u16) -> Vec<u8> {
    let mut b = f.bytes();
    let l4 = 14 + 20;
    b.splice(l4 + 20..l4 + 20, [2, 4, (mss >> 8) as u8, mss as u8]);
    b[l4 + 12] = 0x60;
    let tot = (b.len() - 14) as u16;
    b[16..18].copy_from_slice(&tot.to_be_bytes());
    b[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&b[14..34]);
    b[24..26].copy_from_slice(&c.to_be_bytes());
    b[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = l4_checksum_v4(f.src.octets(), f.dst.octets(), 6, &b[l4..]);
    b[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    b
}

/// The ICMP "fragmentation needed" (`mtu`) a node sends back for `f`,
/// quoting its IPv4 header and 8 L4 bytes, built by hand.
fn frag_needed_for(f: &Frame, mtu: u16) -> Vec<u8> {
    let orig = f.bytes();
    let mut out = orig[6..12].to_vec();
    out.extend_from_slice(&orig[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0xc0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&f.dst.octets());
    ip.extend_from_slice(&f.src.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&orig[14..14 + 28]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out
}

fn cases() -> Vec<Case> {
    let b = |f: &Frame| f.bytes();
    // The balancing node (this one, for services 1 and 2).
    let syn = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN);
    let ack = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
    let lb_syn = Frame::tcp(CLIENT, 40001, LB_IP, 80, TCP_SYN);
    let udp = Frame::udp(CLIENT, 5000, NODE, 30053).payload(b"query");
    // A full-size (1,500-byte) DF segment: 8 bytes more do not fit the uplink.
    let big = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).payload(&[0x5a; 1460]);
    let fits = Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_ACK).payload(&[0x5a; 1452]);
    let encap = |f: &Frame, svc| b(&forwarded(with_option(ends(f.clone(), (f.src, f.sport), (POD_B, if f.proto() == 6 { 8080 } else { 5353 })), svc), NODE_B_MAC));
    // A router on the client's side could not carry the backend's reply
    // (sent from node B as NodePort -> client): the error reaches this
    // node (the NodePort's), which sends it to the pod quoting what it sent.
    let mtu = [0, 0, 0x05, 0x78];
    let reply_seen = Frame::tcp(NODE, 30080, CLIENT, 40000, TCP_ACK).payload(&[7; 64]);
    let reply_sent = Frame::tcp(POD_B, 8080, CLIENT, 40000, TCP_ACK).payload(&[7; 64]);
    let from_router = Frame::tcp(ROUTER, 0, NODE, 0, 0);
    let to_pod = Frame::tcp(ROUTER, 0, POD_B, 0, 0);
    // The backend's node (this one, for a flow balanced by node B to LB_IP).
    let in_syn = from_node_a(with_option(Frame::tcp(CLIENT, 40010, POD_LOCAL, 8080, TCP_SYN), (LB_IP, 80)));
    let in_ack = from_node_a(with_option(Frame::tcp(CLIENT, 40010, POD_LOCAL, 8080, TCP_ACK).payload(b"hello"), (LB_IP, 80)));
    let bare = |mut f: Frame| {
        f.ip_options.clear();
        f
    };
    let synack = Frame::tcp(POD_LOCAL, 8080, CLIENT, 40010, TCP_SYN | TCP_ACK);
    let synack_out = ends(synack.clone(), (LB_IP, 80), (CLIENT, 40010));
    let data = Frame::tcp(POD_LOCAL, 8080, CLIENT, 40010, TCP_ACK).payload(b"world");
    vec![
        Case::new(
            "xdp_v4_dsr_nodeport_syn_encap",
            "SYN to a NodePort whose backend is on node B: destination rewritten to the pod, the client address kept, the NodePort carried in the DSR option (IHL 7); XDP sends it to node B (TTL-1, MACs from the FIB)",
            "xdp_lb",
            &b(&syn),
            "XDP_TX",
            Some(&encap(&syn, (NODE, 30080))),
        ),
        Case::new(
            "xdp_v4_dsr_established_encap",
            "the client's next packet: the same backend and option, payload untouched",
            "xdp_lb",
            &b(&ack),
            "XDP_TX",
            Some(&encap(&ack, (NODE, 30080))),
        ),
        Case::new(
            "xdp_v4_dsr_loadbalancer_ip_encap",
            "a LoadBalancer IP: the option carries the IP and port the client dialed",
            "xdp_lb",
            &b(&lb_syn),
            "XDP_TX",
            Some(&encap(&lb_syn, (LB_IP, 80))),
        ),
        Case::new(
            "xdp_v4_dsr_udp_encap",
            "UDP in dsr mode: the same encapsulation, UDP checksum valid",
            "xdp_lb",
            &b(&udp),
            "XDP_TX",
            Some(&encap(&udp, (NODE, 30053))),
        ),
        Case::new(
            "xdp_v4_dsr_full_size_gets_frag_needed",
            "a 1,500-byte DF segment no longer fits the 1,500-byte uplink with the option: answered (XDP_TX) with ICMP fragmentation needed, MTU 1492, from the NodePort address, quoting the segment's header",
            "xdp_lb",
            &b(&big),
            "XDP_TX",
            Some(&frag_needed_for(&big, 1500 - dsr::OPT_LEN as u16)),
        ),
        Case::new(
            "xdp_v4_dsr_largest_that_fits",
            "1,492 bytes + the option = 1,500: encapsulated and sent",
            "xdp_lb",
            &b(&fits),
            "XDP_TX",
            Some(&encap(&fits, (NODE, 30080))),
        ),
        Case::new(
            "xdp_v4_dsr_icmp_frag_needed_about_reply_to_backend",
            "fragmentation needed from the client's side about the reply node B sent as NodePort -> client: this node sends it on to the pod quoting pod -> client (outer, ICMP and quoted checksums valid); passed to the kernel, which routes it to node B",
            "xdp_lb",
            &icmp_error(&from_router, ROUTER, NODE, 3, 4, mtu, &reply_seen),
            "XDP_PASS",
            Some(&icmp_error(&to_pod, ROUTER, POD_B, 3, 4, mtu, &reply_sent)),
        ),
        Case::new(
            "xdp_v4_dsr_decap_syn_on_backend_node",
            "node B balanced a SYN to LB_IP:80 to a pod here: the reply state is recorded, the option taken off (IHL 5, checksum valid), the packet passed to the stack for the pod, client address intact",
            "xdp_lb",
            &b(&in_syn),
            "XDP_PASS",
            Some(&b(&bare(in_syn.clone()))),
        ),
        Case::new(
            "tc_egress_v4_dsr_synack_rewrite_and_mss_clamp",
            "the pod's SYN-ACK leaves for the client from LB_IP:80 (no SNAT, no tunnel back), its MSS 1460 lowered to 1452 by the option's size",
            "tc_egress",
            &with_mss(&synack, 1460),
            "TC_ACT_OK",
            Some(&with_mss(&synack_out, 1460 - dsr::OPT_LEN as u16)),
        ),
        Case::new(
            "xdp_v4_dsr_decap_data_on_backend_node",
            "the flow's next packet: option off, passed on",
            "xdp_lb",
            &b(&in_ack),
            "XDP_PASS",
            Some(&b(&bare(in_ack.clone()))),
        ),
        Case::new(
            "tc_egress_v4_dsr_reply_rewrite",
            "the pod's data reply: source rewritten to LB_IP:80, payload untouched",
            "tc_egress",
            &b(&data),
            "TC_ACT_OK",
            Some(&b(&ends(data.clone(), (LB_IP, 80), (CLIENT, 40010)))),
        ),
    ]
}

const XDP_TX: u32 = 3;

fn key(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> FlowKeyV4 {
    FlowKeyV4 { src_addr: src.octets(), dst_addr: dst.octets(), src_port: sport.to_be_bytes(), dst_port: dport.to_be_bytes(), proto, _pad: [0; 3] }
}

#[test]
fn fixture_file_is_current() {
    xdplb_tests::fixture::check_current(FILE, &cases());
}

#[test]
fn dsr_fixtures() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with(DSR);
    up.run_fixtures(&lb, FILE, "DSR");
    let c = |i| lb.counter(i);
    assert_eq!(c(counter::DSR_FORWARD), 5, "SYN, data, LB IP, UDP, the largest that fits");
    assert_eq!(c(counter::DSR_FRAG_NEEDED), 1);
    assert_eq!(c(counter::DSR_DECAP), 2);
    assert_eq!(c(counter::DSR_MSS_CLAMPED), 1);
    assert_eq!(c(counter::ICMP_NAT), 1);
    assert_eq!((c(counter::SNAT_NEW), c(counter::FORWARD_FALLBACK)), (0, 0), "no SNAT, every DSR packet left through XDP");
    // The balancing node keeps the forward half only; the backend node the reply half only.
    let fwd = lb.maps.v4.conntrack.get(&key(CLIENT, NODE, 40000, 30080, IPPROTO_TCP), 0).expect("forward half");
    assert_eq!((fwd.direction, fwd.flags & flow_flags::DSR, fwd.nat_addr, fwd.peer_addr), (direction::FORWARD, flow_flags::DSR, POD_B.octets(), CLIENT.octets()));
    assert!(lb.maps.v4.conntrack.get(&key(POD_B, CLIENT, 8080, 40000, IPPROTO_TCP), 0).is_err(), "no reply half on the balancing node");
    let rep = lb.maps.v4.conntrack.get(&key(POD_LOCAL, CLIENT, 8080, 40010, IPPROTO_TCP), 0).expect("reply half on the backend node");
    assert_eq!(
        (rep.direction, rep.flags & flow_flags::DSR, rep.nat_addr, u16::from_be_bytes(rep.nat_port), rep.peer_addr, u16::from_be_bytes(rep.peer_port)),
        (direction::REPLY, flow_flags::DSR, LB_IP.octets(), 80, CLIENT.octets(), 40010)
    );
    assert!(lb.maps.v4.conntrack.get(&key(CLIENT, POD_LOCAL, 40010, 8080, IPPROTO_TCP), 0).is_err(), "no forward half restored on the backend node");
}

/// A backend node whose maps do not know the backend yet (its agent is a
/// moment behind node A's): recording the reply half marks the backend's
/// port (`lb-ebpf/src/replies.rs`), so tc egress still finds and rewrites
/// the pod's replies.
#[test]
fn a_backend_node_that_does_not_know_the_backend_still_rewrites_its_dsr_replies() {
    let up = Uplink::new();
    up.enter();
    let lb = Lb::load_sized(TEST_SIZES);
    let port: u16 = 7070;
    let ports = lb.maps.reply_ports.as_ref().expect("reply_ports pinned");
    assert!(!ports.is_marked(port.to_be_bytes()), "no backend programmed here");
    let in_ack = from_node_a(with_option(Frame::tcp(CLIENT, 40020, POD_LOCAL, port, TCP_ACK).payload(b"hello"), (LB_IP, 80)));
    let mut bare = in_ack.clone();
    bare.ip_options.clear();
    assert_eq!(up.xdp(&lb, &in_ack.bytes()), (2, bare.bytes()), "XDP_PASS, the option taken off");
    assert!(ports.is_marked(port.to_be_bytes()), "marked with the reply half");
    let data = Frame::tcp(POD_LOCAL, port, CLIENT, 40020, TCP_ACK).payload(b"world");
    let (rc, out) = xdplb_tests::fixture::run_frame(&lb.ebpf, "tc_egress", &data.bytes()).unwrap();
    assert_eq!((rc, out), (0, ends(data, (LB_IP, 80), (CLIENT, 40020)).bytes()), "the reply leaves from the service");
    assert_eq!((lb.counter(counter::DSR_DECAP), lb.counter(counter::NAT_REPLY)), (1, 1));
}

/// Hybrid: TCP takes DSR, UDP SNAT. A per-service mode overrides the node's.
#[test]
fn hybrid_sends_tcp_with_dsr_and_snats_udp_and_a_service_may_choose_its_own() {
    let up = Uplink::new();
    up.enter();
    let mut lb = lb_with(HYBRID);
    let (rc, out) = up.xdp(&lb, &Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes());
    assert_eq!((rc, out[14], &out[34..36]), (XDP_TX, 0x47, &[dsr::OPT_TYPE, 8][..]), "TCP: option added");
    assert_eq!(&out[26..30], &CLIENT.octets(), "TCP: client address kept");
    let (rc, out) = up.xdp(&lb, &Frame::udp(CLIENT, 5000, NODE, 30053).payload(b"q").bytes());
    assert_eq!((rc, out[14]), (XDP_TX, 0x45), "UDP: no option");
    assert_eq!((&out[26..30], u16::from_be_bytes([out[34], out[35]])), (&NODE.octets()[..], SNAT_PORT), "UDP: SNATed");
    verify_checksums(&out).unwrap();
    // Service 2 (UDP) says dsr itself: a new UDP flow takes DSR.
    let mut svcs = services();
    svcs[1] = Svc::new(2, IPPROTO_UDP, lb_common::algorithm::RANDOM).frontend(NODE, 30053).remote_backend(2, POD_B, 5353);
    let mut want = contents(&svcs);
    for v in want.services.values_mut().filter(|v| v.id == 2) {
        v.flags |= service_flags::LB_MODE | service_flags::DSR_UDP | service_flags::DSR_TCP;
    }
    lb.program(&want);
    let (rc, out) = up.xdp(&lb, &Frame::udp(CLIENT, 5001, NODE, 30053).payload(b"q").bytes());
    assert_eq!((rc, out[14], &out[26..30]), (XDP_TX, 0x47, &CLIENT.octets()[..]), "UDP of a dsr service: DSR");
    assert_eq!(lb.counter(counter::DSR_FORWARD), 2);
    assert_eq!(lb.counter(counter::SNAT_NEW), 1);
}

/// A node in SNAT mode sends no option, and takes one off all the same (a
/// Service may choose DSR on other nodes).
#[test]
fn snat_mode_sends_no_option_and_still_takes_one_off() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with(0);
    let (rc, out) = up.xdp(&lb, &Frame::tcp(CLIENT, 40000, NODE, 30080, TCP_SYN).bytes());
    assert_eq!((rc, out[14], &out[26..30]), (XDP_TX, 0x45, &NODE.octets()[..]), "SNAT, no option");
    let in_syn = from_node_a(with_option(Frame::tcp(CLIENT, 40010, POD_LOCAL, 8080, TCP_SYN), (LB_IP, 80)));
    let (rc, out) = up.xdp(&lb, &in_syn.bytes());
    assert_eq!((rc, out.len()), (2, in_syn.bytes().len() - 8), "XDP_PASS, option off");
    assert_eq!(lb.counter(counter::DSR_DECAP), 1);
}
