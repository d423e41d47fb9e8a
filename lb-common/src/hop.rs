//! The next-hop cache: what a FIB lookup said about where a forwarded
//! packet goes (egress interface, MACs, MTU), kept per destination so the
//! packets of established flows skip the lookup (~90 ns of a SNAT packet,
//! `prog_cost`). An entry is valid only while its generation equals
//! `next_hop_gen[0]`, which the agent bumps on every route, neighbour,
//! link, address, rule or nexthop change it hears of from netlink (and
//! when it starts): a changed route or MAC is never used after the bump.
//! While the agent hears nothing (its netlink subscription lost, or the
//! agent stopped) it sets [`NEXT_HOP_OFF`]: nothing cached is used then.
//!
//! In front of it, per CPU, a direct-mapped copy ([`HopSlot`], slot
//! [`hop_slot`]): an array index instead of a hash lookup (~14 ns of a
//! forwarded packet), with the same checks.
use bytemuck::Zeroable;

/// A bit of `next_hop_gen[0]`: set, the cache is off. No entry is written
/// with it (the programs do not cache then), so none matches the
/// generation and every forwarded packet asks the FIB. The other bits
/// keep counting, so turning the cache back on ([`next_generation`])
/// never revives an entry written before it went off.
pub const NEXT_HOP_OFF: u32 = 1 << 31;

/// The generation after `current` (on or off), with the cache on: every
/// entry cached so far is stale.
pub const fn next_generation(current: u32) -> u32 {
    (current & !NEXT_HOP_OFF).wrapping_add(1) & !NEXT_HOP_OFF
}

use crate::{Addr, Addr4, Addr6};

/// Key of `next_hop_v4` / `next_hop_v6`: the interface the packet came in
/// on (the FIB lookup's input interface) and the address it goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct HopKey<A = Addr4> {
    pub ifindex: u32,
    /// Destination address of the rewritten packet, network order.
    pub dst: A,
}
pub type HopKeyV4 = HopKey<Addr4>;
pub type HopKeyV6 = HopKey<Addr6>;

crate::family::pod_per_family! {
    HopKey: 8, 20 { ifindex: 0, 0, dst: 4, 4 };
}

/// Value of the next-hop cache: a successful FIB lookup's answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable, bytemuck::Pod)]
pub struct NextHop {
    /// `next_hop_gen[0]` read before the lookup; another value: stale.
    /// Never has [`NEXT_HOP_OFF`].
    pub generation: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// Destination MAC (the next hop's neighbour entry) and source MAC
    /// (the egress interface's): in the Ethernet header's order, so the
    /// programs write both as three words.
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The route's MTU: a longer packet asks the FIB again (which then
    /// answers "fragmentation needed").
    pub mtu: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 24);
const _: () = assert!(core::mem::offset_of!(NextHop, dmac) == 8 && core::mem::offset_of!(NextHop, smac) == 14);

crate::user_pod!(NextHop);

/// Value of `next_hop_slots_v4` / `_v6`: per CPU, [`HOP_SLOTS`] of them,
/// the next hop this CPU last used for a destination whose low bits
/// select the slot ([`hop_slot`]), with the (ingress interface,
/// destination) it is for. Used only while that key, the generation and
/// the MTU check all match, as an entry of the hash cache; anything else
/// goes to the hash cache (or the FIB), whose answer then fills the slot.
/// Per CPU, so a slot is never read while another CPU rewrites it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct HopSlot<A = Addr4> {
    pub hop: NextHop,
    /// Interface the packet came in on (as [`HopKey::ifindex`]).
    pub ifindex: u32,
    /// Destination address, network order (as [`HopKey::dst`]).
    pub dst: A,
}
pub type HopSlotV4 = HopSlot<Addr4>;
pub type HopSlotV6 = HopSlot<Addr6>;

crate::family::pod_per_family! {
    HopSlot: 32, 44 { hop: 0, 0, ifindex: 24, 24, dst: 28, 28 };
}

/// Slots per CPU and family: 128 KiB (IPv4) and 176 KiB (IPv6) per CPU.
/// Destinations whose last 12 bits collide share a slot (and then take
/// turns with the hash cache); backends of one pod CIDR do not collide.
pub const HOP_SLOTS: u32 = 4096;

/// The slot of destination `dst`: its last two bytes, masked (an index,
/// not a hash: the point is to skip hashing).
#[inline(always)]
pub fn hop_slot<A: Addr>(dst: &A) -> u32 {
    let o = dst.octets();
    u16::from_be_bytes([o[A::LEN - 2], o[A::LEN - 1]]) as u32 & (HOP_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_generation_is_on_and_new_whether_the_cache_was_on_or_off() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(7), 8);
        assert_eq!(next_generation(7 | NEXT_HOP_OFF), 8, "back on: past the last generation entries were written with");
        assert_eq!(next_generation(NEXT_HOP_OFF - 1), 0, "wraps within the counting bits");
        assert_eq!(next_generation(u32::MAX), 0);
    }

    #[test]
    fn a_slot_is_the_destinations_low_twelve_bits() {
        assert_eq!(hop_slot(&[10, 244, 2, 10]), 0x20a);
        assert_eq!(hop_slot(&[10, 244, 18, 10]), 0x20a, "a collision: bit 12 up is not in the index");
        let mut v6 = [0u8; 16];
        v6[14] = 0x0f;
        v6[15] = 0xff;
        assert_eq!(hop_slot(&v6), 0xfff);
        assert!(hop_slot(&[255u8; 16]) < HOP_SLOTS);
    }
}
