//! The Kubernetes e2e `[sig-network] Services` cases that test a proxy
//! (test/e2e/network/service.go), ported to the cluster in namespaces
//! (tests/src/cluster.rs): real pods on three nodes, the real agent on each,
//! one API server double. Needs root.
//!
//! | e2e case | where |
//! |---|---|
//! | should serve multiport endpoints from pods | `multiport_endpoints_same_port_other_protocols_and_a_functioning_node_port` |
//! | should serve endpoints on same port and different protocols | the same |
//! | should be able to create a functioning NodePort service | the same; cluster.rs for every node and both policies |
//! | should have session affinity work for service with type clusterIP | `session_affinity_holds_for_cluster_ip_and_node_port` |
//! | should have session affinity work for NodePort service | the same |
//! | should be able to switch session affinity for service with type clusterIP | semantics.rs `switching_session_affinity_applies_to_new_connections_only` |
//! | should have session affinity timeout work for service with type clusterIP | agent_balancing.rs `client_ip_affinity_keeps_a_client_until_its_backend_leaves_or_the_timeout` |
//! | should implement service.kubernetes.io/service-proxy-name | semantics.rs `other_proxies_services_are_left_alone_and_not_ready_endpoints_serve_when_published` |
//! | should implement service.kubernetes.io/headless | the same |
//! | should create endpoints for unready pods (publishNotReadyAddresses) | the same |
use std::net::{Ipv4Addr, SocketAddr};

use serde_json::json;
use xdplb_tests::{
    cluster::{node_addr, node_name, pod_addr, tcp_requests, udp_requests, Cluster, Source, NAMESPACE, POD_PORT, TCP, UDP},
    servers::Server,
};

const NODES: usize = 3;
const PODS: usize = 2;

/// A Service object with `ports` (JSON array) and `extra` spec fields.
fn service(name: &str, cluster_ip: Ipv4Addr, ports: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"type": "NodePort", "clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()], "ports": ports});
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": NAMESPACE, "name": name, "annotations": {"xdplb.io/algorithm": "round-robin"}},
           "spec": spec})
}

/// An EndpointSlice of `service` with `ports` and ready pods `endpoints`.
fn slice(service: &str, name: &str, ports: serde_json::Value, endpoints: &[(usize, usize)]) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|&(i, j)| json!({"addresses": [pod_addr(i, j).to_string()], "nodeName": node_name(i), "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"namespace": NAMESPACE, "name": name, "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": ports, "endpoints": eps})
}

#[test]
fn multiport_endpoints_same_port_other_protocols_and_a_functioning_node_port() {
    let mut c = Cluster::new(NODES, PODS, Source::Kube);
    // Multiport: port 80 → 8081 served by node-1's pod only, port 81 → 8082
    // by node-2's pod only, each in its own EndpointSlice (as the e2e test's
    // two pods, one per port).
    let _a = Server::start(c.pod(1, 0), 8081, "portname1@node-1/pod-0");
    let _b = Server::start(c.pod(2, 0), 8082, "portname2@node-2/pod-0");
    let multi = Ipv4Addr::new(10, 96, 0, 20);
    c.apply(service(
        "multi",
        multi,
        json!([{"name": "portname1", "port": 80, "targetPort": 8081, "protocol": "TCP", "nodePort": 30081},
               {"name": "portname2", "port": 81, "targetPort": 8082, "protocol": "TCP", "nodePort": 30082}]),
        json!({}),
    ));
    c.apply(slice("multi", "multi-1", json!([{"name": "portname1", "port": 8081, "protocol": "TCP"}]), &[(1, 0)]));
    c.apply(slice("multi", "multi-2", json!([{"name": "portname2", "port": 8082, "protocol": "TCP"}]), &[(2, 0)]));
    // Same port, two protocols: dns-tcp and dns-udp on 53, both to the pods' port.
    let dns = Ipv4Addr::new(10, 96, 0, 21);
    c.apply(service(
        "dns",
        dns,
        json!([{"name": "dns-tcp", "port": 53, "targetPort": POD_PORT, "protocol": "TCP", "nodePort": 30053},
               {"name": "dns-udp", "port": 53, "targetPort": POD_PORT, "protocol": "UDP", "nodePort": 30053}]),
        json!({}),
    ));
    let all = c.all_pods();
    c.apply(slice(
        "dns",
        "dns-1",
        json!([{"name": "dns-tcp", "port": POD_PORT, "protocol": "TCP"}, {"name": "dns-udp", "port": POD_PORT, "protocol": "UDP"}]),
        &all,
    ));
    for i in 1..=NODES {
        c.wait_backends(i, multi, 80, TCP, &[(1, 0)]);
        c.wait_backends(i, multi, 81, TCP, &[(2, 0)]);
        c.wait_backends(i, dns, 53, TCP, &all);
        c.wait_backends(i, dns, 53, UDP, &all);
    }

    let from_pod = c.pod(3, 1);
    for (port, who) in [(80, "portname1@node-1/pod-0"), (81, "portname2@node-2/pod-0")] {
        let t = tcp_requests(from_pod, SocketAddr::from((multi, port)), 20);
        assert_eq!(t.answers, [(who.to_string(), 20)].into(), "ClusterIP port {port}: {t:?}\n{}", c.logs());
    }
    // Functioning NodePort: every node's address, each port to its pod.
    for i in 1..=NODES {
        for (port, who) in [(30081, "portname1@node-1/pod-0"), (30082, "portname2@node-2/pod-0")] {
            let t = tcp_requests(&c.client, SocketAddr::from((node_addr(i), port)), 10);
            assert_eq!(t.answers, [(who.to_string(), 10)].into(), "node-{i}:{port}: {t:?}\n{}", c.logs());
        }
    }
    // Same port, TCP and UDP: both answered, by pods on every node.
    let t = tcp_requests(from_pod, SocketAddr::from((dns, 53)), 60);
    let u = udp_requests(from_pod, SocketAddr::from((dns, 53)), 60);
    for (what, t) in [("TCP", &t), ("UDP", &u)] {
        assert_eq!((t.ok(), t.failed()), (60, 0), "{what} to {dns}:53: {t:?}");
        assert_eq!(t.per_node().len(), NODES, "{what}: pods of every node answer: {:?}", t.per_node());
    }
    let u = udp_requests(&c.client, SocketAddr::from((node_addr(2), 30053)), 30);
    assert_eq!((u.ok(), u.failed()), (30, 0), "UDP NodePort 30053 beside TCP 30053: {u:?}");
}

#[test]
fn session_affinity_holds_for_cluster_ip_and_node_port() {
    let mut c = Cluster::new(NODES, PODS, Source::Kube);
    let sticky = Ipv4Addr::new(10, 96, 0, 22);
    c.apply(service(
        "sticky",
        sticky,
        json!([{"name": "tcp", "port": 80, "targetPort": POD_PORT, "protocol": "TCP", "nodePort": 30090}]),
        json!({"sessionAffinity": "ClientIP"}),
    ));
    let all = c.all_pods();
    c.apply(slice("sticky", "sticky-1", json!([{"name": "tcp", "port": POD_PORT, "protocol": "TCP"}]), &all));
    for i in 1..=NODES {
        c.wait_backends(i, sticky, 80, TCP, &all);
    }
    // The first request settles the affinity; the next ones (in parallel) keep it.
    for (what, from, to) in [
        ("ClusterIP from a pod", c.pod(1, 1), SocketAddr::from((sticky, 80))),
        ("NodePort from outside", &c.client, SocketAddr::from((node_addr(2), 30090))),
    ] {
        let first = tcp_requests(from, to, 1);
        let rest = tcp_requests(from, to, 30);
        assert_eq!(first.ok() + rest.ok(), 31, "{what}: {first:?} {rest:?}");
        assert_eq!(rest.answers.keys().collect::<Vec<_>>(), first.answers.keys().collect::<Vec<_>>(), "{what}: one backend");
    }
    // Without affinity the same service spreads (round-robin): the check above means something.
    c.apply(service(
        "sticky",
        sticky,
        json!([{"name": "tcp", "port": 80, "targetPort": POD_PORT, "protocol": "TCP", "nodePort": 30090}]),
        json!({"sessionAffinity": "None"}),
    ));
    let spread = xdplb_tests::wait_for(std::time::Duration::from_secs(20), || {
        tcp_requests(c.pod(1, 1), SocketAddr::from((sticky, 80)), 12).answers.len() > 1
    });
    assert!(spread, "affinity off: several backends\n{}", c.logs());
}
