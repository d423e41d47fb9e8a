//! Desired map contents, and the minimal set of writes that gets the maps
//! there: one [`MapContents`] per address family, with the same code for both.
use std::collections::BTreeMap;

use lb_common::{Addr, Addr4, Backend, BackendId, ServiceKey, ServiceV4, SlotKey, SourceRange};

/// A `source_ranges_v4`/`_v6` key: LPM prefix length and data.
pub type SourceRangeKey<A = Addr4> = (u32, SourceRange<A>);

/// What one family's agent-owned maps contain (or should): its services,
/// backends and source ranges, and the `service_slots` entries of its
/// service ids (the slots map is shared; service ids are one space across
/// families, so each slot belongs to the family of the service naming it).
/// `MapContents` alone is IPv4's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents<A: Addr = Addr4> {
    pub services: BTreeMap<ServiceKey<A>, ServiceV4>,
    pub backends: BTreeMap<BackendId, Backend<A>>,
    pub slots: BTreeMap<SlotKey, BackendId>,
    /// Allowed client prefixes per service (value always 1).
    pub source_ranges: BTreeMap<SourceRangeKey<A>, u8>,
}

impl<A: Addr> MapContents<A> {
    /// Drops the ClusterIP address entries of addresses left without any
    /// frontend (a service skipped or not fitting), which would otherwise
    /// refuse the ports the Service does serve.
    /// Applies `d` as the maps would: its upserts, then its removals.
    pub fn patch(&mut self, d: &Diff<A>) {
        fn one<K: Ord + Copy, V: Copy>(m: &mut BTreeMap<K, V>, c: &Changes<K, V>) {
            m.extend(c.upsert.iter().copied());
            for k in &c.remove {
                m.remove(k);
            }
        }
        one(&mut self.services, &d.services);
        one(&mut self.backends, &d.backends);
        one(&mut self.slots, &d.slots);
        one(&mut self.source_ranges, &d.source_ranges);
    }

    /// The entries counted against each map's capacity: services, slots,
    /// source ranges.
    pub fn sizes(&self) -> [usize; 3] {
        [self.services.len(), self.slots.len(), self.source_ranges.len()]
    }

    pub fn retain_served_addresses(&mut self) {
        let served: std::collections::BTreeSet<A> =
            self.services.keys().filter(|k| !k.is_address()).map(|k| k.addr).collect();
        self.services.retain(|k, _| !k.is_address() || served.contains(&k.addr));
    }
}

/// Upserts and removals of one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Default for Changes<K, V> {
    fn default() -> Self {
        Self { upsert: Vec::new(), remove: Vec::new() }
    }
}

impl<K, V> Changes<K, V> {
    pub fn len(&self) -> usize {
        self.upsert.len() + self.remove.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every write needed to turn one family's current contents into desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff<A: Addr = Addr4> {
    pub services: Changes<ServiceKey<A>, ServiceV4>,
    pub backends: Changes<BackendId, Backend<A>>,
    pub slots: Changes<SlotKey, BackendId>,
    pub source_ranges: Changes<SourceRangeKey<A>, u8>,
}

impl<A: Addr> Diff<A> {
    pub fn len(&self) -> usize {
        self.services.len() + self.backends.len() + self.slots.len() + self.source_ranges.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One pass over both maps in key order (a merge join): no lookups, so a
/// diff of hundreds of thousands of entries stays in the milliseconds.
fn changes<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Changes<K, V> {
    let mut out = Changes::default();
    let (mut cur, mut want) = (current.iter().peekable(), desired.iter().peekable());
    loop {
        match (cur.peek(), want.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) => {
                out.remove.push(**k);
                cur.next();
            }
            (None, Some((k, v))) => {
                out.upsert.push((**k, **v));
                want.next();
            }
            (Some((ck, cv)), Some((wk, wv))) => match ck.cmp(wk) {
                std::cmp::Ordering::Less => {
                    out.remove.push(**ck);
                    cur.next();
                }
                std::cmp::Ordering::Greater => {
                    out.upsert.push((**wk, **wv));
                    want.next();
                }
                std::cmp::Ordering::Equal => {
                    if cv != wv {
                        out.upsert.push((**wk, **wv));
                    }
                    cur.next();
                    want.next();
                }
            },
        }
    }
}

/// The minimal diff from `current` to `desired`.
pub fn diff<A: Addr>(current: &MapContents<A>, desired: &MapContents<A>) -> Diff<A> {
    Diff {
        services: changes(&current.services, &desired.services),
        backends: changes(&current.backends, &desired.backends),
        slots: changes(&current.slots, &desired.slots),
        source_ranges: changes(&current.source_ranges, &desired.source_ranges),
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{BackendV4, ServiceKeyV4};

    use super::*;

    fn contents(backends: &[(u32, [u8; 4])], count: u32) -> MapContents {
        let mut c = MapContents::default();
        let key = ServiceKeyV4 { addr: [10, 96, 0, 1], port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
        c.services.insert(key, ServiceV4 { id: 1, count, ..Default::default() });
        for (i, (id, addr)) in backends.iter().enumerate() {
            c.backends.insert(*id, BackendV4 { addr: *addr, port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() });
            c.slots.insert(SlotKey { service_id: 1, slot: i as u32 + 1 }, *id);
        }
        c
    }

    #[test]
    fn identical_contents_need_no_write() {
        let c = contents(&[(1, [10, 0, 0, 1]), (2, [10, 0, 0, 2])], 2);
        assert!(diff(&c, &c).is_empty());
    }

    /// The merge join gives what the definition says: upsert what is new
    /// or different, remove what is no longer wanted.
    #[test]
    fn the_diff_matches_its_definition_on_scrambled_maps() {
        let mut x: u32 = 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..50 {
            let mut map = || (0..200).map(|_| (next() % 300, next() % 3)).collect::<BTreeMap<u32, u32>>();
            let (cur, want) = (map(), map());
            let d = changes(&cur, &want);
            let upsert: Vec<(u32, u32)> = want.iter().filter(|(k, v)| cur.get(k) != Some(v)).map(|(k, v)| (*k, *v)).collect();
            let remove: Vec<u32> = cur.keys().filter(|k| !want.contains_key(k)).copied().collect();
            assert_eq!((d.upsert, d.remove), (upsert, remove));
        }
    }

    #[test]
    fn removing_a_backend_touches_only_what_changed() {
        let cur = contents(&[(1, [10, 0, 0, 1]), (2, [10, 0, 0, 2]), (3, [10, 0, 0, 3])], 3);
        let want = contents(&[(1, [10, 0, 0, 1]), (3, [10, 0, 0, 3])], 2);
        let d = diff(&cur, &want);
        assert_eq!(d.backends.remove, vec![2]);
        assert!(d.backends.upsert.is_empty());
        // slot 2 now names backend 3, slot 3 is gone, the count drops to 2.
        assert_eq!(d.slots.upsert, vec![(SlotKey { service_id: 1, slot: 2 }, 3)]);
        assert_eq!(d.slots.remove, vec![SlotKey { service_id: 1, slot: 3 }]);
        assert_eq!(d.services.upsert.len(), 1);
        assert_eq!(d.services.upsert[0].1.count, 2);
        assert_eq!(d.len(), 4);
    }
}
