//! Confirmed flows survive a flood of new ones. `conntrack_v4` is one LRU
//! for every flow, so a burst of new flows (a scan, a SYN or UDP flood:
//! 100× the table at ~40k flows/s) evicts established flows along with
//! everything else: their next packet is balanced anew, their replies leave
//! un-NATed, and the connection is reset.
//!
//! Policy (as netfilter's "assured" entries and Katran's flood mode): a
//! flow whose backend has answered twice is *confirmed*, and both its
//! halves are copied into a second LRU, `conntrack_confirmed_v4`, which
//! only confirmed flows enter. A flood of one-packet (or one-answer) flows
//! never reaches it. A packet of a flow that finds no entry in
//! `conntrack_v4` (`_v6`) looks there before it is balanced anew (forward) or
//! passed as not ours (reply), and the half is put back. The copies are
//! refreshed about once a second while the flow lives (their LRU position),
//! and dropped when the flow closes.
//!
//! Cost: one more hash lookup for a packet that misses `conntrack_v4` (a
//! new flow; at tc egress, any packet that is not a reply of ours), and two
//! inserts once per confirmed flow. Established packets pay nothing more;
//! a confirmed SNAT flow's pay less: its halves no longer look each other
//! up on every packet (see `conntrack::touch`).
use lb_common::{counter, direction, flow_flags, Flow, FlowKey};

use crate::{
    family::Family,
    parse::{Packet, TCP_SYN},
    stats::count,
};

/// Called on a flow's second reply (`reply` is the reply half at
/// `reply_key`) to confirm it, and afterwards about once a second (when the
/// half's time is refreshed) to keep the copies' LRU positions fresh.
// Inlined: as a call of its own it made xdp_lb's call chain 528 bytes
// (over the verifier's 512) once DSR grew the XDP frame to 440.
#[inline(always)]
pub fn on_reply<F: Family>(reply_key: &FlowKey<F::Addr>, reply: &mut Flow<F::Addr>) {
    // The forward key is built here, on this call's own stack.
    let forward = &crate::flowkey::other_key::<F>(reply_key, reply);
    if reply.flags & flow_flags::CONFIRMED == 0 {
        if save::<F>(forward, reply_key, reply) {
            count(counter::CT_CONFIRMED);
        }
    } else if F::confirmed().get_ptr(forward).is_none() || F::confirmed().get_ptr(reply_key).is_none() {
        // Evicted from the confirmed table too (more live confirmed flows
        // than it holds): saved again while the flow is alive.
        let _ = save::<F>(forward, reply_key, reply);
    }
}

/// Copies both halves of a live flow into the confirmed table, both
/// flagged `CONFIRMED` (in conntrack too): a half with the flag may count
/// on its other half being restorable from there (`conntrack::touch`), so
/// the flag is set only when both copies were written. `false`: the
/// forward half is gone or closing, or a copy failed (nothing flagged).
#[inline(always)]
fn save<F: Family>(forward: &FlowKey<F::Addr>, reply_key: &FlowKey<F::Addr>, reply: &mut Flow<F::Addr>) -> bool {
    let Some(f) = F::conntrack().get_ptr_mut(forward) else { return false };
    // SAFETY: a live entry of this map; racing writers only lose a flag.
    let f = unsafe { &mut *f };
    if f.direction != direction::FORWARD || f.flags & flow_flags::CLOSING != 0 {
        return false;
    }
    f.flags |= flow_flags::CONFIRMED;
    reply.flags |= flow_flags::CONFIRMED;
    // From the map values themselves: a copy would take the stack IPv6 lacks.
    if F::confirmed().insert(forward, &*f, 0).is_ok() && F::confirmed().insert(reply_key, &*reply, 0).is_ok() {
        return true;
    }
    f.flags &= !flow_flags::CONFIRMED;
    reply.flags &= !flow_flags::CONFIRMED;
    false
}

/// A flow that closes (FIN or RST) is confirmed no longer: both halves go.
#[inline(always)]
pub fn forget<F: Family>(key: &FlowKey<F::Addr>, other: &FlowKey<F::Addr>) {
    let _ = F::confirmed().remove(key);
    let _ = F::confirmed().remove(other);
}

/// On a packet that found no entry at `key` in conntrack: puts the half of
/// a confirmed flow back and returns it. Its time is set just past
/// the touch interval, so the packet's own touch refreshes it and restores
/// the other half if that is gone too (`keep_pair`). A SYN (or SYN-ACK)
/// opens a new connection on the tuple: never restored.
#[inline(always)]
pub fn restore<F: Family>(key: &FlowKey<F::Addr>, p: &Packet<F::Addr>) -> Option<*mut Flow<F::Addr>> {
    if p.tcp_flags & TCP_SYN != 0 {
        return None;
    }
    // SAFETY: a live value of the confirmed map, read in place (no copy on
    // the small stack this call shares with its callers).
    let saved = unsafe { &*F::confirmed().get_ptr(key)? };
    // A flow whose backend is gone (or has another address) stays gone.
    let live = match F::backends().get(saved.backend_id) {
        Some(b) if saved.direction == direction::FORWARD => b.addr == saved.nat_addr && b.port == saved.nat_port,
        Some(b) => b.addr == key.src_addr && b.port == key.src_port,
        None => false,
    };
    if !live {
        let _ = F::confirmed().remove(key);
        return None;
    }
    // The helper copies the value.
    F::conntrack().insert(key, saved, 0).ok()?;
    let e = F::conntrack().get_ptr_mut(key)?;
    // SAFETY: the entry just inserted; valid for this program run.
    unsafe { (*e).last_seen_ns = crate::clock::now().saturating_sub(crate::flowkey::TOUCH_INTERVAL_NS + 1) };
    count(counter::CT_CONFIRMED_RESTORED);
    Some(e)
}
