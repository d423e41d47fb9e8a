//! `lb-agent explain` agrees with real packets: every case runs through the
//! real programs (BPF_PROG_TEST_RUN on `xdp_lb` for external clients,
//! `tc_ingress` for pods) and is explained against the same maps, before
//! and after; the verdicts and backends must match. Needs root.
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_agent::explain::{explain_pinned, Action, Origin, Query};
use lb_common::{algorithm, service_flags, ServiceKeyV4, SourceRangeV4, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::observe::observed;
use xdplb_tests::{
    fixture::run_frame,
    lb::Lb,
    packet::{Frame, TCP_ACK, TCP_SYN},
    services::{contents, Svc},
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const AFFINITY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const ELSEWHERE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 98);
const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 9);
const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 10 + i)
}

/// Maglev over three backends (an uneven table), round-robin with ClientIP
/// affinity, a backendless TCP service, one whose Local endpoints are all
/// elsewhere, a backendless UDP one, and a LoadBalancer IP with source ranges.
fn lb() -> Lb {
    let mut lb = Lb::load();
    let three = |s: Svc| s.backend(1, backend(1), 8080).backend(2, backend(2), 8080).backend(3, backend(3), 8080);
    let mut want = contents(&[
        three(Svc::new(1, IPPROTO_TCP, algorithm::MAGLEV).frontend(CLUSTER_IP, 80)).table(vec![1, 2, 3, 1, 2, 3, 2, 1, 3, 3, 1]),
        three(Svc::new(2, IPPROTO_TCP, algorithm::ROUND_ROBIN).frontend(AFFINITY_IP, 80)).affinity(60),
        Svc::new(3, IPPROTO_TCP, algorithm::RANDOM).frontend(EMPTY_IP, 80),
        Svc::new(4, IPPROTO_TCP, algorithm::RANDOM).frontend(ELSEWHERE_IP, 80),
        Svc::new(5, IPPROTO_UDP, algorithm::RANDOM).frontend(DNS_IP, 53),
        Svc::new(6, IPPROTO_TCP, algorithm::RANDOM).frontend(LB_IP, 80).backend(2, backend(2), 8080),
        Svc::new(7, IPPROTO_TCP, algorithm::RANDOM).frontend(REMOTE_IP, 80).remote_backend(4, Ipv4Addr::new(10, 0, 9, 5), 8080),
    ]);
    let key = |a: Ipv4Addr| ServiceKeyV4 { addr: a.octets(), port: 80u16.to_be_bytes(), proto: IPPROTO_TCP, scope: 0 };
    want.services.get_mut(&key(ELSEWHERE_IP)).unwrap().flags |= service_flags::LOCAL_ELSEWHERE;
    want.services.get_mut(&key(LB_IP)).unwrap().flags |= service_flags::SOURCE_RANGES;
    want.source_ranges.insert((32 + 24, SourceRangeV4 { service_id: 6u32.to_be_bytes(), addr: [192, 168, 1, 0] }), 1);
    // The ClusterIP refuses its other ports; 10.96.0.0/24 is a service CIDR.
    let refused = lb_common::ServiceV4 { flags: service_flags::UNSERVED_REFUSED, ..Default::default() };
    want.services.insert(ServiceKeyV4::address(CLUSTER_IP.octets()), refused);
    want.source_ranges.insert((32 + 24, SourceRangeV4::service_cidr([10, 96, 0, 0])), 1);
    lb.program(&want);
    lb.maps.set_nat_config(&lb_common::NatConfig { addr: NODE.octets(), port_min: 61000, port_max: 65535 }).unwrap();
    lb
}

struct Checker {
    lb: Lb,
    checked: usize,
}

impl Checker {
    /// Explains `frame` from `origin`, runs it, and compares; when the
    /// explanation names no backend (a choice per flow), only the action is
    /// compared and the backend must be one of the candidates.
    fn check(&mut self, origin: Origin, frame: &Frame) -> (Action, Option<SocketAddrV4>) {
        self.check_full(origin, frame).0
    }

    /// As [`Checker::check`]; also the explanation and the output frame.
    fn check_full(&mut self, origin: Origin, frame: &Frame) -> ((Action, Option<SocketAddrV4>), lb_agent::explain::Explanation, Vec<u8>) {
        let program = if origin == Origin::Pod { "tc_ingress" } else { "xdp_lb" };
        let proto = frame.proto();
        let q = Query { origin, src: frame.src.into(), sport: Some(frame.sport), dst: frame.dst.into(), dport: frame.dport, proto };
        let e = explain_pinned(&self.lb.maps, &q, &Default::default()).expect("reading maps");
        let input = frame.bytes();
        let (rc, out) = run_frame(&self.lb.ebpf, program, &input).expect("test run");
        let got = observed(program, rc, &input, &out);
        let ctx = format!("{program} {}:{} -> {}:{}\n{e}", frame.src, frame.sport, frame.dst, frame.dport);
        assert_eq!(e.verdict.action, got.0, "{ctx}");
        match e.verdict.backend {
            Some(b) => assert_eq!(Some(b), got.1.map(std::net::SocketAddr::V4), "{ctx}"),
            None => {
                if let Some(b) = got.1 {
                    assert!(e.candidates.iter().any(|c| c.addr == std::net::SocketAddr::V4(b)), "{b} is no candidate: {ctx}");
                }
            }
        }
        self.checked += 1;
        (got, e, out)
    }
}

#[test]
fn explain_agrees_with_the_programs_on_every_case() {
    let mut c = Checker { lb: lb(), checked: 0 };
    for (origin, src) in [(Origin::External, CLIENT), (Origin::Pod, POD)] {
        // Maglev: explain computes the dataplane's flow hash; then the
        // established flow (an ACK) keeps the backend.
        let mut spread = std::collections::BTreeSet::new();
        for sport in 41000..41024 {
            let (a, b) = c.check(origin, &Frame::tcp(src, sport, CLUSTER_IP, 80, TCP_SYN));
            assert_eq!(a, Action::Dnat);
            spread.insert(b);
            assert_eq!(c.check(origin, &Frame::tcp(src, sport, CLUSTER_IP, 80, TCP_ACK)).1, b);
        }
        assert_eq!(spread.len(), 3, "the hash spreads over the table: {spread:?}");
        // Affinity: the first flow's choice pins the next ones.
        let (_, first) = c.check(origin, &Frame::tcp(src, 42000, AFFINITY_IP, 80, TCP_SYN));
        for sport in 42001..42004 {
            assert_eq!(c.check(origin, &Frame::tcp(src, sport, AFFINITY_IP, 80, TCP_SYN)).1, first);
        }
        assert_eq!(c.check(origin, &Frame::tcp(src, 43000, EMPTY_IP, 80, TCP_SYN)).0, Action::Reject);
        assert_eq!(c.check(origin, &Frame::tcp(src, 43000, ELSEWHERE_IP, 80, TCP_SYN)).0, Action::Drop);
        // From a pod, what kube-proxy rejects gets an answer (ICMP port
        // unreachable, a reset); XDP on the uplink leaves it to the stack.
        let (refused, unserved) = if origin == Origin::Pod { (Action::Reject, Action::Reject) } else { (Action::Drop, Action::Pass) };
        assert_eq!(c.check(origin, &Frame::udp(src, 43000, DNS_IP, 53)).0, refused, "UDP to a service without backends");
        assert_eq!(c.check(origin, &Frame::tcp(src, 43000, CLUSTER_IP, 81, TCP_SYN)).0, unserved, "a ClusterIP's unserved port");
        assert_eq!(c.check(origin, &Frame::udp(src, 43000, CLUSTER_IP, 80)).0, unserved, "a ClusterIP's unserved protocol");
        let unallocated = if origin == Origin::Pod { Action::Drop } else { Action::Pass };
        assert_eq!(c.check(origin, &Frame::tcp(src, 43000, Ipv4Addr::new(10, 96, 0, 77), 80, TCP_SYN)).0, unallocated, "service CIDR");
        assert_eq!(c.check(origin, &Frame::tcp(src, 43000, Ipv4Addr::new(10, 97, 0, 77), 80, TCP_SYN)).0, Action::Pass, "outside it");
    }
    assert_eq!(c.check(Origin::External, &Frame::tcp(CLIENT, 44000, LB_IP, 80, TCP_SYN)).0, Action::Dnat);
    assert_eq!(c.check(Origin::External, &Frame::tcp(OUTSIDER, 44000, LB_IP, 80, TCP_SYN)).0, Action::Drop);
    // SNAT: an external client's flow to a backend on another node leaves
    // with this node's address and a port of the range; a pod's does not.
    let (got, e, out) = c.check_full(Origin::External, &Frame::tcp(CLIENT, 45000, REMOTE_IP, 80, TCP_SYN));
    assert_eq!((got.0, e.verdict.snat.as_deref()), (Action::Dnat, Some("192.168.1.1:61000-65535")), "{e}");
    let (src, sport) = (Ipv4Addr::new(out[26], out[27], out[28], out[29]), u16::from_be_bytes([out[34], out[35]]));
    assert_eq!(src, NODE);
    assert!((61000..=65535).contains(&sport), "{sport}");
    // The established flow: explain names the very source port taken.
    let (_, e, _) = c.check_full(Origin::External, &Frame::tcp(CLIENT, 45000, REMOTE_IP, 80, TCP_ACK));
    assert_eq!(e.verdict.snat, Some(format!("{NODE}:{sport}")), "{e}");
    let (_, e, out) = c.check_full(Origin::Pod, &Frame::tcp(POD, 45000, REMOTE_IP, 80, TCP_SYN));
    assert_eq!((e.verdict.snat, &out[26..30]), (None, &POD.octets()[..]), "a pod's source is kept");
    assert_eq!(c.checked, 2 * (48 + 4 + 7) + 2 + 3);
}

/// `lb-agent explain` on a running agent's maps, for a real connection: it
/// names the backend that answers, from the conntrack entry, and predicts
/// the refused and passed cases the client then sees.
#[test]
fn explain_names_the_backend_of_a_real_connection() {
    use std::{net::SocketAddr, time::Duration};
    use xdplb_tests::{
        agent::{agent_binary, objects_dir, programmed, Agent, WEB_CLUSTER_IP},
        servers::{Conn, Server},
        topology::Topology,
        wait_for,
    };
    let t = Topology::new(2);
    let _servers: Vec<Server> = (0..2).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let mut agent = Agent::start(&t.node, &objects_dir(&[0, 1]));
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(20), || programmed(&dp).is_some_and(|(c, _)| c == 2)), "{}", agent.log());
    let explain = |args: &[&str]| {
        let out = std::process::Command::new(agent_binary())
            .arg("explain")
            .arg("--pin-path")
            .arg(&agent.pin_dir)
            .args(args)
            .output()
            .expect("lb-agent explain");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let mut conn = t.client.run(move || Conn::new(std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect")));
    let who = conn.ask().expect("ask");
    assert_eq!(conn.peer(), to, "the client sees the ClusterIP as its peer");
    let sport = {
        // The client's own port: the conntrack key.
        let flows = dp.flows().expect("flows");
        let f = flows.iter().find(|(k, _)| k.dst_addr == WEB_CLUSTER_IP.octets()).expect("a forward flow");
        u16::from_be_bytes(f.0.src_port)
    };
    let text = explain(&["--from", "external", &format!("192.168.1.2:{sport}"), "10.96.0.10:80"]);
    let backend = format!("10.0.2.{}:8080", 11 + who.trim_start_matches("backend-").parse::<u8>().unwrap());
    assert!(text.contains(&format!("verdict    DNAT to {backend} (established flow)")), "{who}:\n{text}");
    assert!(text.contains("shop/web:http"), "the service is named:\n{text}");
    println!("{text}");
    let json: serde_json::Value = serde_json::from_str(&explain(&["--json", "--from", "pod", "10.0.3.2:5000", "10.96.0.10:80"])).unwrap();
    assert_eq!(json["verdict"]["action"], "DNAT");
    assert_eq!(json["candidates"].as_array().map(|a| a.len()), Some(2));
    let text = explain(&["--from", "external", "192.168.1.2:5000", "10.96.0.10:81/udp"]);
    assert!(text.contains("verdict    PASS"), "{text}");
    println!("{text}");
    agent.assert_alive();
}

/// SCTP, checked the same way: round-robin with a port change, the
/// established association, SNAT to a backend on another node, and no
/// backend (refused from a pod with ICMP port unreachable, dropped at XDP).
#[test]
fn explain_agrees_with_the_programs_on_sctp() {
    let sctp_ip = Ipv4Addr::new(10, 96, 0, 40);
    let mut lb = Lb::load();
    lb.program(&contents(&[
        Svc::new(1, IPPROTO_SCTP, algorithm::ROUND_ROBIN).frontend(sctp_ip, 3868).backend(1, backend(1), 3869).backend(2, backend(2), 3869),
        Svc::new(2, IPPROTO_SCTP, algorithm::RANDOM).frontend(EMPTY_IP, 3868),
        Svc::new(3, IPPROTO_SCTP, algorithm::RANDOM).frontend(REMOTE_IP, 3868).remote_backend(3, Ipv4Addr::new(10, 0, 9, 5), 3869),
    ]));
    lb.maps.set_nat_config(&lb_common::NatConfig { addr: NODE.octets(), port_min: 61000, port_max: 65535 }).unwrap();
    let mut c = Checker { lb, checked: 0 };
    let chunk = |src, sport, dst, t| Frame::sctp(src, sport, dst, 3868, 7, t).payload(&[0; 16]);
    use xdplb_tests::packet::{SCTP_DATA, SCTP_INIT};
    for (origin, src) in [(Origin::External, CLIENT), (Origin::Pod, POD)] {
        let mut seen = std::collections::BTreeSet::new();
        for sport in 46000..46004 {
            let (a, b) = c.check(origin, &chunk(src, sport, sctp_ip, SCTP_INIT));
            assert_eq!((a, b.map(|b| b.port())), (Action::Dnat, Some(3869)));
            seen.insert(b);
            assert_eq!(c.check(origin, &chunk(src, sport, sctp_ip, SCTP_DATA)).1, b, "the association keeps its backend");
        }
        assert_eq!(seen.len(), 2, "round-robin: {seen:?}");
        let refused = if origin == Origin::Pod { Action::Reject } else { Action::Drop };
        assert_eq!(c.check(origin, &chunk(src, 46100, EMPTY_IP, SCTP_INIT)).0, refused, "SCTP to a service without backends");
    }
    let (got, e, _) = c.check_full(Origin::External, &chunk(CLIENT, 46200, REMOTE_IP, SCTP_INIT));
    assert_eq!((got.0, e.verdict.snat.as_deref()), (Action::Dnat, Some("192.168.1.1:61000-65535")), "{e}");
    assert_eq!(c.checked, 19);
}
