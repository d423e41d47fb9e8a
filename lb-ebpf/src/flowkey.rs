//! Conntrack keys: a packet's 5-tuple as a `conntrack_v4` key, and the key
//! of a flow's other half. A leaf, shared by `conntrack` and `confirmed`.
use lb_common::{direction, FlowKeyV4, FlowV4};

/// `last_seen_ns` is refreshed at most this often, to keep writes to a shared
/// entry rare.
pub const TOUCH_INTERVAL_NS: u64 = crate::clock::NS;

#[inline(always)]
pub fn flow_key(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> FlowKeyV4 {
    // Built as four words: a struct literal zeroes `_pad` with a call to
    // memset (~7 ns per key on the established path).
    let words = [
        u32::from_ne_bytes(src),
        u32::from_ne_bytes(dst),
        u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]),
        u32::from_ne_bytes([proto, 0, 0, 0]),
    ];
    // SAFETY: `FlowKeyV4` is 16 bytes of plain integers (`Pod`), laid out as these words.
    unsafe { core::mem::transmute::<[u32; 4], FlowKeyV4>(words) }
}

/// The key of the other half of the flow `(key, e)`: the reply entry of a
/// forward one, or the forward entry of a reply one. Each half holds what
/// the other's key and rewrite are made of (see `conntrack::create`):
/// forward (client → service) ↦ rewrite to (`nat` = backend, `peer`);
/// reply (backend → `peer`) ↦ rewrite to (`nat` = service, client).
#[inline(always)]
pub fn other_key(key: &FlowKeyV4, e: &FlowV4) -> FlowKeyV4 {
    if e.direction == direction::FORWARD {
        flow_key(e.nat_addr, e.peer_addr, e.nat_port, e.peer_port, key.proto)
    } else {
        flow_key(e.peer_addr, e.nat_addr, e.peer_port, e.nat_port, key.proto)
    }
}
