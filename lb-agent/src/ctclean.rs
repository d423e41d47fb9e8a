//! Removes the conntrack entries of backends a sync removed (or gave another
//! address). The programs never forward to such a backend: a flow's backend
//! is checked on every packet and the flow re-balanced when it is gone. But
//! its entries would stay until they idle out or the LRU evicts them, taking
//! room from live flows and keeping the reply half that rewrites a stale
//! backend's packets; a sync that removes backends deletes them at once.
use std::{collections::BTreeSet, os::fd::AsFd as _, path::Path};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData};
use lb_common::{direction, maps, Addr, Addr4, Addr6, Backend, BackendId, Flow, FlowKey};

use crate::{
    bpfsys,
    dataplane::{Dataplane, Error, FamilyMaps, MapFamily, Result},
    diff::Diff,
};

/// The backend ids whose entries may now be stale: removed, or rewritten
/// (an id is reused only after its backend is gone).
pub fn touched<A: Addr>(d: &Diff<A>) -> BTreeSet<BackendId> {
    d.backends.remove.iter().copied().chain(d.backends.upsert.iter().map(|(id, _)| *id)).collect()
}

/// The backend end (address, port) an entry points at: a forward half
/// rewrites to it, a reply half's packets come from it.
fn backend_end<A: Addr>(key: &FlowKey<A>, e: &Flow<A>) -> (A, [u8; 2]) {
    if e.direction == direction::FORWARD {
        (e.nat_addr, e.nat_port)
    } else {
        (key.src_addr, key.src_port)
    }
}

/// Deletes every conntrack entry of a backend id in `ids` whose backend is
/// no longer the one the maps hold under that id, in both families'
/// conntrack maps and the confirmed flows' copies under `pin_dir`; returns
/// how many. (Backend ids are one space: an id names a backend of one
/// family, so the other family's entries of it are stale too.)
pub fn clean(dp: &mut Dataplane, pin_dir: &Path, ids: &BTreeSet<BackendId>) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut removed = clean_family::<Addr4>(&mut dp.v4, pin_dir, maps::CONNTRACK_CONFIRMED_V4, ids)?;
    if let Some(v6) = dp.v6.as_mut() {
        removed += clean_family::<Addr6>(v6, pin_dir, maps::CONNTRACK_CONFIRMED_V6, ids)?;
    }
    Ok(removed)
}

fn clean_family<A: MapFamily>(fm: &mut FamilyMaps<A>, pin_dir: &Path, confirmed: &'static str, ids: &BTreeSet<BackendId>) -> Result<usize> {
    let mut removed = clean_map(&mut fm.conntrack, A::MAPS.conntrack, &fm.backends, ids)?;
    // Absent when pinned by an agent that predates it.
    if let Ok(data) = MapData::from_pin(pin_dir.join(confirmed)) {
        let mut map: HashMap<MapData, FlowKey<A>, Flow<A>> = HashMap::try_from(Map::LruHashMap(data))?;
        removed += clean_map(&mut map, confirmed, &fm.backends, ids)?;
    }
    Ok(removed)
}

fn clean_map<A: MapFamily>(map: &mut HashMap<MapData, FlowKey<A>, Flow<A>>, name: &'static str, backends: &Array<MapData, Backend<A>>, ids: &BTreeSet<BackendId>) -> Result<usize> {
    // Read in batches: a key walk costs two syscalls per flow, and a sync
    // that removes a backend (one endpoint change) waits for this.
    let mut of_ids = Vec::new();
    bpfsys::for_each_batch(map.map().fd().as_fd(), |k: &FlowKey<A>, e: &Flow<A>| {
        if ids.contains(&e.backend_id) {
            of_ids.push((*k, *e));
        }
    })
    .map_err(|source| Error::Read { map: name, source })?;
    let stale: Vec<FlowKey<A>> = of_ids
        .into_iter()
        .filter(|(k, e)| match backends.get(&e.backend_id, 0) {
            Ok(b) => b.is_empty() || (b.addr, b.port) != backend_end(k, e),
            Err(_) => true,
        })
        .map(|(k, _)| k)
        .collect();
    // An entry gone already (idled out, evicted) is not counted.
    Ok(stale.iter().filter(|k| map.remove(k).is_ok()).count())
}
