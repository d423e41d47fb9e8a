//! Validation: one Kubernetes object in, a well-formed IPv4 model object
//! out, or the reason it is refused (logged with the object's
//! `namespace/name`, the object skipped). A bad part that does not make the
//! whole object meaningless (one endpoint of a slice, one address of a Node,
//! an invalid source range) is skipped alone, with a warning naming the
//! object and the part. Nothing is left out without a log line at the
//! default level: IPv6 parts of dual-stack objects at info; what kube-proxy
//! ignores too at info the
//! first time (a headless Service) or at debug (a slice without its service
//! label).
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};

use super::{
    parse_algorithm, Endpoint, Node, ObjectRef, Proto, Service, ServicePort, ServiceType, Slice,
    SlicePort, ALGORITHM_ANNOTATION, LB_MODE_ANNOTATION, MAGLEV_SIZE_ANNOTATION, WEIGHTS_ANNOTATION, DEFAULT_AFFINITY_TIMEOUT_S, HEADLESS_LABEL, MAX_ENDPOINTS, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, TrafficDistribution, ZONE_LABEL,
};

/// Kubernetes' upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

/// An address string: `Ok(Some)` IPv4, `Ok(None)` IPv6 (not balanced yet),
/// `Err` anything else.
fn parse_ip(s: &str) -> Result<Option<Ipv4Addr>, String> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(Some(a)),
        Ok(IpAddr::V6(_)) => Ok(None),
        Err(_) => Err(format!("invalid IP address {s:?}")),
    }
}

/// Parses a list of addresses, keeping IPv4 ones (deduplicated, in order).
fn parse_ips<'a>(
    id: &ObjectRef,
    what: &str,
    list: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for s in list {
        match parse_ip(s) {
            Ok(Some(a)) if !out.contains(&a) => out.push(a),
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!(object = %id, address = %s, "{what}: IPv6 is not balanced yet; skipping this address"),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    Ok(out)
}

fn parse_port(what: &str, p: i32) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{what} {p} is out of range 1..=65535")),
    }
}

/// The protocol of a port (TCP when unset, as the API server defaults it);
/// `Err` for anything but TCP, UDP and SCTP (case matters, as in the API).
fn parse_proto(p: Option<&str>) -> Result<Proto, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Proto::Tcp),
        "UDP" => Ok(Proto::Udp),
        "SCTP" => Ok(Proto::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

pub(super) fn validate_service(id: &ObjectRef, s: &core::Service) -> Option<Service> {
    if let Some(why) = not_ours(s.metadata.labels.as_ref()) {
        log_ignored_once(id, why);
        return None;
    }
    match service(id, s) {
        Ok(svc) => Some(svc),
        Err(e) => {
            tracing::warn!(object = %id, reason = %e, "skipping invalid Service");
            None
        }
    }
}

fn service(id: &ObjectRef, s: &core::Service) -> Result<Service, String> {
    if id.name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    let spec = s.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        other => return Err(format!("unknown spec.type {other:?}")),
    };
    // spec.clusterIPs supersedes spec.clusterIP; "None" marks a headless service.
    let cluster_ip_strings: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
        _ => Vec::new(),
    };
    let cluster_ip_strings: Vec<&String> = cluster_ip_strings
        .iter()
        .filter(|s| s.as_str() != "None")
        .collect();
    let cluster_ips = parse_ips(id, "spec.clusterIPs", cluster_ip_strings)?;
    let external_ips = parse_ips(id, "spec.externalIPs", spec.external_ips.iter().flatten())?;
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    // `ipMode: Proxy` means the load balancer proxies to the NodePorts
    // itself: kube-proxy does not capture its IP, and neither do we.
    let lb_strings = ingress
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_ref());
    let lb_ips = parse_ips(id, "status.loadBalancer.ingress", lb_strings.clone())?;
    let mut lb_ips_v6 = Vec::new();
    for a in lb_strings.filter_map(|s| s.trim().parse::<std::net::Ipv6Addr>().ok()) {
        if !lb_ips_v6.contains(&a) {
            lb_ips_v6.push(a);
        }
    }
    let source_ranges = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
        .map(|r| source_ranges(id, r));

    let mut ports = Vec::new();
    let mut seen_names = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    let mut seen_node_ports = BTreeSet::new();
    for p in spec.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        let port = parse_port("port", p.port)?;
        let node_port = p.node_port.map(|n| parse_port("nodePort", n)).transpose()?;
        // Duplicates are rejected by the API server; here they would make two
        // map entries fight over one key.
        if !seen_names.insert(name.clone()) {
            return Err(format!("duplicate port name {name:?}"));
        }
        let proto_name = p.protocol.as_deref().unwrap_or("TCP").to_string();
        if !seen_ports.insert((port, proto_name.clone())) {
            return Err(format!("duplicate port {port}/{proto_name}"));
        }
        if let Some(n) = node_port {
            if !seen_node_ports.insert((n, proto_name.clone())) {
                return Err(format!("duplicate nodePort {n}/{proto_name}"));
            }
        }
        ports.push(ServicePort {
            name,
            port,
            node_port,
            proto: parse_proto(p.protocol.as_deref())?,
        });
    }

    let local = |what: &str, v: &Option<String>| match v.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            tracing::warn!(object = %id, value = other, "unknown {what}; using Cluster");
            false
        }
    };
    let external_local = local("externalTrafficPolicy", &spec.external_traffic_policy);
    let internal_local = local("internalTrafficPolicy", &spec.internal_traffic_policy);
    // An invalid one (the API server refuses it) only loses the health check,
    // not the service.
    let health_check_node_port = spec.health_check_node_port.and_then(|p| {
        let port = parse_port("healthCheckNodePort", p);
        if let Err(e) = &port {
            tracing::warn!(object = %id, reason = %e, "ignoring spec.healthCheckNodePort");
        }
        port.ok()
    });

    let affinity_timeout_s = match spec.session_affinity.as_deref() {
        None | Some("None") => 0,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match t {
                None => DEFAULT_AFFINITY_TIMEOUT_S,
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => t as u32,
                Some(t) => return Err(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range 1..=86400"
                )),
            }
        }
        Some(other) => return Err(format!("unknown sessionAffinity {other:?}")),
    };

    let algorithm = s.metadata.annotations.as_ref().and_then(|a| a.get(ALGORITHM_ANNOTATION)).and_then(|v| {
        let a = parse_algorithm(v);
        if a.is_none() {
            tracing::warn!(object = %id, value = %v, "unknown {ALGORITHM_ANNOTATION} (expected random, round-robin, maglev or least-conn); using the default");
        }
        a
    });

    let annotation = |k: &str| s.metadata.annotations.as_ref().and_then(|a| a.get(k));
    let maglev_table_size = annotation(MAGLEV_SIZE_ANNOTATION).and_then(|v| {
        let size = v.trim().parse::<u32>().ok().filter(|&n| crate::control::maglev::is_prime(n) && n <= crate::control::maglev::MAX_TABLE_SIZE);
        if size.is_none() {
            tracing::warn!(object = %id, value = %v, "{MAGLEV_SIZE_ANNOTATION} must be a prime up to {}; using the default", crate::control::maglev::MAX_TABLE_SIZE);
        }
        size
    });
    let lb_mode = annotation(LB_MODE_ANNOTATION).and_then(|v| match v.trim().parse::<crate::lbmode::LbMode>() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(object = %id, "{LB_MODE_ANNOTATION}: {e}; using the node's --lb-mode");
            None
        }
    });
    let weights = annotation(WEIGHTS_ANNOTATION).map(|v| parse_weights(id, v)).unwrap_or_default();

    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        None => None,
        Some("PreferClose") => Some(TrafficDistribution::PreferClose),
        Some("PreferSameZone") => Some(TrafficDistribution::PreferSameZone),
        Some("PreferSameNode") => Some(TrafficDistribution::PreferSameNode),
        Some(other) => {
            // kube-proxy ignores values it does not know, as does the agent.
            tracing::warn!(object = %id, value = other, "unknown spec.trafficDistribution; ignored");
            None
        }
    };

    Ok(Service {
        traffic_distribution,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        service_type,
        cluster_ips,
        external_ips,
        lb_ips,
        lb_ips_v6,
        source_ranges,
        ports,
        external_local,
        health_check_node_port,
        internal_local,
        affinity_timeout_s,
        algorithm,
        maglev_table_size,
        lb_mode,
        weights,
    })
}

/// Why kube-proxy would not see an object with these labels: its informers
/// list Services and EndpointSlices with the selector
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`
/// (any value of either label excludes the object).
fn not_ours(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<&'static str> {
    let labels = labels?;
    if labels.contains_key(SERVICE_PROXY_NAME_LABEL) {
        Some("owned by another service proxy (label service.kubernetes.io/service-proxy-name)")
    } else if labels.contains_key(HEADLESS_LABEL) {
        Some("headless (label service.kubernetes.io/headless)")
    } else {
        None
    }
}

/// Logs an ignored object at info level the first time it is seen in this
/// process (models are rebuilt on every change; one line per object is
/// enough), at debug level afterwards.
fn log_ignored_once(id: &ObjectRef, why: &str) {
    static SEEN: std::sync::Mutex<BTreeSet<ObjectRef>> = std::sync::Mutex::new(BTreeSet::new());
    let first = match SEEN.lock() {
        Ok(mut seen) => {
            // Bounded: a churning cluster cannot grow it without limit.
            if seen.len() > MAX_ENDPOINTS {
                seen.clear();
            }
            seen.insert(id.clone())
        }
        Err(_) => true,
    };
    if first {
        tracing::info!(object = %id, reason = why, "ignored, as kube-proxy ignores it");
    } else {
        tracing::debug!(object = %id, reason = why, "ignored, as kube-proxy ignores it");
    }
}

/// `loadBalancerSourceRanges`: IPv4 CIDRs as (network, prefix length). An
/// IPv6 range does not apply to IPv4 frontends; an invalid one (the API
/// server rejects them) is warned about and left out. Either way the list
/// still restricts: a client must match one of the ranges that remain.
fn source_ranges(id: &ObjectRef, ranges: &[String]) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    for r in ranges {
        let parsed = r.trim().split_once('/').and_then(|(a, len)| Some((a.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?)));
        match parsed {
            Some((IpAddr::V4(a), len)) if len <= 32 => {
                // The network address: host bits off, as the trie matches bits.
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let net = (Ipv4Addr::from(u32::from(a) & mask), len);
                if !out.contains(&net) {
                    out.push(net);
                }
            }
            Some((IpAddr::V6(_), len)) if len <= 128 => {
                tracing::info!(object = %id, range = %r, "IPv6 loadBalancerSourceRanges entry: IPv6 is not balanced yet; skipped")
            }
            _ => tracing::warn!(object = %id, range = %r, "invalid loadBalancerSourceRanges entry (expected a CIDR); ignored"),
        }
    }
    if out.is_empty() {
        tracing::warn!(object = %id, "loadBalancerSourceRanges has no IPv4 range: no client can reach the LoadBalancer IPs");
    }
    out
}

/// `10.0.2.11=3, 10.0.2.12=1`; a bad entry is warned about and left out.
fn parse_weights(id: &ObjectRef, v: &str) -> std::collections::BTreeMap<Ipv4Addr, u32> {
    v.split(',')
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            let parsed = e.split_once('=').and_then(|(a, w)| {
                let w = w.trim().parse::<u32>().ok().filter(|w| (1..=1000).contains(w))?;
                Some((a.trim().parse::<Ipv4Addr>().ok()?, w))
            });
            if parsed.is_none() {
                tracing::warn!(object = %id, entry = %e.trim(), "bad {WEIGHTS_ANNOTATION} entry (expected <IPv4>=<1..1000>); ignored");
            }
            parsed
        })
        .collect()
}

pub(super) fn validate_slice(id: &ObjectRef, s: &discovery::EndpointSlice) -> Option<Slice> {
    if let Some(why) = not_ours(s.metadata.labels.as_ref()) {
        log_ignored_once(id, why);
        return None;
    }
    let Some(service) = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        tracing::debug!(object = %id, "EndpointSlice without a {SERVICE_NAME_LABEL} label; ignored");
        return None;
    };
    match s.address_type.as_str() {
        "IPv4" => {}
        "IPv6" | "FQDN" => {
            tracing::info!(object = %id, address_type = %s.address_type, "only IPv4 EndpointSlices are balanced; ignored");
            return None;
        }
        other => {
            tracing::warn!(object = %id, address_type = other, "skipping EndpointSlice with an unknown addressType");
            return None;
        }
    }
    match slice(id, service, s) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(object = %id, reason = %e, "skipping invalid EndpointSlice");
            None
        }
    }
}

fn slice(id: &ObjectRef, service: &str, s: &discovery::EndpointSlice) -> Result<Slice, String> {
    if id.name.is_empty() {
        return Err("metadata.name is missing".into());
    }
    if s.endpoints.len() > MAX_ENDPOINTS {
        return Err(format!(
            "{} endpoints (more than {MAX_ENDPOINTS})",
            s.endpoints.len()
        ));
    }
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for p in s.ports.iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        let proto = parse_proto(p.protocol.as_deref())?;
        if !seen.insert((name.clone(), p.protocol.clone())) {
            return Err(format!("duplicate port name {name:?}"));
        }
        // An unset port means "not restricted"; kube-proxy cannot use it either.
        let Some(port) = p.port else {
            tracing::info!(object = %id, port = %name, "EndpointSlice port without a number: not balanced; skipped");
            continue;
        };
        ports.push(SlicePort {
            name,
            port: parse_port("port", port)?,
            proto,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        // One bad endpoint is skipped alone: the others still serve.
        let addr = match endpoint_addr(e) {
            Ok(a) => a,
            Err(reason) => {
                tracing::warn!(object = %id, endpoint = i, %reason, "skipping an invalid endpoint of an EndpointSlice; the others are kept");
                continue;
            }
        };
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        endpoints.push(Endpoint {
            addr,
            node_name: e.node_name.clone(),
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            zone: e.zone.clone().filter(|z| !z.is_empty()),
            zone_hints: e.hints.iter().flat_map(|h| h.for_zones.iter().flatten()).map(|z| z.name.clone()).collect(),
            node_hints: e.hints.iter().flat_map(|h| h.for_nodes.iter().flatten()).map(|n| n.name.clone()).collect(),
        });
    }
    Ok(Slice {
        service: service.to_string(),
        ports,
        endpoints,
    })
}

/// The IPv4 address of an endpoint of an IPv4 slice (its first address:
/// the API allows exactly one).
fn endpoint_addr(e: &discovery::Endpoint) -> Result<Ipv4Addr, String> {
    let Some(first) = e.addresses.first() else {
        return Err("the endpoint has no address".into());
    };
    match parse_ip(first)? {
        Some(a) => Ok(a),
        None => Err(format!("IPv6 address {first:?} in an IPv4 slice")),
    }
}

pub(super) fn node(id: &ObjectRef, n: &core::Node) -> Node {
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    let mut addresses = Vec::new();
    for a in addrs.into_iter().flatten() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue; // Hostname, InternalDNS, ...: not addresses we serve on
        }
        match parse_ip(&a.address) {
            Ok(Some(a)) if !addresses.contains(&a) => addresses.push(a),
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!(object = %id, address = %a.address, "Node IPv6 address: not balanced yet; skipped"),
            Err(reason) => tracing::warn!(object = %id, %reason, "skipping an invalid Node address; the others are kept"),
        }
    }
    let zone = n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).filter(|z| !z.is_empty()).cloned();
    Node { addresses, zone }
}
