//! Property tests of the control plane with arbitrary objects: the object
//! decoder (`Model::add_yaml`), validation and `plan()` never panic, every
//! object left out is named in the log, and nothing the plan writes leads
//! to an address:port that is not a ready (or serving) endpoint of the
//! input. Objects are generated as JSON the way `kubectl` prints them, with
//! hostile values: huge port lists, duplicate names, IPv4-mapped IPv6,
//! CIDRs with host bits, unicode names, wrong types.
use std::{
    collections::BTreeSet,
    io::Write,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use lb_agent::control::{
    ids::Ids,
    model::{parse_algorithm, Model, ObjectRef},
    plan::{plan, PlanConfig},
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Log lines written while `f` runs (every level).
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::default());
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    // A callsite first hit by another thread without a subscriber caches
    // "never"; rebuilt here, it counts this subscriber.
    let out = tracing::subscriber::with_default(sub, || {
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,8}",
        1 => Just("web".to_string()),
        1 => "\\PC{0,12}",
        1 => Just(String::new()),
        1 => "[a-z]{60,70}",
    ]
}

/// Address strings, valid and not.
fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (1u8..=254, 0u8..=3, 1u8..=254).prop_map(|(a, b, c)| format!("10.{a}.{b}.{c}")),
        1 => (1u8..=254).prop_map(|a| format!("::ffff:10.0.0.{a}")),
        1 => (0u8..=32).prop_map(|l| format!("10.1.2.3/{l}")),
        1 => Just("0.0.0.0".to_string()),
        1 => Just("255.255.255.255".to_string()),
        1 => Just("fe80::1".to_string()),
        1 => Just("999.1.1.1".to_string()),
        1 => "\\PC{0,8}",
    ]
}

/// Port values: mostly valid, some out of range or of the wrong type.
fn port() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (1i64..=65535).prop_map(Value::from),
        1 => (-5i64..=0).prop_map(Value::from),
        1 => (65536i64..=70000).prop_map(Value::from),
        1 => Just(json!("http")),
        1 => Just(json!(null)),
    ]
}

fn proto() -> impl Strategy<Value = Value> {
    prop_oneof![4 => Just(json!("TCP")), 3 => Just(json!("UDP")), 1 => Just(json!("SCTP")), 1 => Just(json!("tcp")), 1 => Just(json!(7))]
}

fn service_port() -> impl Strategy<Value = Value> {
    (name(), port(), proto(), prop_oneof![port(), Just(json!("http"))], prop::option::of(port()))
        .prop_map(|(n, p, pr, t, np)| json!({"name": n, "port": p, "protocol": pr, "targetPort": t, "nodePort": np}))
}

fn service() -> impl Strategy<Value = Value> {
    (
        (name(), name()),
        prop_oneof![Just("ClusterIP"), Just("NodePort"), Just("LoadBalancer"), Just("ExternalName"), Just("Weird")],
        addr(),
        prop::collection::vec(addr(), 0..3),
        // Huge port lists now and then.
        prop_oneof![4 => prop::collection::vec(service_port(), 0..4), 1 => prop::collection::vec(service_port(), 200..400)],
        prop::collection::vec(addr(), 0..3),
        prop_oneof![Just("round-robin"), Just("maglev"), Just("least-conn"), Just("random"), Just("ṁaglev")],
        prop_oneof![Just("65537"), Just("1048573"), Just("4"), Just("-1"), Just("x")],
        prop::collection::vec(addr(), 0..3),
        prop_oneof![Just("Cluster"), Just("Local"), Just("Other")],
    )
        .prop_map(|((ns, n), ty, cip, ext, ports, ranges, alg, size, lb, etp)| {
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": ns, "name": n,
                             "annotations": {"xdplb.io/algorithm": alg, "xdplb.io/maglev-table-size": size}},
                "spec": {"type": ty, "clusterIP": cip, "clusterIPs": [cip], "externalIPs": ext, "ports": ports,
                         "loadBalancerSourceRanges": ranges, "externalTrafficPolicy": etp, "selector": {"app": n}},
                "status": {"loadBalancer": {"ingress": lb.iter().map(|a| json!({"ip": a})).collect::<Vec<_>>()}},
            })
        })
}

/// A Service that validation keeps (mostly): valid names and 1-4 valid
/// ports named p0.., hostile values left in addresses and annotations.
fn sane_service() -> impl Strategy<Value = Value> {
    (
        "[a-z][a-z0-9-]{0,8}",
        prop::collection::vec((1u16..=65535, prop_oneof![Just("TCP"), Just("UDP")], 1u16..=65535), 1..4),
        prop_oneof![3 => (1u8..=254).prop_map(|a| format!("10.96.0.{a}")), 1 => addr()],
        prop::collection::vec(addr(), 0..2),
        prop_oneof![Just("round-robin"), Just("maglev"), Just("least-conn"), Just("random"), Just("bogus")],
    )
        .prop_map(|(n, ports, cip, ext, alg)| {
            let ports: Vec<Value> = ports
                .iter()
                .enumerate()
                .map(|(i, (p, pr, t))| json!({"name": format!("p{i}"), "port": p, "protocol": pr, "targetPort": t}))
                .collect();
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": "shop", "name": n, "annotations": {"xdplb.io/algorithm": alg}},
                "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip], "externalIPs": ext, "ports": ports},
            })
        })
}

fn endpoint() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(addr(), 0..3),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(name()),
    )
        .prop_map(|(addrs, r, s, t, node)| {
            json!({"addresses": addrs, "conditions": {"ready": r, "serving": s, "terminating": t}, "nodeName": node})
        })
}

fn slice() -> impl Strategy<Value = Value> {
    (
        (name(), name(), name()),
        prop_oneof![6 => Just("IPv4"), 1 => Just("IPv6"), 1 => Just("FQDN"), 1 => Just("Bogus")],
        prop::collection::vec((name(), port(), proto()), 0..4),
        prop::collection::vec(endpoint(), 0..20),
    )
        .prop_map(|((ns, n, svc), at, ports, eps)| {
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": ns, "name": n, "labels": {"kubernetes.io/service-name": svc}},
                "addressType": at,
                "ports": ports.into_iter().map(|(n, p, pr)| json!({"name": n, "port": p, "protocol": pr})).collect::<Vec<_>>(),
                "endpoints": eps,
            })
        })
}

fn node() -> impl Strategy<Value = Value> {
    (prop_oneof![Just("node-0".to_string()), name()], prop::collection::vec(addr(), 0..3)).prop_map(|(n, addrs)| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
               "status": {"addresses": addrs.iter().map(|a| json!({"type": "InternalIP", "address": a})).collect::<Vec<_>>()}})
    })
}

/// The IPv4 (address, port) pairs a backend may be: `addresses[0]` of an
/// endpoint that is ready or serving (unset ready = ready, unset serving =
/// ready), with a valid port of its slice, as the raw objects say.
fn allowed(slices: &[Value]) -> BTreeSet<(Ipv4Addr, u16)> {
    let mut out = BTreeSet::new();
    for s in slices {
        let ports: Vec<u16> = s["ports"].as_array().into_iter().flatten().filter_map(|p| p["port"].as_i64()?.try_into().ok()).collect();
        for e in s["endpoints"].as_array().into_iter().flatten() {
            let ready = e["conditions"]["ready"].as_bool().unwrap_or(true);
            let serving = e["conditions"]["serving"].as_bool().unwrap_or(ready);
            // An IPv4-mapped IPv6 address is the IPv4 one (as kube-proxy reads it).
            let parsed = e["addresses"][0].as_str().and_then(|a| a.parse::<std::net::IpAddr>().ok());
            let Some(addr) = parsed.and_then(|a| match a {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(a) => a.to_ipv4_mapped(),
            }) else {
                continue;
            };
            if ready || serving {
                out.extend(ports.iter().map(|&p| (addr, p)));
            }
        }
    }
    out
}

fn object_ref(v: &Value) -> ObjectRef {
    ObjectRef::new(v["metadata"]["namespace"].as_str().unwrap_or_default(), v["metadata"]["name"].as_str().unwrap_or_default())
}

/// Decodes, validates and plans `objects`; checks the properties. Returns
/// (objects left out, backends planned).
fn check(services: &[Value], slices: &[Value], nodes: &[Value]) -> Result<(usize, usize), TestCaseError> {
    let mut left_out = 0;
    let all: Vec<&Value> = services.iter().chain(slices).chain(nodes).collect();
    let text: String = all.iter().map(|v| format!("---\n{}", serde_norway::to_string(v).unwrap())).collect();
    let (model, log) = logged(|| {
        let mut m = Model::default();
        m.add_yaml(&text, "props");
        m
    });
    // Every object is in the model, or named in the log (a later object of
    // the same name replaces an earlier one: only the last counts).
    for v in services {
        let id = object_ref(v);
        let last = services.iter().rev().find(|o| object_ref(o) == id).unwrap();
        if std::ptr::eq(last, v) && !model.services.contains_key(&id) {
            left_out += 1;
            prop_assert!(log.contains(&format!("object={id}")), "Service {id} left out silently:\n{log}");
        }
    }
    for v in slices {
        let id = object_ref(v);
        let last = slices.iter().rev().find(|o| object_ref(o) == id).unwrap();
        if std::ptr::eq(last, v) && !model.slices.contains_key(&id) {
            left_out += 1;
            prop_assert!(log.contains(&format!("object={id}")), "EndpointSlice {id} left out silently:\n{log}");
        }
    }
    let cfg = PlanConfig { node_name: "node-0".into(), default_algorithm: parse_algorithm("round-robin").unwrap(), ..PlanConfig::default() };
    let mut ids = Ids::new(65_536, 262_144);
    let p = plan(&model, &cfg, &mut ids);
    // Nothing written leads anywhere but to a ready or serving endpoint.
    let ok = allowed(slices);
    for (key, id) in &p.contents.slots {
        let b = p.contents.backends.get(id);
        prop_assert!(b.is_some(), "slot {key:?} points to backend {id}, which is not written");
        let b = b.unwrap();
        let end = (Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port));
        prop_assert!(ok.contains(&end), "backend {end:?} is not a ready endpoint of the input");
        prop_assert!(p.contents.services.values().any(|s| s.id == key.service_id), "slot of service id {} without a frontend", key.service_id);
    }
    Ok((left_out, p.contents.slots.len()))
}

/// What the checks covered, for the figures each test prints.
#[derive(Default)]
struct Covered {
    cases: usize,
    objects: usize,
    left_out: usize,
    planned_backends: usize,
    cases_with_slots: usize,
}

/// Runs `cases` generated cases of `strategy` through [`check`].
fn run<S: Strategy>(what: &str, cases: u32, strategy: S, split: impl Fn(S::Value) -> (Vec<Value>, Vec<Value>, Vec<Value>)) -> Covered {
    let covered = std::cell::RefCell::new(Covered::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() });
    let result = runner.run(&strategy, |v| {
        let (services, slices, nodes) = split(v);
        let got = check(&services, &slices, &nodes)?;
        let mut c = covered.borrow_mut();
        c.cases += 1;
        c.objects += services.len() + slices.len() + nodes.len();
        c.left_out += got.0;
        c.planned_backends += got.1;
        c.cases_with_slots += usize::from(got.1 > 0);
        Ok(())
    });
    let c = covered.into_inner();
    println!(
        "props {what}: {} cases, {} objects ({} left out, each named), {} slots checked against the endpoints ({} cases with slots)",
        c.cases, c.objects, c.left_out, c.planned_backends, c.cases_with_slots
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    c
}

#[test]
fn arbitrary_objects_never_panic_are_named_when_left_out_and_plan_only_to_ready_endpoints() {
    let objects = (prop::collection::vec(service(), 0..4), prop::collection::vec(slice(), 0..5), prop::collection::vec(node(), 0..3));
    let c = run("arbitrary", 256, objects, |(a, b, c)| (a, b, c));
    assert!(c.left_out > 0, "hostile objects were generated");
}

/// Slices that do belong to the generated Service (same namespace, label
/// naming it): the path where plan() really builds backends.
#[test]
fn matching_services_and_slices_plan_only_to_ready_endpoints() {
    let objects = (sane_service(), prop::collection::vec(slice(), 1..4));
    let c = run("matching", 256, objects, |(svc, slices)| {
        let n = svc["metadata"]["name"].clone();
        // The slice ports of the Service's ports (name, target port, protocol).
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| json!({"name": p["name"], "port": p["targetPort"], "protocol": p["protocol"]}))
            .collect();
        let slices = slices
            .into_iter()
            .map(|mut s| {
                s["metadata"]["namespace"] = json!("shop");
                s["metadata"]["labels"]["kubernetes.io/service-name"] = n.clone();
                s["addressType"] = json!("IPv4");
                s["ports"] = json!(ports);
                s
            })
            .collect();
        (vec![svc], slices, vec![])
    });
    assert!(c.cases_with_slots * 10 >= c.cases, "plan() built backends in at least a tenth of the cases");
}

#[test]
fn a_slice_of_10000_endpoints_and_one_too_many_are_handled() {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}});
    let slice = |n: usize, name: &str| {
        let eps: Vec<Value> = (0..n).map(|i| json!({"addresses": [Ipv4Addr::from(0x0a00_0000 + i as u32 + 1).to_string()], "conditions": {"ready": true}})).collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "shop", "name": name, "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
    };
    let (big, over) = (slice(10_000, "web-big"), slice(10_001, "web-over"));
    check(std::slice::from_ref(&svc), &[big.clone(), over.clone()], &[]).unwrap();
    let text = [&svc, &big, &over].iter().map(|v| format!("---\n{}", serde_norway::to_string(v).unwrap())).collect::<String>();
    let (model, log) = logged(|| {
        let mut m = Model::default();
        m.add_yaml(&text, "props");
        m
    });
    let kept = model.slices.get(&ObjectRef::new("shop", "web-big")).map(|s| s.endpoints.len());
    println!("props: a slice of 10,000 endpoints keeps {kept:?}; one of 10,001 is {}", if log.contains("object=shop/web-over") { "named and left out" } else { "kept" });
    assert_eq!(kept, Some(10_000));
    assert!(!model.slices.contains_key(&ObjectRef::new("shop", "web-over")) && log.contains("object=shop/web-over"), "{log}");
}
