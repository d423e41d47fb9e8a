//! Conntrack keys: the key of a flow's other half. A leaf, shared by
//! `conntrack` and `confirmed` (a packet's own key is `Family::flow_key`).
use lb_common::{direction, Flow, FlowKey};

use crate::family::Family;

/// `last_seen_ns` is refreshed at most this often, to keep writes to a shared
/// entry rare.
pub const TOUCH_INTERVAL_NS: u64 = crate::clock::NS;

/// The key of the other half of the flow `(key, e)`: the reply entry of a
/// forward one, or the forward entry of a reply one. Each half holds what
/// the other's key and rewrite are made of (see `conntrack::create`):
/// forward (client → service) ↦ rewrite to (`nat` = backend, `peer`);
/// reply (backend → `peer`) ↦ rewrite to (`nat` = service, client).
#[inline(always)]
pub fn other_key<F: Family>(key: &FlowKey<F::Addr>, e: &Flow<F::Addr>) -> FlowKey<F::Addr> {
    if e.direction == direction::FORWARD {
        F::flow_key(e.nat_addr, e.peer_addr, e.nat_port, e.peer_port, key.proto)
    } else {
        F::flow_key(e.peer_addr, e.nat_addr, e.peer_port, e.nat_port, key.proto)
    }
}
