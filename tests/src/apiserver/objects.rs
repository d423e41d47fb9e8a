//! Objects for the double, shaped like `kubectl get -o json` prints them.
use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// A ClusterIP Service with one TCP port `http` (`port` → named target port
/// `http`), balanced round-robin so per-backend counts are exact.
pub fn service(namespace: &str, name: &str, cluster_ip: Ipv4Addr, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": namespace, "name": name,
                     "annotations": {"xdplb.io/algorithm": "round-robin"}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()],
                 "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": "http"}],
                 "selector": {"app": name}},
    })
}

/// `svc` as a NodePort Service, its port on `node_port` of every node address.
pub fn with_node_port(mut svc: Value, node_port: u16) -> Value {
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["ports"][0]["nodePort"] = json!(node_port);
    svc
}

/// An EndpointSlice of `service` with one ready endpoint per address, port
/// `http` = `port`, on node `node`.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    addrs: &[Ipv4Addr],
    node: &str,
) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| {
            json!({"addresses": [a.to_string()], "nodeName": node,
                   "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": namespace, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A Node with one InternalIP.
pub fn node(name: &str, addr: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": addr.to_string()}]},
    })
}

/// `shop/web` with a TCP and a UDP port, both 80 → 8080, round-robin.
pub fn web_tcp_udp(cluster_ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "web", "annotations": {"xdplb.io/algorithm": "round-robin"}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.to_string(), "clusterIPs": [cluster_ip.to_string()],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                           {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": 8080}],
                 "selector": {"app": "web"}},
    })
}

/// An endpoint's conditions, as the EndpointSlice controller writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Ready,
    /// Its pod is shutting down: serving, not ready, terminating.
    Terminating,
    /// Not ready yet (readiness probe not passed).
    Unready,
}

/// The EndpointSlice `shop/web-1` of [`web_tcp_udp`] (ports `http` and
/// `dns`, 8080) with `eps` (address, conditions) on node `node`.
pub fn web_slice(eps: &[(Ipv4Addr, Cond)], node: &str) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|&(a, c)| {
            let (ready, serving, terminating) = match c {
                Cond::Ready => (true, true, false),
                Cond::Terminating => (false, true, true),
                Cond::Unready => (false, false, false),
            };
            json!({"addresses": [a.to_string()], "nodeName": node,
                   "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "shop", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
        "endpoints": endpoints,
    })
}
