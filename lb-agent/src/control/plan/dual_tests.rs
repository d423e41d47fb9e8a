//! `plan()` for IPv6 and dual-stack Services: each family planned by the
//! same code into its own maps, with its own service ids, fed only by
//! slices of its family.
use std::net::IpAddr;

use lb_common::{algorithm, scope, service_flags, Addr, Addr4, Addr6, ServiceKey, SlotKey};

use super::*;
use crate::{
    control::model::{self, IpFamily},
    diff::diff,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Addr6 {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("{s} is not IPv6"),
    }
}

fn v4(s: &str) -> Addr4 {
    match ip(s) {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("{s} is not IPv4"),
    }
}

fn key<A: Addr>(addr: A, port: u16) -> ServiceKey<A> {
    ServiceKey { addr, port: port.to_be_bytes(), proto: 6, scope: scope::ANY }
}

fn cfg(node_addresses: &[&str]) -> PlanConfig {
    PlanConfig {
        node_name: "node-a".into(),
        node_addresses: node_addresses.iter().map(|a| ip(a)).collect(),
        default_algorithm: algorithm::ROUND_ROBIN,
        service_cidrs: Vec::new(),
    }
}

fn ids() -> Ids {
    Ids::new(1024, 1 << 20)
}

/// A Service `s` with `spec`, an IPv4 slice and an IPv6 slice (either may
/// be empty), and node-a with an address of each family.
fn objects(spec: &str, eps_v4: &str, eps_v6: &str) -> String {
    let slice = |name: &str, family: &str, eps: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
             addressType: {family}\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: {eps}\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {spec}\n{}{}---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.1.1}}, {{type: InternalIP, address: 'fd00:1::1'}}]}}\n",
        slice("s-v4", "IPv4", eps_v4),
        slice("s-v6", "IPv6", eps_v6),
    )
}

const EPS_V4: &str = "[{addresses: [10.244.1.5], nodeName: node-a}, {addresses: [10.244.1.6], nodeName: node-a}]";
const EPS_V6: &str = "[{addresses: ['fd00:244::5'], nodeName: node-a}, {addresses: ['fd00:244::6'], nodeName: node-a}, {addresses: ['fd00:244::7'], nodeName: node-b}]";

fn planned(p: &Plan, family: IpFamily) -> &PlannedService {
    p.services.iter().find(|s| s.family == family).unwrap_or_else(|| panic!("no {family} service id in {:#?}", p.services))
}

/// The backend addresses `service_id`'s slots name in family `A`'s maps.
fn slotted<A: Addr>(c: &MapContents<A>, service_id: u32) -> Vec<IpAddr> {
    c.slots.iter().filter(|(k, _)| k.service_id == service_id).map(|(_, b)| c.backends[b].addr.to_ip()).collect()
}

#[test]
fn a_single_stack_ipv6_service_fills_the_ipv6_maps_only() {
    let spec = "{type: NodePort, ipFamilyPolicy: SingleStack, ipFamilies: [IPv6], clusterIPs: ['fd00:96::10'], ports: [{name: http, port: 80, nodePort: 30080}]}";
    let p = plan(&model::tests::parse(&objects(spec, EPS_V4, EPS_V6)), &cfg(&[]), &mut ids());
    assert_eq!(p.node_addresses, [ip("192.168.1.1"), ip("fd00:1::1")], "both families from the Node object");
    assert_eq!(p.services.len(), 1, "one family, one service id: {:#?}", p.services);
    let s = planned(&p, IpFamily::IPv6);
    let fe: Vec<(IpAddr, u16, FrontendKind)> = s.frontends.iter().map(|f| (f.addr, f.port, f.kind)).collect();
    assert_eq!(fe, [(ip("fd00:96::10"), 80, FrontendKind::ClusterIP), (ip("fd00:1::1"), 30080, FrontendKind::NodePort)], "NodePort on the IPv6 node address only");
    let keys: Vec<ServiceKey<Addr6>> = p.contents_v6.services.keys().copied().collect();
    assert_eq!(keys, [key(v6("fd00:1::1"), 30080), ServiceKey::address(v6("fd00:96::10")), key(v6("fd00:96::10"), 80)]);
    assert!(p.contents.services.is_empty() && p.contents.backends.is_empty() && p.contents.slots.is_empty(), "nothing in the IPv4 maps: {:?}", p.contents);
    assert_eq!(slotted(&p.contents_v6, s.id), [ip("fd00:244::5"), ip("fd00:244::6"), ip("fd00:244::7")], "the IPv6 slice only");
    let value = p.contents_v6.services[&key(v6("fd00:96::10"), 80)];
    assert_eq!((value.id, value.count), (s.id, 3));
    // Remote: the endpoint on node-b.
    let remote: Vec<bool> = p.contents_v6.backends.values().map(|b| b.is_remote()).collect();
    assert_eq!(remote, [false, false, true]);
}

#[test]
fn a_dual_stack_service_gets_one_id_per_family_each_fed_by_its_own_slices() {
    for policy in ["PreferDualStack", "RequireDualStack"] {
        let spec = format!(
            "{{type: NodePort, ipFamilyPolicy: {policy}, ipFamilies: [IPv4, IPv6], clusterIPs: [10.96.0.20, 'fd00:96::20'], \
             sessionAffinity: ClientIP, ports: [{{name: http, port: 80, nodePort: 30080}}]}}"
        );
        let model = model::tests::parse(&objects(&spec, EPS_V4, EPS_V6));
        let p = plan(&model, &cfg(&["192.168.1.1", "fd00:1::1"]), &mut ids());
        let (s4, s6) = (planned(&p, IpFamily::IPv4), planned(&p, IpFamily::IPv6));
        assert_ne!(s4.id, s6.id, "{policy}: one service id per family");
        assert_eq!(slotted(&p.contents, s4.id), [ip("10.244.1.5"), ip("10.244.1.6")], "{policy}");
        assert_eq!(slotted(&p.contents_v6, s6.id), [ip("fd00:244::5"), ip("fd00:244::6"), ip("fd00:244::7")], "{policy}");
        assert!(p.contents.slots.keys().all(|k| k.service_id == s4.id) && p.contents_v6.slots.keys().all(|k| k.service_id == s6.id));
        // Backend ids are one space across families.
        let (b4, b6): (BTreeSet<u32>, BTreeSet<u32>) = (p.contents.backends.keys().copied().collect(), p.contents_v6.backends.keys().copied().collect());
        assert!(b4.is_disjoint(&b6), "{b4:?} {b6:?}");
        for (k, family_id) in [(p.contents.services[&key(v4("10.96.0.20"), 80)], s4.id), (p.contents.services[&key(v4("192.168.1.1"), 30080)], s4.id)] {
            assert_eq!((k.id, k.affinity_timeout_s), (family_id, 10_800));
        }
        for k in [key(v6("fd00:96::20"), 80), key(v6("fd00:1::1"), 30080)] {
            assert_eq!(p.contents_v6.services[&k].id, s6.id);
        }
        // A restarted agent, seeded from both families' maps, changes nothing.
        let mut seeded = Ids::seeded(1024, 1 << 20, &p.contents);
        seeded.seed(&p.contents_v6);
        let again = plan(&model, &cfg(&["192.168.1.1", "fd00:1::1"]), &mut seeded);
        assert!(diff(&p.contents, &again.contents).is_empty() && diff(&p.contents_v6, &again.contents_v6).is_empty(), "{policy}");
    }
}

#[test]
fn a_family_without_endpoints_has_its_frontends_and_no_backend() {
    let spec = "{ipFamilyPolicy: RequireDualStack, clusterIPs: ['fd00:96::30', 10.96.0.30], ports: [{name: http, port: 80}]}";
    let p = plan(&model::tests::parse(&objects(spec, EPS_V4, "[]")), &cfg(&[]), &mut ids());
    let s6 = planned(&p, IpFamily::IPv6);
    assert_eq!(p.contents_v6.services[&key(v6("fd00:96::30"), 80)].count, 0, "the IPv4 slice never feeds IPv6: reset, not a cross-family backend");
    assert!(s6.backends.is_empty() && p.contents_v6.backends.is_empty());
    assert_eq!(p.contents.services[&key(v4("10.96.0.30"), 80)].count, 2);
    assert_eq!(p.services[0].family, IpFamily::IPv6, "the primary family (clusterIPs[0]) first");
}

#[test]
fn node_addresses_of_each_family_serve_only_that_familys_node_ports() {
    let v4_only = "{type: NodePort, clusterIP: 10.96.0.40, ports: [{name: http, port: 80, nodePort: 30040}]}";
    let p = plan(&model::tests::parse(&objects(v4_only, EPS_V4, EPS_V6)), &cfg(&["192.168.1.9", "fd00:1::9"]), &mut ids());
    let fe: Vec<IpAddr> = p.services.iter().flat_map(|s| &s.frontends).map(|f| f.addr).collect();
    assert_eq!(fe, [ip("10.96.0.40"), ip("192.168.1.9")], "an IPv4 Service: no NodePort on the IPv6 node address, no IPv6 endpoints");
    assert!(p.contents_v6.services.is_empty() && p.contents_v6.backends.is_empty());
}

#[test]
fn load_balancer_and_external_ips_and_source_ranges_of_both_families() {
    let spec = "{type: LoadBalancer, clusterIPs: [10.96.0.50, 'fd00:96::50'], externalIPs: ['2001:db8:e::1', 198.51.100.50], \
                loadBalancerSourceRanges: [10.8.0.0/16, '2001:db8:c::7/48', 'fd00:1::/64'], ports: [{name: http, port: 80, nodePort: 30050}]}\n\
                status: {loadBalancer: {ingress: [{ip: 203.0.113.50}, {ip: '2001:db8:f::50'}]}}";
    let p = plan(&model::tests::parse(&objects(spec, EPS_V4, EPS_V6)), &cfg(&[]), &mut ids());
    let (s4, s6) = (planned(&p, IpFamily::IPv4), planned(&p, IpFamily::IPv6));
    let kinds = |s: &PlannedService| s.frontends.iter().map(|f| (f.addr, f.kind)).collect::<Vec<_>>();
    assert_eq!(kinds(s6), [
        (ip("fd00:96::50"), FrontendKind::ClusterIP),
        (ip("fd00:1::1"), FrontendKind::NodePort),
        (ip("2001:db8:f::50"), FrontendKind::LoadBalancer),
        (ip("2001:db8:e::1"), FrontendKind::ExternalIP),
    ]);
    assert_eq!(kinds(s4).len(), 4);
    let guarded = |flags: u8| flags & service_flags::SOURCE_RANGES != 0;
    assert!(guarded(p.contents_v6.services[&key(v6("2001:db8:f::50"), 80)].flags), "the IPv6 LoadBalancer IP is guarded");
    assert!(!guarded(p.contents_v6.services[&key(v6("2001:db8:e::1"), 80)].flags), "the ExternalIP is not");
    let ranges6: Vec<(u32, [u8; 4], IpAddr)> = p.contents_v6.source_ranges.keys().map(|(len, r)| (*len - 32, r.service_id, r.addr.to_ip())).collect();
    // fd00:1::/64 holds the node's IPv6 address: the LoadBalancer IP is admitted as a /128.
    assert_eq!(ranges6, [
        (48, s6.id.to_be_bytes(), ip("2001:db8:c::")),
        (64, s6.id.to_be_bytes(), ip("fd00:1::")),
        (128, s6.id.to_be_bytes(), ip("2001:db8:f::50")),
    ]);
    let ranges4: Vec<(u32, IpAddr)> = p.contents.source_ranges.keys().map(|(len, r)| (*len - 32, r.addr.to_ip())).collect();
    assert_eq!(ranges4, [(16, ip("10.8.0.0"))], "IPv4 ranges for the IPv4 LoadBalancer IP only");
}

#[test]
fn service_cidrs_of_both_families_and_mapped_addresses() {
    let text = format!(
        "{}---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: kubernetes}}\nspec: {{cidrs: [10.96.0.0/12, 'fd00:96::/108']}}\n",
        objects("{clusterIPs: ['::ffff:10.96.0.60'], ports: [{name: http, port: 80}]}", EPS_V4, EPS_V6)
    );
    let c = PlanConfig { service_cidrs: vec![(ip("fd00:97::"), 112)], ..cfg(&[]) };
    let p = plan(&model::tests::parse(&text), &c, &mut ids());
    let cidrs6: Vec<(u32, IpAddr)> = p.contents_v6.source_ranges.keys().filter(|(_, r)| r.service_id == [0; 4]).map(|(l, r)| (*l - 32, r.addr.to_ip())).collect();
    assert_eq!(cidrs6, [(108, ip("fd00:96::")), (112, ip("fd00:97::"))]);
    let cidrs4: Vec<(u32, IpAddr)> = p.contents.source_ranges.keys().map(|(l, r)| (*l - 32, r.addr.to_ip())).collect();
    assert_eq!(cidrs4, [(12, ip("10.96.0.0"))]);
    // The IPv4-mapped ClusterIP is the IPv4 address: an IPv4 Service.
    assert_eq!(p.services.iter().map(|s| s.family).collect::<Vec<_>>(), [IpFamily::IPv4]);
    assert!(p.contents.services.contains_key(&key(v4("10.96.0.60"), 80)));
    assert!(p.contents_v6.services.is_empty());
}

#[test]
fn maglev_over_ipv6_backends_is_the_same_on_every_node() {
    let spec = "{ipFamilies: [IPv6], clusterIPs: ['fd00:96::70'], ports: [{name: http, port: 80}]}";
    let text = objects(spec, "[]", EPS_V6).replace("name: s, namespace: ns}", "name: s, namespace: ns, annotations: {xdplb.io/algorithm: maglev, xdplb.io/maglev-table-size: '251'}}");
    let model = model::tests::parse(&text);
    let a = plan(&model, &cfg(&[]), &mut ids());
    // Another node allocates other ids: the table names the same addresses.
    let mut other = Ids::new(1024, 1 << 20);
    for n in 0..7 {
        other.backend(crate::control::ids::BackendIdKey { addr: ip(&format!("fd00:9::{n}")), port: 1, proto: Proto::Tcp });
    }
    let b = plan(&model, &PlanConfig { node_name: "node-b".into(), ..cfg(&[]) }, &mut other);
    let table = |p: &Plan| {
        let s = planned(p, IpFamily::IPv6);
        assert_eq!(s.algorithm, "maglev");
        (1..=251).map(|slot| p.contents_v6.backends[&p.contents_v6.slots[&SlotKey { service_id: s.id, slot }]].addr.to_ip()).collect::<Vec<_>>()
    };
    let (ta, tb) = (table(&a), table(&b));
    assert_eq!(ta, tb);
    for b in ["fd00:244::5", "fd00:244::6", "fd00:244::7"] {
        let n = ta.iter().filter(|a| **a == ip(b)).count();
        assert!((80..=90).contains(&n), "{b} has {n} of 251 slots");
    }
}
