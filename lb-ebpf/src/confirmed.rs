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
//! `conntrack_v4` looks there before it is balanced anew (forward) or
//! passed as not ours (reply), and the half is put back. The copies are
//! refreshed about once a second while the flow lives (their LRU position),
//! and dropped when the flow closes.
//!
//! Cost: one more hash lookup for a packet that misses `conntrack_v4` (a
//! new flow; at tc egress, any packet that is not a reply of ours), and two
//! inserts once per confirmed flow. Established packets pay nothing more.
use aya_ebpf::{btf_maps::LruHashMap, macros::btf_map};
use lb_common::{counter, direction, flow_flags, maps::default_size as size, FlowKeyV4, FlowV4};

use crate::{
    maps::{backends_v4, conntrack_v4},
    parse::{Packet, TCP_SYN},
    stats::count,
};

/// Both halves of every confirmed flow, keyed as in `conntrack_v4`. A
/// quarter of its size (the agent sets both from `--max-flows`).
#[allow(non_upper_case_globals, reason = "named as the pinned map bpftool shows")]
#[btf_map]
pub static conntrack_confirmed_v4: LruHashMap<FlowKeyV4, FlowV4, { size::CONNTRACK as usize / 4 }> = LruHashMap::new();

/// Called on a flow's second reply (`reply` is the reply half at
/// `reply_key`) to confirm it, and afterwards about once a second (when the
/// half's time is refreshed) to keep the copies' LRU positions fresh.
// Inlined: as a call of its own it made xdp_lb's call chain 528 bytes
// (over the verifier's 512) once DSR grew the XDP frame to 440.
#[inline(always)]
pub fn on_reply(reply_key: &FlowKeyV4, reply: &mut FlowV4) {
    // The forward key is built here, on this call's own stack.
    let forward = &crate::flowkey::other_key(reply_key, reply);
    if reply.flags & flow_flags::CONFIRMED == 0 {
        reply.flags |= flow_flags::CONFIRMED;
        if save(forward) && conntrack_confirmed_v4.insert(reply_key, *reply, 0).is_ok() {
            count(counter::CT_CONFIRMED);
        }
    } else if conntrack_confirmed_v4.get_ptr(forward).is_none() || conntrack_confirmed_v4.get_ptr(reply_key).is_none() {
        // Evicted from the confirmed table too (more live confirmed flows
        // than it holds): saved again while the flow is alive.
        if save(forward) {
            let _ = conntrack_confirmed_v4.insert(reply_key, *reply, 0);
        }
    }
}

/// Copies the live forward half at `forward` into the confirmed table.
#[inline(always)]
fn save(forward: &FlowKeyV4) -> bool {
    // SAFETY: a program-written value, only read (the helper copies it).
    match unsafe { conntrack_v4.get(forward) } {
        Some(e) if e.direction == direction::FORWARD && e.flags & flow_flags::CLOSING == 0 => {
            conntrack_confirmed_v4.insert(forward, e, 0).is_ok()
        }
        _ => false,
    }
}

/// A flow that closes (FIN or RST) is confirmed no longer: both halves go.
#[inline(always)]
pub fn forget(key: &FlowKeyV4, other: &FlowKeyV4) {
    let _ = conntrack_confirmed_v4.remove(key);
    let _ = conntrack_confirmed_v4.remove(other);
}

/// On a packet that found no entry at `key` in `conntrack_v4`: puts the
/// half of a confirmed flow back and returns it. Its time is set just past
/// the touch interval, so the packet's own touch refreshes it and restores
/// the other half if that is gone too (`keep_pair`). A SYN (or SYN-ACK)
/// opens a new connection on the tuple: never restored.
#[inline(always)]
pub fn restore(key: &FlowKeyV4, p: &Packet) -> Option<*mut FlowV4> {
    if p.tcp_flags & TCP_SYN != 0 {
        return None;
    }
    // SAFETY: a live value of the confirmed map, read in place (no copy on
    // the small stack this call shares with its callers).
    let saved = unsafe { &*conntrack_confirmed_v4.get_ptr(key)? };
    // A flow whose backend is gone (or has another address) stays gone.
    let live = match backends_v4.get(saved.backend_id) {
        Some(b) if saved.direction == direction::FORWARD => b.addr == saved.nat_addr && b.port == saved.nat_port,
        Some(b) => b.addr == key.src_addr && b.port == key.src_port,
        None => false,
    };
    if !live {
        let _ = conntrack_confirmed_v4.remove(key);
        return None;
    }
    // The helper copies the value.
    conntrack_v4.insert(key, saved, 0).ok()?;
    let e = conntrack_v4.get_ptr_mut(key)?;
    // SAFETY: the entry just inserted; valid for this program run.
    unsafe { (*e).last_seen_ns = crate::clock::now().saturating_sub(crate::flowkey::TOUCH_INTERVAL_NS + 1) };
    count(counter::CT_CONFIRMED_RESTORED);
    Some(e)
}
