//! tc egress's reply-port filter (`lb-ebpf/src/replies.rs`,
//! `lb_agent::replyports`): a packet whose source port no backend has is
//! passed without a conntrack lookup, counted as before; a backend's port is
//! marked before the backend is written, so the replies of a backend added
//! a moment ago are rewritten. Byte-exact, through BPF_PROG_TEST_RUN. Needs
//! root. (DSR replies, whose backend this node may not know:
//! `dsr.rs`; the outcome counters of random frames: `fuzz_frames.rs`.)
use std::net::Ipv4Addr;

use lb_common::{algorithm, counter, direction, FlowKeyV4, FlowV4, IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::{
    fixture::{
        self,
        story::{B1, CLIENT, CLUSTER_IP},
        story6,
    },
    lb::Lb,
    packet::{Frame, TCP_ACK, TCP_SYN},
    packet6::Frame6,
    services::{contents, program_v6, Svc, Svc6},
};

/// A second ClusterIP, for the service whose backend is added later.
const CLUSTER_IP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const B3: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 13);

fn run(lb: &Lb, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
    fixture::run_frame(&lb.ebpf, prog, frame).unwrap()
}

fn marked(lb: &Lb, port: u16) -> bool {
    lb.maps.reply_ports.as_ref().expect("reply_ports pinned").is_marked(port.to_be_bytes())
}

/// The counters `tc_egress` raised for one frame: (outcome counters that
/// moved, with their rise), `packets` excluded.
fn counted(lb: &Lb, prog: &str, frame: &[u8]) -> (u32, Vec<u8>, Vec<(&'static str, u64)>) {
    let before = lb.maps.counters().unwrap();
    let (rc, out) = run(lb, prog, frame);
    let after = lb.maps.counters().unwrap();
    assert_eq!(after[counter::PACKETS as usize] - before[counter::PACKETS as usize], 1, "one packet counted");
    let moved = (1..counter::COUNT as usize).filter(|&i| after[i] != before[i]).map(|i| (counter::LABELS[i], after[i] - before[i])).collect();
    (rc, out, moved)
}

/// CLOCK_MONOTONIC_COARSE, the programs' clock (`bpf_ktime_get_coarse_ns`).
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn the_replies_of_a_backend_added_a_moment_ago_are_rewritten() {
    let mut lb = Lb::load();
    let svc = Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).backend(1, B1, 8080);
    lb.program(&contents(std::slice::from_ref(&svc)));
    assert!(marked(&lb, 8080) && !marked(&lb, 9090), "the programmed backend's port only");
    // A second service whose only backend listens on a port no backend had.
    let added = Svc::new(2, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP2, 81).backend(3, B3, 9090);
    lb.program(&contents(&[svc, added]));
    assert!(marked(&lb, 9090), "marked by the agent's apply, with the backend");

    let syn = Frame::tcp(CLIENT, 40000, CLUSTER_IP2, 81, TCP_SYN).bytes();
    let (rc, out) = run(&lb, "xdp_lb", &syn);
    assert_eq!((rc, out), (2, Frame::tcp(CLIENT, 40000, B3, 9090, TCP_SYN).bytes()), "XDP_PASS, to the new backend");
    let synack = Frame::tcp(B3, 9090, CLIENT, 40000, TCP_SYN | TCP_ACK).bytes();
    let (rc, out, moved) = counted(&lb, "tc_egress", &synack);
    assert_eq!((rc, out), (0, Frame::tcp(CLUSTER_IP2, 81, CLIENT, 40000, TCP_SYN | TCP_ACK).bytes()), "its SYN-ACK leaves from the service");
    assert_eq!(moved, [("nat_reply", 1)]);
}

#[test]
fn a_packet_from_a_port_no_backend_has_skips_conntrack() {
    let mut lb = Lb::load();
    lb.program(&contents(&[Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).backend(1, B1, 8080)]));
    // A reply half planted for a port nothing marked: only a lookup finds it.
    let key = FlowKeyV4 { src_addr: B1.octets(), dst_addr: CLIENT.octets(), src_port: 7070u16.to_be_bytes(), dst_port: 40000u16.to_be_bytes(), proto: IPPROTO_TCP, _pad: [0; 3] };
    let mut half = FlowV4::default();
    (half.backend_id, half.service_id, half.direction) = (1, 1, direction::REPLY);
    (half.nat_addr, half.nat_port, half.peer_addr, half.peer_port) = (CLUSTER_IP.octets(), 80u16.to_be_bytes(), CLIENT.octets(), 40000u16.to_be_bytes());
    (half.created_ns, half.last_seen_ns) = (now_ns(), now_ns());
    lb.maps.v4.conntrack.insert(key, half, 0).unwrap();
    assert!(!marked(&lb, 7070));

    let reply = Frame::tcp(B1, 7070, CLIENT, 40000, TCP_ACK).payload(b"hello").bytes();
    let (rc, out, moved) = counted(&lb, "tc_egress", &reply);
    assert_eq!((rc, &out), (0, &reply), "passed untouched");
    assert_eq!(moved, [("pass_not_service", 1)], "counted as a packet that is no reply");
    assert_eq!(lb.maps.v4.conntrack.get(&key, 0).unwrap().packets, 0, "the entry was not looked up");

    // Once the port is marked, the same packet is found and rewritten.
    lb.maps.reply_ports.as_ref().unwrap().mark(7070u16.to_be_bytes());
    let (rc, out, moved) = counted(&lb, "tc_egress", &reply);
    assert_eq!((rc, out), (0, Frame::tcp(CLUSTER_IP, 80, CLIENT, 40000, TCP_ACK).payload(b"hello").bytes()));
    assert_eq!(moved, [("nat_reply", 1)]);
    assert_eq!(lb.maps.v4.conntrack.get(&key, 0).unwrap().packets, 1);
}

/// A frame, what it is, and the outcome counters it must raise.
type Counted = (&'static str, Vec<u8>, &'static [(&'static str, u64)]);

#[test]
fn packets_that_are_no_replies_are_counted_as_the_full_path_counts_them() {
    let mut lb = Lb::load();
    lb.program(&contents(&[Svc::new(1, IPPROTO_UDP, algorithm::RANDOM).frontend(CLUSTER_IP, 53).backend(1, B1, 5353)]));
    program_v6(&mut lb.ebpf, &[Svc6 { id: 2, proto: IPPROTO_TCP, algorithm: algorithm::RANDOM, frontends: vec![(story6::CLUSTER_IP, 80)], backends: vec![(2, story6::B1, 8080)] }]);
    assert!(marked(&lb, 5353) && marked(&lb, 8080), "both families' backend ports");
    let cases: [Counted; 6] = [
        // Skipped by the filter.
        ("IPv4 TCP", Frame::tcp(CLIENT, 40000, B1, 443, TCP_SYN).bytes(), &[("pass_not_service", 1)]),
        ("IPv4 UDP", Frame::udp(CLIENT, 40000, B1, 53).payload(b"q").bytes(), &[("pass_not_service", 1)]),
        ("IPv6 TCP", Frame6::tcp(story6::CLIENT, 40000, story6::B1, 443, TCP_SYN).bytes(), &[("pass_not_service", 1), ("ipv6_packets", 1)]),
        // The full path: a marked port, no flow.
        ("IPv4 UDP from a backend port", Frame::udp(B1, 5353, CLIENT, 40000).payload(b"a").bytes(), &[("pass_not_service", 1)]),
        ("IPv6 TCP from a backend port", Frame6::tcp(story6::B1, 8080, story6::CLIENT, 40000, TCP_ACK).bytes(), &[("pass_not_service", 1), ("ipv6_packets", 1)]),
        // IPv6 UDP without checksum: never skipped, counted by the parser.
        ("IPv6 UDP, checksum 0", {
            let mut f = Frame6::udp(story6::CLIENT, 40000, story6::B1, 53).payload(b"q").bytes();
            f[60..62].copy_from_slice(&[0, 0]);
            f
        }, &[("drop_udp6_zero_checksum", 1), ("ipv6_packets", 1)]),
    ];
    for (what, frame, want) in cases {
        let (rc, out, mut moved) = counted(&lb, "tc_egress", &frame);
        moved.sort();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!((rc, &out, moved), (0, &frame, want), "{what}: passed untouched, counted so");
    }
}

/// An upgrade from a version without `reply_ports`: loading marks the ports
/// of the backends already pinned, before any program of the new build is
/// attached, so the replies of live flows keep being rewritten.
#[test]
fn loading_over_pinned_backends_marks_their_ports() {
    let mut lb = Lb::load();
    lb.program(&contents(&[Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).backend(1, B1, 9191)]));
    // As an earlier version left the pins: no reply_ports.
    std::fs::remove_file(lb.pin_dir().join(lb_common::maps::REPLY_PORTS)).unwrap();
    let _new = lb_agent::loader::load(lb.pin_dir(), xdplb_tests::lb::TEST_SIZES).unwrap();
    let dp = lb_agent::dataplane::Dataplane::open(lb.pin_dir()).unwrap();
    let ports = dp.reply_ports.as_ref().expect("pinned by the load");
    assert!(ports.is_marked(9191u16.to_be_bytes()), "the pinned backend's port");
    assert_eq!(ports.count(), 1, "and nothing else");
}
