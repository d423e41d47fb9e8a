//! Validation: one Kubernetes object in, a well-formed model object (of
//! either address family, or both) out, or the reason it is refused (logged with the object's
//! `namespace/name`, the object skipped). A bad part that does not make the
//! whole object meaningless (one endpoint of a slice, one address of a Node,
//! an invalid source range) is skipped alone, with a warning naming the
//! object and the part. Nothing is left out without a log line at the
//! default level: link-local
//! addresses and addresses of a family the Service has no ClusterIP of at
//! warn or info; what kube-proxy ignores too at info the first time (a
//! headless Service, an FQDN slice) or at debug (a slice without its
//! service label).
use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};

use super::{
    cidr,
    ip::{self, AddrError},
    IpFamily, parse_algorithm, Endpoint, EndpointHints, Node, SharedNames, ObjectRef, Proto, Service, ServicePort, ServiceType, Slice,
    SlicePort, ALGORITHM_ANNOTATION, LB_MODE_ANNOTATION, MAGLEV_SIZE_ANNOTATION, WEIGHTS_ANNOTATION, DEFAULT_AFFINITY_TIMEOUT_S, HEADLESS_LABEL, MAX_ENDPOINTS, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, TrafficDistribution, ZONE_LABEL,
};

/// Kubernetes' upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

/// Parses a list of addresses of both families (deduplicated, in order);
/// a link-local one is skipped alone, with a warning.
fn parse_ips<'a>(
    id: &ObjectRef,
    what: &str,
    list: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for s in list {
        match ip::parse(id, what, s) {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
            Err(e @ AddrError::LinkLocal(_)) => tracing::warn!(object = %id, reason = %e, "{what}: skipping this address"),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    Ok(out)
}

/// The families a Service is served in, primary first: those of its
/// ClusterIPs. kube-proxy runs one proxier per family and each takes a
/// Service only when it has a ClusterIP of its family; `ipFamilyPolicy` is
/// the API server's instruction for allocating them, so the agent only
/// checks it against what was allocated:
/// - `SingleStack` with ClusterIPs of two families (refused by the API
///   server): the primary family only, with a warning;
/// - `RequireDualStack` with one family's ClusterIP: that family, with a
///   warning; `PreferDualStack`: whatever was allocated;
/// - a ClusterIP whose family is not the `ipFamilies` entry at its index,
///   or two ClusterIPs of one family: the Service is invalid.
///
/// A Service without ClusterIPs (headless, or written by hand without one)
/// is served in its `ipFamilies`, or both families when that is unset too.
fn families(id: &ObjectRef, spec: &core::ServiceSpec, cluster_ips: &mut Vec<IpAddr>) -> Result<Vec<IpFamily>, String> {
    let declared = spec
        .ip_families
        .iter()
        .flatten()
        .map(|f| f.parse::<IpFamily>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("spec.ipFamilies: {e}"))?;
    let policy = spec.ip_family_policy.as_deref();
    if !matches!(policy, None | Some("SingleStack" | "PreferDualStack" | "RequireDualStack")) {
        return Err(format!("unknown spec.ipFamilyPolicy {:?} (expected SingleStack, PreferDualStack or RequireDualStack)", policy.unwrap_or_default()));
    }
    if cluster_ips.is_empty() {
        return Ok(if declared.is_empty() { IpFamily::ALL.to_vec() } else { declared });
    }
    let mut families: Vec<IpFamily> = Vec::new();
    for (i, ip) in cluster_ips.iter().enumerate() {
        let f = IpFamily::of(*ip);
        if families.contains(&f) {
            return Err(format!("spec.clusterIPs: two {f} addresses"));
        }
        if declared.get(i).is_some_and(|d| *d != f) {
            return Err(format!("spec.clusterIPs[{i}] {ip} is not of spec.ipFamilies[{i}] {}", declared[i]));
        }
        families.push(f);
    }
    match policy {
        Some("SingleStack") if families.len() > 1 => {
            tracing::warn!(object = %id, "ipFamilyPolicy SingleStack with ClusterIPs of both families: served over {} (the primary) only", families[0]);
            families.truncate(1);
            cluster_ips.truncate(1);
        }
        Some("RequireDualStack") if families.len() < 2 => {
            tracing::warn!(object = %id, "ipFamilyPolicy RequireDualStack but only an {} ClusterIP: served over {} only", families[0], families[0]);
        }
        _ => {}
    }
    Ok(families)
}

/// Keeps the addresses of `families`; the others are logged (kube-proxy's
/// proxier of their family does not take the Service: it has no ClusterIP there).
fn of_families(id: &ObjectRef, what: &str, families: &[IpFamily], ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.into_iter()
        .filter(|ip| {
            let keep = families.contains(&IpFamily::of(*ip));
            if !keep {
                tracing::info!(object = %id, address = %ip, "{what}: the Service has no {} ClusterIP; this address is not served, as with kube-proxy", IpFamily::of(*ip));
            }
            keep
        })
        .collect()
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
    let mut cluster_ips = parse_ips(id, "spec.clusterIPs", cluster_ip_strings)?;
    let families = families(id, &spec, &mut cluster_ips)?;
    let external_ips = parse_ips(id, "spec.externalIPs", spec.external_ips.iter().flatten())?;
    let external_ips = of_families(id, "spec.externalIPs", &families, external_ips);
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    // `ipMode: Proxy` means the load balancer proxies to the NodePorts
    // itself: kube-proxy does not capture its IP, and neither do we.
    let lb_ingress = parse_ips(
        id,
        "status.loadBalancer.ingress",
        ingress
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_ref()),
    )?;
    let lb_ips = of_families(id, "status.loadBalancer.ingress", &families, lb_ingress.clone());
    let source_ranges = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
        .map(|r| source_ranges(id, &families, r));

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
        families,
        cluster_ips,
        external_ips,
        lb_ips,
        lb_ingress,
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

/// `loadBalancerSourceRanges` of both families as (network, prefix
/// length); each family's LoadBalancer IPs admit that family's ranges. An
/// invalid one (the API server rejects them) is warned about and left out;
/// the list still restricts: a client must match one of the ranges that
/// remain, so a family left without any admits no one (logged).
fn source_ranges(id: &ObjectRef, families: &[IpFamily], ranges: &[String]) -> Vec<cidr::Cidr> {
    let mut out = Vec::new();
    for r in ranges {
        match cidr::parse(r) {
            Ok(net) if !out.contains(&net) => out.push(net),
            Ok(_) => {}
            Err(e) => tracing::warn!(object = %id, range = %r, error = %e, "invalid loadBalancerSourceRanges entry (expected a CIDR); ignored"),
        }
    }
    for f in families {
        if !out.iter().any(|(net, _)| IpFamily::of(*net) == *f) {
            tracing::warn!(object = %id, family = %f, "loadBalancerSourceRanges has no range of this family: no {f} client can reach the LoadBalancer IPs");
        }
    }
    out
}

/// `10.0.2.11=3, fd00::11=1`; a bad entry is warned about and left out.
fn parse_weights(id: &ObjectRef, v: &str) -> std::collections::BTreeMap<IpAddr, u32> {
    v.split(',')
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            let parsed = e.split_once('=').and_then(|(a, w)| {
                let w = w.trim().parse::<u32>().ok().filter(|w| (1..=1000).contains(w))?;
                Some((ip::parse(id, WEIGHTS_ANNOTATION, a).ok()?, w))
            });
            if parsed.is_none() {
                tracing::warn!(object = %id, entry = %e.trim(), "bad {WEIGHTS_ANNOTATION} entry (expected <IP>=<1..1000>); ignored");
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
    let family = match s.address_type.as_str() {
        "IPv4" => IpFamily::IPv4,
        "IPv6" => IpFamily::IPv6,
        "FQDN" => {
            tracing::info!(object = %id, "FQDN EndpointSlices name no address to balance to (kube-proxy ignores them too); ignored");
            return None;
        }
        other => {
            tracing::warn!(object = %id, address_type = other, "skipping EndpointSlice with an unknown addressType");
            return None;
        }
    };
    match slice(id, service, family, s) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(object = %id, reason = %e, "skipping invalid EndpointSlice");
            None
        }
    }
}

fn slice(id: &ObjectRef, service: &str, family: IpFamily, s: &discovery::EndpointSlice) -> Result<Slice, String> {
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
    let mut endpoints = Vec::with_capacity(s.endpoints.len());
    let mut names = SharedNames::default();
    for (i, e) in s.endpoints.iter().enumerate() {
        // One bad endpoint is skipped alone: the others still serve.
        let addr = match endpoint_addr(id, family, e) {
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
            node_name: e.node_name.as_deref().map(|n| names.get(n)),
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            zone: e.zone.as_deref().filter(|z| !z.is_empty()).map(|z| names.get(z)),
            hints: Some(EndpointHints {
                zones: e.hints.iter().flat_map(|h| h.for_zones.iter().flatten()).map(|z| z.name.clone()).collect(),
                nodes: e.hints.iter().flat_map(|h| h.for_nodes.iter().flatten()).map(|n| n.name.clone()).collect(),
            })
            .filter(|h| !h.zones.is_empty() || !h.nodes.is_empty())
            .map(Box::new),
        });
    }
    Ok(Slice {
        family,
        service: service.to_string(),
        ports,
        endpoints,
    })
}

/// The address of an endpoint (its first: the API allows exactly one),
/// which must be of the slice's family: a slice of one family never feeds
/// the other's frontends.
fn endpoint_addr(id: &ObjectRef, family: IpFamily, e: &discovery::Endpoint) -> Result<IpAddr, String> {
    let Some(first) = e.addresses.first() else {
        return Err("the endpoint has no address".into());
    };
    let a = ip::parse(id, "endpoint address", first).map_err(|e| e.to_string())?;
    if IpFamily::of(a) != family {
        return Err(format!("{} address {first:?} in an {family} slice", IpFamily::of(a)));
    }
    Ok(a)
}

pub(super) fn node(id: &ObjectRef, n: &core::Node) -> Node {
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    let mut addresses = Vec::new();
    for a in addrs.into_iter().flatten() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue; // Hostname, InternalDNS, ...: not addresses we serve on
        }
        match ip::parse(id, "Node address", &a.address) {
            Ok(a) if !addresses.contains(&a) => addresses.push(a),
            Ok(_) => {}
            Err(reason) => tracing::warn!(object = %id, %reason, "skipping a Node address; the others are kept"),
        }
    }
    let zone = n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).filter(|z| !z.is_empty()).cloned();
    Node { addresses, zone }
}
