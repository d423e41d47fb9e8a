//! SCTP over IPv6 through BPF_PROG_TEST_RUN, byte-exact: the IPv4 story of
//! `sctp.rs`, at tc (`tc_ingress_v6`, `tc_egress_v6`) and at XDP, where
//! `xdp_lb_v6` hands SCTP to `xdp_sctp_v6` and its rewrite stage
//! `xdp_sctp_v6_nat` (the verifier's budget, see lb-ebpf `stage.rs`).
//! At tc: a pod's INIT to an IPv6 ClusterIP whose target port differs, its
//! CRC32c offloaded (left zero); its DATA on the established flow with a
//! complete CRC (updated); the backend's replies reverse-NATed (complete:
//! updated; offloaded: left zero); a backend on the service's own port (the
//! CRC must not change); truncated SCTP headers; a service without
//! backends (ICMPv6 port unreachable); the node's own INIT answered with an
//! IPv6 ABORT. At XDP, from outside: an INIT and its DATA (CRC updated),
//! one behind an extension header, the INIT ACK reverse-NATed at tc egress,
//! an address-only rewrite, a corrupt CRC that stays as corrupt, cut
//! headers and a service without backends (dropped, as over IPv4); ICMPv6
//! errors about the association translated each way (packet too big,
//! destination unreachable, a quote cut before the CRC32c, the backend's
//! own port unreachable at tc egress); then, on an uplink, a backend on
//! another node (SNAT both ways, never DSR, and ICMPv6 errors about it
//! each way) and one on this node (client kept) in DSR mode. Every expected frame is
//! built from scratch, its CRC32c computed over the whole SCTP packet by
//! the `crc` crate, so each is an independent check of the in-place
//! update. The cases live in `tests/fixtures/sctp_v6.json`
//! (`XDPLB_BLESS=1` rewrites it). Also the verifier's instruction counts
//! of every program (figures). Needs root.
use std::net::Ipv6Addr;

use lb_common::{algorithm, config_flags, counter, Config, NatConfig, IPPROTO_SCTP};
use xdplb_tests::{
    fixture::{self, story6::*, Case},
    lb::Lb,
    packet::{sctp_crc, sctp_data_value, sctp_init_value, SctpCrc, L4, NODE_MAC, CLIENT_MAC, SCTP_ABORT, SCTP_DATA, SCTP_INIT, SCTP_INIT_ACK},
    packet6::{icmpv6_error, Ext, Frame6},
    packet::hex_diff,
    services::{flows_v6, program_v6, remote_v6, Svc6},
    uplink::{forwarded, from_node_b, Uplink, CLIENT6, NODE6, NODE_B6, NODE_B_MAC, POD_B6, POD_LOCAL6, SNAT_PORT},
};

const FILE: &str = "sctp_v6.json";

/// Diameter: the service port and the pods' target port; M3UA on its own.
const SVC_PORT: u16 = 3868;
const TARGET_PORT: u16 = 3869;
const SAME_PORT: u16 = 2905;
const NODE_PORT: u16 = 30868;
const TAG: u32 = 0x0c11_e4a7;
/// A router on the client's path, one between the node and the backends.
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
const ROUTER_IN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0xfe);
/// "Packet too big", MTU 1280 (ICMPv6 type 2).
const MTU: [u8; 4] = 1280u32.to_be_bytes();

fn services() -> Vec<Svc6> {
    vec![
        Svc6 { id: 1, proto: IPPROTO_SCTP, algorithm: algorithm::ROUND_ROBIN, frontends: vec![(CLUSTER_IP, SVC_PORT)], backends: vec![(101, B1, TARGET_PORT)] },
        Svc6 { id: 2, proto: IPPROTO_SCTP, algorithm: algorithm::RANDOM, frontends: vec![(DNS_IP, SAME_PORT)], backends: vec![(102, B2, SAME_PORT)] },
        Svc6 { id: 3, proto: IPPROTO_SCTP, algorithm: algorithm::RANDOM, frontends: vec![(EMPTY_IP, SVC_PORT)], backends: vec![] },
    ]
}

fn init(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Frame6 {
    Frame6::sctp(src, sport, dst, dport, 0, SCTP_INIT).payload(&sctp_init_value(TAG))
}

fn data(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, text: &[u8]) -> Frame6 {
    Frame6::sctp(src, sport, dst, dport, 0x5e4e_7a90, SCTP_DATA).payload(&sctp_data_value(0x1000_0000, text))
}

fn with_crc(mut f: Frame6, crc: SctpCrc) -> Frame6 {
    if let L4::Sctp { crc: c, .. } = &mut f.l4 {
        *c = crc;
    }
    f
}

/// The first `sctp_len` bytes of `f`'s SCTP packet, the payload length saying so.
fn cut(f: &Frame6, sctp_len: usize) -> Vec<u8> {
    let mut b = f.bytes()[..14 + 40 + sctp_len].to_vec();
    b[18..20].copy_from_slice(&(sctp_len as u16).to_be_bytes());
    b
}

/// The ABORT answering the node's INIT `f` (no extension headers), built
/// here from scratch: back to the node from the address it dialled, ports
/// swapped, the INIT's initiate tag as verification tag, one ABORT chunk,
/// its CRC32c from the `crc` crate.
fn abort_for(f: &[u8]) -> Vec<u8> {
    let mut out = [&f[6..12], &f[0..6], &[0x86, 0xdd][..]].concat();
    out.extend_from_slice(&[0x60, 0, 0, 0, 0, 16, IPPROTO_SCTP, 64]);
    out.extend_from_slice(&f[14 + 24..14 + 40]);
    out.extend_from_slice(&f[14 + 8..14 + 24]);
    let l4 = 14 + 40;
    let mut sctp = [&f[l4 + 2..l4 + 4], &f[l4..l4 + 2], &f[l4 + 16..l4 + 20], &[0; 4], &[SCTP_ABORT, 0, 0, 4]].concat();
    let crc = sctp_crc(&sctp);
    sctp[8..12].copy_from_slice(&crc);
    out.extend_from_slice(&sctp);
    out
}

fn cases() -> Vec<Case> {
    let b = |f: &Frame6| f.bytes();
    let pod_init = with_crc(init(POD, 6000, CLUSTER_IP, SVC_PORT), SctpCrc::Offloaded);
    let pod_data = data(POD, 6000, CLUSTER_IP, SVC_PORT, b"CER");
    let init_ack = Frame6::sctp(B1, TARGET_PORT, POD, 6000, TAG, SCTP_INIT_ACK).payload(&sctp_init_value(0x5e4e_7a90));
    let reply_off = with_crc(data(B1, TARGET_PORT, POD, 6000, b"CEA"), SctpCrc::Offloaded);
    let same = data(POD, 6003, DNS_IP, SAME_PORT, b"ASPUP");
    let empty = init(POD, 6002, EMPTY_IP, SVC_PORT);
    let mut back = empty.clone();
    (back.src_mac, back.dst_mac) = (NODE_MAC, CLIENT_MAC);
    let unreach = icmpv6_error(&back, EMPTY_IP, POD, (1, 4, [0; 4]), &empty, Some(48));
    let node_init = init(NODE, 40000, CLUSTER_IP, SVC_PORT);
    let node_direct = init(NODE, 40002, B1, TARGET_PORT);
    let c_init = init(CLIENT, 5000, CLUSTER_IP, SVC_PORT);
    let c_data = data(CLIENT, 5000, CLUSTER_IP, SVC_PORT, b"CER");
    let c_ack = Frame6::sctp(B1, TARGET_PORT, CLIENT, 5000, TAG, SCTP_INIT_ACK).payload(&sctp_init_value(0x5e4e_7a90));
    let c_ext = init(CLIENT, 5001, CLUSTER_IP, SVC_PORT).ext(Ext::HopByHop).ext(Ext::DestOpts);
    let c_same = data(CLIENT, 5003, DNS_IP, SAME_PORT, b"ASPUP");
    let corrupt = with_crc(data(CLIENT, 5002, CLUSTER_IP, SVC_PORT, b"bit flip"), SctpCrc::Corrupt(0x0001_0000));
    // The client's association as the wire carried it past the node.
    let reply_seen = c_ack.clone().with_src(CLUSTER_IP, SVC_PORT);
    let fwd_seen = c_data.clone().with_dst(B1, TARGET_PORT);
    let c = Case::new;
    vec![
        c("tc_ingress_v6_sctp_pod_init_offloaded_crc_stays_zero", "a pod's INIT to an IPv6 ClusterIP, its CRC32c offloaded (field zero): address and port rewritten (3868 -> 3869), the field left zero for the kernel to compute", "tc_ingress", &b(&pod_init), "TC_ACT_OK", Some(&b(&pod_init.clone().with_dst(B1, TARGET_PORT)))),
        c("tc_ingress_v6_sctp_established_data_crc_updated", "DATA on the established association with a complete CRC32c: to the same backend, the CRC updated in the socket buffer", "tc_ingress", &b(&pod_data), "TC_ACT_OK", Some(&b(&pod_data.clone().with_dst(B1, TARGET_PORT)))),
        c("tc_egress_v6_sctp_init_ack_reverse_nat_crc_updated", "the backend's INIT ACK to the pod leaves from the ClusterIP and service port, its complete CRC32c updated", "tc_egress", &b(&init_ack), "TC_ACT_OK", Some(&b(&init_ack.clone().with_src(CLUSTER_IP, SVC_PORT)))),
        c("tc_egress_v6_sctp_reply_offloaded_crc_stays_zero", "the backend's offloaded DATA to the pod: source rewritten, the field left zero", "tc_egress", &b(&reply_off), "TC_ACT_OK", Some(&b(&reply_off.clone().with_src(CLUSTER_IP, SVC_PORT)))),
        c("tc_ingress_v6_sctp_same_port_address_only", "a backend on the service's own port: only the address changes, which the CRC32c does not cover (no pseudo header)", "tc_ingress", &b(&same), "TC_ACT_OK", Some(&b(&same.clone().with_dst(B2, SAME_PORT)))),
        c("tc_ingress_v6_sctp_common_header_cut_passes", "10 bytes of SCTP common header, the payload length saying so: malformed, passed unchanged", "tc_ingress", &cut(&pod_data, 10), "TC_ACT_OK", None),
        c("tc_ingress_v6_sctp_without_chunk_passes", "a 12-byte common header and no chunk: malformed, passed unchanged", "tc_ingress", &cut(&pod_data, 12), "TC_ACT_OK", None),
        c("tc_ingress_v6_sctp_pod_without_backend_gets_port_unreachable", "a pod's INIT to an IPv6 service without backends: ICMPv6 port unreachable from the service address, quoting the IPv6 header, ports and verification tag", "tc_ingress", &b(&empty), "TC_ACT_REDIRECT", Some(&unreach)),
        c("tc_egress_v6_sctp_node_init_to_clusterip_aborted", "the node's own INIT to an IPv6 ClusterIP (no socket program sees SCTP) is answered with an IPv6 ABORT carrying its initiate tag, delivered back into the node", "tc_egress", &b(&node_init), "TC_ACT_REDIRECT", Some(&abort_for(&b(&node_init)))),
        c("tc_egress_v6_sctp_node_init_to_backend_passes", "the node's INIT to a backend's own address is not a service's: unchanged", "tc_egress", &b(&node_direct), "TC_ACT_OK", Some(&b(&node_direct))),
        c("xdp_v6_sctp_init_to_clusterip_dnat_crc_updated", "an INIT from outside to an IPv6 ClusterIP: xdp_lb_v6 hands it to xdp_sctp_v6, address and port rewritten (3868 -> 3869), the CRC32c updated to the rewritten packet's", "xdp_lb", &b(&c_init), "XDP_PASS", Some(&b(&c_init.clone().with_dst(B1, TARGET_PORT)))),
        c("xdp_v6_sctp_established_data_same_backend", "DATA on the established association: the same backend, the CRC32c updated", "xdp_lb", &b(&c_data), "XDP_PASS", Some(&b(&c_data.clone().with_dst(B1, TARGET_PORT)))),
        c("tc_egress_v6_sctp_init_ack_to_external_client", "the backend's INIT ACK to the outside client leaves from the ClusterIP and service port, its CRC32c updated", "tc_egress", &b(&c_ack), "TC_ACT_OK", Some(&b(&c_ack.clone().with_src(CLUSTER_IP, SVC_PORT)))),
        c("xdp_v6_sctp_behind_extension_headers_dnat", "an INIT behind a hop-by-hop and a destination options header: walked to the SCTP header, balanced, the headers kept", "xdp_lb", &b(&c_ext), "XDP_PASS", Some(&b(&c_ext.clone().with_dst(B1, TARGET_PORT)))),
        c("xdp_v6_sctp_same_port_address_only", "a backend on the service's own port: only the address changes, which the CRC32c does not cover", "xdp_lb", &b(&c_same), "XDP_PASS", Some(&b(&c_same.clone().with_dst(B2, SAME_PORT)))),
        c("xdp_v6_sctp_bad_crc_stays_bad", "a corrupt CRC32c is not validated: updated by the same delta, it stays exactly as corrupt for the endpoint to drop", "xdp_lb", &b(&corrupt), "XDP_PASS", Some(&b(&corrupt.clone().with_dst(B1, TARGET_PORT)))),
        c("xdp_v6_sctp_common_header_cut_drops", "10 bytes of SCTP common header, the payload length saying so", "xdp_lb", &cut(&c_data, 10), "XDP_DROP", None),
        c("xdp_v6_sctp_without_chunk_drops", "a 12-byte common header and no chunk", "xdp_lb", &cut(&c_data, 12), "XDP_DROP", None),
        c("xdp_v6_sctp_to_service_without_backend_drops", "SCTP from outside to an IPv6 service without backends is dropped, as over IPv4 (and as UDP)", "xdp_lb", &b(&init(CLIENT, 5004, EMPTY_IP, SVC_PORT)), "XDP_DROP", None),
        // ICMPv6 errors about the outside client's association (client:5000
        // -> ClusterIP:3868 -> B1:3869), each way; a quote keeps the CRC32c
        // its sender saw (no receiver checks a quoted CRC, and a cut quote
        // could not be updated).
        c("xdp_v6_sctp_icmp_packet_too_big_about_reply_to_backend", "packet too big from the client's path about the INIT ACK the node sent as ClusterIP:3868 -> client: sent on to the backend quoting B1:3869 -> client (outer destination, quoted source address and port, the ICMPv6 checksum over the new pseudo header; the quoted CRC32c as the router saw it)", "xdp_lb",
            &icmpv6_error(&c_init, ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen, None), "XDP_PASS", Some(&icmpv6_error(&c_init, ROUTER, B1, (2, 0, MTU), &crc_of(c_ack.clone(), &reply_seen), None))),
        c("xdp_v6_sctp_icmp_unreachable_about_forward_packet_to_client", "destination unreachable (address) from a router between the node and the backend about client -> B1:3869: sent on to the client quoting client -> ClusterIP:3868", "xdp_lb",
            &icmpv6_error(&c_init, ROUTER_IN, CLIENT, (1, 3, [0; 4]), &fwd_seen, None), "XDP_PASS", Some(&icmpv6_error(&c_init, ROUTER_IN, CLIENT, (1, 3, [0; 4]), &crc_of(c_data.clone(), &fwd_seen), None))),
        c("xdp_v6_sctp_icmp_packet_too_big_quote_cut_before_crc", "packet too big quoting only the IPv6 header and 8 bytes of SCTP (ports and verification tag, no CRC32c): outer and quote translated", "xdp_lb",
            &icmpv6_error(&c_init, ROUTER, CLUSTER_IP, (2, 0, MTU), &reply_seen, Some(48)), "XDP_PASS", Some(&icmpv6_error(&c_init, ROUTER, B1, (2, 0, MTU), &c_ack, Some(48)))),
        c("tc_egress_v6_sctp_icmp_port_unreachable_from_backend", "the backend's own port unreachable about client -> B1:3869 leaves as from the ClusterIP, quoting client -> ClusterIP:3868", "tc_egress",
            &icmpv6_error(&c_ack, B1, CLIENT, (1, 4, [0; 4]), &fwd_seen, None), "TC_ACT_OK", Some(&icmpv6_error(&c_ack, CLUSTER_IP, CLIENT, (1, 4, [0; 4]), &crc_of(c_data.clone(), &fwd_seen), None))),
    ]
}

/// The ICMPv6 errors among the cases.
const ICMP_CASES: [&str; 4] = [
    "xdp_v6_sctp_icmp_packet_too_big_about_reply_to_backend",
    "xdp_v6_sctp_icmp_unreachable_about_forward_packet_to_client",
    "xdp_v6_sctp_icmp_packet_too_big_quote_cut_before_crc",
    "tc_egress_v6_sctp_icmp_port_unreachable_from_backend",
];

/// `f` with the CRC32c field `seen` has (neither with extension headers):
/// a quote of `f` as the error's sender saw it as `seen`.
fn crc_of(f: Frame6, seen: &Frame6) -> Frame6 {
    let l4 = 14 + 40;
    let field = seen.bytes()[l4 + 8..l4 + 12].try_into().unwrap();
    with_crc(f, SctpCrc::Field(field))
}

/// Whether the ICMPv6 checksum of the frame `f` (no extension headers) is
/// valid: the one's complement sum over the pseudo header and the message,
/// computed here on its own.
fn icmpv6_checksum_ok(f: &[u8]) -> bool {
    let msg = &f[14 + 40..];
    let pseudo = [&f[14 + 8..14 + 40], &(msg.len() as u32).to_be_bytes(), &[0, 0, 0, 58]].concat();
    let mut sum: u32 = pseudo.chunks(2).chain(msg.chunks(2)).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn fixture_file_is_current() {
    fixture::check_current(FILE, &cases());
}

/// The expected frames say what the cases claim about the CRC field,
/// checked here against a CRC32c computed from scratch.
#[test]
fn the_expected_crcs_are_what_the_cases_claim() {
    let file = fixture::load(FILE);
    let get = |name: &str| {
        let (i, o) = fixture::frames(&file, name);
        let l4 = 14 + 40;
        let field = |f: &[u8]| f[l4 + 8..l4 + 12].to_vec();
        (field(&i), field(&o), sctp_crc(&o[l4..]).to_vec())
    };
    for name in [
        "tc_ingress_v6_sctp_established_data_crc_updated",
        "tc_egress_v6_sctp_init_ack_reverse_nat_crc_updated",
        "tc_egress_v6_sctp_node_init_to_clusterip_aborted",
        "xdp_v6_sctp_init_to_clusterip_dnat_crc_updated",
        "xdp_v6_sctp_established_data_same_backend",
        "tc_egress_v6_sctp_init_ack_to_external_client",
    ] {
        let (i, o, recomputed) = get(name);
        assert_eq!(o, recomputed, "{name}: the output's CRC32c is the rewritten packet's");
        assert_ne!(i, o, "{name}: a port change changes the CRC32c");
    }
    for name in ["tc_ingress_v6_sctp_same_port_address_only", "xdp_v6_sctp_same_port_address_only"] {
        let (i, o, recomputed) = get(name);
        assert_eq!((&i, &o), (&recomputed, &recomputed), "{name}: an address change alone does not");
    }
    // The corrupt CRC keeps its flipped bits against the rewritten packet's.
    let (_, o, recomputed) = get("xdp_v6_sctp_bad_crc_stays_bad");
    let diff = u32::from_le_bytes(o.try_into().unwrap()) ^ u32::from_le_bytes(recomputed.try_into().unwrap());
    assert_eq!(diff, 0x0001_0000, "as corrupt as it came");
    for name in ["tc_ingress_v6_sctp_pod_init_offloaded_crc_stays_zero", "tc_egress_v6_sctp_reply_offloaded_crc_stays_zero"] {
        let (i, o, _) = get(name);
        assert_eq!((i, o), (vec![0; 4], vec![0; 4]), "{name}");
    }
    // The ICMPv6 errors: checksums valid on both sides, the quoted ports
    // translated, a quoted CRC32c kept as the error's sender saw it.
    let quote = 14 + 40 + 8 + 40;
    for name in ICMP_CASES {
        let (i, o) = fixture::frames(&file, name);
        assert!(icmpv6_checksum_ok(&i) && icmpv6_checksum_ok(&o), "{name}: ICMPv6 checksums");
        assert_ne!(i[quote..quote + 4], o[quote..quote + 4], "{name}: a quoted port translated");
        if o.len() >= quote + 12 {
            assert_eq!(i[quote + 8..quote + 12], o[quote + 8..quote + 12], "{name}: the quoted CRC32c kept");
            assert_ne!(&o[quote + 8..quote + 12], &sctp_crc(&o[quote..]), "{name}: (which is not the translated quote's own)");
        }
    }
}

#[test]
fn sctp_v6_fixtures() {
    let mut lb = Lb::load();
    program_v6(&mut lb.ebpf, &services());
    let file = fixture::load(FILE);
    fixture::check_all("SCTP over IPv6", &file, |c| {
        // Its output must stay corrupt.
        if c.name.contains("bad_crc") {
            return fixture::run_corrupt(&lb.ebpf, c);
        }
        fixture::run(&lb.ebpf, c)
    });
    // Complete CRCs with a port change: at tc the pod's DATA and the INIT
    // ACK; at XDP the client's INIT, its DATA, the INIT behind extension
    // headers and the corrupt DATA, and the INIT ACK to the client at tc.
    // Offloaded: the pod's INIT, the backend's DATA.
    assert_eq!(lb.counter(counter::SCTP_CRC_UPDATED), 2 + 5);
    assert_eq!(lb.counter(counter::SCTP_CRC_OFFLOADED), 2);
    assert_eq!(lb.counter(counter::DROP_MALFORMED), 2 + 2, "the cut headers, at tc and at XDP");
    assert_eq!(lb.counter(counter::UNREACH_SENT), 1);
    assert_eq!(lb.counter(counter::SCTP_NODE_ABORTED), 1);
    assert_eq!(lb.counter(counter::NAT_REPLY), 3);
    assert_eq!(lb.counter(counter::ICMP_NAT), ICMP_CASES.len() as u64, "every ICMPv6 error about an association translated");
    assert_eq!(lb.counter(counter::DROP_SCTP6_STAGE), 0, "the stage slot is always there");
    assert_eq!(lb.counter(counter::DROP_NO_BACKEND), 2, "the pod's INIT (answered with the port unreachable) and the outside client's (dropped)");
    assert_eq!((lb.counter(counter::PASS_OTHER_L4), lb.counter(counter::PASS_SCTP6_PROGRAM), lb.counter(counter::DROP_SCTP6_PROGRAM)), (0, 0, 0), "XDP balances IPv6 SCTP");
    let flows = flows_v6(&mut lb.ebpf);
    assert_eq!(flows.len(), (2 + 4) * 2, "the pod's association and the M3UA one, four from outside, two halves each: {flows:?}");
    assert!(flows.iter().all(|(k, _)| k.proto == IPPROTO_SCTP), "conntrack keys carry protocol 132");
    let svc = lb.maps.service_stats(1).unwrap();
    assert_eq!((svc.new_flows, svc.packets), (4, 6), "INIT and DATA: one association, from a pod and from outside; the INIT behind extension headers and the corrupt DATA: one each");
    assert_eq!(lb.maps.service_stats(3).unwrap().drops_no_backend, 2);
}

/// From outside over IPv6 in DSR mode, on an uplink (routes and permanent
/// neighbours, so XDP's FIB lookups are deterministic): an SCTP
/// association to a pod on another node is SNATed (never DSR: the option
/// carries no SCTP state), its CRC32c updated both ways, and sent out of
/// the uplink by XDP; one to a pod on this node keeps the client.
#[test]
fn sctp_v6_from_outside_snat_to_another_node_never_dsr_local_keeps_client() {
    let up = Uplink::new();
    up.enter();
    let mut lb = Lb::load();
    program_v6(
        &mut lb.ebpf,
        &[
            Svc6 { id: 1, proto: IPPROTO_SCTP, algorithm: algorithm::RANDOM, frontends: vec![(NODE6, NODE_PORT)], backends: vec![(11, POD_B6, TARGET_PORT)] },
            Svc6 { id: 2, proto: IPPROTO_SCTP, algorithm: algorithm::RANDOM, frontends: vec![(NODE6, NODE_PORT + 1)], backends: vec![(12, POD_LOCAL6, TARGET_PORT)] },
        ],
    );
    remote_v6(&mut lb.ebpf, &[11]);
    lb.maps.set_nat_config(&NatConfig { addr: NODE6.octets(), port_min: SNAT_PORT, port_max: SNAT_PORT }).unwrap();
    lb.maps.set_config(&Config { flags: config_flags::DSR_TCP | config_flags::DSR_UDP, ..Default::default() }).unwrap();
    const XDP_TX: u32 = 3;
    const XDP_PASS: u32 = 2;
    let check = |what: &str, input: &Frame6, want: (u32, Frame6)| {
        let (rc, out) = up.xdp(&lb, &input.bytes());
        let want_bytes = want.1.bytes();
        assert_eq!((rc, &out), (want.0, &want_bytes), "{what}\n{}", hex_diff(&out, &want_bytes));
        assert_eq!(&out[14 + 40 + 8..14 + 40 + 12], &sctp_crc(&out[14 + 40..]), "{what}: the CRC32c is the rewritten packet's");
    };

    let first = init(CLIENT6, 5000, NODE6, NODE_PORT);
    check("SNAT: source [node]:61000, destination the pod on node B, out of the uplink", &first, (XDP_TX, forwarded(first.clone().with_src(NODE6, SNAT_PORT).with_dst(POD_B6, TARGET_PORT), NODE_B_MAC)));
    let ack = from_node_b(Frame6::sctp(POD_B6, TARGET_PORT, NODE6, SNAT_PORT, TAG, SCTP_INIT_ACK).payload(&sctp_init_value(0x5e4e_7a90)));
    check("the INIT ACK back to the client from the NodePort", &ack, (XDP_TX, forwarded(ack.clone().with_src(NODE6, NODE_PORT).with_dst(CLIENT6, 5000), CLIENT_MAC)));
    // ICMPv6 errors about the SNATed association, each way: translated and
    // forwarded by XDP like the association's own packets.
    let icmp = |what: &str, input: Vec<u8>, want: Vec<u8>| {
        let (rc, out) = up.xdp(&lb, &input);
        assert_eq!((rc, &out), (XDP_TX, &want), "{what}\n{}", hex_diff(&out, &want));
        assert!(icmpv6_checksum_ok(&input) && icmpv6_checksum_ok(&out), "{what}: ICMPv6 checksums");
    };
    let init_seen = first.clone().with_src(NODE6, SNAT_PORT).with_dst(POD_B6, TARGET_PORT);
    icmp(
        "packet too big from node B's side about the SNATed INIT: to the client, quoting client -> NodePort",
        icmpv6_error(&from_node_b(first.clone()), NODE_B6, NODE6, (2, 0, MTU), &init_seen, None),
        icmpv6_error(&forwarded(from_node_b(first.clone()), CLIENT_MAC), NODE_B6, CLIENT6, (2, 0, MTU), &crc_of(first.clone(), &init_seen), None),
    );
    let ack_sent = Frame6::sctp(POD_B6, TARGET_PORT, NODE6, SNAT_PORT, TAG, SCTP_INIT_ACK).payload(&sctp_init_value(0x5e4e_7a90));
    let ack_seen = ack_sent.clone().with_src(NODE6, NODE_PORT).with_dst(CLIENT6, 5000);
    icmp(
        "packet too big from the client's side about the INIT ACK: to the pod on node B, quoting pod -> node:SNAT port",
        icmpv6_error(&first, ROUTER, NODE6, (2, 0, MTU), &ack_seen, None),
        icmpv6_error(&forwarded(first.clone(), NODE_B_MAC), ROUTER, POD_B6, (2, 0, MTU), &crc_of(ack_sent, &ack_seen), None),
    );
    let local = init(CLIENT6, 5001, NODE6, NODE_PORT + 1);
    check("a pod on this node: the client kept, passed to the kernel", &local, (XDP_PASS, local.clone().with_dst(POD_LOCAL6, TARGET_PORT)));

    assert_eq!((lb.counter(counter::SNAT_NEW), lb.counter(counter::DSR_FORWARD)), (1, 0), "SNAT, never DSR");
    assert_eq!(lb.counter(counter::SCTP_CRC_UPDATED), 3, "both ways, and the local DNAT's port");
    assert_eq!(lb.counter(counter::XDP_REDIRECTED), 2 + 2, "both SNAT packets and both ICMPv6 errors left through XDP");
    assert_eq!(lb.counter(counter::ICMP_NAT), 2);
    assert!(!lb_common::dsr::uses_dsr(0, config_flags::DSR_TCP | config_flags::DSR_UDP, IPPROTO_SCTP), "explain decides the same");
}

/// The verifier's instruction count of every program (`bpf_prog_info`), as
/// figures: the IPv6 instances are where the budget is tight.
#[test]
fn verified_instructions_of_every_program() {
    let lb = Lb::load();
    for (name, p) in lb.ebpf.programs() {
        let count = p.info().ok().and_then(|i| i.verified_instruction_count()).unwrap_or_else(|| panic!("{name}: no verified_insns"));
        println!("XDPLB-FIGURE verified_insns_{name} {count}");
        assert!(count > 0 && count <= 1_000_000, "{name}: {count}");
    }
}
