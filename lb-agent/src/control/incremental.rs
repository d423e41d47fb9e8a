//! Re-planning only the Services a change touched.
//!
//! A whole [`replan`](super::plan::replan) of 10,000 Services costs tens of
//! milliseconds, and diffing its result against the maps as much again:
//! far more than one EndpointSlice change needs. [`Incremental`] remembers
//! the objects of the last plan; for the next model it finds the Services
//! whose Service object or slices changed (objects are shared `Arc`s, so an
//! unchanged one is a pointer comparison), plans each alone with the pure
//! [`plan_service`], takes its previous entries out of what the maps hold
//! (through the ports it planned last time) and diffs only those.
//!
//! A Service planned alone writes what a whole plan would only when it
//! shares nothing with another: no frontend, no backend id, nothing
//! contested (a frontend two claim, an id one could not get, a service left
//! out for want of room), the same Nodes and service CIDRs. Whenever that
//! does not hold, [`Incremental::delta`] answers `None` and the caller plans
//! whole, then [`Incremental::reset`]s.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::{Addr, Addr4, Addr6, BackendId, ServiceKey, SlotKey};

use super::{
    ids::{BackendIdKey, Ids, ServiceIdKey},
    model::{cidr::Cidr, Model, Node, ObjectRef, Service, Slice},
    plan::{plan_service, PlanConfig, PlannedService, Warning},
};
use crate::{
    diff::{diff, Diff, MapContents},
    family::Family,
    fit::Capacity,
};

/// More changed Services than this in one model: a whole plan is cheaper.
const MAX_CHANGED: usize = 256;

/// What one incremental step writes, and what it planned.
#[derive(Debug, Default)]
pub struct Delta {
    pub diff: Diff<Addr4>,
    pub diff_v6: Diff<Addr6>,
    /// The Services re-planned.
    pub changed: BTreeSet<ObjectRef>,
    /// Their ports before and after.
    pub old: Vec<PlannedService>,
    pub new: Vec<PlannedService>,
    /// Their warnings now.
    pub warnings: Vec<Warning>,
}

/// The state of the last plan that a one-Service plan needs.
#[derive(Debug, Default)]
pub struct Incremental {
    services: BTreeMap<ObjectRef, Arc<Service>>,
    slices: BTreeMap<ObjectRef, Arc<Slice>>,
    nodes: BTreeMap<String, Node>,
    service_cidrs: BTreeMap<String, Vec<Cidr>>,
    /// Each Service's planned ports.
    planned: BTreeMap<ObjectRef, Vec<PlannedService>>,
    /// How many Services use each backend id.
    backend_users: BTreeMap<BackendId, u32>,
    /// Plan whole next time (nothing planned yet, something contested or
    /// left out, or a write failed).
    whole: bool,
}

impl Incremental {
    pub fn new() -> Self {
        Self { whole: true, ..Default::default() }
    }

    /// The next sync plans whole.
    pub fn invalidate(&mut self) {
        self.whole = true;
    }

    /// After a whole plan of `model` that was synced: remembers its objects
    /// and `planned` ports; `contested` (or services left out) keeps the
    /// next sync whole too.
    pub fn reset(&mut self, model: &Model, planned: Vec<PlannedService>, contested: bool) {
        self.services = model.services.clone();
        self.slices = model.slices.clone();
        self.nodes = model.nodes.clone();
        self.service_cidrs = model.service_cidrs.clone();
        self.planned.clear();
        self.backend_users.clear();
        self.remember(planned);
        for ports in self.planned.values() {
            for bid in backend_ids(ports) {
                *self.backend_users.entry(bid).or_default() += 1;
            }
        }
        self.whole = contested;
    }

    /// Adds `planned` ports to [`Self::planned`], each Service's in a Vec
    /// of its own size (pushed one by one, a Vec of one ~250-byte port
    /// holds four: 7 MB at 10,000 Services).
    fn remember(&mut self, planned: Vec<PlannedService>) {
        let same = |a: &PlannedService, b: &PlannedService| a.namespace == b.namespace && a.name == b.name;
        let mut runs: Vec<usize> = Vec::new();
        for (i, ps) in planned.iter().enumerate() {
            match runs.last_mut() {
                Some(n) if same(&planned[i - 1], ps) => *n += 1,
                _ => runs.push(1),
            }
        }
        let mut planned = planned.into_iter();
        for n in runs {
            let mut ports = Vec::with_capacity(n);
            ports.extend(planned.by_ref().take(n));
            let id = ObjectRef::new(&ports[0].namespace, &ports[0].name);
            match self.planned.entry(id) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(ports);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().extend(ports),
            }
        }
    }

    /// The Services whose Service object or slices differ between the last
    /// plan and `model`.
    fn changed(&self, model: &Model) -> BTreeSet<ObjectRef> {
        let mut out = BTreeSet::new();
        for_changed(&self.services, &model.services, |id, _, _| {
            out.insert(id.clone());
        });
        for_changed(&self.slices, &model.slices, |id, old, new| {
            for s in [old, new].into_iter().flatten() {
                out.insert(ObjectRef::new(&id.namespace, &s.service));
            }
        });
        out
    }

    /// Plans the changed Services of `model` alone and diffs their entries
    /// against what the maps hold (`known`, `known_v6`); `None` when the
    /// change must be planned whole (see the module doc). On `Some`, `ids`
    /// and this state follow the new plan.
    pub fn delta(
        &mut self,
        model: &Model,
        cfg: &PlanConfig,
        ids: &mut Ids,
        known: &MapContents<Addr4>,
        known_v6: &MapContents<Addr6>,
        cap: Capacity,
    ) -> Option<Delta> {
        if self.whole || model.nodes != self.nodes || model.service_cidrs != self.service_cidrs {
            return None;
        }
        let changed = self.changed(model);
        if changed.len() > MAX_CHANGED {
            return None;
        }
        let mut d = Delta { changed, ..Default::default() };
        let (mut old4, mut new4, mut old6, mut new6) = (MapContents::default(), MapContents::default(), MapContents::default(), MapContents::default());
        let mut release: (Vec<ServiceIdKey>, Vec<BackendIdKey>) = Default::default();
        for id in &d.changed {
            let old = self.planned.get(id).map(Vec::as_slice).unwrap_or_default();
            let cluster_ips = self.services.get(id).map(|s| s.cluster_ips.as_slice()).unwrap_or_default();
            let new = plan_service(model, cfg, id, ids);
            if new.contested {
                return None;
            }
            let (o4, o6) = (entries_of(known, old, cluster_ips), entries_of(known_v6, old, cluster_ips));
            if !alone(known, &o4, &new.plan.contents) || !alone(known_v6, &o6, &new.plan.contents_v6) {
                return None;
            }
            // A backend id another Service uses too: its entry is theirs as well.
            let mine: BTreeSet<BackendId> = backend_ids(old).collect();
            let others = |bid: &BackendId| self.backend_users.get(bid).copied().unwrap_or(0) > u32::from(mine.contains(bid));
            if mine.iter().chain(backend_ids(&new.plan.services).collect::<Vec<_>>().iter()).any(others) {
                return None;
            }
            let (keys, bkeys) = id_keys(id, old);
            release.0.extend(keys.into_iter().filter(|k| !new.used_services.contains(k)));
            release.1.extend(bkeys.into_iter().filter(|k| !new.used_backends.contains(k)));
            // Two changed Services that now share an entry: plan whole.
            let disjoint = merge(&mut old4, o4) & merge(&mut old6, o6) & merge(&mut new4, new.plan.contents) & merge(&mut new6, new.plan.contents_v6);
            if !disjoint {
                return None;
            }
            d.old.extend(old.iter().cloned());
            d.new.extend(new.plan.services);
            d.warnings.extend(new.warnings);
        }
        // What the maps would hold afterwards must fit them.
        let after = |k: [usize; 3], o: [usize; 3], n: [usize; 3]| [0, 1, 2].map(|i| k[i] + n[i] - o[i].min(k[i] + n[i]));
        let (a4, a6) = (after(known.sizes(), old4.sizes(), new4.sizes()), after(known_v6.sizes(), old6.sizes(), new6.sizes()));
        if a4[0].max(a6[0]) > cap.services || a4[1] + a6[1] > cap.slots || a4[2].max(a6[2]) > cap.source_ranges {
            return None;
        }
        d.diff = diff(&old4, &new4);
        d.diff_v6 = diff(&old6, &new6);
        ids.release(&release.0, &release.1);
        // Follow the new plan.
        for id in &d.changed {
            set(&mut self.services, id, model.services.get(id));
        }
        let slices: Vec<ObjectRef> = {
            let mut v = Vec::new();
            for_changed(&self.slices, &model.slices, |id, _, _| v.push(id.clone()));
            v
        };
        for id in &slices {
            set(&mut self.slices, id, model.slices.get(id));
        }
        for bid in backend_ids(&d.old) {
            if let Some(n) = self.backend_users.get_mut(&bid) {
                *n -= 1;
                if *n == 0 {
                    self.backend_users.remove(&bid);
                }
            }
        }
        for id in &d.changed {
            self.planned.remove(id);
        }
        self.remember(d.new.clone());
        for id in &d.changed {
            for bid in backend_ids(self.planned.get(id).map(Vec::as_slice).unwrap_or_default()) {
                *self.backend_users.entry(bid).or_default() += 1;
            }
        }
        Some(d)
    }
}

/// Calls `f(key, old, new)` for every key whose value differs between
/// `old` and `new` (a shared object is unchanged without a comparison).
fn for_changed<T: PartialEq>(old: &BTreeMap<ObjectRef, Arc<T>>, new: &BTreeMap<ObjectRef, Arc<T>>, mut f: impl FnMut(&ObjectRef, Option<&T>, Option<&T>)) {
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            // The same object is under the same key (the sources make one
            // per key): neither the keys nor the objects are compared, which
            // took most of a one-Service sync at 10,000 (memcmp of names).
            (Some((ka, va)), Some((kb, vb))) if Arc::ptr_eq(va, vb) => {
                debug_assert_eq!(ka, kb, "one object under two keys");
                a.next();
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) if ka == kb => {
                if va != vb {
                    f(ka, Some(va), Some(vb));
                }
                a.next();
                b.next();
            }
            (Some((ka, va)), Some((kb, _))) if ka < kb => {
                f(ka, Some(va), None);
                a.next();
            }
            (Some((ka, va)), None) => {
                f(ka, Some(va), None);
                a.next();
            }
            (_, Some((kb, vb))) => {
                f(kb, None, Some(vb));
                b.next();
            }
        }
    }
}

fn set<T>(map: &mut BTreeMap<ObjectRef, Arc<T>>, id: &ObjectRef, v: Option<&Arc<T>>) {
    match v {
        Some(v) => {
            map.insert(id.clone(), v.clone());
        }
        None => {
            map.remove(id);
        }
    }
}

/// Every backend id of `ports` (once per Service).
fn backend_ids(ports: &[PlannedService]) -> impl Iterator<Item = BackendId> {
    let ids: BTreeSet<BackendId> = ports.iter().flat_map(|p| p.backends.iter().map(|b| b.id)).collect();
    ids.into_iter()
}

/// The id keys a Service's planned `ports` hold.
fn id_keys(id: &ObjectRef, ports: &[PlannedService]) -> (Vec<ServiceIdKey>, Vec<BackendIdKey>) {
    let mut keys = Vec::new();
    let mut bkeys = BTreeSet::new();
    for p in ports {
        // A port is planned only with a frontend; all of them share its protocol.
        let Some(proto) = p.frontends.first().map(|f| f.proto) else { continue };
        keys.push(ServiceIdKey { object: id.clone(), port_name: p.port_name.clone(), proto, family: p.family, scope: p.scope });
        bkeys.extend(p.backends.iter().map(|b| BackendIdKey { addr: b.addr, port: b.port, proto }));
    }
    (keys, bkeys.into_iter().collect())
}

/// What the maps (`known`) hold for a Service's planned `ports` of family
/// `A`: its frontends, ClusterIP address entries, slots, backends and
/// source ranges.
fn entries_of<A: Family>(known: &MapContents<A>, ports: &[PlannedService], cluster_ips: &[std::net::IpAddr]) -> MapContents<A> {
    let mut c = MapContents::default();
    let ports: Vec<&PlannedService> = ports.iter().filter(|p| p.family == A::FAMILY).collect();
    for ip in cluster_ips.iter().filter_map(|ip| A::from_ip(*ip)) {
        let k = ServiceKey::address(ip);
        if let Some(v) = known.services.get(&k) {
            c.services.insert(k, *v);
        }
    }
    let service_ids: BTreeSet<u32> = ports.iter().map(|p| p.id).collect();
    for p in &ports {
        for f in &p.frontends {
            let Some(addr) = A::from_ip(f.addr) else { continue };
            let scope = if f.in_cluster { lb_common::scope::IN_CLUSTER } else { lb_common::scope::ANY };
            let k = ServiceKey { addr, port: f.port.to_be_bytes(), proto: f.proto.number(), scope };
            if let Some(v) = known.services.get(&k) {
                c.services.insert(k, *v);
            }
        }
        let slots = SlotKey { service_id: p.id, slot: 0 }..=SlotKey { service_id: p.id, slot: u32::MAX };
        c.slots.extend(known.slots.range(slots).map(|(k, v)| (*k, *v)));
        for b in &p.backends {
            if let Some(v) = known.backends.get(&b.id) {
                c.backends.insert(b.id, *v);
            }
        }
    }
    if !service_ids.is_empty() {
        c.source_ranges.extend(
            known.source_ranges.iter().filter(|((_, r), _)| service_ids.contains(&u32::from_be_bytes(r.service_id))).map(|(k, v)| (*k, *v)),
        );
    }
    c
}

/// Whether a Service's `new` frontends are free in `known` but for its
/// own `old` ones.
fn alone<A: Addr>(known: &MapContents<A>, old: &MapContents<A>, new: &MapContents<A>) -> bool {
    new.services.keys().all(|k| !known.services.contains_key(k) || old.services.contains_key(k))
}

/// Adds `part`'s entries to `all`; false when a key was there already.
fn merge<A: Addr>(all: &mut MapContents<A>, part: MapContents<A>) -> bool {
    let before = all.services.len() + all.backends.len() + all.slots.len() + all.source_ranges.len();
    let added = part.services.len() + part.backends.len() + part.slots.len() + part.source_ranges.len();
    all.services.extend(part.services);
    all.backends.extend(part.backends);
    all.slots.extend(part.slots);
    all.source_ranges.extend(part.source_ranges);
    all.services.len() + all.backends.len() + all.slots.len() + all.source_ranges.len() == before + added
}

#[cfg(test)]
mod tests;
