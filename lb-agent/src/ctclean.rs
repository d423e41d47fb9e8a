//! Removes the conntrack entries of backends a sync removed (or gave another
//! address). The programs never forward to such a backend: a flow's backend
//! is checked on every packet and the flow re-balanced when it is gone. But
//! its entries would stay until they idle out or the LRU evicts them, taking
//! room from live flows and keeping the reply half that rewrites a stale
//! backend's packets; a sync that removes backends deletes them at once.
use std::collections::BTreeSet;

use anyhow::Result;
use lb_common::{direction, BackendId, FlowKeyV4, FlowV4};

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
/// no longer the one the maps hold under that id; returns how many.
pub fn clean(dp: &mut Dataplane, ids: &BTreeSet<BackendId>) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let stale: Vec<FlowKeyV4> = dp
        .flows()?
        .into_iter()
        .filter(|(k, e)| {
            ids.contains(&e.backend_id)
                && match dp.backends.get(&e.backend_id, 0) {
                    Ok(b) => b.is_empty() || (b.addr, b.port) != backend_end(k, e),
                    Err(_) => true,
                }
        })
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in &stale {
        // Gone already (idled out, evicted): nothing to do.
        if dp.conntrack.remove(k).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
