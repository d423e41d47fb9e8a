//! DSR over IPv6 (issue #15), through BPF_PROG_TEST_RUN on the real
//! programs, the same generic path as IPv4's (`dsr.rs`): the balancing
//! node's XDP rewrites the destination and inserts the destination options
//! header naming the service (`lb_common::dsr`, 24 bytes), or answers
//! ICMPv6 "packet too big" when the packet no longer fits; the backend
//! node's XDP records the reply state and takes the header off; its tc
//! egress rewrites the pod's replies to the service address (and lowers a
//! SYN-ACK's MSS by 24). The DSR part runs in `xdp_dsr_v6`, tail-called by
//! `xdp_lb_v6`. The byte-exact cases live in `tests/fixtures/dsr_v6.json`
//! (`XDPLB_BLESS=1` rewrites it from `cases()`). Needs root.
use std::net::Ipv6Addr;

use lb_common::{algorithm, config_flags, counter, direction, dsr, flow_flags, Config, FlowKeyV6, NatConfig, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::csum::l4_checksum;
use xdplb_tests::{
    fixture::{self, Case},
    lb::Lb,
    packet::{TCP_ACK, TCP_SYN},
    packet6::{icmpv6_error, verify_checksums, Frame6},
    services::{program_v6, remote_v6, Svc6},
    uplink::{forwarded, from_node_b, Uplink, CLIENT6, LB_IP6, NODE6, NODE_B_MAC, POD_B6, POD_LOCAL6, SNAT_PORT},
};

const FILE: &str = "dsr_v6.json";
const DSR: u32 = config_flags::DSR_TCP | config_flags::DSR_UDP;
const HYBRID: u32 = config_flags::DSR_TCP;
const XDP_TX: u32 = 3;

fn services() -> Vec<Svc6> {
    let svc = |id, proto, frontends, backends| Svc6 { id, proto, algorithm: algorithm::RANDOM, frontends, backends };
    vec![
        svc(1, IPPROTO_TCP, vec![(NODE6, 30080), (LB_IP6, 80)], vec![(11, POD_B6, 8080)]),
        svc(2, IPPROTO_UDP, vec![(NODE6, 30053)], vec![(12, POD_B6, 5353)]),
    ]
}

/// The IPv6 dataplane with `services()` (backends on node B), SNAT
/// configured and the node's mode `flags`.
fn lb_with(flags: u32) -> Lb {
    let mut lb = Lb::load();
    program_v6(&mut lb.ebpf, &services());
    remote_v6(&mut lb.ebpf, &[11, 12]);
    lb.maps.set_nat_config(&NatConfig { addr: NODE6.octets(), port_min: SNAT_PORT, port_max: SNAT_PORT }).unwrap();
    lb.maps.set_config(&Config { flags, ..Default::default() }).unwrap();
    lb
}

/// `frame`'s bytes with the DSR destination options header naming `svc`
/// right behind the IPv6 header, built by hand from the wire format.
fn with_ext(frame: &[u8], svc: (Ipv6Addr, u16)) -> Vec<u8> {
    let mut b = frame.to_vec();
    let mut ext = vec![b[20], 2, dsr::OPT6_TYPE, dsr::OPT6_LEN];
    ext.extend_from_slice(&svc.0.octets());
    ext.extend_from_slice(&svc.1.to_be_bytes());
    ext.extend_from_slice(&[0, 0]);
    assert_eq!(ext.len(), dsr::EXT6_LEN);
    b.splice(54..54, ext);
    b[20] = dsr::IPPROTO_DSTOPTS;
    let plen = u16::from_be_bytes([b[18], b[19]]) + dsr::EXT6_LEN as u16;
    b[18..20].copy_from_slice(&plen.to_be_bytes());
    b
}

/// `f`'s bytes with a TCP MSS option (the first and only option).
fn with_mss(f: &Frame6, mss: u16) -> Vec<u8> {
    let mut b = f.bytes();
    let l4 = 14 + 40;
    b.splice(l4 + 20..l4 + 20, [2, 4, (mss >> 8) as u8, mss as u8]);
    b[l4 + 12] = 0x60;
    let plen = (b.len() - l4) as u16;
    b[18..20].copy_from_slice(&plen.to_be_bytes());
    b[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = l4_checksum(&f.src.octets(), &f.dst.octets(), 6, &b[l4..]);
    b[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    b
}

/// The ICMPv6 "packet too big" (`mtu`) the balancing node sends back for
/// `f`: from the address it dialed, quoting its IPv6 header and 8 L4 bytes.
fn too_big_for(f: &Frame6, mtu: u32) -> Vec<u8> {
    let mut like = f.clone();
    (like.src_mac, like.dst_mac) = (f.dst_mac, f.src_mac);
    let mut b = icmpv6_error(&like, f.dst, f.src, (2, 0, mtu.to_be_bytes()), f, Some(48));
    // Traffic class "internetwork control", as IPv4's answer's precedence.
    b[14] = 0x6c;
    b
}

fn cases() -> Vec<Case> {
    let b = |f: &Frame6| f.bytes();
    let syn = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_SYN);
    let ack = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_ACK).payload(b"GET / HTTP/1.1\r\n\r\n");
    let lb_syn = Frame6::tcp(CLIENT6, 40001, LB_IP6, 80, TCP_SYN);
    let udp = Frame6::udp(CLIENT6, 5000, NODE6, 30053).payload(b"query");
    // A full-size (1,500-byte) segment: 24 bytes more do not fit the uplink.
    let big = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_ACK).payload(&[0x5a; 1440]);
    let fits = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_ACK).payload(&[0x5a; 1416]);
    let encap = |f: &Frame6, svc| {
        let port = if f.proto() == 6 { 8080 } else { 5353 };
        with_ext(&b(&forwarded(f.clone().with_dst(POD_B6, port), NODE_B_MAC)), svc)
    };
    // The backend's node (this one, for a flow balanced by node B to LB_IP6).
    let in_syn = from_node_b(Frame6::tcp(CLIENT6, 40010, POD_LOCAL6, 8080, TCP_SYN));
    let in_ack = from_node_b(Frame6::tcp(CLIENT6, 40010, POD_LOCAL6, 8080, TCP_ACK).payload(b"hello"));
    let synack = Frame6::tcp(POD_LOCAL6, 8080, CLIENT6, 40010, TCP_SYN | TCP_ACK);
    let synack_out = synack.clone().with_src(LB_IP6, 80);
    let data = Frame6::tcp(POD_LOCAL6, 8080, CLIENT6, 40010, TCP_ACK).payload(b"world");
    vec![
        Case::new(
            "xdp_v6_dsr_nodeport_syn_encap",
            "SYN to an IPv6 NodePort whose backend is on node B: destination rewritten to the pod, the client address kept, the NodePort carried in a destination options header (next header 60, payload length + 24); XDP sends it to node B (hop limit - 1, MACs from the FIB)",
            "xdp_lb",
            &b(&syn),
            "XDP_TX",
            Some(&encap(&syn, (NODE6, 30080))),
        ),
        Case::new("xdp_v6_dsr_established_encap", "the client's next packet: the same backend and header, payload untouched", "xdp_lb", &b(&ack), "XDP_TX", Some(&encap(&ack, (NODE6, 30080)))),
        Case::new("xdp_v6_dsr_loadbalancer_ip_encap", "an IPv6 LoadBalancer IP: the header carries the IP and port the client dialed", "xdp_lb", &b(&lb_syn), "XDP_TX", Some(&encap(&lb_syn, (LB_IP6, 80)))),
        Case::new("xdp_v6_dsr_udp_encap", "UDP in dsr mode: the same header, UDP checksum unchanged and valid (the header is not in the pseudo header)", "xdp_lb", &b(&udp), "XDP_TX", Some(&encap(&udp, (NODE6, 30053)))),
        Case::new(
            "xdp_v6_dsr_full_size_gets_packet_too_big",
            "a 1,500-byte packet no longer fits the 1,500-byte uplink with the header: answered (XDP_TX) with ICMPv6 packet too big, MTU 1476, from the NodePort address, quoting the packet's IPv6 header and first 8 TCP bytes",
            "xdp_lb",
            &b(&big),
            "XDP_TX",
            Some(&too_big_for(&big, 1500 - dsr::EXT6_LEN as u32)),
        ),
        Case::new("xdp_v6_dsr_largest_that_fits", "1,476 bytes + the header = 1,500: sent", "xdp_lb", &b(&fits), "XDP_TX", Some(&encap(&fits, (NODE6, 30080)))),
        Case::new(
            "xdp_v6_dsr_decap_syn_on_backend_node",
            "node B balanced a SYN to [LB_IP6]:80 to a pod here: the reply state is recorded, the header taken off (next header TCP, payload length - 24), the packet passed to the stack for the pod, client address intact",
            "xdp_lb",
            &with_ext(&b(&in_syn), (LB_IP6, 80)),
            "XDP_PASS",
            Some(&b(&in_syn)),
        ),
        Case::new(
            "tc_egress_v6_dsr_synack_rewrite_and_mss_clamp",
            "the pod's SYN-ACK leaves for the client from [LB_IP6]:80 (no SNAT, no tunnel back), its MSS 1440 lowered to 1416 by the header's size",
            "tc_egress",
            &with_mss(&synack, 1440),
            "TC_ACT_OK",
            Some(&with_mss(&synack_out, 1440 - dsr::EXT6_LEN as u16)),
        ),
        Case::new("xdp_v6_dsr_decap_data_on_backend_node", "the flow's next packet: header off, passed on", "xdp_lb", &with_ext(&b(&in_ack), (LB_IP6, 80)), "XDP_PASS", Some(&b(&in_ack))),
        Case::new("tc_egress_v6_dsr_reply_rewrite", "the pod's data reply: source rewritten to [LB_IP6]:80, payload untouched", "tc_egress", &b(&data), "TC_ACT_OK", Some(&b(&data.clone().with_src(LB_IP6, 80)))),
    ]
}

fn key(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, proto: u8) -> FlowKeyV6 {
    FlowKeyV6 { src_addr: src.octets(), dst_addr: dst.octets(), src_port: sport.to_be_bytes(), dst_port: dport.to_be_bytes(), proto, _pad: [0; 3] }
}

#[test]
fn fixture_file_is_current() {
    fixture::check_current(FILE, &cases());
}

#[test]
fn dsr_v6_fixtures() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with(DSR);
    up.run_fixtures(&lb, FILE, "IPv6 DSR");
    let c = |i| lb.counter(i);
    assert_eq!(c(counter::DSR_FORWARD), 5, "SYN, data, LB IP, UDP, the largest that fits");
    assert_eq!(c(counter::DSR_FRAG_NEEDED), 1, "packet too big");
    assert_eq!(c(counter::DSR_DECAP), 2);
    assert_eq!(c(counter::DSR_MSS_CLAMPED), 1);
    assert_eq!((c(counter::SNAT_NEW), c(counter::FORWARD_FALLBACK), c(counter::DROP_DSR_PROGRAM)), (0, 0, 0), "no SNAT, every DSR packet left through XDP, the DSR program ran");
    let ct = &lb.maps.v6.as_ref().expect("IPv6 maps").conntrack;
    let fwd = ct.get(&key(CLIENT6, NODE6, 40000, 30080, IPPROTO_TCP), 0).expect("forward half");
    assert_eq!((fwd.direction, fwd.flags & flow_flags::DSR, fwd.nat_addr, fwd.peer_addr), (direction::FORWARD, flow_flags::DSR, POD_B6.octets(), CLIENT6.octets()));
    assert!(ct.get(&key(POD_B6, CLIENT6, 8080, 40000, IPPROTO_TCP), 0).is_err(), "no reply half on the balancing node");
    let rep = ct.get(&key(POD_LOCAL6, CLIENT6, 8080, 40010, IPPROTO_TCP), 0).expect("reply half on the backend node");
    assert_eq!(
        (rep.direction, rep.flags & flow_flags::DSR, rep.nat_addr, u16::from_be_bytes(rep.nat_port), rep.peer_addr, u16::from_be_bytes(rep.peer_port)),
        (direction::REPLY, flow_flags::DSR, LB_IP6.octets(), 80, CLIENT6.octets(), 40010)
    );
}

/// Hybrid: TCP takes DSR, UDP SNAT; a node in SNAT mode still takes a
/// header off (a Service may choose DSR on other nodes).
#[test]
fn hybrid_sends_tcp_with_dsr_and_snats_udp() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with(HYBRID);
    let (rc, out) = up.xdp(&lb, &Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_SYN).bytes());
    assert_eq!((rc, out[20], &out[56..58]), (XDP_TX, dsr::IPPROTO_DSTOPTS, &[dsr::OPT6_TYPE, dsr::OPT6_LEN][..]), "TCP: header added");
    assert_eq!(&out[22..38], &CLIENT6.octets(), "TCP: client address kept");
    let (rc, out) = up.xdp(&lb, &Frame6::udp(CLIENT6, 5000, NODE6, 30053).payload(b"q").bytes());
    assert_eq!((rc, out[20]), (XDP_TX, IPPROTO_UDP), "UDP: no header");
    assert_eq!((&out[22..38], u16::from_be_bytes([out[54], out[55]])), (&NODE6.octets()[..], SNAT_PORT), "UDP: SNATed");
    verify_checksums(&out).unwrap();
    assert_eq!((lb.counter(counter::DSR_FORWARD), lb.counter(counter::SNAT_NEW)), (1, 1));
    let snat = lb_with(0);
    let (rc, out) = up.xdp(&snat, &Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_SYN).bytes());
    assert_eq!((rc, out[20], &out[22..38]), (XDP_TX, IPPROTO_TCP, &NODE6.octets()[..]), "snat mode: SNAT, no header");
    let in_syn = with_ext(&from_node_b(Frame6::tcp(CLIENT6, 40010, POD_LOCAL6, 8080, TCP_SYN)).bytes(), (LB_IP6, 80));
    let (rc, out) = up.xdp(&snat, &in_syn);
    assert_eq!((rc, out.len()), (2, in_syn.len() - dsr::EXT6_LEN), "XDP_PASS, header off");
    verify_checksums(&out).unwrap();
    assert_eq!(snat.counter(counter::DSR_DECAP), 1);
}

/// A DSR packet whose flow `xdp_lb_v6` made but which is gone when
/// `xdp_dsr_v6` looks (an insert that failed, or a flood evicting it between
/// the two programs) is dropped under an outcome of its own, not counted as a
/// conntrack insert failure (an event, which its own insert already counts).
#[test]
fn a_dsr_packet_whose_flow_is_gone_is_dropped_as_such() {
    let up = Uplink::new();
    up.enter();
    let lb = lb_with(DSR);
    let syn = Frame6::tcp(CLIENT6, 40000, NODE6, 30080, TCP_SYN).bytes();
    let (rc, _) = fixture::run_frame_on(&lb.ebpf, "xdp_dsr_v6", &syn, Some(up.ifindex)).expect("BPF_PROG_TEST_RUN");
    assert_eq!(rc, 1, "XDP_DROP: no flow to send it by");
    assert_eq!(lb.counter(counter::DROP_DSR_FLOW_MISSING), 1);
    assert_eq!((lb.counter(counter::CT_INSERT_FAILED), lb.counter(counter::DSR_FORWARD)), (0, 0));
    // Through the balancer the flow is made first, and the same SYN leaves.
    let (rc, _) = up.xdp(&lb, &syn);
    assert_eq!((rc, lb.counter(counter::DSR_FORWARD), lb.counter(counter::DROP_DSR_FLOW_MISSING)), (XDP_TX, 1, 1));
}
