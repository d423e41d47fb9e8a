//! The model: the Kubernetes objects the agent acts on (v1 Service,
//! discovery.k8s.io/v1 EndpointSlice, v1 Node), parsed from YAML and
//! validated once, so that `plan()` only ever sees well-formed, IPv4 data.
//!
//! Input is what `kubectl get svc,endpointslices,nodes -A -o yaml` prints
//! (a `kind: List`), plain multi-document YAML, or a directory of such files.
//! Nothing here panics on input: an object that is invalid or hostile (a bad
//! address, a port out of range, duplicate ports, an unknown protocol, an
//! absurd endpoint count) is logged with its `namespace/name` and skipped,
//! and every other object keeps working. IPv6 parts are not errors: the
//! dataplane is IPv4-only for now, so they are left out at debug level.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1 as core,
    discovery::v1 as discovery,
};
use lb_common::{algorithm, IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};

/// Label that joins an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation choosing a service's backend selection algorithm.
pub const ALGORITHM_ANNOTATION: &str = "xdplb.io/algorithm";
/// Endpoints per slice or per service beyond which an object is treated as
/// hostile (Kubernetes caps a slice at 1000; kube-proxy has no use for more).
pub const MAX_ENDPOINTS: usize = 10_000;
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Kubernetes' upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

/// `namespace/name` of an object (nodes have an empty namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_string(), name: name.to_string() }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// L4 protocol of a port (SCTP is not balanced yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number the maps use.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// "" for the single unnamed port Kubernetes allows.
    pub name: String,
    pub port: u16,
    pub node_port: Option<u16>,
    pub proto: Proto,
}

/// A validated Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub service_type: ServiceType,
    /// IPv4 ClusterIPs; empty for headless services (`None`).
    pub cluster_ips: Vec<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (IPv4).
    pub lb_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// ClientIP affinity timeout; 0 = no affinity.
    pub affinity_timeout_s: u32,
    /// From the `xdplb.io/algorithm` annotation; `None` = the node default.
    pub algorithm: Option<u8>,
}

/// One entry of an EndpointSlice's `ports` (with a known port number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

/// One endpoint, its conditions resolved the way the API documents them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `addresses[0]`, as kube-proxy uses it.
    pub addr: Ipv4Addr,
    pub node_name: Option<String>,
    /// Unset means ready.
    pub ready: bool,
    /// Unset means the same as `ready`.
    pub serving: bool,
    /// Unset means not terminating.
    pub terminating: bool,
}

/// A validated IPv4 EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// A Node's IPv4 InternalIP and ExternalIP addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub addresses: Vec<Ipv4Addr>,
}

/// Everything the planner needs, keyed for deterministic iteration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub services: BTreeMap<ObjectRef, Service>,
    pub slices: BTreeMap<ObjectRef, Slice>,
    /// By node name.
    pub nodes: BTreeMap<String, Node>,
}

/// Why a file could not be read at all (objects inside are never errors).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl Model {
    /// Loads a YAML file, or every `*.yaml`/`*.yml` file of a directory (not
    /// recursive, in name order so a later file wins on duplicates).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let mut model = Model::default();
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| LoadError::Read { path: file.clone(), source })?;
            model.add_yaml(&text, &file.display().to_string());
        }
        Ok(model)
    }

    /// Adds every object of a (multi-document) YAML text; `origin` names the
    /// text in logs.
    pub fn add_yaml(&mut self, text: &str, origin: &str) {
        for doc in serde_yaml::Deserializer::from_str(text) {
            match serde_yaml::Value::deserialize(doc) {
                Ok(v) => self.add_value(v, origin),
                Err(e) => {
                    // A syntax error ends the stream: keep what came before it.
                    tracing::warn!(%origin, error = %e, "invalid YAML; the rest of this file is skipped");
                    return;
                }
            }
        }
    }

    fn add_value(&mut self, v: serde_yaml::Value, origin: &str) {
        if v.is_null() {
            return; // an empty document (`---` at the end)
        }
        let api_version = v.get("apiVersion").and_then(|s| s.as_str()).unwrap_or_default().to_string();
        let kind = v.get("kind").and_then(|s| s.as_str()).unwrap_or_default().to_string();
        let id = object_ref(&v);
        match (api_version.as_str(), kind.as_str()) {
            (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") | (_, "NodeList") => {
                let items = match v {
                    serde_yaml::Value::Mapping(mut m) => m.remove("items"),
                    _ => None,
                };
                if let Some(serde_yaml::Value::Sequence(items)) = items {
                    for item in items {
                        self.add_value(item, origin);
                    }
                }
            }
            ("v1", "Service") => match serde_yaml::from_value::<core::Service>(v) {
                Ok(s) => {
                    if let Some(s) = validate_service(&id, &s) {
                        self.services.insert(id, s);
                    }
                }
                Err(e) => tracing::warn!(object = %id, %origin, error = %e, "skipping malformed Service"),
            },
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                match serde_yaml::from_value::<discovery::EndpointSlice>(v) {
                    Ok(s) => {
                        if let Some(s) = validate_slice(&id, &s) {
                            self.slices.insert(id, s);
                        }
                    }
                    Err(e) => tracing::warn!(object = %id, %origin, error = %e, "skipping malformed EndpointSlice"),
                }
            }
            ("v1", "Node") => match serde_yaml::from_value::<core::Node>(v) {
                Ok(n) => {
                    self.nodes.insert(id.name.clone(), node(&n));
                }
                Err(e) => tracing::warn!(object = %id, %origin, error = %e, "skipping malformed Node"),
            },
            _ => tracing::debug!(object = %id, %api_version, %kind, %origin, "skipping an object of a kind the agent does not use"),
        }
    }
}

/// The files `path` stands for: itself, or the YAML files in it.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// `namespace/name` from raw metadata, for logs even when the object is malformed.
fn object_ref(v: &serde_yaml::Value) -> ObjectRef {
    let meta = v.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(|s| s.as_str()).unwrap_or_default().to_string();
    ObjectRef { namespace: field("namespace"), name: field("name") }
}

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
fn parse_ips<'a>(what: &str, list: impl IntoIterator<Item = &'a String>) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for s in list {
        match parse_ip(s) {
            Ok(Some(a)) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
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

/// `Ok(Some)` TCP/UDP, `Ok(None)` SCTP (valid, not balanced yet), `Err` unknown.
fn parse_proto(p: Option<&str>) -> Result<Option<Proto>, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Some(Proto::Tcp)),
        "UDP" => Ok(Some(Proto::Udp)),
        "SCTP" => Ok(None),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn validate_service(id: &ObjectRef, s: &core::Service) -> Option<Service> {
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
    let cluster_ip_strings: Vec<&String> = cluster_ip_strings.iter().filter(|s| s.as_str() != "None").collect();
    let cluster_ips = parse_ips("spec.clusterIPs", cluster_ip_strings)?;
    let external_ips = parse_ips("spec.externalIPs", spec.external_ips.iter().flatten())?;
    let ingress = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    // `ipMode: Proxy` means the load balancer proxies to the NodePorts
    // itself: kube-proxy does not capture its IP, and neither do we.
    let lb_ips = parse_ips(
        "status.loadBalancer.ingress",
        ingress.into_iter().flatten().filter(|i| i.ip_mode.as_deref() != Some("Proxy")).filter_map(|i| i.ip.as_ref()),
    )?;
    if spec.load_balancer_source_ranges.as_ref().is_some_and(|r| !r.is_empty()) {
        tracing::warn!(object = %id, "loadBalancerSourceRanges are not enforced yet: every client can reach this service's external frontends");
    }

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
        match parse_proto(p.protocol.as_deref())? {
            Some(proto) => ports.push(ServicePort { name, port, node_port, proto }),
            None => tracing::warn!(object = %id, port, "SCTP is not balanced yet; skipping this port"),
        }
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
                Some(t) => return Err(format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range 1..=86400")),
            }
        }
        Some(other) => return Err(format!("unknown sessionAffinity {other:?}")),
    };

    let algorithm = s.metadata.annotations.as_ref().and_then(|a| a.get(ALGORITHM_ANNOTATION)).and_then(|v| {
        let a = parse_algorithm(v);
        if a.is_none() {
            tracing::warn!(object = %id, value = %v, "unknown {ALGORITHM_ANNOTATION} (expected random or round-robin); using the default");
        }
        a
    });

    Ok(Service {
        service_type,
        cluster_ips,
        external_ips,
        lb_ips,
        ports,
        external_local,
        internal_local,
        affinity_timeout_s,
        algorithm,
    })
}

/// An algorithm name as the annotation and the CLI spell it.
pub fn parse_algorithm(s: &str) -> Option<u8> {
    match s.trim() {
        "random" => Some(algorithm::RANDOM),
        "round-robin" => Some(algorithm::ROUND_ROBIN),
        _ => None,
    }
}

/// The name of an algorithm constant.
pub fn algorithm_name(a: u8) -> &'static str {
    match a {
        algorithm::RANDOM => "random",
        algorithm::ROUND_ROBIN => "round-robin",
        _ => "unknown",
    }
}

fn validate_slice(id: &ObjectRef, s: &discovery::EndpointSlice) -> Option<Slice> {
    let Some(service) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        tracing::debug!(object = %id, "EndpointSlice without a {SERVICE_NAME_LABEL} label; ignored");
        return None;
    };
    match s.address_type.as_str() {
        "IPv4" => {}
        "IPv6" | "FQDN" => {
            tracing::debug!(object = %id, address_type = %s.address_type, "only IPv4 EndpointSlices are balanced; ignored");
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
        return Err(format!("{} endpoints (more than {MAX_ENDPOINTS})", s.endpoints.len()));
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
        let (Some(port), Some(proto)) = (p.port, proto) else { continue };
        ports.push(SlicePort { name, port: parse_port("port", port)?, proto });
    }
    let mut endpoints = Vec::new();
    for e in &s.endpoints {
        let Some(first) = e.addresses.first() else {
            return Err("an endpoint has no address".into());
        };
        let addr = match parse_ip(first)? {
            Some(a) => a,
            None => return Err(format!("IPv6 address {first:?} in an IPv4 slice")),
        };
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        endpoints.push(Endpoint {
            addr,
            node_name: e.node_name.clone(),
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
        });
    }
    Ok(Slice { service: service.to_string(), ports, endpoints })
}

fn node(n: &core::Node) -> Node {
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    let addresses = addrs
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| parse_ip(&a.address).ok().flatten())
        .fold(Vec::new(), |mut v, a| {
            if !v.contains(&a) {
                v.push(a);
            }
            v
        });
    Node { addresses }
}


#[cfg(test)]
pub(crate) mod tests;
