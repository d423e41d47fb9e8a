//! tc egress's first look: most packets leaving the node are not replies
//! of ours, and finding that out in conntrack costs two lookups that miss
//! (conntrack, then the confirmed-flow table). A reply's source is its
//! backend, so its source port is a backend's port: `reply_ports` holds one
//! bit per port (`lb_common::reply_ports`), set by the agent before it
//! writes a backend and here when a DSR reply is recorded (whose backend
//! this node's agent may not know yet). A TCP or UDP packet whose source
//! port has no bit is passed at once, counted as the full path counts a
//! packet that is no reply. Bits are never cleared: a port that stopped
//! being a backend's only costs its packets the lookups again.
//!
//! The look reads the fixed IP header and the L4 ports only, with the full
//! parser's checks (`Family::fixed`, `parse::ports`): anything else (IP
//! options, extension headers, fragments, other protocols, headers not
//! linear, malformed packets) takes the full path, which counts it as
//! before. ICMP errors and SCTP (the node's INIT to a service is answered
//! there) always do.
use core::intrinsics::{atomic_or, AtomicOrdering};

use lb_common::{reply_ports::slot, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    family::Family,
    maps::reply_ports,
    parse::{ethertype, ports, ptr_at, ETH_LEN, UDP_CHECK},
};

/// Whether `port` (network order) may be the source port of a reply of ours.
#[inline(always)]
pub fn may_reply(port: [u8; 2]) -> bool {
    let (word, bit) = slot(port);
    match reply_ports.get(word) {
        Some(w) => *w & bit != 0,
        None => true,
    }
}

/// Marks `port` as a source port replies of ours may have.
#[inline(always)]
pub fn mark(port: [u8; 2]) {
    let (word, bit) = slot(port);
    let Some(w) = reply_ports.get_ptr_mut(word) else { return };
    // Read first: the word is shared by every CPU; it is written once.
    // SAFETY: a live, 8-byte aligned map value; the OR is atomic, as the
    // agent's are (the map is memory-mapped there).
    unsafe {
        if *w & bit == 0 {
            atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(w, bit);
        }
    }
}

/// Whether the frame `[data, end)` (`frame_len` bytes long) is a TCP or UDP
/// packet of family `F` the full parser would accept, whose source port is
/// no reply's (see the module doc).
#[inline(always)]
pub fn skip<F: Family>(data: usize, end: usize, frame_len: usize) -> bool {
    // The port first, where it lies behind the fixed header: a reply's
    // (a marked port) ends the look before the header checks.
    let l4 = ETH_LEN + F::IP_HDR;
    if ethertype(data, end, F::ETHERTYPE).is_err() {
        return false;
    }
    match ptr_at::<[u8; 2]>(data, end, l4) {
        // SAFETY: `ptr_at` checked the field is inside the frame.
        Ok(sport) if !may_reply(unsafe { *sport }) => {}
        _ => return false,
    }
    let Some((proto, room)) = F::fixed(data, end, frame_len) else { return false };
    let min_l4 = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return false,
    };
    if room < min_l4 || ports(data, end, l4, proto, room).is_err() {
        return false;
    }
    if F::UDP_CHECKSUM_REQUIRED && proto == IPPROTO_UDP {
        return match ptr_at::<[u8; 2]>(data, end, l4 + UDP_CHECK) {
            // SAFETY: `ptr_at` checked the field is inside the frame.
            Ok(c) => (unsafe { *c }) != [0, 0],
            Err(_) => false,
        };
    }
    true
}
