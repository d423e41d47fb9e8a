//! `plan()`: the pure step from the model to the desired map contents.
//!
//! The semantics are kube-proxy's: a port of a Service is reached on its
//! ClusterIPs, on every node address at its NodePort, on its LoadBalancer
//! ingress IPs and on its ExternalIPs; its endpoints are the EndpointSlices
//! labelled with its name, joined by port name. New flows go
//! to ready endpoints, or to serving-and-terminating ones when none is ready;
//! terminating endpoints keep their existing flows. Traffic policy `Local`
//! narrows a set of frontends to this node's endpoints, which needs its own
//! service id when the two sets differ.
//!
//! Each family a Service is served in (see `model::Service::families`) is
//! planned by the same generic code ([`Planner::family`]) into that family's
//! maps, with its own service ids: frontends of the family (node addresses
//! included), endpoints of slices of the family, source ranges of the family.
//!
//! Besides the map contents, the plan carries a readable view of the same
//! decisions (`lb-agent plan` prints it, `--json` serializes it).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{backend_flags, backend_state, service_flags, Addr4, Addr6, Backend, ServiceKey, ServiceV4, SlotKey, SourceRange};
use serde::Serialize;

use super::{
    ids::{BackendIdKey, Ids, Scope, ServiceIdKey},
    model::{
        algorithm_name, cidr, IpFamily, Model, ObjectRef, Proto, Service, ServicePort, ServiceType, Slice, MAX_ENDPOINTS,
    },
};
use crate::{
    diff::MapContents,
    family::{socket, Family},
};

/// The node-specific inputs of a plan.
#[derive(Clone, Debug, Default)]
pub struct PlanConfig {
    /// This node's name: `Local` policies keep endpoints whose `nodeName` is it.
    pub node_name: String,
    /// Addresses NodePorts are reached on; empty = the InternalIP and
    /// ExternalIP addresses of the Node object named `node_name`.
    pub node_addresses: Vec<IpAddr>,
    /// Algorithm of services without an `xdplb.io/algorithm` annotation.
    pub default_algorithm: u8,
    /// Service CIDRs given by flag (`--service-cidr`), beside those of
    /// ServiceCIDR objects in the model.
    pub service_cidrs: Vec<super::model::cidr::Cidr>,
}

/// The desired state: what goes into the maps, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The IPv4 maps.
    #[serde(skip)]
    pub contents: MapContents<Addr4>,
    /// The IPv6 maps.
    #[serde(skip)]
    pub contents_v6: MapContents<Addr6>,
    /// NodePort addresses in use (both families).
    pub node_addresses: Vec<IpAddr>,
    pub services: Vec<PlannedService>,
}

/// How a frontend reaches the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalIP,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub kind: FrontendKind,
    /// The entry for traffic from pods and the node only (map scope
    /// `IN_CLUSTER`): an external frontend of an `externalTrafficPolicy:
    /// Local` Service, which kube-proxy short-circuits to every endpoint.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_cluster: bool,
}

/// Whether a backend takes new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Terminating,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedBackend {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub state: BackendState,
    /// Its slot (1-based) when it takes new flows; `None` when it only keeps
    /// its existing flows.
    pub slot: Option<u32>,
    /// The model endpoint's (shared, not copied: the last plan is kept).
    #[serde(serialize_with = "shared_str")]
    pub node_name: Option<Arc<str>>,
}

/// An `Option<Arc<str>>` as the string it holds (serde's `rc` feature
/// would rebuild the whole dependency tree for this one field).
fn shared_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&v.as_deref(), s)
}

/// One service id: a port of a Service, over one set of frontends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedService {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub family: IpFamily,
    pub scope: Scope,
    pub id: u32,
    pub frontends: Vec<Frontend>,
    pub algorithm: &'static str,
    pub affinity_timeout_s: u32,
    /// No endpoint is ready: the slots hold serving-but-terminating ones.
    pub fallback_terminating: bool,
    /// Only endpoints on this node (traffic policy `Local`).
    pub local_only: bool,
    /// `local_only` with no usable endpoint here but some on other nodes:
    /// new flows are dropped, not refused.
    pub usable_elsewhere: bool,
    /// Topology-aware routing, when hints or `trafficDistribution` apply.
    pub topology: Option<topology::TopologyChoice>,
    pub backends: Vec<PlannedBackend>,
}

/// One endpoint of one service port, after merging slices.
#[derive(Clone, Debug)]
struct Candidate {
    addr: IpAddr,
    port: u16,
    node_name: Option<Arc<str>>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone: Option<Arc<str>>,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// Something of the objects the plan had to leave out or work around, for
/// the caller to report (once: a re-plan of the same objects repeats it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub object: ObjectRef,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// What [`replan`] returns: the plan, the id assignment it used (the next
/// plan's `prev`), and what it had to leave out.
#[derive(Debug)]
pub struct Planned {
    pub plan: Plan,
    pub ids: Ids,
    pub warnings: Vec<Warning>,
    /// Services competed for something: a frontend two claimed, or an id
    /// one could not get. A change to one Service may then change another's
    /// entries, so it cannot be planned alone (see [`plan_service`]).
    pub contested: bool,
}

/// Computes the desired state from the objects and the previous id
/// assignment, without side effects: the same inputs give the same output.
pub fn replan(model: &Model, cfg: &PlanConfig, prev: &Ids) -> Planned {
    let slices_of = slices_by_service(model);
    let mut ids = prev.clone();
    let mut p = Planner::new(model, cfg, &mut ids);
    for (id, svc) in &model.services {
        if svc.service_type == ServiceType::ExternalName {
            continue;
        }
        let slices = slices_of
            .get(&(id.namespace.as_str(), id.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for family in &svc.families {
            match family {
                IpFamily::IPv4 => p.family::<Addr4>(id, svc, slices),
                IpFamily::IPv6 => p.family::<Addr6>(id, svc, slices),
            }
        }
    }
    p.plan.contents.retain_served_addresses();
    p.plan.contents_v6.retain_served_addresses();
    // Service CIDRs: addresses inside without a Service are dropped.
    for (net, len) in cfg.service_cidrs.iter().chain(model.service_cidrs.values().flatten()) {
        service_cidr(p.contents::<Addr4>(), *net, *len);
        service_cidr(p.contents::<Addr6>(), *net, *len);
    }
    let (used_services, used_backends) = (p.used_services, p.used_backends);
    let (plan, warnings, contested) = (p.plan, p.warnings, p.contested);
    ids.retain(&used_services, &used_backends);
    Planned { plan, ids, warnings, contested }
}

/// The addresses NodePorts are reached on: the flag's, else the Node's.
pub fn node_addresses(model: &Model, cfg: &PlanConfig) -> Vec<IpAddr> {
    if cfg.node_addresses.is_empty() {
        model.nodes.get(&cfg.node_name).map(|n| n.addresses.clone()).unwrap_or_default()
    } else {
        cfg.node_addresses.clone()
    }
}

/// One Service's share of a plan, planned alone.
#[derive(Debug, Default)]
pub struct ServicePlan {
    /// Its entries (`node_addresses` left empty).
    pub plan: Plan,
    pub warnings: Vec<Warning>,
    /// It could not have all it wanted (see [`Planned::contested`]).
    pub contested: bool,
    /// The id keys it uses.
    pub used_services: BTreeSet<ServiceIdKey>,
    pub used_backends: BTreeSet<BackendIdKey>,
}

/// Plans the Service `id` alone: what [`replan`] writes for it when no
/// other Service shares its frontends or backends (the caller checks that,
/// and that nothing was contested). Pure like `replan`: ids are allocated
/// in `ids` for its new keys; freeing the keys it no longer uses is the
/// caller's ([`Ids::release`]). A Service that is not in the model (or an
/// ExternalName) plans to nothing.
pub fn plan_service(model: &Model, cfg: &PlanConfig, id: &ObjectRef, ids: &mut Ids) -> ServicePlan {
    let mut p = Planner::new(model, cfg, ids);
    if let Some(svc) = model.services.get(id).filter(|s| s.service_type != ServiceType::ExternalName) {
        // Slices name their Service within their namespace.
        let from = ObjectRef { namespace: id.namespace.clone(), name: String::new() };
        let slices: Vec<&Slice> = model
            .slices
            .range(from..)
            .take_while(|(k, _)| k.namespace == id.namespace)
            .map(|(_, s)| &**s)
            .filter(|s| s.service == id.name)
            .collect();
        for family in &svc.families {
            match family {
                IpFamily::IPv4 => p.family::<Addr4>(id, svc, &slices),
                IpFamily::IPv6 => p.family::<Addr6>(id, svc, &slices),
            }
        }
    }
    p.plan.contents.retain_served_addresses();
    p.plan.contents_v6.retain_served_addresses();
    p.plan.node_addresses = Vec::new();
    ServicePlan { plan: p.plan, warnings: p.warnings, contested: p.contested, used_services: p.used_services, used_backends: p.used_backends }
}

/// [`replan`] for callers that keep the ids in place and have no use for
/// the warnings beyond a log line each (the `plan` command, tests).
pub fn plan(model: &Model, cfg: &PlanConfig, ids: &mut Ids) -> Plan {
    let next = replan(model, cfg, ids);
    *ids = next.ids;
    for w in &next.warnings {
        tracing::warn!(object = %w.object, "{}", w.message);
    }
    next.plan
}

/// The slices of each service, by (namespace, service name).
fn slices_by_service(model: &Model) -> BTreeMap<(&str, &str), Vec<&Slice>> {
    let mut slices_of: BTreeMap<(&str, &str), Vec<&Slice>> = BTreeMap::new();
    for (id, s) in &model.slices {
        slices_of
            .entry((id.namespace.as_str(), s.service.as_str()))
            .or_default()
            .push(s);
    }
    slices_of
}

/// What a `healthCheckNodePort` reports: the service it belongs to and how
/// many of its endpoints on this node are ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub service: ObjectRef,
    pub local_endpoints: usize,
}

/// The health-check node ports this node serves, as kube-proxy does: one per
/// `type: LoadBalancer` service with `externalTrafficPolicy: Local` and a
/// `healthCheckNodePort`. The count is of distinct addresses of ready
/// endpoints on `cfg.node_name` across the service's ports (slices merged
/// as `plan()` merges them): terminating or not-ready endpoints do not
/// count, so a node left with only terminating ones fails the check and the
/// load balancer drains it. Two services on one port: the first keeps it.
pub fn health_checks(model: &Model, cfg: &PlanConfig) -> BTreeMap<u16, HealthCheck> {
    let mut out: BTreeMap<u16, HealthCheck> = BTreeMap::new();
    let wanted = |svc: &Service| svc.health_check_node_port.is_some() && svc.service_type == ServiceType::LoadBalancer && svc.external_local;
    // Indexing every slice costs a millisecond at 10,000: only when needed.
    if !model.services.values().any(|s| wanted(s)) {
        return out;
    }
    let slices_of = slices_by_service(model);
    for (id, svc) in &model.services {
        let Some(port) = svc.health_check_node_port else { continue };
        if !wanted(svc) {
            continue;
        }
        if let Some(first) = out.get(&port) {
            tracing::warn!(object = %id, port, other = %first.service, "healthCheckNodePort already used by another service; skipped");
            continue;
        }
        // The primary family's endpoints: a dual-stack pod is one endpoint.
        let primary = svc.families.first().copied().unwrap_or(IpFamily::IPv4);
        let slices: Vec<&Slice> = slices_of
            .get(&(id.namespace.as_str(), id.name.as_str()))
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| s.family == primary)
            .collect();
        let local: BTreeSet<IpAddr> = svc
            .ports
            .iter()
            .flat_map(|p| candidates(&slices, p, svc.publish_not_ready))
            .filter(|c| c.ready && c.node_name.as_deref() == Some(cfg.node_name.as_str()))
            .map(|c| c.addr)
            .collect();
        out.insert(port, HealthCheck { service: id.clone(), local_endpoints: local.len() });
    }
    out
}

/// The endpoints of `port` across `slices`, deduplicated by address and
/// port (an endpoint can sit in two slices while they are rebalanced; the
/// most available view of it wins), in address order. `publish_not_ready`
/// (`spec.publishNotReadyAddresses`) makes every endpoint ready: what the
/// EndpointSlice controller publishes for such a Service (ready =
/// publishNotReadyAddresses || pod ready), also for slices written by hand.
fn candidates(slices: &[&Slice], port: &ServicePort, publish_not_ready: bool) -> Vec<Candidate> {
    let mut out: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for s in slices {
        // Named targetPorts resolve per slice: each slice says which number
        // the service port's name means for its endpoints.
        let Some(sp) = s
            .ports
            .iter()
            .find(|sp| sp.name == port.name && sp.proto == port.proto)
        else {
            continue;
        };
        for e in &s.endpoints {
            let c = Candidate {
                addr: e.addr,
                port: sp.port,
                node_name: e.node_name.clone(),
                ready: e.ready || publish_not_ready,
                serving: e.serving || publish_not_ready,
                terminating: e.terminating,
                zone: e.zone.clone(),
                zone_hints: e.zone_hints().to_vec(),
                node_hints: e.node_hints().to_vec(),
            };
            out.entry((e.addr, sp.port))
                .and_modify(|o| {
                    o.ready |= c.ready;
                    o.serving |= c.serving;
                    o.terminating &= c.terminating;
                    if o.zone_hints.is_empty() && o.node_hints.is_empty() {
                        (o.zone_hints, o.node_hints) = (c.zone_hints.clone(), c.node_hints.clone());
                    }
                })
                .or_insert(c);
        }
    }
    out.into_values().collect()
}

struct Planner<'a> {
    cfg: &'a PlanConfig,
    /// This node's `topology.kubernetes.io/zone`.
    node_zone: Option<String>,
    ids: &'a mut Ids,
    plan: Plan,
    used_services: BTreeSet<ServiceIdKey>,
    used_backends: BTreeSet<BackendIdKey>,
    warnings: Vec<Warning>,
    contested: bool,
}

/// The family's maps of a plan.
trait PlanFamily: Family {
    fn contents(plan: &mut Plan) -> &mut MapContents<Self>;
}

impl PlanFamily for Addr4 {
    fn contents(plan: &mut Plan) -> &mut MapContents<Self> {
        &mut plan.contents
    }
}

impl PlanFamily for Addr6 {
    fn contents(plan: &mut Plan) -> &mut MapContents<Self> {
        &mut plan.contents_v6
    }
}

/// A frontend with its map key.
type Keyed<A> = (ServiceKey<A>, Frontend);

/// Whether `ip` is of family `A`.
fn is<A: Family>(ip: &IpAddr) -> bool {
    IpFamily::of(*ip) == A::FAMILY
}

/// A service CIDR in family `A`'s maps (nothing when it is of the other).
fn service_cidr<A: Family>(c: &mut MapContents<A>, net: IpAddr, len: u8) {
    if let Some(net) = A::from_ip(net) {
        c.source_ranges.insert((SourceRange::<A>::prefix_len(len), SourceRange::service_cidr(net)), 1);
    }
}

impl<'a> Planner<'a> {
    fn new(model: &Model, cfg: &'a PlanConfig, ids: &'a mut Ids) -> Self {
        Planner {
            cfg,
            node_zone: model.nodes.get(&cfg.node_name).and_then(|n| n.zone.clone()),
            ids,
            plan: Plan { node_addresses: node_addresses(model, cfg), ..Default::default() },
            used_services: BTreeSet::new(),
            used_backends: BTreeSet::new(),
            warnings: Vec::new(),
            contested: false,
        }
    }

    fn warn(&mut self, object: &ObjectRef, message: String) {
        self.warnings.push(Warning { object: object.clone(), message });
    }

    fn contents<A: PlanFamily>(&mut self) -> &mut MapContents<A> {
        A::contents(&mut self.plan)
    }

    /// The Service in family `A`: its ClusterIP address entries, then each
    /// port over the endpoints of the family's slices.
    fn family<A: PlanFamily>(&mut self, id: &ObjectRef, svc: &Service, slices: &[&Slice]) {
        let slices: Vec<&Slice> = slices.iter().copied().filter(|s| s.family == A::FAMILY).collect();
        // Every ClusterIP refuses the ports and protocols it does not serve.
        if !svc.ports.is_empty() {
            for ip in svc.cluster_ips.iter().filter_map(|ip| A::from_ip(*ip)) {
                let refused = ServiceV4 { flags: service_flags::UNSERVED_REFUSED, ..Default::default() };
                self.contents::<A>().services.insert(ServiceKey::address(ip), refused);
            }
        }
        for port in &svc.ports {
            let candidates = candidates(&slices, port, svc.publish_not_ready);
            if candidates.len() > MAX_ENDPOINTS {
                self.warn(id, format!("port {} ({}): {} endpoints, more than {MAX_ENDPOINTS}; skipping this port", port.name, A::FAMILY, candidates.len()));
                continue;
            }
            self.port::<A>(id, svc, port, &candidates);
        }
    }

    fn port<A: PlanFamily>(
        &mut self,
        id: &ObjectRef,
        svc: &Service,
        port: &ServicePort,
        candidates: &[Candidate],
    ) {
        let fe = |addr, port_no, kind| Frontend {
            addr,
            port: port_no,
            proto: port.proto,
            kind,
            in_cluster: false,
        };
        let internal: Vec<Frontend> = svc
            .cluster_ips
            .iter()
            .filter(|a| is::<A>(a))
            .map(|a| fe(*a, port.port, FrontendKind::ClusterIP))
            .collect();
        let mut external = Vec::new();
        if matches!(
            svc.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) {
            if let Some(np) = port.node_port {
                external.extend(
                    self.plan
                        .node_addresses
                        .iter()
                        .filter(|a| is::<A>(a))
                        .map(|a| fe(*a, np, FrontendKind::NodePort)),
                );
            }
        }
        if svc.service_type == ServiceType::LoadBalancer {
            external.extend(
                svc.lb_ips
                    .iter()
                    .filter(|a| is::<A>(a))
                    .map(|a| fe(*a, port.port, FrontendKind::LoadBalancer)),
            );
        }
        external.extend(
            svc.external_ips
                .iter()
                .filter(|a| is::<A>(a))
                .map(|a| fe(*a, port.port, FrontendKind::ExternalIP)),
        );

        // `externalTrafficPolicy: Local` applies to traffic from outside
        // only: pods and the node reach the external frontends through
        // entries of their own, over every usable endpoint.
        let in_cluster: Vec<Frontend> = if svc.external_local {
            external.iter().map(|f| Frontend { in_cluster: true, ..f.clone() }).collect()
        } else {
            Vec::new()
        };
        if svc.internal_local == svc.external_local {
            let all = internal.into_iter().chain(external).collect();
            self.group::<A>(
                id,
                svc,
                port,
                Scope::Internal,
                all,
                svc.internal_local,
                candidates,
            );
            if !in_cluster.is_empty() {
                self.group::<A>(id, svc, port, Scope::InCluster, in_cluster, false, candidates);
            }
        } else {
            let internal = internal.into_iter().chain(in_cluster).collect();
            self.group::<A>(
                id,
                svc,
                port,
                Scope::Internal,
                internal,
                svc.internal_local,
                candidates,
            );
            self.group::<A>(
                id,
                svc,
                port,
                Scope::External,
                external,
                svc.external_local,
                candidates,
            );
        }
    }

    /// The family's LoadBalancer IPs as host-prefix sources when one of
    /// `ranges` contains a node address, as kube-proxy admits them: a VIP
    /// that is a local address on the node loops the node's own requests
    /// back with the VIP as source, and the ranges that admit the node
    /// should admit those.
    fn lb_ips_as_sources<A: Family>(&self, svc: &Service, mut ranges: impl Iterator<Item = cidr::Cidr>) -> Vec<cidr::Cidr> {
        let admits_node = ranges.any(|r| self.plan.node_addresses.iter().any(|a| cidr::contains(r, *a)));
        if admits_node {
            svc.lb_ips.iter().filter(|a| is::<A>(a)).map(|ip| (*ip, A::FAMILY.bits())).collect()
        } else {
            Vec::new()
        }
    }

    /// One service id: `frontends` balanced over `candidates` (only this
    /// node's when `local_only`).
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per scope; a struct would only rename the arguments"
    )]
    fn group<A: PlanFamily>(
        &mut self,
        id: &ObjectRef,
        svc: &Service,
        port: &ServicePort,
        scope: Scope,
        frontends: Vec<Frontend>,
        local_only: bool,
        candidates: &[Candidate],
    ) {
        // A frontend already taken (two services claiming one address:port)
        // stays with the first; the map can hold only one.
        let (kept, taken): (Vec<Keyed<A>>, Vec<Keyed<A>>) = frontends
            .into_iter()
            .filter_map(|f| Some((map_key::<A>(&f)?, f)))
            .partition(|(k, _)| !self.contents::<A>().services.contains_key(k));
        self.contested |= !taken.is_empty();
        for (_, f) in &taken {
            self.warn(id, format!("frontend {}/{} already used by another service; skipped", socket(f.addr, f.port), f.proto.as_str()));
        }
        if kept.is_empty() {
            return;
        }
        let (keys, frontends): (Vec<ServiceKey<A>>, Vec<Frontend>) = kept.into_iter().unzip();
        let key = ServiceIdKey {
            object: id.clone(),
            port_name: port.name.clone(),
            proto: port.proto,
            family: A::FAMILY,
            scope,
        };
        let Some(service_id) = self.ids.service(&key, &keys) else {
            self.contested = true;
            self.warn(id, format!("port {} ({}): no free service id (raise the services map size); skipped", port.name, A::FAMILY));
            return;
        };
        self.used_services.insert(key);

        let eligible: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !local_only || c.node_name.as_deref() == Some(self.cfg.node_name.as_str()))
            .collect();
        let mut ready: Vec<&Candidate> = eligible.iter().copied().filter(|c| c.ready).collect();
        // Topology narrows Cluster-policy traffic only, as in kube-proxy.
        let topology = if local_only {
            None
        } else {
            topology::apply(&mut ready, svc.traffic_distribution, &self.cfg.node_name, self.node_zone.as_deref())
        };
        let (slotted, fallback) = if ready.is_empty() {
            let f: Vec<&Candidate> = eligible
                .iter()
                .copied()
                .filter(|c| c.serving && c.terminating)
                .collect();
            let fallback = !f.is_empty();
            (f, fallback)
        } else {
            (ready, false)
        };
        // Terminating endpoints without a slot keep their existing flows.
        let in_slots: BTreeSet<(IpAddr, u16)> =
            slotted.iter().map(|c| (c.addr, c.port)).collect();
        let draining: Vec<&Candidate> = eligible
            .iter()
            .copied()
            .filter(|c| c.terminating && !in_slots.contains(&(c.addr, c.port)))
            .collect();

        // Exact: the last plan's backends are kept (`Incremental`), and a
        // pushed-to Vec of 10 would hold 16.
        let mut backends = Vec::with_capacity(slotted.len() + draining.len());
        let mut slot_ids = Vec::new();
        for (c, takes_new) in slotted
            .iter()
            .map(|c| (*c, true))
            .chain(draining.iter().map(|c| (*c, false)))
        {
            let bkey = BackendIdKey {
                addr: c.addr,
                port: c.port,
                proto: port.proto,
            };
            let Some(addr) = A::from_ip(c.addr) else { continue };
            let Some(bid) = self.ids.backend(bkey) else {
                self.contested = true;
                self.warn(id, format!("backend {}: no free backend id; skipped", socket(c.addr, c.port)));
                continue;
            };
            self.used_backends.insert(bkey);
            let state = if c.terminating {
                backend_state::TERMINATING
            } else {
                backend_state::ACTIVE
            };
            // Not on this node (or on no known node, e.g. an address off the
            // cluster): its replies do not pass here unless SNATed.
            let flags = if c.node_name.as_deref() == Some(self.cfg.node_name.as_str()) {
                0
            } else {
                backend_flags::REMOTE
            };
            let value = Backend::<A> {
                addr,
                port: c.port.to_be_bytes(),
                weight: 1,
                state,
                flags,
                _pad: [0; 2],
            };
            // A backend shared by services is one entry; "active" wins if views differ.
            self.contents::<A>()
                .backends
                .entry(bid)
                .and_modify(|v| v.state = v.state.min(state))
                .or_insert(value);
            if takes_new {
                slot_ids.push(bid);
            }
            backends.push(PlannedBackend {
                id: bid,
                addr: c.addr,
                port: c.port,
                state: if c.terminating {
                    BackendState::Terminating
                } else {
                    BackendState::Active
                },
                slot: None,
                node_name: c.node_name.clone(),
            });
        }
        let algorithm = svc.algorithm.unwrap_or(self.cfg.default_algorithm);
        let order = self.ids.slots(service_id, &slot_ids);
        let index: BTreeMap<u32, usize> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
        for (i, bid) in order.iter().enumerate() {
            if let Some(b) = index.get(bid).and_then(|i| backends.get_mut(*i)) {
                b.slot = Some(i as u32 + 1);
            }
        }
        // What new flows choose from: one slot per backend, or the service's
        // Maglev table (indexed by the flow hash in the dataplane).
        let slots = if algorithm == lb_common::algorithm::MAGLEV {
            maglev_table(id, svc, &order, &backends, &index, &mut self.warnings)
        } else {
            order.clone()
        };
        for (i, bid) in slots.iter().enumerate() {
            let slot = i as u32 + 1;
            self.contents::<A>().slots.insert(SlotKey { service_id, slot }, *bid);
        }
        for b in &backends {
            if let (Some(w), Some(v)) = (svc.weights.get(&b.addr), self.contents::<A>().backends.get_mut(&b.id)) {
                v.weight = (*w).min(u16::MAX as u32) as u16;
            }
        }
        backends.sort_by_key(|b| (b.slot.is_none(), b.slot, b.addr, b.port));

        let mut flags = if fallback {
            service_flags::FALLBACK_TERMINATING
        } else {
            0
        };
        // Local policy, nothing usable here but something elsewhere: drop
        // (the client times out) rather than reset, as kube-proxy does.
        let usable_elsewhere = local_only
            && slotted.is_empty()
            && candidates.iter().any(|c| c.ready || (c.serving && c.terminating));
        if usable_elsewhere {
            flags |= service_flags::LOCAL_ELSEWHERE;
        }
        if let Some(mode) = svc.lb_mode {
            flags |= mode.service_flags();
        }
        let value = ServiceV4 {
            id: service_id,
            count: slots.len() as u32,
            algorithm,
            flags,
            _pad: [0; 2],
            affinity_timeout_s: svc.affinity_timeout_s,
        };
        // loadBalancerSourceRanges guard the LoadBalancer IPs only, as in
        // kube-proxy; the ranges are keyed by service id.
        let restricted = svc.source_ranges.is_some() && frontends.iter().any(|f| f.kind == FrontendKind::LoadBalancer);
        for (k, f) in keys.into_iter().zip(&frontends) {
            let mut v = value;
            if restricted && f.kind == FrontendKind::LoadBalancer {
                v.flags |= service_flags::SOURCE_RANGES;
            }
            if svc.external_local && f.kind != FrontendKind::ClusterIP && !f.in_cluster {
                v.flags |= service_flags::IN_CLUSTER_ALT;
            }
            self.contents::<A>().services.insert(k, v);
        }
        if restricted {
            // This family's ranges: an IPv4 client never matches an IPv6 range.
            let ranges = svc.source_ranges.iter().flatten().copied().filter(|(net, _)| is::<A>(net));
            for (net, len) in ranges.clone().chain(self.lb_ips_as_sources::<A>(svc, ranges)) {
                let Some(addr) = A::from_ip(net) else { continue };
                let range = SourceRange::<A> { service_id: service_id.to_be_bytes(), addr };
                self.contents::<A>().source_ranges.insert((SourceRange::<A>::prefix_len(len), range), 1);
            }
        }
        self.plan.services.push(PlannedService {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            port_name: port.name.clone(),
            family: A::FAMILY,
            scope,
            id: service_id,
            frontends,
            algorithm: algorithm_name(algorithm),
            affinity_timeout_s: svc.affinity_timeout_s,
            fallback_terminating: fallback,
            local_only,
            usable_elsewhere,
            topology,
            backends,
        });
    }
}

/// The Maglev table of a service's slotted backends (`order`), keyed by
/// address:port so every node builds the same table whatever its ids; on an
/// error (no weight left, a bad size) one slot per backend, with a warning.
fn maglev_table(
    id: &ObjectRef,
    svc: &Service,
    order: &[u32],
    backends: &[PlannedBackend],
    index: &BTreeMap<u32, usize>,
    warnings: &mut Vec<Warning>,
) -> Vec<u32> {
    use crate::control::maglev;
    let members: Vec<maglev::MaglevBackend> = order
        .iter()
        .filter_map(|bid| backends.get(*index.get(bid)?))
        // `10.0.2.11:8080`, `[fd00::11]:8080`: the same on every node.
        .map(|b| maglev::MaglevBackend::new(b.id, socket(b.addr, b.port), *svc.weights.get(&b.addr).unwrap_or(&1)))
        .collect();
    if members.is_empty() {
        return Vec::new();
    }
    let size = svc.maglev_table_size.unwrap_or_else(|| maglev::auto_table_size(members.len()));
    match maglev::build(&members, size) {
        Ok(table) => table,
        Err(e) => {
            warnings.push(Warning { object: id.clone(), message: format!("building the Maglev table failed ({e}); one slot per backend") });
            order.to_vec()
        }
    }
}

/// The map key of a frontend of family `A` (`None` for the other family).
fn map_key<A: Family>(f: &Frontend) -> Option<ServiceKey<A>> {
    Some(ServiceKey {
        addr: A::from_ip(f.addr)?,
        port: f.port.to_be_bytes(),
        proto: f.proto.number(),
        scope: if f.in_cluster { lb_common::scope::IN_CLUSTER } else { lb_common::scope::ANY },
    })
}

pub mod topology;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dual_tests;
