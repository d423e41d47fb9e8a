//! `lb-agent explain` over IPv6 against the real programs: a dual-stack
//! plan written through the agent's own diff/apply, IPv6 frames run through
//! `xdp_lb` (BPF_PROG_TEST_RUN), and explain's verdict and backend compared
//! with what the program did to each frame. Needs root.
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use lb_agent::{
    control::{
        ids::Ids,
        model::Model,
        plan::{plan, PlanConfig},
    },
    explain::{explain_pinned, Action, Origin, Query},
};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP};
use xdplb_tests::{fixture::run_frame, lb::Lb, packet::TCP_SYN, packet6::Frame6};

const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const OUTSIDER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2);

const OBJECTS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\n\
spec: {ipFamilyPolicy: PreferDualStack, clusterIPs: ['fd00:96::10', 10.96.0.10], ports: [{name: http, port: 80}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: ns, annotations: {xdplb.io/algorithm: maglev}}\n\
spec: {clusterIPs: ['fd00:96::53'], ports: [{name: dns, port: 53, protocol: UDP}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: ns}\n\
spec: {type: LoadBalancer, clusterIPs: ['fd00:96::80'], loadBalancerSourceRanges: ['2001:db8:1::/64'], ports: [{name: http, port: 80, nodePort: 30080}]}\n\
status: {loadBalancer: {ingress: [{ip: '2001:db8:f::80'}]}}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-v6, namespace: ns, labels: {kubernetes.io/service-name: web}}\n\
addressType: IPv6\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: ['fd00:244::11']}, {addresses: ['fd00:244::12']}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: lb-v6, namespace: ns, labels: {kubernetes.io/service-name: lb}}\n\
addressType: IPv6\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: ['fd00:244::21']}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: dns-v6, namespace: ns, labels: {kubernetes.io/service-name: dns}}\n\
addressType: IPv6\nports: [{name: dns, port: 5353, protocol: UDP}]\nendpoints: [{addresses: ['fd00:244::31']}, {addresses: ['fd00:244::32']}, {addresses: ['fd00:244::33']}]\n";

/// What `xdp_lb` did to an IPv6 frame without extension headers: the
/// verdict and the destination it was rewritten to.
fn observed(rc: u32, input: &[u8], out: &[u8]) -> (Action, Option<SocketAddr>) {
    let dst = |f: &[u8]| {
        let a: [u8; 16] = f[38..54].try_into().unwrap();
        SocketAddr::new(Ipv6Addr::from(a).into(), u16::from_be_bytes([f[56], f[57]]))
    };
    let rewritten = out.len() >= 58 && dst(out) != dst(input);
    match rc {
        1 => (Action::Drop, None),
        2 if rewritten => (Action::Dnat, Some(dst(out))),
        2 => (Action::Pass, None),
        other => panic!("xdp_lb returned {other} for {input:02x?}"),
    }
}

/// The programs, with [`OBJECTS`] planned and written into both families' maps.
fn programmed() -> Lb {
    let mut m = Model::default();
    m.add_yaml(OBJECTS, "test");
    let cfg = PlanConfig { node_name: "node-0".into(), ..Default::default() };
    let p = plan(&m, &cfg, &mut Ids::new(1024, 4096));
    assert!(!p.contents_v6.services.is_empty() && !p.contents.services.is_empty(), "both families planned");
    let mut lb = Lb::load();
    lb.program(&p.contents);
    lb.program(&p.contents_v6);
    lb
}

#[test]
fn explain_agrees_with_xdp_on_ipv6_packets() {
    let lb = programmed();

    let cases: Vec<(&str, Frame6, Action)> = vec![
        ("round-robin ClusterIP", Frame6::tcp(CLIENT, 40000, "fd00:96::10".parse().unwrap(), 80, TCP_SYN), Action::Dnat),
        ("Maglev over IPv6", Frame6::udp(CLIENT, 40001, "fd00:96::53".parse().unwrap(), 53), Action::Dnat),
        ("Maglev, another port", Frame6::udp(CLIENT, 40002, "fd00:96::53".parse().unwrap(), 53), Action::Dnat),
        ("Maglev, a third port", Frame6::udp(CLIENT, 40003, "fd00:96::53".parse().unwrap(), 53), Action::Dnat),
        ("LoadBalancer IP, client in range", Frame6::tcp(CLIENT, 40004, "2001:db8:f::80".parse().unwrap(), 80, TCP_SYN), Action::Dnat),
        ("LoadBalancer IP, client out of range", Frame6::tcp(OUTSIDER, 40005, "2001:db8:f::80".parse().unwrap(), 80, TCP_SYN), Action::Drop),
        ("no service", Frame6::tcp(CLIENT, 40006, "fd00:96::77".parse().unwrap(), 80, TCP_SYN), Action::Pass),
    ];
    let mut maglev_backends = std::collections::BTreeSet::new();
    for (what, frame, want) in cases {
        let input = frame.bytes();
        let (rc, out) = run_frame(&lb.ebpf, "xdp_lb", &input).expect("test run");
        let (got, backend) = observed(rc, &input, &out);
        let proto = if what.starts_with("Maglev") { IPPROTO_UDP } else { IPPROTO_TCP };
        let (src, sport, dst, dport) = (IpAddr::V6(frame.src), frame.sport, IpAddr::V6(frame.dst), frame.dport);
        let q = Query { origin: Origin::External, src, sport: Some(sport), dst, dport, proto };
        let e = explain_pinned(&lb.maps, &q, &Default::default()).expect("explain");
        assert_eq!(got, want, "{what}: the program\n{e}");
        assert_eq!(e.verdict.action, got, "{what}: explain says\n{e}");
        match (e.verdict.backend, backend) {
            (Some(said), Some(did)) => assert_eq!(said, did, "{what}\n{e}"),
            (None, Some(did)) => assert!(e.candidates.iter().any(|c| c.addr == did), "{what}: {did} is no candidate\n{e}"),
            (_, None) => {}
        }
        if what.starts_with("Maglev") {
            let said = e.verdict.backend.expect("Maglev names the backend");
            assert!(said.to_string().starts_with("[fd00:244::3"), "{said}");
            maglev_backends.insert(said);
        }
    }
    assert!(!maglev_backends.is_empty());
}

/// A node socket (the socket balancer): an IPv6 ClusterIP is explained over
/// the IPv6 maps, an IPv4-mapped one (a dual-stack socket) over the IPv4
/// maps, where `web` has no endpoints, and `fd00:96::53` has no IPv4 twin.
#[test]
fn explain_takes_an_ipv4_mapped_destination_of_a_node_socket_to_the_ipv4_maps() {
    let lb = programmed();
    let ask = |dst: &str| {
        let q = Query { origin: Origin::Node, src: IpAddr::V6(Ipv6Addr::UNSPECIFIED), sport: None, dst: dst.parse().unwrap(), dport: 80, proto: IPPROTO_TCP };
        explain_pinned(&lb.maps, &q, &Default::default()).expect("explain")
    };
    let v6 = ask("fd00:96::10");
    assert_eq!(v6.verdict.action, Action::Dnat, "{v6}");
    assert_eq!(v6.candidates.len(), 2, "{v6}");
    assert!(v6.candidates.iter().all(|c| c.addr.is_ipv6()), "{v6}");

    let mapped = ask("::ffff:10.96.0.10");
    assert!(mapped.notes[0].contains("IPv4-mapped") && mapped.packet.contains("10.96.0.10:80"), "{mapped}");
    assert_eq!((mapped.verdict.action, mapped.candidates.len()), (Action::Reject, 0), "the IPv4 frontend, without endpoints:\n{mapped}");
    assert!(mapped.verdict.reason.contains("ECONNREFUSED"), "{mapped}");

    let other = ask("::ffff:10.96.0.53");
    assert_eq!(other.verdict.action, Action::Pass, "not an IPv4 frontend:\n{other}");
}
