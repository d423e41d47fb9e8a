//! Stable ids for services and backends, and the slot order of each service.
//!
//! Ids name things in the maps (`services_v4`/`_v6` values, `service_slots`
//! keys, `backends_v4`/`_v6` indexes) and in conntrack entries, which
//! outlive any plan. Both families share one space of service ids and one
//! of backend ids (a dual-stack Service has an id per family). So an id must
//! mean the same thing across re-plans and agent restarts: the same
//! (namespace, name, port, family, scope) keeps its service id, the same
//! (addr, port, proto) keeps its backend id, and a freed id is not handed out
//! again until the counter wraps around (a flow that still names it then
//! finds nothing rather than a stranger). A restarted agent seeds the
//! allocator from what the pinned maps hold, so it adopts the ids already
//! there instead of renumbering (which would rewrite every entry and
//! misdirect every established flow).
//!
//! The slot order per service is kept here too: when a backend leaves, the
//! last slot moves into its place instead of every slot after it shifting,
//! which keeps the diff to a handful of writes.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{Addr, BackendId, ServiceKey};
use serde::Serialize;

use super::model::{IpFamily, ObjectRef, Proto};
use crate::diff::MapContents;

/// Which frontends of a service port an id covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The ClusterIP frontends, and the external ones too when both traffic
    /// policies pick the same endpoints.
    Internal,
    /// The external frontends (NodePort, LoadBalancer, ExternalIPs) when
    /// their traffic policy differs from the internal one.
    External,
    /// The external frontends as reached from inside the cluster, when both
    /// traffic policies are `Local`: kube-proxy sends that traffic to every
    /// usable endpoint (with `internalTrafficPolicy: Cluster` the
    /// `Internal` id serves it instead).
    InCluster,
}

/// What a service id stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceIdKey {
    pub object: ObjectRef,
    pub port_name: String,
    pub proto: Proto,
    pub family: IpFamily,
    pub scope: Scope,
}

/// A frontend map key of either family, as the id hints keep it.
type FrontendHint = (IpAddr, [u8; 2], u8, u8);

fn hint<A: Addr>(k: &ServiceKey<A>) -> FrontendHint {
    (k.addr.to_ip(), k.port, k.proto, k.scope)
}

/// What a backend id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendIdKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

/// One id space: 1..=max, handed out monotonically, wrapping around past
/// `max` and skipping ids in use.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdSpace {
    next: u32,
    max: u32,
    used: BTreeSet<u32>,
}

impl IdSpace {
    fn new(max: u32) -> Self {
        Self {
            next: 1,
            max: max.max(1),
            used: BTreeSet::new(),
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        if self.used.len() as u64 >= u64::from(self.max) {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id >= self.max { 1 } else { id + 1 };
            if self.used.insert(id) {
                return Some(id);
            }
        }
    }

    /// Marks a seeded id as used; the counter continues after the highest.
    fn claim(&mut self, id: u32) -> bool {
        if id == 0 || id > self.max || !self.used.insert(id) {
            return false;
        }
        if id >= self.next {
            self.next = if id >= self.max { 1 } else { id + 1 };
        }
        true
    }
}

/// The allocator. `plan()` takes it by `&mut`; the same model and the same
/// allocator state give the same plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    services: IdSpace,
    backends: IdSpace,
    service_ids: BTreeMap<ServiceIdKey, u32>,
    backend_ids: BTreeMap<BackendIdKey, BackendId>,
    /// From the pinned maps, until the first plan: frontend → service id.
    service_hints: BTreeMap<FrontendHint, u32>,
    /// From the pinned maps, until the first plan: (addr, port, proto if
    /// known) → backend ids.
    backend_hints: BTreeMap<(IpAddr, u16, Option<Proto>), Vec<BackendId>>,
    /// Seeded ids not claimed yet (so each is adopted by one key at most).
    unclaimed_services: BTreeSet<u32>,
    unclaimed_backends: BTreeSet<BackendId>,
    /// Service id → backend id per slot (index 0 = slot 1).
    slot_order: BTreeMap<u32, Vec<BackendId>>,
}

impl Ids {
    /// An empty allocator. Service ids index per-service arrays sized
    /// `max_service_id + 1`, and backend ids the `backends_v4`/`_v6` and
    /// `backend_load` arrays sized `max_backend_id + 1`, so they must stay
    /// within them.
    pub fn new(max_service_id: u32, max_backend_id: u32) -> Self {
        Self {
            services: IdSpace::new(max_service_id),
            backends: IdSpace::new(max_backend_id),
            service_ids: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            service_hints: BTreeMap::new(),
            backend_hints: BTreeMap::new(),
            unclaimed_services: BTreeSet::new(),
            unclaimed_backends: BTreeSet::new(),
            slot_order: BTreeMap::new(),
        }
    }

    /// An allocator that adopts the ids in `current` (one family's pinned
    /// maps as a restarted agent finds them; [`Ids::seed`] adds the other's).
    pub fn seeded<A: Addr>(max_service_id: u32, max_backend_id: u32, current: &MapContents<A>) -> Self {
        let mut ids = Self::new(max_service_id, max_backend_id);
        ids.seed(current);
        ids
    }

    /// Adopts the ids in one family's `current` maps. Services are
    /// recognised by their frontends, backends by address, port and
    /// (through the services that slot them) protocol.
    pub fn seed<A: Addr>(&mut self, current: &MapContents<A>) {
        let ids = self;
        let mut proto_of_service = BTreeMap::new();
        for (key, svc) in current.services.iter().filter(|(k, _)| !k.is_address()) {
            ids.service_hints.insert(hint(key), svc.id);
            if ids.services.claim(svc.id) {
                ids.unclaimed_services.insert(svc.id);
            }
            proto_of_service.insert(svc.id, Proto::from_number(key.proto));
        }
        let mut protos_of_backend: BTreeMap<BackendId, BTreeSet<Option<Proto>>> = BTreeMap::new();
        let mut slots: BTreeMap<u32, BTreeMap<u32, BackendId>> = BTreeMap::new();
        for (k, b) in &current.slots {
            slots.entry(k.service_id).or_default().insert(k.slot, *b);
            if let Some(p) = proto_of_service.get(&k.service_id) {
                protos_of_backend.entry(*b).or_default().insert(*p);
            }
        }
        for (id, b) in &current.backends {
            let (addr, port) = (b.addr.to_ip(), u16::from_be_bytes(b.port));
            // A backend no slot names (a terminating one) has no known protocol.
            let protos = protos_of_backend
                .get(id)
                .cloned()
                .unwrap_or_else(|| [None].into());
            for p in protos {
                ids.backend_hints
                    .entry((addr, port, p))
                    .or_default()
                    .push(*id);
            }
            if ids.backends.claim(*id) {
                ids.unclaimed_backends.insert(*id);
            }
        }
        for (svc, by_slot) in slots {
            ids.slot_order.insert(svc, by_slot.into_values().collect());
        }
    }

    /// The id of `key`, adopting a seeded id of one of its `frontends` if it
    /// has none yet. `None` when every id is in use.
    pub fn service<A: Addr>(&mut self, key: &ServiceIdKey, frontends: &[ServiceKey<A>]) -> Option<u32> {
        if let Some(id) = self.service_ids.get(key) {
            return Some(*id);
        }
        let adopted = frontends
            .iter()
            .filter_map(|f| self.service_hints.get(&hint(f)))
            .copied()
            .find(|id| self.unclaimed_services.contains(id));
        let id = match adopted {
            Some(id) => {
                self.unclaimed_services.remove(&id);
                id
            }
            None => self.services.alloc()?,
        };
        self.service_ids.insert(key.clone(), id);
        Some(id)
    }

    /// The id of `key`, adopting a seeded one with the same address and port.
    pub fn backend(&mut self, key: BackendIdKey) -> Option<BackendId> {
        if let Some(id) = self.backend_ids.get(&key) {
            return Some(*id);
        }
        let adopted = [Some(key.proto), None]
            .iter()
            .filter_map(|p| self.backend_hints.get(&(key.addr, key.port, *p)))
            .flatten()
            .copied()
            .find(|id| self.unclaimed_backends.contains(id));
        let id = match adopted {
            Some(id) => {
                self.unclaimed_backends.remove(&id);
                id
            }
            None => self.backends.alloc()?,
        };
        self.backend_ids.insert(key, id);
        Some(id)
    }

    /// The slot order of `service_id` for the backends in `want`: survivors
    /// keep their slot, newcomers (in the order given) fill holes first, and
    /// a hole left over takes the last slot's backend. Remembered for next time.
    pub fn slots(&mut self, service_id: u32, want: &[BackendId]) -> Vec<BackendId> {
        // The common re-plan: the same backends in the same slots.
        if let Some(prev) = self.slot_order.get(&service_id).filter(|p| p.as_slice() == want) {
            return prev.clone();
        }
        let wanted: BTreeSet<BackendId> = want.iter().copied().collect();
        let prev = self
            .slot_order
            .get(&service_id)
            .cloned()
            .unwrap_or_default();
        let mut order: Vec<Option<BackendId>> = prev
            .iter()
            .map(|b| wanted.contains(b).then_some(*b))
            .collect();
        let kept: BTreeSet<BackendId> = order.iter().flatten().copied().collect();
        let mut newcomers =
            want.iter()
                .copied()
                .filter(|b| !kept.contains(b))
                .fold(Vec::new(), |mut v, b| {
                    if !v.contains(&b) {
                        v.push(b);
                    }
                    v
                });
        newcomers.reverse(); // popped from the back, so the first comes first
        for slot in order.iter_mut().filter(|s| s.is_none()) {
            match newcomers.pop() {
                Some(b) => *slot = Some(b),
                None => break,
            }
        }
        while let Some(b) = newcomers.pop() {
            order.push(Some(b));
        }
        loop {
            while order.last() == Some(&None) {
                order.pop();
            }
            let Some(hole) = order.iter().position(|s| s.is_none()) else {
                break;
            };
            order[hole] = order.pop().flatten();
        }
        let order: Vec<BackendId> = order.into_iter().flatten().collect();
        self.slot_order.insert(service_id, order.clone());
        order
    }

    /// Forgets `services` and `backends` (keys a Service planned alone no
    /// longer uses): their ids become free as after [`Ids::retain`].
    pub fn release<'k>(&mut self, services: impl IntoIterator<Item = &'k ServiceIdKey>, backends: impl IntoIterator<Item = &'k BackendIdKey>) {
        for k in services {
            if let Some(id) = self.service_ids.remove(k) {
                self.services.used.remove(&id);
                self.slot_order.remove(&id);
            }
        }
        for k in backends {
            if let Some(id) = self.backend_ids.remove(k) {
                self.backends.used.remove(&id);
            }
        }
    }

    /// Ends a plan: forgets every key not in `services`/`backends` (their
    /// ids become free, to be reused only after a wraparound) and the seeds.
    pub fn retain(&mut self, services: &BTreeSet<ServiceIdKey>, backends: &BTreeSet<BackendIdKey>) {
        // Every key and slot order of this plan is in the maps below, so
        // equal sizes mean nothing is stale: the common re-plan skips
        // hundreds of thousands of lookups.
        let seeded = !self.service_hints.is_empty() || !self.backend_hints.is_empty();
        let stale = seeded
            || self.service_ids.len() != services.len()
            || self.backend_ids.len() != backends.len()
            || self.services.used.len() != services.len()
            || self.backends.used.len() != backends.len()
            || self.slot_order.len() != services.len();
        if !stale {
            return;
        }
        self.service_ids.retain(|k, _| services.contains(k));
        self.backend_ids.retain(|k, _| backends.contains(k));
        let live_services: BTreeSet<u32> = self.service_ids.values().copied().collect();
        let live_backends: BTreeSet<BackendId> = self.backend_ids.values().copied().collect();
        self.services.used.retain(|id| live_services.contains(id));
        self.backends.used.retain(|id| live_backends.contains(id));
        self.slot_order.retain(|id, _| live_services.contains(id));
        self.service_hints.clear();
        self.backend_hints.clear();
        self.unclaimed_services.clear();
        self.unclaimed_backends.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::{BackendV4, ServiceKeyV4, ServiceV4, SlotKey};

    use super::*;

    const NONE: &[ServiceKeyV4] = &[];

    fn skey(name: &str) -> ServiceIdKey {
        ServiceIdKey {
            object: ObjectRef::new("default", name),
            port_name: String::new(),
            proto: Proto::Tcp,
            family: IpFamily::IPv4,
            scope: Scope::Internal,
        }
    }
    fn bkey(last: u8) -> BackendIdKey {
        BackendIdKey {
            addr: Ipv4Addr::new(10, 0, 0, last).into(),
            port: 8080,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn ids_start_at_one_and_are_stable() {
        let mut ids = Ids::new(10, 100);
        assert_eq!(ids.service(&skey("a"), NONE), Some(1));
        assert_eq!(ids.service(&skey("b"), NONE), Some(2));
        assert_eq!(ids.service(&skey("a"), NONE), Some(1));
        assert_eq!(ids.backend(bkey(1)), Some(1));
        assert_eq!(ids.backend(bkey(1)), Some(1));
    }

    #[test]
    fn freed_ids_are_reused_only_after_wraparound() {
        let mut ids = Ids::new(3, 100);
        assert_eq!(ids.service(&skey("a"), NONE), Some(1));
        assert_eq!(ids.service(&skey("b"), NONE), Some(2));
        ids.retain(&[skey("b")].into(), &BTreeSet::new());
        // 1 is free, but 3 comes first; then the counter wraps to 1.
        assert_eq!(ids.service(&skey("c"), NONE), Some(3));
        assert_eq!(ids.service(&skey("d"), NONE), Some(1));
        assert_eq!(ids.service(&skey("e"), NONE), None, "all three ids in use");
    }

    #[test]
    fn seeding_adopts_the_ids_in_the_maps() {
        let mut cur = MapContents::default();
        let fe = ServiceKeyV4 {
            addr: [10, 96, 0, 10],
            port: 80u16.to_be_bytes(),
            proto: 6,
            scope: 0,
        };
        cur.services.insert(
            fe,
            ServiceV4 {
                id: 7,
                count: 1,
                ..Default::default()
            },
        );
        cur.backends.insert(
            42,
            BackendV4 {
                addr: [10, 0, 0, 1],
                port: 8080u16.to_be_bytes(),
                weight: 1,
                ..Default::default()
            },
        );
        cur.slots.insert(
            SlotKey {
                service_id: 7,
                slot: 1,
            },
            42,
        );
        let mut ids = Ids::seeded(100, 1000, &cur);
        assert_eq!(ids.service(&skey("web"), &[fe]), Some(7));
        assert_eq!(ids.backend(bkey(1)), Some(42));
        // Same address and port over UDP is another backend.
        assert_eq!(
            ids.backend(BackendIdKey {
                proto: Proto::Udp,
                ..bkey(1)
            }),
            Some(43)
        );
        // New ids continue after the highest seeded one.
        assert_eq!(ids.service(&skey("other"), NONE), Some(8));
        assert_eq!(ids.slots(7, &[42]), vec![42]);
    }

    #[test]
    fn a_key_replaced_by_another_is_freed_though_the_count_stays() {
        let mut ids = Ids::new(10, 100);
        for k in ["a", "b"] {
            ids.service(&skey(k), NONE);
        }
        ids.retain(&[skey("a"), skey("b")].into(), &BTreeSet::new());
        // a goes, c comes: two keys before and after.
        ids.service(&skey("b"), NONE);
        assert_eq!(ids.service(&skey("c"), NONE), Some(3));
        ids.retain(&[skey("b"), skey("c")].into(), &BTreeSet::new());
        assert_eq!(ids.service(&skey("a"), NONE), Some(4), "a was forgotten: a new id");
    }

    #[test]
    fn a_leaving_backend_is_replaced_by_the_last_slot() {
        let mut ids = Ids::new(10, 100);
        assert_eq!(ids.slots(1, &[1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(ids.slots(1, &[1, 3, 4]), vec![1, 4, 3]);
        // A newcomer fills a hole before anything is appended.
        assert_eq!(ids.slots(1, &[3, 4, 5]), vec![5, 4, 3]);
        assert_eq!(ids.slots(1, &[3, 4, 5, 6]), vec![5, 4, 3, 6]);
        assert_eq!(ids.slots(1, &[]), Vec::<u32>::new());
    }
}
