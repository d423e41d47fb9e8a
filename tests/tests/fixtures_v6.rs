//! IPv6 packet fixtures through BPF_PROG_TEST_RUN, byte-exact: the same
//! story as `fixtures.rs` over IPv6 (new flows, the established flow, the
//! reply at tc egress), plus what only IPv6 has: extension headers of each
//! kind and a chain too long to walk, fragments, neighbour discovery, UDP
//! without checksum. Expected frames are built independently with full
//! checksum computation (`packet6.rs`); the cases live in
//! `tests/fixtures/ipv6_services.json` (`XDPLB_BLESS=1` rewrites it).
//! The IPv6 maps are written directly (`services::program_v6`). Needs root.
use std::net::Ipv6Addr;

use lb_common::{algorithm, counter, IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::{
    fixture::{self, story6::*, Case},
    lb::Lb,
    packet::{CLIENT_MAC, NODE_MAC, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN},
    packet6::{icmpv6, icmpv6_error, Ext, Frame6},
    services::{flows_v6, program_v6, Svc6},
};

const FILE: &str = "ipv6_services.json";

/// A router on the client's path, one between the node and the backends.
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
const ROUTER_IN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xfe);
/// "Packet too big", MTU 1280 (ICMPv6 type 2).
const MTU: [u8; 4] = 1280u32.to_be_bytes();

/// One backend each, so selection is deterministic. Ids share the space
/// of IPv4's (a backend id indexes `backends_v6` for an IPv6 service).
fn services() -> Vec<Svc6> {
    vec![
        Svc6 { id: 1, proto: IPPROTO_TCP, algorithm: algorithm::ROUND_ROBIN, frontends: vec![(CLUSTER_IP, 80)], backends: vec![(101, B1, 8080)] },
        Svc6 { id: 3, proto: IPPROTO_UDP, algorithm: algorithm::MAGLEV, frontends: vec![(DNS_IP, 53)], backends: vec![(102, B2, 5353)] },
        Svc6 { id: 4, proto: IPPROTO_TCP, algorithm: algorithm::RANDOM, frontends: vec![(EMPTY_IP, 80)], backends: vec![] },
        Svc6 { id: 5, proto: IPPROTO_UDP, algorithm: algorithm::RANDOM, frontends: vec![(EMPTY_IP, 53)], backends: vec![] },
    ]
}

fn case(name: &str, desc: &str, prog: &str, input: &[u8], expect: &str, output: Option<&[u8]>) -> Case {
    Case::new(name, desc, prog, input, expect, output)
}

/// A new flow with extension headers `ext` from client port `sport`, and
/// its DNAT: the headers kept, the destination rewritten.
fn ext_case(name: &str, desc: &str, sport: u16, ext: &[Ext]) -> Case {
    let syn = ext.iter().fold(Frame6::tcp(CLIENT, sport, CLUSTER_IP, 80, TCP_SYN), |f, e| f.ext(*e));
    let want = syn.clone().with_dst(B1, 8080);
    case(name, desc, "xdp_lb", &syn.bytes(), "XDP_PASS", Some(&want.bytes()))
}

fn cases() -> Vec<Case> {
    let syn = Frame6::tcp(CLIENT, 40000, CLUSTER_IP, 80, TCP_SYN);
    let ack = Frame6::tcp(CLIENT, 40000, CLUSTER_IP, 80, TCP_ACK | TCP_PSH).payload(b"GET / HTTP/1.1\r\n\r\n");
    let synack = Frame6::tcp(B1, 8080, CLIENT, 40000, TCP_SYN | TCP_ACK);
    let dns = Frame6::udp(CLIENT, 5555, DNS_IP, 53).payload(b"\x12\x34query");
    let dns0 = {
        let mut f = Frame6::udp(CLIENT, 5556, DNS_IP, 53).payload(b"no checksum");
        f.l4 = xdplb_tests::packet::L4::Udp { zero_checksum: true };
        f
    };
    let frag = |offset, more| Frame6::udp(CLIENT, 5557, DNS_IP, 53).payload(b"a fragment").ext(Ext::Fragment { offset, more });
    let too_long = [Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::DestOpts, Ext::DestOpts]
        .iter()
        .fold(Frame6::tcp(CLIENT, 40020, CLUSTER_IP, 80, TCP_SYN), |f, e| f.ext(*e));
    // Neighbour solicitation for B1 and a router advertisement, to the service address.
    let ns = icmpv6(CLIENT, CLUSTER_IP, 135, 0, &[[0u8; 4].as_slice(), &CLUSTER_IP.octets()].concat());
    let ra = icmpv6(NODE, CLUSTER_IP, 134, 0, &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
    let pod_syn = Frame6::tcp(POD, 50000, CLUSTER_IP, 80, TCP_SYN);
    // A reply of the client's flow as the node sent it, and as B1 sent it.
    let reply_seen = Frame6::tcp(CLUSTER_IP, 80, CLIENT, 40000, TCP_ACK | TCP_PSH).payload(&[b'x'; 64]);
    let reply_sent = reply_seen.clone().with_src(B1, 8080);
    let pod_synack = Frame6::tcp(B1, 8080, POD, 50000, TCP_SYN | TCP_ACK);
    // The answers to refused flows, built independently.
    let mut rst = Frame6::tcp(EMPTY_IP, 80, CLIENT, 40000, TCP_RST | TCP_ACK);
    rst.l4 = xdplb_tests::packet::L4::Tcp { flags: TCP_RST | TCP_ACK, seq: 0, ack: 1001 };
    (rst.window, rst.src_mac, rst.dst_mac) = (0, NODE_MAC, CLIENT_MAC);
    let pod_dns = Frame6::udp(POD, 5000, EMPTY_IP, 53).payload(b"a query nobody answers");
    let mut back = pod_dns.clone();
    (back.src_mac, back.dst_mac) = (NODE_MAC, CLIENT_MAC);
    let unreach = icmpv6_error(&back, EMPTY_IP, POD, (1, 4, [0; 4]), &pod_dns, Some(48));
    let b = |f: &Frame6| f.bytes();
    vec![
        case("xdp_v6_syn_to_clusterip_dnat", "SYN to an IPv6 ClusterIP: destination rewritten to the backend, TCP checksum valid over the new pseudo header", "xdp_lb", &b(&syn), "XDP_PASS", Some(&b(&syn.clone().with_dst(B1, 8080)))),
        case("xdp_v6_established_same_backend", "data on the established IPv6 flow goes to the same backend", "xdp_lb", &b(&ack), "XDP_PASS", Some(&b(&ack.clone().with_dst(B1, 8080)))),
        case("tc_egress_v6_reply_reverse_nat", "the backend's SYN-ACK leaves with the IPv6 ClusterIP as source", "tc_egress", &b(&synack), "TC_ACT_OK", Some(&b(&synack.clone().with_src(CLUSTER_IP, 80)))),
        case("xdp_v6_udp_dnat", "UDP to an IPv6 service (Maglev): address and port rewritten, UDP checksum valid", "xdp_lb", &b(&dns), "XDP_PASS", Some(&b(&dns.clone().with_dst(B2, 5353)))),
        case("tc_ingress_v6_pod_to_clusterip", "east-west over IPv6: a pod's SYN to a ClusterIP at tc ingress (tc_ingress_v6, tail-called)", "tc_ingress", &b(&pod_syn), "TC_ACT_OK", Some(&b(&pod_syn.clone().with_dst(B1, 8080)))),
        case("tc_egress_v6_reply_to_pod", "east-west over IPv6: the reply to the pod is reverse-NATed", "tc_egress", &b(&pod_synack), "TC_ACT_OK", Some(&b(&pod_synack.clone().with_src(CLUSTER_IP, 80)))),
        ext_case("xdp_v6_hop_by_hop_dnat", "a hop-by-hop options header is walked and kept", 40010, &[Ext::HopByHop]),
        ext_case("xdp_v6_routing_dnat", "a routing header (no segments left) is walked and kept", 40011, &[Ext::Routing]),
        ext_case("xdp_v6_destination_options_dnat", "a destination options header is walked and kept", 40012, &[Ext::DestOpts]),
        ext_case("xdp_v6_atomic_fragment_dnat", "an atomic fragment (offset 0, last) is a whole packet: balanced", 40013, &[Ext::Fragment { offset: 0, more: false }]),
        ext_case("xdp_v6_four_extension_headers_dnat", "four extension headers, the most walked", 40014, &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::DestOpts]),
        case("xdp_v6_extension_chain_too_long_passes", "five extension headers: more than walked, passed untouched", "xdp_lb", &b(&too_long), "XDP_PASS", None),
        case("xdp_v6_non_first_fragment_passes", "a fragment with offset 16 has no ports: passed untouched", "xdp_lb", &b(&frag(2, false)), "XDP_PASS", None),
        case("xdp_v6_first_fragment_passes", "a first fragment (more follow) is passed too: its flow's other fragments cannot be balanced", "xdp_lb", &b(&frag(0, true)), "XDP_PASS", None),
        case("xdp_v6_neighbour_solicitation_untouched", "ICMPv6 neighbour solicitation, even to a service address, is never touched", "xdp_lb", &ns, "XDP_PASS", None),
        case("xdp_v6_router_advertisement_untouched", "ICMPv6 router advertisement is never touched", "xdp_lb", &ra, "XDP_PASS", None),
        case("tc_egress_v6_neighbour_solicitation_untouched", "neighbour discovery leaving at tc egress is never touched", "tc_egress", &ns, "TC_ACT_OK", None),
        case("xdp_v6_udp_zero_checksum_drops", "UDP over IPv6 with checksum 0 is invalid: dropped, no flow", "xdp_lb", &b(&dns0), "XDP_DROP", None),
        case("xdp_v6_non_service_untouched", "IPv6 traffic to a non-service address passes unchanged", "xdp_lb", &b(&Frame6::tcp(CLIENT, 40000, B1, 8080, TCP_SYN)), "XDP_PASS", None),
        case("tc_egress_v6_non_reply_untouched", "IPv6 traffic that is no reply of ours leaves unchanged", "tc_egress", &b(&Frame6::tcp(B2, 9999, CLIENT, 40000, TCP_ACK)), "TC_ACT_OK", None),
        // ICMPv6 errors about the flows above (client:40000 -> ClusterIP:80
        // -> B1:8080 over TCP; client:5555 -> DNS:53 -> B2:5353 over UDP).
        case("xdp_v6_icmp_packet_too_big_about_reply_to_backend", "packet too big from the client's path about a reply the node sent as ClusterIP -> client: sent on to the backend quoting B1:8080 -> client (outer address, quoted address and port, quoted TCP checksum, ICMPv6 checksum over the new pseudo header)", "xdp_lb",
            &icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen, None), "XDP_PASS", Some(&icmpv6_error(&syn, ROUTER, B1, (2, 0, MTU), &reply_sent, None))),
        case("xdp_v6_icmp_time_exceeded_about_forward_packet_to_client", "time exceeded from a router between the node and the backend about client -> B1:8080: sent on to the client quoting client -> ClusterIP:80", "xdp_lb",
            &icmpv6_error(&syn, ROUTER_IN, CLIENT, (3, 0, [0; 4]), &ack.clone().with_dst(B1, 8080), None), "XDP_PASS", Some(&icmpv6_error(&syn, ROUTER_IN, CLIENT, (3, 0, [0; 4]), &ack, None))),
        case("xdp_v6_icmp_packet_too_big_short_quote_translated", "packet too big quoting only the IPv6 header and 8 bytes of TCP (no TCP checksum in the quote): outer and quote translated", "xdp_lb",
            &icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen, Some(48)), "XDP_PASS", Some(&icmpv6_error(&syn, ROUTER, B1, (2, 0, MTU), &reply_sent, Some(48)))),
        case("tc_egress_v6_icmp_port_unreachable_from_backend", "the UDP backend's port unreachable (ICMPv6 type 1 code 4) about client -> B2:5353 leaves as from the service, quoting client -> DNS:53", "tc_egress",
            &icmpv6_error(&synack, B2, CLIENT, (1, 4, [0; 4]), &dns.clone().with_dst(B2, 5353), None), "TC_ACT_OK", Some(&icmpv6_error(&synack, DNS_IP, CLIENT, (1, 4, [0; 4]), &dns, None))),
        case("xdp_v6_icmp_about_unknown_flow_passes", "packet too big about a flow that is not ours passes unchanged", "xdp_lb",
            &icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &Frame6::tcp(CLUSTER_IP, 80, CLIENT, 49999, TCP_ACK), None), "XDP_PASS", None),
        // The same errors with IPv6 extension headers, outside or quoted.
        case("xdp_v6_icmp_packet_too_big_quoting_destination_options_translated", "packet too big quoting a reply that carried a destination options header: the quote's chain is walked, its address, port and TCP checksum translated past the header, which is kept", "xdp_lb",
            &icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen.clone().ext(Ext::DestOpts), None), "XDP_PASS", Some(&icmpv6_error(&syn, ROUTER, B1, (2, 0, MTU), &reply_sent.clone().ext(Ext::DestOpts), None))),
        case("xdp_v6_icmp_packet_too_big_behind_hop_by_hop_translated", "packet too big whose own IPv6 header is followed by a hop-by-hop options header: stepped over as the parser walked it, the error translated", "xdp_lb",
            &icmpv6_error(&syn.clone().ext(Ext::HopByHop), ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen, None), "XDP_PASS", Some(&icmpv6_error(&syn.clone().ext(Ext::HopByHop), ROUTER, B1, (2, 0, MTU), &reply_sent, None))),
        case("xdp_v6_icmp_time_exceeded_quoting_atomic_fragment_translated", "time exceeded about client -> B1:8080 sent as an atomic fragment (fragment header, offset 0, last): translated past the quoted fragment header", "xdp_lb",
            &icmpv6_error(&syn, ROUTER_IN, CLIENT, (3, 0, [0; 4]), &ack.clone().with_dst(B1, 8080).ext(Ext::Fragment { offset: 0, more: false }), None), "XDP_PASS",
            Some(&icmpv6_error(&syn, ROUTER_IN, CLIENT, (3, 0, [0; 4]), &ack.clone().ext(Ext::Fragment { offset: 0, more: false }), None))),
        case("tc_egress_v6_icmp_port_unreachable_quoting_extension_headers_translated", "the UDP backend's port unreachable behind a destination options header, quoting a datagram with hop-by-hop and routing headers: leaves as from the service, quoting client -> DNS:53", "tc_egress",
            &icmpv6_error(&synack.clone().ext(Ext::DestOpts), B2, CLIENT, (1, 4, [0; 4]), &dns.clone().with_dst(B2, 5353).ext(Ext::HopByHop).ext(Ext::Routing), None), "TC_ACT_OK",
            Some(&icmpv6_error(&synack.clone().ext(Ext::DestOpts), DNS_IP, CLIENT, (1, 4, [0; 4]), &dns.clone().ext(Ext::HopByHop).ext(Ext::Routing), None))),
        case("xdp_v6_icmp_quote_cut_inside_extension_header_passes", "packet too big whose quote ends 4 bytes into the quoted destination options header: the chain cannot be walked, passed untouched and counted", "xdp_lb",
            &icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen.clone().ext(Ext::DestOpts), Some(44)), "XDP_PASS", None),
        case("xdp_v6_icmp_quoting_non_first_fragment_passes", "time exceeded quoting a fragment with offset 16 (no ports in it): passed untouched and counted", "xdp_lb",
            &icmpv6_error(&syn, ROUTER_IN, CLIENT, (3, 0, [0; 4]), &ack.clone().with_dst(B1, 8080).ext(Ext::Fragment { offset: 2, more: false }), None), "XDP_PASS", None),
        case("xdp_v6_icmp_quoting_too_long_chain_passes", "packet too big quoting a packet with five extension headers, more than walked: passed untouched and counted", "xdp_lb",
            &icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::DestOpts, Ext::DestOpts].iter().fold(reply_seen.clone(), |f, e| f.ext(*e)), None), "XDP_PASS", None),
        case("xdp_v6_icmp_echo_request_passes", "an echo request to a service address is no error: passed unchanged", "xdp_lb",
            &icmpv6(CLIENT, CLUSTER_IP, 128, 0, &[0, 1, 0, 1, b'h', b'i']), "XDP_PASS", None),
        case("xdp_v6_syn_to_service_without_backend_gets_rst", "a SYN to an IPv6 service without backends is answered with RST|ACK over IPv6, sent back (XDP_TX)", "xdp_lb", &b(&Frame6::tcp(CLIENT, 40000, EMPTY_IP, 80, TCP_SYN)), "XDP_TX", Some(&b(&rst))),
        case("tc_ingress_v6_pod_syn_without_backend_gets_rst", "the same from a pod: the reset goes back out of the pod's interface", "tc_ingress", &b(&Frame6::tcp(CLIENT, 40000, EMPTY_IP, 80, TCP_SYN)), "TC_ACT_REDIRECT", Some(&b(&rst))),
        case("tc_ingress_v6_pod_udp_without_backend_gets_port_unreachable", "a pod's UDP datagram to an IPv6 service without backends is answered with ICMPv6 destination unreachable, code 4 (port), from the service address, quoting the datagram's IPv6 header and UDP header", "tc_ingress", &b(&pod_dns), "TC_ACT_REDIRECT", Some(&unreach)),
        case("tc_ingress_v6_pod_udp_with_extension_header_refused_dropped", "the same datagram behind a destination options header is dropped, not answered (the quote is read at fixed offsets)", "tc_ingress", &b(&pod_dns.clone().ext(Ext::DestOpts)), "TC_ACT_SHOT", None),
    ]
}

fn loaded() -> Lb {
    let mut lb = Lb::load();
    program_v6(&mut lb.ebpf, &services());
    lb
}

#[test]
fn fixture_file_is_current() {
    fixture::check_current(FILE, &cases());
}

#[test]
fn ipv6_service_fixtures() {
    let mut lb = loaded();
    let file = fixture::load(FILE);
    fixture::check_all("IPv6", &file, |c| fixture::run(&lb.ebpf, c));
    // Every case was an IPv6 packet, counted once as such.
    assert_eq!(lb.counter(counter::IPV6), file.len() as u64);
    assert_eq!(lb.counter(counter::PASS_NDP), 3);
    assert_eq!(lb.counter(counter::PASS_V6_EXT_CHAIN), 1);
    assert_eq!(lb.counter(counter::PASS_FRAGMENT), 2);
    assert_eq!(lb.counter(counter::DROP_UDP6_NO_CHECKSUM), 1);
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 4, "two resets, a port unreachable, a datagram with an extension header dropped");
    assert_eq!(lb.counter(counter::RST_SENT), 2);
    assert_eq!(lb.counter(counter::UNREACH_SENT), 1);
    assert_eq!(lb.counter(counter::NAT_REPLY), 2);
    assert_eq!(lb.counter(counter::ICMP_NAT), 8, "six ICMPv6 errors translated at XDP (three with extension headers), two at tc egress (one)");
    assert_eq!(lb.counter(counter::PASS_ICMP6_QUOTE), 3, "a quote cut inside its extension header, a quoted non-first fragment, a quoted chain too long");
    // 8 flows (the client's, the pod's, the DNS one, 5 with extension headers), two halves each.
    let flows = flows_v6(&mut lb.ebpf);
    assert_eq!(flows.len(), 2 * 8, "{flows:?}");
    assert_eq!(lb.maps.service_stats(1).unwrap().new_flows, 7);
    assert_eq!(lb.maps.service_stats(1).unwrap().packets, 8, "7 SYNs and the established packet");
    assert_eq!(lb.maps.service_stats(3).unwrap().new_flows, 1, "no flow from the datagram without checksum");
    assert_eq!(lb.maps.service_stats(4).unwrap().drops_no_backend, 2);
}

/// Runs `to_xdp` through `xdp_lb` and `to_tc` through `tc_egress`, each cut
/// at every length short of `to_xdp`'s (tc's from the IPv6 header on: the
/// kernel's test run of a socket buffer wants it whole): every cut must be
/// malformed (XDP drops it, tc passes it) and come back unchanged. Returns
/// how many ran.
fn run_cuts(lb: &Lb, to_xdp: &[u8], to_tc: &[u8]) -> u64 {
    let mut cut = 0;
    for len in 14..to_xdp.len() {
        for (prog, frame, want) in [("xdp_lb", to_xdp, 1), ("tc_egress", to_tc, 0)] {
            if prog == "tc_egress" && len < 14 + 40 {
                continue;
            }
            let input = &frame[..len];
            let (rc, out) = fixture::run_frame(&lb.ebpf, prog, input).unwrap();
            assert_eq!((rc, out.as_slice()), (want, input), "{prog} on {len} bytes: malformed, untouched");
            cut += 1;
        }
    }
    cut
}

/// A SYN with a destination options header, and a reply, cut at every
/// length from the Ethernet header on (the reply from the IPv6 header on): each is malformed (XDP drops it, tc
/// passes it), unchanged, and makes no flow.
#[test]
fn truncated_ipv6_headers_at_every_offset_make_no_state() {
    let mut lb = loaded();
    let syn = Frame6::tcp(CLIENT, 41000, CLUSTER_IP, 80, TCP_SYN).ext(Ext::DestOpts).bytes();
    let reply = Frame6::tcp(B1, 8080, CLIENT, 41000, TCP_SYN | TCP_ACK).ext(Ext::HopByHop).bytes();
    // The Ethernet header, the IPv6 header, the extension header, 20 bytes of TCP.
    assert_eq!(syn.len(), 14 + 40 + 8 + 20);
    let cut = run_cuts(&lb, &syn, &reply);
    assert_eq!(lb.counter(counter::DROP_MALFORMED), cut);
    assert!(flows_v6(&mut lb.ebpf).is_empty(), "no flow from a truncated frame");
    assert_eq!(lb.maps.service_stats(1).unwrap().new_flows, 0);
    // The whole frames still work: the cut ones left nothing in the way.
    let (rc, out) = fixture::run_frame(&lb.ebpf, "xdp_lb", &syn).unwrap();
    assert_eq!((rc, out), (2, Frame6::tcp(CLIENT, 41000, B1, 8080, TCP_SYN).ext(Ext::DestOpts).bytes()));
}

/// An ICMPv6 "packet too big" about a live flow, cut at every length (XDP
/// from the Ethernet header on, tc egress from the IPv6 header on), and
/// whole but quoting a packet cut at every length: no crash; a cut frame
/// is malformed (XDP drops it, tc passes it) and left unchanged, a whole
/// one with a quote too short to hold the IPv6 header and 8 L4 bytes is
/// passed unchanged as not translatable (`pass_other_l4`), a longer one
/// is translated.
#[test]
fn truncated_icmpv6_errors_at_every_offset_are_counted_and_never_crash() {
    let (lb, syn) = with_flow(42000);
    let seen = Frame6::tcp(CLUSTER_IP, 80, CLIENT, 42000, TCP_ACK).payload(&[7; 40]);
    let sent = seen.clone().with_src(B1, 8080);
    let ptb = icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &seen, None);
    let cut = run_cuts(&lb, &ptb, &ptb);
    let (mut short, mut translated) = (0, 0);
    let quoted_len = seen.bytes().len() - 14;
    for q in 0..=quoted_len {
        let input = icmpv6_error(&syn, ROUTER, CLUSTER_IP, (2, 0, MTU), &seen, Some(q));
        let (rc, out) = fixture::run_frame(&lb.ebpf, "xdp_lb", &input).unwrap();
        assert_eq!(rc, 2, "a quote of {q} bytes is passed");
        if q < 48 {
            assert_eq!(out, input, "a quote of {q} bytes is too short to translate");
            short += 1;
        } else {
            assert_eq!(out, translated_to(&syn, &sent, q, &input), "a quote of {q} bytes is translated");
            translated += 1;
        }
    }
    assert_eq!(lb.counter(counter::DROP_MALFORMED), cut, "every cut frame counted as malformed");
    assert_eq!(lb.counter(counter::PASS_OTHER_L4), short);
    assert_eq!(lb.counter(counter::ICMP_NAT), translated);
    assert_eq!((short, translated), (48, quoted_len as u64 - 48 + 1));
}

/// An ICMPv6 "packet too big" about a live flow behind a hop-by-hop header,
/// quoting a reply that carried a destination options header, with the
/// quote cut at every length: short of the quoted IPv6 header it is not
/// translatable (`pass_other_l4`); ending inside the quoted extension
/// header, its chain cannot be walked (`pass_icmpv6_error_quote_unwalkable`);
/// past it but short of 8 TCP bytes, not translatable; longer, translated.
/// Every one is passed, unchanged unless translated.
#[test]
fn icmpv6_errors_with_extension_headers_quoting_every_length_are_counted() {
    let (lb, syn) = with_flow(43000);
    let like = syn.clone().ext(Ext::HopByHop);
    let seen = Frame6::tcp(CLUSTER_IP, 80, CLIENT, 43000, TCP_ACK).ext(Ext::DestOpts).payload(&[7; 24]);
    let sent = seen.clone().with_src(B1, 8080);
    let quoted_len = seen.bytes().len() - 14;
    let (mut short, mut unwalkable, mut translated) = (0, 0, 0);
    for q in 0..=quoted_len {
        let input = icmpv6_error(&like, ROUTER, CLUSTER_IP, (2, 0, MTU), &seen, Some(q));
        let (rc, out) = fixture::run_frame(&lb.ebpf, "xdp_lb", &input).unwrap();
        assert_eq!(rc, 2, "a quote of {q} bytes is passed");
        if (40..48).contains(&q) {
            assert_eq!(out, input, "a quote of {q} bytes ends inside its extension header");
            unwalkable += 1;
        } else if q < 40 + 8 + 8 {
            assert_eq!(out, input, "a quote of {q} bytes is too short to translate");
            short += 1;
        } else {
            assert_eq!(out, translated_to(&like, &sent, q, &input), "a quote of {q} bytes is translated");
            translated += 1;
        }
    }
    assert_eq!(lb.counter(counter::PASS_OTHER_L4), short);
    assert_eq!(lb.counter(counter::PASS_ICMP6_QUOTE), unwalkable);
    assert_eq!(lb.counter(counter::ICMP_NAT), translated);
    assert_eq!((short, unwalkable, translated), (48, 8, quoted_len as u64 - 56 + 1));
}

/// The programs loaded, with the flow client:`sport` -> ClusterIP:80 made
/// by its SYN (returned).
fn with_flow(sport: u16) -> (Lb, Frame6) {
    let lb = loaded();
    let syn = Frame6::tcp(CLIENT, sport, CLUSTER_IP, 80, TCP_SYN);
    let (rc, _) = fixture::run_frame(&lb.ebpf, "xdp_lb", &syn.bytes()).unwrap();
    assert_eq!(rc, 2, "the flow is made");
    (lb, syn)
}

/// What `input`, a packet too big from ROUTER to CLUSTER_IP (headers as
/// `like`'s) quoting `q` bytes of a reply, becomes: the same to B1 quoting
/// `q` bytes of `sent`, except that half a TCP checksum (a quote ending
/// inside it) cannot be updated and stays as it was.
fn translated_to(like: &Frame6, sent: &Frame6, q: usize, input: &[u8]) -> Vec<u8> {
    let mut want = icmpv6_error(like, ROUTER, B1, (2, 0, MTU), sent, Some(q));
    if q == 40 + 8 * sent.ext.len() + 17 {
        let last = want.len() - 1;
        want[last] = input[last];
        // The ICMPv6 checksum, recomputed over that byte.
        let at = 14 + 40 + 8 * like.ext.len();
        want[at + 2..at + 4].copy_from_slice(&[0, 0]);
        let c = lb_ebpf::csum::l4_checksum(&want[22..38], &want[38..54], 58, &want[at..]);
        want[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
    }
    want
}
