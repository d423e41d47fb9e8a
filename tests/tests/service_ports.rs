//! XDP's service-port gate (`lb-ebpf/src/gate.rs`, `lb_agent::serviceports`):
//! a packet whose destination port no frontend has is passed before the
//! service lookup and conntrack, counted as the full path counts it; a
//! frontend's port is marked before the frontend is written and cleared
//! after the last frontend on it (either family) is gone; a restart keeps
//! the bits. Byte-exact through BPF_PROG_TEST_RUN, and with the real agent
//! and real TCP connections. Needs root. (SNAT replies, which come back to
//! unmarked ports: `snat.rs`, `snat_v6.rs`; DSR packets: `dsr.rs`,
//! `dsr_v6.rs`; random frames: `fuzz_frames.rs`.)
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use lb_agent::diff::MapContents;
use lb_common::{algorithm, counter, Addr6, BackendV6, ServiceKeyV6, ServiceV4, SlotKey, IPPROTO_SCTP, IPPROTO_TCP};
use xdplb_tests::{
    agent::{objects_dir, programmed, programmed_at, write, Agent, WEB_CLUSTER_IP},
    fixture::{
        self,
        story::{B1, CLIENT, CLUSTER_IP, NODE},
        story6,
    },
    lb::Lb,
    packet::{icmp_error, Frame, TCP_SYN},
    packet6::Frame6,
    servers::{tally, Server},
    services::{contents, Svc},
    topology::Topology,
    wait_for,
};

fn marked(lb: &Lb, port: u16) -> bool {
    lb.maps.service_ports.as_ref().expect("service_ports pinned").is_marked(port.to_be_bytes())
}

/// Runs `frame` through `xdp_lb`: verdict, output, and the counters that
/// moved (with their rise).
fn counted(lb: &Lb, frame: &[u8]) -> (u32, Vec<u8>, Vec<(&'static str, u64)>) {
    let before = lb.maps.counters().unwrap();
    let (rc, out) = fixture::run_frame(&lb.ebpf, "xdp_lb", frame).unwrap();
    let after = lb.maps.counters().unwrap();
    let moved = (0..counter::COUNT as usize).filter(|&i| after[i] != before[i]).map(|i| (counter::LABELS[i], after[i] - before[i])).collect();
    (rc, out, moved)
}

fn flows(lb: &Lb) -> usize {
    lb.maps.flows().unwrap().len()
}

#[test]
fn a_frontend_whose_port_is_not_marked_is_never_looked_up() {
    let mut lb = Lb::load();
    let svc = Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).backend(1, B1, 8080);
    lb.program(&contents(std::slice::from_ref(&svc)));
    assert!(marked(&lb, 80) && !marked(&lb, 7070), "the programmed frontend's port only");
    // A frontend planted on a port nothing marked: only a lookup finds it.
    let key = lb_common::ServiceKeyV4 { addr: CLUSTER_IP.octets(), port: 7070u16.to_be_bytes(), proto: IPPROTO_TCP, scope: 0 };
    lb.maps.v4.services.insert(key, ServiceV4 { id: 1, count: 1, algorithm: algorithm::RANDOM, ..Default::default() }, 0).unwrap();

    let syn = Frame::tcp(CLIENT, 40000, CLUSTER_IP, 7070, TCP_SYN).bytes();
    let (rc, out, moved) = counted(&lb, &syn);
    assert_eq!((rc, &out), (2, &syn), "XDP_PASS, untouched");
    assert_eq!(moved, [("packets", 1), ("pass_not_service", 1)], "counted as a packet no service has");
    assert_eq!(flows(&lb), 0, "no conntrack entry: the service was not looked up");

    // Once its port is marked, the same SYN is balanced.
    lb.maps.service_ports.as_ref().unwrap().mark(7070u16.to_be_bytes());
    let (rc, out, moved) = counted(&lb, &syn);
    assert_eq!((rc, out), (2, Frame::tcp(CLIENT, 40000, B1, 8080, TCP_SYN).bytes()), "DNAT to the backend");
    assert_eq!(moved, [("packets", 1), ("nat_forward", 1)]);
    assert_eq!(flows(&lb), 2, "both halves of the new flow");
}

/// What a frame is, (its destination port, its bytes), and the counters
/// it must raise (none listed: only that both paths agree).
type Case = (&'static str, (u16, Vec<u8>), &'static [(&'static str, u64)]);

/// Every kind of packet to a port no frontend has gets the same verdict,
/// output and counters whether the gate passes it or the full path runs
/// (its port marked for the second run).
#[test]
fn packets_to_unmarked_ports_end_as_the_full_path_ends_them() {
    let mut lb = Lb::load();
    lb.program(&contents(&[Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).backend(1, B1, 8080)]));
    let bits = lb.maps.service_ports.as_ref().unwrap();
    let v4 = |f: Frame| (f.dport, f.bytes());
    let v6 = |f: Frame6| (f.dport, f.bytes());
    let mut truncated = Frame::tcp(CLIENT, 40000, NODE, 22, TCP_SYN).bytes();
    truncated.truncate(14 + 20 + 10);
    let mut no_checksum = Frame6::udp(story6::CLIENT, 40000, story6::NODE, 53).payload(b"q").bytes();
    no_checksum[60..62].copy_from_slice(&[0, 0]);
    let quoted = Frame::tcp(NODE, 22, CLIENT, 40000, TCP_SYN);
    let cases: Vec<Case> = vec![
        // Gated.
        ("IPv4 TCP to the node", v4(Frame::tcp(CLIENT, 40000, NODE, 22, TCP_SYN)), &[("packets", 1), ("pass_not_service", 1)]),
        ("IPv4 UDP", v4(Frame::udp(CLIENT, 40000, NODE, 53).payload(b"q")), &[("packets", 1), ("pass_not_service", 1)]),
        ("IPv4 SCTP", v4(Frame::sctp(CLIENT, 40000, NODE, 3868, 7, 1)), &[("packets", 1), ("pass_not_service", 1)]),
        ("IPv4 TCP to a ClusterIP's other port", v4(Frame::tcp(CLIENT, 40000, CLUSTER_IP, 81, TCP_SYN)), &[("packets", 1), ("pass_not_service", 1)]),
        ("IPv6 TCP", v6(Frame6::tcp(story6::CLIENT, 40000, story6::NODE, 22, TCP_SYN)), &[("packets", 1), ("pass_not_service", 1), ("ipv6_packets", 1)]),
        ("IPv6 UDP", v6(Frame6::udp(story6::CLIENT, 40000, story6::NODE, 53).payload(b"q")), &[("packets", 1), ("pass_not_service", 1), ("ipv6_packets", 1)]),
        ("IPv6 SCTP", v6(Frame6::sctp(story6::CLIENT, 40000, story6::NODE, 3868, 7, 1)), &[("packets", 1), ("pass_not_service", 1), ("ipv6_packets", 1)]),
        // Not gated: the full path decides either way.
        ("IPv4 TCP, truncated", (22, truncated), &[("packets", 1), ("drop_malformed", 1)]),
        ("IPv6 UDP without checksum", (53, no_checksum), &[("packets", 1), ("drop_udp6_zero_checksum", 1), ("ipv6_packets", 1)]),
        ("IPv4 ICMP error (no ports)", (22, icmp_error(&quoted, CLIENT, NODE, 3, 3, [0; 4], &quoted)), &[]),
    ];
    for (what, (port, frame), want) in cases {
        assert!(!bits.is_marked(port.to_be_bytes()), "{what}: port {port} unmarked");
        let gated = counted(&lb, &frame);
        bits.mark(port.to_be_bytes());
        let full = counted(&lb, &frame);
        bits.unmark(port.to_be_bytes());
        assert_eq!(gated, full, "{what}: the gate and the full path agree");
        if !want.is_empty() {
            let (rc, out, mut moved) = gated;
            moved.sort();
            let mut want = want.to_vec();
            want.sort();
            let rc_want = if want.iter().any(|(c, _)| c.starts_with("drop")) { 1 } else { 2 };
            assert_eq!((rc, &out, moved), (rc_want, &frame, want), "{what}");
        }
    }
    assert_eq!(flows(&lb), 0);
}

/// The agent's apply: a port goes when the last frontend on it goes, of
/// either family; a port some frontend keeps stays.
#[test]
fn a_port_is_cleared_only_after_its_last_frontend_of_either_family() {
    let mut lb = Lb::load();
    let web = |ports: &[u16]| {
        let mut s = Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).backend(1, B1, 8080);
        for &p in ports {
            s = s.frontend(CLUSTER_IP, p);
        }
        contents(&[s])
    };
    let mut v6 = MapContents::<Addr6>::default();
    v6.services.insert(ServiceKeyV6 { addr: story6::CLUSTER_IP.octets(), port: 443u16.to_be_bytes(), proto: IPPROTO_SCTP, scope: 0 }, ServiceV4 { id: 2, count: 1, algorithm: algorithm::RANDOM, ..Default::default() });
    v6.backends.insert(2, BackendV6 { addr: story6::B1.octets(), port: 8443u16.to_be_bytes(), weight: 1, ..Default::default() });
    v6.slots.insert(SlotKey { service_id: 2, slot: 1 }, 2);

    lb.program(&web(&[80, 443, 8443]));
    lb.program(&v6);
    let bits = lb.maps.service_ports.as_ref().unwrap();
    assert_eq!((bits.count(), marked(&lb, 80), marked(&lb, 443), marked(&lb, 8443)), (3, true, true, true));
    lb.program(&web(&[80]));
    assert!(marked(&lb, 443), "IPv6 SCTP still has 443");
    assert!(!marked(&lb, 8443), "no frontend has 8443 any more (a backend port is not a frontend's)");
    lb.program(&MapContents::<Addr6>::default());
    assert!(!marked(&lb, 443) && marked(&lb, 80));
    lb.program(&web(&[]));
    assert_eq!(lb.maps.service_ports.as_ref().unwrap().count(), 0, "nothing left");
}

/// An upgrade from a version without `service_ports`: loading marks the
/// ports of the frontends already pinned before any program is attached.
#[test]
fn loading_over_pinned_frontends_marks_their_ports() {
    let mut lb = Lb::load();
    lb.program(&contents(&[Svc::new(1, IPPROTO_TCP, algorithm::RANDOM).frontend(CLUSTER_IP, 80).frontend(NODE, 30080).backend(1, B1, 8080)]));
    std::fs::remove_file(lb.pin_dir().join(lb_common::maps::SERVICE_PORTS)).unwrap();
    let _new = lb_agent::loader::load(lb.pin_dir(), xdplb_tests::lb::TEST_SIZES).unwrap();
    let dp = lb_agent::dataplane::Dataplane::open(lb.pin_dir()).unwrap();
    let bits = dp.service_ports.as_ref().expect("pinned by the load");
    assert!(bits.is_marked(80u16.to_be_bytes()) && bits.is_marked(30080u16.to_be_bytes()));
    assert_eq!(bits.count(), 2, "and nothing else");
}

/// `shop/api`: ClusterIP 10.96.0.20, ports 81 and 80 → 8080 on backend-0.
const API_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const API: &str = "apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: a, port: 81, targetPort: 8080, protocol: TCP}
  - {name: b, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: shop
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports:
- {name: a, port: 8080, protocol: TCP}
- {name: b, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.0.2.11]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-0
";

/// The real agent, real connections through XDP on the uplink: a
/// Service's port is marked when it comes (its connections are balanced),
/// cleared when it goes unless another Service has it, and a restarted
/// agent keeps the bits and the balancing.
#[test]
fn the_agent_marks_ports_as_services_come_and_go_and_a_restart_keeps_them() {
    let t = Topology::new(1);
    let _server = Server::start(&t.backends[0], 8080, "backend-0");
    let dir = objects_dir(&[0]);
    let mut agent = Agent::start(&t.node, &dir);
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(20), || programmed(&dp).is_some_and(|(c, _)| c == 1)), "{}", agent.log());
    let bits = |dp: &lb_agent::dataplane::Dataplane, port: u16| dp.service_ports.as_ref().expect("service_ports").is_marked(port.to_be_bytes());
    assert_eq!((bits(&dp, 80), bits(&dp, 30080), bits(&dp, 81)), (true, true, false), "web's ClusterIP and NodePort ports");
    let via = |to: SocketAddr| t.client.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()).map_err(|e| e.kind()));

    write(&dir, "api.yaml", API);
    assert!(wait_for(Duration::from_secs(20), || programmed_at(&dp, API_IP, 81, 6).is_some()), "{}", agent.log());
    assert!(bits(&dp, 81), "marked with the new frontend");
    assert_eq!(tally(&t.client, SocketAddr::from((API_IP, 81)), 3).get("backend-0"), Some(&3), "balanced through XDP");

    std::fs::remove_file(dir.join("api.yaml")).unwrap();
    assert!(wait_for(Duration::from_secs(20), || programmed_at(&dp, API_IP, 81, 6).is_none()), "{}", agent.log());
    assert_eq!((bits(&dp, 81), bits(&dp, 80)), (false, true), "81 cleared; 80 is still web's");
    assert!(via(SocketAddr::from((API_IP, 81))).is_err(), "the removed service no longer answers");

    agent.restart(&t.node);
    let dp = agent.maps();
    assert_eq!((bits(&dp, 80), bits(&dp, 30080), bits(&dp, 81)), (true, true, false), "the restarted agent keeps the bits");
    assert_eq!(tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), 3).get("backend-0"), Some(&3), "and the balancing");
    agent.assert_alive();
}
