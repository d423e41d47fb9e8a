//! Address allocation, pure: from the Services (with their current
//! `status.loadBalancer.ingress`) and the pools to the status changes to
//! make. Nothing is remembered between calls: what is allocated is what the
//! Services' statuses say, so a restarted agent or a new leader continues
//! from the cluster's own record and never hands out an address twice.
//!
//! Rules, in the order applied:
//! - A Service is ours when it is `type: LoadBalancer` and its
//!   `loadBalancerClass` is ours (or unset, when we are the default). Others
//!   are left alone; a Service that stops being a LoadBalancer (type change)
//!   gets the pool addresses in its status released.
//! - Older Services (creationTimestamp, then namespace/name) go first: on a
//!   conflict the older keeps the address.
//! - An address a Service holds is kept while it is in a pool the Service
//!   may use, of a family it wants, matches its request (if any), and no
//!   older holder excludes it. Two Services share an address only when both
//!   carry the same `xdplb.io/allow-shared-ip` key and their ports are
//!   disjoint.
//! - Missing families are filled from the request (`spec.loadBalancerIP`,
//!   annotation `xdplb.io/load-balancer-ips`), else from the pool named by
//!   `xdplb.io/address-pool`, else from the auto-assign pools whose selector
//!   matches — an address already shared under the Service's key first,
//!   then the lowest free one.
//! - What cannot be done is a condition `xdplb.io/AddressAllocated=False`
//!   with a reason (and an Event, by the caller).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1 as core;
use serde::Serialize;

use super::pool::{from_int, to_int, Family, Pool, Pools};
use crate::control::model::ObjectRef;

/// Annotation with the addresses a Service asks for (comma-separated, one
/// per family), as MetalLB's `metallb.universe.tf/loadBalancerIPs`.
pub const IPS_ANNOTATION: &str = "xdplb.io/load-balancer-ips";
/// Annotation naming the pool to allocate from (also a non-auto-assign one).
pub const POOL_ANNOTATION: &str = "xdplb.io/address-pool";
/// Annotation whose value is a sharing key: Services with the same key and
/// disjoint ports may share an address.
pub const SHARE_ANNOTATION: &str = "xdplb.io/allow-shared-ip";
/// The `loadBalancerClass` the agent serves by default.
pub const DEFAULT_CLASS: &str = "xdplb.io/lb";
/// The Service condition the allocator owns.
pub const CONDITION: &str = "xdplb.io/AddressAllocated";

/// The allocator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `loadBalancerClass` served.
    pub class: String,
    /// Whether Services without a `loadBalancerClass` are served too.
    pub default_class: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            class: DEFAULT_CLASS.into(),
            default_class: true,
        }
    }
}

/// What the allocator reads of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SvcView {
    pub id: ObjectRef,
    /// creationTimestamp (RFC 3339, so ordered as text); "" sorts first.
    pub created: String,
    pub load_balancer: bool,
    pub class: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `spec.loadBalancerIP` and the annotation's addresses.
    pub requested: Vec<IpAddr>,
    /// A request that could not be parsed (the raw text).
    pub bad_request: Option<String>,
    pub pool: Option<String>,
    /// `spec.ipFamilies` in order (default IPv4).
    pub families: Vec<Family>,
    /// `ipFamilyPolicy: RequireDualStack`: every family is required; else
    /// only the first.
    pub require_all: bool,
    pub share_key: Option<String>,
    /// (protocol, port) of `spec.ports`.
    pub ports: BTreeSet<(String, u16)>,
    /// `status.loadBalancer.ingress[].ip`.
    pub ingress: Vec<IpAddr>,
    /// Our condition as it stands: (status True?, reason).
    pub condition: Option<(bool, String)>,
}

impl SvcView {
    /// The view of a Kubernetes Service.
    pub fn of(s: &core::Service) -> Self {
        let m = &s.metadata;
        let spec = s.spec.clone().unwrap_or_default();
        let ann = m.annotations.clone().unwrap_or_default();
        let mut requested = Vec::new();
        let mut bad_request = None;
        let texts = spec
            .load_balancer_ip
            .iter()
            .chain(ann.get(IPS_ANNOTATION))
            .flat_map(|t| t.split(','));
        for t in texts.map(str::trim).filter(|t| !t.is_empty()) {
            match t.parse::<IpAddr>() {
                Ok(a) if !requested.contains(&a) => requested.push(a),
                Ok(_) => {}
                Err(_) => bad_request = Some(t.to_string()),
            }
        }
        let mut families: Vec<Family> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            })
            .collect();
        if families.is_empty() {
            // Before the API server defaults it: the family of the request, else IPv4.
            families.push(requested.first().map_or(Family::V4, |a| Family::of(*a)));
        }
        let status = s.status.clone().unwrap_or_default();
        let ingress = status
            .load_balancer
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        let condition = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == CONDITION)
            .map(|c| (c.status == "True", c.reason));
        Self {
            id: ObjectRef::new(
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default(),
            ),
            created: m
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
            class: spec.load_balancer_class.clone(),
            labels: m.labels.clone().unwrap_or_default(),
            requested,
            bad_request,
            pool: ann.get(POOL_ANNOTATION).cloned(),
            families,
            require_all: spec.ip_family_policy.as_deref() == Some("RequireDualStack"),
            share_key: ann.get(SHARE_ANNOTATION).cloned().filter(|k| !k.is_empty()),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        p.port as u16,
                    )
                })
                .collect(),
            ingress,
            condition,
        }
    }
}

/// Why a Service did not get (all) its addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// CamelCase, as a condition reason and an Event reason.
    pub reason: &'static str,
    pub message: String,
}

/// A status change for one Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub service: ObjectRef,
    /// The whole new `status.loadBalancer.ingress` (IPs).
    pub ingress: Vec<IpAddr>,
    /// The condition to set (None: remove ours — the Service is no longer ours).
    pub problem: Option<Problem>,
    /// Whether the condition is ours to set (the Service is served).
    pub served: bool,
}

/// Who holds an address: (index of the Service, its sharing key).
type Holders = BTreeMap<IpAddr, Vec<usize>>;

/// The changes that bring every Service's status to its allocation.
pub fn allocate(services: &[SvcView], pools: &Pools, cfg: &Config) -> Vec<Change> {
    let ours = |s: &SvcView| {
        s.load_balancer
            && (s.class.as_deref() == Some(cfg.class.as_str())
                || (s.class.is_none() && cfg.default_class))
    };
    let mut order: Vec<usize> = (0..services.len()).collect();
    order.sort_by(|&a, &b| {
        (&services[a].created, &services[a].id).cmp(&(&services[b].created, &services[b].id))
    });

    let mut held: Holders = BTreeMap::new();
    // Addresses of Services of another class stay theirs.
    for (i, s) in services.iter().enumerate() {
        if s.load_balancer && !ours(s) {
            for &a in &s.ingress {
                held.entry(a).or_default().push(i);
            }
        }
    }
    let mut want: BTreeMap<usize, (Vec<IpAddr>, Option<Problem>)> = BTreeMap::new();
    // Pass 1: every served Service keeps what it may keep, oldest first.
    for &i in &order {
        let s = &services[i];
        if !ours(s) {
            continue;
        }
        let mut kept: Vec<IpAddr> = Vec::new();
        let mut problem = None;
        for &a in &s.ingress {
            let fam = Family::of(a);
            let fits = s.families.contains(&fam)
                && !kept.iter().any(|k| Family::of(*k) == fam)
                && (s.requested.is_empty() || s.requested.contains(&a))
                && pools
                    .pool_of(a)
                    .is_some_and(|p| may_use(s, p, !s.requested.is_empty()));
            if !fits {
                continue;
            }
            match shares_with(services, &held, s, a) {
                Ok(()) => {
                    kept.push(a);
                    held.entry(a).or_default().push(i);
                }
                Err(other) => problem = Some(in_use(services, a, other)),
            }
        }
        want.insert(i, (kept, problem));
    }
    // Pass 2: the missing families, oldest first.
    for &i in &order {
        let Some((kept, problem)) = want.get_mut(&i) else {
            continue;
        };
        let s = &services[i];
        if let Some(bad) = &s.bad_request {
            *problem = Some(Problem {
                reason: "InvalidRequest",
                message: format!("requested address {bad:?} is not an IP address"),
            });
        }
        for (n, &fam) in s.families.iter().enumerate() {
            if kept.iter().any(|a| Family::of(*a) == fam) {
                continue;
            }
            let required = n == 0 || s.require_all;
            match fill(services, pools, &held, s, fam) {
                Ok(a) => {
                    kept.push(a);
                    held.entry(a).or_default().push(i);
                }
                Err(p) if required || problem.is_none() => {
                    if required {
                        *problem = Some(p);
                    }
                }
                Err(_) => {}
            }
        }
        // Family order as the Service lists them.
        kept.sort_by_key(|a| s.families.iter().position(|f| *f == Family::of(*a)));
    }
    // The changes: served Services whose status differs; others that hold
    // pool addresses they may no longer have.
    let mut changes: Vec<Change> = Vec::new();
    for (i, s) in services.iter().enumerate() {
        match want.remove(&i) {
            Some((ingress, problem)) => {
                let cond = match &problem {
                    Some(p) => Some((false, p.reason.to_string())),
                    None => Some((true, "Allocated".to_string())),
                };
                if ingress != s.ingress || cond != s.condition {
                    changes.push(Change {
                        service: s.id.clone(),
                        ingress,
                        problem,
                        served: true,
                    });
                }
            }
            None if !s.load_balancer && s.ingress.iter().any(|a| pools.pool_of(*a).is_some()) => {
                // A type change: what we handed out goes back to the pool.
                let ingress = s
                    .ingress
                    .iter()
                    .copied()
                    .filter(|a| pools.pool_of(*a).is_none())
                    .collect();
                changes.push(Change {
                    service: s.id.clone(),
                    ingress,
                    problem: None,
                    served: false,
                });
            }
            None => {}
        }
    }
    releases_first(services, changes)
}

/// `changes` preceded by the releases they contain: for each Service that
/// loses an address, a change to what it keeps. Applied in order and
/// stopped at the first failure, an address is free in the cluster's
/// record before any other Service gets it, whenever the leader stops.
fn releases_first(services: &[SvcView], changes: Vec<Change>) -> Vec<Change> {
    let (mut releases, mut grants) = (Vec::new(), Vec::new());
    for c in changes {
        let Some(s) = services.iter().find(|s| s.id == c.service) else {
            continue;
        };
        let kept: Vec<IpAddr> = s
            .ingress
            .iter()
            .copied()
            .filter(|a| c.ingress.contains(a))
            .collect();
        if kept == c.ingress {
            // Nothing new: a release, or only the condition.
            releases.push(c);
            continue;
        }
        if kept.len() < s.ingress.len() {
            releases.push(Change {
                ingress: kept,
                ..c.clone()
            });
        }
        grants.push(c);
    }
    releases.extend(grants);
    releases
}

/// Whether `s` may take an address of pool `p` (`requested`: asked by address).
fn may_use(s: &SvcView, p: &Pool, requested: bool) -> bool {
    if !p.selects(&s.labels) {
        return false;
    }
    match &s.pool {
        Some(name) => *name == p.name,
        None => requested || p.auto_assign,
    }
}

/// Ok if `s` may hold `a` next to its current holders; else one holder that excludes it.
fn shares_with(services: &[SvcView], held: &Holders, s: &SvcView, a: IpAddr) -> Result<(), usize> {
    for &h in held.get(&a).into_iter().flatten() {
        let o = &services[h];
        let compatible =
            s.share_key.is_some() && s.share_key == o.share_key && s.ports.is_disjoint(&o.ports);
        if !compatible {
            return Err(h);
        }
    }
    Ok(())
}

/// `a` is held by `holder`, which excludes the Service asking.
fn in_use(services: &[SvcView], a: IpAddr, holder: usize) -> Problem {
    let by = services
        .get(holder)
        .map_or_else(String::new, |h| h.id.to_string());
    Problem { reason: "AddressInUse", message: format!("{a} is held by Service {by} (to share it, give both the same {SHARE_ANNOTATION} key and disjoint ports)") }
}

/// An address of `fam` for `s`, or why there is none.
fn fill(
    services: &[SvcView],
    pools: &Pools,
    held: &Holders,
    s: &SvcView,
    fam: Family,
) -> Result<IpAddr, Problem> {
    let asked: Vec<IpAddr> = s
        .requested
        .iter()
        .copied()
        .filter(|a| Family::of(*a) == fam)
        .collect();
    if !s.requested.is_empty() {
        let Some(&a) = asked.first() else {
            return Err(Problem {
                reason: "NoAddressForFamily",
                message: format!("the requested addresses have no {} address", fam.as_str()),
            });
        };
        match pools.pool_of(a) {
            Some(p) if may_use(s, p, true) => {}
            Some(p) => {
                return Err(Problem {
                    reason: "AddressNotAllowed",
                    message: format!(
                        "{a} is in pool {:?}, whose selector or name does not admit this Service",
                        p.name
                    ),
                })
            }
            None => {
                return Err(Problem {
                    reason: "AddressNotInPool",
                    message: format!("{a} is in no address pool"),
                })
            }
        }
        return shares_with(services, held, s, a)
            .map(|()| a)
            .map_err(|h| in_use(services, a, h));
    }
    let candidates: Vec<&Pool> = pools
        .pools
        .values()
        .filter(|p| may_use(s, p, false) && p.size(fam) > 0)
        .collect();
    if candidates.is_empty() {
        let why = match &s.pool {
            Some(n) if !pools.pools.contains_key(n) => {
                format!("pool {n:?} (annotation {POOL_ANNOTATION}) does not exist")
            }
            _ => format!(
                "no auto-assign pool with {} addresses selects this Service",
                fam.as_str()
            ),
        };
        return Err(Problem {
            reason: "NoPool",
            message: why,
        });
    }
    // Sharing first: an address held under the same key with disjoint ports.
    if s.share_key.is_some() {
        let shared = held.keys().copied().find(|&a| {
            Family::of(a) == fam
                && candidates.iter().any(|p| p.contains(a))
                && shares_with(services, held, s, a).is_ok()
        });
        if let Some(a) = shared {
            return Ok(a);
        }
    }
    for p in &candidates {
        for r in p.ranges.iter().filter(|r| r.family == fam) {
            // The held addresses of the range in order: the first gap is the lowest free.
            let (mut next, mut full) = (r.first, false);
            for n in held
                .keys()
                .map(|a| to_int(*a))
                .filter(|(f, n)| *f == fam && (r.first..=r.last).contains(n))
                .map(|(_, n)| n)
            {
                if n > next {
                    break;
                }
                if n == r.last {
                    full = true;
                    break;
                }
                next = n + 1;
            }
            if !full {
                return Ok(from_int(fam, next));
            }
        }
    }
    let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
    Err(Problem {
        reason: "PoolExhausted",
        message: format!(
            "no free {} address in pool(s) {}",
            fam.as_str(),
            names.join(", ")
        ),
    })
}

/// Allocated and free addresses per (pool, family), for the metrics.
pub fn usage(services: &[SvcView], pools: &Pools) -> BTreeMap<(String, Family), (u128, u128)> {
    let held: BTreeSet<IpAddr> = services
        .iter()
        .filter(|s| s.load_balancer)
        .flat_map(|s| s.ingress.iter().copied())
        .collect();
    let mut out = BTreeMap::new();
    for p in pools.pools.values() {
        for fam in [Family::V4, Family::V6] {
            let size = p.size(fam);
            if size == 0 {
                continue;
            }
            let used = held
                .iter()
                .filter(|a| p.contains(**a) && Family::of(**a) == fam)
                .count() as u128;
            out.insert((p.name.clone(), fam), (used, size - used));
        }
    }
    out
}

#[cfg(test)]
mod tests;
