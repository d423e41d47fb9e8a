//! kube-proxy conformance as data: every row of
//! `tests/fixtures/conformance.yaml` becomes objects, then `plan()`, the
//! maps, and real packets through the real programs; the verdict, the
//! backend and `lb-agent explain` must match the row. Needs root.
use std::{collections::BTreeSet, net::Ipv4Addr};

use lb_agent::{
    control::{
        ids::Ids,
        model::Model,
        plan::{plan, PlanConfig},
    },
    explain::{explain_pinned, Action, Origin, Query},
};
use serde::Deserialize;
use xdplb_tests::{
    fixture::run_frame,
    lb::Lb,
    observe::observed,
    packet::{Frame, TCP_SYN},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    name: String,
    from: String,
    to: String,
    #[serde(default, rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    spec: serde_norway::Mapping,
    #[serde(default)]
    node_zone: Option<String>,
    #[serde(default)]
    dport: Option<u16>,
    /// Another destination address than `to`'s (e.g. an unallocated one).
    #[serde(default)]
    dst: Option<Ipv4Addr>,
    #[serde(default)]
    proto: Option<String>,
    /// The packets' protocol when it differs from the Service port's.
    #[serde(default)]
    send: Option<String>,
    endpoints: Vec<Ep>,
    expect: String,
    #[serde(default)]
    backends: Vec<usize>,
    #[serde(default)]
    kube_proxy: Option<String>,
    #[serde(default)]
    difference: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ep {
    node: String,
    state: String,
    #[serde(default)]
    zone: Option<String>,
}

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Endpoint `i`'s address: on this node's pod network or another node's.
fn ep_addr(i: usize, ep: &Ep) -> Ipv4Addr {
    let net = if ep.node == "local" { 2 } else { 9 };
    Ipv4Addr::new(10, 0, net, 11 + i as u8)
}

/// The row's Service, EndpointSlice and Node as YAML.
fn objects(r: &Row) -> String {
    let proto = r.proto.as_deref().unwrap_or("TCP");
    let mut spec = serde_norway::Mapping::new();
    spec.insert("type".into(), r.service_type.as_deref().unwrap_or("ClusterIP").into());
    spec.insert("clusterIP".into(), CLUSTER_IP.to_string().into());
    let port: serde_norway::Value =
        serde_norway::from_str(&format!("{{name: http, port: 80, nodePort: 30080, protocol: {proto}}}")).unwrap();
    spec.insert("ports".into(), serde_norway::Value::Sequence(vec![port]));
    for (k, v) in &r.spec {
        spec.insert(k.clone(), v.clone());
    }
    let spec = serde_norway::to_string(&spec).unwrap().replace('\n', "\n  ");
    let mut eps = String::new();
    for (i, ep) in r.endpoints.iter().enumerate() {
        let cond = match ep.state.as_str() {
            "ready" => "{ready: true}",
            "not-ready" => "{ready: false, serving: false}",
            "serving-terminating" => "{ready: false, serving: true, terminating: true}",
            "terminating" => "{ready: false, serving: false, terminating: true}",
            other => panic!("{}: unknown state {other}", r.name),
        };
        let node = if ep.node == "local" { "node-0" } else { "node-1" };
        let zone = ep.zone.as_deref().map(|z| format!(", zone: {z}")).unwrap_or_default();
        eps += &format!("- {{addresses: [{}], nodeName: {node}, conditions: {cond}{zone}}}\n", ep_addr(i, ep));
    }
    let labels = r.node_zone.as_deref().map(|z| format!(", labels: {{topology.kubernetes.io/zone: {z}}}")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  {spec}\n\
         status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: {proto}}}]\nendpoints:\n{eps}---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-0{labels}}}\nstatus: {{addresses: [{{type: InternalIP, address: {NODE}}}]}}\n"
    )
}

fn action(s: &str) -> Action {
    match s {
        "DNAT" => Action::Dnat,
        "REJECT" => Action::Reject,
        "DROP" => Action::Drop,
        "PASS" => Action::Pass,
        other => panic!("unknown verdict {other}"),
    }
}

/// Runs one row; `Err` says how it failed.
fn run(r: &Row) -> Result<(), String> {
    let mut m = Model::default();
    m.add_yaml(&objects(r), &r.name);
    if m.services.len() != 1 {
        return Err(format!("the row's Service did not validate:\n{}", objects(r)));
    }
    let cfg = PlanConfig { node_name: "node-0".into(), node_addresses: Vec::new(), default_algorithm: lb_common::algorithm::RANDOM, service_cidrs: vec![(Ipv4Addr::new(10, 96, 0, 0).into(), 12)] };
    let p = plan(&m, &cfg, &mut Ids::new(1024, 4096));
    let mut lb = Lb::load();
    lb.program(&p.contents);
    let (origin, program, src) = match r.from.as_str() {
        "pod" => (Origin::Pod, "tc_ingress", Ipv4Addr::new(10, 0, 3, 2)),
        "external" => (Origin::External, "xdp_lb", Ipv4Addr::new(192, 168, 1, 2)),
        other => panic!("unknown source {other}"),
    };
    let (dst, dport) = match r.to.as_str() {
        "ClusterIP" => (CLUSTER_IP, 80),
        "NodePort" => (NODE, 30080),
        "LoadBalancer" => (LB_IP, 80),
        other => panic!("unknown destination {other}"),
    };
    let dport = r.dport.unwrap_or(dport);
    let dst = r.dst.unwrap_or(dst);
    let udp = r.send.as_deref().or(r.proto.as_deref()) == Some("UDP");
    let want = action(&r.expect);
    let allowed: BTreeSet<Ipv4Addr> = r.backends.iter().map(|i| ep_addr(*i, &r.endpoints[*i])).collect();
    let mut seen = BTreeSet::new();
    for sport in 40000..40008u16 {
        let frame = if udp { Frame::udp(src, sport, dst, dport) } else { Frame::tcp(src, sport, dst, dport, TCP_SYN) };
        let q = Query { origin, src: src.into(), sport: Some(sport), dst: dst.into(), dport, proto: if udp { 17 } else { 6 } };
        let e = explain_pinned(&lb.maps, &q, &Default::default()).map_err(|e| e.to_string())?;
        let input = frame.bytes();
        let (rc, out) = run_frame(&lb.ebpf, program, &input)?;
        let (got, backend) = observed(program, rc, &input, &out);
        if got != want {
            return Err(format!("verdict {got:?}, expected {want:?}\n{e}"));
        }
        if e.verdict.action != got {
            return Err(format!("explain says {:?}, the program {got:?}\n{e}", e.verdict.action));
        }
        if let Some(b) = backend {
            if !allowed.contains(b.ip()) {
                return Err(format!("backend {b}, expected one of {allowed:?}\n{e}"));
            }
            if e.verdict.backend.is_some_and(|eb| eb != std::net::SocketAddr::V4(b)) {
                return Err(format!("explain names {:?}, the program chose {b}", e.verdict.backend));
            }
            seen.insert(*b.ip());
        }
    }
    if want == Action::Dnat && seen.is_empty() {
        return Err("no backend seen".into());
    }
    Ok(())
}

#[test]
fn kube_proxy_conformance_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/conformance.yaml");
    let rows: Vec<Row> = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(rows.len() >= 20, "{} rows", rows.len());
    let failures: Vec<String> = rows.iter().filter_map(|r| run(r).err().map(|e| format!("{}: {e}", r.name))).collect();
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n\n"));
    // Every known difference names kube-proxy's outcome and why.
    for r in &rows {
        assert_eq!(r.kube_proxy.is_some(), r.difference.is_some(), "{}", r.name);
        assert!(r.kube_proxy.as_deref().is_none_or(|k| action(k) != action(&r.expect)), "{}", r.name);
    }
    let differences = rows.iter().filter(|r| r.difference.is_some()).count();
    assert_eq!(differences, 0, "known differences from kube-proxy");
}
