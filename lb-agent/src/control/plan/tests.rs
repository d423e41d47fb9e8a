//! `plan()` against kube-proxy's semantics, on objects shaped like
//! `kubectl get -o yaml` output.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{algorithm, ServiceKeyV4};

use super::*;
use crate::{
    control::model::{self, tests::CLUSTER},
    diff::diff,
};

fn cfg() -> PlanConfig {
    PlanConfig {
        node_name: "node-a".into(),
        node_addresses: Vec::new(),
        default_algorithm: algorithm::RANDOM,
        service_cidrs: Vec::new(),
    }
}

fn ids() -> Ids {
    Ids::new(1024, 1 << 20)
}

fn model(text: &str) -> Model {
    model::tests::parse(text)
}

fn svc<'a>(p: &'a Plan, name: &str, port: &str, scope: Scope) -> &'a PlannedService {
    p.services
        .iter()
        .find(|s| s.name == name && s.port_name == port && s.scope == scope)
        .unwrap_or_else(|| panic!("{name}/{port} {scope:?} not in the plan: {:#?}", p.services))
}

fn key(addr: [u8; 4], port: u16, proto: u8) -> ServiceKeyV4 {
    ServiceKeyV4 {
        addr,
        port: port.to_be_bytes(),
        proto,
        scope: 0,
    }
}

fn addrs(s: &PlannedService, slotted: bool) -> Vec<String> {
    s.backends
        .iter()
        .filter(|b| b.slot.is_some() == slotted)
        .map(|b| format!("{}:{}", b.addr, b.port))
        .collect()
}

/// Text of one Service and one EndpointSlice, for scenarios.
fn objects(svc_spec: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {svc_spec}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: {endpoints}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.1.1}}]}}\n"
    )
}

const NODE_PORT_SPEC: &str =
    "{type: NodePort, clusterIP: 10.96.5.5, ports: [{name: http, port: 80, nodePort: 30080}]";

#[test]
fn the_cluster_fixture_plans_like_kube_proxy() {
    let p = plan(&model(CLUSTER), &cfg(), &mut ids());
    // NodePorts on this node's addresses, taken from its Node object.
    assert_eq!(p.node_addresses, [IpAddr::from([192, 168, 1, 1]), "fd00::1".parse().unwrap()], "both families of node-a");
    let web = svc(&p, "web", "http", Scope::Internal);
    let fe: Vec<(IpAddr, u16, FrontendKind)> = web
        .frontends
        .iter()
        .map(|f| (f.addr, f.port, f.kind))
        .collect();
    assert_eq!(
        fe,
        [
            (IpAddr::from([10, 96, 0, 10]), 80, FrontendKind::ClusterIP),
            (IpAddr::from([192, 168, 1, 1]), 30080, FrontendKind::NodePort)
        ]
    );
    assert_eq!(web.algorithm, "round-robin");
    assert_eq!(web.affinity_timeout_s, 600);
    // Ready endpoints get slots; the terminating one keeps its flows only;
    // the not-ready, not-terminating one is absent.
    assert_eq!(addrs(web, true), ["10.244.1.10:8080", "10.244.2.10:8080"]);
    assert_eq!(addrs(web, false), ["10.244.1.11:8080"]);
    assert!(!web.fallback_terminating);

    let v = p.contents.services[&key([10, 96, 0, 10], 80, 6)];
    assert_eq!(
        (v.id, v.count, v.algorithm, v.flags, v.affinity_timeout_s),
        (web.id, 2, algorithm::ROUND_ROBIN, 0, 600)
    );
    assert_eq!(
        p.contents.services[&key([192, 168, 1, 1], 30080, 6)],
        v,
        "the NodePort shares the ClusterIP's service"
    );
    let draining = web.backends.iter().find(|b| b.slot.is_none()).unwrap();
    assert_eq!(
        p.contents.backends[&draining.id].state,
        backend_state::TERMINATING
    );
    assert_eq!(
        p.contents.backends[&web.backends[0].id].state,
        backend_state::ACTIVE
    );

    // kube-dns: one id per port, UDP and TCP 53 apart, both endpoints each.
    let udp = svc(&p, "kube-dns", "dns", Scope::Internal);
    let tcp = svc(&p, "kube-dns", "dns-tcp", Scope::Internal);
    assert_ne!(udp.id, tcp.id);
    assert_eq!(p.contents.services[&key([10, 96, 0, 53], 53, 17)].count, 2);
    assert_eq!(p.contents.services[&key([10, 96, 0, 53], 53, 6)].count, 2);
    assert_ne!(
        udp.backends[0].id, tcp.backends[0].id,
        "the same addr:port over UDP and TCP are two backends"
    );
    assert_eq!(p.contents.services[&key([10, 96, 0, 53], 9153, 6)].count, 2);
    assert_eq!(p.contents.services[&key([10, 96, 0, 1], 443, 6)].count, 1);

    // 4 ClusterIP frontends + 1 NodePort, 5 service ids; ids 1-based, never 0
    // (0 is the address entries': one per ClusterIP).
    assert_eq!(p.contents.services.keys().filter(|k| !k.is_address()).count(), 6);
    assert_eq!(p.services.len(), 5);
    assert!(p.contents.services.iter().all(|(k, s)| (s.id > 0) != k.is_address()));
    assert!(p.contents.backends.keys().all(|b| *b > 0));
    // Every slot names a backend that exists.
    for (k, b) in &p.contents.slots {
        assert!(
            p.contents.backends.contains_key(b),
            "slot {k:?} names missing backend {b}"
        );
        assert!(k.slot >= 1);
    }
    let json = serde_json::to_value(&p).expect("the plan serializes");
    assert_eq!(json["services"].as_array().map(Vec::len), Some(5));
    assert!(json.to_string().contains("\"kind\":\"NodePort\""), "{json}");
}

#[test]
fn explicit_node_addresses_replace_the_node_object() {
    let c = PlanConfig {
        node_addresses: vec![IpAddr::from([10, 1, 1, 1]), IpAddr::from([10, 1, 1, 2])],
        ..cfg()
    };
    let p = plan(&model(CLUSTER), &c, &mut ids());
    let web = svc(&p, "web", "http", Scope::Internal);
    let np: Vec<IpAddr> = web
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.addr)
        .collect();
    assert_eq!(np, [IpAddr::from([10, 1, 1, 1]), IpAddr::from([10, 1, 1, 2])]);
}

#[test]
fn only_serving_terminating_endpoints_become_a_fallback() {
    let text = objects(
        &format!("{NODE_PORT_SPEC}}}"),
        "[{addresses: [10.0.0.1], conditions: {ready: false, serving: true, terminating: true}}, \
          {addresses: [10.0.0.2], conditions: {ready: false, serving: false, terminating: true}}, \
          {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: false}}]",
    );
    let p = plan(&model(&text), &cfg(), &mut ids());
    let s = svc(&p, "s", "http", Scope::Internal);
    assert!(s.fallback_terminating);
    assert_eq!(addrs(s, true), ["10.0.0.1:8080"]);
    assert_eq!(
        addrs(s, false),
        ["10.0.0.2:8080"],
        "not serving: existing flows only"
    );
    let v = p.contents.services[&key([10, 96, 5, 5], 80, 6)];
    assert_eq!((v.count, v.flags), (1, service_flags::FALLBACK_TERMINATING));
    assert_eq!(p.contents.backends.len(), 2);
}

#[test]
fn no_endpoint_means_a_service_with_no_slot() {
    let p = plan(
        &model(&objects(&format!("{NODE_PORT_SPEC}}}"), "[]")),
        &cfg(),
        &mut ids(),
    );
    // The entry exists with count 0: the dataplane drops and counts instead
    // of passing the packet to a stack with no such address.
    assert_eq!(p.contents.services[&key([10, 96, 5, 5], 80, 6)].count, 0);
    assert!(p.contents.slots.is_empty());
}

const TWO_NODES: &str = "[{addresses: [10.0.0.1], nodeName: node-a}, {addresses: [10.0.0.2], nodeName: node-b}, {addresses: [10.0.0.3]}]";

#[test]
fn external_traffic_policy_local_gets_its_own_id_and_local_endpoints() {
    let spec = "{type: LoadBalancer, clusterIP: 10.96.5.5, externalTrafficPolicy: Local, externalIPs: [198.51.100.9], \
                ports: [{name: http, port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.10}, {hostname: lb.example.com}]}}";
    let p = plan(&model(&objects(spec, TWO_NODES)), &cfg(), &mut ids());
    let int = svc(&p, "s", "http", Scope::Internal);
    let ext = svc(&p, "s", "http", Scope::External);
    assert_ne!(int.id, ext.id);
    assert_eq!(
        addrs(int, true).len(),
        3,
        "the ClusterIP balances over every endpoint"
    );
    assert_eq!(
        addrs(ext, true),
        ["10.0.0.1:8080"],
        "external frontends only this node's"
    );
    let kinds: Vec<FrontendKind> = ext.frontends.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [
            FrontendKind::NodePort,
            FrontendKind::LoadBalancer,
            FrontendKind::ExternalIP
        ]
    );
    for k in [
        key([192, 168, 1, 1], 30080, 6),
        key([203, 0, 113, 10], 80, 6),
        key([198, 51, 100, 9], 80, 6),
    ] {
        assert_eq!(p.contents.services[&k].id, ext.id);
        assert_eq!(p.contents.services[&k].count, 1);
    }
    assert_eq!(p.contents.services[&key([10, 96, 5, 5], 80, 6)].count, 3);
}

#[test]
fn external_traffic_policy_local_is_short_circuited_for_traffic_from_inside() {
    // kube-proxy applies `externalTrafficPolicy: Local` to traffic from
    // outside only: a pod or the node reaching a NodePort, LoadBalancer IP
    // or ExternalIP goes to every usable endpoint.
    let spec = "{type: LoadBalancer, clusterIP: 10.96.5.5, externalTrafficPolicy: Local, externalIPs: [198.51.100.9], \
                ports: [{name: http, port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}";
    let p = plan(&model(&objects(spec, TWO_NODES)), &cfg(), &mut ids());
    let (int, ext) = (svc(&p, "s", "http", Scope::Internal), svc(&p, "s", "http", Scope::External));
    for (addr, port) in [([192, 168, 1, 1], 30080), ([203, 0, 113, 10], 80), ([198, 51, 100, 9], 80)] {
        let outside = p.contents.services[&key(addr, port, 6)];
        assert_eq!((outside.id, outside.count), (ext.id, 1), "outside: this node's endpoint");
        assert_ne!(outside.flags & service_flags::IN_CLUSTER_ALT, 0);
        let inside = p.contents.services[&ServiceKeyV4 { scope: lb_common::scope::IN_CLUSTER, ..key(addr, port, 6) }];
        assert_eq!((inside.id, inside.count), (int.id, 3), "inside: every endpoint");
        assert_eq!(inside.flags & service_flags::IN_CLUSTER_ALT, 0);
    }
    let cip = p.contents.services[&key([10, 96, 5, 5], 80, 6)];
    assert_eq!(cip.flags & service_flags::IN_CLUSTER_ALT, 0, "a ClusterIP needs no alternative");
    assert_eq!(int.frontends.iter().filter(|f| f.in_cluster).count(), 3);

    // Both policies Local: the in-cluster entries get an id of their own.
    let spec = "{type: NodePort, clusterIP: 10.96.5.5, externalTrafficPolicy: Local, internalTrafficPolicy: Local, \
                ports: [{name: http, port: 80, nodePort: 30080}]}";
    let p = plan(&model(&objects(spec, TWO_NODES)), &cfg(), &mut ids());
    let local = svc(&p, "s", "http", Scope::Internal);
    let inside = svc(&p, "s", "http", Scope::InCluster);
    assert_eq!(addrs(local, true), ["10.0.0.1:8080"]);
    assert_eq!(addrs(inside, true).len(), 3);
    let alt = p.contents.services[&ServiceKeyV4 { scope: lb_common::scope::IN_CLUSTER, ..key([192, 168, 1, 1], 30080, 6) }];
    assert_eq!(alt.id, inside.id);
    assert_eq!(p.contents.services[&key([192, 168, 1, 1], 30080, 6)].id, local.id);

    // Cluster policy: one entry per frontend, no alternative.
    let p = plan(&model(&objects(&format!("{NODE_PORT_SPEC}}}"), TWO_NODES)), &cfg(), &mut ids());
    assert!(p.contents.services.keys().all(|k| k.scope == lb_common::scope::ANY));
    assert!(p.contents.services.values().all(|v| v.flags & service_flags::IN_CLUSTER_ALT == 0));
}

#[test]
fn cluster_ips_refuse_unserved_ports_and_service_cidrs_are_planned() {
    let text = format!(
        "{}---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: kubernetes}}\n\
         spec: {{cidrs: [10.96.0.0/12, 'fd00:10:96::/108']}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: bad}}\nspec: {{cidrs: [banana]}}\n",
        objects(&format!("{NODE_PORT_SPEC}}}"), TWO_NODES)
    );
    let c = PlanConfig { service_cidrs: vec![(IpAddr::from([172, 30, 0, 0]), 16)], ..cfg() };
    let p = plan(&model(&text), &c, &mut ids());
    let entry = p.contents.services[&ServiceKeyV4::address([10, 96, 5, 5])];
    assert_eq!((entry.id, entry.count, entry.flags), (0, 0, service_flags::UNSERVED_REFUSED));
    assert_eq!(p.contents.services.keys().filter(|k| k.is_address()).count(), 1, "one per ClusterIP, none for node addresses");
    let cidrs: Vec<(u32, [u8; 4])> =
        p.contents.source_ranges.keys().filter(|(_, r)| r.service_id == [0; 4]).map(|(len, r)| (*len, r.addr)).collect();
    assert_eq!(cidrs, [(32 + 12, [10, 96, 0, 0]), (32 + 16, [172, 30, 0, 0])], "flag and object; invalid left out");
    let cidrs_v6: Vec<(u32, Ipv6Addr)> = p.contents_v6.source_ranges.keys().map(|(len, r)| (*len, r.addr.into())).collect();
    assert_eq!(cidrs_v6, [(32 + 108, "fd00:10:96::".parse().unwrap())], "the IPv6 CIDR in the IPv6 maps");
    // Address entries never take a service id, and re-planning from the
    // maps (a restarted agent) keeps every id.
    assert!(p.services.iter().all(|s| s.id != 0));
    let again = plan(&model(&text), &c, &mut Ids::seeded(1024, 1 << 20, &p.contents));
    assert_eq!(diff(&p.contents, &again.contents).len(), 0);
}

#[test]
fn load_balancer_source_ranges_guard_only_the_load_balancer_ips() {
    let spec = "{type: LoadBalancer, clusterIP: 10.96.5.5, externalIPs: [198.51.100.9], \
                loadBalancerSourceRanges: [192.168.1.77/24, 10.8.0.0/16, '2001:db8::/32', bogus], \
                ports: [{name: http, port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}";
    let p = plan(&model(&objects(spec, TWO_NODES)), &cfg(), &mut ids());
    let id = svc(&p, "s", "http", Scope::Internal).id;
    let flags = |k| p.contents.services[&k].flags & service_flags::SOURCE_RANGES;
    assert_ne!(flags(key([203, 0, 113, 10], 80, 6)), 0, "the LoadBalancer IP is guarded");
    for open in [key([10, 96, 5, 5], 80, 6), key([192, 168, 1, 1], 30080, 6), key([198, 51, 100, 9], 80, 6)] {
        assert_eq!(flags(open), 0, "ClusterIP, NodePort and ExternalIP are not");
    }
    // Host bits cleared; IPv6 and invalid entries left out.
    let ranges: Vec<(u32, [u8; 4], [u8; 4])> = p.contents.source_ranges.keys().map(|(len, r)| (*len, r.service_id, r.addr)).collect();
    // 192.168.1.0/24 contains the node: the LoadBalancer IP is admitted too.
    assert_eq!(
        ranges,
        [(32 + 16, id.to_be_bytes(), [10, 8, 0, 0]), (32 + 24, id.to_be_bytes(), [192, 168, 1, 0]), (32 + 32, id.to_be_bytes(), [203, 0, 113, 10])]
    );

    // Only IPv6 ranges: the LoadBalancer IP is guarded with nothing allowed.
    let spec = spec.replace("[192.168.1.77/24, 10.8.0.0/16, '2001:db8::/32', bogus]", "['2001:db8::/32']");
    let p = plan(&model(&objects(&spec, TWO_NODES)), &cfg(), &mut ids());
    assert_ne!(p.contents.services[&key([203, 0, 113, 10], 80, 6)].flags & service_flags::SOURCE_RANGES, 0);
    assert!(p.contents.source_ranges.is_empty());
}

#[test]
fn internal_traffic_policy_local_narrows_the_cluster_ip() {
    let spec = "{type: NodePort, clusterIP: 10.96.5.5, internalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}";
    let p = plan(&model(&objects(spec, TWO_NODES)), &cfg(), &mut ids());
    assert_eq!(
        addrs(svc(&p, "s", "http", Scope::Internal), true),
        ["10.0.0.1:8080"]
    );
    assert_eq!(addrs(svc(&p, "s", "http", Scope::External), true).len(), 3);
    // Both Local: one id again for both sets of frontends, local endpoints
    // (plus the in-cluster entries of the NodePort, which are Cluster).
    let spec = "{type: NodePort, clusterIP: 10.96.5.5, internalTrafficPolicy: Local, externalTrafficPolicy: Local, ports: [{name: http, port: 80, nodePort: 30080}]}";
    let p = plan(&model(&objects(spec, TWO_NODES)), &cfg(), &mut ids());
    assert_eq!(p.services.iter().filter(|s| s.scope != Scope::InCluster).count(), 1);
    assert_eq!(
        p.contents.services[&key([192, 168, 1, 1], 30080, 6)].count,
        1
    );
}

#[test]
fn cluster_ip_services_ignore_node_ports_and_headless_or_external_name_get_nothing() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: h, namespace: ns}\nspec: {clusterIP: None, ports: [{name: http, port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: ns}\nspec: {type: ExternalName, externalName: example.com, ports: [{name: http, port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: ns}\nspec: {clusterIP: 10.96.7.7, ports: [{name: http, port: 80, nodePort: 30999}]}\n";
    let p = plan(&model(text), &cfg(), &mut ids());
    let names: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["c"]);
    assert_eq!(
        p.contents.services.keys().copied().collect::<Vec<_>>(),
        [ServiceKeyV4::address([10, 96, 7, 7]), key([10, 96, 7, 7], 80, 6)]
    );
}

#[test]
fn slices_merge_and_named_ports_resolve_per_slice() {
    // A selectorless service with two hand-made slices whose pods listen on
    // different numbers for the same port name; a duplicate endpoint across
    // slices counts once.
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {clusterIP: 10.96.5.5, ports: [{name: http, port: 80, targetPort: web}]}\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-a, namespace: ns, labels: {kubernetes.io/service-name: s}}\n\
        addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-b, namespace: ns, labels: {kubernetes.io/service-name: s}}\n\
        addressType: IPv4\nports: [{name: http, port: 9090}, {name: other, port: 1}]\nendpoints: [{addresses: [10.0.0.3]}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-c, namespace: ns, labels: {kubernetes.io/service-name: s}}\n\
        addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.2]}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: other-ns, namespace: elsewhere, labels: {kubernetes.io/service-name: s}}\n\
        addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.9.9.9]}]\n";
    let p = plan(&model(text), &cfg(), &mut ids());
    assert_eq!(
        addrs(svc(&p, "s", "http", Scope::Internal), true),
        ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:9090"]
    );
}

#[test]
fn algorithm_default_and_annotation() {
    let c = PlanConfig {
        default_algorithm: algorithm::ROUND_ROBIN,
        ..cfg()
    };
    let p = plan(
        &model(&objects(
            "{clusterIP: 10.96.5.5, ports: [{name: http, port: 80}]}",
            "[]",
        )),
        &c,
        &mut ids(),
    );
    assert_eq!(
        p.contents.services[&key([10, 96, 5, 5], 80, 6)].algorithm,
        algorithm::ROUND_ROBIN
    );
    let text = objects(
        "{clusterIP: 10.96.5.5, ports: [{name: http, port: 80}]}",
        "[]",
    )
    .replacen(
        "metadata: {name: s, namespace: ns}",
        "metadata: {name: s, namespace: ns, annotations: {xdplb.io/algorithm: random}}",
        1,
    );
    let p = plan(&model(&text), &c, &mut ids());
    assert_eq!(
        p.contents.services[&key([10, 96, 5, 5], 80, 6)].algorithm,
        algorithm::RANDOM
    );
}

#[test]
fn ids_are_stable_across_plans_and_removing_an_endpoint_is_a_small_diff() {
    let m = model(CLUSTER);
    let mut ids = ids();
    let first = plan(&m, &cfg(), &mut ids);
    let again = plan(&m, &cfg(), &mut ids);
    assert_eq!(first, again, "same model, same plan");
    assert!(diff(&first.contents, &again.contents).is_empty());

    // A fresh allocator in the state `ids` had before the first plan gives
    // the same plan: plan() is deterministic.
    assert_eq!(plan(&m, &cfg(), &mut self::ids()), first);

    // One of web's two ready endpoints leaves.
    let text = CLUSTER.replacen("    - 10.244.1.10\n", "    - 10.244.9.99\n", 1);
    let mut m2 = model(&text);
    let slice = m2
        .slices
        .get_mut(&ObjectRef::new("shop", "web-x7k2p"))
        .unwrap();
    std::sync::Arc::make_mut(slice)
        .endpoints
        .retain(|e| e.addr != Ipv4Addr::new(10, 244, 9, 99));
    let second = plan(&m2, &cfg(), &mut ids);
    let d = diff(&first.contents, &second.contents);
    // The backend goes, the last slot moves into its place and the old last
    // slot goes, the two frontends' count drops: 1 + 1 + 1 + 2.
    assert_eq!(d.backends.remove.len(), 1);
    assert!(d.backends.upsert.is_empty());
    assert_eq!(d.slots.len(), 2, "{:?}", d.slots);
    assert_eq!(d.services.upsert.len(), 2);
    assert_eq!(d.len(), 5, "{d:?}");
    // Every other id is untouched.
    for s in &first.services {
        let after = svc(&second, &s.name, &s.port_name, s.scope);
        assert_eq!(after.id, s.id);
    }

    // It comes back: a new backend id (the old one is not reused at once).
    let third = plan(&m, &cfg(), &mut ids);
    let old: BTreeSet<u32> = first.contents.backends.keys().copied().collect();
    let new: BTreeSet<u32> = third.contents.backends.keys().copied().collect();
    assert_eq!(old.difference(&new).count(), 1);
    assert!(new
        .difference(&old)
        .all(|id| *id > *old.iter().max().unwrap()));
}

#[test]
fn a_restarted_agent_seeded_from_the_maps_changes_nothing() {
    let m = model(CLUSTER);
    let mut ids = ids();
    // Churn first, so the ids are not simply 1..n.
    let _ = plan(
        &model(&objects(
            "{clusterIP: 10.96.5.5, ports: [{name: http, port: 80}]}",
            TWO_NODES,
        )),
        &cfg(),
        &mut ids,
    );
    let before = plan(&m, &cfg(), &mut ids);
    // The pinned maps hold `before.contents`; a new agent starts from them.
    let mut restarted = Ids::seeded(1024, 1 << 20, &before.contents);
    let after = plan(&m, &cfg(), &mut restarted);
    let d = diff(&before.contents, &after.contents);
    assert!(d.is_empty(), "a restart rewrites nothing: {d:?}");
}

#[test]
fn hostile_objects_do_not_disturb_the_others() {
    let text = format!(
        "{CLUSTER}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: evil, namespace: shop}}\nspec: {{clusterIP: 10.96.0.10, ports: [{{port: 99999}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-evil, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [300.1.1.1]}}]\n"
    );
    let clean = plan(&model(CLUSTER), &cfg(), &mut ids());
    let p = plan(&model(&text), &cfg(), &mut ids());
    assert_eq!(p, clean);
}

#[test]
fn two_services_on_one_frontend_keep_the_first() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.5.5, ports: [{name: http, port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec: {clusterIP: 10.96.5.6, externalIPs: [10.96.5.5], ports: [{name: http, port: 80}]}\n";
    let p = plan(&model(text), &cfg(), &mut ids());
    let a = svc(&p, "a", "http", Scope::Internal);
    assert_eq!(p.contents.services[&key([10, 96, 5, 5], 80, 6)].id, a.id);
    assert_eq!(svc(&p, "b", "http", Scope::Internal).frontends.len(), 1);
}

/// A model built in code: `services` services of `per` ready endpoints each.
fn big_model(services: usize, per: usize) -> Model {
    let mut m = Model::default();
    for s in 0..services {
        let id = ObjectRef::new("scale", &format!("svc-{s}"));
        m.services.insert(
            id.clone(),
            model::Service {
                service_type: ServiceType::ClusterIP,
                families: vec![model::IpFamily::IPv4],
                cluster_ips: vec![Ipv4Addr::from(0x0a60_0000 + s as u32).into()],
                external_ips: vec![],
                lb_ips: vec![],
                lb_ingress: vec![],
                source_ranges: None,
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    node_port: None,
                    proto: Proto::Tcp,
                }],
                external_local: false,
                health_check_node_port: None,
                internal_local: false,
                affinity_timeout_s: 0,
                algorithm: None,
                maglev_table_size: None,
                lb_mode: None,
                weights: Default::default(),
                publish_not_ready: false,
                traffic_distribution: None,
            }
            .into(),
        );
        let addrs = (0..per).map(|e| Ipv4Addr::from(0x0af4_0000 + (s * per + e) as u32));
        m.slices.insert(ObjectRef::new("scale", &format!("svc-{s}-1")), ready_slice(&id.name, addrs).into());
    }
    m
}

/// A slice of `service` (port `http` 8080/TCP) with ready endpoints `addrs`.
fn ready_slice(service: &str, addrs: impl Iterator<Item = Ipv4Addr>) -> model::Slice {
    let endpoints = addrs
        .map(|addr| model::Endpoint {
            addr: addr.into(),
            node_name: None,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            hints: None,
        })
        .collect();
    let ports = vec![model::SlicePort { name: "http".into(), port: 8080, proto: Proto::Tcp }];
    model::Slice { family: model::IpFamily::IPv4, service: service.into(), ports, endpoints }
}

#[test]
fn more_than_ten_thousand_endpoints_per_service_are_refused_across_slices() {
    let mut m = big_model(2, 3);
    // Eleven slices of 1000 for svc-0: each slice is legal, the sum is not.
    for k in 0..11u32 {
        let addrs = (0..1000u32).map(|e| Ipv4Addr::from(0x0b00_0000 + k * 1000 + e));
        m.slices.insert(ObjectRef::new("scale", &format!("svc-0-big-{k}")), ready_slice("svc-0", addrs).into());
    }
    let p = plan(&m, &cfg(), &mut ids());
    let names: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["svc-1"]);
    assert_eq!(p.contents.backends.len(), 3);
}

#[test]
fn ten_thousand_services_plan_and_replan_quickly() {
    let m = big_model(10_000, 10);
    let mut ids = ids_big();
    let start = std::time::Instant::now();
    let first = plan(&m, &cfg(), &mut ids);
    let t_first = start.elapsed();
    assert_eq!(
        (
            first.contents.services.keys().filter(|k| !k.is_address()).count(),
            first.contents.services.keys().filter(|k| k.is_address()).count(),
            first.contents.backends.len(),
            first.contents.slots.len()
        ),
        (10_000, 10_000, 100_000, 100_000),
        "frontends, ClusterIP address entries, backends, slots"
    );
    let start = std::time::Instant::now();
    let again = plan(&m, &cfg(), &mut ids);
    let t_again = start.elapsed();
    assert!(diff(&first.contents, &again.contents).is_empty());
    // Generous bounds for an unoptimised build on a shared 2-core machine;
    // the point is "seconds, not minutes" (quadratic work would be minutes).
    assert!(
        t_first < std::time::Duration::from_secs(20),
        "first plan took {t_first:?}"
    );
    assert!(
        t_again < std::time::Duration::from_secs(20),
        "re-plan took {t_again:?}"
    );
    eprintln!("10k services / 100k endpoints: plan {t_first:?}, re-plan {t_again:?}");
}

fn ids_big() -> Ids {
    Ids::new(65_536, u32::MAX - 1)
}

/// The backend addresses of a service's slots, in slot order.
fn slot_addrs(p: &Plan, addr: [u8; 4]) -> Vec<Ipv4Addr> {
    let s = p.contents.services[&key(addr, 80, 6)];
    (1..=s.count)
        .map(|slot| Ipv4Addr::from(p.contents.backends[&p.contents.slots[&SlotKey { service_id: s.id, slot }]].addr))
        .collect()
}

#[test]
fn maglev_services_get_a_weighted_table_that_every_node_builds_alike() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: ns\n  annotations:\n    xdplb.io/algorithm: maglev\n    xdplb.io/maglev-table-size: \"251\"\n    xdplb.io/backend-weights: 10.0.2.11=3, 10.0.2.12=1, bogus\n\
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, protocol: TCP}]}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\n\
addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\n\
endpoints: [{addresses: [10.0.2.11]}, {addresses: [10.0.2.12]}, {addresses: [10.0.2.13]}]\n";
    let m = model(text);
    let a = plan(&m, &cfg(), &mut ids());
    // Another node allocated its ids differently (other backends came first).
    let mut other_ids = ids();
    let seed = model(&objects("{clusterIP: 10.96.9.9, ports: [{name: http, port: 80, protocol: TCP}]}", "[{addresses: [10.0.9.1]}, {addresses: [10.0.9.2]}]"));
    plan(&seed, &cfg(), &mut other_ids);
    let b = plan(&m, &cfg(), &mut other_ids);
    let (ta, tb) = (slot_addrs(&a, [10, 96, 0, 10]), slot_addrs(&b, [10, 96, 0, 10]));
    assert_eq!(ta.len(), 251, "the table fills the slots");
    assert_eq!(ta, tb, "same table on both nodes, whatever the ids");
    let share = |addr: [u8; 4]| ta.iter().filter(|a| a.octets() == addr).count() as f64 / 251.0;
    // Weights 3 : 1 : 1 (the unnamed endpoint weighs 1; the bogus entry is ignored).
    assert!((share([10, 0, 2, 11]) - 0.6).abs() < 0.05, "{}", share([10, 0, 2, 11]));
    assert!((share([10, 0, 2, 12]) - 0.2).abs() < 0.05, "{}", share([10, 0, 2, 12]));
    assert_eq!(svc(&a, "s", "http", Scope::Internal).algorithm, "maglev");
}

#[test]
fn removing_a_maglev_backend_rewrites_about_its_share_of_the_table() {
    let text = |eps: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: ns\n  annotations: {{xdplb.io/algorithm: maglev}}\n\
spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: {eps}\n")
    };
    let ten: Vec<String> = (1..=10).map(|i| format!("{{addresses: [10.0.2.{i}]}}")).collect();
    let mut ids = ids();
    let before = plan(&model(&text(&format!("[{}]", ten.join(",")))), &cfg(), &mut ids);
    let after = plan(&model(&text(&format!("[{}]", ten[1..].join(",")))), &cfg(), &mut ids);
    let d = diff(&before.contents, &after.contents);
    // Nine or ten backends: the same default size, so a table to compare.
    let m = crate::control::maglev::auto_table_size(10);
    assert_eq!(m, crate::control::maglev::auto_table_size(9));
    assert_eq!(after.contents.slots.len(), m as usize);
    let moved = d.slots.upsert.len() as f64 / m as f64;
    // The removed backend held ~1/10 of the table; Maglev moves a little
    // more at 25 entries per backend (16 % measured over each of the ten).
    assert!(moved > 0.08 && moved < 0.2, "fraction of slots rewritten: {moved:.3}");
    assert_eq!(d.backends.remove.len(), 1);
}

/// A LoadBalancer `s` (ports http and metrics) whose endpoints are `endpoints`.
fn lb_objects(policy: &str, extra: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.5.5, \
         externalTrafficPolicy: {policy}, {extra}ports: [{{name: http, port: 80, nodePort: 30080}}, {{name: metrics, port: 9090, nodePort: 30090}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: metrics, port: 9090, protocol: TCP}}]\nendpoints: {endpoints}\n"
    )
}

#[test]
fn health_checks_count_this_nodes_ready_endpoints_once_per_address() {
    let endpoints = "[{addresses: [10.0.0.1], nodeName: node-a}, {addresses: [10.0.0.2], nodeName: node-a}, \
                     {addresses: [10.0.0.3], nodeName: node-b}, {addresses: [10.0.0.4]}, \
                     {addresses: [10.0.0.5], nodeName: node-a, conditions: {ready: false}}, \
                     {addresses: [10.0.0.6], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}]";
    let m = model(&lb_objects("Local", "healthCheckNodePort: 32000, ", endpoints));
    let hc = health_checks(&m, &cfg());
    let want = HealthCheck { service: ObjectRef::new("ns", "s"), local_endpoints: 2 };
    assert_eq!(
        hc.into_iter().collect::<Vec<_>>(),
        [(32000, want)],
        "two ports of one pod are one endpoint; remote, node-less, not-ready and terminating ones do not count"
    );
    // Another node sees its own.
    let other = PlanConfig { node_name: "node-b".into(), ..cfg() };
    assert_eq!(health_checks(&m, &other)[&32000].local_endpoints, 1);
    let none = PlanConfig { node_name: "node-c".into(), ..cfg() };
    assert_eq!(health_checks(&m, &none)[&32000].local_endpoints, 0, "no local endpoint: the port is served, and fails");
}

#[test]
fn only_local_load_balancers_with_a_health_check_node_port_get_one() {
    let eps = "[{addresses: [10.0.0.1], nodeName: node-a}]";
    assert!(health_checks(&model(&lb_objects("Cluster", "healthCheckNodePort: 32000, ", eps)), &cfg()).is_empty(), "Cluster policy");
    assert!(health_checks(&model(&lb_objects("Local", "", eps)), &cfg()).is_empty(), "no healthCheckNodePort");
    let node_port = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec: {type: NodePort, clusterIP: 10.96.5.5, \
                     externalTrafficPolicy: Local, healthCheckNodePort: 32000, ports: [{port: 80, nodePort: 30080}]}\n";
    assert!(health_checks(&model(node_port), &cfg()).is_empty(), "not a LoadBalancer");

    // Two services on one port: the first (in name order) keeps it.
    let two = format!(
        "{}---\n{}",
        lb_objects("Local", "healthCheckNodePort: 32000, ", eps),
        lb_objects("Local", "healthCheckNodePort: 32000, ", "[]").replace("name: s,", "name: t,").replace("service-name: s}", "service-name: t}").replace("name: s-1", "name: t-1")
    );
    let hc = health_checks(&model(&two), &cfg());
    assert_eq!(hc.len(), 1);
    assert_eq!(hc[&32000], HealthCheck { service: ObjectRef::new("ns", "s"), local_endpoints: 1 });
}

/// kube-proxy's informers select `!service.kubernetes.io/service-proxy-name,
/// !service.kubernetes.io/headless` on Services and EndpointSlices alike.
#[test]
fn objects_of_another_proxy_or_headless_slices_are_ignored_like_kube_proxy() {
    let svc_text = |name: &str, ip: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns{labels}}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n---\n"
        )
    };
    let slice_text = |name: &str, svc: &str, addr: &str, extra: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ns, \
             labels: {{kubernetes.io/service-name: {svc}{extra}}}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{addr}]}}]\n---\n"
        )
    };
    let text = [
        svc_text("mine", "10.96.1.1", ""),
        svc_text("theirs", "10.96.1.2", ", labels: {service.kubernetes.io/service-proxy-name: other}"),
        svc_text("blank", "10.96.1.3", ", labels: {service.kubernetes.io/service-proxy-name: ''}"),
        svc_text("hl", "10.96.1.4", ", labels: {service.kubernetes.io/headless: ''}"),
        slice_text("mine-1", "mine", "10.0.0.1", ""),
        slice_text("mine-2", "mine", "10.0.0.2", ", service.kubernetes.io/headless: ''"),
        slice_text("mine-3", "mine", "10.0.0.3", ", service.kubernetes.io/service-proxy-name: other"),
    ]
    .concat();
    let m = model(&text);
    assert_eq!(m.services.len(), 1, "{:?}", m.services.keys());
    assert_eq!(m.slices.len(), 1, "{:?}", m.slices.keys());
    let p = plan(&m, &cfg(), &mut ids());
    assert_eq!(p.services.len(), 1);
    assert_eq!(addrs(svc(&p, "mine", "http", Scope::Internal), true), ["10.0.0.1:8080"]);
    assert_eq!(p.contents.services.keys().copied().collect::<Vec<_>>(), [ServiceKeyV4::address([10, 96, 1, 1]), key([10, 96, 1, 1], 80, 6)]);
}

#[test]
fn publish_not_ready_addresses_uses_every_endpoint_as_ready() {
    let eps = "[{addresses: [10.0.0.1], conditions: {ready: false}}, \
               {addresses: [10.0.0.2], conditions: {ready: false, serving: false, terminating: true}}, \
               {addresses: [10.0.0.3], conditions: {ready: true}}]";
    let plain = plan(&model(&objects(&format!("{NODE_PORT_SPEC}}}"), eps)), &cfg(), &mut ids());
    let s = svc(&plain, "s", "http", Scope::Internal);
    assert_eq!(addrs(s, true), ["10.0.0.3:8080"]);
    let spec = format!("{NODE_PORT_SPEC}, publishNotReadyAddresses: true}}");
    let p = plan(&model(&objects(&spec, eps)), &cfg(), &mut ids());
    let s = svc(&p, "s", "http", Scope::Internal);
    assert_eq!(addrs(s, true), ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
    assert!(!s.fallback_terminating);
    assert_eq!(p.contents.services[&key([10, 96, 5, 5], 80, 6)].count, 3);
}

/// Switching sessionAffinity or its timeout rewrites only the frontends'
/// values: same service id, same slots, no backend touched, so established
/// flows (conntrack names the backend) and the affinity of other services
/// are left alone.
#[test]
fn switching_session_affinity_keeps_the_id_and_rewrites_only_the_frontends() {
    let eps = "[{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]";
    let specs = [
        format!("{NODE_PORT_SPEC}}}"),
        format!("{NODE_PORT_SPEC}, sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 60}}}}}}"),
        format!("{NODE_PORT_SPEC}, sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 5}}}}}}"),
        format!("{NODE_PORT_SPEC}, sessionAffinity: ClientIP}}"),
        format!("{NODE_PORT_SPEC}, sessionAffinity: None}}"),
    ];
    let mut ids = ids();
    let plans: Vec<Plan> = specs.iter().map(|s| plan(&model(&objects(s, eps)), &cfg(), &mut ids)).collect();
    let timeouts: Vec<u32> =
        plans.iter().map(|p| p.contents.services[&key([10, 96, 5, 5], 80, 6)].affinity_timeout_s).collect();
    assert_eq!(timeouts, [0, 60, 5, model::DEFAULT_AFFINITY_TIMEOUT_S, 0]);
    for w in plans.windows(2) {
        let d = diff(&w[0].contents, &w[1].contents);
        assert_eq!(d.services.upsert.len(), 2, "ClusterIP and NodePort values: {d:?}");
        assert!(d.services.remove.is_empty() && d.backends.is_empty() && d.slots.is_empty(), "{d:?}");
        assert_eq!(d.len(), 2);
        let (a, b) = (svc(&w[0], "s", "http", Scope::Internal), svc(&w[1], "s", "http", Scope::Internal));
        assert_eq!((a.id, &a.backends), (b.id, &b.backends));
    }
}

/// A Service (`spec_extra` inside its spec) with endpoints in zones, and
/// this node (`node-a`) in `zone` (or unlabelled).
fn zoned(spec_extra: &str, endpoints: &str, zone: Option<&str>) -> Model {
    let labels = zone.map(|z| format!(", labels: {{topology.kubernetes.io/zone: {z}}}")).unwrap_or_default();
    model(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\n\
         spec: {{clusterIP: 10.96.5.5, ports: [{{name: http, port: 80}}]{spec_extra}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: {endpoints}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-a{labels}}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.1.1}}]}}\n"
    ))
}

fn ep(addr: &str, node: &str, zone: &str, hints: &str) -> String {
    format!("{{addresses: [{addr}], nodeName: {node}, zone: {zone}{hints}}}")
}

fn topo(m: &Model) -> (Vec<String>, Option<topology::TopologyChoice>) {
    let p = plan(m, &cfg(), &mut ids());
    let s = svc(&p, "s", "http", Scope::Internal);
    (addrs(s, true), s.topology.clone())
}

#[test]
fn zone_hints_are_used_only_when_every_ready_endpoint_has_one() {
    let hint = |z: &str| format!(", hints: {{forZones: [{{name: {z}}}]}}");
    let all = format!(
        "[{}, {}, {}]",
        ep("10.0.0.1", "node-a", "a", &hint("a")),
        ep("10.0.0.2", "node-b", "a", &hint("a")),
        ep("10.0.0.3", "node-c", "b", &hint("b"))
    );
    let (got, t) = topo(&zoned("", &all, Some("a")));
    assert_eq!(got, ["10.0.0.1:8080", "10.0.0.2:8080"]);
    let t = t.expect("a choice");
    assert_eq!((t.mode, t.target.as_deref(), t.hints_from), (Some("PreferSameZone"), Some("a"), "slice"));
    // Node in zone b: only the b endpoint.
    assert_eq!(topo(&zoned("", &all, Some("b"))).0, ["10.0.0.3:8080"]);
    // Node in a zone no endpoint is hinted for, or without a zone: all.
    let (got, t) = topo(&zoned("", &all, Some("c")));
    assert_eq!(got.len(), 3);
    assert_eq!(t.unwrap().note.as_deref(), Some("no endpoint hinted for zone c"));
    assert_eq!(topo(&zoned("", &all, None)).0.len(), 3);
    // One ready endpoint without a hint: hints ignored, all endpoints.
    let partial = format!(
        "[{}, {}, {}]",
        ep("10.0.0.1", "node-a", "a", &hint("a")),
        ep("10.0.0.2", "node-b", "a", ""),
        ep("10.0.0.3", "node-c", "b", &hint("b"))
    );
    let (got, t) = topo(&zoned("", &partial, Some("a")));
    assert_eq!(got.len(), 3);
    assert_eq!(t.unwrap().note.as_deref(), Some("an endpoint has no zone hint"));
    // A not-ready endpoint without a hint does not count.
    let unready = format!(
        "[{}, {}, {{addresses: [10.0.0.9], zone: a, conditions: {{ready: false}}}}]",
        ep("10.0.0.1", "node-a", "a", &hint("a")),
        ep("10.0.0.3", "node-c", "b", &hint("b"))
    );
    assert_eq!(topo(&zoned("", &unready, Some("a"))).0, ["10.0.0.1:8080"]);
    // No hints, no trafficDistribution: no topology at all.
    let plain = format!("[{}, {}]", ep("10.0.0.1", "node-a", "a", ""), ep("10.0.0.3", "node-c", "b", ""));
    assert_eq!(topo(&zoned("", &plain, Some("a"))), (vec!["10.0.0.1:8080".into(), "10.0.0.3:8080".into()], None));
}

#[test]
fn traffic_distribution_prefers_the_zone_or_the_node_and_falls_back_to_all() {
    let eps = format!(
        "[{}, {}, {}]",
        ep("10.0.0.1", "node-a", "a", ""),
        ep("10.0.0.2", "node-b", "a", ""),
        ep("10.0.0.3", "node-c", "b", "")
    );
    for d in ["PreferClose", "PreferSameZone"] {
        let (got, t) = topo(&zoned(&format!(", trafficDistribution: {d}"), &eps, Some("a")));
        assert_eq!(got, ["10.0.0.1:8080", "10.0.0.2:8080"], "{d}");
        let t = t.unwrap();
        assert_eq!((t.mode, t.hints_from), (Some("PreferSameZone"), "trafficDistribution"));
        // No endpoint in the node's zone: every endpoint.
        assert_eq!(topo(&zoned(&format!(", trafficDistribution: {d}"), &eps, Some("z"))).0.len(), 3);
    }
    let (got, t) = topo(&zoned(", trafficDistribution: PreferSameNode", &eps, Some("b")));
    assert_eq!(got, ["10.0.0.1:8080"], "this node's own endpoint");
    assert_eq!(t.unwrap().target.as_deref(), Some("node-a"));
    // No endpoint on this node: the zone hints the controller also writes.
    let elsewhere = format!("[{}, {}]", ep("10.0.0.2", "node-b", "a", ""), ep("10.0.0.3", "node-c", "b", ""));
    assert_eq!(topo(&zoned(", trafficDistribution: PreferSameNode", &elsewhere, Some("b"))).0, ["10.0.0.3:8080"]);
    // Slice hints win over the derived ones.
    let hinted = format!(
        "[{}, {}]",
        ep("10.0.0.1", "node-a", "a", ", hints: {forZones: [{name: b}]}"),
        ep("10.0.0.3", "node-c", "b", ", hints: {forZones: [{name: a}]}")
    );
    assert_eq!(topo(&zoned(", trafficDistribution: PreferClose", &hinted, Some("a"))).0, ["10.0.0.3:8080"]);
    // An unknown value is ignored.
    assert_eq!(topo(&zoned(", trafficDistribution: Elsewhere", &eps, Some("a"))).1, None);
}

#[test]
fn local_policies_ignore_topology_and_the_cluster_scope_keeps_it() {
    let eps = format!("[{}, {}]", ep("10.0.0.1", "node-a", "b", ""), ep("10.0.0.2", "node-b", "a", ""));
    let m = zoned(", trafficDistribution: PreferClose, internalTrafficPolicy: Local", &eps, Some("a"));
    let p = plan(&m, &cfg(), &mut ids());
    let s = svc(&p, "s", "http", Scope::Internal);
    assert_eq!((addrs(s, true), s.topology.is_none()), (vec!["10.0.0.1:8080".to_string()], true));
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec: {{type: NodePort, clusterIP: 10.96.5.5, \
         externalTrafficPolicy: Local, trafficDistribution: PreferClose, ports: [{{name: http, port: 80, nodePort: 30080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: {eps}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: a}}}}\n\
         status: {{addresses: [{{type: InternalIP, address: 192.168.1.1}}]}}\n"
    );
    let p = plan(&model(&text), &cfg(), &mut ids());
    assert_eq!(addrs(svc(&p, "s", "http", Scope::Internal), true), ["10.0.0.2:8080"], "ClusterIP: same zone");
    assert_eq!(addrs(svc(&p, "s", "http", Scope::External), true), ["10.0.0.1:8080"], "NodePort Local: this node");
}

/// kube-proxy drops (rather than rejects) traffic of a Local policy when
/// the usable endpoints are all on other nodes; it rejects only when the
/// service has none anywhere.
#[test]
fn local_policy_with_endpoints_only_elsewhere_drops_instead_of_rejecting() {
    let spec = "{type: NodePort, clusterIP: 10.96.5.5, internalTrafficPolicy: Local, externalTrafficPolicy: Local, \
                ports: [{name: http, port: 80, nodePort: 30080}]}";
    let flags_of = |eps: &str| {
        let p = plan(&model(&objects(spec, eps)), &cfg(), &mut ids());
        let s = svc(&p, "s", "http", Scope::Internal);
        let v = p.contents.services[&key([10, 96, 5, 5], 80, 6)];
        let from_outside = p.contents.services[&key([192, 168, 1, 1], 30080, 6)];
        assert_eq!(v, ServiceV4 { flags: from_outside.flags & !service_flags::IN_CLUSTER_ALT, ..from_outside });
        (v.count, v.flags & service_flags::LOCAL_ELSEWHERE != 0, s.usable_elsewhere)
    };
    assert_eq!(flags_of("[{addresses: [10.0.0.2], nodeName: node-b}]"), (0, true, true), "ready elsewhere: drop");
    assert_eq!(
        flags_of("[{addresses: [10.0.0.2], nodeName: node-b, conditions: {ready: false, serving: true, terminating: true}}]"),
        (0, true, true),
        "serving-terminating elsewhere is usable too"
    );
    assert_eq!(flags_of("[{addresses: [10.0.0.2], nodeName: node-b, conditions: {ready: false}}]"), (0, false, false), "nothing usable: reject");
    assert_eq!(flags_of("[]"), (0, false, false), "no endpoint at all: reject");
    assert_eq!(flags_of(TWO_NODES), (1, false, false), "a local endpoint: balanced");
    // Cluster policy never sets it.
    let p = plan(&model(&objects(&format!("{NODE_PORT_SPEC}}}"), "[{addresses: [10.0.0.2], conditions: {ready: false}}]")), &cfg(), &mut ids());
    assert_eq!(p.contents.services[&key([10, 96, 5, 5], 80, 6)].flags, 0);
}

/// kube-proxy: when a `loadBalancerSourceRanges` entry contains the node's
/// IP, the LoadBalancer IPs themselves are admitted as sources (a VIP
/// looping the node's own traffic back with the VIP as source).
#[test]
fn source_ranges_containing_the_node_admit_the_load_balancer_ips() {
    let spec = |ranges: &str| {
        format!(
            "{{type: LoadBalancer, clusterIP: 10.96.5.5, loadBalancerSourceRanges: [{ranges}], \
             ports: [{{name: http, port: 80, nodePort: 30080}}]}}\nstatus: {{loadBalancer: {{ingress: [{{ip: 203.0.113.10}}, {{ip: 203.0.113.11}}]}}}}"
        )
    };
    let ranges = |ranges: &str| {
        let p = plan(&model(&objects(&spec(ranges), TWO_NODES)), &cfg(), &mut ids());
        p.contents.source_ranges.keys().map(|(len, r)| (Ipv4Addr::from(r.addr), len - 32)).collect::<Vec<_>>()
    };
    // The node (192.168.1.1) is inside 192.168.0.0/16: both LB IPs admitted.
    assert_eq!(
        ranges("192.168.0.0/16, 10.8.0.0/16"),
        [(Ipv4Addr::new(10, 8, 0, 0), 16), (Ipv4Addr::new(192, 168, 0, 0), 16), (Ipv4Addr::new(203, 0, 113, 10), 32), (Ipv4Addr::new(203, 0, 113, 11), 32)]
    );
    // Not inside any range: only the ranges.
    assert_eq!(ranges("10.8.0.0/16"), [(Ipv4Addr::new(10, 8, 0, 0), 16)]);
}

#[test]
fn backends_on_other_nodes_or_on_none_are_marked_remote() {
    let eps = "[{addresses: [10.244.1.5], nodeName: node-a}, {addresses: [10.244.2.5], nodeName: node-b}, {addresses: [172.16.0.9]}]";
    let p = plan(&model(&objects(&format!("{NODE_PORT_SPEC}}}"), eps)), &cfg(), &mut ids());
    let remote: BTreeMap<Ipv4Addr, bool> = p
        .contents
        .backends
        .values()
        .map(|b| (Ipv4Addr::from(b.addr), b.is_remote()))
        .collect();
    assert_eq!(
        remote,
        BTreeMap::from([
            (Ipv4Addr::new(10, 244, 1, 5), false),
            (Ipv4Addr::new(10, 244, 2, 5), true),
            (Ipv4Addr::new(172, 16, 0, 9), true),
        ]),
        "only endpoints whose nodeName is this node are local"
    );
}

#[test]
fn a_service_may_choose_its_own_lb_mode() {
    let text = |mode: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: ns\n  annotations: {{xdplb.io/lb-mode: {mode}}}\n\
spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [10.0.2.11]}}]\n")
    };
    let mode_bits = service_flags::LB_MODE | service_flags::DSR_TCP | service_flags::DSR_UDP;
    let flags = |mode: &str| plan(&model(&text(mode)), &cfg(), &mut ids()).contents.services[&key([10, 96, 0, 10], 80, 6)].flags & mode_bits;
    assert_eq!(flags("dsr"), mode_bits);
    assert_eq!(flags("hybrid"), service_flags::LB_MODE | service_flags::DSR_TCP);
    assert_eq!(flags("snat"), service_flags::LB_MODE);
    // Unknown: logged, the node's mode applies.
    assert_eq!(flags("tunnel"), 0);
}

/// `replan` is a function of its inputs: it leaves the previous ids alone,
/// returns the next ones, and returns what it skipped instead of logging it
/// (the agent logs each warning once, not on every re-plan).
#[test]
fn replan_takes_the_previous_ids_and_returns_the_next_with_its_warnings() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.5.5, ports: [{name: http, port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns}\nspec: {clusterIP: 10.96.5.6, externalIPs: [10.96.5.5], ports: [{name: http, port: 80}]}\n";
    let m = model(text);
    let prev = ids();
    let first = replan(&m, &cfg(), &prev);
    assert_eq!(prev, ids(), "the previous assignment is not touched");
    assert_ne!(first.ids, prev, "the new one holds the services' ids");
    assert_eq!(first.warnings.len(), 1, "{:?}", first.warnings);
    let w = &first.warnings[0];
    assert_eq!(w.object, ObjectRef::new("ns", "b"));
    assert!(w.message.contains("10.96.5.5:80") && w.message.contains("already used"), "{w}");

    // Same inputs, same outputs; and the next plan from the returned ids
    // keeps every id (and the same warning, which the caller already logged).
    let again = replan(&m, &cfg(), &prev);
    assert_eq!((&again.plan, &again.ids, &again.warnings), (&first.plan, &first.ids, &first.warnings));
    let next = replan(&m, &cfg(), &first.ids);
    assert_eq!(next.plan, first.plan);
    assert_eq!(next.ids, first.ids);
    assert_eq!(next.warnings, first.warnings);

    // The in-place wrapper is the same computation.
    let mut in_place = ids();
    assert_eq!(plan(&m, &cfg(), &mut in_place), first.plan);
    assert_eq!(in_place, first.ids);

    // A full id space is a warning naming the service left out, not a log line.
    let full = replan(&m, &cfg(), &Ids::new(1, 1 << 20));
    assert!(
        full.warnings.iter().any(|w| w.object == ObjectRef::new("ns", "b") && w.message.contains("no free service id")),
        "{:?}",
        full.warnings
    );
}

#[test]
fn sctp_ports_are_planned_like_tcp_and_udp_ones() {
    // One port number, two protocols: each is its own frontend with its
    // own slice port (matched by name and protocol), as with kube-proxy.
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\n\
         spec: {type: NodePort, clusterIP: 10.96.5.5, ports: [{name: diameter, port: 3868, nodePort: 30868, protocol: SCTP}, {name: http, port: 3868, nodePort: 30080}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}\n\
         addressType: IPv4\nports: [{name: diameter, port: 3869, protocol: SCTP}, {name: http, port: 8080, protocol: TCP}]\nendpoints: [{addresses: [10.0.0.1]}]\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}]}\n";
    let p = plan(&model(text), &cfg(), &mut ids());
    let sctp = lb_common::IPPROTO_SCTP;
    for k in [key([10, 96, 5, 5], 3868, sctp), key([192, 168, 1, 1], 30868, sctp), key([10, 96, 5, 5], 3868, 6)] {
        assert_eq!(p.contents.services[&k].count, 1, "{k}");
    }
    assert_ne!(
        p.contents.services[&key([10, 96, 5, 5], 3868, sctp)].id,
        p.contents.services[&key([10, 96, 5, 5], 3868, 6)].id,
        "the SCTP and TCP ports are services of their own"
    );
    let d = svc(&p, "s", "diameter", Scope::Internal);
    assert_eq!(addrs(d, true), ["10.0.0.1:3869"], "the SCTP port's endpoint");
    assert_eq!(addrs(svc(&p, "s", "http", Scope::Internal), true), ["10.0.0.1:8080"]);
    assert_eq!(format!("{}", key([10, 96, 5, 5], 3868, sctp)), "10.96.5.5:3868/SCTP");
}
