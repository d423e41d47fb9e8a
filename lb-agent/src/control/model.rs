//! The model: the Kubernetes objects the agent acts on (v1 Service,
//! discovery.k8s.io/v1 EndpointSlice, v1 Node), parsed from YAML and
//! validated once, so that `plan()` only ever sees well-formed data, of
//! either address family (std `IpAddr` throughout).
//!
//! Input is what `kubectl get svc,endpointslices,nodes -A -o yaml` prints
//! (a `kind: List`), plain multi-document YAML, or a directory of such files.
//! Nothing here panics on input: an object that is invalid or hostile (a bad
//! address, a port out of range, duplicate ports, an unknown protocol, an
//! absurd endpoint count) is logged with its `namespace/name` and skipped,
//! and every other object keeps working. Addresses are read as kube-proxy
//! reads them (see [`ip`]): an IPv4-mapped IPv6 address is IPv4, a
//! link-local one is refused.
use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use lb_common::{algorithm, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};

pub use crate::family::IpFamily;

/// Label that joins an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation choosing a service's backend selection algorithm.
pub const ALGORITHM_ANNOTATION: &str = "xdplb.io/algorithm";
/// Annotation choosing a Maglev service's table size (a prime).
pub const MAGLEV_SIZE_ANNOTATION: &str = "xdplb.io/maglev-table-size";
/// Annotation choosing a service's own `--lb-mode` (snat, dsr, hybrid).
pub const LB_MODE_ANNOTATION: &str = "xdplb.io/lb-mode";
/// Annotation weighting a service's endpoints by address.
pub const WEIGHTS_ANNOTATION: &str = "xdplb.io/backend-weights";
/// Label of a Service or EndpointSlice owned by another service proxy:
/// kube-proxy watches only objects without it, and so does the agent.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on the slices of headless
/// Services; kube-proxy watches only objects without it.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Endpoints per slice or per service beyond which an object is treated as
/// hostile (Kubernetes caps a slice at 1000; kube-proxy has no use for more).
pub const MAX_ENDPOINTS: usize = 10_000;
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// `namespace/name` of an object (nodes have an empty namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
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

/// L4 protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The IP protocol number the maps use.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Sctp => IPPROTO_SCTP,
        }
    }
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            IPPROTO_SCTP => Some(Proto::Sctp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
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
    /// The families the Service is served in, primary first: those of its
    /// ClusterIPs, as kube-proxy's per-family proxiers each take a Service
    /// only when it has a ClusterIP of theirs (see `validate::families`).
    pub families: Vec<IpFamily>,
    /// ClusterIPs (at most one per family); empty for headless services (`None`).
    pub cluster_ips: Vec<IpAddr>,
    /// Of the Service's families only, as every address list below.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of the Service's families: the
    /// LoadBalancer frontends.
    pub lb_ips: Vec<IpAddr>,
    /// Every `status.loadBalancer.ingress[].ip` (both families, `ipMode:
    /// Proxy` left out): what `lbip` announces (ARP, NDP) and counts
    /// against its pools, served or not.
    pub lb_ingress: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of both families: `None` = every
    /// client; `Some` = only these may reach the LoadBalancer IPs, each
    /// family's IPs from that family's ranges (possibly none).
    pub source_ranges: Option<Vec<cidr::Cidr>>,
    pub ports: Vec<ServicePort>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `spec.healthCheckNodePort` (1..=65535), as set; it is served only
    /// for a LoadBalancer with `externalTrafficPolicy: Local`
    /// (`plan::health_checks`).
    pub health_check_node_port: Option<u16>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// ClientIP affinity timeout; 0 = no affinity.
    pub affinity_timeout_s: u32,
    /// From the `xdplb.io/algorithm` annotation; `None` = the node default.
    pub algorithm: Option<u8>,
    /// From `xdplb.io/maglev-table-size` (a prime); `None` = the default.
    pub maglev_table_size: Option<u32>,
    /// From `xdplb.io/lb-mode`; `None` = the node's `--lb-mode`.
    pub lb_mode: Option<crate::lbmode::LbMode>,
    /// From `xdplb.io/backend-weights` (`10.0.2.11=3,10.0.2.12=1`); an
    /// endpoint not named weighs 1. Used by Maglev.
    pub weights: std::collections::BTreeMap<IpAddr, u32>,
    /// `spec.publishNotReadyAddresses`: every endpoint counts as ready, as
    /// the EndpointSlice controller would publish it.
    pub publish_not_ready: bool,
    /// `spec.trafficDistribution`, when it is one the agent knows.
    pub traffic_distribution: Option<TrafficDistribution>,
}

/// `spec.trafficDistribution`: which endpoints a node prefers. kube-proxy
/// reads only the hints the EndpointSlice controller derives from it; the
/// planner derives the same hints itself when a slice carries none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TrafficDistribution {
    /// `PreferClose` (an alias of `PreferSameZone` since 1.33).
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

/// One entry of an EndpointSlice's `ports` (with a known port number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub proto: Proto,
}

/// One endpoint, its conditions resolved the way the API documents them.
/// The model's bulk (100,000 of them at 10,000 Services), so kept to 64
/// bytes: the endpoints of a slice share their node and zone names (one
/// `Arc<str>` per name, see [`SharedNames`]), and the rarely set hints are
/// boxed (was 120 bytes and a node name allocated per endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `addresses[0]`, as kube-proxy uses it; of the slice's family.
    pub addr: IpAddr,
    pub node_name: Option<Arc<str>>,
    /// Unset means ready.
    pub ready: bool,
    /// Unset means the same as `ready`.
    pub serving: bool,
    /// Unset means not terminating.
    pub terminating: bool,
    /// `zone`: where the endpoint runs.
    pub zone: Option<Arc<str>>,
    /// `hints`; `None` when they name no zone and no node.
    pub hints: Option<Box<EndpointHints>>,
}

/// An endpoint's `hints`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointHints {
    /// `hints.forZones[].name`: the zones that should use it.
    pub zones: Vec<String>,
    /// `hints.forNodes[].name`: the nodes that should use it.
    pub nodes: Vec<String>,
}

impl Endpoint {
    /// `hints.forZones[].name`: the zones that should use it.
    pub fn zone_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.zones)
    }
    /// `hints.forNodes[].name`: the nodes that should use it.
    pub fn node_hints(&self) -> &[String] {
        self.hints.as_ref().map_or(&[], |h| &h.nodes)
    }
}

/// One allocation per distinct name (node, zone) among the endpoints of a
/// slice: a slice's endpoints run on a few nodes of one or a few zones.
#[derive(Default)]
pub struct SharedNames(std::collections::BTreeSet<Arc<str>>);

impl SharedNames {
    /// `name`, shared with the earlier endpoints that have it.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(shared.clone());
        shared
    }
}

/// A validated EndpointSlice (`addressType` IPv4 or IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// `addressType`: its endpoints feed only this family's frontends.
    pub family: IpFamily,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

impl Slice {
    /// A copy allocated anew, nothing shared with `self` (its endpoints'
    /// names shared among themselves only).
    pub fn compacted(&self) -> Slice {
        let mut names = SharedNames::default();
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addr: e.addr,
                node_name: e.node_name.as_deref().map(|n| names.get(n)),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                zone: e.zone.as_deref().map(|z| names.get(z)),
                hints: e.hints.clone(),
            })
            .collect();
        Slice { family: self.family, service: self.service.clone(), ports: self.ports.clone(), endpoints }
    }
}

/// Label of a Node naming its zone (topology-aware routing).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Node's InternalIP and ExternalIP addresses (both families), and its zone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub addresses: Vec<IpAddr>,
    /// Label `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
}

/// Everything the planner needs, keyed for deterministic iteration.
/// Objects are shared (`Arc`): a model is copied per change, and its
/// objects between the file source's per-file models and the merged one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub services: BTreeMap<ObjectRef, Arc<Service>>,
    pub slices: BTreeMap<ObjectRef, Arc<Slice>>,
    /// By node name.
    pub nodes: BTreeMap<String, Node>,
    /// The CIDRs (both families) of each ServiceCIDR object, by name.
    pub service_cidrs: BTreeMap<String, Vec<cidr::Cidr>>,
}

/// Why a file could not be read at all (objects inside are never errors).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Model {
    /// Loads a YAML file, or every `*.yaml`/`*.yml` file of a directory (not
    /// recursive, in name order so a later file wins on duplicates).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let mut model = Model::default();
        for file in yaml_files(path)? {
            model.extend(&Model::load_file(&file)?);
        }
        Ok(model)
    }

    /// The objects of one YAML file. Parsed on a thread of its own, then
    /// copied: the parse's garbage (the document's events and value tree,
    /// ~2 KiB per object, several times the objects) stays in that thread's
    /// malloc arena, which is then freed whole, instead of leaving holes
    /// between the model's objects that no trim can give back (measured at
    /// 10,000 Services: 173 MiB of RSS after the first sync, trimmed, with
    /// the model parsed in place).
    pub fn load_file(file: &Path) -> Result<Self, LoadError> {
        Ok(Self::parse_file(&read_file(file)?, file))
    }

    /// The objects of `text`, the contents of `file`, parsed as
    /// [`Model::load_file`] does.
    pub fn parse_file(text: &str, file: &Path) -> Self {
        let origin = file.display().to_string();
        let parse = || {
            let mut model = Model::default();
            model.add_yaml(text, &origin);
            model
        };
        std::thread::scope(|s| match std::thread::Builder::new().name("yaml-parse".into()).spawn_scoped(s, parse) {
            Ok(t) => t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)).compacted(),
            // No thread to be had: parse here.
            Err(_) => parse(),
        })
    }

    /// A copy of the model whose objects are all allocated anew, none
    /// shared with `self`.
    pub fn compacted(&self) -> Model {
        let key = |k: &ObjectRef| ObjectRef::new(&k.namespace, &k.name);
        Model {
            services: self.services.iter().map(|(k, v)| (key(k), Arc::new(Service::clone(v)))).collect(),
            slices: self.slices.iter().map(|(k, v)| (key(k), Arc::new(v.compacted()))).collect(),
            nodes: self.nodes.clone(),
            service_cidrs: self.service_cidrs.clone(),
        }
    }

    /// Adds `other`'s objects; one of the same name is replaced (a later
    /// file wins). The objects themselves are shared, not copied.
    pub fn extend(&mut self, other: &Model) {
        self.services.extend(other.services.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.slices.extend(other.slices.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.nodes.extend(other.nodes.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.service_cidrs.extend(other.service_cidrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Adds every object of a (multi-document) YAML text; `origin` names the
    /// text in logs.
    pub fn add_yaml(&mut self, text: &str, origin: &str) {
        for doc in serde_norway::Deserializer::from_str(text) {
            match serde_norway::Value::deserialize(doc) {
                Ok(v) => self.add_value(v, origin),
                Err(e) => {
                    // A syntax error ends the stream: keep what came before it.
                    tracing::warn!(%origin, error = %e, "invalid YAML; the rest of this file is skipped");
                    return;
                }
            }
        }
    }

    fn add_value(&mut self, v: serde_norway::Value, origin: &str) {
        if v.is_null() {
            return; // an empty document (`---` at the end)
        }
        let api_version = v
            .get("apiVersion")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string();
        let kind = v
            .get("kind")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string();
        let id = object_ref(&v);
        match (api_version.as_str(), kind.as_str()) {
            (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") | (_, "NodeList") => {
                let items = match v {
                    serde_norway::Value::Mapping(mut m) => m.remove("items"),
                    _ => None,
                };
                match items {
                    Some(serde_norway::Value::Sequence(items)) => {
                        for item in items {
                            self.add_value(item, origin);
                        }
                    }
                    None | Some(serde_norway::Value::Null) => {}
                    Some(_) => tracing::warn!(object = %id, %kind, %origin, "skipping a list whose items are not a sequence"),
                }
            }
            ("v1", "Service") => match serde_norway::from_value::<core::Service>(v) {
                Ok(s) => {
                    if let Some(s) = validate_service(&id, &s) {
                        self.services.insert(id, Arc::new(s));
                    }
                }
                Err(e) => {
                    tracing::warn!(object = %id, %origin, error = %e, "skipping malformed Service")
                }
            },
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                match serde_norway::from_value::<discovery::EndpointSlice>(v) {
                    Ok(s) => {
                        if let Some(s) = validate_slice(&id, &s) {
                            self.slices.insert(id, Arc::new(s));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(object = %id, %origin, error = %e, "skipping malformed EndpointSlice")
                    }
                }
            }
            ("v1", "Node") => match serde_norway::from_value::<core::Node>(v) {
                Ok(n) => {
                    self.nodes.insert(id.name.clone(), node(&id, &n));
                }
                Err(e) => {
                    tracing::warn!(object = %id, %origin, error = %e, "skipping malformed Node")
                }
            },
            ("networking.k8s.io/v1", "ServiceCIDR") => {
                match serde_norway::from_value::<k8s_openapi::api::networking::v1::ServiceCIDR>(v) {
                    Ok(c) => {
                        let cidrs = c.spec.and_then(|s| s.cidrs).unwrap_or_default();
                        self.service_cidrs.insert(id.name.clone(), cidr::of_object(&id.name, &cidrs));
                    }
                    Err(e) => tracing::warn!(object = %id, %origin, error = %e, "skipping malformed ServiceCIDR"),
                }
            }
            _ => {
                tracing::debug!(object = %id, %api_version, %kind, %origin, "skipping an object of a kind the agent does not use")
            }
        }
    }
}

impl Model {
    /// Builds a model from typed objects (what the kube source's reflector
    /// stores hold), through the same validation as the YAML path: an
    /// invalid object is logged with its `namespace/name` and skipped.
    pub fn from_objects<'a>(
        services: impl IntoIterator<Item = &'a core::Service>,
        slices: impl IntoIterator<Item = &'a discovery::EndpointSlice>,
        nodes: impl IntoIterator<Item = &'a core::Node>,
    ) -> Self {
        let mut model = Model::default();
        for s in services {
            model.apply(Object::Service(s));
        }
        for s in slices {
            model.apply(Object::Slice(s));
        }
        for n in nodes {
            model.apply(Object::Node(n));
        }
        model
    }

    /// Puts one typed object in the model (validated; an invalid one takes
    /// the place of none, as in [`Model::from_objects`]). Returns whether
    /// the model changed: the kube source converts only the object a watch
    /// event names, not every object per change.
    pub fn apply(&mut self, obj: Object<'_>) -> bool {
        let id = obj.id();
        match obj {
            Object::Service(s) => {
                let v = validate_service(&id, s).map(Arc::new);
                set(&mut self.services, id, v)
            }
            Object::Slice(s) => {
                let v = validate_slice(&id, s).map(Arc::new);
                set(&mut self.slices, id, v)
            }
            Object::Node(n) => {
                let node = node(&id, n);
                set(&mut self.nodes, id.name, Some(node))
            }
        }
    }

    /// Takes one typed object out of the model; returns whether it was there.
    pub fn remove(&mut self, obj: Object<'_>) -> bool {
        let id = obj.id();
        match obj {
            Object::Service(_) => self.services.remove(&id).is_some(),
            Object::Slice(_) => self.slices.remove(&id).is_some(),
            Object::Node(_) => self.nodes.remove(&id.name).is_some(),
        }
    }
}

/// A typed object the kube source follows.
#[derive(Clone, Copy)]
pub enum Object<'a> {
    Service(&'a core::Service),
    Slice(&'a discovery::EndpointSlice),
    Node(&'a core::Node),
}

impl Object<'_> {
    fn id(&self) -> ObjectRef {
        let m = match self {
            Object::Service(s) => &s.metadata,
            Object::Slice(s) => &s.metadata,
            Object::Node(n) => &n.metadata,
        };
        ObjectRef::new(m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default())
    }
}

/// Sets or clears `map[key]`; returns whether it changed.
fn set<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) -> bool {
    match value {
        Some(v) => match map.get_mut(&key) {
            Some(old) if *old == v => false,
            Some(old) => {
                *old = v;
                true
            }
            None => {
                map.insert(key, v);
                true
            }
        },
        None => map.remove(&key).is_some(),
    }
}

/// The text of one YAML file (not parsed).
pub fn read_file(file: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(file).map_err(|source| LoadError::Read {
        path: file.to_path_buf(),
        source,
    })
}

/// The files `path` stands for: itself, or the YAML files in it.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
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
fn object_ref(v: &serde_norway::Value) -> ObjectRef {
    let meta = v.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string()
    };
    ObjectRef {
        namespace: field("namespace"),
        name: field("name"),
    }
}

/// An algorithm name as the annotation and the CLI spell it.
pub fn parse_algorithm(s: &str) -> Option<u8> {
    match s.trim() {
        "random" => Some(algorithm::RANDOM),
        "round-robin" => Some(algorithm::ROUND_ROBIN),
        "maglev" => Some(algorithm::MAGLEV),
        "least-conn" => Some(algorithm::LEAST_CONN),
        _ => None,
    }
}

/// The name of an algorithm constant.
pub fn algorithm_name(a: u8) -> &'static str {
    match a {
        algorithm::RANDOM => "random",
        algorithm::ROUND_ROBIN => "round-robin",
        algorithm::MAGLEV => "maglev",
        algorithm::LEAST_CONN => "least-conn",
        _ => "unknown",
    }
}

pub mod cidr;
pub mod ip;
mod validate;
use validate::{node, validate_service, validate_slice};

#[cfg(test)]
pub(crate) mod tests;
