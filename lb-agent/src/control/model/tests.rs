//! Parsing real-shaped `kubectl -o yaml` output, and refusing hostile input
//! without losing the rest.
use std::net::IpAddr;

use super::*;

pub(crate) const CLUSTER: &str = include_str!("../../../tests/data/cluster.yaml");

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn parse(text: &str) -> Model {
    let mut m = Model::default();
    m.add_yaml(text, "test");
    m
}

#[test]
fn a_kubectl_list_parses_into_services_slices_and_nodes() {
    let m = parse(CLUSTER);
    let names: Vec<String> = m.services.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        names,
        ["default/kubernetes", "kube-system/kube-dns", "shop/web"]
    );
    // The IPv6 slice is kept, as IPv6; the ConfigMap is skipped.
    assert_eq!(m.slices.len(), 4);
    assert_eq!(m.slices[&ObjectRef::new("kube-system", "kube-dns-v6abc")].family, IpFamily::IPv6);
    assert_eq!(m.slices[&ObjectRef::new("kube-system", "kube-dns-v6abc")].endpoints[0].addr, ip("fd00:10:244::5"));
    assert_eq!(m.nodes.len(), 2);
    assert_eq!(m.nodes["node-a"].addresses, [ip("192.168.1.1"), ip("fd00::1")], "both InternalIPs, no Hostname");
    assert_eq!(m.nodes["node-b"].addresses, [ip("192.168.1.2"), ip("203.0.113.7")]);

    let web = &m.services[&ObjectRef::new("shop", "web")];
    assert_eq!(web.service_type, ServiceType::NodePort);
    assert_eq!(web.cluster_ips, [ip("10.96.0.10")]);
    assert_eq!(web.families, [IpFamily::IPv4], "SingleStack IPv4");
    assert_eq!(
        web.ports,
        [ServicePort {
            name: "http".into(),
            port: 80,
            node_port: Some(30080),
            proto: Proto::Tcp
        }]
    );
    assert_eq!(web.affinity_timeout_s, 600);
    assert_eq!(web.algorithm, Some(algorithm::ROUND_ROBIN));
    let dns = &m.services[&ObjectRef::new("kube-system", "kube-dns")];
    assert_eq!(dns.ports.len(), 3);
    assert_eq!(dns.ports[0].proto, Proto::Udp);

    let slice = &m.slices[&ObjectRef::new("shop", "web-x7k2p")];
    assert_eq!(slice.service, "web");
    assert_eq!(slice.endpoints.len(), 4);
    let e = &slice.endpoints[2];
    assert_eq!(
        (e.addr, e.ready, e.serving, e.terminating),
        (ip("10.244.1.11"), false, true, true)
    );
    assert_eq!(e.node_name.as_deref(), Some("node-a"));
}

#[test]
fn multi_document_yaml_and_unset_conditions() {
    let m = parse(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: ns, labels: {kubernetes.io/service-name: a}}\n\
         addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: false}}]\nports: [{port: 8080}]\n---\n",
    );
    assert_eq!(m.services.len(), 1);
    let s = &m.services[&ObjectRef::new("ns", "a")];
    assert_eq!(s.ports[0].proto, Proto::Tcp, "protocol defaults to TCP");
    assert_eq!(s.affinity_timeout_s, 0);
    let e = &m.slices[&ObjectRef::new("ns", "a-1")].endpoints;
    assert_eq!(
        (e[0].ready, e[0].serving, e[0].terminating),
        (true, true, false),
        "unset ready means ready"
    );
    assert_eq!(
        (e[1].ready, e[1].serving),
        (false, false),
        "unset serving follows ready"
    );
}

#[test]
fn client_ip_affinity_defaults_to_three_hours() {
    let m = parse("apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.1.1, sessionAffinity: ClientIP, ports: [{port: 80}]}\n");
    assert_eq!(
        m.services[&ObjectRef::new("ns", "a")].affinity_timeout_s,
        10_800
    );
}

#[test]
fn headless_dual_stack_and_external_name_services() {
    let m = parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: headless, namespace: ns}\nspec: {clusterIP: None, clusterIPs: [None], ports: [{port: 80}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: dual, namespace: ns}\nspec: {clusterIPs: ['fd00::10', 10.96.1.2], ports: [{port: 80}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: ns}\nspec: {type: ExternalName, externalName: example.com}\n",
    );
    assert!(m.services[&ObjectRef::new("ns", "headless")]
        .cluster_ips
        .is_empty());
    let dual = &m.services[&ObjectRef::new("ns", "dual")];
    assert_eq!(dual.cluster_ips, [ip("fd00::10"), ip("10.96.1.2")], "both families, the primary first");
    assert_eq!(dual.families, [IpFamily::IPv6, IpFamily::IPv4]);
    assert_eq!(
        m.services[&ObjectRef::new("ns", "ext")].service_type,
        ServiceType::ExternalName
    );
}

/// Every object here is broken in one way; `good` in between must survive.
#[test]
fn hostile_objects_are_skipped_and_the_rest_kept() {
    let svc = |name: &str, spec: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n")
    };
    let slice = |name: &str, body: &str| {
        format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: good}}}}\n{body}\n")
    };
    let many: Vec<String> = (0..10_001)
        .map(|i| {
            format!(
                "{{addresses: [10.{}.{}.{}]}}",
                i / 65536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect();
    let text = [
        svc("bad-ip", "{clusterIP: 10.96.0.300, ports: [{port: 80}]}"),
        svc("port-range", "{clusterIP: 10.96.0.2, ports: [{port: 70000}]}"),
        svc("port-zero", "{clusterIP: 10.96.0.2, ports: [{port: 0}]}"),
        svc("node-port-range", "{type: NodePort, clusterIP: 10.96.0.2, ports: [{port: 80, nodePort: -1}]}"),
        svc("dup-port", "{clusterIP: 10.96.0.2, ports: [{name: a, port: 80}, {name: b, port: 80}]}"),
        svc("dup-name", "{clusterIP: 10.96.0.2, ports: [{name: a, port: 80}, {name: a, port: 81}]}"),
        svc("proto", "{clusterIP: 10.96.0.2, ports: [{port: 80, protocol: ICMP}]}"),
        svc("not-a-number", "{clusterIP: 10.96.0.2, ports: [{port: eighty}]}"),
        svc("affinity", "{clusterIP: 10.96.0.2, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}"),
        svc("type", "{type: Magic, clusterIP: 10.96.0.2, ports: [{port: 80}]}"),
        "---\napiVersion: v1\nkind: Service\nmetadata: {namespace: ns}\nspec: {clusterIP: 10.96.0.2}\n".to_string(),
        "---\n[1, 2, 3]\n".to_string(),
        "---\nplain scalar\n".to_string(),
        svc("good", "{clusterIP: 10.96.0.1, ports: [{port: 80}, {name: sctp, port: 90, protocol: SCTP}]}"),
        slice("bad-addr", "addressType: IPv4\nendpoints: [{addresses: [not-an-ip]}]\nports: [{port: 80}]"),
        slice("v6-in-v4", "addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\nports: [{port: 80}]"),
        slice("bad-port", "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{port: 65536}]"),
        slice("too-many", &format!("addressType: IPv4\nendpoints: [{}]\nports: [{{port: 80}}]", many.join(", "))),
        slice("weird-type", "addressType: IPX\nendpoints: []"),
        slice("good-1", "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{port: 8080}]"),
    ]
    .concat();
    let m = parse(&text);
    let names: Vec<String> = m.services.keys().map(|k| k.name.clone()).collect();
    assert_eq!(names, ["good"]);
    let good: Vec<(u16, Proto)> = m.services[&ObjectRef::new("ns", "good")].ports.iter().map(|p| (p.port, p.proto)).collect();
    assert_eq!(good, [(80, Proto::Tcp), (90, Proto::Sctp)], "SCTP ports are balanced like TCP and UDP ones");
    let slices: Vec<String> = m.slices.keys().map(|k| k.name.clone()).collect();
    // A slice whose only endpoint is bad is kept, empty: its endpoint alone is skipped.
    assert_eq!(slices, ["bad-addr", "good-1", "v6-in-v4"]);
    assert!(m.slices[&ObjectRef::new("ns", "bad-addr")].endpoints.is_empty());
    assert!(m.slices[&ObjectRef::new("ns", "v6-in-v4")].endpoints.is_empty());
}

/// Runs `f` and returns what it logged on this thread.
///
/// One global subscriber, installed once, writes into a per-thread buffer.
/// Scoped subscribers (`with_default`) race with tests on other threads over
/// tracing's global callsite-interest cache, which dropped lines (1 run in 3).
fn logs_of<R>(f: impl FnOnce() -> R) -> (R, String) {
    use std::cell::RefCell;
    thread_local! {
        static CAPTURE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }
    struct ThreadBuf;
    impl std::io::Write for ThreadBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| c.borrow_mut().as_mut().map(|buf| buf.extend_from_slice(b)));
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| ThreadBuf)
            .finish();
        tracing::subscriber::set_global_default(sub).expect("no other global subscriber in unit tests");
    });
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let bytes = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, String::from_utf8(bytes).unwrap())
}

#[test]
fn one_bad_endpoint_is_skipped_and_named_the_rest_of_its_slice_kept() {
    let yaml = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
        metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
        addressType: IPv4\n\
        endpoints: [{addresses: [10.0.0.1]}, {addresses: []}, {addresses: [not-an-ip]}, {addresses: ['fd00::7']}, {addresses: [10.0.0.2], conditions: {ready: false}}]\n\
        ports: [{port: 8080}]\n";
    let (m, logs) = logs_of(|| parse(yaml));
    let e = &m.slices[&ObjectRef::new("shop", "web-abc")].endpoints;
    let kept: Vec<(IpAddr, bool)> = e.iter().map(|e| (e.addr, e.ready)).collect();
    assert_eq!(kept, [(ip("10.0.0.1"), true), (ip("10.0.0.2"), false)]);
    let skipped: Vec<&str> = logs.lines().filter(|l| l.contains("skipping an invalid endpoint")).collect();
    assert_eq!(skipped.len(), 3, "one warning per bad endpoint:\n{logs}");
    for (line, (index, reason)) in skipped.iter().zip([(1, "no address"), (2, "invalid IP address \"not-an-ip\""), (3, "IPv6 address")]) {
        assert!(line.contains("WARN") && line.contains("shop/web-abc") && line.contains(&format!("endpoint={index}")) && line.contains(reason), "{line}");
    }
    // The typed path (the kube source) gives the same.
    let slice: discovery::EndpointSlice = serde_norway::from_str(yaml).unwrap();
    let (m, logs) = logs_of(|| Model::from_objects([], [&slice], []));
    assert_eq!(m.slices[&ObjectRef::new("shop", "web-abc")].endpoints.len(), 2);
    assert_eq!(logs.matches("shop/web-abc").count(), 3, "{logs}");
}

#[test]
fn every_skipped_part_is_logged_with_its_object() {
    let text = "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-x}\nstatus: {addresses: [{type: InternalIP, address: 10.1.0.1}, {type: InternalIP, address: bogus}, {type: InternalIP, address: 'fe80::1'}, {type: InternalIP, address: 'fd00::1'}]}\n\
        ---\napiVersion: v1\nkind: Service\nmetadata: {name: dual, namespace: ns}\nspec: {clusterIPs: [10.96.0.5], externalIPs: ['fd00::5', '169.254.3.3'], ports: [{port: 80}], loadBalancerSourceRanges: [10.0.0.0/8, 'fd00::/64', nonsense]}\n\
        ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: dual-1, namespace: ns, labels: {kubernetes.io/service-name: dual}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{name: any}, {name: p, port: 80}]\n\
        ---\napiVersion: v1\nkind: List\nmetadata: {name: odd}\nitems: 7\n";
    let (m, logs) = logs_of(|| parse(text));
    assert_eq!(m.nodes["node-x"].addresses, [ip("10.1.0.1"), ip("fd00::1")]);
    assert_eq!(m.services[&ObjectRef::new("ns", "dual")].cluster_ips, [ip("10.96.0.5")]);
    assert!(m.services[&ObjectRef::new("ns", "dual")].external_ips.is_empty(), "no IPv6 ClusterIP; 169.254/16 is link-local");
    assert_eq!(m.slices[&ObjectRef::new("ns", "dual-1")].ports.len(), 1);
    for (object, what) in [
        ("node-x", "bogus"),
        ("node-x", "link-local address \"fe80::1\""),
        ("ns/dual", "has no IPv6 ClusterIP"),
        ("ns/dual", "link-local address \"169.254.3.3\""),
        ("ns/dual", "nonsense"),
        ("ns/dual-1", "port=any"),
        ("odd", "not a sequence"),
    ] {
        assert!(logs.lines().any(|l| l.contains(object) && l.contains(what)), "no log line naming {object} and {what}:\n{logs}");
    }
}

#[test]
fn a_yaml_syntax_error_keeps_the_objects_before_it() {
    let m = parse("apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}\n---\n{ unclosed: [\n");
    assert_eq!(m.services.len(), 1);
}

#[test]
fn unknown_algorithm_falls_back_to_the_default() {
    let m = parse("apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns, annotations: {xdplb.io/algorithm: maglev-ish}}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}\n");
    assert_eq!(m.services[&ObjectRef::new("ns", "a")].algorithm, None);
}

#[test]
fn a_directory_loads_its_yaml_files_in_name_order() {
    let dir = std::env::temp_dir().join(format!("lb-agent-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let svc = |ip: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: ns}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n")
    };
    std::fs::write(dir.join("1.yaml"), svc("10.96.0.1")).unwrap();
    std::fs::write(dir.join("2.yml"), svc("10.96.0.2")).unwrap();
    std::fs::write(dir.join("3.json"), svc("10.96.0.3")).unwrap();
    let m = Model::load(&dir).expect("load");
    assert_eq!(
        m.services[&ObjectRef::new("ns", "a")].cluster_ips,
        [ip("10.96.0.2")],
        "the later file wins"
    );
    assert!(Model::load(&dir.join("missing.yaml")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_balancer_ips_in_proxy_mode_are_not_captured() {
    let m = parse(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {type: LoadBalancer, clusterIP: 10.96.1.1, ports: [{port: 80, nodePort: 30001}]}\n\
         status: {loadBalancer: {ingress: [{ip: 203.0.113.1, ipMode: VIP}, {ip: 203.0.113.2, ipMode: Proxy}, {ip: 203.0.113.3}, {hostname: lb.example.com}, {ip: 'fd00::1'}, {ip: 'fd00::2', ipMode: Proxy}, {ip: 'fd00::1'}]}}\n",
    );
    let svc = &m.services[&ObjectRef::new("ns", "a")];
    assert_eq!(
        svc.lb_ips,
        [ip("203.0.113.1"), ip("203.0.113.3")],
        "an IPv4 Service serves its IPv4 LoadBalancer IPs"
    );
    // Every family's is kept for announcing (lbip), once each.
    assert_eq!(svc.lb_ingress, [ip("203.0.113.1"), ip("203.0.113.3"), ip("fd00::1")]);
}

#[test]
fn health_check_node_port_is_kept_and_an_invalid_one_ignored_with_the_service() {
    let svc = |name: &str, hc: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.1, externalTrafficPolicy: Local, {hc}ports: [{{port: 80, nodePort: 30080}}]}}\n")
    };
    let m = parse(&[svc("set", "healthCheckNodePort: 32000, "), svc("unset", ""), svc("zero", "healthCheckNodePort: 0, "), svc("huge", "healthCheckNodePort: 70000, "), svc("negative", "healthCheckNodePort: -5, ")].concat());
    let hc = |name: &str| m.services[&ObjectRef::new("ns", name)].health_check_node_port;
    assert_eq!(hc("set"), Some(32000));
    assert_eq!(m.services.len(), 5, "an invalid port loses the health check, not the service");
    for name in ["unset", "zero", "huge", "negative"] {
        assert_eq!(hc(name), None, "{name}");
    }
}

/// `ipFamilyPolicy` against the ClusterIPs allocated: the families served
/// are those of the ClusterIPs (kube-proxy's per-family rule), checked
/// against the policy and `ipFamilies`.
#[test]
fn ip_family_policies_and_families() {
    let svc = |name: &str, spec: &str| document("v1", "Service", name, "", &format!("spec: {spec}"));
    let text = [
        svc("single-v6", "{ipFamilyPolicy: SingleStack, ipFamilies: [IPv6], clusterIPs: ['fd00::1'], externalIPs: ['fd00::e', 192.0.2.1], ports: [{port: 80}]}"),
        svc("prefer", "{ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6], clusterIPs: [10.96.0.2, 'fd00::2'], ports: [{port: 80}]}"),
        svc("prefer-one", "{ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4], clusterIPs: [10.96.0.3], ports: [{port: 80}]}"),
        svc("require-one", "{ipFamilyPolicy: RequireDualStack, clusterIPs: ['fd00::4'], ports: [{port: 80}]}"),
        svc("single-two", "{ipFamilyPolicy: SingleStack, clusterIPs: ['fd00::5', 10.96.0.5], ports: [{port: 80}]}"),
        svc("mismatch", "{ipFamilies: [IPv4, IPv6], clusterIPs: ['fd00::6', 10.96.0.6], ports: [{port: 80}]}"),
        svc("two-v4", "{clusterIPs: [10.96.0.7, 10.96.0.8], ports: [{port: 80}]}"),
        svc("bad-policy", "{ipFamilyPolicy: Sometimes, clusterIP: 10.96.0.9, ports: [{port: 80}]}"),
        svc("bad-family", "{ipFamilies: [IPv5], clusterIP: 10.96.0.10, ports: [{port: 80}]}"),
        svc("mapped", "{clusterIPs: ['::ffff:10.96.0.11'], externalIPs: ['::ffff:192.0.2.11'], ports: [{port: 80}]}"),
        svc("no-cluster-ip", "{type: NodePort, ports: [{port: 80, nodePort: 30080}]}"),
    ]
    .concat();
    let (m, logs) = logs_of(|| parse(&text));
    let get = |n: &str| m.services.get(&ObjectRef::new("ns", n)).map(|s| (s.families.clone(), s.cluster_ips.clone(), s.external_ips.clone()));
    use IpFamily::{IPv4, IPv6};
    assert_eq!(get("single-v6"), Some((vec![IPv6], vec![ip("fd00::1")], vec![ip("fd00::e")])), "the IPv4 externalIP is not served");
    assert_eq!(get("prefer"), Some((vec![IPv4, IPv6], vec![ip("10.96.0.2"), ip("fd00::2")], vec![])));
    assert_eq!(get("prefer-one"), Some((vec![IPv4], vec![ip("10.96.0.3")], vec![])));
    assert_eq!(get("require-one"), Some((vec![IPv6], vec![ip("fd00::4")], vec![])));
    assert_eq!(get("single-two"), Some((vec![IPv6], vec![ip("fd00::5")], vec![])), "the primary family only");
    assert_eq!(get("mapped"), Some((vec![IPv4], vec![ip("10.96.0.11")], vec![ip("192.0.2.11")])), "IPv4-mapped = IPv4");
    assert_eq!(get("no-cluster-ip").map(|s| s.0), Some(vec![IPv4, IPv6]), "no ClusterIP: both families");
    for refused in ["mismatch", "two-v4", "bad-policy", "bad-family"] {
        assert_eq!(get(refused), None, "{refused}");
        assert!(logs.lines().any(|l| l.contains(&format!("ns/{refused}")) && l.contains("skipping invalid Service")), "{refused}:\n{logs}");
    }
    for (object, what) in [
        ("ns/single-v6", "has no IPv4 ClusterIP"),
        ("ns/require-one", "RequireDualStack but only an IPv6 ClusterIP"),
        ("ns/single-two", "SingleStack with ClusterIPs of both families"),
        ("ns/mapped", "IPv4-mapped IPv6 address read as IPv4"),
    ] {
        assert!(logs.lines().any(|l| l.contains(object) && l.contains(what)), "no log line naming {object} and {what}:\n{logs}");
    }
}

/// IPv6 slices feed IPv6 only; an FQDN slice is ignored with a log line.
#[test]
fn slices_of_each_family_and_fqdn() {
    const LABELS: &str = ", labels: {kubernetes.io/service-name: a}";
    let v6 = "addressType: IPv6\nendpoints: [{addresses: ['fd00::10']}, {addresses: [10.0.0.1]}, {addresses: ['fe80::10']}, {addresses: ['::ffff:10.0.0.2']}]\nports: [{port: 80}]";
    let fqdn = "addressType: FQDN\nendpoints: [{addresses: [example.com]}]\nports: [{port: 80}]";
    let text = document("discovery.k8s.io/v1", "EndpointSlice", "v6", LABELS, v6) + &document("discovery.k8s.io/v1", "EndpointSlice", "fqdn", LABELS, fqdn);
    let (m, logs) = logs_of(|| parse(&text));
    let v6 = &m.slices[&ObjectRef::new("ns", "v6")];
    assert_eq!(v6.family, IpFamily::IPv6);
    assert_eq!(v6.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>(), [ip("fd00::10")], "the IPv4, link-local and mapped endpoints are skipped");
    assert_eq!(logs.matches("skipping an invalid endpoint").count(), 3, "{logs}");
    assert!(logs.contains("IPv4 address \"::ffff:10.0.0.2\" in an IPv6 slice"), "{logs}");
    assert!(!m.slices.contains_key(&ObjectRef::new("ns", "fqdn")));
    assert!(logs.lines().any(|l| l.contains("ns/fqdn") && l.contains("FQDN")), "{logs}");
}

/// One YAML document: an object of `kind` named `ns/name`, with `more`
/// metadata and `body`.
fn document(api_version: &str, kind: &str, name: &str, more: &str, body: &str) -> String {
    format!("---\napiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: {name}, namespace: ns{more}}}\n{body}\n")
}
