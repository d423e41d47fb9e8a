//! SCTP services through BPF_PROG_TEST_RUN, byte-exact.
//!
//! The cases live in `tests/fixtures/sctp.json` (`XDPLB_BLESS=1` rewrites it
//! from `cases()`). Every expected frame is built from scratch with its
//! CRC32c computed over the whole packet by the `crc` crate
//! (`packet::sctp_crc`), so each is an independent check of the programs'
//! in-place update (`lb_ebpf::sctp`). The story: a client's INIT to a
//! ClusterIP whose target port differs (the CRC changes), its DATA on the
//! established flow, the backend's INIT ACK reverse-NATed; a NodePort; a
//! backend on the service's own port (the CRC must not change); a pod whose
//! CRC is offloaded (field zero: left zero for the kernel to compute) or
//! complete (updated); a corrupt CRC, updated by the same delta so it stays
//! exactly as corrupt; truncated headers; a service without backends.
//! The node's own INIT to a service address, which no socket program sees,
//! answered at tc egress with an ABORT back into the node.
//! Then the lifecycle: INIT is SCTP's SYN, ABORT its RST; and a pod on
//! another node: SNAT (never DSR), the CRC updated both ways. Needs root.
use std::net::Ipv4Addr;

use lb_common::{algorithm, config_flags, counter, Config, NatConfig, IPPROTO_SCTP};
use lb_ebpf::csum::checksum;
use xdplb_tests::{
    fixture::{self, story::*, Case},
    lb::Lb,
    netns::{self, Netns},
    packet::{
        sctp_crc, sctp_data_value, sctp_init_value, Frame, SctpCrc, CLIENT_MAC, L4, NODE_MAC, SCTP_ABORT, SCTP_DATA, SCTP_INIT,
        SCTP_INIT_ACK,
    },
    services::{contents, Svc},
    topology::{addr_up, veth},
};

const FILE: &str = "sctp.json";
/// Diameter over SCTP: the service port and the pods' target port.
const SVC_PORT: u16 = 3868;
const TARGET_PORT: u16 = 3869;
const NODE_PORT: u16 = 30868;
/// M3UA: a backend on the service's own port.
const SAME_PORT: u16 = 2905;

fn services() -> Vec<Svc> {
    vec![
        Svc::new(1, IPPROTO_SCTP, algorithm::ROUND_ROBIN)
            .frontend(CLUSTER_IP, SVC_PORT)
            .backend(1, B1, TARGET_PORT),
        Svc::new(2, IPPROTO_SCTP, algorithm::RANDOM)
            .frontend(NODE, NODE_PORT)
            .backend(1, B1, TARGET_PORT),
        Svc::new(3, IPPROTO_SCTP, algorithm::RANDOM)
            .frontend(DNS_IP, SAME_PORT)
            .backend(2, B2, SAME_PORT),
        Svc::new(4, IPPROTO_SCTP, algorithm::RANDOM).frontend(EMPTY_IP, SVC_PORT),
    ]
}

fn init(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Frame {
    Frame::sctp(src, sport, dst, dport, 0, SCTP_INIT).payload(&sctp_init_value(0x0c11_e4a7))
}

fn data(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, text: &[u8]) -> Frame {
    Frame::sctp(src, sport, dst, dport, 0x5e4e_7a90, SCTP_DATA)
        .payload(&sctp_data_value(0x1000_0000, text))
}

fn with_crc(mut f: Frame, crc: SctpCrc) -> Frame {
    if let L4::Sctp { crc: c, .. } = &mut f.l4 {
        *c = crc;
    }
    f
}

fn to(mut f: Frame, addr: Ipv4Addr, port: u16) -> Frame {
    (f.dst, f.dport) = (addr, port);
    f
}

fn from(mut f: Frame, addr: Ipv4Addr, port: u16) -> Frame {
    (f.src, f.sport) = (addr, port);
    f
}

/// The ICMP port unreachable answering `f` (an untagged IPv4 frame without
/// options), built here from scratch: back to the sender, quoting its IPv4
/// header and first 8 SCTP bytes (ports and verification tag).
fn port_unreachable(f: &[u8]) -> Vec<u8> {
    let mut out = f[6..12].to_vec();
    out.extend_from_slice(&f[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&f[14 + 16..14 + 20]);
    ip.extend_from_slice(&f[14 + 12..14 + 16]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&f[14..14 + 28]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&ip);
    out.extend_from_slice(&icmp);
    out
}

/// The ABORT answering the node's INIT `f` (untagged, no IPv4 options),
/// built here from scratch: back to the node from the address it dialled,
/// ports swapped, the INIT's initiate tag as verification tag, one ABORT
/// chunk, its CRC32c from the `crc` crate.
fn abort_for(f: &[u8]) -> Vec<u8> {
    let mut out = f[6..12].to_vec();
    out.extend_from_slice(&f[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 132, 0, 0];
    ip.extend_from_slice(&f[14 + 16..14 + 20]);
    ip.extend_from_slice(&f[14 + 12..14 + 16]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = 14 + 20;
    let mut sctp = [&f[l4 + 2..l4 + 4], &f[l4..l4 + 2], &f[l4 + 16..l4 + 20], &[0; 4], &[SCTP_ABORT, 0, 0, 4]].concat();
    let crc = sctp_crc(&sctp);
    sctp[8..12].copy_from_slice(&crc);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&sctp);
    out
}

/// Sets the IPv4 total length of an untagged frame and fixes its header checksum.
fn ip_len(mut f: Vec<u8>, len: usize) -> Vec<u8> {
    f[16..18].copy_from_slice(&(len as u16).to_be_bytes());
    xdplb_tests::packet::fix_ip_checksum(&mut f);
    f
}

fn cases() -> Vec<Case> {
    let b = |f: &Frame| f.bytes();
    let c_init = init(CLIENT, 5000, CLUSTER_IP, SVC_PORT);
    let c_data = data(CLIENT, 5000, CLUSTER_IP, SVC_PORT, b"CER");
    let init_ack = Frame::sctp(B1, TARGET_PORT, CLIENT, 5000, 0x0c11_e4a7, SCTP_INIT_ACK)
        .payload(&sctp_init_value(0x5e4e_7a90));
    let np_init = init(CLIENT, 5001, NODE, NODE_PORT);
    let np_reply = data(B1, TARGET_PORT, CLIENT, 5001, b"CEA");
    let same = data(CLIENT, 5003, DNS_IP, SAME_PORT, b"ASPUP");
    let pod_init = with_crc(init(POD, 6000, CLUSTER_IP, SVC_PORT), SctpCrc::Offloaded);
    let pod_reply = with_crc(
        Frame::sctp(B1, TARGET_PORT, POD, 6000, 0x0c11_e4a7, SCTP_INIT_ACK).payload(&sctp_init_value(1)),
        SctpCrc::Offloaded,
    );
    let pod_data = data(POD, 6001, CLUSTER_IP, SVC_PORT, b"complete");
    let corrupt = with_crc(
        data(CLIENT, 5002, CLUSTER_IP, SVC_PORT, b"bit flip"),
        SctpCrc::Corrupt(0x0001_0000),
    );
    let cut =
        |f: &Frame, sctp_len: usize| ip_len(b(f)[..14 + 20 + sctp_len].to_vec(), 20 + sctp_len);
    let empty = init(POD, 6002, EMPTY_IP, SVC_PORT);
    let node_init = init(NODE, 40000, CLUSTER_IP, SVC_PORT);
    let node_empty = init(NODE, 40003, EMPTY_IP, SVC_PORT);
    let node_data = data(NODE, 40001, CLUSTER_IP, SVC_PORT, b"no flow");
    let node_direct = init(NODE, 40002, B1, TARGET_PORT);
    let c = Case::new;
    vec![
        c("xdp_v4_sctp_init_to_clusterip_dnat_crc_updated", "an INIT to a ClusterIP: address and port rewritten (3868 -> 3869), the CRC32c updated to the rewritten packet's", "xdp_lb", &b(&c_init), "XDP_PASS", Some(&b(&to(c_init.clone(), B1, TARGET_PORT)))),
        c("xdp_v4_sctp_established_data_same_backend", "DATA on the established association goes to the same backend, CRC32c valid", "xdp_lb", &b(&c_data), "XDP_PASS", Some(&b(&to(c_data.clone(), B1, TARGET_PORT)))),
        c("tc_egress_v4_sctp_init_ack_reverse_nat", "the backend's INIT ACK leaves from the ClusterIP and service port, CRC32c valid", "tc_egress", &b(&init_ack), "TC_ACT_OK", Some(&b(&from(init_ack.clone(), CLUSTER_IP, SVC_PORT)))),
        c("xdp_v4_sctp_nodeport_dnat", "an INIT to a NodePort (30868 -> 3869)", "xdp_lb", &b(&np_init), "XDP_PASS", Some(&b(&to(np_init.clone(), B1, TARGET_PORT)))),
        c("tc_egress_v4_sctp_nodeport_reply", "the NodePort association's reply gets the node address and NodePort back", "tc_egress", &b(&np_reply), "TC_ACT_OK", Some(&b(&from(np_reply.clone(), NODE, NODE_PORT)))),
        c("xdp_v4_sctp_same_port_address_only", "a backend on the service's own port: only the address changes, which the CRC32c does not cover", "xdp_lb", &b(&same), "XDP_PASS", Some(&b(&to(same.clone(), B2, SAME_PORT)))),
        c("tc_ingress_v4_sctp_pod_offloaded_crc_stays_zero", "a pod's INIT with its CRC32c offloaded (field zero): ports rewritten, the field left zero for the kernel to compute", "tc_ingress", &b(&pod_init), "TC_ACT_OK", Some(&b(&to(pod_init.clone(), B1, TARGET_PORT)))),
        c("tc_egress_v4_sctp_reply_to_pod_offloaded", "the backend's offloaded INIT ACK to the pod: source rewritten, field left zero", "tc_egress", &b(&pod_reply), "TC_ACT_OK", Some(&b(&from(pod_reply.clone(), CLUSTER_IP, SVC_PORT)))),
        c("tc_ingress_v4_sctp_pod_complete_crc_updated", "a pod's DATA with a complete CRC32c (no offload): updated in the socket buffer", "tc_ingress", &b(&pod_data), "TC_ACT_OK", Some(&b(&to(pod_data.clone(), B1, TARGET_PORT)))),
        c("xdp_v4_sctp_bad_crc_stays_bad", "a corrupt CRC32c is not validated: updated by the same delta, it stays exactly as corrupt for the endpoint to drop", "xdp_lb", &b(&corrupt), "XDP_PASS", Some(&b(&to(corrupt.clone(), B1, TARGET_PORT)))),
        c("xdp_v4_sctp_common_header_cut_drops", "10 bytes of SCTP common header, the total length saying so", "xdp_lb", &cut(&c_init, 10), "XDP_DROP", None),
        c("xdp_v4_sctp_without_chunk_drops", "a 12-byte common header and no chunk", "xdp_lb", &cut(&c_init, 12), "XDP_DROP", None),
        c("tc_ingress_v4_sctp_common_header_cut_passes", "tc: a cut SCTP header is passed unchanged, not balanced", "tc_ingress", &cut(&pod_data, 10), "TC_ACT_OK", None),
        c("xdp_v4_sctp_to_service_without_backend_drops", "SCTP to a service without backends from outside is dropped (like UDP)", "xdp_lb", &b(&init(CLIENT, 5004, EMPTY_IP, SVC_PORT)), "XDP_DROP", None),
        c("tc_ingress_v4_sctp_pod_without_backend_gets_port_unreachable", "from a pod it is refused: ICMP port unreachable quoting the ports and verification tag, back out of the pod's interface", "tc_ingress", &b(&empty), "TC_ACT_REDIRECT", Some(&port_unreachable(&b(&empty)))),
        c("tc_egress_v4_sctp_node_init_to_clusterip_aborted", "the node's own INIT to a ClusterIP (no socket program sees SCTP) is answered with an ABORT carrying its initiate tag, delivered back into the node", "tc_egress", &b(&node_init), "TC_ACT_REDIRECT", Some(&abort_for(&b(&node_init)))),
        c("tc_egress_v4_sctp_node_init_to_service_without_backend_aborted", "the same for a service without backends", "tc_egress", &b(&node_empty), "TC_ACT_REDIRECT", Some(&abort_for(&b(&node_empty)))),
        c("tc_egress_v4_sctp_node_data_without_flow_passes", "only an INIT is answered: other chunks to a service address leave unchanged", "tc_egress", &b(&node_data), "TC_ACT_OK", Some(&b(&node_data))),
        c("tc_egress_v4_sctp_node_init_to_backend_passes", "the node's INIT to a backend's own address is not a service's: unchanged", "tc_egress", &b(&node_direct), "TC_ACT_OK", Some(&b(&node_direct))),
    ]
}

#[test]
fn fixture_file_is_current() {
    fixture::check_current(FILE, &cases());
}

/// The expected frames say what the cases claim about the CRC field.
#[test]
fn the_expected_crcs_are_what_the_cases_claim() {
    let file = fixture::load(FILE);
    let get = |name: &str| {
        let (i, o) = fixture::frames(&file, name);
        let crc = |f: &[u8]| f[14 + 20 + 8..14 + 20 + 12].to_vec();
        (crc(&i), crc(&o), o)
    };
    let (i, o, _) = get("xdp_v4_sctp_init_to_clusterip_dnat_crc_updated");
    assert_ne!(i, o, "a port change changes the CRC32c");
    let (i, o, _) = get("xdp_v4_sctp_same_port_address_only");
    assert_eq!(i, o, "an address change alone does not");
    let (i, o, _) = get("tc_ingress_v4_sctp_pod_offloaded_crc_stays_zero");
    assert_eq!((i, o), (vec![0; 4], vec![0; 4]));
    let (_, o, frame) = get("xdp_v4_sctp_bad_crc_stays_bad");
    let good = u32::from_le_bytes(sctp_crc(&frame[34..]));
    assert_eq!(
        u32::from_le_bytes(o.try_into().unwrap()) ^ good,
        0x0001_0000,
        "the same bit still flipped"
    );
}

#[test]
fn sctp_fixtures() {
    let mut lb = Lb::load();
    lb.program(&contents(&services()));
    let file = fixture::load(FILE);
    fixture::check_all("SCTP", &file, |c| {
        // Its output must stay corrupt.
        if c.name.contains("bad_crc") {
            return fixture::run_corrupt(&lb.ebpf, c);
        }
        fixture::run(&lb.ebpf, c)
    });
    // Port changes with a complete CRC: client INIT, DATA, INIT ACK, NodePort
    // INIT and reply, the pod's complete DATA, the corrupt one. Offloaded:
    // the pod's INIT and its INIT ACK.
    assert_eq!(lb.counter(counter::SCTP_CRC_UPDATED), 7);
    assert_eq!(lb.counter(counter::SCTP_CRC_OFFLOADED), 2);
    assert_eq!(lb.counter(counter::DROP_MALFORMED), 3);
    assert_eq!(lb.counter(counter::UNREACH_SENT), 1);
    assert_eq!(lb.counter(counter::SCTP_NODE_ABORTED), 2, "the node's INITs to the ClusterIP and to the service without backends");
    assert_eq!(
        lb.maps.service_stats(1).unwrap().new_flows,
        4,
        "client, pod, pod DATA, corrupt"
    );
    assert_eq!(lb.maps.service_stats(4).unwrap().drops_no_backend, 2);
}

fn lifecycle_lb() -> Lb {
    let mut lb = Lb::load();
    let mut svc = Svc::new(1, IPPROTO_SCTP, algorithm::ROUND_ROBIN).frontend(CLUSTER_IP, SVC_PORT);
    for i in 0..3u8 {
        svc = svc.backend(i as u32 + 1, Ipv4Addr::new(10, 0, 2, 11 + i), TARGET_PORT);
    }
    lb.program(&contents(&[svc]));
    lb
}

fn backend_of(lb: &Lb, f: &Frame) -> u8 {
    let (rc, out) = fixture::run_frame(&lb.ebpf, "xdp_lb", &f.bytes()).unwrap();
    assert_eq!(rc, 2, "XDP_PASS");
    xdplb_tests::packet::verify_checksums(&out).unwrap();
    out[14 + 19]
}

#[test]
fn an_init_after_abort_starts_a_new_association_but_a_retransmitted_init_does_not() {
    let lb = lifecycle_lb();
    let chunk = |t: u8| {
        Frame::sctp(CLIENT, 7000, CLUSTER_IP, SVC_PORT, 0x1111_2222, t).payload(&sctp_init_value(9))
    };
    let first = backend_of(&lb, &chunk(SCTP_INIT));
    assert_eq!(
        backend_of(&lb, &chunk(SCTP_INIT)),
        first,
        "a retransmitted INIT stays"
    );
    assert_eq!(backend_of(&lb, &chunk(SCTP_DATA)), first);
    assert_eq!(
        backend_of(&lb, &chunk(SCTP_ABORT)),
        first,
        "the ABORT still reaches the association's backend"
    );
    let next = backend_of(&lb, &chunk(SCTP_INIT));
    assert_ne!(
        next, first,
        "an INIT on an aborted association's tuple is a new flow (round-robin moves on)"
    );
    let flows = lb.maps.flows().unwrap();
    assert!(
        flows.iter().all(|(k, _)| k.proto == IPPROTO_SCTP),
        "conntrack keys carry protocol 132"
    );
    assert_eq!(lb.maps.service_stats(1).unwrap().new_flows, 2);
}

/// Node B and a pod on it (10.244.2.0/24 is routed via node B).
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);
const NODE_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
const SNAT_PORT: u16 = 61000;

/// An uplink `up0` (NODE, NODE_MAC) in a namespace of its own, with node B
/// and the client as permanent neighbours, so the XDP program's FIB lookup
/// (and so its output MACs and verdict) is deterministic; the test thread
/// enters it.
struct Uplink {
    _node: Netns,
    _wire: Netns,
    ifindex: u32,
}

impl Uplink {
    fn enter() -> Self {
        let (node, wire) = (Netns::new(), Netns::new());
        node.sysctl("net.ipv4.ip_forward", "1");
        veth(&node, "up0", &wire, "eth0");
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        node.ip(&["link", "set", "up0", "address", &mac(NODE_MAC)]);
        addr_up(&node, "up0", "192.168.1.1/24");
        wire.ip(&["link", "set", "eth0", "up"]);
        node.ip(&["route", "add", "10.244.2.0/24", "via", &NODE_B.to_string()]);
        for (addr, m) in [(NODE_B, NODE_B_MAC), (CLIENT, CLIENT_MAC)] {
            node.ip(&[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &mac(m),
                "dev",
                "up0",
                "nud",
                "permanent",
            ]);
        }
        let ifindex = node.ifindex("up0");
        let f = std::fs::File::open(format!("/run/netns/{}", node.name())).expect("namespace file");
        netns::enter(&f);
        Self {
            _node: node,
            _wire: wire,
            ifindex,
        }
    }
}

/// `f` as XDP forwards it out of the uplink: TTL one less, MACs set.
fn forwarded(mut f: Frame, to: [u8; 6]) -> Frame {
    f.ttl -= 1;
    (f.src_mac, f.dst_mac) = (NODE_MAC, to);
    f
}

#[test]
fn sctp_to_a_pod_on_another_node_is_snated_never_dsr_with_its_crc_updated_both_ways() {
    let up = Uplink::enter();
    let mut lb = Lb::load();
    lb.program(&contents(&[Svc::new(1, IPPROTO_SCTP, algorithm::RANDOM)
        .frontend(NODE, NODE_PORT)
        .remote_backend(1, POD_B, TARGET_PORT)]));
    lb.maps
        .set_nat_config(&NatConfig {
            addr: NODE.octets(),
            port_min: SNAT_PORT,
            port_max: SNAT_PORT,
        })
        .unwrap();
    // DSR for TCP and UDP: SCTP still takes SNAT.
    lb.maps
        .set_config(&Config {
            flags: config_flags::DSR_TCP | config_flags::DSR_UDP,
            ..Default::default()
        })
        .unwrap();
    let xdp = |f: &Frame| {
        fixture::run_frame_on(&lb.ebpf, "xdp_lb", &f.bytes(), Some(up.ifindex)).unwrap()
    };
    const XDP_TX: u32 = 3;

    let init = init(CLIENT, 5000, NODE, NODE_PORT);
    let (rc, out) = xdp(&init);
    let want = forwarded(
        to(from(init.clone(), NODE, SNAT_PORT), POD_B, TARGET_PORT),
        NODE_B_MAC,
    )
    .bytes();
    assert_eq!(
        (rc, &out),
        (XDP_TX, &want),
        "SNAT: source node:61000, destination the pod\n{}",
        xdplb_tests::packet::hex_diff(&out, &want)
    );
    xdplb_tests::packet::verify_checksums(&out).unwrap();

    let mut ack = Frame::sctp(
        POD_B,
        TARGET_PORT,
        NODE,
        SNAT_PORT,
        0x0c11_e4a7,
        SCTP_INIT_ACK,
    )
    .payload(&sctp_init_value(0x5e4e_7a90));
    (ack.src_mac, ack.dst_mac) = (NODE_B_MAC, NODE_MAC);
    let (rc, out) = xdp(&ack);
    let want = forwarded(
        to(from(ack.clone(), NODE, NODE_PORT), CLIENT, 5000),
        CLIENT_MAC,
    )
    .bytes();
    assert_eq!(
        (rc, &out),
        (XDP_TX, &want),
        "the reply back to the client from the NodePort\n{}",
        xdplb_tests::packet::hex_diff(&out, &want)
    );
    xdplb_tests::packet::verify_checksums(&out).unwrap();

    assert_eq!(
        (
            lb.counter(counter::SNAT_NEW),
            lb.counter(counter::DSR_FORWARD)
        ),
        (1, 0)
    );
    assert_eq!(lb.counter(counter::SCTP_CRC_UPDATED), 2, "both ways");
    assert!(
        !lb_common::dsr::uses_dsr(
            0,
            config_flags::DSR_TCP | config_flags::DSR_UDP,
            IPPROTO_SCTP
        ),
        "explain decides the same"
    );
}
