//! Fitting a desired state into the maps' capacity, one service at a time.
//!
//! A plan that needs more entries than a map holds would fail its sync at
//! the first full map, and every sync after it, taking every other change
//! down with it. Instead the services that do not fit are left out whole
//! (frontends, slots, source ranges, and backends only they use), each
//! named with the map and the flag to raise, and the rest is synced. Those
//! already in the maps keep their place: new ones are left out first.
//!
//! Each family is fitted by the same code into its own maps; the shared
//! `service_slots` is fitted IPv4 first, IPv6 into what is left.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps;

use crate::{diff::MapContents, family::Family};

/// How many entries each agent-written hash map of one family holds
/// (`slots`: what is free of the shared `service_slots` for it).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub services: usize,
    pub slots: usize,
    pub source_ranges: usize,
}

/// A service id left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub service_id: u32,
    /// The first map it did not fit in, and the flag that sizes it.
    pub map: &'static str,
    pub flag: &'static str,
    /// Entries it needs in that map, and how many were still free.
    pub need: usize,
    pub free: usize,
}

/// Entries one service id needs per map.
#[derive(Default, Clone, Copy)]
struct Need {
    services: usize,
    slots: usize,
    source_ranges: usize,
}

/// Removes from `want` the services that do not fit `cap`, preferring those
/// `current` already holds, then lower ids; returns them.
pub fn fit<A: Family>(want: &mut MapContents<A>, cap: Capacity, current: &MapContents<A>) -> Vec<Rejected> {
    if want.services.len() <= cap.services && want.slots.len() <= cap.slots && want.source_ranges.len() <= cap.source_ranges {
        return Vec::new();
    }
    let mut need: BTreeMap<u32, Need> = BTreeMap::new();
    for v in want.services.values() {
        need.entry(v.id).or_default().services += 1;
    }
    for k in want.slots.keys() {
        need.entry(k.service_id).or_default().slots += 1;
    }
    for (_, r) in want.source_ranges.keys() {
        need.entry(u32::from_be_bytes(r.service_id)).or_default().source_ranges += 1;
    }
    let programmed: BTreeSet<u32> = current.services.values().map(|v| v.id).collect();
    let mut order: Vec<u32> = need.keys().copied().collect();
    // Id 0 holds the ClusterIP address entries and the service CIDRs: they
    // only refine what happens to non-service packets, so they go last.
    order.sort_by_key(|id| (*id == 0, !programmed.contains(id), *id));

    let mut used = Need::default();
    let mut rejected = Vec::new();
    for id in order {
        let n = need[&id];
        let over = [
            (n.services, used.services, cap.services, A::MAPS.services),
            (n.slots, used.slots, cap.slots, maps::SERVICE_SLOTS),
            (n.source_ranges, used.source_ranges, cap.source_ranges, A::MAPS.source_ranges),
        ]
        .into_iter()
        .find(|(need, used, cap, _)| used + need > *cap);
        match over {
            None => {
                used.services += n.services;
                used.slots += n.slots;
                used.source_ranges += n.source_ranges;
            }
            Some((need, used, cap, map)) => rejected.push(Rejected {
                service_id: id,
                map,
                flag: crate::dataplane::size_flag(map),
                need,
                free: cap - used,
            }),
        }
    }
    let out: BTreeSet<u32> = rejected.iter().map(|r| r.service_id).collect();
    want.services.retain(|_, v| !out.contains(&v.id));
    want.slots.retain(|k, _| !out.contains(&k.service_id));
    want.source_ranges.retain(|(_, r), _| !out.contains(&u32::from_be_bytes(r.service_id)));
    want.retain_served_addresses();
    // Backends only the rejected services used.
    let used_backends: BTreeSet<u32> = want.slots.values().copied().collect();
    want.backends.retain(|id, _| used_backends.contains(id));
    rejected
}

#[cfg(test)]
mod tests {
    use lb_common::{BackendV4, ServiceKeyV4, ServiceV4, SlotKey};

    use super::*;

    /// Service `id` on 10.96.0.<id>:80 with `slots` slots, all on backend `id`.
    fn add(c: &mut MapContents, id: u32, slots: u32) {
        let key = ServiceKeyV4 { addr: [10, 96, 0, id as u8], port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
        c.services.insert(key, ServiceV4 { id, count: slots, ..Default::default() });
        c.backends.insert(id, BackendV4 { addr: [10, 0, 0, id as u8], port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() });
        for s in 1..=slots {
            c.slots.insert(SlotKey { service_id: id, slot: s }, id);
        }
    }

    const CAP: Capacity = Capacity { services: 16, slots: 64, source_ranges: 16 };

    #[test]
    fn what_fits_is_left_alone() {
        let mut want = MapContents::default();
        add(&mut want, 1, 32);
        add(&mut want, 2, 32);
        let before = want.clone();
        assert!(fit(&mut want, CAP, &MapContents::default()).is_empty());
        assert_eq!(want, before);
    }

    #[test]
    fn a_service_too_big_is_left_out_whole_and_the_rest_kept() {
        let mut want = MapContents::default();
        add(&mut want, 1, 251); // a Maglev table
        add(&mut want, 2, 3);
        add(&mut want, 3, 2);
        let rejected = fit(&mut want, CAP, &MapContents::default());
        assert_eq!(rejected, [Rejected { service_id: 1, map: maps::SERVICE_SLOTS, flag: "--max-slots", need: 251, free: 64 }]);
        let mut expect = MapContents::default();
        add(&mut expect, 2, 3);
        add(&mut expect, 3, 2);
        assert_eq!(want, expect, "service 1's frontend, slots and backend are gone");
    }

    #[test]
    fn services_already_programmed_keep_their_place() {
        let mut current = MapContents::default();
        add(&mut current, 5, 40);
        let mut want = current.clone();
        add(&mut want, 2, 40);
        let rejected = fit(&mut want, CAP, &current);
        assert_eq!(rejected.iter().map(|r| (r.service_id, r.free)).collect::<Vec<_>>(), [(2, 24)], "the new one goes, not the programmed one");
        assert_eq!(want, current);
    }

    #[test]
    fn clusterip_address_entries_go_last() {
        let mut want = MapContents::default();
        add(&mut want, 1, 2);
        for a in 0..16u8 {
            let refused = ServiceV4 { flags: lb_common::service_flags::UNSERVED_REFUSED, ..Default::default() };
            want.services.insert(ServiceKeyV4::address([10, 96, 1, a]), refused);
        }
        let current = want.clone();
        let rejected = fit(&mut want, CAP, &current);
        assert_eq!(rejected.iter().map(|r| (r.service_id, r.map)).collect::<Vec<_>>(), [(0, maps::SERVICES_V4)]);
        assert_eq!(want.services.len(), 1, "the service keeps its frontend");
    }

    #[test]
    fn a_cluster_ip_left_out_takes_its_address_entry_along() {
        let mut want = MapContents::default();
        add(&mut want, 1, 70); // too many slots
        add(&mut want, 2, 2);
        let refused = ServiceV4 { flags: lb_common::service_flags::UNSERVED_REFUSED, ..Default::default() };
        for a in [1, 2] {
            want.services.insert(ServiceKeyV4::address([10, 96, 0, a]), refused);
        }
        fit(&mut want, CAP, &MapContents::default());
        let addresses: Vec<[u8; 4]> = want.services.keys().filter(|k| k.is_address()).map(|k| k.addr).collect();
        assert_eq!(addresses, [[10, 96, 0, 2]], "10.96.0.1's frontend is gone: its other ports must not be refused");
    }
}
