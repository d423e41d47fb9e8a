//! Removes the conntrack entries of backends a sync removed (or gave another
//! address). The programs never forward to such a backend: a flow's backend
//! is checked on every packet and the flow re-balanced when it is gone. But
//! its entries would stay until they idle out or the LRU evicts them, taking
//! room from live flows and keeping the reply half that rewrites a stale
//! backend's packets; a sync that removes backends deletes them at once.
use std::{collections::BTreeSet, path::Path};

use anyhow::Result;
use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{direction, maps, BackendId, BackendV4, FlowKeyV4, FlowV4};

use crate::{dataplane::Dataplane, diff::Diff};

/// The backend ids whose entries may now be stale: removed, or rewritten
/// (an id is reused only after its backend is gone).
pub fn touched(d: &Diff) -> BTreeSet<BackendId> {
    d.backends.remove.iter().copied().chain(d.backends.upsert.iter().map(|(id, _)| *id)).collect()
}

/// The backend end (address, port) an entry points at: a forward half
/// rewrites to it, a reply half's packets come from it.
fn backend_end(key: &FlowKeyV4, e: &FlowV4) -> ([u8; 4], [u8; 2]) {
    if e.direction == direction::FORWARD {
        (e.nat_addr, e.nat_port)
    } else {
        (key.src_addr, key.src_port)
    }
}

/// Deletes every conntrack entry of a backend id in `ids` whose backend is
/// no longer the one the maps hold under that id, in `conntrack_v4` and in
/// the confirmed flows' copies under `pin_dir`; returns how many.
pub fn clean(dp: &mut Dataplane, pin_dir: &Path, ids: &BTreeSet<BackendId>) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut removed = clean_map(&mut dp.conntrack, &dp.backends, ids)?;
    // Absent when pinned by an agent that predates it.
    if let Ok(data) = MapData::from_pin(pin_dir.join(maps::CONNTRACK_CONFIRMED_V4)) {
        let mut confirmed: HashMap<MapData, FlowKeyV4, FlowV4> = HashMap::try_from(Map::LruHashMap(data))?;
        removed += clean_map(&mut confirmed, &dp.backends, ids)?;
    }
    Ok(removed)
}

fn clean_map(map: &mut HashMap<MapData, FlowKeyV4, FlowV4>, backends: &Array<MapData, BackendV4>, ids: &BTreeSet<BackendId>) -> Result<usize> {
    let stale: Vec<FlowKeyV4> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, e)| {
            ids.contains(&e.backend_id)
                && match backends.get(&e.backend_id, 0) {
                    Ok(b) => b.is_empty() || (b.addr, b.port) != backend_end(k, e),
                    Err(_) => true,
                }
        })
        .map(|(k, _)| k)
        .collect();
    // An entry gone already (idled out, evicted) is not counted.
    Ok(stale.iter().filter(|k| map.remove(k).is_ok()).count())
}
